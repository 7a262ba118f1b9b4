"""TLS on the client listener and between fleet peers (issue 8).

Certificates come from `regmesh ca init` / `regmesh ca issue` (one CA per
test module, a second CA where a foreign certificate is needed). What is
asserted:

  * skopeo (--src-cert-dir, --src-tls-verify=true), containerd's ctr
    (hosts.toml `ca =`, https host and server), dockerd (certs.d) and podman
    (--cert-dir) pull through the TLS listener with the upstream's digests,
    and each of them fails with a certificate error when not given the CA
    (so the success above was a verified connection);
  * dockerd runs in a network namespace on 10.201.9.2: it treats every
    127.0.0.0/8 registry as insecure (no verification, certs.d never
    read), so on loopback it could not show that certs.d is used;
  * openssl s_client: TLS 1.0 and 1.1 get the server's protocol_version
    alert, 1.2 and 1.3 verify and negotiate ALPN http/1.1 (also when h2 is
    offered first); min_version "1.3" refuses 1.2; refused handshakes count
    in regmesh_tls_handshakes_total{result="failed"}; plain HTTP sent to the
    TLS port gets a 400;
  * certificate swap while a 256 MiB cached blob is read slowly over one
    TLS connection: after SIGHUP a new connection sees the new serial; a
    broken certificate file + SIGHUP logs "reload refused" and the previous
    certificate keeps being served; a third certificate is picked up by the
    file watch without a signal; the slow transfer ends complete with the
    right sha256;
  * a 3-node fleet with cluster.tls (one CA, a certificate per node) pulls
    every blob from the upstream once for the whole fleet, with peer hits
    and successful peer handshakes; a client certificate from another CA,
    or none, is refused at a peer listener; a 4th node whose certificate
    comes from another CA gets nothing from its peers (their failed
    handshakes grow, it counts no peer hit), and a healthy node whose blob
    owner is that 4th node still serves the blob correctly.

Environment: RMTEST_TLS_BIG_MIB (default 256) sizes the swap test's blob.
"""

import collections
import hashlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import threading
import time
import uuid

import pytest

from rmtest import checks, clients, images, netns, regmesh, util
from rmtest.checks import GHCR_HOST, HUB_HOST, ghcr_upstream, hub_upstream, stream_get
from rmtest.fleet import FleetNode, expected_content, make_fleet  # noqa: F401 (fixture)

OPENSSL = shutil.which("openssl")
CERT_ERRORS = ("x509", "certificate signed by unknown authority", "unknown authority",
               "certificate verify failed", "failed to verify certificate")


# ---------------------------------------------------------------------------
# certificates made with `regmesh ca`

class CA:
    """A CA directory made by `regmesh ca init`, issuing with `ca issue`."""

    def __init__(self, binary, parent, name="ca"):
        self.binary = binary
        os.makedirs(parent, exist_ok=True)
        self.dir = os.path.join(parent, name)
        util.run([binary, "ca", "init", self.dir], timeout=30)
        self.crt = os.path.join(self.dir, "ca.crt")
        assert os.path.isfile(self.crt) and os.path.isfile(os.path.join(self.dir, "ca.key")), (
            "regmesh ca init %s: no ca.crt/ca.key: %s" % (self.dir, os.listdir(self.dir)))

    def issue(self, name, ips=(util.LOCALHOST,), dns=()):
        """(cert path, key path) of a new serverAuth+clientAuth certificate."""
        argv = [self.binary, "ca", "issue", self.dir, name]
        for ip in ips:
            argv += ["--ip", ip]
        for d in dns:
            argv += ["--dns", d]
        util.run(argv, timeout=30)
        crt = os.path.join(self.dir, name + ".crt")
        key = os.path.join(self.dir, name + ".key")
        assert os.path.isfile(crt) and os.path.isfile(key), os.listdir(self.dir)
        return crt, key


def cert_serial(path_or_pem):
    from cryptography import x509
    data = path_or_pem
    if isinstance(path_or_pem, str):
        with open(path_or_pem, "rb") as f:
            data = f.read()
    return x509.load_pem_x509_certificate(data).serial_number


