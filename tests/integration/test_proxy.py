"""The proxy listener (docs/proxy.md): HTTPS_PROXY for every client.

The registries' host names (ghcr.test, registry-1.docker.io) are never
resolved by anyone: the clients hand them to the proxy in CONNECT, and the
node serves them itself from the upstreams on 127.0.0.1. The one host that
is tunnelled, other.test, is mapped to 127.0.0.1 by the proxy's own
`proxy.hosts`."""

import hashlib
import http.client
import http.server
import json
import os
import socket
import ssl
import threading
import time
import uuid

import pytest

from rmtest import clients, images, regmesh, upstream, util
from rmtest.checks import TEST_PASSWORD, TEST_USER

GHCR_HOST = "ghcr.test"
ABC = "a/b/c"


@pytest.fixture(scope="module")
def proxy_ca(regmesh_binary, session_dir):
    d = os.path.join(session_dir, "proxy-ca-%s" % uuid.uuid4().hex[:6])
    util.run([regmesh_binary, "ca", "init", d], timeout=30)
    certs = os.path.join(d, "certdir")
    os.makedirs(certs)
    with open(os.path.join(d, "ca.crt"), "rb") as f, \
            open(os.path.join(certs, "ca.crt"), "wb") as g:
        g.write(f.read())
    return {"cert": os.path.join(d, "ca.crt"), "key": os.path.join(d, "ca.key"),
            "certdir": certs}


@pytest.fixture(scope="module")
def abc(ghcr, catalog):
    """The tool image, also as ghcr.test/a/b/c:1.0 (a three-part name)."""
    images.RegistryClient(ghcr.url).push(catalog.tool, repo=ABC, tags=["1.0"])
    return catalog.tool


class ProxyNode:
    def __init__(self, node, port):
        self.node = node
        self.port = port
        self.url = "http://%s:%d" % (util.LOCALHOST, port)

    @property
    def env(self):
        """What a client needs to use it (both spellings: Go reads either)."""
        return {k: self.url for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}


@pytest.fixture
def make_proxy_node(make_node, hub, ghcr, proxy_ca):
    def make(proxy_extra="", extra_yaml="", **kw):
        port = util.free_port()
        text = "\n".join([
            "proxy:",
            "  listen: %s:%d" % (util.LOCALHOST, port),
            "  ca: {cert: %s, key: %s}" % (proxy_ca["cert"], proxy_ca["key"]),
        ]) + "\n" + proxy_extra + extra_yaml
        n = make_node([regmesh.Upstream("docker.io", hub.url, default=True),
                       regmesh.Upstream(GHCR_HOST, ghcr.url)], extra_yaml=text, **kw)
        util.wait_until(lambda: util.port_open(port), 10, what="the proxy listener")
        return ProxyNode(n, port)
    return make


