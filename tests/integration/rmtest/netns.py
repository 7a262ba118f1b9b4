"""Network namespaces the fleet tests make for themselves (`ip netns`, veth
pairs, iptables inside those namespaces only): nothing here touches the
machine's own network namespace.

A `Lab` is three namespaces wired as a router and two sides:

    side A  <name>a   10.201.1.2 --veth-- 10.201.1.1 \
                                                     <name>u  (upstream registry, router)
    side B  <name>b   10.201.2.2 --veth-- 10.201.2.1 /

Nodes of side A bind 10.201.1.2 (each on its own ports), nodes of side B
10.201.2.2; the upstream registry listens on 0.0.0.0 in the middle and is
reached as 10.201.1.1 from A and 10.201.2.1 from B. `partition()` drops
everything forwarded between the sides (iptables FORWARD in the middle
namespace), `heal()` removes the rules; the middle still reaches both sides,
so the test talks to every node through it at any time.

The test process itself never changes namespace: sockets it needs inside one
are made by a short-lived thread that entered it (setns(2) acts on the
calling thread only), and processes run under `ip netns exec`, which execs
them (their PID is the one util.Proc records, so they are stopped by PID).
"""

import ctypes
import errno
import http.client
import os
import re
import shutil
import socket
import threading
import time
import urllib.parse

import pytest

from . import clients, upstream, util
from .checks import read_digest

IP = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
IPTABLES = shutil.which("iptables") or (
    "/usr/sbin/iptables" if os.path.exists("/usr/sbin/iptables") else None)
TC = shutil.which("tc") or ("/usr/sbin/tc" if os.path.exists("/usr/sbin/tc") else None)
SYSCTL = shutil.which("sysctl") or (
    "/usr/sbin/sysctl" if os.path.exists("/usr/sbin/sysctl") else None)

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - glibc is always there on Debian
    _libc = None

_counter = [0]
_counter_lock = threading.Lock()


def missing():
    """Names of the tools this module needs that are absent here."""
    out = []
    if not IP:
        out.append("ip (iproute2)")
    if not IPTABLES:
        out.append("iptables")
    if _libc is None or not hasattr(_libc, "setns"):
        out.append("setns(2) in libc")
    return out


def unique_prefix():
    """Unique per process and call (namespace names are global):
    rmt<pid><letter>; the lab adds u, a or b."""
    with _counter_lock:
        _counter[0] += 1
        n = _counter[0]
    return "rmt%d%c" % (os.getpid(), chr(ord("a") + (n - 1) % 26))


_NAME = re.compile(r"^rmt(\d+)[a-z](?:[uab]|s\d+)$")