@pytest.fixture(scope="module")
def ca(regmesh_binary, session_dir):
    import tempfile
    return CA(regmesh_binary, tempfile.mkdtemp(prefix="tls-ca-", dir=session_dir))


@pytest.fixture(scope="module")
def server_cert(ca):
    return ca.issue("listener", ips=(util.LOCALHOST,), dns=("localhost",))


@pytest.fixture
def tls_node(make_node, hub, ghcr, ca, server_cert):
    """docker.io -> hub (default), ghcr.io -> ghcr, listener on https."""
    crt, key = server_cert
    return make_node([hub_upstream(hub), ghcr_upstream(ghcr)],
                     tls={"cert": crt, "key": key, "ca": ca.crt})


def cert_dir_with(test_dir, ca_crt, name="certs"):
    """A containers-certs.d style directory holding the CA as <x>.crt."""
    d = os.path.join(test_dir, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(ca_crt, os.path.join(d, "regmesh-ca.crt"))
    return d


def has_cert_error(text):
    low = text.lower()
    return any(e.lower() in low for e in CERT_ERRORS)


def _out(cp):
    return (cp.stdout or b"").decode("utf-8", "replace") + (cp.stderr or b"").decode(
        "utf-8", "replace")


def _blob_gets(node, mark, digests, status=(200, 206)):
    lines = [a for a in node.access(mark) if a["method"] == "GET" and "/blobs/" in a["path"]]
    got = {a["path"].rsplit("/", 1)[1] for a in lines if a["status"] in status}
    missing = set(digests) - got
    assert not missing, "blobs not fetched through regmesh: %s\n%r" % (missing, lines)
    return lines


def handshakes(node, result):
    return node.metric_sum("regmesh_tls_handshakes_total", result=result)


# ---------------------------------------------------------------------------
# 1. skopeo

def test_skopeo_pulls_over_verified_tls(tls_node, ca, skopeo, direct_copies, hub, catalog,
                                        test_dir):
    img = catalog.multi
    ref = "%s/%s" % (tls_node.host_port, img.ref())
    want = direct_copies(hub, img.ref())

    # verification is on: without the CA the same pull fails on the certificate
    cp = skopeo.copy(ref, os.path.join(test_dir, "nocerts"), tls_verify=True, check=False)
    assert not isinstance(cp, clients.CopyResult), "skopeo trusted a private CA it was not given"
    assert has_cert_error(_out(cp)), "expected a certificate error, got:\n%s" % _out(cp)[-2000:]

    certs = cert_dir_with(test_dir, ca.crt)
    mark = tls_node.log_mark()
    res = skopeo.copy(ref, os.path.join(test_dir, "copy"), tls_verify=True, cert_dir=certs)
    assert res.verify() == [], "files not matching their digests"
    assert res.summary() == want.summary(), (res.summary(), want.summary())
    assert res.digest == img.digest
    _blob_gets(tls_node, mark, [b.digest for b in img.own_blobs()], status=(200,))


# ---------------------------------------------------------------------------
# 2. containerd / ctr

@pytest.fixture
def ctr_ns(containerd):
    ns = "rmtest-tls-" + uuid.uuid4().hex[:8]
    yield ns
    containerd.remove_namespace(ns)


@pytest.mark.clients
def test_ctr_pulls_over_verified_tls(containerd, ctr_ns, tls_node, ca, catalog, test_dir):
    alpine = "docker.io/library/alpine:3.19"
    bad = os.path.join(test_dir, "hosts-noca")
    clients.write_hosts_toml(bad, "docker.io", tls_node.url)
    cp = containerd.pull(alpine, bad, ctr_ns, check=False)
    assert cp.returncode != 0, "ctr trusted a private CA it was not given"
    assert has_cert_error(_out(cp)), "expected a certificate error, got:\n%s" % _out(cp)[-2000:]

    hosts = os.path.join(test_dir, "hosts")
    # docker.io mirrored through the https host; and the node's own
    # host:port as a registry with an https server, both verified with ca =
    clients.write_hosts_toml(hosts, "docker.io", tls_node.url, ca=ca.crt)
    clients.write_hosts_toml(hosts, tls_node.host_port, tls_node.url, server=tls_node.url,
                             ca=ca.crt)
    mark = tls_node.log_mark()
    containerd.pull(alpine, hosts, ctr_ns)
    assert containerd.image_digest(alpine, ctr_ns) == catalog.alpine.digest
    direct = "%s/%s" % (tls_node.host_port, catalog.nested.ref())
    containerd.pull(direct, hosts, ctr_ns)
    assert containerd.image_digest(direct, ctr_ns) == catalog.nested.digest
    amd = catalog.alpine.child("amd64")
    _blob_gets(tls_node, mark, [b.digest for b in amd.own_blobs()] +
               [b.digest for b in catalog.nested.own_blobs()])


# ---------------------------------------------------------------------------
# 3. dockerd, in a network namespace (see the module doc for why)

NS_ADDR = "10.201.9.2"


class NsTLSNode(regmesh.Node):
    """A regmesh node run inside a network namespace, listening with TLS on
    an address of that namespace; the test reaches it from a thread that
    entered the namespace."""

    def __init__(self, binary, workdir, upstreams, ns, host, **kw):
        self.ns = ns
        self.host = host
        super().__init__(binary, workdir, upstreams, **kw)

    @property
    def host_port(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def url(self):
        return "https://" + self.host_port

    def request(self, method, path, headers=None, body=None, timeout=30.0):
        ns, cafile = self.ns, self.tls["ca"]

        class Conn(http.client.HTTPSConnection):
            def connect(self):
                sock = ns.connect(self.host, self.port, self.timeout)
                self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        conn = Conn(self.host, self.port, timeout=timeout,
                    context=ssl.create_default_context(cafile=cafile))
        return netns._do_request(conn, method, path, headers, body, True)

    def metrics(self):
        r = self.request("GET", "/metrics", timeout=10)
        assert r.status == 200, r
        return regmesh.parse_metrics(r.body.decode("utf-8", "replace"))

    def start(self, timeout=20.0):
        with open(self.log_path, "ab") as f:
            f.write(("--- rmtest: start %s\n" % time.strftime("%H:%M:%S")).encode())
        self.proc = util.Proc(self.ns.argv([self.binary, "serve", "--config", self.config_path]),
                              log_path=self.log_path, env=self.env, cwd=self.dir,
                              name="regmesh-ns").start()

        def healthy():
            if not self.proc.alive():
                raise AssertionError("regmesh exited with %s during start; log:\n%s" % (
                    self.proc.returncode(), util.tail(self.log_path)))
            return self.request("GET", "/healthz", timeout=2).status == 200
        util.wait_until(healthy, timeout, what="regmesh /healthz on %s in %s" % (
            self.url, self.ns.name))
        return self


@pytest.fixture
def dockerd_lab(containerd, hub, ca, regmesh_binary, test_dir, request):
    """Namespace with NS_ADDR on its lo, a registry serving the hub's
    storage, and a TLS regmesh node on NS_ADDR in front of it."""
    miss = clients.missing("dockerd", "unshare", "nsenter") + netns.missing()
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))
    netns.sweep_orphans()
    ns = netns.Netns(netns.unique_prefix() + "u")
    started = []
    try:
        ns.create()
        ns.ip("addr", "add", NS_ADDR + "/32", "dev", "lo")
        reg = netns.NsRegistry(test_dir, "hubns", ns, storage=hub.storage).start()
        started.append(reg)
        crt, key = ca.issue("dockerns-%s" % uuid.uuid4().hex[:6], ips=(NS_ADDR,))
        node = NsTLSNode(regmesh_binary, os.path.join(test_dir, "nsnode"),
                         [regmesh.Upstream(HUB_HOST, reg.url, default=True)], ns, NS_ADDR,
                         tls={"cert": crt, "key": key, "ca": ca.crt},
                         extra_yaml="allow: [127.0.0.0/8, 10.0.0.0/8]\n")
        started.append(node)
        node.start()
        yield ns, node
    finally:
        failed = getattr(request.node, "rep_call", None)
        for p in reversed(started):
            if isinstance(p, regmesh.Node) and failed is not None and failed.failed:
                print("\n--- regmesh log %s ---\n%s" % (p.log_path, util.tail(p.log_path, 60)))
            p.stop()
        ns.delete()


