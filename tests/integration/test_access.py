"""Who may use a node (issue 8): `allow:` address lists, `auth.htpasswd`
client passwords, `private: true` upstreams, the peer port's signatures and
`admin_listen`.

What is asserted:
  * a client in a network namespace outside `allow:` gets 403 DENIED with
    `Connection: close` (counted in regmesh_denied_total{why="allow"}, one
    per request, and nothing is asked of the upstream), also for content
    the node has cached, and so does loopback when `allow:` does not list
    it; a client inside pulls an image (manifest and blobs, digests
    checked; over HTTP and with skopeo);
  * without `allow:`, a node bound beyond loopback warns at start for each
    such listener (and not for a loopback one) and answers a client from
    another namespace 403 on each of them, while loopback pulls;
  * IPv6: `listen: "[::1]:PORT"` with allow ["::1"] serves a pull over
    [::1]; with allow ["10.0.0.0/8"] the same client gets 403;
  * htpasswd: skopeo `--src-creds` and `ctr images pull --user` pull
    through; a wrong password, an unknown user and none get 401 with
    `WWW-Authenticate: Basic realm="regmesh"` (counted why="auth");
    /healthz and /metrics need none; a rewritten file takes effect within
    a few seconds (old password refused, new one accepted), SIGHUP reloads
    a file whose stat looks unchanged, and a file with a non-bcrypt hash is
    refused on reload (the previous passwords stay);
  * private upstream: a blob pulled through repository A is 404
    BLOB_UNKNOWN (HEAD and GET) under a repository the upstream does not
    have it in, although the node has the bytes, after the node asked the
    upstream with a HEAD for that repository; without credentials 401;
    through A again 200 with the right bytes and no upstream request
    (confirmation cached per name); under a repository the upstream does
    have it in, 200 from the cache after one HEAD;
  * the peer port with a secret: an unsigned, a badly signed, a replayed
    (t = now - 10 min) and a sender-swapped request for a blob the node
    does not have are 401, regmesh_denied_total{why="peer_auth"} grows by
    4 and the upstream sees no request for the digest; a correctly signed
    one (signer reimplemented from node/peerauth.c) is 200 with the bytes;
  * `X-Regmesh-Hop` on a client port is ignored: a non-owner still gets a
    cold blob from its owner (which fetched it upstream, once), exactly as
    without the header;
  * with `admin_listen`, /metrics, /healthz, /readyz and /cluster/* are 404
    on the public listener and 200 on the admin one (which serves nothing
    else).

The namespace tests are skipped only when `ip`/`iptables` are absent or we
are not root; the IPv6 test when there is no ::1 here.
"""

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import time
import uuid

import pytest

from rmtest import clients, images, netns, regmesh, util
from rmtest.checks import GHCR_HOST, HUB_HOST, hub_upstream, stream_get
from rmtest.fleet import FleetNode, make_fleet, make_secret, parse_members  # noqa: F401
from rmtest.netns import netns_lab  # noqa: F401 (fixture)

USER = "builder"
PASSWORD = "first-pw-1"
REALM = 'Basic realm="regmesh"'
# node/peerauth.c: key = SHA-256(label including its NUL, secret bytes)
PEER_LABEL = b"regmesh peer http v1\x00"
RELOAD_MAX_S = 6.0          # the file is stat'ed every 2 s


# ---------------------------------------------------------------------------
# helpers

def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def write_htpasswd(path, users):
    """`htpasswd -nbB user pass` for each user, written in place (same inode)."""
    lines = []
    for user, pw in users.items():
        cp = util.run(["htpasswd", "-nbB", user, pw], timeout=30)
        lines.append(cp.stdout.decode().strip())
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def pull(get, get_stream, img, repo=None, headers=None):
    """checks.pull_via_http with the transport given: get(method, path,
    headers=) -> Response, get_stream(path, headers=) -> (status, digest,
    n). Manifest by tag, children, every blob; exact bytes asserted."""
    repo = repo or img.repo
    hdrs = dict(headers or {})
    mh = dict(hdrs, Accept=images.ACCEPT_ALL)
    r = get("GET", "/v2/%s/manifests/%s" % (repo, img.tag), headers=mh)
    assert r.status == 200, "manifest %s:%s: %r" % (repo, img.tag, r)
    assert r.body == img.manifest, "manifest bytes differ for %s:%s" % (repo, img.tag)
    blobs = list(img.own_blobs())
    for c in img.children:
        r = get("GET", "/v2/%s/manifests/%s" % (repo, c.digest), headers=mh)
        assert r.status == 200 and r.body == c.manifest, "child %s: %r" % (c.digest, r)
        blobs += c.own_blobs()
    for b in blobs:
        st, digest, n = get_stream("/v2/%s/blobs/%s" % (repo, b.digest), headers=hdrs)
        assert st == 200, "blob %s: status %s" % (b.digest, st)
        assert digest == b.digest and n == b.size, "blob %s: %d bytes hashing to %s" % (
            b.digest, n, digest)
    return [b.digest for b in blobs]


