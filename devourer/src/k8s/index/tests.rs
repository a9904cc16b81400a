use super::*;

fn pod(ns: &str, name: &str, ip: &str) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        node: Some("node-1".into()),
        ips: vec![ip.parse().unwrap()],
        host_network: false,
        running: true,
        labels: vec![("app".into(), "web".into())],
        owner: Some(("ReplicaSet".into(), "web-6d4f".into())),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_pod_is_named_with_its_deployment_and_service() {
    let mut x = Index::new(1 << 20);
    x.apply_pod(pod("shop", "web-6d4f-a", "10.1.0.5"));
    let w = x.lookup(ip("10.1.0.5")).unwrap();
    assert_eq!(
        w.owner_kind.as_deref(),
        Some("ReplicaSet"),
        "its ReplicaSet is unknown yet"
    );
    assert_eq!(w.service, None);
    x.apply_replicaset(ReplicaSetInfo {
        namespace: "shop".into(),
        name: "web-6d4f".into(),
        owner: Some(("Deployment".into(), "web".into())),
    });
    x.apply_service(ServiceInfo {
        namespace: "shop".into(),
        name: "web-svc".into(),
        selector: vec![("app".into(), "web".into())],
        cluster_ips: vec![ip("198.19.200.10")],
    });
    // A Service of another namespace with the same selector does not select it.
    x.apply_service(ServiceInfo {
        namespace: "other".into(),
        name: "web-svc".into(),
        selector: vec![("app".into(), "web".into())],
        cluster_ips: vec![],
    });
    let w = x.lookup(ip("10.1.0.5")).unwrap();
    assert_eq!(
        *w,
        Workload {
            namespace: Some("shop".into()),
            pod: Some("web-6d4f-a".into()),
            owner_kind: Some("Deployment".into()),
            owner: Some("web".into()),
            node: Some("node-1".into()),
            service: Some("web-svc".into()),
        }
    );
    let svc = x.lookup(ip("198.19.200.10")).unwrap();
    assert_eq!(svc.service.as_deref(), Some("web-svc"));
    assert_eq!(svc.pod, None);
    x.remove(Kind::Service, "shop", "web-svc");
    assert_eq!(x.lookup(ip("10.1.0.5")).unwrap().service, None);
    assert!(x.lookup(ip("198.19.200.10")).is_none());
}

#[test]
fn a_reused_address_names_its_new_pod_and_the_old_ones_end_does_not_unname_it() {
    let mut x = Index::new(1 << 20);
    x.apply_pod(pod("a", "first", "10.1.0.7"));
    let before = x.lookup(ip("10.1.0.7")).unwrap();
    let mut done = pod("a", "first", "10.1.0.7");
    done.running = false;
    x.apply_pod(done);
    assert!(
        x.lookup(ip("10.1.0.7")).is_none(),
        "a Succeeded pod lets its address go"
    );
    x.apply_pod(pod("a", "second", "10.1.0.7"));
    x.remove(Kind::Pod, "a", "first");
    let after = x.lookup(ip("10.1.0.7")).unwrap();
    assert_eq!(before.pod.as_deref(), Some("first"));
    assert_eq!(after.pod.as_deref(), Some("second"));
}

#[test]
fn nodes_and_host_network_pods_are_named_by_the_node() {
    let mut x = Index::new(1 << 20);
    x.apply_node(NodeInfo {
        name: "node-1".into(),
        addrs: vec![ip("192.0.2.10")],
    });
    let mut agent = pod("kube-system", "devourer-x", "192.0.2.10");
    agent.host_network = true;
    x.apply_pod(agent);
    let w = x.lookup(ip("192.0.2.10")).unwrap();
    assert_eq!(w.node.as_deref(), Some("node-1"));
    assert_eq!(w.pod, None);
}

#[test]
fn a_relist_removes_what_it_no_longer_lists() {
    let mut x = Index::new(1 << 20);
    x.apply_pod(pod("a", "gone", "10.1.0.1"));
    x.apply_pod(pod("a", "kept", "10.1.0.2"));
    x.begin_relist(Kind::Pod);
    x.apply_pod(pod("a", "kept", "10.1.0.2"));
    x.end_relist(Kind::Pod);
    assert!(x.lookup(ip("10.1.0.1")).is_none());
    assert!(x.lookup(ip("10.1.0.2")).is_some());
    assert_eq!(x.stats().objects[0], 1);
}

#[test]
fn the_byte_cap_refuses_new_objects_and_counts_them() {
    let mut probe = Index::new(usize::MAX);
    probe.apply_pod(pod("a", "p0", "10.1.0.1"));
    let one = probe.stats().bytes;
    probe.apply_pod(pod("a", "p1", "10.1.0.2"));
    let two = probe.stats().bytes;
    let mut x = Index::new(two + (two - one) / 2);
    for i in 0..5 {
        x.apply_pod(pod("a", &format!("p{i}"), &format!("10.1.0.{}", i + 1)));
    }
    let s = x.stats();
    assert_eq!(s.objects[0], 3, "admitted while under the cap");
    assert_eq!(s.refused[0], 2);
    assert!(s.bytes <= two + 2 * (two - one));
    // Known objects still change; a deletion makes room again.
    x.remove(Kind::Pod, "a", "p0");
    x.apply_pod(pod("a", "p4", "10.1.0.5"));
    assert!(x.lookup(ip("10.1.0.5")).is_some());
}
