"""Upstream down, corrupt upstream, kill -9 mid-download, size budget."""

import http.client
import json
import os
import threading
import time

from rmtest import images, regmesh, util
from rmtest.checks import HUB_HOST, get_unverified, pull_via_http, stream_get


def test_upstream_down_serves_cache_and_stale_tag(make_node, make_registry, catalog, skopeo,
                                                  test_dir):
    img = catalog.stale
    reg = make_registry("flaky", [img])
    node = make_node([regmesh.Upstream(HUB_HOST, reg.url, default=True, tag_ttl="1s")])
    pull_via_http(node.url, img)
    stale_before = node.metric_sum("regmesh_stale_tags_served_total")
    reg.stop()
    time.sleep(1.6)                                  # the tag is now past its TTL
    tag_path = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    r = node.request("GET", tag_path, headers={"Accept": images.ACCEPT_ALL}, timeout=60)
    assert r.status == 200, "stale tag not served with the upstream down: %r" % r
    assert r.body == img.manifest and r.header("Docker-Content-Digest") == img.digest
    assert r.header("Warning"), "a stale tag answer must carry a Warning header: %r" % r.headers
    assert node.metric_sum("regmesh_stale_tags_served_total") > stale_before
    r = node.request("HEAD", tag_path, headers={"Accept": images.ACCEPT_ALL}, timeout=60)
    assert r.status == 200 and r.header("Docker-Content-Digest") == img.digest
    r = node.request("GET", "/v2/%s/manifests/%s" % (img.repo, img.digest),
                     headers={"Accept": images.ACCEPT_ALL}, timeout=60)
    assert r.status == 200 and r.body == img.manifest
    for b in img.own_blobs():
        st, digest, n = stream_get(node.url, "/v2/%s/blobs/%s" % (img.repo, b.digest), timeout=60)
        assert (st, digest, n) == (200, b.digest, b.size)
    # a real client too
    res = skopeo.copy("%s/%s" % (node.host_port, img.ref()), os.path.join(test_dir, "warm"))
    assert res.digest == img.digest and set(res.blobs) == {b.digest for b in img.own_blobs()}
    assert node.alive()


def _get_unverified(url, path, timeout=90):
    """(status, body, complete) of a GET: see checks.get_unverified."""
    st, body, complete, _ = get_unverified(int(url.rsplit(":", 1)[1]), path, timeout=timeout)
    return st, body, complete


def test_corrupt_upstream_blob_is_never_cached(make_node, make_proxy, hub, catalog):
    img = catalog.corrupt
    layer = img.layers[0]
    px = make_proxy(hub.url, corrupt_blobs=True)
    node = make_node([regmesh.Upstream(HUB_HOST, px.url, default=True)])
    path = "/v2/%s/blobs/%s" % (img.repo, layer.digest)
    status, body, complete = _get_unverified(node.url, path)
    assert px.corrupted >= 1, "the proxy did not see the blob request"
    assert not (status == 200 and complete and util.sha256_bytes(body) == layer.digest)
    assert node.alive(), "regmesh died on a corrupt upstream blob"
    util.wait_until(lambda: node.files_named_like(layer.digest) == [], 5,
                    what="no file for the corrupt digest in the data dir (found %r)"
                    % node.files_named_like(layer.digest))
    assert node.verify_store() == []
    # the same data dir behind a healthy upstream config: the pull works
    node.stop()
    node.upstreams[HUB_HOST].url = hub.url
    node.write_config()
    node.start()
    mark = hub.log.mark()
    st, digest, n = stream_get(node.url, path, timeout=90)
    assert (st, digest, n) == (200, layer.digest, layer.size)
    assert len(hub.log.blob_gets(layer.digest, mark)) == 1
    assert util.wait_until(lambda: node.has_blob(layer.digest), 5, what="blob stored")
    assert node.verify_store() == []