def assert_denied(r, what):
    assert r.status == 403, "%s: want 403 DENIED, got %r" % (what, r)
    assert "DENIED" in r.error_codes(), "%s: body %r" % (what, r.body)
    assert (r.header("Connection") or "").lower() == "close", (
        "%s: a 403 must say Connection: close: %r" % (what, r.headers))


def assert_unauthorized(r, what):
    assert r.status == 401, "%s: want 401, got %r" % (what, r)
    assert r.header_all("WWW-Authenticate") == [REALM], (
        "%s: WWW-Authenticate %r" % (what, r.header_all("WWW-Authenticate")))


def upstream_requests_for(reg, digest, mark):
    return [e for e in reg.log.entries(mark) if digest in e.path]


class AccessNode(regmesh.Node):
    """regmesh.Node with the access keys, bound where the test says and
    optionally run inside a network namespace.

    listen_host: the main listener's host ("0.0.0.0", "[::1]", an IP);
    connect_host: where self.url points (default: listen_host, 127.0.0.1
    for a wildcard); ns: run and talk inside it; upstream_listen: {upstream
    host: listen host} for per-upstream listeners (their .listen=True);
    allow: list or None; htpasswd: path or None; admin: add admin_listen
    on 127.0.0.1. `control` (set after construction if needed) is how the
    harness asks /healthz and /metrics; `ready(resp)` says the node is up."""

    def __init__(self, binary, workdir, upstreams, listen_host=util.LOCALHOST,
                 connect_host=None, ns=None, upstream_listen=None, allow=None,
                 htpasswd=None, admin=False, ready=None, **kw):
        self.listen_host = listen_host
        self.connect_host = connect_host or (
            util.LOCALHOST if listen_host == "0.0.0.0" else listen_host)
        self.ns = ns
        self.upstream_listen = upstream_listen or {}
        self.allow = allow
        self.htpasswd = htpasswd
        self.admin_port = util.free_port() if admin else None
        self.ready = ready or (lambda r: r.status == 200)
        self.control = None
        super().__init__(binary, workdir, upstreams, **kw)

    @property
    def host_port(self):
        return "%s:%d" % (self.connect_host, self.port)

    @property
    def listen_addr(self):
        return "%s:%d" % (self.listen_host, self.port)

    def upstream_addr(self, host):
        u = self.upstreams[host]
        return "%s:%d" % (self.upstream_listen.get(host, util.LOCALHOST), u.port)

    @property
    def admin_url(self):
        return "http://%s:%d" % (util.LOCALHOST, self.admin_port)

    def config_text(self):
        lines = super().config_text().split("\n")
        assert lines[0].startswith("listen: "), lines[0]
        lines[0] = "listen: %s" % json.dumps(self.listen_addr)
        for host, u in self.upstreams.items():
            if u.port:
                old = "    listen: %s:%d" % (util.LOCALHOST, u.port)
                lines = [("    listen: %s" % json.dumps(self.upstream_addr(host)))
                         if ln == old else ln for ln in lines]
        text = "\n".join(lines).rstrip("\n") + "\n"
        if self.allow is not None:
            text += "allow:\n" + "".join("  - %s\n" % json.dumps(a) for a in self.allow)
        if self.htpasswd:
            text += "auth:\n  htpasswd: %s\n" % json.dumps(self.htpasswd)
        if self.admin_port:
            text += "admin_listen: %s:%d\n" % (util.LOCALHOST, self.admin_port)
        return text

    def http(self, method, path, **kw):
        if self.ns is not None:
            return self.ns.request(self.url, method, path, **kw)
        return util.request(self.url, method, path, **kw)

    def request(self, method, path, **kw):
        return self.http(method, path, **kw)

    def stream(self, path, headers=None):
        if self.ns is not None:
            return self.ns.stream_get(self.url, path, headers=headers)
        return stream_get(self.url, path, headers=headers)

    def ctl(self, method, path, **kw):
        if self.control:
            return self.control(method, path, **kw)
        if self.admin_port:
            return util.request(self.admin_url, method, path, **kw)
        return self.http(method, path, **kw)

    def metrics(self):
        r = self.ctl("GET", "/metrics", timeout=10)
        assert r.status == 200, "/metrics: %r" % r
        return regmesh.parse_metrics(r.body.decode("utf-8", "replace"))

    def start(self, timeout=20.0):
        assert self.proc is None or not self.proc.alive(), "already running"
        with open(self.log_path, "ab") as f:
            f.write(("--- rmtest: start %s\n" % time.strftime("%H:%M:%S")).encode())
        argv = [self.binary, "serve", "--config", self.config_path]
        if self.ns is not None:
            argv = self.ns.argv(argv)
        self.proc = util.Proc(argv, log_path=self.log_path, env=self.env, cwd=self.dir,
                              name="regmesh").start()

        def up():
            if not self.proc.alive():
                raise AssertionError("regmesh exited with %s during start; log:\n%s" % (
                    self.proc.returncode(), util.tail(self.log_path)))
            return self.ready(self.ctl("GET", "/healthz", timeout=2))
        try:
            util.wait_until(up, timeout, what="regmesh ready on %s" % self.url)
        except TimeoutError as e:
            raise AssertionError("%s\nlog:\n%s" % (e, util.tail(self.log_path)))
        return self


