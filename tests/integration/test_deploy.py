"""deploy/kubernetes/regmesh.yaml: no cluster runs here (and kubectl's
client dry run needs an API server), so the manifests are checked for what
would break them: well-formed objects, selectors that match, volumes that
exist, probes on the admin port; the embedded configuration passes
check-config once rendered for a machine and refuses the placeholder key;
and the init container's client-config command writes containerd's files."""

import base64
import os
import re

import pytest

from rmtest import util

yaml = pytest.importorskip("yaml", reason="python3-yaml is not installed")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(REPO, "deploy", "kubernetes", "regmesh.yaml")


def _docs():
    with open(MANIFEST) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return {d["kind"]: d for d in docs}, docs


def test_manifests_are_consistent():
    by_kind, docs = _docs()
    assert set(by_kind) == {"Namespace", "Secret", "ConfigMap", "Service", "DaemonSet"}
    for d in docs:
        assert d.get("apiVersion") and d["metadata"].get("name"), d
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "regmesh", d["metadata"]
    ds = by_kind["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    spec, pod = ds["spec"], ds["spec"]["template"]["spec"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
    svc = by_kind["Service"]["spec"]
    assert svc["clusterIP"] == "None"
    assert all(labels.get(k) == v for k, v in svc["selector"].items())
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["initContainers"] + pod["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (c["name"], m)
        names = [p["name"] for p in c.get("ports", [])]
        assert len(names) == len(set(names)) and all(len(n) <= 15 for n in names), names
    assert volumes["config"]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert volumes["cluster-key"]["secret"]["secretName"] == by_kind["Secret"]["metadata"]["name"]
    main = pod["containers"][0]
    cfg = yaml.safe_load(by_kind["ConfigMap"]["data"]["regmesh.yml"])
    admin_port = int(cfg["admin_listen"].rsplit(":", 1)[1])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert main[probe]["httpGet"] == {"path": path, "port": admin_port}
    # the cluster key file the config names is where the Secret is mounted
    key_mount = [m for m in main["volumeMounts"] if m["name"] == "cluster-key"][0]
    assert cfg["cluster"]["secret_file"] == key_mount["mountPath"] + "/cluster.key"
    assert cfg["storage"]["root"] in [m["mountPath"] for m in main["volumeMounts"]]
    # gossip seeds: the headless Service's DNS name and port
    seed = "%s.regmesh.svc.cluster.local:7946" % by_kind["Service"]["metadata"]["name"]
    assert cfg["cluster"]["join"] == [seed]
    assert main["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > 30, "SIGTERM's drain needs shutdown_timeout"


def _render(test_dir, key):
    by_kind, _ = _docs()
    text = by_kind["ConfigMap"]["data"]["regmesh.yml"].replace("@NODE_IP@", "127.0.0.1")
    keyfile = os.path.join(test_dir, "cluster.key")
    with open(keyfile, "w") as f:
        f.write(key)
    text = text.replace("/etc/regmesh/secret/cluster.key", keyfile)
    path = os.path.join(test_dir, "regmesh.yml")
    with open(path, "w") as f:
        f.write(text)
    return path


def test_config_renders_and_refuses_the_placeholder_key(regmesh_binary, test_dir):
    by_kind, _ = _docs()
    placeholder = by_kind["Secret"]["stringData"]["cluster.key"]
    bad = util.run([regmesh_binary, "check-config", _render(test_dir, placeholder)],
                   timeout=10, check=False)
    assert bad.returncode == 1 and b"secret_file" in bad.stderr, bad.stderr
    key = base64.b64encode(os.urandom(32)).decode()
    path = _render(test_dir, key)
    ok = util.run([regmesh_binary, "check-config", path], timeout=10, check=False)
    assert ok.returncode == 0, ok.stderr

    # the init container's client-config command, as the manifest gives it
    pod = by_kind["DaemonSet"]["spec"]["template"]["spec"]
    init = [c for c in pod["initContainers"] if c["name"] == "containerd-hosts"][0]
    argv = list(init["command"])
    assert argv[:3] == ["regmesh", "client-config", "containerd"]
    root = os.path.join(test_dir, "host")
    argv = [regmesh_binary] + [path if a == "/run/regmesh/regmesh.yml" else
                               root if a == "/host" else a for a in argv[1:]]
    util.run(argv, timeout=20)
    for host in ("docker.io", "ghcr.io", "quay.io"):
        text = open(os.path.join(root, "etc/containerd/certs.d", host, "hosts.toml")).read()
        assert '[host."http://127.0.0.1:5000"]' in text, text
