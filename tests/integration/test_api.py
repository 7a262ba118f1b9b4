"""The registry API regmesh serves, spoken to directly (http.client)."""

import json
import shutil
import threading
import time

import pytest

from rmtest import images, regmesh, util
from rmtest.checks import pull_via_http, raw_exchange, split_head, stream_get, tls_client_hello


def _json_error(r, status, code):
    assert r.status == status, "want %d %s, got %r" % (status, code, r)
    assert r.header("Content-Type", "").split(";")[0].strip() == "application/json", r
    codes = r.error_codes()
    assert code in codes, "want error code %s, got %r" % (code, r.body[:300])


def test_v2_root(node):
    r = node.request("GET", "/v2/")
    assert r.status == 200
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert json.loads(r.body or b"{}") == {}


def test_health_and_metrics_endpoints(node):
    assert node.request("GET", "/healthz").status == 200
    assert node.request("GET", "/readyz").status == 200
    r = node.request("GET", "/metrics")
    assert r.status == 200 and b"regmesh_" in r.body


def test_head_manifest_by_tag(node, catalog):
    img = catalog.multi
    raw, _ = raw_exchange(node.port, (
        "HEAD /v2/%s/manifests/%s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\n"
        "Connection: close\r\n\r\n" % (img.repo, img.tag, node.host_port, images.ACCEPT_ALL)
    ).encode(), timeout=30, linger=1.0)
    status, hdrs, rest = split_head(raw)
    assert status == 200, raw[:500]
    assert hdrs.get("content-type") == img.media_type
    assert hdrs.get("docker-content-digest") == img.digest
    assert hdrs.get("content-length") == str(len(img.manifest)), "HEAD needs the real length"
    assert "chunked" not in hdrs.get("transfer-encoding", "")
    assert rest == b"", "HEAD sent a body: %r" % rest[:100]


@pytest.mark.parametrize("key", ["multi", "nested", "index", "alpine"])
def test_get_manifest_by_digest_is_byte_identical(node, hub, catalog, key):
    img = getattr(catalog, key)
    for m in img.all_manifests():
        up = util.request(hub.url, "GET", "/v2/%s/manifests/%s" % (img.repo, m.digest),
                          headers={"Accept": images.ACCEPT_ALL})
        r = node.request("GET", "/v2/%s/manifests/%s" % (img.repo, m.digest),
                         headers={"Accept": images.ACCEPT_ALL})
        assert r.status == 200, r
        assert r.body == up.body == m.manifest
        assert r.header("Content-Type") == up.header("Content-Type") == m.media_type
        assert r.header("Docker-Content-Digest") == m.digest
        assert int(r.header("Content-Length")) == len(m.manifest)


def test_unknown_manifest_digest(node, catalog):
    r = node.request("GET", "/v2/%s/manifests/sha256:%s" % (catalog.multi.repo, "0" * 64),
                     headers={"Accept": images.ACCEPT_ALL})
    _json_error(r, 404, "MANIFEST_UNKNOWN")


def test_unknown_tag(node, catalog):
    r = node.request("GET", "/v2/%s/manifests/no-such-tag" % catalog.multi.repo,
                     headers={"Accept": images.ACCEPT_ALL})
    _json_error(r, 404, "MANIFEST_UNKNOWN")


def test_invalid_name_and_digest(node, hub, catalog):
    mark = hub.log.mark()
    _json_error(node.request("GET", "/v2/Upper/Case/manifests/v1"), 400, "NAME_INVALID")
    _json_error(node.request("GET", "/v2/bad..name/manifests/v1"), 400, "NAME_INVALID")
    _json_error(node.request("GET", "/v2/%s/blobs/sha256:1234" % catalog.multi.repo),
                400, "DIGEST_INVALID")
    _json_error(node.request("GET", "/v2/%s/blobs/sha256:%s" % (catalog.multi.repo, "g" * 64)),
                400, "DIGEST_INVALID")
    assert hub.log.entries(mark) == [], "invalid requests must not reach the upstream"