class AdminFleetNode(FleetNode):
    """A FleetNode with `admin_listen` on 127.0.0.1: the harness's own
    /healthz, /metrics and /cluster/* requests go there."""

    ADMIN_PATHS = ("/metrics", "/healthz", "/readyz", "/cluster/")

    def __init__(self, *a, **kw):
        self.admin_port = util.free_port()
        super().__init__(*a, **kw)

    @property
    def admin_url(self):
        return "http://%s:%d" % (util.LOCALHOST, self.admin_port)

    def config_text(self):
        return super().config_text() + "admin_listen: %s:%d\n" % (
            util.LOCALHOST, self.admin_port)

    def http(self, method, path, **kw):
        if path.startswith(self.ADMIN_PATHS):
            return util.request(self.admin_url, method, path, **kw)
        return util.request(self.url, method, path, **kw)


@pytest.fixture
def procs(request):
    """Nodes a test builds itself: stopped by PID at teardown, their log
    tails printed when the test failed."""
    started = []
    yield started
    rep = getattr(request.node, "rep_call", None)
    regmesh.stop_and_report(started, rep is not None and rep.failed)


@pytest.fixture
def make_access_node(regmesh_binary, test_dir, procs):
    def make(upstreams, start=True, name=None, **kw):
        name = name or "node%d" % len(procs)
        n = AccessNode(regmesh_binary, os.path.join(test_dir, name), upstreams, **kw)
        procs.append(n)
        if start:
            n.start()
        return n
    return make


@pytest.fixture
def htpasswd_file(test_dir):
    path = os.path.join(test_dir, "clients.htpasswd")
    write_htpasswd(path, {USER: PASSWORD, "other": "other-pw"})
    return path


def ns_registry(lab, make_registry, test_dir, imgs):
    """A registry inside the lab's router namespace serving imgs."""
    seed = make_registry("acc-seed", imgs)
    seed.stop()
    reg = netns.NsRegistry(os.path.join(test_dir, "nsreg"), "acc", lab.u,
                           storage=seed.storage).start()
    lab.on_cleanup(reg.stop)
    return reg


# ---------------------------------------------------------------------------
# 1. allow: from network namespaces

