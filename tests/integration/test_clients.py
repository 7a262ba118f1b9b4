"""The real clients: containerd's ctr, dockerd, podman. Each runs privately
(own dirs, sockets, configs), first straight against the upstream registry
(validates the client setup), then through regmesh."""

import os
import uuid

import pytest

from rmtest import clients
from rmtest.checks import GHCR_HOST

pytestmark = pytest.mark.clients


def _need(*tools):
    miss = clients.missing(*tools)
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))


def _blob_gets(node, mark, digests):
    lines = [a for a in node.access(mark) if a["method"] == "GET" and "/blobs/" in a["path"]]
    got = {a["path"].rsplit("/", 1)[1] for a in lines if a["status"] in (200, 206)}
    missing = set(digests) - got
    assert not missing, "blobs not fetched through regmesh: %s\n%r" % (missing, lines)
    return lines


# ---------------------------------------------------------------------------
# containerd / ctr

@pytest.fixture
def ctr_ns(containerd):
    ns = "rmtest-" + uuid.uuid4().hex[:8]
    yield ns
    containerd.remove_namespace(ns)


def test_ctr_direct_from_upstreams(containerd, ctr_ns, hub, ghcr, catalog, test_dir):
    hosts = os.path.join(test_dir, "hosts")
    clients.write_hosts_toml(hosts, "docker.io", hub.url)
    clients.write_hosts_toml(hosts, "ghcr.io", ghcr.url)
    mark = hub.log.mark()
    containerd.pull("docker.io/library/alpine:3.19", hosts, ctr_ns)
    assert containerd.image_digest("docker.io/library/alpine:3.19", ctr_ns) == catalog.alpine.digest
    assert any("ns=docker.io" in e.query for e in hub.log.entries(mark))
    containerd.pull("ghcr.io/%s" % catalog.tool.ref(), hosts, ctr_ns)
    assert containerd.image_digest("ghcr.io/%s" % catalog.tool.ref(), ctr_ns) == catalog.tool.digest


def test_ctr_through_regmesh(containerd, ctr_ns, node, hub, ghcr, catalog, test_dir):
    hosts = os.path.join(test_dir, "hosts")
    clients.write_hosts_toml(hosts, "docker.io", node.url)
    clients.write_hosts_toml(hosts, "ghcr.io", node.url)
    mark = node.log_mark()
    hub_mark, ghcr_mark = hub.log.mark(), ghcr.log.mark()
    containerd.pull("docker.io/library/alpine:3.19", hosts, ctr_ns)
    containerd.pull("ghcr.io/%s" % catalog.tool.ref(), hosts, ctr_ns)
    assert containerd.image_digest("docker.io/library/alpine:3.19", ctr_ns) == catalog.alpine.digest
    assert containerd.image_digest("ghcr.io/%s" % catalog.tool.ref(), ctr_ns) == catalog.tool.digest
    amd = catalog.alpine.child("amd64")
    _blob_gets(node, mark, [b.digest for b in amd.own_blobs()] +
               [b.digest for b in catalog.tool.own_blobs()])
    # routed by ?ns=: each upstream served its own blobs, once
    for b in amd.own_blobs():
        assert len(hub.log.blob_gets(b.digest, hub_mark)) == 1
    for b in catalog.tool.own_blobs():
        assert len(ghcr.log.blob_gets(b.digest, ghcr_mark)) == 1


# ---------------------------------------------------------------------------
# dockerd

@pytest.fixture
def make_dockerd(containerd, test_dir):
    _need("dockerd")
    started = []

    def make(mirror):
        d = clients.Dockerd(os.path.join(test_dir, "dockerd%d" % len(started)), containerd,
                            [mirror], "rmtest-dk-" + uuid.uuid4().hex[:8])
        started.append(d)
        return d.start()
    yield make
    for d in started:
        d.stop()


def _docker_pull_alpine(dk, catalog):
    ok, msgs = dk.pull("alpine", "3.19")
    assert ok, "docker pull failed: %r" % msgs[-5:]
    st, info = dk.inspect("alpine:3.19")
    assert st == 200, info
    assert "alpine@" + catalog.alpine.digest in info["RepoDigests"], info["RepoDigests"]
    assert info["Architecture"] == "amd64"


def test_dockerd_direct_from_upstream_as_mirror(make_dockerd, hub, catalog):
    dk = make_dockerd(hub.url)
    mark = hub.log.mark()
    _docker_pull_alpine(dk, catalog)
    for b in catalog.alpine.child("amd64").own_blobs():
        assert len(hub.log.blob_gets(b.digest, mark)) == 1


def test_dockerd_through_regmesh(make_dockerd, node, hub, catalog):
    dk = make_dockerd(node.url)
    mark = node.log_mark()
    _docker_pull_alpine(dk, catalog)
    acc = node.access(mark)
    man = [a for a in acc if a["path"] in ("/v2/library/alpine/manifests/3.19",
                                           "/v2/library/alpine/manifests/" + catalog.alpine.digest)]
    assert man and all(a["status"] == 200 for a in man), acc
    amd = catalog.alpine.child("amd64")
    assert any(a["path"] == "/v2/library/alpine/manifests/" + amd.digest and a["status"] == 200
               for a in acc), acc
    _blob_gets(node, mark, [b.digest for b in amd.own_blobs()])


# ---------------------------------------------------------------------------
# podman

@pytest.fixture
def make_podman(test_dir):
    _need("podman", "unshare")
    made = []

    def make(mirror):
        p = clients.Podman(os.path.join(test_dir, "podman%d" % len(made)),
                           clients.podman_mirror_conf(GHCR_HOST, GHCR_HOST, mirror))
        made.append(p)
        return p
    yield make
    for p in made:
        p.cleanup()


def test_podman_direct_from_upstream_as_mirror(make_podman, ghcr, catalog):
    pm = make_podman(ghcr.host_port)
    mark = ghcr.log.mark()
    pm.pull("ghcr.io/" + catalog.tool.ref())
    assert pm.image_digest("ghcr.io/" + catalog.tool.ref()) == catalog.tool.digest
    for b in catalog.tool.own_blobs():
        assert len(ghcr.log.blob_gets(b.digest, mark)) == 1


def test_podman_through_regmesh_path_prefix(make_podman, node, ghcr, catalog):
    pm = make_podman("%s/%s" % (node.host_port, GHCR_HOST))
    mark = node.log_mark()
    pm.pull("ghcr.io/" + catalog.tool.ref())
    assert pm.image_digest("ghcr.io/" + catalog.tool.ref()) == catalog.tool.digest
    lines = _blob_gets(node, mark, [b.digest for b in catalog.tool.own_blobs()])
    assert all(a["path"].startswith("/v2/ghcr.io/org/tool/") for a in lines), lines
