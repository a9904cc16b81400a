#!/usr/bin/env python3
"""Checks deploy/kubernetes offline: core manifests against the Kubernetes schemas
(kubernetes-validate, strict), the ServiceMonitor (a CRD) for its shape, and the DaemonSet's
args and env together with the ConfigMap's devourer.toml through `devourer config check`.

usage: check_deploy.py DEPLOY_DIR DEVOURER_BIN
"""

import os
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

CORE = {
    "Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Service", "Secret",
    "ClusterRole", "ClusterRoleBinding",
}
# What the agent does with the API: list and watch pods, Services, nodes, ReplicaSets.
READ = ["list", "watch"]
ALLOWED = {
    ("", "pods"), ("", "services"), ("", "nodes"), ("apps", "replicasets"),
}


def main():
    deploy, devourer = sys.argv[1], sys.argv[2]
    kdir = os.path.join(deploy, "kubernetes")
    docs = []
    for sub in ["", "monitoring"]:
        for name in sorted(os.listdir(os.path.join(kdir, sub))):
            if not name.endswith(".yaml") or name == "kustomization.yaml":
                continue
            with open(os.path.join(kdir, sub, name)) as f:
                for doc in yaml.safe_load_all(f):
                    if doc:
                        docs.append((os.path.join(sub, name), doc))
    kinds = {d["kind"] for _, d in docs}
    missing = {
        "Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Service", "ServiceMonitor",
        "ClusterRole", "ClusterRoleBinding",
    } - kinds
    assert not missing, f"missing manifests: {missing}"
    version = kubernetes_validate.latest_version()
    for name, doc in docs:
        if doc["kind"] in CORE:
            kubernetes_validate.validate(doc, version, strict=True)
            print(f"ok {name}: {doc['kind']} valid against Kubernetes {version}")
        elif doc["kind"] == "ServiceMonitor":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
            spec = doc["spec"]
            assert spec["selector"]["matchLabels"], "ServiceMonitor selects nothing"
            assert all(e.get("port") for e in spec["endpoints"]), "endpoints need a port"
            print(f"ok {name}: ServiceMonitor well-formed")
        else:
            raise AssertionError(f"{name}: unexpected kind {doc['kind']}")

    # Least privilege: read-only, on exactly those resources, bound to the agent's account.
    role = next(d for _, d in docs if d["kind"] == "ClusterRole")
    granted = set()
    for rule in role["rules"]:
        assert sorted(rule["verbs"]) == sorted(READ), rule
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                granted.add((g, r))
    assert granted == ALLOWED, f"ClusterRole grants {granted ^ ALLOWED} beyond or short of {ALLOWED}"
    sa = next(d for _, d in docs if d["kind"] == "ServiceAccount")
    assert sa.get("automountServiceAccountToken") is True, "the agent needs its token"
    binding = next(d for _, d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{
        "kind": "ServiceAccount",
        "name": sa["metadata"]["name"],
        "namespace": sa["metadata"]["namespace"],
    }], binding["subjects"]
    print(f"ok rbac: read-only on {sorted(granted)}, bound to {sa['metadata']['name']}")

    for sub in ["", "monitoring"]:
        with open(os.path.join(kdir, sub, "kustomization.yaml")) as f:
            kust = yaml.safe_load(f)
        for r in kust["resources"]:
            assert os.path.exists(os.path.join(kdir, sub, r)), f"kustomization lists missing {r}"

    # The DaemonSet's container, its args and env, with the ConfigMap's configuration.
    ds = next(d for _, d in docs if d["kind"] == "DaemonSet")
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and sorted(caps["add"]) == ["BPF", "NET_ADMIN", "PERFMON"], caps
    assert not c["securityContext"].get("privileged"), "not privileged"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False, "no privilege escalation"
    assert c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, "seccomp"
    assert pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    # The probes on their own listener on the node's loopback (--probe-addr's default).
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = c[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == ("127.0.0.1", 9404, path), get
    assert any(
        v.get("hostPath", {}).get("path") == "/var/lib/devourer" for v in pod["volumes"]
    ), "spool on a hostPath"
    env = {"PATH": os.environ.get("PATH", "")}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
            env[e["name"]] = "node-from-downward-api"
        # secretKeyRef values are optional; without the secret they are absent.
    args = list(c["args"])
    assert args[0] == "capture", args
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")["mountPath"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "devourer.toml")
        with open(path, "w") as f:
            f.write(cm["data"]["devourer.toml"])
        # The args name the file where the ConfigMap is mounted: point them at our copy.
        rest = []
        skip = False
        for a in args[1:]:
            if skip:
                assert a.startswith(config_mount), a
                skip = False
                continue
            if a == "--config":
                skip = True
                continue
            rest.append(a)
        out = subprocess.run(
            [devourer, "config", "check", path, "--for", "capture", "--", *rest],
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert 'agent_name = "node-from-downward-api"  # environment' in out.stdout, out.stdout
        assert 'all_interfaces = "true"  # file' in out.stdout, out.stdout
        print("ok DaemonSet args, env and ConfigMap parse with devourer config check")


if __name__ == "__main__":
    main()
