//! Each record's fields, defined once ([`Record::fields`], in column order) and walked by every
//! encoding: the JSON line ([`super::json::Object`]), the BigQuery columns ([`Columns`]) and
//! rows, and msgpack ([`Msgpack`], fluentd's Forward protocol). A field added to a record's
//! `fields` appears in all of them.

/// What a column holds (BigQuery's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    String,
    Integer,
    Float,
    Boolean,
    /// An RFC 3339 time (a string in JSON and msgpack).
    Timestamp,
    /// Objects, each with fields of their own.
    Record,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "STRING",
            Self::Integer => "INTEGER",
            Self::Float => "FLOAT",
            Self::Boolean => "BOOLEAN",
            Self::Timestamp => "TIMESTAMP",
            Self::Record => "RECORD",
        }
    }
}

/// What an encoding does with each kind of field. Every field is written in every record,
/// `None` as null.
pub trait Fields {
    fn str(&mut self, key: &'static str, v: &str);
    fn opt_str(&mut self, key: &'static str, v: Option<&str>);
    fn uint(&mut self, key: &'static str, v: u64);
    fn opt_uint(&mut self, key: &'static str, v: Option<u64>);
    /// An RFC 3339 time.
    fn time(&mut self, key: &'static str, v: &str);
    /// A number other than an integer (null for what JSON cannot hold).
    fn float(&mut self, key: &'static str, v: Option<f64>);
    fn bool(&mut self, key: &'static str, v: bool);
    /// A boolean that may be null.
    fn opt_bool(&mut self, key: &'static str, v: Option<bool>) {
        match v {
            Some(b) => self.bool(key, b),
            None => self.opt_str(key, None),
        }
    }
    /// An array of strings.
    fn strs<S: AsRef<str>>(&mut self, key: &'static str, v: &[S]);
    /// An array of objects.
    fn objects<T: Nested>(&mut self, key: &'static str, v: &[T]);
    /// Nullable string fields that are all null, with their JSON (`"a":null,"b":null`) for
    /// encodings that can copy it.
    fn nulls(&mut self, keys: &[&'static str], _json: &'static str) {
        for k in keys {
            self.opt_str(k, None);
        }
    }
}

/// A record, or an object inside one: its fields in column order.
pub trait Record {
    fn fields<F: Fields>(&self, f: &mut F);
}

/// An object in a record's array: a sample tells its fields when the array is empty.
pub trait Nested: Record {
    fn sample() -> Self;
}

/// One column: its name, type, whether it repeats, and a record's own columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
    pub repeated: bool,
    pub fields: Vec<Column>,
}

/// The columns of a record, as its fields name and type them.
#[derive(Debug, Default)]
pub struct Columns(pub Vec<Column>);

impl Columns {
    /// The columns of `r`'s kind of record (any record of the kind: a null field still names
    /// its type).
    pub fn of<R: Record>(r: &R) -> Vec<Column> {
        let mut c = Self::default();
        r.fields(&mut c);
        c.0
    }

    fn push(&mut self, name: &'static str, ty: Type, repeated: bool) {
        self.0.push(Column {
            name,
            ty,
            repeated,
            fields: Vec::new(),
        });
    }
}

impl Fields for Columns {
    fn str(&mut self, key: &'static str, _: &str) {
        self.push(key, Type::String, false);
    }
    fn opt_str(&mut self, key: &'static str, _: Option<&str>) {
        self.push(key, Type::String, false);
    }
    fn uint(&mut self, key: &'static str, _: u64) {
        self.push(key, Type::Integer, false);
    }
    fn opt_uint(&mut self, key: &'static str, _: Option<u64>) {
        self.push(key, Type::Integer, false);
    }
    fn time(&mut self, key: &'static str, _: &str) {
        self.push(key, Type::Timestamp, false);
    }
    fn float(&mut self, key: &'static str, _: Option<f64>) {
        self.push(key, Type::Float, false);
    }
    fn bool(&mut self, key: &'static str, _: bool) {
        self.push(key, Type::Boolean, false);
    }
    fn opt_bool(&mut self, key: &'static str, _: Option<bool>) {
        self.push(key, Type::Boolean, false);
    }
    fn strs<S: AsRef<str>>(&mut self, key: &'static str, _: &[S]) {
        self.push(key, Type::String, true);
    }
    fn objects<T: Nested>(&mut self, key: &'static str, _: &[T]) {
        self.0.push(Column {
            name: key,
            ty: Type::Record,
            repeated: true,
            fields: Self::of(&T::sample()),
        });
    }
}

/// Another encoding without one field (BigQuery rows leave out `type`: it is the table).
pub struct Without<'a, F> {
    pub inner: &'a mut F,
    pub key: &'static str,
}

impl<F: Fields> Fields for Without<'_, F> {
    fn str(&mut self, key: &'static str, v: &str) {
        if key != self.key {
            self.inner.str(key, v);
        }
    }
    fn opt_str(&mut self, key: &'static str, v: Option<&str>) {
        if key != self.key {
            self.inner.opt_str(key, v);
        }
    }
    fn uint(&mut self, key: &'static str, v: u64) {
        if key != self.key {
            self.inner.uint(key, v);
        }
    }
    fn opt_uint(&mut self, key: &'static str, v: Option<u64>) {
        if key != self.key {
            self.inner.opt_uint(key, v);
        }
    }
    fn time(&mut self, key: &'static str, v: &str) {
        if key != self.key {
            self.inner.time(key, v);
        }
    }
    fn float(&mut self, key: &'static str, v: Option<f64>) {
        if key != self.key {
            self.inner.float(key, v);
        }
    }
    fn bool(&mut self, key: &'static str, v: bool) {
        if key != self.key {
            self.inner.bool(key, v);
        }
    }
    fn strs<S: AsRef<str>>(&mut self, key: &'static str, v: &[S]) {
        if key != self.key {
            self.inner.strs(key, v);
        }
    }
    fn objects<T: Nested>(&mut self, key: &'static str, v: &[T]) {
        if key != self.key {
            self.inner.objects(key, v);
        }
    }
    fn nulls(&mut self, keys: &[&'static str], json: &'static str) {
        if keys.contains(&self.key) {
            for k in keys {
                self.opt_str(k, None);
            }
        } else {
            self.inner.nulls(keys, json);
        }
    }
}

/// A record as a msgpack map (fluentd's Forward protocol): keys as strings, times as RFC 3339
/// strings, null for `None`.
pub struct Msgpack<'a> {
    out: &'a mut Vec<u8>,
    /// Where the map's entry count goes, and the count so far.
    at: usize,
    entries: u32,
}

impl<'a> Msgpack<'a> {
    /// Opens a map in `out`; [`Self::close`] writes its size.
    pub fn open(out: &'a mut Vec<u8>) -> Self {
        // map32, its count filled in at the close: the fields are counted as they go.
        out.push(0xdf);
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        Self {
            out,
            at,
            entries: 0,
        }
    }

    pub fn close(self) {
        self.out[self.at..self.at + 4].copy_from_slice(&self.entries.to_be_bytes());
    }

    /// Appends `r` as one map.
    pub fn write<R: Record>(r: &R, out: &mut Vec<u8>) {
        let mut m = Msgpack::open(out);
        r.fields(&mut m);
        m.close();
    }

    fn key(&mut self, key: &str) {
        self.entries += 1;
        string(self.out, key);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(out, s).expect("writing to a Vec cannot fail");
}

fn nil(out: &mut Vec<u8>) {
    rmp::encode::write_nil(out).expect("writing to a Vec cannot fail");
}

fn uint(out: &mut Vec<u8>, v: u64) {
    rmp::encode::write_uint(out, v).expect("writing to a Vec cannot fail");
}

impl Fields for Msgpack<'_> {
    fn str(&mut self, key: &'static str, v: &str) {
        self.key(key);
        string(self.out, v);
    }
    fn opt_str(&mut self, key: &'static str, v: Option<&str>) {
        self.key(key);
        match v {
            Some(v) => string(self.out, v),
            None => nil(self.out),
        }
    }
    fn uint(&mut self, key: &'static str, v: u64) {
        self.key(key);
        uint(self.out, v);
    }
    fn opt_uint(&mut self, key: &'static str, v: Option<u64>) {
        self.key(key);
        match v {
            Some(v) => uint(self.out, v),
            None => nil(self.out),
        }
    }
    fn time(&mut self, key: &'static str, v: &str) {
        self.str(key, v);
    }
    fn float(&mut self, key: &'static str, v: Option<f64>) {
        self.key(key);
        match v {
            // As JSON: what it cannot hold is null.
            Some(v) if v.is_finite() => {
                rmp::encode::write_f64(self.out, v).expect("writing to a Vec cannot fail");
            }
            _ => nil(self.out),
        }
    }
    fn bool(&mut self, key: &'static str, v: bool) {
        self.key(key);
        rmp::encode::write_bool(self.out, v).expect("writing to a Vec cannot fail");
    }
    fn strs<S: AsRef<str>>(&mut self, key: &'static str, v: &[S]) {
        self.key(key);
        rmp::encode::write_array_len(self.out, v.len() as u32)
            .expect("writing to a Vec cannot fail");
        for s in v {
            string(self.out, s.as_ref());
        }
    }
    fn objects<T: Nested>(&mut self, key: &'static str, v: &[T]) {
        self.key(key);
        rmp::encode::write_array_len(self.out, v.len() as u32)
            .expect("writing to a Vec cannot fail");
        for item in v {
            Msgpack::write(item, self.out);
        }
    }
}

#[cfg(test)]
pub mod tests {
    use serde_json::Value;

    use super::*;
    use crate::record::{DnsRecord, FlowRecord, OverflowRecord, json::Object};

    /// msgpack as the JSON it stands for.
    fn json_of(v: rmpv::Value) -> Value {
        match v {
            rmpv::Value::Nil => Value::Null,
            rmpv::Value::Boolean(b) => b.into(),
            rmpv::Value::Integer(i) => i.as_u64().expect("unsigned").into(),
            rmpv::Value::F64(f) => f.into(),
            rmpv::Value::String(s) => s.into_str().expect("UTF-8").into(),
            rmpv::Value::Array(a) => a.into_iter().map(json_of).collect(),
            rmpv::Value::Map(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k.as_str().expect("string keys").to_owned(), json_of(v)))
                    .collect(),
            ),
            other => panic!("not an encoding of a record: {other:?}"),
        }
    }

    /// The keys of an encoded object, in order.
    fn msgpack_keys(bytes: &[u8]) -> Vec<String> {
        let v = rmpv::decode::read_value(&mut &bytes[..]).expect("msgpack");
        v.as_map()
            .expect("a map")
            .iter()
            .map(|(k, _)| k.as_str().unwrap().to_owned())
            .collect()
    }

    /// Whether a JSON value fits a column's type.
    fn fits(v: &Value, c: &Column) -> bool {
        if v.is_null() {
            return !c.repeated;
        }
        if c.repeated {
            let item = Column {
                repeated: false,
                ..c.clone()
            };
            return v
                .as_array()
                .is_some_and(|a| a.iter().all(|x| fits(x, &item)));
        }
        match c.ty {
            Type::String | Type::Timestamp => v.is_string(),
            Type::Integer => v.is_u64(),
            Type::Float => v.is_number(),
            Type::Boolean => v.is_boolean(),
            Type::Record => v.as_object().is_some_and(|o| {
                o.len() == c.fields.len() && c.fields.iter().all(|f| fits(&o[f.name], f))
            }),
        }
    }

    /// `r`'s JSON, msgpack and columns hold the same fields in the same order, each with the
    /// same value and of its column's type.
    pub fn assert_encodings_agree<R: Record>(r: &R) {
        let mut json = Vec::new();
        Object::write(r, &mut json);
        let text = String::from_utf8(json.clone()).expect("UTF-8");
        let from_json: Value =
            serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}: {text}"));
        let mut mp = Vec::new();
        Msgpack::write(r, &mut mp);
        let keys = msgpack_keys(&mp);
        let from_msgpack = json_of(rmpv::decode::read_value(&mut &mp[..]).expect("msgpack"));
        assert_eq!(from_json, from_msgpack, "{text}");
        let columns = Columns::of(r);
        let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
        assert_eq!(names, keys, "columns and msgpack keys, in order");
        // JSON keys in order: each column's key appears in the text in column order.
        let mut at = 0;
        for c in &columns {
            let needle = format!("\"{}\":", c.name);
            let found = text[at..]
                .find(&needle)
                .unwrap_or_else(|| panic!("{} in {text}", c.name));
            at += found + needle.len();
            assert!(
                fits(&from_json[c.name], c),
                "{} is not {:?}: {text}",
                c.name,
                c.ty
            );
        }
        assert_eq!(
            from_json.as_object().unwrap().len(),
            columns.len(),
            "{text}"
        );
    }

    #[test]
    fn a_row_is_the_record_without_its_type() {
        let r = FlowRecord::sample();
        let mut row = Vec::new();
        crate::record::Batch::Flow(std::slice::from_ref(&r))
            .encode(&mut crate::record::RowLines(&mut row));
        let mut line = Vec::new();
        Object::write(&r, &mut line);
        let (row, mut line): (Value, Value) = (
            serde_json::from_slice(&row).unwrap(),
            serde_json::from_slice(&line).unwrap(),
        );
        line.as_object_mut().unwrap().remove("type");
        assert_eq!(row, line);
    }

    #[test]
    fn http_records_encode_alike_with_and_without_their_optional_fields() {
        let empty = crate::record::HttpRecord {
            head: crate::record::ExchangeHead::sample("http"),
            role: "client",
            message: "request",
            method: None,
            target: None,
            version: None,
            host: None,
            user_agent: None,
            status_code: None,
            reason: None,
            content_length: None,
            content_type: None,
            latency: None,
            truncated: Vec::new(),
        };
        let full = crate::record::HttpRecord {
            message: "response",
            method: Some("GET".into()),
            target: Some("/a\"b".into()),
            version: Some("HTTP/1.1".into()),
            host: Some("ünï.example".into()),
            user_agent: Some("curl/8".into()),
            status_code: Some(200),
            reason: Some("OK".into()),
            content_length: Some(u64::MAX),
            content_type: Some("text/plain".into()),
            latency: Some(0.000_25),
            truncated: vec!["target", "host"],
            ..empty.clone()
        };
        for r in [empty, full] {
            assert_encodings_agree(&r);
        }
    }

    #[test]
    fn the_samples_encode_alike_and_name_every_column() {
        assert_encodings_agree(&FlowRecord::sample());
        assert_encodings_agree(&DnsRecord::sample());
        assert_encodings_agree(&OverflowRecord::sample());
        let interfaces = Columns::of(&FlowRecord::sample())
            .into_iter()
            .find(|c| c.name == "interfaces")
            .unwrap();
        assert_eq!((interfaces.ty, interfaces.repeated), (Type::Record, true));
        assert_eq!(
            interfaces.fields.iter().map(|c| c.name).collect::<Vec<_>>(),
            ["interface", "direction"]
        );
    }
}
