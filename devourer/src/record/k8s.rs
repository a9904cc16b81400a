//! The Kubernetes fields of a record: for each side (`src_`/`dst_` on flows, `client_`/`server_`
//! on DNS and HTTP), the namespace, pod, owner kind and name, node and service, `null` where
//! unknown.

use std::sync::Arc;

use serde::{Serialize, ser::SerializeMap};

use crate::flow::Workload;

/// One side's field names, in column order.
type Keys = [&'static str; 6];

/// The field names of flow records.
pub const FLOW_KEYS: [Keys; 2] = [
    [
        "src_k8s_namespace",
        "src_k8s_pod",
        "src_k8s_owner_kind",
        "src_k8s_owner",
        "src_k8s_node",
        "src_k8s_service",
    ],
    [
        "dst_k8s_namespace",
        "dst_k8s_pod",
        "dst_k8s_owner_kind",
        "dst_k8s_owner",
        "dst_k8s_node",
        "dst_k8s_service",
    ],
];

/// The field names of DNS and HTTP records.
pub const EXCHANGE_KEYS: [Keys; 2] = [
    [
        "client_k8s_namespace",
        "client_k8s_pod",
        "client_k8s_owner_kind",
        "client_k8s_owner",
        "client_k8s_node",
        "client_k8s_service",
    ],
    [
        "server_k8s_namespace",
        "server_k8s_pod",
        "server_k8s_owner_kind",
        "server_k8s_owner",
        "server_k8s_node",
        "server_k8s_service",
    ],
];

/// Both sides' Kubernetes objects, written flat into the record (`#[serde(flatten)]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sFields {
    keys: &'static [Keys; 2],
    sides: [Option<Arc<Workload>>; 2],
}

impl K8sFields {
    pub fn flow(src: Option<Arc<Workload>>, dst: Option<Arc<Workload>>) -> Self {
        Self {
            keys: &FLOW_KEYS,
            sides: [src, dst],
        }
    }

    pub fn exchange(client: Option<Arc<Workload>>, server: Option<Arc<Workload>>) -> Self {
        Self {
            keys: &EXCHANGE_KEYS,
            sides: [client, server],
        }
    }
}

impl K8sFields {
    /// The twelve fields in column order, each with its value (`None`: unknown).
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, Option<&str>)> {
        self.keys.iter().zip(&self.sides).flat_map(|(keys, side)| {
            let w = side.as_deref();
            let values = [
                w.and_then(|w| w.namespace.as_deref()),
                w.and_then(|w| w.pod.as_deref()),
                w.and_then(|w| w.owner_kind.as_deref()),
                w.and_then(|w| w.owner.as_deref()),
                w.and_then(|w| w.node.as_deref()),
                w.and_then(|w| w.service.as_deref()),
            ];
            keys.iter().copied().zip(values)
        })
    }
}

impl Serialize for K8sFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(12))?;
        for (k, v) in self.entries() {
            map.serialize_entry(k, &v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_are_written_flat_with_nulls_where_unknown() {
        let pod = Workload {
            namespace: Some("shop".into()),
            pod: Some("web-7d9f-abcde".into()),
            owner_kind: Some("Deployment".into()),
            owner: Some("web".into()),
            node: Some("node-1".into()),
            service: Some("web".into()),
        };
        let v = serde_json::to_value(K8sFields::flow(Some(Arc::new(pod)), None)).unwrap();
        assert_eq!(v["src_k8s_namespace"], "shop");
        assert_eq!(v["src_k8s_owner_kind"], "Deployment");
        assert_eq!(v["src_k8s_service"], "web");
        assert!(v["dst_k8s_pod"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 12);
        let v = serde_json::to_value(K8sFields::exchange(None, None)).unwrap();
        assert!(v["client_k8s_node"].is_null() && v["server_k8s_owner"].is_null());
    }
}