def test_blob_range_and_conditional(node, catalog):
    b = catalog.multi.layers[2]
    path = "/v2/%s/blobs/%s" % (catalog.multi.repo, b.digest)
    data = b.read()
    r = node.request("GET", path)                      # cache it
    assert r.status == 200 and r.body == data
    assert r.header("Docker-Content-Digest") == b.digest
    assert int(r.header("Content-Length")) == b.size
    r = node.request("GET", path, headers={"Range": "bytes=100-4195"})
    assert r.status == 206, r
    assert r.header("Content-Range") == "bytes 100-4195/%d" % b.size
    assert r.body == data[100:4196]
    r = node.request("GET", path, headers={"Range": "bytes=%d-" % (b.size - 10)})
    assert r.status == 206 and r.body == data[-10:]
    assert r.header("Content-Range") == "bytes %d-%d/%d" % (b.size - 10, b.size - 1, b.size)
    r = node.request("GET", path, headers={"Range": "bytes=%d-" % b.size})
    assert r.status == 416, r
    r = node.request("GET", path, headers={"If-None-Match": '"%s"' % b.digest})
    assert r.status == 304 and r.body == b""
    m = catalog.multi
    r = node.request("GET", "/v2/%s/manifests/%s" % (m.repo, m.tag),
                     headers={"Accept": images.ACCEPT_ALL, "If-None-Match": '"%s"' % m.digest})
    assert r.status == 304 and r.body == b""