def test_allow_list_from_namespaces(netns_lab, make_access_node, make_registry, catalog,
                                    test_dir):
    lab = netns_lab
    img = catalog.nested
    reg = ns_registry(lab, make_registry, test_dir, [img])
    # the node runs in the router namespace, bound to every address there:
    # side a reaches it as 10.201.1.1, side b as 10.201.2.1
    node = make_access_node([regmesh.Upstream(HUB_HOST, reg.url, default=True)],
                            start=False, listen_host="0.0.0.0", ns=lab.u,
                            allow=["192.0.2.0/24", "10.201.1.0/24"])
    lab.on_cleanup(node.stop)
    url_a = "http://%s:%d" % (lab.router_ip["a"], node.port)
    url_b = "http://%s:%d" % (lab.router_ip["b"], node.port)
    node.control = lambda m, p, **kw: lab.a.request(url_a, m, p, **kw)
    node.start()

    def get_a(method, path, **kw):
        return lab.a.request(url_a, method, path, **kw)
    pulled = pull(get_a, lambda p, headers=None: lab.a.stream_get(url_a, p, headers=headers),
                  img)
    sk = netns.NsSkopeo(os.path.join(test_dir, "skopeo-a"), lab.a, no_proxy=[lab.router_ip["a"]])
    res = sk.copy("%s:%d/%s" % (lab.router_ip["a"], node.port, img.ref()),
                  os.path.join(test_dir, "copy-a"), timeout=120)
    assert res.digest == img.digest and res.verify() == []
    assert set(res.blobs) == {b.digest for b in img.own_blobs()}

    before = node.metric_sum("regmesh_denied_total", why="allow")
    up_mark = reg.log.mark()
    layer = img.layers[0]
    assert node.has_blob(layer.digest), "harness: side a's pull did not store the layer"
    tries = [
        ("side b /v2/", lab.b.request(url_b, "GET", "/v2/")),
        ("side b manifest", lab.b.request(url_b, "GET", "/v2/%s/manifests/%s" % (
            img.repo, img.tag), headers={"Accept": images.ACCEPT_ALL})),
        ("side b cached blob", lab.b.request(url_b, "GET", "/v2/%s/blobs/%s" % (
            img.repo, layer.digest))),
        ("side b HEAD blob", lab.b.request(url_b, "HEAD", "/v2/%s/blobs/%s" % (
            img.repo, layer.digest), read_body=False)),
        # allow: replaces the loopback default, it does not add to it
        ("loopback in the node's namespace", lab.u.request(
            "http://127.0.0.1:%d" % node.port, "GET", "/v2/%s/blobs/%s" % (
                img.repo, layer.digest))),
    ]
    for what, r in tries:
        if what.startswith("side b HEAD"):
            assert r.status == 403, "%s: %r" % (what, r)
        else:
            assert_denied(r, what)
    after = node.metric_sum("regmesh_denied_total", why="allow")
    assert after - before == len(tries), (
        "regmesh_denied_total{why=\"allow\"} grew by %s for %d refused requests" % (
            after - before, len(tries)))
    assert reg.log.entries(up_mark) == [], (
        "refused requests reached the upstream: %s" % reg.log.entries(up_mark))
    # side a still works after all that
    st, digest, n = lab.a.stream_get(url_a, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    assert (st, digest, n) == (200, layer.digest, layer.size)
    assert pulled


# ---------------------------------------------------------------------------
# 2. no allow: loopback only, with a warning per exposed listener

def test_without_allow_only_loopback_is_served(netns_lab, make_access_node, make_registry,
                                               catalog, test_dir):
    lab = netns_lab
    img = catalog.nested
    reg = ns_registry(lab, make_registry, test_dir, [img])
    ups = [regmesh.Upstream(HUB_HOST, reg.url, default=True, listen=True),
           regmesh.Upstream(GHCR_HOST, "http://" + util.dead_address(), listen=True)]
    node = make_access_node(ups, start=False, listen_host="0.0.0.0", ns=lab.u,
                            upstream_listen={HUB_HOST: lab.router_ip["a"]})
    lab.on_cleanup(node.stop)
    node.start()
    hub_port, ghcr_port = node.upstreams[HUB_HOST].port, node.upstreams[GHCR_HOST].port
    util.wait_until(lambda: lab.u.port_open(lab.router_ip["a"], hub_port), 10,
                    what="the docker.io listener")

    log = node.log_text()
    warn = [ln for ln in log.splitlines() if "`allow:` is not set" in ln]
    for addr in (node.listen_addr, node.upstream_addr(HUB_HOST)):
        assert [ln for ln in warn if addr in ln], (
            "no warning naming %s with \"`allow:` is not set\"; warnings: %s\nlog:\n%s" % (
                addr, warn, util.tail(node.log_path, 30)))
    loop_addr = node.upstream_addr(GHCR_HOST)
    assert not [ln for ln in warn if loop_addr in ln], (
        "a loopback listener (%s) was warned about: %s" % (loop_addr, warn))

    before = node.metric_sum("regmesh_denied_total", why="allow")
    up_mark = reg.log.mark()
    main_a = "http://%s:%d" % (lab.router_ip["a"], node.port)
    hub_a = "http://%s:%d" % (lab.router_ip["a"], hub_port)
    assert_denied(lab.a.request(main_a, "GET", "/v2/"), "side a, main listener")
    assert_denied(lab.a.request(main_a, "GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                                headers={"Accept": images.ACCEPT_ALL}),
                  "side a, main listener, manifest")
    assert_denied(lab.a.request(hub_a, "GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                                headers={"Accept": images.ACCEPT_ALL}),
                  "side a, docker.io listener, manifest")
    assert_denied(lab.a.request(hub_a, "GET", "/healthz"), "side a, /healthz")
    assert node.metric_sum("regmesh_denied_total", why="allow") - before == 4
    assert reg.log.entries(up_mark) == [], reg.log.entries(up_mark)

    # loopback in the node's namespace pulls, on the main listener
    pull(node.http, node.stream, img)
    r = lab.u.request("http://127.0.0.1:%d" % ghcr_port, "GET", "/v2/")
    assert r.status == 200, "loopback on the ghcr.io listener: %r" % r


# ---------------------------------------------------------------------------
# 3. IPv6 loopback

def _have_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_ipv6_listener_and_allow(make_access_node, hub, catalog):
    if not _have_ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) here")
    img = catalog.nested
    node = make_access_node([hub_upstream(hub)], listen_host="[::1]", allow=["::1"])
    assert node.url.startswith("http://[::1]:"), node.url
    pull(node.http, node.stream, img)
    assert node.metric_sum("regmesh_denied_total", why="allow") == 0

    node.stop()
    node.allow = ["10.0.0.0/8"]
    node.ready = lambda r: r.status == 403
    node.write_config()
    node.start()
    assert_denied(node.http("GET", "/v2/"), "[::1] with allow 10.0.0.0/8: /v2/")
    assert_denied(node.http("GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                            headers={"Accept": images.ACCEPT_ALL}),
                  "[::1] with allow 10.0.0.0/8: manifest (cached)")
    assert_denied(node.http("GET", "/v2/%s/blobs/%s" % (img.repo, img.layers[0].digest)),
                  "[::1] with allow 10.0.0.0/8: blob (cached)")


# ---------------------------------------------------------------------------
# 4. htpasswd

@pytest.fixture
def ctr_ns(containerd):
    ns = "rmtest-" + uuid.uuid4().hex[:8]
    yield ns
    containerd.remove_namespace(ns)


def test_htpasswd_clients_and_reload(make_access_node, hub, catalog, htpasswd_file, skopeo,
                                     containerd, ctr_ns, test_dir):
    node = make_access_node([hub_upstream(hub)], htpasswd=htpasswd_file)
    good = {"Authorization": basic(USER, PASSWORD)}

    # probes need no password (no admin_listen)
    assert node.request("GET", "/healthz").status == 200
    assert node.request("GET", "/metrics").status == 200

    # skopeo --src-creds
    img = catalog.nested
    res = skopeo.copy("%s/%s" % (node.host_port, img.ref()), os.path.join(test_dir, "sk"),
                      src_creds="%s:%s" % (USER, PASSWORD))
    assert res.digest == img.digest and res.verify() == []
    assert set(res.blobs) == {b.digest for b in img.own_blobs()}
    cp = skopeo.copy("%s/%s" % (node.host_port, img.ref()), os.path.join(test_dir, "sk-bad"),
                     src_creds="%s:%s" % (USER, "not-it"), check=False)
    assert not isinstance(cp, clients.CopyResult) and cp.returncode != 0, \
        "skopeo with a wrong password pulled"

    # containerd: hosts.toml pointing at the node, ctr --user
    ctr_img = catalog.multi
    hosts = os.path.join(test_dir, "hosts")
    clients.write_hosts_toml(hosts, "docker.io", node.url)
    mark = node.log_mark()
    ref = "docker.io/%s" % ctr_img.ref()
    containerd.ctr(["images", "pull", "--hosts-dir", hosts, "--user",
                    "%s:%s" % (USER, PASSWORD), ref], namespace=ctr_ns, timeout=180)
    assert containerd.image_digest(ref, ctr_ns) == ctr_img.digest
    served = {a["path"].rsplit("/", 1)[1] for a in node.access(mark)
              if a["method"] == "GET" and "/blobs/" in a["path"] and a["status"] == 200}
    assert {b.digest for b in ctr_img.own_blobs()} <= served, (
        "ctr's blobs did not come through regmesh with its password: %s" % served)

    # plain HTTP: no password, a wrong one, an unknown user, garbage
    before = node.metric_sum("regmesh_denied_total", why="auth")
    path = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    acc = {"Accept": images.ACCEPT_ALL}
    refused = [
        ("no password /v2/", node.request("GET", "/v2/")),
        ("no password manifest", node.request("GET", path, headers=acc)),
        ("no password blob", node.request("GET", "/v2/%s/blobs/%s" % (
            img.repo, img.layers[0].digest))),
        ("wrong password", node.request("GET", path, headers=dict(
            acc, Authorization=basic(USER, PASSWORD + "x")))),
        ("other user's password", node.request("GET", path, headers=dict(
            acc, Authorization=basic(USER, "other-pw")))),
        ("unknown user", node.request("GET", path, headers=dict(
            acc, Authorization=basic("nobody", PASSWORD)))),
        ("not Basic", node.request("GET", path, headers=dict(
            acc, Authorization="Bearer " + PASSWORD))),
        ("bad base64", node.request("GET", path, headers=dict(
            acc, Authorization="Basic !!!"))),
    ]
    for what, r in refused:
        assert_unauthorized(r, what)
    assert node.metric_sum("regmesh_denied_total", why="auth") - before == len(refused)
    r = node.request("GET", path, headers=dict(acc, **good))
    assert r.status == 200 and r.body == img.manifest, r

    # a new password in the file: the old one refused, the new one taken
    write_htpasswd(htpasswd_file, {USER: "second-pw-2", "other": "other-pw"})
    t0 = time.monotonic()
    seen = {}

    def switched():
        old = node.request("GET", "/v2/", headers=good).status
        new = node.request("GET", "/v2/", headers={
            "Authorization": basic(USER, "second-pw-2")}).status
        seen["v"] = (old, new)
        return old == 401 and new == 200
    try:
        util.wait_until(switched, RELOAD_MAX_S, 0.1, what="the rewritten htpasswd file")
    except TimeoutError:
        raise AssertionError("%.1f s after the htpasswd rewrite: old password -> %s, new -> %s "
                             "(want 401, 200)" % (RELOAD_MAX_S, *seen.get("v", ("?", "?"))))
    print("\nnew password accepted %.1f s after the rewrite" % (time.monotonic() - t0))
    r = node.request("GET", path, headers=dict(acc, Authorization=basic(USER, "second-pw-2")))
    assert r.status == 200 and r.body == img.manifest, r


def test_htpasswd_sighup_and_bad_file(make_access_node, hub, catalog, htpasswd_file):
    node = make_access_node([hub_upstream(hub)], htpasswd=htpasswd_file)
    old = {"Authorization": basic(USER, PASSWORD)}
    assert node.request("GET", "/v2/", headers=old).status == 200

    # same inode, same size (bcrypt hashes are all 60 bytes), mtime put
    # back: only SIGHUP can tell the file changed
    st = os.stat(htpasswd_file)
    write_htpasswd(htpasswd_file, {USER: "sighup-pw-3", "other": "other-pw"})
    os.utime(htpasswd_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(htpasswd_file)
    assert (st2.st_ino, st2.st_size, st2.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    os.kill(node.pid, signal.SIGHUP)
    new = {"Authorization": basic(USER, "sighup-pw-3")}
    seen = {}

    def reloaded():
        seen["v"] = (node.request("GET", "/v2/", headers=old).status,
                     node.request("GET", "/v2/", headers=new).status)
        return seen["v"] == (401, 200)
    try:
        util.wait_until(reloaded, 3.0, 0.1, what="SIGHUP reload")
    except TimeoutError:
        raise AssertionError("3 s after SIGHUP (old, new password) -> %s, want (401, 200)"
                             % (seen.get("v"),))
    assert node.alive()

    # a file with a non-bcrypt hash is refused: the passwords stay
    cp = util.run(["htpasswd", "-nbm", USER, "md5-pw-4"], timeout=30)
    with open(htpasswd_file, "w") as f:
        f.write(cp.stdout.decode().strip() + "\n")
    os.kill(node.pid, signal.SIGHUP)
    time.sleep(2.5)        # past a SIGHUP reload and a watcher round
    assert node.alive(), "regmesh died on a bad htpasswd file"
    assert node.request("GET", "/v2/", headers=new).status == 200, \
        "a bad htpasswd file replaced the good one"
    assert_unauthorized(node.request("GET", "/v2/", headers={
        "Authorization": basic(USER, "md5-pw-4")}), "an MD5 ($apr1$) password")


# ---------------------------------------------------------------------------
# 5. private upstream

def test_private_upstream_needs_the_repository(make_access_node, make_registry, catalog,
                                               htpasswd_file):
    img = catalog.private
    reg = make_registry("priv", [img])
    other_repo = "shared/copy"           # a repository that really has the same blobs
    images.RegistryClient(reg.url).push(img, repo=other_repo)
    node = make_access_node([regmesh.Upstream(HUB_HOST, reg.url, default=True,
                                              private=True)], htpasswd=htpasswd_file)
    auth = {"Authorization": basic(USER, PASSWORD)}
    layer = img.layers[0]

    mark = reg.log.mark()
    pull(node.http, node.stream, img, headers=auth)
    heads = {e.path for e in reg.log.entries(mark) if e.method == "HEAD"}
    for b in img.own_blobs():
        assert "/v2/%s/blobs/%s" % (img.repo, b.digest) in heads, (
            "no upstream HEAD confirming %s in %s: %s" % (b.digest, img.repo, sorted(heads)))
    assert node.has_blob(layer.digest)

    # a repository the upstream does not have it in: 404, bytes or not
    ghost = "nothere/ghost"
    mark = reg.log.mark()
    r = node.request("HEAD", "/v2/%s/blobs/%s" % (ghost, layer.digest), headers=auth,
                     read_body=False)
    assert r.status == 404, "HEAD %s under %s: %r" % (layer.digest, ghost, r)
    r = node.request("GET", "/v2/%s/blobs/%s" % (ghost, layer.digest), headers=auth)
    assert r.status == 404 and "BLOB_UNKNOWN" in r.error_codes(), (
        "GET %s under %s: %r" % (layer.digest, ghost, r))
    ups = reg.log.entries(mark)
    asked = [e for e in ups if e.method == "HEAD"
             and e.path == "/v2/%s/blobs/%s" % (ghost, layer.digest)]
    assert asked, "the node did not ask the upstream about %s: %s" % (ghost, ups)
    assert not [e for e in ups if e.method == "GET"], ups

    # without credentials: 401, wherever
    for repo in (ghost, img.repo):
        assert_unauthorized(node.request("GET", "/v2/%s/blobs/%s" % (repo, layer.digest)),
                            "no password, blob under %s" % repo)

    # the confirmed repository again: from the cache, nothing asked
    mark = reg.log.mark()
    st, digest, n = node.stream("/v2/%s/blobs/%s" % (img.repo, layer.digest), headers=auth)
    assert (st, digest, n) == (200, layer.digest, layer.size)
    ups = [e for e in reg.log.entries(mark) if layer.digest in e.path]
    assert ups == [], "confirmed (repo, digest) asked the upstream again: %s" % ups

    # a repository that does have it: one HEAD, bytes from the cache
    mark = reg.log.mark()
    st, digest, n = node.stream("/v2/%s/blobs/%s" % (other_repo, layer.digest), headers=auth)
    assert (st, digest, n) == (200, layer.digest, layer.size)
    ups = [e for e in reg.log.entries(mark) if layer.digest in e.path]
    assert [(e.method, e.path) for e in ups] == [
        ("HEAD", "/v2/%s/blobs/%s" % (other_repo, layer.digest))], ups


# ---------------------------------------------------------------------------
# 6. the peer port's signatures

def peer_key(secret_b64):
    return hashlib.sha256(PEER_LABEL + base64.b64decode(secret_b64)).digest()


def peer_sign(key, method, target, sender, t_ms):
    msg = "%s\n%s\n%d\n%s" % (method, target, t_ms, sender)
    sig = hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()
    return "t=%d,sig=%s" % (t_ms, sig)


def now_ms():
    return int(time.time() * 1000)


def test_peer_port_requires_signatures(make_fleet, hub, catalog):
    fl = make_fleet(hub, 1)
    nd = fl.nodes[0]
    img = catalog.multi
    blob = img.layers[1]
    assert not nd.has_blob(blob.digest)
    key = peer_key(fl.secret)
    target = "/v2/%s/blobs/%s?ns=%s" % (img.repo, blob.digest, HUB_HOST)
    me = "rmtest-peer"
    wrong_key = peer_key(make_secret())

    before = nd.metric_sum("regmesh_denied_total", why="peer_auth")
    mark = hub.log.mark()
    bad = [
        ("unsigned", {"X-Regmesh-Hop": me}),
        ("signed with another secret", {
            "X-Regmesh-Hop": me,
            "X-Regmesh-Auth": peer_sign(wrong_key, "GET", target, me, now_ms())}),
        ("replayed: signed 10 minutes ago", {
            "X-Regmesh-Hop": me,
            "X-Regmesh-Auth": peer_sign(key, "GET", target, me, now_ms() - 600 * 1000)}),
        ("signed for another sender", {
            "X-Regmesh-Hop": me,
            "X-Regmesh-Auth": peer_sign(key, "GET", target, "n0", now_ms())}),
    ]
    for what, hdrs in bad:
        r = util.request(nd.peer_listen_url, "GET", target, headers=hdrs, timeout=15)
        assert r.status == 401, "peer port, %s: want 401, got %r" % (what, r)
        assert len(r.body) < blob.size, what
    grew = nd.metric_sum("regmesh_denied_total", why="peer_auth") - before
    assert grew == len(bad), "regmesh_denied_total{why=\"peer_auth\"} grew by %s for %d" % (
        grew, len(bad))
    asked = upstream_requests_for(hub, blob.digest, mark)
    assert asked == [], "refused peer requests reached the upstream: %s" % asked
    assert not nd.has_blob(blob.digest)

    # the signer is right: a current signature gets the bytes
    r = util.request(nd.peer_listen_url, "GET", target, headers={
        "X-Regmesh-Hop": me,
        "X-Regmesh-Auth": peer_sign(key, "GET", target, me, now_ms())}, timeout=60)
    assert r.status == 200, "a correctly signed peer request: %r" % r
    assert util.sha256_bytes(r.body) == blob.digest and len(r.body) == blob.size
    assert len(hub.log.blob_gets(blob.digest, mark)) == 1


# ---------------------------------------------------------------------------
# 7. X-Regmesh-Hop on a client port means nothing

def _cold_blobs_owned_by(fl, via, owner, catalog, n):
    out = []
    for img in (catalog.multi, catalog.nested, catalog.index, catalog.tagged, catalog.dotted):
        for m in img.all_manifests():
            if m.is_index:
                continue
            for b in m.own_blobs():
                if b.size < (4 << 20) and fl.owners(via, digest=b.digest)[0] == owner.name:
                    out.append((m.repo or img.repo, b))
                    if len(out) == n:
                        return out
    raise AssertionError("harness: fewer than %d small blobs owned by %s" % (n, owner.name))


def test_hop_header_on_client_port_is_ignored(make_fleet, hub, catalog):
    fl = make_fleet(hub, 2)
    via, owner = fl.nodes
    picks = _cold_blobs_owned_by(fl, via, owner, catalog, 2)
    outcomes = {}
    for (repo, blob), hop in zip(picks, (None, "x")):
        assert not via.has_blob(blob.digest) and not owner.has_blob(blob.digest)
        hdrs = {"X-Regmesh-Hop": hop} if hop else {}
        up_mark, own_mark, via_mark = hub.log.mark(), owner.log_mark(), via.log_mark()
        peer_hits = via.metric_sum("regmesh_hits_total", source="peer")
        path = "/v2/%s/blobs/%s" % (repo, blob.digest)
        st, digest, n = stream_get(via.url, path, headers=hdrs)
        assert (st, digest, n) == (200, blob.digest, blob.size), (hop, st, digest, n)
        owner_lines = [a for a in owner.access(own_mark)
                       if a["method"] == "GET" and a["path"].endswith(blob.digest)]
        via_lines = [a for a in via.access(via_mark)
                     if a["method"] == "GET" and a["path"] == path]
        outcomes[hop] = {
            "upstream GETs": len(hub.log.blob_gets(blob.digest, up_mark)),
            "owner served": [(a["status"], a.get("src")) for a in owner_lines],
            "client answer src": [a.get("src") for a in via_lines],
            "peer hits": via.metric_sum("regmesh_hits_total", source="peer") - peer_hits,
        }
    print("\n%s" % outcomes)
    want = {"upstream GETs": 1, "owner served": [(200, "upstream")],
            "client answer src": ["peer"], "peer hits": 1}
    assert outcomes[None] == want, "harness/fleet: without the header: %s" % outcomes[None]
    assert outcomes["x"] == want, (
        "with X-Regmesh-Hop on the client port the non-owner did not go to the owner: %s "
        "(without the header: %s)" % (outcomes["x"], outcomes[None]))


# ---------------------------------------------------------------------------
# 8. admin_listen

def test_admin_listen_takes_the_operational_endpoints(regmesh_binary, test_dir, procs, hub,
                                                      catalog):
    cl = {"secret": make_secret(), "probe_interval": "200ms", "probe_timeout": "100ms",
          "push_pull_interval": "2s", "zone": "zone-0", "weight": 1}
    nd = AdminFleetNode(regmesh_binary, os.path.join(test_dir, "admin"),
                        [hub_upstream(hub)], "n0", cl)
    procs.append(nd)
    nd.start()
    ops = ["/metrics", "/healthz", "/readyz", "/cluster/members",
           "/cluster/owners?digest=" + catalog.nested.layers[0].digest]
    for p in ops:
        r = util.request(nd.url, "GET", p)
        assert r.status == 404, "public listener, GET %s: want 404, got %r" % (p, r)
        r = util.request(nd.admin_url, "GET", p)
        assert r.status == 200, "admin listener, GET %s: want 200, got %r" % (p, r)
    members = parse_members(util.request(nd.admin_url, "GET", "/cluster/members").json())
    assert list(members) == ["n0"], members
    names = [n for n, _, _ in regmesh.parse_metrics(
        util.request(nd.admin_url, "GET", "/metrics").body.decode())]
    assert any(n.startswith("regmesh_") for n in names), names[:20]
    # the admin listener serves nothing else; the public one still serves pulls
    assert util.request(nd.admin_url, "GET", "/v2/").status == 404
    pull(lambda m, p, **kw: util.request(nd.url, m, p, **kw),
         lambda p, headers=None: stream_get(nd.url, p, headers=headers), catalog.nested)


def test_cache_admin_api_is_on_admin_listen_only(make_access_node, make_registry, catalog):
    """/cache/ changes are POSTs on the admin listener; with one, the
    registry port serves no /cache/ at all; bad references are 400s."""
    reg = make_registry("cacheapi", [catalog.tagged])
    n = make_access_node([regmesh.Upstream("docker.io", reg.url, default=True)], admin=True)
    admin = n.admin_url
    assert util.request(admin, "GET", "/cache/rm?ref=x").status == 405
    r = util.request(admin, "GET", "/cache/stat")
    assert r.status == 200 and json.loads(r.body)["blobs"] == 0, r
    assert util.request(n.url, "GET", "/cache/stat").status == 404
    assert util.request(n.url, "POST", "/cache/verify").status in (404, 405)
    assert util.request(admin, "POST", "/cache/rm?ref=" + "a" * 2000).status == 400
    r = util.request(admin, "POST", "/cache/pin?ref=Bad..Name:x")
    assert r.status == 400 and "NAME_INVALID" in r.error_codes(), r
    r = util.request(admin, "POST", "/cache/pin?ref=quay.io/a:b")
    assert r.status == 404 and b"no upstream" in r.body, r
    r = util.request(admin, "POST", "/cache/rm?ref=sha256:" + "0" * 64)
    assert r.status == 404 and "BLOB_UNKNOWN" in r.error_codes(), r
