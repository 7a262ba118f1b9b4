"""`regmesh client-config`: the files it prints and writes are the ones the
real clients use to pull through the node, merged into what a host already
has without clobbering it, and `--check` tells whether a host points at the
node."""

import json
import os
import shutil
import tomllib
import uuid

import pytest

from rmtest import clients, util
from rmtest.checks import GHCR_HOST


def _cc(binary, *args, check=True):
    cp = util.run([binary, "client-config"] + list(args), timeout=30, check=False)
    if check:
        assert cp.returncode == 0, (cp.returncode, cp.stdout, cp.stderr)
    return cp


def _blob_gets(node, mark, digests):
    got = {a["path"].rsplit("/", 1)[1] for a in node.access(mark)
           if a["method"] == "GET" and "/blobs/" in a["path"] and a["status"] in (200, 206)}
    missing = set(digests) - got
    assert not missing, "blobs not fetched through regmesh: %s" % missing


def test_write_merges_and_check_tells(regmesh_binary, node, test_dir):
    """An existing daemon.json and registries.conf keep their other keys and
    tables; ours replace only the tables for our upstreams; a second write
    changes nothing; --check is 0 only when every file points at the node."""
    root = os.path.join(test_dir, "root")
    os.makedirs(os.path.join(root, "etc/docker"))
    os.makedirs(os.path.join(root, "etc/containers"))
    with open(os.path.join(root, "etc/docker/daemon.json"), "w") as f:
        json.dump({"log-driver": "journald", "registry-mirrors": ["https://old.example"]}, f)
    with open(os.path.join(root, "etc/containers/registries.conf"), "w") as f:
        f.write('unqualified-search-registries = ["docker.io"]\n\n'
                '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
                '[[registry.mirror]]\nlocation = "old.example/hub"\n\n'
                '[[registry]]\nprefix = "registry.internal"\nlocation = "registry.internal"\n')
    cfg = ["--config", node.config_path]
    assert _cc(regmesh_binary, "all", "--check", root, *cfg, check=False).returncode == 1

    out = _cc(regmesh_binary, "all", "--write", root, *cfg).stdout.decode()
    assert "updated %s/etc/docker/daemon.json" % root in out, out
    doc = json.load(open(os.path.join(root, "etc/docker/daemon.json")))
    assert doc["log-driver"] == "journald"
    assert doc["registry-mirrors"] == [node.url, "https://old.example"], doc
    conf = open(os.path.join(root, "etc/containers/registries.conf")).read()
    assert 'unqualified-search-registries = ["docker.io"]' in conf
    assert 'prefix = "registry.internal"' in conf
    assert "old.example/hub" not in conf, conf
    assert 'location = "%s/docker.io"' % node.host_port in conf
    assert 'location = "%s/%s"' % (node.host_port, GHCR_HOST) in conf
    hosts = open(os.path.join(root, "etc/containerd/certs.d/ghcr.io/hosts.toml")).read()
    assert 'server = "https://ghcr.io"' in hosts and node.url in hosts, hosts

    again = _cc(regmesh_binary, "all", "--write", root, *cfg).stdout.decode()
    assert "updated" not in again and "wrote" not in again, again
    ok = _cc(regmesh_binary, "all", "--check", root, *cfg)
    assert all(l.startswith("ok ") for l in ok.stdout.decode().splitlines()), ok.stdout
    # another node address: every file differs
    other = _cc(regmesh_binary, "all", "--check", root, "--node", "http://10.1.2.3:5000",
                *cfg, check=False)
    assert other.returncode == 1 and "ok " not in other.stdout.decode(), other.stdout

    # a daemon.json that is not JSON is reported and left alone
    with open(os.path.join(root, "etc/docker/daemon.json"), "w") as f:
        f.write("{ nope")
    bad = _cc(regmesh_binary, "docker", "--write", root, *cfg, check=False)
    assert bad.returncode == 1 and b"daemon.json:1:" in bad.stderr, bad.stderr
    assert open(os.path.join(root, "etc/docker/daemon.json")).read() == "{ nope"


def test_buildkitd_toml_follows_the_schema(regmesh_binary, node, test_dir):
    """buildkitd is not packaged here: its file is parsed with Python's
    tomllib and compared with buildkit's documented keys: [registry."<host>"]
    mirrors (host[:port], no scheme) for each upstream, and the node's own
    table with http = true."""
    out = _cc(regmesh_binary, "buildkit", "--config", node.config_path).stdout.decode()
    text = out.split("\n", 1)[1]
    doc = tomllib.loads(text)
    regs = doc["registry"]
    for host in ("docker.io", GHCR_HOST):
        assert regs[host]["mirrors"] == [node.host_port], regs
    assert regs[node.host_port]["http"] is True
    assert set(regs) == {"docker.io", GHCR_HOST, node.host_port}