@pytest.mark.clients
def test_dockerd_pulls_over_verified_tls(dockerd_lab, containerd, ca, catalog, test_dir):
    ns, node = dockerd_lab
    certs_d = os.path.join(test_dir, "certs.d")
    os.makedirs(certs_d)
    dk = clients.Dockerd(os.path.join(test_dir, "dockerd"), containerd, [node.url],
                         "rmtest-dk-" + uuid.uuid4().hex[:8], certs_d=certs_d, ns=ns,
                         no_proxy=[NS_ADDR])
    try:
        dk.start()
        img = catalog.multi
        name = "%s/%s" % (node.host_port, img.repo)
        # certs.d has nothing for the node yet: a secure registry, verified
        ok, msgs = dk.pull(name, img.tag)
        assert not ok, "dockerd pulled from a registry whose CA it was not given"
        assert has_cert_error(repr(msgs)), "expected a certificate error: %r" % msgs[-5:]

        hd = os.path.join(certs_d, node.host_port)
        os.makedirs(hd)
        shutil.copy(ca.crt, os.path.join(hd, "ca.crt"))
        mark = node.log_mark()
        # through registry-mirrors (https://NS_ADDR:port), docker.io names
        ok, msgs = dk.pull("alpine", "3.19")
        assert ok, "docker pull alpine:3.19 via the TLS mirror failed: %r" % msgs[-5:]
        st, info = dk.inspect("alpine:3.19")
        assert st == 200, info
        assert "alpine@" + catalog.alpine.digest in info["RepoDigests"], info["RepoDigests"]
        amd = catalog.alpine.child("amd64")
        _blob_gets(node, mark, [b.digest for b in amd.own_blobs()])
        # the node named directly: docker pull <host:port>/<name>:<tag>
        ok, msgs = dk.pull(name, img.tag)
        assert ok, "docker pull %s:%s failed: %r" % (name, img.tag, msgs[-5:])
        st, info = dk.inspect("%s:%s" % (name, img.tag))
        assert st == 200, info
        assert "%s@%s" % (name, img.digest) in info["RepoDigests"], info["RepoDigests"]
        _blob_gets(node, mark, [b.digest for b in img.own_blobs()])
    finally:
        dk.stop()