@pytest.mark.parametrize("order", ["index-first", "manifest-first"])
def test_repeated_accept_lines_are_merged(node, catalog, order):
    """Accept on two header lines (Go clients do that) counts as one list:
    a tag naming an OCI index returns the index. (distribution answers 404
    if only the manifest line were forwarded; see test_fixtures.)"""
    img = catalog.index
    lines = [images.OCI_INDEX, images.OCI_MANIFEST]
    if order == "manifest-first":
        lines.reverse()
    r = node.request("GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                     headers=[("Accept", a) for a in lines])
    assert r.status == 200, r
    assert r.header("Content-Type") == images.OCI_INDEX
    assert r.body == img.manifest


def test_tags_list_pagination(node, catalog):
    repo = catalog.tagged.repo
    r = node.request("GET", "/v2/%s/tags/list" % repo)
    assert r.status == 200
    assert sorted(r.json()["tags"]) == ["t1", "t2", "t3", "t4", "t5"]
    assert r.json()["name"] == repo

    r = node.request("GET", "/v2/%s/tags/list?n=2" % repo)
    assert r.status == 200 and r.json()["tags"] == ["t1", "t2"], r
    seen = list(r.json()["tags"])
    pages = 1
    link = r.header("Link")
    while link:
        assert 'rel="next"' in link, link
        target = link.split("<", 1)[1].split(">", 1)[0]
        if target.startswith("http"):
            target = "/" + target.split("/", 3)[3]
        r = node.request("GET", target)
        assert r.status == 200, (target, r)
        assert len(r.json()["tags"]) <= 2
        seen += r.json()["tags"]
        link = r.header("Link")
        pages += 1
        assert pages <= 5, "pagination does not end"
    assert seen == ["t1", "t2", "t3", "t4", "t5"]
    r = node.request("GET", "/v2/%s/tags/list?n=10&last=t2" % repo)
    assert r.status == 200 and r.json()["tags"] == ["t3", "t4", "t5"]
    assert r.header("Link") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_push_verbs_are_unsupported(node, hub, catalog, method):
    mark = hub.log.mark()
    for path in ("/v2/%s/blobs/uploads/" % catalog.multi.repo,
                 "/v2/%s/manifests/v1" % catalog.multi.repo,
                 "/v2/%s/blobs/%s" % (catalog.multi.repo, catalog.multi.layers[0].digest)):
        r = node.request(method, path, body=b"{}" if method != "DELETE" else None,
                         headers={"Content-Type": "application/json"})
        _json_error(r, 405, "UNSUPPORTED")
    assert hub.log.entries(mark) == []


def test_tls_bytes_get_a_quick_400(node):
    raw, first = raw_exchange(node.port, tls_client_hello(), timeout=5)
    assert raw.startswith(b"HTTP/1."), "no HTTP answer to a TLS ClientHello: %r" % raw[:80]
    status, _, _ = split_head(raw)
    assert status == 400
    assert first is not None and first < 2.0, "answer took %s s" % first
    # and the node still serves
    assert node.request("GET", "/v2/").status == 200


def test_concurrent_cold_gets_fetch_upstream_once(node, hub, catalog):
    b = catalog.big.layers[0]
    path = "/v2/%s/blobs/%s" % (catalog.big.repo, b.digest)
    mark = hub.log.mark()
    results = [None] * 8
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            barrier.wait(10)
            results[i] = stream_get(node.url, path, timeout=120)
        except Exception as e:  # noqa: BLE001
            results[i] = e
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a download hung"
    for res in results:
        assert res == (200, b.digest, b.size), res
    gets = hub.log.blob_gets(b.digest, mark)
    assert len(gets) == 1, "upstream served the blob %d times: %r" % (len(gets), gets)
    assert hub.log.get_bytes(mark) <= b.size + 64 * 1024


def test_head_missing_blob_does_not_fetch_body(node, hub, catalog):
    b = catalog.big.layers[0]
    path = "/v2/%s/blobs/%s" % (catalog.big.repo, b.digest)
    mark = hub.log.mark()
    r = node.request("HEAD", path)
    assert r.status == 200, r
    assert int(r.header("Content-Length")) == b.size
    assert r.header("Docker-Content-Digest") == b.digest
    time.sleep(1.0)          # give a wrongful background fetch time to show
    assert hub.log.blob_gets(b.digest, mark) == [], "HEAD made the upstream send the blob"
    assert hub.log.get_bytes(mark) < 1 << 20
    r = node.request("HEAD", "/v2/%s/blobs/sha256:%s" % (catalog.big.repo, "1" * 64))
    assert r.status == 404 and r.body == b""


def test_metrics_pass_promtool(node, catalog, test_dir):
    """/metrics after real traffic is clean for `promtool check metrics`,
    with histograms, build info, process metrics and the cache results."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    pull_via_http(node.url, catalog.multi)
    pull_via_http(node.url, catalog.multi)                  # now from the cache
    text = node.request("GET", "/metrics").body
    cp = util.run([promtool, "check", "metrics"], timeout=30, check=False, input=text)
    assert cp.returncode == 0 and not cp.stdout.strip() and not cp.stderr.strip(), (
        cp.stdout.decode() + cp.stderr.decode())
    t = text.decode()
    for want in ('regmesh_build_info{version="', "process_cpu_seconds_total ",
                 "process_resident_memory_bytes ", "process_open_fds ",
                 'regmesh_http_request_duration_seconds_bucket{route="blob",source="local",le="',
                 'regmesh_upstream_request_duration_seconds_count{upstream="docker.io",kind="',
                 'regmesh_cold_first_byte_seconds_count{kind="blob"}',
                 'regmesh_cache_requests_total{kind="blob",result="stale"} 0',
                 'regmesh_upstream_circuit_state{upstream="docker.io",state="closed"} 1'):
        assert want in t, want
    m = regmesh.parse_metrics(t)
    hits = sum(v for n, lb, v in m if n == "regmesh_cache_requests_total"
               and lb.get("kind") == "blob" and lb.get("result") == "hit")
    misses = sum(v for n, lb, v in m if n == "regmesh_cache_requests_total"
                 and lb.get("kind") == "blob" and lb.get("result") == "miss")
    n_blobs = len(catalog.multi.own_blobs())
    assert hits >= n_blobs and misses >= n_blobs, (hits, misses)
