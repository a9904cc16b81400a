//! A real Kubernetes API server for the metadata tests (`../shared/k8s/apiserver.sh`, RBAC on),
//! started inside a test namespace so that an agent there reaches it on loopback, and a kube
//! client that talks to it from a thread moved into that namespace.

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::Value;

use crate::{Netns, run};

/// etcd and kube-apiserver running in a namespace; stopped on drop.
pub struct ApiServer {
    ns: String,
    run_dir: PathBuf,
    /// The admin's kubeconfig (a static token in `system:masters`).
    pub kubeconfig: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s/apiserver.sh")
}

impl ApiServer {
    /// Starts one with RBAC authorization, its state in `run_dir`.
    pub fn start(ns: &Netns, run_dir: &Path) -> Self {
        let s = Self {
            ns: ns.name.clone(),
            run_dir: run_dir.to_owned(),
            kubeconfig: run_dir.join("kubeconfig"),
        };
        s.up();
        s
    }

    fn script(&self, verb: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "bash"])
            .arg(script())
            .arg(verb)
            .env("RUN_DIR", &self.run_dir)
            .env("AUTHZ_MODE", "RBAC");
        c
    }

    /// Starts it (again: etcd's data, the certificates and the signing key stay).
    pub fn up(&self) {
        run(&mut self.script("start"));
    }

    pub fn down(&self) {
        let _ = self.script("stop").status();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// Moves the calling thread into `ns` (sockets it opens from now on live there).
pub fn enter(ns: &Netns) {
    let f = std::fs::File::open(format!("/var/run/netns/{}", ns.name)).expect("netns file");
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A client of the API server, used from one thread (see [`enter`]).
pub struct Kube {
    rt: tokio::runtime::Runtime,
    client: Client,
}

/// The API resource of `apiVersion` and `kind` (plurals are the kind's lower case plus `s`
/// for every kind the tests use).
fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = format!("{}s", kind.to_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

impl Kube {
    pub fn new(kubeconfig: &Path) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let client = rt.block_on(async {
            let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .expect("kube config");
            Client::try_from(cfg).expect("kube client")
        });
        Self { rt, client }
    }

    fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let ar = resource(api_version, kind);
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// Creates `obj` (its `apiVersion`, `kind` and `metadata.namespace` say where); returns it
    /// as stored (with its uid).
    pub fn create(&self, obj: Value) -> Value {
        let av = obj["apiVersion"].as_str().expect("apiVersion").to_owned();
        let kind = obj["kind"].as_str().expect("kind").to_owned();
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
        let api = self.api(&av, &kind, ns.as_deref());
        let o: DynamicObject = serde_json::from_value(obj).expect("object");
        let made = self
            .rt
            .block_on(api.create(&PostParams::default(), &o))
            .unwrap_or_else(|e| panic!("creating {kind}: {e}"));
        serde_json::to_value(made).expect("json")
    }

    /// Creates every object, `parallel` requests at a time, each followed by its status
    /// patch when one is given (what a kubelet would report).
    pub fn create_all(&self, objs: Vec<(Value, Option<Value>)>, parallel: usize) {
        self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (obj, status) in objs {
                while set.len() >= parallel.max(1) {
                    set.join_next().await.expect("a task").expect("created");
                }
                let av = obj["apiVersion"].as_str().expect("apiVersion").to_owned();
                let kind = obj["kind"].as_str().expect("kind").to_owned();
                let ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
                let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
                let api = self.api(&av, &kind, ns.as_deref());
                let o: DynamicObject = serde_json::from_value(obj).expect("object");
                set.spawn(async move {
                    api.create(&PostParams::default(), &o)
                        .await
                        .unwrap_or_else(|e| panic!("creating {kind} {name}: {e}"));
                    if let Some(st) = status {
                        let patch = serde_json::json!({ "status": st });
                        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .unwrap_or_else(|e| panic!("patching {kind} {name}'s status: {e}"));
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                r.expect("created");
            }
        });
    }

    /// Merges `status` into an object's status (what a kubelet would report).
    pub fn patch_status(
        &self,
        (api_version, kind): (&str, &str),
        ns: Option<&str>,
        name: &str,
        status: Value,
    ) {
        let api = self.api(api_version, kind, ns);
        let patch = serde_json::json!({ "status": status });
        self.rt
            .block_on(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .unwrap_or_else(|e| panic!("patching {kind} {name}'s status: {e}"));
    }

    /// Deletes at once (no grace period: there is no kubelet to wait for).
    pub fn delete(&self, (api_version, kind): (&str, &str), ns: Option<&str>, name: &str) {
        let api = self.api(api_version, kind, ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        self.rt
            .block_on(api.delete(name, &dp))
            .unwrap_or_else(|e| panic!("deleting {kind} {name}: {e}"));
    }

    /// Whether listing `kind` (in `ns`, or everywhere) is allowed.
    pub fn can_list(&self, (api_version, kind): (&str, &str), ns: Option<&str>) -> bool {
        let api = self.api(api_version, kind, ns);
        match self.rt.block_on(api.list(&Default::default())) {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 403 => false,
            Err(e) => panic!("listing {kind}: {e}"),
        }
    }

    /// A token of ServiceAccount `ns/name` (the TokenRequest API).
    pub fn token(&self, ns: &str, name: &str) -> String {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let req: TokenRequest = serde_json::from_value(serde_json::json!({
            "spec": { "audiences": [], "expirationSeconds": 3600 }
        }))
        .expect("token request");
        let made = self
            .rt
            .block_on(api.create_token_request(name, &PostParams::default(), &req))
            .unwrap_or_else(|e| panic!("a token of {ns}/{name}: {e}"));
        made.status.expect("token status").token
    }
}

/// A kubeconfig for `server` with a bearer token (the self-signed certificate not verified).
pub fn kubeconfig(path: &Path, server: &str, token: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
    );
    std::fs::write(path, text).expect("writing a kubeconfig");
}

/// The documents of a YAML manifest as JSON (python3's yaml, which the deploy check uses).
pub fn manifest(path: &Path) -> Vec<Value> {
    let out = run(Command::new("python3").args([
        "-c",
        "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
    ]).arg(path));
    serde_json::from_slice(&out.stdout).expect("manifest as JSON")
}
