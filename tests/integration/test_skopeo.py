"""skopeo through regmesh: same bytes as straight from the upstream, cold
and warm; routing by path prefix, listener, ?ns= and the default."""

import os

import pytest

from rmtest import images, util
from rmtest.checks import GHCR_HOST, HUB_HOST, ghcr_upstream, hub_upstream

# (catalog attribute, name as pulled through regmesh, --all)
CASES = [
    ("multi", "multi/layers:v1", False),
    ("index", "multi/arch:v1", True),
    ("nested", "team/sub/app:v1", False),
    ("alpine", "alpine:3.19", False),       # one component: regmesh adds library/
]


def _expected_blobs(img, all_images):
    if img.is_index and not all_images:
        return img.child("amd64").own_blobs()
    return img.all_blobs()


@pytest.mark.parametrize("key,ref,all_images", CASES, ids=[c[0] for c in CASES])
def test_copy_cold_then_warm(node, hub, catalog, skopeo, direct_copies, test_dir,
                             key, ref, all_images):
    img = getattr(catalog, key)
    direct = direct_copies(hub, img.ref(), all_images)
    expected = {b.digest for b in _expected_blobs(img, all_images)}
    assert set(direct.blobs) == expected

    # cold: every blob comes from the upstream, exactly once
    up_mark, log_mark = hub.log.mark(), node.log_mark()
    cold = skopeo.copy("%s/%s" % (node.host_port, ref), os.path.join(test_dir, "cold"),
                       all_images=all_images)
    assert cold.verify() == []
    assert cold.manifest == direct.manifest
    assert cold.summary() == direct.summary()
    for d in expected:
        n = len(hub.log.blob_gets(d, up_mark))
        assert n == 1, "upstream served blob %s %d times on a cold pull (want 1)" % (d, n)
    lines = [a for a in node.access(log_mark) if a["method"] == "GET" and "/blobs/" in a["path"]]
    assert {a["path"].rsplit("/", 1)[1] for a in lines} >= expected, lines
    assert all(a["status"] == 200 for a in lines), lines
    assert all(a.get("src") in ("upstream", "inflight") for a in lines), lines

    # warm: nothing fetched from the upstream, all served locally
    local_before = node.metric_sum("regmesh_hits_total", source="local")
    up_mark, log_mark = hub.log.mark(), node.log_mark()
    warm = skopeo.copy("%s/%s" % (node.host_port, ref), os.path.join(test_dir, "warm"),
                       all_images=all_images)
    assert warm.verify() == []
    assert warm.summary() == direct.summary()
    assert hub.log.all_blob_gets(up_mark) == [], "warm pull fetched blobs upstream"
    assert hub.log.manifest_gets(up_mark) == [], "warm pull GOT manifests upstream"
    lines = [a for a in node.access(log_mark) if a["method"] == "GET" and "/blobs/" in a["path"]]
    assert {a["path"].rsplit("/", 1)[1] for a in lines} >= expected
    assert all(a.get("src") == "local" and a["status"] == 200 for a in lines), lines
    local_after = node.metric_sum("regmesh_hits_total", source="local")
    assert local_after - local_before >= len(expected), (local_before, local_after)


def test_path_prefix_routes_to_second_upstream(node, hub, ghcr, catalog, skopeo,
                                               direct_copies, test_dir):
    direct = direct_copies(ghcr, catalog.tool.ref())
    hub_mark, ghcr_mark = hub.log.mark(), ghcr.log.mark()
    res = skopeo.copy("%s/%s/%s" % (node.host_port, GHCR_HOST, catalog.tool.ref()),
                      os.path.join(test_dir, "tool"))
    assert res.summary() == direct.summary() and res.verify() == []
    for b in catalog.tool.own_blobs():
        assert len(ghcr.log.blob_gets(b.digest, ghcr_mark)) == 1
    assert not [e for e in hub.log.entries(hub_mark) if "org/tool" in e.path or "ghcr.io" in e.path]


def test_listener_routes_to_its_upstream(make_node, hub, ghcr, catalog, skopeo,
                                         direct_copies, test_dir):
    """ghcr.io owns a listener: a prefix-less name on that port goes to ghcr."""
    node = make_node([hub_upstream(hub), ghcr_upstream(ghcr, listen=True)])
    direct = direct_copies(ghcr, catalog.tool.ref())
    port = node.upstreams[GHCR_HOST].port
    hub_mark = hub.log.mark()
    res = skopeo.copy("127.0.0.1:%d/%s" % (port, catalog.tool.ref()),
                      os.path.join(test_dir, "tool"))
    assert res.summary() == direct.summary()
    assert not [e for e in hub.log.entries(hub_mark) if "org/tool" in e.path]
    # and docker.io content is not reachable on ghcr's listener
    r = util.request(node.listener_url(GHCR_HOST), "GET", "/v2/multi/layers/manifests/v1",
                     headers={"Accept": images.ACCEPT_ALL})
    assert r.status == 404