def test_corrupt_blob_is_not_delivered_as_complete(make_node, make_proxy, hub, catalog):
    """Even with headers sent first, a mismatching body must end in an error
    the HTTP client can see (status != 200, or a connection cut before the
    last byte): never a clean, complete 200 of wrong bytes."""
    img = catalog.corrupt
    layer = img.layers[0]
    px = make_proxy(hub.url, corrupt_blobs=True)
    node = make_node([regmesh.Upstream(HUB_HOST, px.url, default=True)])
    status, body, complete = _get_unverified(node.url, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    assert not (status == 200 and complete), \
        "regmesh delivered a complete 200 of corrupt bytes (%d bytes)" % len(body)


def test_kill9_mid_download_leaves_no_partial_blob(make_node, make_proxy, hub, catalog):
    b = catalog.big.layers[0]
    path = "/v2/%s/blobs/%s" % (catalog.big.repo, b.digest)
    px = make_proxy(hub.url, bytes_per_sec=8 * 1024 * 1024)
    node = make_node([regmesh.Upstream(HUB_HOST, px.url, default=True)])
    pull_via_http(node.url, catalog.multi)            # some complete content too
    result = {}
    base = px.bytes_sent

    def client():
        result["r"] = stream_get(node.url, path, timeout=120)
    t = threading.Thread(target=client, daemon=True)
    t.start()
    # wait until regmesh has a good part (but not all) of the blob
    util.wait_until(lambda: px.bytes_sent - base >= b.size // 5, 60, interval=0.05,
                    what="upstream download under way")
    assert px.bytes_sent - base < b.size, "download finished before the kill; slow the proxy"
    node.kill9()
    t.join(30)
    assert not t.is_alive(), "client hung after regmesh was killed"
    st, digest, n = result["r"]
    assert not (digest == b.digest and n == b.size), "download completed despite kill -9"
    assert not node.has_blob(b.digest), "a partial blob is visible as a cache entry"
    assert node.verify_store() == [], "stored blobs that do not hash to their names"

    px.bytes_per_sec = None
    node.start()
    assert node.tmp_files() == [], "tmp/ not emptied at start: %r" % node.tmp_files()
    assert node.verify_store() == []
    st, digest, n = stream_get(node.url, path, timeout=120)
    assert (st, digest, n) == (200, b.digest, b.size)
    assert util.wait_until(lambda: node.has_blob(b.digest), 10, what="big blob stored")
    assert node.verify_store() == []
    # what was complete before the kill is still served
    mark = hub.log.mark()
    pull_via_http(node.url, catalog.multi)
    assert hub.log.all_blob_gets(mark) == []


def test_headers_first_on_a_slow_cold_blob(make_node, make_proxy, hub, catalog):
    """Status and headers go out as soon as the size is known, before the
    body has arrived from the upstream (containerd gives up otherwise)."""
    b = catalog.big.layers[0]
    px = make_proxy(hub.url, bytes_per_sec=4 * 1024 * 1024)   # ~16 s for 64 MiB
    node = make_node([regmesh.Upstream(HUB_HOST, px.url, default=True)])
    conn = http.client.HTTPConnection(util.LOCALHOST, node.port, timeout=30)
    try:
        t0 = time.monotonic()
        conn.request("GET", "/v2/%s/blobs/%s" % (catalog.big.repo, b.digest))
        resp = conn.getresponse()
        took = time.monotonic() - t0
        assert resp.status == 200
        assert int(resp.getheader("Content-Length")) == b.size
        assert took < 3.0, "headers came after %.1fs" % took
        first = resp.read(64 * 1024)
        assert len(first) == 64 * 1024
    finally:
        conn.close()


def test_size_budget_evicts_least_recently_used(make_node, hub, catalog):
    a, b = catalog.evict("a"), catalog.evict("b")
    budget_mib = 6          # each layer is 4 MiB: A and B do not fit together
    assert a.layers[0].size > 3.5 * 1024 * 1024 and b.layers[0].size > 3.5 * 1024 * 1024
    node = make_node([regmesh.Upstream(HUB_HOST, hub.url, default=True)],
                     max_size="%dMiB" % budget_mib)
    pull_via_http(node.url, a)
    # The last byte goes out once the hash matched; the file lands after the
    # fsync on the thread pool, a moment later.
    assert util.wait_until(lambda: node.has_blob(a.layers[0].digest), 10,
                           what="A's layer stored")
    pull_via_http(node.url, b)
    util.wait_until(lambda: not node.has_blob(a.layers[0].digest), 10,
                    what="A's layer to be evicted")
    total = sum(os.path.getsize(p) for p in node.stored_blobs().values())
    assert total <= budget_mib * 1024 * 1024, "store holds %d bytes" % total
    assert node.verify_store() == []
    mark = hub.log.mark()
    pull_via_http(node.url, b)
    assert hub.log.all_blob_gets(mark) == [], "B should have been warm"
    assert hub.log.manifest_gets(mark) == []


def test_hung_upstream_tag_served_stale_within_resolve_timeout(make_node, make_proxy,
                                                                make_registry, catalog):
    """An upstream that accepts and never answers: a cached tag past its TTL
    is served stale within resolve_timeout + 1 s, every time, while one HEAD
    waits upstream; when the upstream answers again the tag is fresh."""
    img = catalog.stale
    px = make_proxy(make_registry("hung", [img]).url)
    node = make_node([regmesh.Upstream(HUB_HOST, px.url, default=True, tag_ttl="1s",
                                       resolve_timeout="1s")])
    pull_via_http(node.url, img)
    px.hang = True
    time.sleep(1.3)                                   # past the TTL
    tag_path = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    for i in range(4):
        t0 = time.monotonic()
        r = node.request("GET", tag_path, headers={"Accept": images.ACCEPT_ALL}, timeout=30)
        took = time.monotonic() - t0
        assert r.status == 200 and r.body == img.manifest, r
        assert r.header("Warning"), "a stale answer carries a Warning: %r" % r.headers
        assert took < 2.0, "request %d took %.2f s with resolve_timeout 1s" % (i, took)
    assert px.hung == 1, "one HEAD waits upstream, not one per request: %d" % px.hung
    assert node.metric_sum("regmesh_tag_resolve_timeouts_total") >= 1
    px.hang = False

    def fresh():
        r = node.request("GET", tag_path, headers={"Accept": images.ACCEPT_ALL}, timeout=30)
        return r.status == 200 and not r.header("Warning")
    util.wait_until(fresh, 15, interval=0.3, what="a fresh answer once the upstream answers")


def test_hung_upstream_cold_miss_is_a_504_within_first_byte_timeout(make_node, make_proxy,
                                                                     make_registry, catalog):
    """Nothing cached and an upstream that never answers: a cold blob, a
    manifest by tag and a HEAD each get a 504 with a registry error within
    first_byte_timeout + 1 s, not a connection that hangs for minutes; the
    node keeps serving (healthz) and, the upstream back, the same pull works."""
    img = catalog.stale
    px = make_proxy(make_registry("fbt", [img]).url)
    node = make_node([regmesh.Upstream(HUB_HOST, px.url, default=True, resolve_timeout="1s",
                                       first_byte_timeout="2s")])
    px.hang = True
    blob = "/v2/%s/blobs/sha256:%s" % (img.repo, img.layers[0].hex)
    tag = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    for method, path in (("GET", blob), ("GET", tag), ("HEAD", blob)):
        t0 = time.monotonic()
        r = node.request(method, path, headers={"Accept": images.ACCEPT_ALL}, timeout=30)
        took = time.monotonic() - t0
        assert r.status == 504, (method, path, r)
        assert 1.8 <= took < 3.0, "%s %s answered after %.2f s" % (method, path, took)
        if method == "GET":
            err = json.loads(r.body)["errors"][0]
            assert "first_byte_timeout" in err["message"], err
        assert node.request("GET", "/healthz", timeout=2).status == 200
    assert node.metric_sum("regmesh_first_byte_timeouts_total") == 3
    px.hang = False
    # the hung attempts end (low_speed_time) or a new one starts: either way
    # a retry gets the right bytes
    def pulled():
        r = node.request("GET", blob, timeout=60)
        return r.status == 200 and util.sha256_bytes(r.body) == img.layers[0].digest
    util.wait_until(pulled, 60, interval=0.5, what="the blob once the upstream answers")


def _readyz(node):
    r = node.request("GET", "/readyz")
    return r.status, json.loads(r.body)


def test_circuit_breaker_opens_and_closes(make_node, make_proxy, make_registry, catalog):
    """An upstream failing every attempt (503): the circuit opens, requests
    stop reaching it and fail or go stale at once, /readyz and the metrics
    say so; once it answers again one probe closes the circuit."""
    img = catalog.stale
    px = make_proxy(make_registry("breaker", [img]).url)
    node = make_node([regmesh.Upstream(HUB_HOST, px.url, default=True, tag_ttl="1s")])
    empty = make_node([regmesh.Upstream(HUB_HOST, px.url, default=True)], name="empty")
    pull_via_http(node.url, img)
    assert _readyz(node)[0] == 200 and _readyz(empty)[0] == 200
    px.fail_status = 503
    missing = "/v2/%s/blobs/sha256:%s" % (img.repo, "0" * 64)
    for nd in (node, empty):
        def circuit_open():
            nd.request("GET", missing, timeout=30)
            return _readyz(nd)[1]["upstreams"][0]["circuit"] == "open"
        util.wait_until(circuit_open, 30, interval=0.1, what="the circuit to open")
    seen = len(px.requests)
    t0 = time.monotonic()
    r = node.request("GET", missing, timeout=30)
    assert r.status >= 500 and time.monotonic() - t0 < 0.5, (r, time.monotonic() - t0)
    time.sleep(1.1)                                   # the tag is past its TTL
    t0 = time.monotonic()
    r = node.request("GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                     headers={"Accept": images.ACCEPT_ALL}, timeout=30)
    assert r.status == 200 and r.body == img.manifest and r.header("Warning"), r
    assert time.monotonic() - t0 < 0.5
    st, doc = _readyz(node)
    assert st == 200 and doc["ready"] is True, doc         # it still serves its cache
    st, doc = _readyz(empty)
    assert st == 503 and "circuit" in doc["reason"], doc  # nothing to serve at all
    m = node.metrics()
    assert any(n == "regmesh_upstream_circuit_state" and lb.get("state") == "open" and v == 1
               for n, lb, v in m)
    assert node.metric_sum("regmesh_upstream_circuit_opens_total") >= 1
    # requests while open (and the probe at most) did not reach the upstream
    assert len(px.requests) <= seen + 1, px.requests[seen:]

    px.fail_status = None

    def closed():
        node.request("GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                     headers={"Accept": images.ACCEPT_ALL}, timeout=30)
        return _readyz(node)[1]["upstreams"][0]["circuit"] == "closed"
    util.wait_until(closed, 20, interval=0.3, what="the circuit to close")
    r = node.request("GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                     headers={"Accept": images.ACCEPT_ALL}, timeout=30)
    assert r.status == 200 and not r.header("Warning")
