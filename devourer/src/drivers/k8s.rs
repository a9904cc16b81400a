//! Kubernetes metadata for the live driver (`--k8s-metadata`): which mode, the API client, the
//! watches started. The API server away at start never stops counting: the watches retry.

use std::sync::Arc;

use anyhow::Result;
#[cfg(not(feature = "k8s"))]
use anyhow::bail;

use crate::{
    config::args::{K8sArgs, K8sMetadata},
    k8s::{Cluster, Scope},
    ops::metrics::Metrics,
};

/// The mode in effect: as given, else `node` in a pod with its token mounted, else `off`.
fn mode(args: &K8sArgs) -> K8sMetadata {
    #[cfg(feature = "k8s")]
    let in_cluster = crate::k8s::watch::in_cluster();
    #[cfg(not(feature = "k8s"))]
    let in_cluster = false;
    args.k8s_metadata.unwrap_or(if in_cluster {
        K8sMetadata::Node
    } else {
        K8sMetadata::Off
    })
}

/// Starts the watches and returns what they fill, or `None` when metadata is off.
pub async fn start(
    args: K8sArgs,
    agent: String,
    metrics: Arc<Metrics>,
) -> Result<Option<Arc<Cluster>>> {
    let args = &args;
    let scope = match mode(args) {
        K8sMetadata::Off => return Ok(None),
        K8sMetadata::Node => Scope::Node(agent),
        K8sMetadata::Cluster => Scope::Cluster,
    };
    #[cfg(feature = "k8s")]
    {
        use anyhow::Context;

        use crate::k8s::watch;
        let client = watch::client(args.kubeconfig.as_deref())
            .await
            .context("--k8s-metadata")?;
        let cap = usize::try_from(args.k8s_max_bytes).unwrap_or(usize::MAX);
        let cluster = Arc::new(Cluster::new(cap, Some(metrics.k8s.lookups_missed.clone())));
        metrics.k8s.stale.set(1);
        let cfg = watch::WatchConfig {
            scope,
            backoff_max: args.k8s_backoff_max,
        };
        tracing::info!(scope = ?cfg.scope, "naming records with Kubernetes metadata");
        watch::spawn(client, &cfg, cluster.clone(), metrics.clone());
        Ok(Some(cluster))
    }
    #[cfg(not(feature = "k8s"))]
    {
        let _ = (scope, metrics);
        bail!("--k8s-metadata: this agent was built without Kubernetes support (feature `k8s`)")
    }
}
