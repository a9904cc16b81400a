//! The TOML configuration file: its keys are the long flag names in snake_case, and its values
//! become the flags' defaults, so flags beat `DEVOURER_*` environment variables, which beat the
//! file, which beats the built-in defaults. Unknown keys and bad values name the key.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{ArgAction, ArgMatches, Command, FromArgMatches, parser::ValueSource};

use super::{Cli, command, requests};
use crate::{base::text::redact_url, kernel::object::map_bytes};

/// Where the configuration is read from when `--config` and `DEVOURER_CONFIG` are absent.
pub const DEFAULT_CONFIG: &str = "/etc/devourer/devourer.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0}: not valid TOML: {1}")]
    Toml(PathBuf, String),
    #[error(
        "{file}: unknown key `{key}` (keys are the long flag names in snake_case; see `devourer {cmd} --help`)"
    )]
    UnknownKey {
        file: PathBuf,
        key: String,
        cmd: String,
    },
    #[error("{file}: key `{key}`: {message}")]
    BadValue {
        file: PathBuf,
        key: String,
        message: String,
    },
    /// The command line itself (clap formats the message, with usage).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The file named by `--config FILE`/`--config=FILE` in `args`, else `DEVOURER_CONFIG`, else the
/// default file if it exists.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    if let Some(p) = std::env::var_os("DEVOURER_CONFIG") {
        return Some(PathBuf::from(p));
    }
    Path::new(DEFAULT_CONFIG)
        .exists()
        .then(|| PathBuf::from(DEFAULT_CONFIG))
}

/// The subcommand `args` invoke (the first argument that is not an option).
fn subcommand(args: &[OsString]) -> Option<String> {
    let mut skip = false;
    for a in args.iter().skip(1) {
        let s = a.to_string_lossy();
        if skip {
            skip = false;
            continue;
        }
        if s == "--config" {
            skip = true;
            continue;
        }
        if !s.starts_with('-') {
            return Some(s.into_owned());
        }
    }
    None
}

fn values(v: &toml::Value) -> Option<Vec<String>> {
    match v {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| values(x).and_then(|mut v| (v.len() == 1).then(|| v.remove(0))))
            .collect(),
        _ => None,
    }
}

/// Table-valued keys that are sections of their own, not flags.
const SECTIONS: &[&str] = &["capture", "api"];

/// The `[capture]` and `[api]` sections of `file`; errors name the key.
pub fn sections(file: &Path) -> Result<requests::Sections, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read(file.into(), e))?;
    requests::read_sections(&text).map_err(|e| ConfigError::BadValue {
        file: file.into(),
        key: "capture/api section".into(),
        message: e.0,
    })
}

/// Applies the file's keys as defaults of subcommand `sub`'s flags.
pub fn apply(cmd: Command, sub: &str, file: &Path) -> Result<Command, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read(file.into(), e))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigError::Toml(file.into(), e.to_string()))?;
    let Some(subcmd) = cmd.find_subcommand(sub) else {
        return Ok(cmd);
    };
    let mut defaults = Vec::new();
    for (key, value) in &table {
        // Sections (capture on request) are read by `sections`, not mapped to flags.
        if SECTIONS.contains(&key.as_str()) && value.is_table() {
            continue;
        }
        let Some(arg) = subcmd
            .get_arguments()
            .find(|a| a.get_long().is_some_and(|l| l.replace('-', "_") == *key))
        else {
            return Err(ConfigError::UnknownKey {
                file: file.into(),
                key: key.clone(),
                cmd: sub.into(),
            });
        };
        let bad = |message: String| ConfigError::BadValue {
            file: file.into(),
            key: key.clone(),
            message,
        };
        let vals = values(value)
            .ok_or_else(|| bad("expected a string, number, boolean or an array of them".into()))?;
        // Check each value with the flag's own parser, so the error names the key.
        let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        for v in &vals {
            if switch {
                if v != "true" && v != "false" {
                    return Err(bad(format!("expected true or false, not {v:?}")));
                }
                continue;
            }
            let long = arg.get_long().expect("checked above");
            let probe = Command::new("probe").arg(arg.clone().required(false));
            probe
                .try_get_matches_from(["probe".to_owned(), format!("--{long}={v}")])
                .map_err(|e| {
                    bad(e
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim_start_matches("error: ")
                        .to_owned())
                })?;
        }
        defaults.push((arg.get_id().to_string(), vals));
    }
    Ok(cmd.mut_subcommand(sub, |mut s| {
        for (key, vals) in defaults {
            s = s.mut_arg(&key, |a| a.default_values(vals));
        }
        s
    }))
}