def sweep_orphans():
    """Delete namespaces an earlier run of these tests left behind when it
    was killed before its teardown: names of our pattern whose test process
    is gone. Their daemons died with that process (PR_SET_PDEATHSIG).
    Returns the names deleted."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    gone = []
    for name in names:
        m = _NAME.match(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        if os.path.exists("/proc/%s" % m.group(1)):
            continue
        util.run([IP, "netns", "delete", name], timeout=10, check=False)
        gone.append(name)
    return gone


class Netns:
    """One named network namespace this test made (and deletes)."""

    def __init__(self, name):
        self.name = name
        self.created = False

    def create(self):
        util.run([IP, "netns", "add", self.name], timeout=10)
        self.created = True
        self.ip("link", "set", "lo", "up")
        return self

    def delete(self):
        if self.created:
            util.run([IP, "netns", "delete", self.name], timeout=10, check=False)
            self.created = False

    def exists(self):
        return os.path.exists(os.path.join(NETNS_DIR, self.name))

    # -- commands in the namespace ----------------------------------------
    def argv(self, argv):
        return [IP, "netns", "exec", self.name] + list(argv)

    def run(self, argv, timeout=15, check=True, env=None):
        return util.run(self.argv(argv), timeout=timeout, check=check, env=env)

    def ip(self, *args, check=True):
        return util.run([IP, "-n", self.name] + list(args), timeout=10, check=check)

    def iptables(self, *args, check=True):
        return self.run([IPTABLES, "-w", "10"] + list(args), timeout=20, check=check)

    def sysctl(self, key, value):
        path = "/proc/sys/" + key.replace(".", "/")
        # the write happens inside the namespace: net.* sysctls are per netns
        return self.run(["sh", "-c", 'echo %s > "$1"' % value, "sh", path], timeout=10)

    # -- sockets in the namespace -----------------------------------------
    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM):
        """A socket created inside this namespace (usable from any thread)."""
        res = {}

        def enter_and_make():
            try:
                fd = os.open(os.path.join(NETNS_DIR, self.name), os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        e = ctypes.get_errno()
                        raise OSError(e, "setns(%s): %s" % (self.name, os.strerror(e)))
                finally:
                    os.close(fd)
                res["sock"] = socket.socket(family, type)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                res["err"] = e

        t = threading.Thread(target=enter_and_make, name="netns-" + self.name, daemon=True)
        t.start()
        t.join(10)
        if "err" in res:
            raise res["err"]
        if "sock" not in res:
            raise OSError(errno.ETIMEDOUT, "no socket from namespace %s" % self.name)
        return res["sock"]

    def connect(self, host, port, timeout=5.0):
        s = self.socket()
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s

    def port_open(self, host, port, timeout=0.5):
        try:
            self.connect(host, port, timeout).close()
            return True
        except OSError:
            return False

    def request(self, base, method, path, headers=None, body=None, timeout=30.0,
                read_body=True):
        """util.request, with the connection made inside this namespace."""
        u = urllib.parse.urlsplit(base)
        conn = _NsHTTPConnection(self, u.hostname, u.port, timeout=timeout)
        return _do_request(conn, method, path, headers, body, read_body)

    def stream_get(self, base, path, headers=None, timeout=120, chunk=1 << 20):
        """checks.stream_get inside the namespace: (status, digest, bytes)."""
        u = urllib.parse.urlsplit(base)
        conn = _NsHTTPConnection(self, u.hostname, u.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            return read_digest(conn.getresponse(), chunk)
        finally:
            conn.close()


class _NsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, ns, host, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ns = ns

    def connect(self):
        self.sock = self._ns.connect(self.host, self.port, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _do_request(conn, method, path, headers, body, read_body):
    t0 = time.monotonic()
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for k, v in items:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        incomplete = False
        data = b""
        if read_body:
            try:
                data = resp.read()
            except http.client.IncompleteRead as e:
                data, incomplete = e.partial, True
            except (ConnectionError, socket.timeout) as e:
                data, incomplete = b"", repr(e)
        r = util.Response(resp.status, resp.reason, resp.getheaders(), data,
                          time.monotonic() - t0)
        r.incomplete = incomplete
        return r
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# the upstream registry inside a namespace

class NsRegistry(upstream.Registry):
    """distribution's registry run with `ip netns exec`, listening on
    0.0.0.0:<port> inside the namespace. `storage` reuses a storage dir
    filled elsewhere (e.g. by a registry on 127.0.0.1 the images were pushed
    to, then stopped)."""

    def __init__(self, workdir, name, ns, storage=None):
        self.ns = ns
        super().__init__(workdir, name)
        if storage:
            self.storage = storage
            self._write_config()

    @property
    def host_port(self):
        return "0.0.0.0:%d" % self.port

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port      # inside the namespace

    def url_via(self, ip):
        return "http://%s:%d" % (ip, self.port)

    def start(self, timeout=20.0):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.dir}
        self.proc = util.Proc(self.ns.argv([upstream.REGISTRY_BIN, "serve", self.config_path]),
                              log_path=self.app_log_path, stdout_path=self.access_log_path,
                              env=env, name="registry-" + self.name).start()

        def up():
            if not self.proc.alive():
                raise AssertionError("registry %s exited: %s" % (
                    self.name, util.tail(self.app_log_path)))
            r = self.ns.request(self.url, "GET", "/v2/", timeout=2)
            return r.status in (200, 401)
        util.wait_until(up, timeout, what="registry %s in netns %s" % (self.name, self.ns.name))
        return self


# ---------------------------------------------------------------------------
# skopeo inside a namespace

class NsSkopeo(clients.Skopeo):
    """clients.Skopeo whose runs happen inside `ns`. The no-egress proxy
    variables stay (they point at 127.0.0.1 of the namespace, where nothing
    listens); `no_proxy` lists the namespace addresses the client may reach
    directly (Go proxies everything but loopback otherwise)."""

    def __init__(self, workdir, ns, no_proxy):
        super().__init__(workdir)
        self.ns = ns
        self.no_proxy = ",".join(no_proxy)

    def _run(self, args, timeout=300, check=True, env_extra=None):
        import tempfile
        self._n += 1
        scratch = tempfile.mkdtemp(prefix="skopeo-%d-" % self._n, dir=self.dir)
        try:
            home = os.path.join(scratch, "home")
            os.makedirs(home)
            env = clients.no_egress_env({"HOME": home, "XDG_RUNTIME_DIR": home,
                                         "CONTAINERS_REGISTRIES_CONF": self.registries_conf})
            env["NO_PROXY"] = env["no_proxy"] = self.no_proxy
            env.update(env_extra or {})
            tmp = os.path.join(scratch, "tmp")
            os.makedirs(tmp)
            argv = [clients.SKOPEO, "--policy", self.policy, "--tmpdir", tmp] + list(args)
            return util.run(self.ns.argv(clients.private_varlib_argv(argv, scratch)),
                            timeout=timeout, env=env, check=check)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------
# the two-sided lab

def _run_cleanups(cleanups, namespaces):
    """Run a lab's cleanups (last first), then delete its namespaces;
    returns the errors met, so teardown goes on past each."""
    errors = []
    for fn in reversed(cleanups):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - keep tearing down
            errors.append(repr(e))
    for ns in namespaces:
        ns.delete()
    left = [ns.name for ns in namespaces if ns.exists()]
    if left:
        errors.append("namespaces still present: %s" % left)
    return errors


SUBNET_A = "10.201.1"
SUBNET_B = "10.201.2"


class Lab:
    """Router namespace `u` and sides `a` and `b` (see the module doc)."""

    def __init__(self, prefix=None):
        p = prefix or unique_prefix()
        self.u = Netns(p + "u")
        self.a = Netns(p + "a")
        self.b = Netns(p + "b")
        self.router_ip = {"a": SUBNET_A + ".1", "b": SUBNET_B + ".1"}
        self.side_ip = {"a": SUBNET_A + ".2", "b": SUBNET_B + ".2"}
        self._cleanups = []
        self.partitioned = False

    def side_ns(self, side):
        return {"a": self.a, "b": self.b}[side]

    def create(self):
        for ns in (self.u, self.a, self.b):
            ns.create()
        for side, ns, subnet in (("a", self.a, SUBNET_A), ("b", self.b, SUBNET_B)):
            inner, outer = "u" + side, side + "u"     # interface names, per namespace
            # both ends are made inside namespaces: the host's never sees them
            self.u.ip("link", "add", inner, "type", "veth", "peer", "name", outer,
                      "netns", ns.name)
            self.u.ip("addr", "add", subnet + ".1/24", "dev", inner)
            self.u.ip("link", "set", inner, "up")
            ns.ip("addr", "add", subnet + ".2/24", "dev", outer)
            ns.ip("link", "set", outer, "up")
            ns.ip("route", "add", "default", "via", subnet + ".1")
        self.u.sysctl("net.ipv4.ip_forward", 1)
        return self

    def on_cleanup(self, fn):
        self._cleanups.append(fn)

    def partition(self):
        """Drop every packet forwarded between side A and side B."""
        for src, dst in ((SUBNET_A, SUBNET_B), (SUBNET_B, SUBNET_A)):
            self.u.iptables("-I", "FORWARD", "-s", src + ".0/24", "-d", dst + ".0/24",
                            "-j", "DROP")
        self.partitioned = True

    def heal(self):
        for src, dst in ((SUBNET_A, SUBNET_B), (SUBNET_B, SUBNET_A)):
            self.u.iptables("-D", "FORWARD", "-s", src + ".0/24", "-d", dst + ".0/24",
                            "-j", "DROP", check=False)
        self.partitioned = False

    def forward_drops(self):
        """Packets the partition rules dropped so far (iptables counters)."""
        cp = self.u.iptables("-L", "FORWARD", "-v", "-n", "-x")
        total = 0
        for line in cp.stdout.decode().splitlines():
            cols = line.split()
            if len(cols) > 2 and cols[2] == "DROP" and cols[0].isdigit():
                total += int(cols[0])
        return total

    def teardown(self):
        errors = _run_cleanups(self._cleanups, [self.a, self.b, self.u])
        self._cleanups = []
        return errors


# ---------------------------------------------------------------------------
# a star: one router (the upstream lives there) and n leaves, each on its
# own veth link shaped with tc tbf in both directions

SUBNET_STAR = "10.202"


class Star:
    """Router namespace `<p>u` and leaves `<p>s0`..: leaf i is
    10.202.<i+1>.2 behind 10.202.<i+1>.1 on the router; every link carries
    `rate` (tc tbf, e.g. "40mbit") each way, so a leaf's upload and
    download are both capped. Leaves reach each other through the router."""

    def __init__(self, n, rate, prefix=None):
        p = prefix or unique_prefix()
        self.rate = rate
        self.u = Netns(p + "u")
        self.leaves = [Netns("%ss%d" % (p, i)) for i in range(n)]
        self._cleanups = []

    def ip(self, i):
        return "%s.%d.2" % (SUBNET_STAR, i + 1)

    def router_ip(self, i):
        return "%s.%d.1" % (SUBNET_STAR, i + 1)

    def create(self):
        self.u.create()
        self.u.sysctl("net.ipv4.ip_forward", 1)
        for i, ns in enumerate(self.leaves):
            ns.create()
            inner, outer = "vl%d" % i, "vup%d" % i   # router side, leaf side
            self.u.ip("link", "add", "name", inner, "type", "veth", "peer", "name", outer,
                      "netns", ns.name)
            self.u.ip("addr", "add", self.router_ip(i) + "/24", "dev", inner)
            self.u.ip("link", "set", inner, "up")
            ns.ip("addr", "add", self.ip(i) + "/24", "dev", outer)
            ns.ip("link", "set", outer, "up")
            ns.ip("route", "add", "default", "via", self.router_ip(i))
            # egress of each end: the leaf's upload and its download
            for where, dev in ((self.u, inner), (ns, outer)):
                where.run([TC, "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate,
                           "burst", "256kb", "latency", "100ms"], timeout=10)
        return self

    def on_cleanup(self, fn):
        self._cleanups.append(fn)

    def teardown(self):
        errors = _run_cleanups(self._cleanups, self.leaves + [self.u])
        self._cleanups = []
        return errors


@pytest.fixture
def netns_star(request):
    """Factory: netns_star(n, rate) -> a created Star, torn down (its
    cleanups first) even when the test fails. Skips only when ip, iptables
    or tc are absent."""
    miss = missing() + ([] if TC else ["tc (iproute2)"])
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (euid %d)" % os.geteuid())
    sweep_orphans()
    stars = []

    def make(n, rate):
        st = Star(n, rate)
        stars.append(st)
        try:
            st.create()
        except BaseException:
            st.teardown()
            raise
        return st
    yield make
    errs = []
    for st in stars:
        errs += st.teardown()
    assert not errs, "netns star teardown: %s" % errs


@pytest.fixture
def netns_lab(request):
    """Factory-less fixture: a created Lab, torn down (its registered
    cleanups first, then the namespaces) even when the test fails. Skips
    only when `ip`/`iptables` are absent."""
    miss = missing()
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (euid %d)" % os.geteuid())
    swept = sweep_orphans()
    if swept:
        print("\nrmtest: deleted namespaces left by a killed run: %s" % swept)
    lab = Lab()
    try:
        lab.create()
    except BaseException:
        lab.teardown()
        raise
    yield lab
    errs = lab.teardown()
    assert not errs, "netns lab teardown: %s" % errs
