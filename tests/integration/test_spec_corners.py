"""Corners of the distribution spec and of RFC 9110/9112 a new user finds
with the spec in hand: 416 with Content-Range, error codes only from the
spec's table, entity-tag comparison, signed Range numbers, request-line and
Host strictness, and the admin listener's own connection budget."""

import socket
import time

import pytest

from rmtest import regmesh, util
from rmtest.checks import hub_upstream, pull_via_http, raw_exchange, split_head

# The distribution spec's error code table, and the Docker Registry v2 codes
# docker and containerd also know (docs/decisions.md)
SPEC_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
              "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
              "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED",
              "TOOMANYREQUESTS"}
DOCKER_CODES = {"UNKNOWN", "UNAVAILABLE", "TAG_INVALID"}


def assert_codes_listed(r):
    for c in r.error_codes():
        assert c in SPEC_CODES | DOCKER_CODES, "%s is in no spec's table: %r" % (c, r)


def test_416_says_the_size_and_codes_stay_in_the_table(node, catalog):
    b = catalog.multi.layers[0]
    path = "/v2/%s/blobs/%s" % (catalog.multi.repo, b.digest)
    assert node.request("GET", path).status == 200
    r = node.request("GET", path, headers={"Range": "bytes=%d-" % (b.size + 5)})
    assert r.status == 416, r
    assert r.header("Content-Range") == "bytes */%d" % b.size, r.headers
    assert_codes_listed(r)
    for p in ("/v2/nothing-here", "/v3/x", "/v2/%s/tags/list?n=abc" % catalog.multi.repo,
              "/v2/Bad/manifests/x", "/v2/%s/manifests/-x" % catalog.multi.repo):
        r = node.request("GET", p)
        assert 400 <= r.status < 500, (p, r)
        assert_codes_listed(r)


@pytest.mark.parametrize("rng", ["bytes=-+5", "bytes=+5-", "bytes=--5", "bytes=5-+9",
                                 "bytes= 5-9", "bytes=0x10-"])
def test_signed_or_odd_range_numbers_are_ignored(node, catalog, rng):
    b = catalog.multi.layers[0]
    path = "/v2/%s/blobs/%s" % (catalog.multi.repo, b.digest)
    r = node.request("GET", path, headers={"Range": rng})
    assert r.status == 200 and len(r.body) == b.size, (rng, r)


def test_if_none_match_compares_entity_tags(node, catalog):
    b = catalog.multi.layers[1]
    path = "/v2/%s/blobs/%s" % (catalog.multi.repo, b.digest)
    assert node.request("GET", path).status == 200
    hexd = b.digest.split(":")[1]
    hits = ['"%s"' % b.digest, 'W/"%s"' % b.digest, '"other", "%s"' % b.digest, "*"]
    misses = ['"x%s"' % b.digest, '"%s"' % hexd, '"%sx"' % b.digest, b.digest,
              '"sha256:%s"' % hexd[:-1]]
    for v in hits:
        assert node.request("GET", path, headers={"If-None-Match": v}).status == 304, v
    for v in misses:
        r = node.request("GET", path, headers={"If-None-Match": v})
        assert r.status == 200 and len(r.body) == b.size, v