def test_prefixless_name_goes_to_default(node, hub, ghcr, catalog):
    """A name whose first component is no registry host goes to the default
    upstream, whole."""
    img = catalog.nested
    hub_mark, ghcr_mark = hub.log.mark(), ghcr.log.mark()
    r = node.request("GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                     headers={"Accept": images.ACCEPT_ALL})
    assert r.status == 200 and r.body == img.manifest
    assert any(e.path.startswith("/v2/team/sub/app/manifests/") for e in hub.log.entries(hub_mark))
    assert ghcr.log.entries(ghcr_mark) == []


def test_unconfigured_host_prefix_is_name_unknown(node, hub, catalog, skopeo, test_dir):
    """docs/decisions.md: a first component that looks like a host (has a
    dot or a port, or is localhost) and is not configured is 404
    NAME_UNKNOWN naming the configured upstreams - not a lookup on the
    default upstream (even though hub has a repository of that name)."""
    mark = hub.log.mark()
    for path in ("/v2/%s/manifests/v1" % catalog.dotted.repo,
                 "/v2/localhost:5000/proj/app/manifests/v1",
                 "/v2/localhost/proj/app/blobs/%s" % catalog.dotted.layers[0].digest):
        r = node.request("GET", path, headers={"Accept": images.ACCEPT_ALL})
        assert r.status == 404, (path, r)
        assert "NAME_UNKNOWN" in r.error_codes(), (path, r)
        msg = r.body.decode("utf-8", "replace")
        assert HUB_HOST in msg and GHCR_HOST in msg, msg
    assert hub.log.entries(mark) == []
    cp = skopeo.copy("%s/%s" % (node.host_port, catalog.dotted.ref()),
                     os.path.join(test_dir, "d"), check=False)
    assert getattr(cp, "returncode", 0) != 0, "skopeo copied an unconfigured registry name"


def test_ns_query_routing(node, hub, ghcr, catalog):
    tool = catalog.tool
    # without ns the default upstream (hub) answers: it does not have org/tool
    r = node.request("GET", "/v2/org/tool/manifests/v1", headers={"Accept": images.ACCEPT_ALL})
    assert r.status == 404
    ghcr_mark = ghcr.log.mark()
    r = node.request("GET", "/v2/org/tool/manifests/v1?ns=ghcr.io",
                     headers={"Accept": images.ACCEPT_ALL})
    assert r.status == 200 and r.body == tool.manifest
    assert r.header("Docker-Content-Digest") == tool.digest
    for b in tool.own_blobs():
        r = node.request("GET", "/v2/org/tool/blobs/%s?ns=ghcr.io" % b.digest)
        assert r.status == 200 and util.sha256_bytes(r.body) == b.digest
        assert len(ghcr.log.blob_gets(b.digest, ghcr_mark)) == 1
    # containerd form-encodes the value and sends it on docker.io requests too
    r = node.request("GET", "/v2/library/alpine/manifests/3.19?ns=docker.io",
                     headers={"Accept": images.ACCEPT_ALL})
    assert r.status == 200 and r.body == catalog.alpine.manifest
    r = node.request("HEAD", "/v2/org/tool/manifests/v1?ns=ghcr.io",
                     headers={"Accept": images.ACCEPT_ALL})
    assert r.status == 200 and r.header("Docker-Content-Digest") == tool.digest


def test_unknown_ns_is_name_unknown(node, hub, ghcr):
    hub_mark, ghcr_mark = hub.log.mark(), ghcr.log.mark()
    r = node.request("GET", "/v2/org/tool/manifests/v1?ns=quay.io",
                     headers={"Accept": images.ACCEPT_ALL})
    assert r.status == 404, r
    assert r.header("Content-Type", "").startswith("application/json")
    errs = r.json()["errors"]
    assert errs[0]["code"] == "NAME_UNKNOWN", errs
    msg = errs[0].get("message", "") + " " + str(errs[0].get("detail", ""))
    assert HUB_HOST in msg and GHCR_HOST in msg, "message should list the upstreams: %r" % msg
    assert hub.log.entries(hub_mark) == [] and ghcr.log.entries(ghcr_mark) == []