# ---------------------------------------------------------------------------
# 4. podman

@pytest.fixture
def make_podman(test_dir):
    miss = clients.missing("podman", "unshare")
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))
    made = []

    def make(mirror):
        p = clients.Podman(os.path.join(test_dir, "podman%d" % len(made)),
                           clients.podman_mirror_conf(GHCR_HOST, GHCR_HOST, mirror,
                                                      insecure=False))
        made.append(p)
        return p
    yield make
    for p in made:
        p.cleanup()


@pytest.mark.clients
def test_podman_pulls_over_verified_tls(make_podman, tls_node, ca, catalog, test_dir):
    pm = make_podman("%s/%s" % (tls_node.host_port, GHCR_HOST))
    ref = "ghcr.io/" + catalog.tool.ref()
    cp = pm.pull(ref, tls_verify=True, check=False)
    assert cp.returncode != 0, "podman trusted a private CA it was not given"
    assert has_cert_error(_out(cp)), "expected a certificate error, got:\n%s" % _out(cp)[-2000:]

    certs = cert_dir_with(test_dir, ca.crt)
    mark = tls_node.log_mark()
    pm.pull(ref, tls_verify=True, cert_dir=certs)
    assert pm.image_digest(ref) == catalog.tool.digest
    lines = _blob_gets(tls_node, mark, [b.digest for b in catalog.tool.own_blobs()])
    assert all(a["path"].startswith("/v2/ghcr.io/org/tool/") for a in lines), lines


# ---------------------------------------------------------------------------
# 5. protocol versions and ALPN (openssl s_client)

def s_client(host_port, *args, timeout=20):
    if not OPENSSL:
        pytest.skip("openssl not installed")
    cp = util.run([OPENSSL, "s_client", "-connect", host_port] + list(args),
                  timeout=timeout, check=False, input=b"")
    return cp.returncode, _out(cp)


OLD = ["-cipher", "DEFAULT@SECLEVEL=0"]   # or Debian's client will not even offer 1.0/1.1


