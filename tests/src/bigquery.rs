//! The fake BigQuery (tests/fake_bigquery.py: the real v2 discovery document validates every
//! request, a generated service-account key signs the JWT its token endpoint checks), started
//! and steered from tests and the soak.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{Bg, Netns, TempDir, run};

/// `program`, in namespace `ns` when given.
fn in_ns(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", n, program]);
            c
        }
        None => Command::new(program),
    }
}

/// tests/fake_bigquery.py, in the root namespace or one of the test's.
pub struct FakeBigQuery {
    pub bg: Bg,
    pub port: u16,
    pub key: PathBuf,
    ns: Option<String>,
}

impl FakeBigQuery {
    /// Starts the fake on loopback; `seed` pre-creates tables (`p/d/t=col:TYPE,...`).
    pub fn start(dir: &TempDir, seed: &[&str]) -> Self {
        Self::start_in(None, dir, seed)
    }

    /// The same inside namespace `ns` (for an agent capturing there).
    pub fn start_in(ns: Option<&Netns>, dir: &TempDir, seed: &[&str]) -> Self {
        let ns = ns.map(|n| n.name.clone());
        let key = dir.path("key.json");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fake_bigquery.py");
        let mut cmd = in_ns(ns.as_deref(), "python3");
        cmd.arg(script).arg("--write-key").arg(&key);
        for s in seed {
            cmd.args(["--seed-table", s]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut bg = Bg::spawn(cmd, "fake BigQuery");
        let out = bg.child.as_mut().unwrap().stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("fake BigQuery port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("fake BigQuery said {line:?}"));
        Self { bg, port, key, ns }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn control(&self, body: &str) {
        run(in_ns(self.ns.as_deref(), "curl")
            .args(["-sf", "-X", "POST", "-d", body])
            .arg(self.url("/control")));
    }

    pub fn get(&self, path: &str) -> Value {
        let out = run(in_ns(self.ns.as_deref(), "curl")
            .arg("-sf")
            .arg(self.url(path)));
        serde_json::from_slice(&out.stdout).expect("fake JSON")
    }

    pub fn state(&self) -> Value {
        self.get("/control/state")
    }

    pub fn ids(&self, table: &str) -> BTreeSet<String> {
        self.get(&format!("/control/rows?table=p/d/{table}"))
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }
}
