//! The BigQuery tables: their columns (design.md's record fields), partitioning and clustering,
//! and how an existing table is brought up to date (missing columns added as NULLABLE; a
//! column of another type is an error).

use gcp_bigquery_client::model::{
    clustering::Clustering, field_type::FieldType, table::Table,
    table_field_schema::TableFieldSchema, table_schema::TableSchema,
    time_partitioning::TimePartitioning,
};

/// Which records a table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Flow,
    Dns,
    Overflow,
}

impl TableKind {
    pub const ALL: [TableKind; 3] = [TableKind::Flow, TableKind::Dns, TableKind::Overflow];

    /// The kind's directory in the spool.
    pub fn spool_name(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Dns => "dns",
            Self::Overflow => "overflow",
        }
    }

    pub fn from_spool_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.spool_name() == name)
    }
}

/// (column, type, repeated) in record order.
pub fn columns(kind: TableKind) -> &'static [(&'static str, &'static str, bool)] {
    match kind {
        TableKind::Flow => &[
            ("id", "STRING", false),
            ("seq", "INTEGER", false),
            ("agent", "STRING", false),
            ("interface", "STRING", false),
            ("protocol", "STRING", false),
            ("src_addr", "STRING", false),
            ("dst_addr", "STRING", false),
            ("src_port", "INTEGER", false),
            ("dst_port", "INTEGER", false),
            ("icmp_type", "INTEGER", false),
            ("icmp_code", "INTEGER", false),
            ("vlan", "INTEGER", false),
            ("first_seen_at", "TIMESTAMP", false),
            ("last_seen_at", "TIMESTAMP", false),
            ("src_bytes", "INTEGER", false),
            ("dst_bytes", "INTEGER", false),
            ("src_packets", "INTEGER", false),
            ("dst_packets", "INTEGER", false),
            ("status", "STRING", false),
            ("src_name", "STRING", false),
            ("dst_name", "STRING", false),
            ("tcp_flags", "INTEGER", false),
            ("interfaces", "RECORD", true),
            ("community_id", "STRING", false),
            ("sampling", "INTEGER", false),
            ("xlat_src_addr", "STRING", false),
            ("xlat_src_port", "INTEGER", false),
            ("xlat_dst_addr", "STRING", false),
            ("xlat_dst_port", "INTEGER", false),
            ("tunnel", "STRING", false),
            ("src_k8s_namespace", "STRING", false),
            ("src_k8s_pod", "STRING", false),
            ("src_k8s_owner_kind", "STRING", false),
            ("src_k8s_owner", "STRING", false),
            ("src_k8s_node", "STRING", false),
            ("src_k8s_service", "STRING", false),
            ("dst_k8s_namespace", "STRING", false),
            ("dst_k8s_pod", "STRING", false),
            ("dst_k8s_owner_kind", "STRING", false),
            ("dst_k8s_owner", "STRING", false),
            ("dst_k8s_node", "STRING", false),
            ("dst_k8s_service", "STRING", false),
        ],
        TableKind::Dns => &[
            ("id", "STRING", false),
            ("agent", "STRING", false),
            ("interface", "STRING", false),
            ("time", "TIMESTAMP", false),
            ("client", "STRING", false),
            ("client_port", "INTEGER", false),
            ("server", "STRING", false),
            ("server_port", "INTEGER", false),
            ("community_id", "STRING", false),
            ("client_k8s_namespace", "STRING", false),
            ("client_k8s_pod", "STRING", false),
            ("client_k8s_owner_kind", "STRING", false),
            ("client_k8s_owner", "STRING", false),
            ("client_k8s_node", "STRING", false),
            ("client_k8s_service", "STRING", false),
            ("server_k8s_namespace", "STRING", false),
            ("server_k8s_pod", "STRING", false),
            ("server_k8s_owner_kind", "STRING", false),
            ("server_k8s_owner", "STRING", false),
            ("server_k8s_node", "STRING", false),
            ("server_k8s_service", "STRING", false),
            ("xlat_server", "STRING", false),
            ("xlat_server_port", "INTEGER", false),
            ("xlat_server_k8s_namespace", "STRING", false),
            ("xlat_server_k8s_pod", "STRING", false),
            ("xlat_server_k8s_owner_kind", "STRING", false),
            ("xlat_server_k8s_owner", "STRING", false),
            ("xlat_server_k8s_node", "STRING", false),
            ("transport", "STRING", false),
            ("msg_id", "INTEGER", false),
            ("q_name", "STRING", false),
            ("q_type", "STRING", false),
            ("q_class", "STRING", false),
            ("rcode", "STRING", false),
            ("answers", "STRING", true),
            ("latency", "FLOAT", false),
            ("status", "STRING", false),
            ("role", "STRING", false),
            ("cut", "BOOLEAN", false),
        ],
        TableKind::Overflow => &[
            ("id", "STRING", false),
            ("agent", "STRING", false),
            ("interface", "STRING", false),
            ("protocol", "STRING", false),
            ("time", "TIMESTAMP", false),
            ("packets", "INTEGER", false),
            ("bytes", "INTEGER", false),
        ],
    }
}