@pytest.mark.parametrize("head,status", [
    ("GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc", 400),
    ("GET /v2/ HTTP/1.1\r\n\r\n", 400),
    ("GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("GET /v2/ HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("GET /v2/\r\nHost: x\r\n\r\n", 400),
    ("GET /v2/ HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", 417),
    ("GET /v2/ HTTP/1.0\r\n\r\n", 200),
])
def test_request_head_strictness(node, head, status):
    raw, _ = raw_exchange(node.port, head.encode(), timeout=10)
    got, _, _ = split_head(raw)
    assert got == status, raw[:300]


def test_names_and_ns_refused_not_defaulted(node, hub):
    mark = hub.log.mark()
    r = node.request("GET", "/v2/%s/manifests/1" % ("a" * 250))
    assert r.status == 400 and "NAME_INVALID" in r.error_codes(), r
    r = node.request("GET", "/v2/a/b/manifests/1?ns=" + "h" * 300)
    assert r.status == 400 and "NAME_INVALID" in r.error_codes(), r
    r = node.request("GET", "/v2/a/b/manifests/1?ns=docker.io%00x")
    assert r.status == 400 and "NAME_INVALID" in r.error_codes(), r
    assert hub.log.entries(mark) == [], "a refused request reached the upstream"


def test_admin_listener_outlives_a_full_registry_port(make_node, hub):
    """max_connections spent on the registry port (idle sockets) leaves
    /healthz on admin_listen answering; the registry port refuses more."""
    n = make_node([hub_upstream(hub)], admin=True, extra_yaml="http:\n  max_connections: 8\n")
    socks = []
    try:
        for _ in range(8):
            socks.append(socket.create_connection(("127.0.0.1", n.port), timeout=5))
        time.sleep(0.3)
        r = util.request(n.control_url, "GET", "/healthz", timeout=5)
        assert r.status == 200, r
        extra = socket.create_connection(("127.0.0.1", n.port), timeout=5)
        extra.settimeout(5)
        try:
            assert extra.recv(100) == b"", "a 9th connection was served"
        except ConnectionResetError:
            pass
        finally:
            extra.close()
    finally:
        for s in socks:
            s.close()
    util.wait_until(lambda: n.request("GET", "/v2/").status == 200, 10,
                    what="the registry port serving again")


def _referrer(n, at):
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:%064x" % n, "size": 100 + n, "artifactType": at}


def test_referrers_pass_filters_and_pages(make_node):
    """Against a referrers-capable upstream: artifactType goes upstream
    encoded exactly as the client sent it, OCI-Filters-Applied comes back,
    and the next page's Link names the client's own path."""
    from rmtest import faulty
    reg = faulty.FaultyRegistry().start()
    try:
        subject = "sha256:" + "ab" * 32
        sbom = "application/vnd.example.sbom+json"
        reg.referrers = {subject: [_referrer(i, sbom if i % 2 else "application/vnd.sig")
                                   for i in range(1, 8)]}
        n = make_node([regmesh.Upstream("registry.test", reg.url, default=True)])
        enc = "application%2Fvnd.example.sbom%2Bjson"
        r = n.request("GET", "/v2/app/x/referrers/%s?artifactType=%s" % (subject, enc))
        assert r.status == 200, r
        got = [m for m in r.json()["manifests"]]
        assert got and all(m["artifactType"] == sbom for m in got), got
        assert r.header("OCI-Filters-Applied") == "artifactType"
        sent = [p for _, p, _ in reg.requests if "/referrers/" in p]
        assert sent[-1].endswith("?artifactType=" + enc), sent[-1]
        # pages: the Link is ours, and following it gets the rest
        r = n.request("GET", "/v2/app/x/referrers/%s?n=3" % subject)
        assert r.status == 200 and len(r.json()["manifests"]) == 3, r
        link = r.header("Link")
        assert link and link.startswith("</v2/app/x/referrers/%s?" % subject), link
        assert 'rel="next"' in link
        nxt = link[1:link.index(">")]
        r2 = n.request("GET", nxt)
        assert r2.status == 200, r2
        first = {m["digest"] for m in r.json()["manifests"]}
        rest = {m["digest"] for m in r2.json()["manifests"]}
        assert rest and not first & rest, (first, rest)
        # an upstream without the API: a 404 that says so, with no registry code
        reg.referrers = None
        r = n.request("GET", "/v2/app/x/referrers/%s" % subject)
        assert r.status == 404, r
        assert r.error_codes() == [] and b"referrers API" in r.body, r.body
    finally:
        reg.stop()


def test_blob_under_a_repository_the_upstream_lacks_is_404(node, hub, catalog):
    """A cached blob asked for under another name: 404 when the upstream
    has no such repository; served (no extra upstream request) under the
    name it was pulled by."""
    img = catalog.multi
    layer = img.layers[0]
    res = pull_via_http(node.url, img)
    assert layer.digest in res
    r = node.request("GET", "/v2/no-such/repo/blobs/%s" % layer.digest)
    assert r.status == 404 and "BLOB_UNKNOWN" in r.error_codes(), r
    mark = hub.log.mark()
    for _ in range(3):
        r = node.request("GET", "/v2/%s/blobs/%s" % (img.repo, layer.digest))
        assert r.status == 200 and len(r.body) == layer.size
    assert hub.log.entries(mark) == [], "the warm path asked the upstream"