def test_protocol_versions_and_alpn(tls_node, ca, make_node, hub, server_cert):
    hp = tls_node.host_port
    failed0 = handshakes(tls_node, "failed")
    for flag in ("-tls1", "-tls1_1"):
        rc, out = s_client(hp, flag, *OLD, "-CAfile", ca.crt)
        assert rc != 0, "%s handshake succeeded:\n%s" % (flag, out)
        # the server's alert, not the client refusing to try
        assert "alert protocol version" in out, "%s: not the server's protocol_version " \
            "alert:\n%s" % (flag, out)
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        rc, out = s_client(hp, flag, "-CAfile", ca.crt, "-verify_return_error",
                           "-alpn", "http/1.1")
        assert rc == 0, "%s handshake failed:\n%s" % (flag, out)
        assert "Protocol  : %s" % name in out or "New, %s" % name in out, out
        assert "Verify return code: 0 (ok)" in out, out
        assert "ALPN protocol: http/1.1" in out, "%s: no ALPN http/1.1:\n%s" % (flag, out)
        # what curl and Go offer: h2 first
        rc, out = s_client(hp, flag, "-CAfile", ca.crt, "-verify_return_error",
                           "-alpn", "h2,http/1.1")
        assert rc == 0 and "ALPN protocol: http/1.1" in out, (
            "%s offering h2,http/1.1: want a handshake choosing http/1.1:\n%s" % (flag, out))
    failed1 = handshakes(tls_node, "failed")
    assert failed1 >= failed0 + 2, "handshakes_total{result=failed} %s -> %s after two " \
        "refused handshakes" % (failed0, failed1)
    assert handshakes(tls_node, "ok") >= 4

    # plain HTTP sent to the TLS port: an HTTP 400, not a hang or a TLS alert
    raw, _ = checks.raw_exchange(tls_node.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
                                 timeout=10)
    assert raw.startswith(b"HTTP/1.") and raw.split(b" ", 2)[1] == b"400", raw[:300]

    # min_version "1.3" refuses 1.2
    crt, key = server_cert
    n13 = make_node([hub_upstream(hub)], name="tls13",
                    tls={"cert": crt, "key": key, "ca": ca.crt, "min_version": "1.3"})
    rc, out = s_client(n13.host_port, "-tls1_2", "-CAfile", ca.crt)
    assert rc != 0 and "alert protocol version" in out, "1.2 against min_version 1.3:\n" + out
    rc, out = s_client(n13.host_port, "-tls1_3", "-CAfile", ca.crt, "-verify_return_error")
    assert rc == 0, out


# ---------------------------------------------------------------------------
# 6. certificate swap under a running transfer

# Live cert/key files are padded to a fixed size (PEM readers ignore what
# follows the block) and their mtime is put back after each rewrite, so a
# rewrite plus SIGHUP is seen through the signal even by a file watch that
# compares (inode, size, mtime). The third certificate is written plainly,
# for the watch to find.
PAD_CERT, PAD_KEY = 4096, 2048


