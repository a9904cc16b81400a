use super::*;

fn pod(ns: &str, name: &str, ip: &str) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        node: Some("node-1".into()),
        ips: vec![ip.parse().unwrap()],
        host_network: false,
        running: true,
        terminating: false,
        created_ms: 0,
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
    assert!(!x.rename_pending(usize::MAX));
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
            zone: None,
        }
    );
    let svc = x.lookup(ip("198.19.200.10")).unwrap();
    assert_eq!(svc.service.as_deref(), Some("web-svc"));
    assert_eq!(svc.pod, None);
    x.remove(Kind::Service, "shop", "web-svc");
    x.rename_pending(usize::MAX);
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
        zone: Some("zone-a".into()),
    });
    let mut agent = pod("kube-system", "devourer-x", "192.0.2.10");
    agent.host_network = true;
    x.apply_pod(agent);
    let w = x.lookup(ip("192.0.2.10")).unwrap();
    assert_eq!(w.node.as_deref(), Some("node-1"));
    assert_eq!(w.zone.as_deref(), Some("zone-a"));
    assert_eq!(w.pod, None);
}

#[test]
fn pods_carry_their_nodes_zone_whichever_comes_first_and_follow_its_changes() {
    let mut x = Index::new(1 << 20);
    // The pod before its node: no zone yet.
    x.apply_pod(pod("shop", "web-a", "10.1.0.5"));
    assert_eq!(x.lookup(ip("10.1.0.5")).unwrap().zone, None);
    let node = |zone: Option<&str>| NodeInfo {
        name: "node-1".into(),
        addrs: vec![ip("192.0.2.10")],
        zone: zone.map(Into::into),
    };
    x.apply_node(node(Some("zone-a")));
    x.rename_pending(usize::MAX);
    assert_eq!(
        x.lookup(ip("10.1.0.5")).unwrap().zone.as_deref(),
        Some("zone-a")
    );
    // A pod after its node takes the zone at once.
    x.apply_pod(pod("shop", "web-b", "10.1.0.6"));
    assert_eq!(
        x.lookup(ip("10.1.0.6")).unwrap().zone.as_deref(),
        Some("zone-a")
    );
    // Relabelled, then gone.
    x.apply_node(node(Some("zone-b")));
    x.rename_pending(usize::MAX);
    assert_eq!(
        x.lookup(ip("10.1.0.5")).unwrap().zone.as_deref(),
        Some("zone-b")
    );
    x.remove(Kind::Node, "", "node-1");
    x.rename_pending(usize::MAX);
    assert_eq!(x.lookup(ip("10.1.0.6")).unwrap().zone, None);
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

fn service(ns: &str, name: &str, app: &str) -> ServiceInfo {
    ServiceInfo {
        namespace: ns.into(),
        name: name.into(),
        selector: vec![("app".into(), app.into())],
        cluster_ips: vec![],
    }
}

#[test]
fn a_service_change_renames_only_the_pods_it_selected_or_selects_a_few_at_a_time() {
    let mut x = Index::new(usize::MAX);
    // 5,000 pods, five per app, and a Service per app added once they run.
    for i in 0..5000u32 {
        let mut p = pod(
            "big",
            &format!("p{i}"),
            &IpAddr::from((0x0a00_0000 + i).to_be_bytes()).to_string(),
        );
        p.labels = vec![("app".into(), format!("a{}", i / 5))];
        x.apply_pod(p);
    }
    for s in 0..1000u32 {
        x.apply_service(service("big", &format!("s{s}"), &format!("a{s}")));
        assert_eq!(x.pending.len(), 5, "only the pods Service s{s} selects");
        assert!(x.rename_pending(3), "renamed in steps");
        assert!(!x.rename_pending(3));
    }
    let w = x
        .lookup(IpAddr::from((0x0a00_0000u32 + 4999).to_be_bytes()))
        .unwrap();
    assert_eq!(w.service.as_deref(), Some("s999"));
    // A selector change touches the pods of the old and of the new selection.
    x.apply_service(service("big", "s0", "a1"));
    assert_eq!(x.pending.len(), 10);
    x.rename_pending(usize::MAX);
    let first = x
        .lookup(IpAddr::from(0x0a00_0000u32.to_be_bytes()))
        .unwrap();
    assert_eq!(first.service, None, "a0's pods lost their Service");
    let moved = x
        .lookup(IpAddr::from((0x0a00_0000u32 + 5).to_be_bytes()))
        .unwrap();
    assert_eq!(
        moved.service.as_deref(),
        Some("s0"),
        "the first Service by name wins"
    );
    // An update that does not change the selector renames nothing.
    x.apply_service(service("big", "s0", "a1"));
    assert!(x.pending.is_empty());
}

#[test]
fn the_byte_cap_holds_through_updates_of_known_objects() {
    let mut x = Index::new(usize::MAX);
    x.apply_pod(pod("a", "p0", "10.1.0.1"));
    let cap = x.stats().bytes + 64;
    let mut x = Index::new(cap);
    x.apply_pod(pod("a", "p0", "10.1.0.1"));
    // Updates that keep its size are kept.
    let mut same = pod("a", "p0", "10.1.0.1");
    same.labels = vec![("app".into(), "api".into())];
    x.apply_pod(same);
    assert_eq!(x.lookup(ip("10.1.0.1")).unwrap().pod.as_deref(), Some("p0"));
    // One that grows it past the cap is refused, and the old version goes with it.
    let mut grown = pod("a", "p0", "10.1.0.1");
    grown.labels = (0..100)
        .map(|i| (format!("label-{i}"), "x".repeat(50)))
        .collect();
    x.apply_pod(grown);
    let s = x.stats();
    assert!(s.bytes <= cap, "{} > {cap}", s.bytes);
    assert_eq!(s.refused[0], 1);
    assert!(x.lookup(ip("10.1.0.1")).is_none());
    assert_eq!(s.objects[0], 0);
}

#[test]
fn an_address_stays_with_the_pod_not_terminating_and_the_newest_whatever_the_order() {
    let at = |name: &str, created_ms: i64, terminating: bool| {
        let mut p = pod("a", name, "10.1.0.9");
        p.created_ms = created_ms;
        p.terminating = terminating;
        p
    };
    let holder = |x: &Index| {
        x.lookup(ip("10.1.0.9"))
            .and_then(|w| w.pod.as_deref().map(str::to_owned))
    };
    // A Deployment's rollout: the new pod starts while the old one still runs, the old one is
    // updated (terminating) and deleted, in every order the watch may deliver them.
    let events: [&dyn Fn(&mut Index); 4] = [
        &|x| x.apply_pod(at("old", 1000, false)),
        &|x| x.apply_pod(at("new", 2000, false)),
        &|x| x.apply_pod(at("old", 1000, true)),
        &|x| x.remove(Kind::Pod, "a", "old"),
    ];
    let orders: [[usize; 4]; 6] = [
        [0, 1, 2, 3],
        [1, 0, 2, 3],
        [0, 2, 1, 3],
        [1, 2, 0, 3],
        [0, 1, 3, 2],
        [1, 3, 0, 2],
    ];
    for order in orders {
        let mut x = Index::new(1 << 20);
        for i in order {
            events[i](&mut x);
        }
        assert_eq!(holder(&x).as_deref(), Some("new"), "{order:?}");
    }
    // An older pod that is not terminating beats a newer one that is.
    let mut x = Index::new(1 << 20);
    x.apply_pod(at("new", 2000, true));
    x.apply_pod(at("old", 1000, false));
    assert_eq!(holder(&x).as_deref(), Some("old"));
    // The holder's delete hands the address to the one left; the last one's frees it.
    x.remove(Kind::Pod, "a", "old");
    assert_eq!(holder(&x).as_deref(), Some("new"));
    x.remove(Kind::Pod, "a", "new");
    assert_eq!(holder(&x), None);
}
