"""The fault suite: an upstream that breaks the protocol in one precise way
per test (rmtest.faulty). Each test asserts the three promises: the client
gets correct bytes or a clear error (never wrong bytes presented as
complete), nothing unverified is stored, and the node recovers by itself
once the upstream behaves."""

import hashlib
import http.client
import os
import time

import pytest

from rmtest import faulty, regmesh, util

REPO = "app/x"


@pytest.fixture
def reg():
    r = faulty.FaultyRegistry().start()
    yield r
    r.stop()


@pytest.fixture
def image(reg):
    layers = [os.urandom(300 * 1024), os.urandom(40 * 1024)]
    md, lds, cd = reg.add_image(REPO, "v1", layers)
    return {"manifest": md, "layers": lds, "config": cd, "data": dict(zip(lds, layers))}


def make(make_node, reg, **extra):
    return make_node([regmesh.Upstream("faulty.test", reg.url, default=True, **extra)])


def get(n, path, headers=None, timeout=60):
    """(status, body, complete, headers); complete False when the body was
    cut before its Content-Length."""
    conn = http.client.HTTPConnection(util.LOCALHOST, n.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        try:
            body = resp.read()
            complete = True
        except (http.client.IncompleteRead, ConnectionError) as e:
            body = getattr(e, "partial", b"")
            complete = False
        return resp.status, body, complete, dict(resp.getheaders())
    finally:
        conn.close()


def assert_promises(n, digest, data, st, body, complete):
    """Correct bytes, or a clear error; nothing wrong stored."""
    if st == 200 and complete:
        assert hashlib.sha256(body).hexdigest() == digest.split(":")[1], \
            "wrong bytes delivered as complete"
        assert len(body) == len(data)
    else:
        assert st >= 400 or not complete, (st, complete)
    assert n.verify_store() == [], "a stored file does not hash to its name"
    util.wait_until(lambda: n.tmp_files() == [], 10, what="tmp/ empty")


def assert_recovers(n, reg, digest, data, timeout=15):
    reg.clear()

    def ok():
        st, body, complete, _ = get(n, "/v2/%s/blobs/%s" % (REPO, digest))
        return st == 200 and complete and body == data
    util.wait_until(ok, timeout, what="the node serving the blob again")
    util.wait_until(lambda: n.has_blob(digest), 10, what="the blob committed")
    assert n.verify_store() == []


@pytest.mark.parametrize("kind", ["short", "long", "bad_bytes", "bad_chunked", "gzip",
                                  "wrong_digest"])
def test_broken_blob_bodies(make_node, reg, image, kind):
    n = make(make_node, reg)
    d = image["layers"][0]
    data = image["data"][d]
    reg.fault(d, kind)
    t0 = time.monotonic()
    st, body, complete, _ = get(n, "/v2/%s/blobs/%s" % (REPO, d))
    assert time.monotonic() - t0 < 45
    assert_promises(n, d, data, st, body, complete)
    if kind in ("short", "bad_bytes", "bad_chunked"):
        assert not (st == 200 and complete), "%s must not look like a good body" % kind
        assert not n.has_blob(d)
    assert_recovers(n, reg, d, data)
    assert n.alive()


def test_stall_mid_body_is_cut_within_low_speed_time(make_node, reg, image):
    # the node's upstream client gives up below 1 KiB/s for low_speed_time
    n = make(make_node, reg, options={"low_speed_time": "2s", "max_retries": 1})
    d = image["layers"][0]
    data = image["data"][d]
    reg.fault(d, "stall", secs=30)
    t0 = time.monotonic()
    st, body, complete, _ = get(n, "/v2/%s/blobs/%s" % (REPO, d), timeout=40)
    took = time.monotonic() - t0
    assert took < 20, "the stalled download was not cut (%.1fs)" % took
    assert_promises(n, d, data, st, body, complete)
    assert not (st == 200 and complete)
    assert_recovers(n, reg, d, data)


def test_manifest_bytes_not_matching_the_digest(make_node, reg, image):
    n = make(make_node, reg)
    md = image["manifest"]
    reg.fault("/manifests/" + md, "bad_bytes")
    st, body, complete, _ = get(n, "/v2/%s/manifests/%s" % (REPO, md),
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert st >= 500, (st, body[:200])
    assert not n.has_blob(md)
    reg.clear()
    st, body, complete, h = get(n, "/v2/%s/manifests/%s" % (REPO, md),
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert st == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == md


def test_html_where_a_manifest_was_expected(make_node, reg, image):
    n = make(make_node, reg)
    reg.fault("/manifests/v1", "html")
    st, body, complete, h = get(n, "/v2/%s/manifests/v1" % REPO,
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert st >= 400 and b"<html>" not in body, (st, body[:200])
    assert n.verify_store() == []
    assert not any("v1" in p for p in os.listdir(os.path.join(n.data_dir, "tags"))
                   if os.path.isdir(os.path.join(n.data_dir, "tags")))
    reg.clear()
    st, body, complete, h = get(n, "/v2/%s/manifests/v1" % REPO,
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert st == 200 and h.get("Docker-Content-Digest") == image["manifest"]


@pytest.mark.parametrize("retry_after", [None, 1])
@pytest.mark.parametrize("code", [500, 503])
def test_5xx_with_and_without_retry_after(make_node, reg, image, code, retry_after):
    n = make(make_node, reg)
    d = image["layers"][1]
    opts = {"code": code}
    if retry_after:
        opts["retry_after"] = retry_after
    reg.fault(d, "status", **opts)
    t0 = time.monotonic()
    st, body, complete, _ = get(n, "/v2/%s/blobs/%s" % (REPO, d))
    assert st >= 500 and time.monotonic() - t0 < 40, st
    assert not n.has_blob(d)
    assert_recovers(n, reg, d, image["data"][d], timeout=30)


def test_redirect_loop_ends_in_an_error(make_node, reg, image):
    n = make(make_node, reg)
    d = image["layers"][1]
    reg.fault(d, "redirect_loop")
    t0 = time.monotonic()
    st, body, complete, _ = get(n, "/v2/%s/blobs/%s" % (REPO, d))
    assert st >= 500 and time.monotonic() - t0 < 30, st
    assert_recovers(n, reg, d, image["data"][d], timeout=30)


def test_huge_www_authenticate(make_node, reg, image):
    n = make(make_node, reg)
    d = image["layers"][1]
    reg.fault(d, "huge_auth")
    st, body, complete, _ = get(n, "/v2/%s/blobs/%s" % (REPO, d))
    assert st >= 400, st
    assert n.request("GET", "/healthz").status == 200
    assert_recovers(n, reg, d, image["data"][d], timeout=30)


def test_cross_host_redirect_carries_no_credentials(make_node, image):
    """An upstream with a login redirects a blob to another host (a CDN):
    the node follows, gets the bytes, and its Authorization stays with the
    registry that asked for it."""
    a = faulty.FaultyRegistry(basic_auth=("bob", "s3cret")).start()
    cdn = faulty.FaultyRegistry(host="127.0.0.2").start()
    try:
        layers = [os.urandom(100 * 1024)]
        a.add_image(REPO, "v1", layers)
        d = cdn.add_blob(layers[0])
        a.fault(d, "redirect_to", url=cdn.url)
        n = make_node([regmesh.Upstream("faulty.test", a.url, default=True, username="bob",
                                        password="s3cret")])
        st, body, complete, _ = get(n, "/v2/%s/blobs/%s" % (REPO, d))
        assert st == 200 and complete and body == layers[0], st
        assert a.auth_seen > 0, "the registry never saw the login (test is void)"
        assert any(d in p for _, p, _ in cdn.requests), "the redirect was not followed"
        assert cdn.auth_seen == 0, "Authorization leaked to the redirect's host"
        assert n.verify_store() == []
    finally:
        a.stop()
        cdn.stop()