def _write_padded(path, data, size, keep_mtime=True):
    assert len(data) <= size, (path, len(data))
    st = os.stat(path) if (keep_mtime and os.path.exists(path)) else None
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.write(data + b"\n" * (size - len(data)))
        f.truncate()
    if st is not None:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _peer_serial(port, cafile, timeout=10):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((util.LOCALHOST, port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=util.LOCALHOST) as t:
            return int(t.getpeercert()["serialNumber"], 16)


class SlowReader(threading.Thread):
    """GET a blob over one TLS connection, reading slowly until released."""

    def __init__(self, port, path, cafile, slow_chunk=256 * 1024, pause=0.1):
        super().__init__(daemon=True, name="slow-reader")
        self.port, self.path, self.cafile = port, path, cafile
        self.slow_chunk, self.pause = slow_chunk, pause
        self.release = threading.Event()
        self.n = 0
        self.status = None
        self.serial = None
        self.digest = None
        self.error = None

    def run(self):
        ctx = ssl.create_default_context(cafile=self.cafile)
        conn = http.client.HTTPSConnection(util.LOCALHOST, self.port, timeout=120, context=ctx)
        h = hashlib.sha256()
        try:
            conn.request("GET", self.path)
            resp = conn.getresponse()
            self.status = resp.status
            self.serial = int(conn.sock.getpeercert()["serialNumber"], 16)
            while True:
                fast = self.release.is_set()
                data = resp.read(1 << 20 if fast else self.slow_chunk)
                if not data:
                    break
                h.update(data)
                self.n += len(data)
                if not fast:
                    time.sleep(self.pause)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = repr(e)
        finally:
            self.digest = "sha256:" + h.hexdigest()
            conn.close()


def test_certificate_swap_keeps_transfers_and_refuses_bad_files(make_node, make_registry, ca,
                                                                 test_dir):
    mib = int(os.environ.get("RMTEST_TLS_BIG_MIB", "256"))
    store = images.ImageStore(os.path.join(test_dir, "blobs"))
    blob = store.put_bytes(os.urandom(mib << 20), "application/octet-stream")
    reg = make_registry("bigtls")
    images.RegistryClient(reg.url).upload_blob("big/tls", blob)
    os.unlink(blob.path)

    live = os.path.join(test_dir, "live")
    os.makedirs(live)
    live_crt, live_key = os.path.join(live, "tls.crt"), os.path.join(live, "tls.key")
    c1, k1 = ca.issue("swap1-" + uuid.uuid4().hex[:6])
    c2, k2 = ca.issue("swap2-" + uuid.uuid4().hex[:6])
    c3, k3 = ca.issue("swap3-" + uuid.uuid4().hex[:6])
    s1, s2, s3 = cert_serial(c1), cert_serial(c2), cert_serial(c3)
    assert len({s1, s2, s3}) == 3
    _write_padded(live_crt, _read(c1), PAD_CERT, keep_mtime=False)
    _write_padded(live_key, _read(k1), PAD_KEY, keep_mtime=False)
    os.chmod(live_key, 0o600)

    node = make_node([regmesh.Upstream(HUB_HOST, reg.url, default=True)],
                     tls={"cert": live_crt, "key": live_key, "ca": ca.crt})
    path = "/v2/big/tls/blobs/" + blob.digest
    st, digest, n = stream_get(node.url, path, timeout=120)
    assert (st, digest, n) == (200, blob.digest, blob.size), "warming the cache"
    util.wait_until(lambda: node.has_blob(blob.digest), 30, what="blob cached")
    assert _peer_serial(node.port, ca.crt) == s1
    bytes0 = (node.metric_sum("regmesh_tls_body_bytes_total", path="userspace") +
              node.metric_sum("regmesh_tls_body_bytes_total", path="ktls"))

    reader = SlowReader(node.port, path, ca.crt)
    reader.start()
    try:
        util.wait_until(lambda: reader.n >= 4 << 20 or reader.error, 30,
                        what="slow transfer under way")
        assert reader.error is None, reader.error
        assert reader.status == 200 and reader.serial == s1

        # 1. cert + key rewritten in place, SIGHUP: new connections get cert 2
        _write_padded(live_key, _read(k2), PAD_KEY)
        _write_padded(live_crt, _read(c2), PAD_CERT)
        os.kill(node.pid, signal.SIGHUP)
        seen = []
        util.wait_until(lambda: seen.append(_peer_serial(node.port, ca.crt)) or seen[-1] == s2,
                        10, interval=0.2, what="new connections served the new certificate")

        # 2. a broken certificate file + SIGHUP: refused, cert 2 still served
        mark = node.log_mark()
        _write_padded(live_crt, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                      b"-----END CERTIFICATE-----\n", PAD_CERT)
        os.kill(node.pid, signal.SIGHUP)
        util.wait_until(lambda: "reload refused" in node.log_text()[mark:], 10,
                        what='"reload refused" in the log')
        time.sleep(0.5)
        assert _peer_serial(node.port, ca.crt) == s2, "the broken file replaced the cert"
        assert node.alive()

        # 3. a third cert written without a signal: the file watch takes it
        _write_padded(live_key, _read(k3), PAD_KEY, keep_mtime=False)
        _write_padded(live_crt, _read(c3), PAD_CERT, keep_mtime=False)
        util.wait_until(lambda: seen.append(_peer_serial(node.port, ca.crt)) or seen[-1] == s3,
                        15, interval=0.25, what="the file watch to load the third certificate")
        assert reader.is_alive() and reader.error is None, (
            "the slow transfer ended during the swaps: %d of %d bytes, %s" % (
                reader.n, blob.size, reader.error))
    finally:
        reader.release.set()
        reader.join(120)
    assert not reader.is_alive(), "slow transfer did not finish"
    assert reader.error is None, "slow transfer: %s after %d bytes" % (reader.error, reader.n)
    assert (reader.n, reader.digest) == (blob.size, blob.digest), (
        "slow transfer across the swaps: %d bytes hashing to %s, want %d / %s" % (
            reader.n, reader.digest, blob.size, blob.digest))
    bytes1 = (node.metric_sum("regmesh_tls_body_bytes_total", path="userspace") +
              node.metric_sum("regmesh_tls_body_bytes_total", path="ktls"))
    assert bytes1 - bytes0 >= blob.size, "regmesh_tls_body_bytes_total grew by %d, the " \
        "transfer sent %d" % (bytes1 - bytes0, blob.size)


# ---------------------------------------------------------------------------
# 7. fleet peers over mutual TLS

def _peer_attempt(node, cafile, cert=None, key=None, timeout=10):
    """GET /v2/ on node's peer listener presenting (cert, key) or nothing.
    Returns ("http", status) or ("refused", error text)."""
    ctx = ssl.create_default_context(cafile=cafile)
    if cert:
        ctx.load_cert_chain(cert, key)
    conn = http.client.HTTPSConnection(util.LOCALHOST, node.peer_port, timeout=timeout,
                                       context=ctx)
    try:
        conn.request("GET", "/v2/")
        resp = conn.getresponse()
        resp.read()
        return "http", resp.status
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, socket.timeout,
            OSError) as e:
        return "refused", repr(e)
    finally:
        conn.close()


