//! The Kubernetes fields of a record: for each side (`src_`/`dst_` on flows, `client_`/`server_`
//! on DNS and HTTP), the namespace, pod, owner kind and name, node, service and zone, `null`
//! where unknown.

use std::sync::Arc;

use super::fields::{Fields, Record};
use crate::flow::Workload;

/// One side's field names, in column order.
type Keys = [&'static str; 7];

/// One side's field names and, for a side with nothing known (every record off Kubernetes),
/// all seven written as JSON at once.
#[derive(Debug, PartialEq, Eq)]
pub struct Side {
    pub keys: Keys,
    nulls: &'static str,
}

macro_rules! side {
    ($p:literal) => {
        Side {
            keys: [
                concat!($p, "_k8s_namespace"),
                concat!($p, "_k8s_pod"),
                concat!($p, "_k8s_owner_kind"),
                concat!($p, "_k8s_owner"),
                concat!($p, "_k8s_node"),
                concat!($p, "_k8s_service"),
                concat!($p, "_k8s_zone"),
            ],
            nulls: concat!(
                "\"",
                $p,
                "_k8s_namespace\":null,\"",
                $p,
                "_k8s_pod\":null,\"",
                $p,
                "_k8s_owner_kind\":null,\"",
                $p,
                "_k8s_owner\":null,\"",
                $p,
                "_k8s_node\":null,\"",
                $p,
                "_k8s_service\":null,\"",
                $p,
                "_k8s_zone\":null"
            ),
        }
    };
}

/// The fields of flow records.
pub const FLOW_SIDES: [Side; 2] = [side!("src"), side!("dst")];

/// The fields of DNS and HTTP records.
pub const EXCHANGE_SIDES: [Side; 2] = [side!("client"), side!("server")];

/// Both sides' Kubernetes objects, written flat into the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sFields {
    keys: &'static [Side; 2],
    sides: [Option<Arc<Workload>>; 2],
}

impl K8sFields {
    pub fn flow(src: Option<Arc<Workload>>, dst: Option<Arc<Workload>>) -> Self {
        Self {
            keys: &FLOW_SIDES,
            sides: [src, dst],
        }
    }

    /// The source's and destination's objects (a flow's), or the client's and server's.
    pub fn sides(&self) -> &[Option<Arc<Workload>>; 2] {
        &self.sides
    }

    pub fn exchange(client: Option<Arc<Workload>>, server: Option<Arc<Workload>>) -> Self {
        Self {
            keys: &EXCHANGE_SIDES,
            sides: [client, server],
        }
    }
}

/// The Kubernetes fields of the server a DNAT reached (DNS and HTTP records).
pub const XLAT_KEYS: [&str; 5] = [
    "xlat_server_k8s_namespace",
    "xlat_server_k8s_pod",
    "xlat_server_k8s_owner_kind",
    "xlat_server_k8s_owner",
    "xlat_server_k8s_node",
];

/// The translated server's object (a Service's backend pod), written flat into the record:
/// namespace, pod, owner kind and name, node (no service: the Service is what was asked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XlatK8s(pub Option<Arc<Workload>>);

impl XlatK8s {
    fn entries(&self) -> impl Iterator<Item = (&'static str, Option<&str>)> {
        XLAT_KEYS.into_iter().zip(values(self.0.as_deref()))
    }
}

/// The five fields, flat in their record.
impl Record for XlatK8s {
    fn fields<F: Fields>(&self, o: &mut F) {
        for (k, v) in self.entries() {
            o.opt_str(k, v);
        }
    }
}

/// One side's seven values in column order (`None`: unknown, or no object at all).
fn values(w: Option<&Workload>) -> [Option<&str>; 7] {
    [
        w.and_then(|w| w.namespace.as_deref()),
        w.and_then(|w| w.pod.as_deref()),
        w.and_then(|w| w.owner_kind.as_deref()),
        w.and_then(|w| w.owner.as_deref()),
        w.and_then(|w| w.node.as_deref()),
        w.and_then(|w| w.service.as_deref()),
        w.and_then(|w| w.zone.as_deref()),
    ]
}

/// The fourteen fields, flat in their record; a side with nothing known at once.
impl Record for K8sFields {
    fn fields<F: Fields>(&self, o: &mut F) {
        for (names, side) in self.keys.iter().zip(&self.sides) {
            match side.as_deref() {
                None => o.nulls(&names.keys, names.nulls),
                w => {
                    for (k, v) in names.keys.iter().zip(values(w)) {
                        o.opt_str(k, v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::json::Object;

    #[test]
    fn both_sides_are_written_flat_with_nulls_where_unknown() {
        let pod = Workload {
            namespace: Some("shop".into()),
            pod: Some("web-7d9f-abcde".into()),
            owner_kind: Some("Deployment".into()),
            owner: Some("web".into()),
            node: Some("node-1".into()),
            service: Some("web".into()),
            zone: Some("europe-west1-b".into()),
        };
        let json = |f: &K8sFields| {
            let mut out = Vec::new();
            Object::write(f, &mut out);
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let v = json(&K8sFields::flow(Some(Arc::new(pod)), None));
        assert_eq!(v["src_k8s_namespace"], "shop");
        assert_eq!(v["src_k8s_owner_kind"], "Deployment");
        assert_eq!(v["src_k8s_service"], "web");
        assert_eq!(v["src_k8s_zone"], "europe-west1-b");
        assert!(v["dst_k8s_pod"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 14);
        let v = json(&K8sFields::exchange(None, None));
        assert!(v["client_k8s_node"].is_null() && v["server_k8s_owner"].is_null());
    }

    #[test]
    fn every_encoding_holds_the_same_fields_known_or_not() {
        let pod = || {
            Arc::new(Workload {
                namespace: Some("a\"b".into()),
                pod: None,
                owner_kind: Some("Deployment".into()),
                owner: None,
                node: Some("node-1".into()),
                service: None,
                zone: Some("z".into()),
            })
        };
        for (a, b) in [(None, None), (Some(pod()), None), (None, Some(pod()))] {
            for f in [
                K8sFields::flow(a.clone(), b.clone()),
                K8sFields::exchange(a.clone(), b.clone()),
            ] {
                // JSON writes unknown sides at once, msgpack field by field.
                crate::record::fields::tests::assert_encodings_agree(&f);
                crate::record::fields::tests::assert_encodings_agree(&XlatK8s(a.clone()));
            }
        }
    }
}