/// Parses the command line with the configuration file's defaults applied. `--help`,
/// `--version` and usage errors come back as [`ConfigError::Cli`], which the caller prints
/// with `clap::Error::exit`.
pub fn parse(args: Vec<OsString>) -> Result<(Cli, Option<PathBuf>), ConfigError> {
    let mut cmd = command();
    let path = config_path(&args);
    if let (Some(p), Some(sub)) = (&path, subcommand(&args)) {
        cmd = apply(cmd, &sub, p)?;
    }
    let matches = cmd.try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (super::Command::Capture(a), Some(p)) = (&mut cli.command, &path) {
        *a.sections = sections(p)?;
    }
    Ok((cli, path))
}

/// `devourer config check FILE [-- ARGS]`: the effective settings of `devourer SUB ARGS` with
/// FILE, the environment and ARGS, as `key = value  # source` lines.
pub fn check(file: &Path, sub: &str, args: &[String]) -> Result<String, ConfigError> {
    let cmd = apply(command(), sub, file)?;
    let mut argv: Vec<String> = vec!["devourer".into(), sub.into()];
    argv.extend(args.iter().cloned());
    let matches = cmd.clone().try_get_matches_from(&argv)?;
    let (_, m) = matches
        .subcommand()
        .ok_or_else(|| ConfigError::Invalid("no subcommand".into()))?;
    // Make sure the typed configuration builds too, sections included.
    let cli = Cli::from_arg_matches(&matches)?;
    let secs = sections(file)?;
    if sub == "capture" {
        requests::resolve(&secs, None, None, None)
            .map_err(|e| ConfigError::Invalid(format!("capture on request: {e}")))?;
    }
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read(file.into(), e))?;
    let keys: Vec<String> = toml::from_str::<toml::Table>(&text)
        .map_err(|e| ConfigError::Toml(file.into(), e.to_string()))?
        .keys()
        .cloned()
        .collect();
    let sub_cmd = cmd
        .find_subcommand(sub)
        .ok_or_else(|| ConfigError::Invalid(format!("no subcommand {sub}")))?;
    let mut out = describe(sub_cmd, m, &keys);
    let pipeline = match &cli.command {
        super::Command::Capture(a) => Some(&a.pipeline),
        super::Command::Read(r) => Some(&r.pipeline),
        super::Command::Config(_) | super::Command::CompileFilter => None,
    };
    if let Some(p) = pipeline {
        let ncpus = aya::util::nr_cpus().map_or(1, |n| n as u64);
        // Replay, and live counting on kernels before 5.14, use two map sets.
        let sets = if sub == "read" { 2 } else { 1 };
        let bytes = map_bytes(&p.load_options(sub == "read"), ncpus, sets);
        out.push_str(&format!(
            "# kernel maps: about {:.1} MiB on this machine's {ncpus} CPUs (flow map {} entries; see --flow-map-entries)\n",
            bytes as f64 / (1 << 20) as f64,
            p.flow.flow_map_entries
        ));
    }
    Ok(out)
}

/// Settings whose values are secrets in themselves (an API key in a header).
const SECRET_VALUES: &[&str] = &["otlp_headers"];