def _tolerant_pull(base, img):
    """Every blob of img (amd64 child for an index) through base: {digest:
    'ok' | 'bad:<what>'}; a served body must be exact."""
    out = {}
    _, blobs = expected_content(img)
    for d in blobs:
        try:
            st, got, n = checks.stream_get(base, "/v2/%s/blobs/%s" % (img.repo, d), timeout=60)
        except OSError as e:
            out[d] = "bad:%r" % e
            continue
        if st == 200:
            assert got == d, "%s served %d bytes hashing to %s for %s" % (base, n, got, d)
            out[d] = "ok"
        else:
            out[d] = "bad:status %s" % st
    return out


def test_fleet_peers_use_mutual_tls(make_fleet, hub, catalog, regmesh_binary, test_dir):
    fca = CA(regmesh_binary, os.path.join(test_dir, "pki"), "fleet-ca")
    other = CA(regmesh_binary, os.path.join(test_dir, "pki"), "other-ca")
    opts = {}
    for i in range(3):
        crt, key = fca.issue("n%d" % i, ips=(util.LOCALHOST,))
        opts[i] = {"cluster": {"tls": {"cert": crt, "key": key, "ca": fca.crt}}}
    fl = make_fleet(hub, 3, node_opts=opts, probe_interval="500ms", probe_timeout="250ms")
    assert all(nd.peer_listen_url.startswith("https://") for nd in fl.nodes)

    imgs = [catalog.multi, catalog.nested]
    want = collections.Counter()
    for img in imgs:
        want.update(expected_content(img)[1])
    ok0 = sum(handshakes(nd, "ok") for nd in fl.nodes)
    mark = hub.log.mark()
    for nd in fl.nodes:
        for img in imgs:
            checks.pull_via_http(nd.url, img)
    gets = hub.log.gets(mark)
    blob_counts = collections.Counter(e.path.rsplit("/", 1)[1] for e in gets
                                      if "/blobs/" in e.path)
    assert blob_counts == want, (
        "upstream blob GETs for the fleet (want each once): %s" % {
            d[:19]: blob_counts.get(d, 0) for d in set(want) | set(blob_counts)
            if blob_counts.get(d, 0) != want.get(d, 0)})
    peer_hits = sum(nd.metric_sum("regmesh_hits_total", source="peer") for nd in fl.nodes)
    assert peer_hits > 0, "no peer hits: the fleet did not share through its peer listeners"
    ok1 = sum(handshakes(nd, "ok") for nd in fl.nodes)
    assert ok1 > ok0, "no successful peer TLS handshake (%s -> %s)" % (ok0, ok1)

    # the peer listener: a fleet cert gets HTTP; another CA's cert, or none, does not
    n0 = fl.nodes[0]
    c1, k1 = opts[1]["cluster"]["tls"]["cert"], opts[1]["cluster"]["tls"]["key"]
    kind, what = _peer_attempt(n0, fca.crt, c1, k1)
    assert kind == "http", "a fleet certificate was refused at n0's peer listener: %s" % what
    fcrt, fkey = other.issue("n3", ips=(util.LOCALHOST,))
    f0 = handshakes(n0, "failed")
    kind, what = _peer_attempt(n0, fca.crt, fcrt, fkey)
    assert kind == "refused", "n0's peer listener answered a foreign certificate: %s" % (what,)
    kind, what = _peer_attempt(n0, fca.crt)
    assert kind == "refused", "n0's peer listener answered a client without a cert: %s" % (what,)
    f1 = handshakes(n0, "failed")
    assert f1 >= f0 + 2, "n0 failed handshakes %s -> %s after two refused clients" % (f0, f1)

    # a 4th node with the foreign certificate joins the gossip (same secret)
    cl = {"probe_interval": "500ms", "probe_timeout": "250ms", "push_pull_interval": "2s",
          "zone": "zone-1", "weight": 1, "secret": fl.secret,
          "join": [nd.gossip_addr for nd in fl.nodes],
          "tls": {"cert": fcrt, "key": fkey, "ca": other.crt}}
    n3 = FleetNode(regmesh_binary, os.path.join(fl.dir, "n3"),
                   [regmesh.Upstream(HUB_HOST, hub.url, default=True, tag_ttl="60s")], "n3", cl)
    fl.nodes.append(n3)          # stopped with the fleet at teardown
    n3.start()
    fl.wait_converged(4, timeout=30)

    # blobs n3 must ask a peer for, and blobs the others must ask n3 for
    # not catalog.dotted: its name starts like an unconfigured registry host,
    # which the main listener answers NAME_UNKNOWN by design (test_skopeo)
    cands = [catalog.index, catalog.alpine, catalog.tagged, catalog.evict("a"), catalog.evict("b"),
             catalog.corrupt]
    from_peer, from_n3 = None, None
    for img in cands:
        firsts = {d: fl.owners(n3, digest=d)[0] for d in expected_content(img)[1]}
        if from_peer is None and any(o != "n3" for o in firsts.values()):
            from_peer = img
        if from_n3 is None and any(o == "n3" for o in firsts.values()):
            from_n3 = img
    assert from_peer is not None and from_n3 is not None, "no suitable images among %s" % cands

    failed_before = sum(handshakes(nd, "failed") for nd in fl.nodes[:3])
    hits3 = n3.metric_sum("regmesh_hits_total", source="peer")
    res3 = _tolerant_pull(n3.url, from_peer)     # goes upstream itself, or errors
    failed_after = sum(handshakes(nd, "failed") for nd in fl.nodes[:3])
    assert failed_after > failed_before, (
        "n3 (foreign cert) fetched %s (%s) and no fleet node counted a failed handshake "
        "(%s -> %s)" % (from_peer.repo, res3, failed_before, failed_after))
    assert n3.metric_sum("regmesh_hits_total", source="peer") == hits3, \
        "n3 got a blob from a peer through a foreign certificate"

    # a fleet node whose blob owner is n3 still serves exact bytes
    f3 = handshakes(n3, "failed")
    res0 = _tolerant_pull(n0.url, from_n3)
    bad = {d: v for d, v in res0.items() if v != "ok"}
    assert not bad, "n0 could not serve %s while its owner n3 is unreachable over TLS: %s" % (
        from_n3.repo, bad)
    assert handshakes(n3, "failed") > f3, "n0 never tried n3's peer listener"