@pytest.fixture
def ctr_ns(containerd):
    ns = "rmtest-" + uuid.uuid4().hex[:8]
    yield ns
    containerd.remove_namespace(ns)


def test_containerd_pulls_with_the_written_hosts_dir(regmesh_binary, containerd, ctr_ns, node,
                                                     catalog, test_dir):
    root = os.path.join(test_dir, "root")
    _cc(regmesh_binary, "containerd", "--config", node.config_path, "--no-fallback",
        "--write", root)
    hosts = os.path.join(root, "etc/containerd/certs.d")
    mark = node.log_mark()
    containerd.pull("docker.io/library/alpine:3.19", hosts, ctr_ns)
    containerd.pull("ghcr.io/%s" % catalog.tool.ref(), hosts, ctr_ns)
    assert containerd.image_digest("docker.io/library/alpine:3.19", ctr_ns) == catalog.alpine.digest
    assert containerd.image_digest("ghcr.io/%s" % catalog.tool.ref(), ctr_ns) == catalog.tool.digest
    _blob_gets(node, mark, [b.digest for b in catalog.alpine.child("amd64").own_blobs()] +
               [b.digest for b in catalog.tool.own_blobs()])


def test_podman_and_skopeo_pull_with_the_written_registries_conf(regmesh_binary, node, catalog,
                                                                 test_dir):
    miss = clients.missing("podman", "skopeo", "unshare")
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))
    root = os.path.join(test_dir, "root")
    os.makedirs(os.path.join(root, "etc/containers"))
    conf = os.path.join(root, "etc/containers/registries.conf")
    with open(conf, "w") as f:
        f.write('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
    _cc(regmesh_binary, "podman", "--config", node.config_path, "--no-fallback",
        "--write", root)
    text = open(conf).read()

    pm = clients.Podman(os.path.join(test_dir, "podman"), text)
    try:
        mark = node.log_mark()
        pm.pull("ghcr.io/" + catalog.tool.ref())
        assert pm.image_digest("ghcr.io/" + catalog.tool.ref()) == catalog.tool.digest
        _blob_gets(node, mark, [b.digest for b in catalog.tool.own_blobs()])
    finally:
        pm.cleanup()

    sk = clients.Skopeo(os.path.join(test_dir, "skopeo"))
    with open(sk.registries_conf, "w") as f:
        f.write(text)
    mark = node.log_mark()
    res = sk.copy("docker.io/library/alpine:3.19", os.path.join(test_dir, "copy"))
    amd = catalog.alpine.child("amd64")
    assert res.digest == amd.digest, res.digest
    _blob_gets(node, mark, [b.digest for b in amd.own_blobs()])
    assert all(a["path"].startswith("/v2/docker.io/") for a in node.access(mark)
               if "/v2/" in a["path"] and a["path"] != "/v2/")


def test_dockerd_pulls_with_the_merged_daemon_json(regmesh_binary, containerd, node, catalog,
                                                   test_dir):
    """The harness's own daemon.json (data root, sockets, vfs) is merged by
    client-config; dockerd started on the result keeps its settings and
    pulls Docker Hub names through the node."""
    if clients.missing("dockerd"):
        pytest.skip("not installed here: dockerd")
    dk = clients.Dockerd(os.path.join(test_dir, "dockerd"), containerd, [],
                         "rmtest-dk-" + uuid.uuid4().hex[:8])
    root = os.path.join(test_dir, "root")
    os.makedirs(os.path.join(root, "etc/docker"))
    target = os.path.join(root, "etc/docker/daemon.json")
    shutil.copy(dk.config, target)
    out = _cc(regmesh_binary, "docker", "--config", node.config_path, "--write", root)
    assert "registry-mirrors: %s added first" % node.url in out.stdout.decode(), out.stdout
    merged = json.load(open(target))
    before = json.load(open(dk.config))
    assert merged["registry-mirrors"] == [node.url]
    assert {k: v for k, v in merged.items() if k != "registry-mirrors"} == \
        {k: v for k, v in before.items() if k != "registry-mirrors"}
    shutil.copy(target, dk.config)
    dk.start()
    try:
        mark = node.log_mark()
        ok, msgs = dk.pull("alpine", "3.19")
        assert ok, "docker pull failed: %r" % msgs[-5:]
        st, info = dk.inspect("alpine:3.19")
        assert st == 200 and "alpine@" + catalog.alpine.digest in info["RepoDigests"], info
        _blob_gets(node, mark, [b.digest for b in catalog.alpine.child("amd64").own_blobs()])
    finally:
        dk.stop()