def connect(port, target, headers=(), timeout=10, source=None):
    """A raw CONNECT (from source, an address on lo): (status, head text, socket)."""
    s = socket.create_connection((util.LOCALHOST, port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    req = "CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (target, target)
    for k, v in headers:
        req += "%s: %s\r\n" % (k, v)
    s.sendall((req + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(4096)
        if not b:
            break
        head += b
    text = head.decode("latin-1")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0
    # a refusal's body, which may come in its own segment
    hl = text.lower()
    if status != 200 and "content-length:" in hl:
        n = int(hl.split("content-length:", 1)[1].split("\r\n", 1)[0])
        while len(head) - head.index(b"\r\n\r\n") - 4 < n:
            b = s.recv(4096)
            if not b:
                break
            head += b
        text = head.decode("latin-1")
    return status, text, s


def via_proxy(pn, host, path, ca, headers=None, method="GET"):
    """One HTTPS request to host through the proxy (CONNECT, then TLS that
    must verify against ca for that host name)."""
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(util.LOCALHOST, pn.port, timeout=30, context=ctx)
    conn.set_tunnel(host, 443)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        conn.close()


def access_for(node, mark, host):
    return [a for a in node.access(mark) if a.get("host") == host]


# ---------------------------------------------------------------------------
# the real clients

def _need(*tools):
    miss = clients.missing(*tools)
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))


@pytest.mark.clients
def test_dockerd_pulls_through_the_proxy(make_proxy_node, containerd, test_dir, abc, catalog,
                                         hub, ghcr, proxy_ca):
    """dockerd with HTTPS_PROXY and the CA trusted pulls a ghcr.test name
    and a Docker Hub name through the cache, names unchanged; a second
    dockerd, trusting the CA through certs.d instead, pulls warm."""
    _need("dockerd", "unshare")
    pn = make_proxy_node()
    mark = pn.node.log_mark()
    started = []
    try:
        # the system trust store (Docker Hub is verified against it only)
        env = dict(pn.env, SSL_CERT_FILE=proxy_ca["cert"])
        dk = clients.Dockerd(os.path.join(test_dir, "dk1"), containerd, [],
                             "rmtest-px-" + uuid.uuid4().hex[:8], env_extra=env)
        started.append(dk)
        dk.start()
        ok, msgs = dk.pull("%s/%s" % (GHCR_HOST, ABC), "1.0")
        assert ok, "docker pull %s/%s:1.0 failed: %r" % (GHCR_HOST, ABC, msgs[-5:])
        st, info = dk.inspect("%s/%s:1.0" % (GHCR_HOST, ABC))
        assert st == 200, info
        assert "%s/%s:1.0" % (GHCR_HOST, ABC) in info["RepoTags"], info["RepoTags"]
        assert "%s/%s@%s" % (GHCR_HOST, ABC, abc.digest) in info["RepoDigests"]
        ok, msgs = dk.pull("alpine", "3.19")
        assert ok, "docker pull alpine:3.19 failed: %r" % msgs[-5:]
        st, info = dk.inspect("alpine:3.19")
        assert st == 200, info
        assert "alpine@" + catalog.alpine.digest in info["RepoDigests"], info["RepoDigests"]

        ghcr_lines = access_for(pn.node, mark, GHCR_HOST + ":443")
        assert any(a["path"] == "/v2/%s/manifests/1.0" % ABC and a["status"] == 200
                   for a in ghcr_lines), ghcr_lines
        blobs = [a for a in ghcr_lines if "/blobs/" in a["path"] and a["method"] == "GET"]
        assert {a["path"].rsplit("/", 1)[1] for a in blobs} == {b.digest for b in abc.own_blobs()}
        hub_lines = access_for(pn.node, mark, "registry-1.docker.io:443")
        assert any(a["path"] == "/v2/library/alpine/manifests/3.19" for a in hub_lines), hub_lines
        assert pn.node.metric_sum("regmesh_proxy_connects_total", action="intercept") >= 2
        # one leaf per host, minted once
        assert pn.node.metric_sum("regmesh_proxy_leaf_certs_total", result="minted") == 2

        # a second dockerd, CA in certs.d/ghcr.test/regmesh-proxy-ca.crt (client-config's
        # placement): every blob from the node's cache
        certs_d = os.path.join(test_dir, "certs.d")
        os.makedirs(os.path.join(certs_d, GHCR_HOST))
        with open(proxy_ca["cert"], "rb") as f, \
                open(os.path.join(certs_d, GHCR_HOST, "regmesh-proxy-ca.crt"), "wb") as g:
            g.write(f.read())
        mark_up = ghcr.log.mark()
        dk2 = clients.Dockerd(os.path.join(test_dir, "dk2"), containerd, [],
                              "rmtest-px-" + uuid.uuid4().hex[:8], certs_d=certs_d,
                              env_extra=pn.env)
        started.append(dk2)
        dk2.start()
        ok, msgs = dk2.pull("%s/%s" % (GHCR_HOST, ABC), "1.0")
        assert ok, "warm docker pull failed: %r" % msgs[-5:]
        st, info = dk2.inspect("%s/%s:1.0" % (GHCR_HOST, ABC))
        assert "%s/%s@%s" % (GHCR_HOST, ABC, abc.digest) in info["RepoDigests"]
        assert ghcr.log.all_blob_gets(mark_up) == [], "the warm pull went upstream"
    finally:
        for d in started:
            d.stop()


def test_skopeo_and_podman_through_the_proxy(make_proxy_node, skopeo, test_dir, abc, catalog,
                                             ghcr, proxy_ca):
    pn = make_proxy_node()
    mark = pn.node.log_mark()
    got = skopeo.copy("%s/%s:1.0" % (GHCR_HOST, ABC), os.path.join(test_dir, "sk"),
                      tls_verify=True, cert_dir=proxy_ca["certdir"], env_extra=pn.env)
    assert got.digest == abc.digest
    assert got.verify() == []
    assert set(got.blobs) == {b.digest for b in abc.own_blobs()}
    assert access_for(pn.node, mark, GHCR_HOST + ":443")

    _need("podman", "unshare")
    pm = clients.Podman(os.path.join(test_dir, "podman"),
                        'unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
    try:
        mark_up = ghcr.log.mark()
        pm.pull("%s/%s:1.0" % (GHCR_HOST, ABC), tls_verify=True, cert_dir=proxy_ca["certdir"],
                env_extra=pn.env)
        assert pm.image_digest("%s/%s:1.0" % (GHCR_HOST, ABC)) == abc.digest
        assert ghcr.log.all_blob_gets(mark_up) == [], "skopeo's copy should have made it warm"
        pm.pull("docker.io/library/alpine:3.19", tls_verify=True, cert_dir=proxy_ca["certdir"],
                env_extra=pn.env)
        assert pm.image_digest("docker.io/library/alpine:3.19") == catalog.alpine.digest
    finally:
        pm.cleanup()


# ---------------------------------------------------------------------------
# tunnels and refusals

@pytest.fixture
def other_server():
    """A plain HTTP server on 127.0.0.1 with 1 MiB of random bytes: the
    non-registry host a tunnel goes to."""
    payload = os.urandom(1 << 20)

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    srv = http.server.ThreadingHTTPServer((util.LOCALHOST, 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1], payload
    srv.shutdown()
    srv.server_close()


def curl(args, timeout=30):
    return util.run(["curl", "-sS", "--max-time", "20"] + args, timeout=timeout, check=False)


def test_other_hosts_are_tunnelled_byte_for_byte(make_proxy_node, other_server):
    port, payload = other_server
    pn = make_proxy_node("  hosts: {other.test: %s}\n  tunnel_allow: [127.0.0.0/8]\n"
                         % util.LOCALHOST)
    cp = curl(["--proxytunnel", "--proxy", pn.url, "http://other.test:%d/x" % port])
    assert cp.returncode == 0, cp.stderr
    assert hashlib.sha256(cp.stdout).digest() == hashlib.sha256(payload).digest()
    assert pn.node.metric_sum("regmesh_proxy_connects_total", action="tunnel") == 1
    assert pn.node.metric_sum("regmesh_proxy_tunnel_bytes_total", direction="in") > len(payload)
    assert pn.node.metric_sum("regmesh_proxy_tunnels_total", result="relayed") == 1
    # the proxy's own listeners are never a tunnel's target, allowed or not,
    # however they are named
    pn2 = make_proxy_node("  tunnel_allow: [0.0.0.0/0, '::/0']\n")
    for p in (pn2.node.port, pn2.port):
        for host in (util.LOCALHOST, "0.0.0.0", "[::ffff:%s]" % util.LOCALHOST):
            st, head, s = connect(pn2.port, "%s:%d" % (host, p))
            s.close()
            assert st == 403 and "own listeners" in head, (host, head)


def test_tunnels_refused(make_proxy_node, other_server):
    port, _ = other_server
    # loopback is refused unless tunnel_allow says otherwise
    pn = make_proxy_node("  hosts: {other.test: %s}\n" % util.LOCALHOST)
    st, head, s = connect(pn.port, "other.test:%d" % port)
    s.close()
    assert st == 403 and "loopback" in head, head
    st, head, s = connect(pn.port, "[::1]:%d" % port)
    s.close()
    assert st == 403, head
    # tunnel_others: false: only the registries
    pn2 = make_proxy_node("  tunnel_others: false\n  tunnel_allow: [127.0.0.0/8]\n"
                          "  hosts: {other.test: %s}\n" % util.LOCALHOST)
    cp = curl(["--proxytunnel", "--proxy", pn2.url, "http://other.test:%d/x" % port])
    assert cp.returncode != 0 and b"403" in cp.stderr, cp.stderr
    st, head, s = connect(pn2.port, "bad target")
    s.close()
    assert st == 400, head
    assert pn2.node.metric_sum("regmesh_proxy_connects_total", action="refused") >= 1


def test_plain_http_proxy_requests(make_proxy_node, abc):
    pn = make_proxy_node()
    mark = pn.node.log_mark()
    cp = curl(["--proxy", pn.url, "-D", "-", "-o", "/dev/null",
               "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
               "http://%s/v2/%s/manifests/1.0" % (GHCR_HOST, ABC)])
    assert cp.returncode == 0, cp.stderr
    head = cp.stdout.decode().lower()
    assert head.startswith("http/1.1 200"), head
    assert "docker-content-digest: %s" % abc.digest in head, head
    assert access_for(pn.node, mark, GHCR_HOST)
    cp = curl(["--proxy", pn.url, "-o", "/dev/null", "-w", "%{http_code}",
               "http://other.test/"])
    assert cp.stdout == b"403", cp.stdout
    # not a proxy request at all
    r = util.request(pn.url, "GET", "/v2/")
    assert r.status == 400 and b"proxy listener" in r.body


# ---------------------------------------------------------------------------
# auth: node tokens inside, Proxy-Authorization for tunnels

def test_auth_token_flow_and_proxy_login(make_proxy_node, test_dir, abc, skopeo, proxy_ca,
                                         other_server):
    pw = os.path.join(test_dir, "htpasswd")
    upstream.make_htpasswd(pw, {TEST_USER: TEST_PASSWORD})
    pn = make_proxy_node("  hosts: {other.test: %s}\n  tunnel_allow: [127.0.0.0/8]\n"
                         % util.LOCALHOST, extra_yaml="auth: {htpasswd: %s}\n" % pw)
    ca = proxy_ca["cert"]
    st, h, _ = via_proxy(pn, GHCR_HOST, "/v2/", ca)
    assert st == 401
    assert h["www-authenticate"] == \
        'Bearer realm="https://%s/token",service="regmesh"' % GHCR_HOST
    basic = "Basic " + __import__("base64").b64encode(
        ("%s:%s" % (TEST_USER, TEST_PASSWORD)).encode()).decode()
    st, h, body = via_proxy(pn, GHCR_HOST, "/token?service=regmesh&scope=repository:a/b/c:pull",
                            ca, {"Authorization": basic})
    assert st == 200, body
    tok = json.loads(body)["token"]
    st, h, _ = via_proxy(pn, GHCR_HOST, "/v2/%s/manifests/1.0" % ABC, ca,
                         {"Authorization": "Bearer " + tok,
                          "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert st == 200 and h["docker-content-digest"] == abc.digest
    # a forged or foreign token, a wrong password
    st, _, _ = via_proxy(pn, GHCR_HOST, "/v2/", ca, {"Authorization": "Bearer " + tok[:-1] + "0"})
    assert st == 401
    st, _, _ = via_proxy(pn, GHCR_HOST, "/token", ca, {"Authorization": "Basic eDp5"})
    assert st == 401
    # Docker Hub's token host is the node's too
    st, _, body = via_proxy(pn, "auth.docker.io", "/token?service=registry.docker.io", ca,
                            {"Authorization": basic})
    assert st == 200 and json.loads(body)["token"]
    # a real client through the whole challenge -> token -> pull dance
    got = skopeo.copy("%s/%s:1.0" % (GHCR_HOST, ABC), os.path.join(test_dir, "sk"),
                      tls_verify=True, cert_dir=proxy_ca["certdir"], env_extra=pn.env,
                      src_creds="%s:%s" % (TEST_USER, TEST_PASSWORD))
    assert got.digest == abc.digest
    # a tunnel needs the proxy login
    port, payload = other_server
    st, head, s = connect(pn.port, "other.test:%d" % port)
    s.close()
    assert st == 407 and "Proxy-Authenticate: Basic" in head, head
    cp = curl(["--proxytunnel", "--proxy", pn.url, "--proxy-user",
               "%s:%s" % (TEST_USER, TEST_PASSWORD), "http://other.test:%d/x" % port])
    assert cp.returncode == 0 and cp.stdout == payload, cp.stderr


def test_allow_list_and_shutdown_with_a_tunnel_open(make_proxy_node, other_server):
    """Outside `allow:` the proxy answers nothing; a tunnel still open at
    SIGTERM is cut, not waited for."""
    port, payload = other_server
    closed = make_proxy_node(extra_yaml="allow: [%s/32]\n" % util.LOCALHOST)
    st, head, s = connect(closed.port, "%s:443" % GHCR_HOST, source="127.0.0.2")
    s.close()
    assert st == 403 and "may not use this node" in head, head
    assert closed.node.metric_sum("regmesh_denied_total", why="allow") >= 1

    pn = make_proxy_node("  hosts: {other.test: %s}\n  tunnel_allow: [127.0.0.0/8]\n"
                         % util.LOCALHOST)
    st, head, s = connect(pn.port, "other.test:%d" % port)
    try:
        assert st == 200, head
        s.sendall(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        got = b""
        while len(got) < 1000:
            got += s.recv(65536)
        assert got.startswith(b"HTTP/1.0 200") or got.startswith(b"HTTP/1.1 200"), got[:40]
        t0 = time.monotonic()
        pn.node.stop()
        assert not pn.node.alive()
        assert time.monotonic() - t0 < 5, "the open tunnel held the shutdown"
        s.settimeout(5)
        while True:  # the rest of the body, then the cut
            b = s.recv(65536)
            if not b:
                break
    finally:
        s.close()