fn field_type(t: &str) -> FieldType {
    match t {
        "INTEGER" => FieldType::Integer,
        "TIMESTAMP" => FieldType::Timestamp,
        "FLOAT" => FieldType::Float,
        "BOOLEAN" => FieldType::Boolean,
        "RECORD" => FieldType::Record,
        _ => FieldType::String,
    }
}

fn field(name: &str, t: &str, repeated: bool) -> TableFieldSchema {
    let mut f = TableFieldSchema::new(name, field_type(t));
    f.mode = Some(if repeated { "REPEATED" } else { "NULLABLE" }.to_owned());
    if t == "RECORD" {
        f.fields = Some(
            subfields(name)
                .iter()
                .map(|(n, t)| field(n, t, false))
                .collect(),
        );
    }
    f
}

/// The fields of a RECORD column.
fn subfields(column: &str) -> &'static [(&'static str, &'static str)] {
    match column {
        "interfaces" => &[("interface", "STRING"), ("direction", "STRING")],
        _ => &[],
    }
}

/// The table devourer creates: partitioned by day on the record's time, clustered by addresses.
pub fn new_table(project: &str, dataset: &str, table: &str, kind: TableKind) -> Table {
    let fields = columns(kind)
        .iter()
        .map(|(n, t, r)| field(n, t, *r))
        .collect();
    let (part, cluster) = match kind {
        TableKind::Flow => ("first_seen_at", ["src_addr", "dst_addr"]),
        TableKind::Dns => ("time", ["client", "server"]),
        TableKind::Overflow => ("time", ["interface", "protocol"]),
    };
    Table::new(project, dataset, table, TableSchema::new(fields))
        .time_partitioning(TimePartitioning::per_day().field(part))
        .clustering(Clustering {
            fields: Some(cluster.iter().map(|s| (*s).to_owned()).collect()),
        })
}

/// Types BigQuery reports under legacy and standard names.
fn same_type(a: &str, b: &str) -> bool {
    let norm = |t: &str| {
        match t {
            "INT64" => "INTEGER",
            "FLOAT64" => "FLOAT",
            "BOOL" => "BOOLEAN",
            "STRUCT" => "RECORD",
            other => other,
        }
        .to_owned()
    };
    norm(a) == norm(b)
}

/// What to do with an existing table.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    UpToDate,
    /// These columns are missing: add them (NULLABLE) with tables.patch.
    AddColumns(Vec<String>),
}

/// Columns of an existing table whose types differ from ours, named with both types.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TypeConflict(pub String);

