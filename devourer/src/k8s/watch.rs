//! The watches that keep [`Cluster`] current: pods (this node's, or all), Services, nodes and
//! ReplicaSets (metadata only), each a kube-runtime watcher that lists, follows, and after an
//! error relists with backoff. Counting never waits on them.

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use futures_util::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        core::v1::{Node, Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        utils::Backoff,
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;

use super::{
    Cluster, Scope,
    index::{Index, Kind, NodeInfo, PodInfo, ReplicaSetInfo, ServiceInfo},
};
use crate::ops::metrics::Metrics;

/// Where the API server is and how to ask it.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub scope: Scope,
    /// Longest wait between two attempts after an error.
    pub backoff_max: Duration,
}

/// Whether this process runs in a pod with its ServiceAccount's token mounted.
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
}

/// A client of the API server from a kubeconfig file, else the pod's in-cluster
/// configuration (no request is made yet).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    use anyhow::Context;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .with_context(|| format!("reading the kubeconfig {}", p.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("the kubeconfig {}", p.display()))?
        }
        None => Config::incluster().context("the pod's in-cluster Kubernetes configuration")?,
    };
    Client::try_from(config).context("a Kubernetes API client")
}

/// Starts the watches on the current tokio runtime; they run until it stops.
pub fn spawn(client: Client, cfg: &WatchConfig, cluster: Arc<Cluster>, metrics: Arc<Metrics>) {
    let pods = match &cfg.scope {
        Scope::Node(node) => watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        Scope::Cluster => watcher::Config::default(),
    };
    let w = Watch {
        cluster,
        metrics,
        backoff_max: cfg.backoff_max,
    };
    tokio::spawn(
        w.clone()
            .follow(Api::<Pod>::all(client.clone()), pods, Kind::Pod, pod_info),
    );
    tokio::spawn(w.clone().follow(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        Kind::Service,
        service_info,
    ));
    tokio::spawn(w.clone().follow(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        Kind::Node,
        node_info,
    ));
    tokio::spawn(w.follow(
        Api::<PartialObjectMeta<ReplicaSet>>::all(client),
        watcher::Config::default(),
        Kind::ReplicaSet,
        replicaset_info,
    ));
}

#[derive(Clone)]
struct Watch {
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    backoff_max: Duration,
}

impl Watch {
    /// Lists and follows one kind into the index until the runtime stops.
    async fn follow<K>(
        self,
        api: Api<K>,
        config: watcher::Config,
        kind: Kind,
        apply: fn(&mut Index, K),
    ) where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let label = kind.label();
        let stream = watcher::watcher(api, config).backoff(Exponential::new(self.backoff_max));
        let mut stream = std::pin::pin!(stream);
        let mut refused = 0;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => self.cluster.update(|x| x.begin_relist(kind)),
                Ok(Event::InitApply(o) | Event::Apply(o)) => self.cluster.update(|x| apply(x, o)),
                Ok(Event::InitDone) => {
                    self.cluster.update(|x| x.end_relist(kind));
                    self.cluster.set_synced(kind, true);
                    tracing::info!(kind = label, "kubernetes watch following");
                }
                Ok(Event::Delete(o)) => {
                    let m = o.meta();
                    let (ns, name) = (
                        m.namespace.as_deref().unwrap_or(""),
                        m.name.as_deref().unwrap_or(""),
                    );
                    self.cluster.update(|x| x.remove(kind, ns, name));
                }
                Err(e) => {
                    self.cluster.set_synced(kind, false);
                    self.metrics
                        .k8s
                        .watch_restarts
                        .with_label_values(&[label])
                        .inc();
                    tracing::warn!(kind = label, "kubernetes watch failed, retrying: {e}");
                }
            }
            refused = self.publish(kind, refused);
        }
    }

    /// Brings the metrics up to date; returns the refusals of `kind` counted so far.
    fn publish(&self, kind: Kind, counted: u64) -> u64 {
        let s = self.cluster.read().stats();
        let k = &self.metrics.k8s;
        let slot = kind as usize;
        k.objects
            .with_label_values(&[kind.label()])
            .set(s.objects[slot] as i64);
        k.cache_bytes.set(s.bytes as i64);
        k.refused
            .with_label_values(&[kind.label()])
            .inc_by(s.refused[slot].saturating_sub(counted));
        k.stale.set(i64::from(self.cluster.stale()));
        s.refused[slot]
    }
}

/// Doubling waits from 0.8 s (or the maximum, if shorter) up to `max`, with jitter; back to
/// the start once a watch works again.
struct Exponential {
    next: Duration,
    max: Duration,
}

impl Exponential {
    fn start(max: Duration) -> Duration {
        Duration::from_millis(800).min(max)
    }

    fn new(max: Duration) -> Self {
        Self {
            next: Self::start(max),
            max,
        }
    }
}

impl Iterator for Exponential {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to a quarter less, so a fleet's agents do not retry in step.
        Some(wait.mul_f64(1.0 - fastrand::f64() / 4.0))
    }
}

impl Backoff for Exponential {
    fn reset(&mut self) {
        self.next = Self::start(self.max);
    }
}

fn names(m: &ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// The controller among owner references.
fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<(String, String)> {
    refs?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.clone(), r.name.clone()))
}

fn addrs<'a>(it: impl IntoIterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = it.into_iter().filter_map(|s| s.parse().ok()).collect();
    out.dedup();
    out
}

fn pod_info(x: &mut Index, p: Pod) {
    let (namespace, name) = names(&p.metadata);
    let spec = p.spec.unwrap_or_default();
    let status = p.status.unwrap_or_default();
    let mut ips: Vec<&str> = status.pod_ip.as_deref().into_iter().collect();
    ips.extend(status.pod_ips.iter().flatten().map(|i| i.ip.as_str()));
    let labels = p.metadata.labels.unwrap_or_default().into_iter().collect();
    x.apply_pod(PodInfo {
        namespace,
        name,
        node: spec.node_name,
        ips: addrs(ips),
        host_network: spec.host_network == Some(true),
        running: !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
        terminating: p.metadata.deletion_timestamp.is_some(),
        created_ms: p
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_millisecond()),
        labels,
        owner: controller(p.metadata.owner_references.as_ref()),
    });
}

fn service_info(x: &mut Index, s: Service) {
    let (namespace, name) = names(&s.metadata);
    let spec = s.spec.unwrap_or_default();
    let mut ips: Vec<&str> = spec.cluster_ip.as_deref().into_iter().collect();
    ips.extend(spec.cluster_ips.iter().flatten().map(String::as_str));
    x.apply_service(ServiceInfo {
        namespace,
        name,
        selector: spec.selector.unwrap_or_default().into_iter().collect(),
        // Headless Services have `None` here: nothing to index.
        cluster_ips: addrs(ips),
    });
}

/// The well-known label of a node's zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

fn node_info(x: &mut Index, n: Node) {
    let name = n.metadata.name.clone().unwrap_or_default();
    let status = n.status.unwrap_or_default();
    let list = status.addresses.unwrap_or_default();
    let ips = list
        .iter()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .map(|a| a.address.as_str());
    let zone = n
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .cloned();
    x.apply_node(NodeInfo {
        name,
        addrs: addrs(ips),
        zone,
    });
}

fn replicaset_info(x: &mut Index, rs: PartialObjectMeta<ReplicaSet>) {
    let (namespace, name) = names(&rs.metadata);
    x.apply_replicaset(ReplicaSetInfo {
        namespace,
        name,
        owner: controller(rs.metadata.owner_references.as_ref()),
    });
}
