"""Helpers the test modules share: constants, upstream entries, pulls over
plain HTTP, raw sockets, streamed hashing."""

import hashlib
import http.client
import socket
import ssl
import time
import urllib.parse

from . import images, regmesh, util

TEST_USER = "tester"
TEST_PASSWORD = "s3cret-pw"
HUB_HOST = "docker.io"
GHCR_HOST = "ghcr.io"
TOKEN_HOST = "token.example.com"
BASIC_HOST = "basic.example.com"


def hub_upstream(hub, **kw):
    kw.setdefault("default", True)
    return regmesh.Upstream(HUB_HOST, hub.url, **kw)


def ghcr_upstream(ghcr, **kw):
    return regmesh.Upstream(GHCR_HOST, ghcr.url, **kw)


def pull_via_http(base, image, repo=None, query="", accept=images.ACCEPT_ALL,
                  timeout=120):
    """GET a manifest by tag, then every child manifest and blob over plain
    HTTP, asserting exact bytes. Returns the digests fetched."""
    repo = repo or image.repo
    q = ("?" + query) if query else ""
    r = util.request(base, "GET", "/v2/%s/manifests/%s%s" % (repo, image.tag, q),
                     headers={"Accept": accept}, timeout=timeout)
    assert r.status == 200, "manifest %s:%s via %s: %r" % (repo, image.tag, base, r)
    assert r.body == image.manifest, "manifest bytes differ for %s:%s" % (repo, image.tag)
    fetched = [image.digest]
    blobs = list(image.own_blobs())
    for c in image.children:
        r = util.request(base, "GET", "/v2/%s/manifests/%s%s" % (repo, c.digest, q),
                         headers={"Accept": accept}, timeout=timeout)
        assert r.status == 200 and r.body == c.manifest, "child manifest %s: %r" % (c.digest, r)
        fetched.append(c.digest)
        blobs += c.own_blobs()
    for b in blobs:
        st, digest, n = stream_get(base, "/v2/%s/blobs/%s%s" % (repo, b.digest, q),
                                   timeout=timeout)
        assert st == 200, "blob %s via %s: status %s" % (b.digest, base, st)
        assert digest == b.digest and n == b.size, "blob %s: got %d bytes hashing to %s" % (
            b.digest, n, digest)
        fetched.append(b.digest)
    return fetched


def get_unverified(port, path, headers=None, timeout=90, host=util.LOCALHOST):
    """GET over plain HTTP; returns (status, body, complete, headers dict),
    complete False when the connection ended before Content-Length bytes."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
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


def read_digest(resp, chunk=1 << 20):
    """Reads an http.client response, hashing as it goes: (status, sha256
    digest of what arrived, bytes read); a cut-short body gives its partial
    hash."""
    h = hashlib.sha256()
    n = 0
    try:
        while True:
            data = resp.read(chunk)
            if not data:
                break
            h.update(data)
            n += len(data)
    except (http.client.IncompleteRead, ConnectionError, socket.timeout):
        pass
    return resp.status, "sha256:" + h.hexdigest(), n


def stream_get(base, path, headers=None, timeout=120, chunk=1 << 20):
    """GET and hash the body while reading. Returns (status, sha256 digest
    of what arrived, bytes read); a cut-short body gives its partial hash.
    base: http:// or https:// (trusting the CA util.TLS_TRUST has for it);
    IPv6 literals work."""
    u = urllib.parse.urlsplit(base)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout,
                                           context=util.tls_context(u.netloc))
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        return read_digest(conn.getresponse(), chunk)
    finally:
        conn.close()


def raw_exchange(port, payload, timeout=10.0, linger=0.5, host=util.LOCALHOST):
    """Send raw bytes; read until the peer closes, or until `linger` seconds
    of silence once a full response head has arrived, or `timeout`.
    Returns (bytes received, seconds until the first byte or None)."""
    s = socket.create_connection((host, port), timeout=timeout)
    t0 = time.monotonic()
    deadline = t0 + timeout
    first = None
    out = b""
    try:
        s.sendall(payload)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(min(left, linger) if b"\r\n\r\n" in out else left)
            try:
                data = s.recv(65536)
            except (socket.timeout, ConnectionError):
                break
            if not data:
                break
            if first is None:
                first = time.monotonic() - t0
            out += data
    finally:
        s.close()
    return out, first


def tls_client_hello():
    """The bytes a TLS client sends first (what skopeo sends to an
    http:// registry before it falls back to plain HTTP)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def split_head(raw):
    """Raw HTTP response bytes -> (status, {lower header: value}, rest)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else None
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, rest