/// One line per setting: `key = value  # source`, where the key is the flag's file key.
fn describe(sub: &Command, m: &ArgMatches, file_keys: &[String]) -> String {
    let mut out = String::new();
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.get_long().is_none() && arg.get_short().is_none() && id != "file" {
            continue;
        }
        let Some(raw) = m.get_raw(id) else { continue };
        let key = arg
            .get_long()
            .map_or_else(|| id.to_owned(), |l| l.replace('-', "_"));
        // Credentials in a URL (the Redis password) and request headers (an API key) are
        // never printed.
        let vals: Vec<String> = raw
            .map(|v| {
                if SECRET_VALUES.contains(&key.as_str()) {
                    "(set; not shown)".to_owned()
                } else {
                    redact_url(&v.to_string_lossy())
                }
            })
            .collect();
        let source = match m.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) if file_keys.contains(&key) => "file",
            Some(ValueSource::DefaultValue) => "default",
            _ => "other",
        };
        let value = if vals.len() == 1 {
            format!("{:?}", vals[0])
        } else {
            format!("{vals:?}")
        };
        out.push_str(&format!("{key} = {value}  # {source}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command as Sub;

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "devourer-config-{name}-{}.toml",
            std::process::id()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn argv(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_sets_defaults_flags_win() {
        let p = write(
            "win",
            "idle_timeout = \"30s\"\ninterface = [\"eth0\", \"eth1\"]\ndns_log_split = true\n",
        );
        let cmd = apply(command(), "capture", &p).unwrap();
        let m = cmd
            .clone()
            .try_get_matches_from(["devourer", "capture", "--idle-timeout", "7s"])
            .unwrap();
        let Sub::Capture(c) = Cli::from_arg_matches(&m).unwrap().command else {
            panic!()
        };
        assert_eq!(
            c.pipeline.flow.idle_timeout,
            std::time::Duration::from_secs(7)
        );
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        assert!(c.pipeline.dns.dns_log_split);
        let (cli, path) = parse(argv(&[
            "devourer",
            "--config",
            p.to_str().unwrap(),
            "capture",
        ]))
        .unwrap();
        assert_eq!(path.as_deref(), Some(p.as_path()));
        let Sub::Capture(c) = cli.command else {
            panic!()
        };
        assert_eq!(
            c.pipeline.flow.idle_timeout,
            std::time::Duration::from_secs(30)
        );
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let p = write("unknown", "idle_timout = \"30s\"\n");
        let e = apply(command(), "capture", &p).unwrap_err().to_string();
        assert!(e.contains("unknown key `idle_timout`"), "{e}");
        let p2 = write("bad", "idle_timeout = \"soon\"\n");
        let e = apply(command(), "capture", &p2).unwrap_err().to_string();
        assert!(e.contains("key `idle_timeout`"), "{e}");
        let p3 = write("badport", "dns_ports = \"0\"\n");
        let e = apply(command(), "capture", &p3).unwrap_err().to_string();
        assert!(e.contains("key `dns_ports`"), "{e}");
        for f in [p, p2, p3] {
            let _ = std::fs::remove_file(f);
        }
    }

    #[test]
    fn the_example_config_in_the_repository_parses() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/devourer.example.toml");
        let out = check(&example, "capture", &[]).unwrap();
        assert!(out.contains("idle_timeout = \"120s\""), "{out}");
        assert!(out.contains("http_cap = \"1024\"  # file"), "{out}");
    }

    #[test]
    fn config_check_never_prints_the_redis_password_or_the_otlp_headers() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/devourer.example.toml");
        let args = [
            "--capture-redis".to_owned(),
            "redis://:hunter2@10.0.0.1:6379".to_owned(),
            "--otlp-headers".to_owned(),
            "authorization=Bearer%20s3cret".to_owned(),
        ];
        let out = check(&example, "capture", &args).unwrap();
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains("otlp_headers = \"(set; not shown)\""), "{out}");
        assert!(
            out.contains("capture_redis = \"redis://***@10.0.0.1:6379\""),
            "{out}"
        );
        assert!(!out.contains("hunter2"), "{out}");
    }

    #[test]
    fn the_example_capture_on_request_sections_parse_when_uncommented() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/devourer.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let (_, block) = text.split_once("Capture on request").unwrap();
        let uncommented: String = block
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with('[')
                    || l.split_once(" = ")
                        .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let s =
            requests::read_sections(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let c = s.capture.unwrap();
        assert_eq!(c.limits().max_packets, 50_000);
        assert_eq!(c.aliases("public").unwrap(), ["eth0"]);
        assert_eq!(c.s3.unwrap().bucket, "pcaps");
        assert!(s.api.unwrap().token_file.is_some());
    }
}
