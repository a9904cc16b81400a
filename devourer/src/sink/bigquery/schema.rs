//! The BigQuery tables: their columns (design.md's record fields), partitioning and clustering,
//! and how an existing table is brought up to date (missing columns added as NULLABLE; a
//! column of another type is an error).

use gcp_bigquery_client::model::{
    clustering::Clustering, field_type::FieldType, table::Table,
    table_field_schema::TableFieldSchema, table_schema::TableSchema,
    time_partitioning::TimePartitioning,
};

use crate::record::{
    DnsRecord, FlowRecord, OverflowRecord,
    fields::{Column, Columns, Type},
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

/// The table's columns in record order: its records' fields ([`crate::record::fields`])
/// without `type` (the table is the type).
pub fn columns(kind: TableKind) -> Vec<Column> {
    let all = match kind {
        TableKind::Flow => Columns::of(&FlowRecord::sample()),
        TableKind::Dns => Columns::of(&DnsRecord::sample()),
        TableKind::Overflow => Columns::of(&OverflowRecord::sample()),
    };
    all.into_iter().filter(|c| c.name != "type").collect()
}

fn field_type(t: Type) -> FieldType {
    match t {
        Type::String => FieldType::String,
        Type::Integer => FieldType::Integer,
        Type::Timestamp => FieldType::Timestamp,
        Type::Float => FieldType::Float,
        Type::Boolean => FieldType::Boolean,
        Type::Record => FieldType::Record,
    }
}

fn field(c: &Column) -> TableFieldSchema {
    let mut f = TableFieldSchema::new(c.name, field_type(c.ty));
    f.mode = Some(if c.repeated { "REPEATED" } else { "NULLABLE" }.to_owned());
    if c.ty == Type::Record {
        f.fields = Some(c.fields.iter().map(field).collect());
    }
    f
}

/// The table devourer creates: partitioned by day on the record's time, clustered by addresses.
pub fn new_table(project: &str, dataset: &str, table: &str, kind: TableKind) -> Table {
    let fields = columns(kind).iter().map(field).collect();
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
    for c in columns(kind) {
        let (name, t) = (c.name, c.ty.name());
        match have.iter().find(|(n, _)| n == name) {
            Some((_, ht)) if !same_type(ht, t) => {
                conflicts.push(format!("{name} is {ht}, devourer writes {t}"));
            }
            Some(_) => {}
            None => missing.push(name.to_owned()),
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
    for c in columns(kind) {
        if missing.iter().any(|m| m == c.name) {
            fields.push(field(&c));
        }
    }
    existing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::k8s::{EXCHANGE_SIDES, FLOW_SIDES};

    /// A column of one value.
    fn col(name: &'static str, t: &str) -> TableFieldSchema {
        let ty = match t {
            "INTEGER" => Type::Integer,
            "TIMESTAMP" => Type::Timestamp,
            _ => Type::String,
        };
        field(&Column {
            name,
            ty,
            repeated: false,
            fields: Vec::new(),
        })
    }

    /// Every column as the tables had them before the columns were derived from the records
    /// (name, type, repeated), in order: a table created then must take today's rows.
    #[test]
    fn the_derived_columns_are_the_tables_columns_exactly() {
        type Golden<'a> = &'a [(&'a str, &'a str, bool)];
        let golden: [(TableKind, Golden<'_>); 3] = [
            (
                TableKind::Flow,
                &[
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
                    ("dst_name_source", "STRING", false),
                    ("tcp_flags", "INTEGER", false),
                    ("interfaces", "RECORD", true),
                    ("community_id", "STRING", false),
                    ("sampling", "INTEGER", false),
                    ("xlat_src_addr", "STRING", false),
                    ("xlat_src_port", "INTEGER", false),
                    ("xlat_dst_addr", "STRING", false),
                    ("xlat_dst_port", "INTEGER", false),
                    ("tunnel", "STRING", false),
                    ("drops_packets", "INTEGER", false),
                    ("drops_bytes", "INTEGER", false),
                    ("drop_reasons", "RECORD", true),
                    ("tcp_handshake_rtt", "FLOAT", false),
                    ("tcp_srtt_min", "FLOAT", false),
                    ("tcp_srtt_max", "FLOAT", false),
                    ("tcp_srtt_last", "FLOAT", false),
                    ("tcp_retransmits", "INTEGER", false),
                    ("tcp_failed", "BOOLEAN", false),
                    ("tls_sni", "STRING", false),
                    ("tls_alpn", "STRING", true),
                    ("tls_version", "STRING", false),
                    ("tls_version_negotiated", "STRING", false),
                    ("tls_ja4", "STRING", false),
                    ("tls_ech", "BOOLEAN", false),
                    ("src_k8s_namespace", "STRING", false),
                    ("src_k8s_pod", "STRING", false),
                    ("src_k8s_owner_kind", "STRING", false),
                    ("src_k8s_owner", "STRING", false),
                    ("src_k8s_node", "STRING", false),
                    ("src_k8s_service", "STRING", false),
                    ("src_k8s_zone", "STRING", false),
                    ("dst_k8s_namespace", "STRING", false),
                    ("dst_k8s_pod", "STRING", false),
                    ("dst_k8s_owner_kind", "STRING", false),
                    ("dst_k8s_owner", "STRING", false),
                    ("dst_k8s_node", "STRING", false),
                    ("dst_k8s_service", "STRING", false),
                    ("dst_k8s_zone", "STRING", false),
                ][..],
            ),
            (
                TableKind::Dns,
                &[
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
                    ("client_k8s_zone", "STRING", false),
                    ("server_k8s_namespace", "STRING", false),
                    ("server_k8s_pod", "STRING", false),
                    ("server_k8s_owner_kind", "STRING", false),
                    ("server_k8s_owner", "STRING", false),
                    ("server_k8s_node", "STRING", false),
                    ("server_k8s_service", "STRING", false),
                    ("server_k8s_zone", "STRING", false),
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
                ][..],
            ),
            (
                TableKind::Overflow,
                &[
                    ("id", "STRING", false),
                    ("agent", "STRING", false),
                    ("interface", "STRING", false),
                    ("protocol", "STRING", false),
                    ("time", "TIMESTAMP", false),
                    ("packets", "INTEGER", false),
                    ("bytes", "INTEGER", false),
                ][..],
            ),
        ];
        for (kind, want) in golden {
            let got: Vec<(&str, &str, bool)> = columns(kind)
                .iter()
                .map(|c| (c.name, c.ty.name(), c.repeated))
                .collect();
            assert_eq!(got, want, "{kind:?}");
        }
    }

    #[test]
    fn the_tables_hold_design_md_s_columns_with_their_types() {
        let names = |k| columns(k).iter().map(|c| c.name).collect::<Vec<_>>();
        let dns = names(TableKind::Dns);
        assert_eq!(dns[..4], ["id", "agent", "interface", "time"]);
        assert!(
            EXCHANGE_SIDES
                .iter()
                .flat_map(|s| s.keys)
                .all(|k| dns.contains(&k))
        );
        assert!(
            FLOW_SIDES
                .iter()
                .flat_map(|s| s.keys)
                .all(|k| names(TableKind::Flow).contains(&k))
        );
        assert_eq!(
            names(TableKind::Overflow),
            [
                "id",
                "agent",
                "interface",
                "protocol",
                "time",
                "packets",
                "bytes"
            ]
        );
        let ty = |k, n: &str| columns(k).into_iter().find(|c| c.name == n).unwrap();
        assert_eq!(ty(TableKind::Flow, "first_seen_at").ty, Type::Timestamp);
        assert_eq!(ty(TableKind::Dns, "latency").ty, Type::Float);
        assert_eq!(ty(TableKind::Dns, "cut").ty, Type::Boolean);
        let answers = ty(TableKind::Dns, "answers");
        assert_eq!((answers.ty, answers.repeated), (Type::String, true));
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
        let fields = go.iter().map(|(n, t)| col(n, t)).collect();
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
                "dst_name_source",
                "tcp_flags",
                "interfaces",
                "community_id",
                "sampling",
                "xlat_src_addr",
                "xlat_src_port",
                "xlat_dst_addr",
                "xlat_dst_port",
                "tunnel",
                "drops_packets",
                "drops_bytes",
                "drop_reasons",
                "tcp_handshake_rtt",
                "tcp_srtt_min",
                "tcp_srtt_max",
                "tcp_srtt_last",
                "tcp_retransmits",
                "tcp_failed",
                "tls_sni",
                "tls_alpn",
                "tls_version",
                "tls_version_negotiated",
                "tls_ja4",
                "tls_ech",
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
            TableSchema::new(vec![col("src_port", "STRING")]),
        );
        let err = upgrade(&bad, TableKind::Flow).unwrap_err();
        assert!(
            err.0
                .contains("src_port is STRING, devourer writes INTEGER"),
            "{err}"
        );
    }
}