/// Compares an existing table's schema with ours. Err names the columns whose types conflict.
pub fn upgrade(existing: &Table, kind: TableKind) -> Result<Upgrade, TypeConflict> {
    let have: Vec<(String, String)> = existing
        .schema
        .fields
        .as_ref()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    let t = serde_json::to_value(&f.r#type)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    (f.name.clone(), t)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut conflicts = Vec::new();
    let mut missing = Vec::new();
    for (name, t, _) in columns(kind) {
        match have.iter().find(|(n, _)| n == name) {
            Some((_, ht)) if !same_type(ht, t) => {
                conflicts.push(format!("{name} is {ht}, devourer writes {t}"));
            }
            Some(_) => {}
            None => missing.push((*name).to_owned()),
        }
    }
    if !conflicts.is_empty() {
        return Err(TypeConflict(conflicts.join("; ")));
    }
    Ok(if missing.is_empty() {
        Upgrade::UpToDate
    } else {
        Upgrade::AddColumns(missing)
    })
}

/// The existing table with our missing columns appended (for tables.patch).
pub fn with_columns(mut existing: Table, kind: TableKind, missing: &[String]) -> Table {
    let fields = existing.schema.fields.get_or_insert_with(Vec::new);
    for (n, t, r) in columns(kind) {
        if missing.iter().any(|m| m == n) {
            fields.push(field(n, t, *r));
        }
    }
    existing
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::record::{
        DnsRecord, ExchangeHead, FlowRecord,
        k8s::{FLOW_SIDES, K8sFields},
    };

    fn keys<T: Serialize>(r: &T) -> Vec<String> {
        let v = serde_json::to_value(r).unwrap();
        v.as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "type")
            .cloned()
            .collect()
    }

    #[test]
    fn columns_are_the_record_fields() {
        let flow = FlowRecord {
            kind: "flow",
            id: Default::default(),
            seq: 0,
            agent: "".into(),
            interface: "".into(),
            protocol: "tcp".into(),
            src_addr: Default::default(),
            dst_addr: Default::default(),
            src_port: 0,
            dst_port: 0,
            icmp_type: None,
            icmp_code: None,
            vlan: None,
            first_seen_at: Default::default(),
            last_seen_at: Default::default(),
            src_bytes: 0,
            dst_bytes: 0,
            src_packets: 0,
            dst_packets: 0,
            status: "shutdown",
            src_name: None,
            dst_name: None,
            tcp_flags: 0,
            interfaces: Vec::new(),
            community_id: Default::default(),
            sampling: 1,
            xlat_src_addr: None,
            xlat_src_port: None,
            xlat_dst_addr: None,
            xlat_dst_port: None,
            tunnel: None,
            k8s: K8sFields::flow(None, None),
        };
        let mut a = keys(&flow);
        let mut b: Vec<String> = columns(TableKind::Flow)
            .iter()
            .map(|c| c.0.to_owned())
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let dns = DnsRecord {
            head: ExchangeHead {
                kind: "dns",
                id: Default::default(),
                agent: "".into(),
                interface: "".into(),
                time: Default::default(),
                client: Default::default(),
                client_port: 0,
                server: Default::default(),
                server_port: 0,
                community_id: Default::default(),
                k8s: K8sFields::exchange(None, None),
                xlat_server: None,
                xlat_server_port: None,
                xlat_k8s: Default::default(),
            },
            transport: "udp",
            msg_id: 0,
            q_name: None,
            q_type: None,
            q_class: None,
            rcode: None,
            answers: vec![],
            latency: None,
            status: "lost",
            role: "client",
            cut: false,
        };
        let mut a = keys(&dns);
        let mut b: Vec<String> = columns(TableKind::Dns)
            .iter()
            .map(|c| c.0.to_owned())
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn an_older_table_gets_missing_columns_and_a_conflict_is_refused() {
        // The Go devourer's flow_logs columns.
        let go = [
            ("id", "STRING"),
            ("protocol", "STRING"),
            ("src_addr", "STRING"),
            ("dst_addr", "STRING"),
            ("src_port", "INTEGER"),
            ("dst_port", "INTEGER"),
            ("first_seen_at", "TIMESTAMP"),
            ("last_seen_at", "TIMESTAMP"),
            ("src_bytes", "INTEGER"),
            ("dst_bytes", "INTEGER"),
            ("src_packets", "INTEGER"),
            ("dst_packets", "INTEGER"),
            ("status", "STRING"),
        ];
        let fields = go.iter().map(|(n, t)| field(n, t, false)).collect();
        let t = Table::new("p", "d", "flow_logs", TableSchema::new(fields));
        let Upgrade::AddColumns(missing) = upgrade(&t, TableKind::Flow).unwrap() else {
            panic!("columns to add");
        };
        assert_eq!(
            missing,
            [
                "seq",
                "agent",
                "interface",
                "icmp_type",
                "icmp_code",
                "vlan",
                "src_name",
                "dst_name",
                "tcp_flags",
                "interfaces",
                "community_id",
                "sampling",
                "xlat_src_addr",
                "xlat_src_port",
                "xlat_dst_addr",
                "xlat_dst_port",
                "tunnel",
            ]
            .into_iter()
            .chain(FLOW_SIDES.iter().flat_map(|s| s.keys))
            .collect::<Vec<_>>()
        );
        let patched = with_columns(t, TableKind::Flow, &missing);
        let ifaces = patched
            .schema
            .fields
            .as_ref()
            .unwrap()
            .iter()
            .find(|f| f.name == "interfaces")
            .unwrap();
        assert_eq!(ifaces.mode.as_deref(), Some("REPEATED"));
        let sub: Vec<&str> = ifaces
            .fields
            .as_ref()
            .unwrap()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(sub, ["interface", "direction"], "a RECORD of two strings");
        assert_eq!(
            upgrade(&patched, TableKind::Flow).unwrap(),
            Upgrade::UpToDate
        );

        let bad = Table::new(
            "p",
            "d",
            "flow_logs",
            TableSchema::new(vec![field("src_port", "STRING", false)]),
        );
        let err = upgrade(&bad, TableKind::Flow).unwrap_err();
        assert!(
            err.0
                .contains("src_port is STRING, devourer writes INTEGER"),
            "{err}"
        );
    }
}
