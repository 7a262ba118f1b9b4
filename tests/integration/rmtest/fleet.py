"""A fleet of regmesh nodes (docs/cluster.md): n nodes with a `cluster:`
section each, started one after the other (each joins the gossip address
of the ones before it), waited on until every node's GET /cluster/members
lists all n alive.

Usage in a test module (the fixture is defined here; importing it into the
module is how pytest finds it):

    from rmtest.fleet import make_fleet  # noqa: F401 (fixture)

    def test_x(make_fleet, hub):
        fl = make_fleet(hub, 3, tag_ttl="3s")
        fl.owners(fl.nodes[0], digest="sha256:...")

Nodes run on 127.0.0.1 (free ports for the registry API and for gossip,
UDP and TCP), or inside a network namespace with their own address
(`node_opts={i: {"ns": Netns, "host": "10.201.1.2", "upstream_url": ...}}`,
see rmtest/netns.py). Every process is stopped by PID at teardown; the log
tails of every node are printed when the test failed.
"""

import base64
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from . import clients, regmesh, util
from .checks import HUB_HOST

ALIVE = "alive"
DEAD_STATES = ("dead", "failed", "left")
NOT_ALIVE = ("suspect",) + DEAD_STATES

# field names of a /cluster/members entry, as `regmesh members` documents
# the columns; the first name is the one the tests expect, the others are
# accepted spellings (reported by member_field_names()).
MEMBER_FIELDS = {
    "name": ("name",),
    "state": ("state", "status"),
    "addr": ("addr", "address", "gossip", "gossip_addr"),
    "zone": ("zone",),
    "weight": ("weight",),
    "share": ("share", "ring_share", "key_share"),
    "url": ("url", "peer_url", "registry_url"),
}


def make_secret(nbytes=32):
    return base64.b64encode(os.urandom(nbytes)).decode()


def free_gossip_port():
    """A port free for both TCP and UDP on 127.0.0.1 (gossip uses both),
    never handed out twice in the session."""
    for _ in range(200):
        port = util.free_port()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((util.LOCALHOST, port))
            return port
        except OSError:
            continue
        finally:
            u.close()
    raise RuntimeError("no port free for TCP and UDP")


def _yaml_str(v):
    return json.dumps(str(v))        # a JSON string is a valid YAML double-quoted scalar


# ---------------------------------------------------------------------------
# one node of a fleet

class FleetNode(regmesh.Node):
    """regmesh.Node with a `cluster:` section, a host address other than
    127.0.0.1 if wanted, and optionally run inside a network namespace.

    cluster: dict of docs/cluster.md keys (name, bind, join, secret, ...);
    `bind` defaults to <host>:<free gossip port>."""

    def __init__(self, binary, workdir, upstreams, name, cluster, host=util.LOCALHOST,
                 ns=None, **kw):
        self.name = name
        self.host = host
        self.ns = ns
        self.gossip_port = free_gossip_port()
        self.peer_port = util.free_port()
        self.cluster = {"name": name, "bind": "%s:%d" % (host, self.gossip_port),
                        "peer_listen": "%s:%d" % (host, self.peer_port)}
        self.cluster.update(cluster or {})
        super().__init__(binary, workdir, upstreams, **kw)

    # -- addresses -------------------------------------------------------
    @property
    def host_port(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def gossip_addr(self):
        return self.cluster.get("advertise") or self.cluster["bind"]

    @property
    def peer_listen_url(self):
        """The node's peer listener (cluster.peer_listen)."""
        scheme = "https" if self.cluster.get("tls") else "http"
        return "%s://%s:%d" % (scheme, self.host, self.peer_port)

    @property
    def peer_url(self):
        """What peers use (the contract's default unless peer_url is set)."""
        return self.cluster.get("peer_url") or self.peer_listen_url

    # -- config ----------------------------------------------------------
    def config_text(self):
        text = super().config_text()
        if self.host != util.LOCALHOST and "allow:" not in text:
            # nodes in test namespaces serve the lab's networks
            text += "allow: [127.0.0.0/8, 10.0.0.0/8]\n"
        lines = ["cluster:"]
        for k, v in self.cluster.items():
            if v is None:
                continue
            if isinstance(v, dict):
                lines.append("  %s:" % k)
                lines += ["    %s: %s" % (kk, _yaml_str(vv)) for kk, vv in v.items()]
                continue
            if k == "join":
                if v:
                    lines.append("  join:")
                    lines += ["    - %s" % _yaml_str(j) for j in v]
                continue
            lines.append("  %s: %s" % (k, _yaml_str(v) if isinstance(v, str) else v))
        return text + "\n".join(lines) + "\n"

    # -- HTTP (inside the namespace when there is one) --------------------
    def http(self, method, path, **kw):
        if self.ns is not None:
            return self.ns.request(self.url, method, path, **kw)
        return util.request(self.url, method, path, **kw)

    def request(self, method, path, **kw):
        return self.http(method, path, **kw)

    def metrics(self):
        r = self.http("GET", "/metrics", timeout=10)
        assert r.status == 200, "/metrics on %s: %r" % (self.name, r)
        return regmesh.parse_metrics(r.body.decode("utf-8", "replace"))

    def get_json(self, path, timeout=10):
        r = self.http("GET", path, timeout=timeout)
        assert r.status == 200, "GET %s on %s: %r" % (path, self.name, r)
        try:
            return json.loads(r.body.decode("utf-8"))
        except ValueError:
            raise AssertionError("GET %s on %s: not JSON: %r" % (path, self.name, r.body[:500]))

    # -- process ---------------------------------------------------------
    def start(self, timeout=20.0):
        assert self.proc is None or not self.proc.alive(), "already running"
        with open(self.log_path, "ab") as f:
            f.write(("--- rmtest: start %s\n" % time.strftime("%H:%M:%S")).encode())
        argv = [self.binary, "serve", "--config", self.config_path]
        if self.ns is not None:
            argv = self.ns.argv(argv)
        self.proc = util.Proc(argv, log_path=self.log_path, env=self.env, cwd=self.dir,
                              name="regmesh-" + self.name).start()

        def healthy():
            if not self.proc.alive():
                raise AssertionError("regmesh %s exited with %s during start; log:\n%s" % (
                    self.name, self.proc.returncode(), util.tail(self.log_path)))
            return self.http("GET", "/healthz", timeout=2).status == 200
        try:
            util.wait_until(healthy, timeout, what="regmesh %s /healthz on %s" % (
                self.name, self.url))
        except TimeoutError as e:
            raise AssertionError("%s\nlog:\n%s" % (e, util.tail(self.log_path)))
        return self


# ---------------------------------------------------------------------------
# /cluster/members and /cluster/owners

def _members_list(doc):
    if isinstance(doc, dict):
        for k in ("members", "nodes"):
            if isinstance(doc.get(k), list):
                return doc[k]
        if doc and all(isinstance(v, dict) for v in doc.values()):
            return [dict(v, name=v.get("name", k)) for k, v in doc.items()]
    if isinstance(doc, list):
        return doc
    raise AssertionError("/cluster/members: unexpected shape: %r" % (doc,))


def field(member, key, default=None):
    for k in MEMBER_FIELDS.get(key, (key,)):
        if k in member:
            return member[k]
    return default


def parse_members(doc):
    """/cluster/members JSON -> {name: member dict} (raw entries)."""
    out = {}
    for m in _members_list(doc):
        assert isinstance(m, dict), "member entry is not an object: %r" % (m,)
        name = field(m, "name")
        assert name, "member entry without a name: %r" % (m,)
        out[name] = m
    return out


def owner_names(doc):
    """/cluster/owners JSON -> [name, ...] in preference order."""
    items = doc
    if isinstance(doc, dict):
        items = None
        for k in ("owners", "preference", "nodes", "members"):
            if isinstance(doc.get(k), list):
                items = doc[k]
                break
        assert items is not None, "/cluster/owners: no owner list in %r" % (doc,)
    assert isinstance(items, list), "/cluster/owners: unexpected shape: %r" % (doc,)
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(it)
        else:
            assert isinstance(it, dict) and field(it, "name"), "owner entry: %r" % (it,)
            out.append(field(it, "name"))
    return out


# ---------------------------------------------------------------------------
# the fleet

class Fleet:
    """n FleetNodes named n0..n{n-1}, in zones zone-0/zone-1 alternately.

    upstream: a Registry (its .url) or a URL string, the `docker.io`
    default upstream of every node. secret: True = a fresh 32-byte key
    (self.secret, base64), a base64 string, or None/False for none.
    node_opts: {i: {"upstream_url": url, "cluster": {...overrides, e.g.
    peer_url...}, "host": ip, "ns": Netns}}. cluster_extra: keys added to
    every node's cluster section (e.g. peer_timeout). Timings default to
    probe 200 ms / 100 ms, push/pull 2 s: a dead member is declared within
    a few seconds. Partitions: rmtest/netns.py (Lab.partition/heal) with
    node_opts placing nodes in its namespaces."""

    def __init__(self, workdir, upstream, n, secret=True, tag_ttl="60s",
                 cluster_extra=None, node_opts=None, probe_interval="200ms",
                 probe_timeout="100ms", push_pull_interval="2s", log_level="info",
                 zones=None, binary=None):
        binary = binary or regmesh.regmesh_bin()
        self.binary = binary
        self.dir = workdir
        self.n = n
        self.secret = make_secret() if secret is True else (secret or None)
        self.tag_ttl = tag_ttl
        base_url = upstream if isinstance(upstream, str) else upstream.url
        node_opts = node_opts or {}
        self.nodes = []
        for i in range(n):
            opts = node_opts.get(i, {})
            cl = {"probe_interval": probe_interval, "probe_timeout": probe_timeout,
                  "push_pull_interval": push_pull_interval,
                  "zone": (zones[i] if zones else "zone-%d" % (i % 2)),
                  "weight": 1}
            if self.secret:
                cl["secret"] = self.secret
            cl.update(cluster_extra or {})
            cl.update(opts.get("cluster", {}))
            up = regmesh.Upstream(HUB_HOST, opts.get("upstream_url", base_url), default=True,
                                  tag_ttl=tag_ttl)
            node = FleetNode(binary, os.path.join(workdir, "n%d" % i), [up], "n%d" % i, cl,
                             host=opts.get("host", util.LOCALHOST), ns=opts.get("ns"),
                             log_level=log_level)
            self.nodes.append(node)
        # each node joins the ones before it (at most three seeds)
        for i, node in enumerate(self.nodes):
            if "join" not in node.cluster:
                node.cluster["join"] = [m.gossip_addr for m in self.nodes[:i]][-3:]
            node.write_config()

    # -- lifecycle -------------------------------------------------------
    def start(self, timeout=30.0):
        for node in self.nodes:
            node.start()
        self.wait_converged(self.n, timeout)
        return self

    def stop_all(self):
        for node in self.nodes:
            node.stop()

    def kill9(self, i):
        node = self.nodes[i] if isinstance(i, int) else i
        node.kill9()
        return node

    @property
    def running(self):
        return [nd for nd in self.nodes if nd.alive()]

    def node(self, name):
        for nd in self.nodes:
            if nd.name == name:
                return nd
        raise KeyError(name)

    # -- views -----------------------------------------------------------
    def members(self, node):
        """{name: member dict} from node's GET /cluster/members."""
        return parse_members(node.get_json("/cluster/members"))

    def states(self, node):
        return {name: field(m, "state") for name, m in self.members(node).items()}

    def owners(self, node, digest=None, tag=None):
        """Preference list (names) from node's GET /cluster/owners."""
        if digest:
            q = "digest=" + digest
        else:
            q = "tag=" + tag
        return owner_names(node.get_json("/cluster/owners?" + q))

    def first_owner(self, digest, via=None):
        via = via or self.running[0]
        names = self.owners(via, digest=digest)
        assert names, "/cluster/owners on %s named nobody for %s" % (via.name, digest)
        return self.node(names[0])

    def wait_converged(self, n_alive=None, timeout=30.0, nodes=None, names=None):
        """Until every given (default: running) node lists exactly the
        expected members as alive: `names` if given, else n_alive of them."""
        nodes = nodes or self.running
        want = set(names) if names is not None else None
        n_alive = len(want) if want is not None else (n_alive or len(nodes))
        last = {}

        def ok():
            for nd in nodes:
                st = self.states(nd)
                last[nd.name] = st
                alive = {k for k, v in st.items() if v == ALIVE}
                if want is not None and alive != want:
                    return False
                if len(alive) != n_alive:
                    return False
            return True
        try:
            util.wait_until(ok, timeout, 0.1, what="fleet to converge on %d alive" % n_alive)
        except TimeoutError as e:
            raise AssertionError("%s; last views: %s\n%s" % (e, last, self.log_tails(30)))

    def wait_state(self, observer, name, states, timeout):
        """Until observer lists member `name` in one of `states`; returns
        the seconds it took."""
        t0 = time.monotonic()
        last = {}

        def ok():
            st = self.states(observer)
            last["v"] = st
            return st.get(name) in states
        try:
            util.wait_until(ok, timeout, 0.05, what="%s to see %s as %s" % (
                observer.name, name, "/".join(states)))
        except TimeoutError as e:
            raise AssertionError("%s; last view: %s" % (e, last.get("v")))
        return time.monotonic() - t0

    def watch_state(self, observers, name, states, timeout):
        """Start watching, in a thread, until each observer lists `name` in
        one of `states`. Returns a function that waits for the watcher and
        gives {observer name: seconds from the start of the watch, or None}."""
        t0 = time.monotonic()
        seen = {o.name: None for o in observers}
        errors = []

        def run():
            for _ in range(int(timeout / 0.05) + 1):
                if time.monotonic() - t0 > timeout:
                    return
                for o in observers:
                    if seen[o.name] is not None:
                        continue
                    try:
                        if self.states(o).get(name) in states:
                            seen[o.name] = time.monotonic() - t0
                    except Exception as e:  # noqa: BLE001 - the last one is kept
                        errors[:] = [repr(e)]
                if all(v is not None for v in seen.values()):
                    return
                time.sleep(0.05)
        t = threading.Thread(target=run, name="watch-" + name, daemon=True)
        t.start()

        def result():
            t.join(timeout + 10)
            if errors and any(v is None for v in seen.values()):
                seen["last_error"] = errors[-1]
            return seen
        return result

    def metric_total(self, name, **labels):
        return sum(nd.metric_sum(name, **labels) for nd in self.running)

    def log_tails(self, n=60):
        out = []
        for nd in self.nodes:
            rc = nd.proc.returncode() if nd.proc else "stopped"
            out.append("--- regmesh %s log %s (exit: %s) ---\n%s" % (
                nd.name, nd.log_path, rc, util.tail(nd.log_path, n)))
        return "\n".join(out)

    def log_grep(self, *needles):
        """Lines of every node's log containing any needle: {name: [lines]}."""
        out = {}
        for nd in self.nodes:
            lines = [ln for ln in nd.log_text().splitlines() if any(x in ln for x in needles)]
            if lines:
                out[nd.name] = lines
        return out


@pytest.fixture
def make_fleet(regmesh_binary, test_dir, request):
    """Factory: make_fleet(upstream, n, **Fleet kwargs) -> a started Fleet
    (start=False to start it yourself). Every node is stopped by PID at
    teardown; their logs are printed if the test failed."""
    fleets = []

    def make(upstream, n, start=True, name="fleet", **kw):
        fl = Fleet(os.path.join(test_dir, "%s%d" % (name, len(fleets))), upstream, n,
                   binary=regmesh_binary, **kw)
        fleets.append(fl)
        if start:
            fl.start()
        return fl
    yield make
    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    for fl in fleets:
        crashed = [nd.name for nd in fl.nodes
                   if nd.proc is not None and nd.proc.returncode() not in (None,)]
        fl.stop_all()
        if failed or crashed:
            print("\n%s" % fl.log_tails(80))


# ---------------------------------------------------------------------------
# clients

def skopeo_copy(skopeo, src_ref, dest_dir, all_images=False, retry_times=0, timeout=300,
                check=True):
    """skopeo copy docker://src dir:dest with --retry-times N (Skopeo.copy
    pins 0). Returns CopyResult, or the CompletedProcess when check=False
    and it failed."""
    import shutil
    if os.path.exists(dest_dir):
        shutil.rmtree(dest_dir)
    os.makedirs(os.path.dirname(dest_dir), exist_ok=True)
    args = ["copy", "--src-tls-verify=false", "--retry-times", str(retry_times)]
    if all_images:
        args.append("--all")
    args += ["docker://" + src_ref, "dir:" + dest_dir]
    cp = skopeo._run(args, timeout=timeout, check=check)
    if cp.returncode != 0:
        return cp
    return clients.CopyResult(dest_dir)


def skopeo_copy_retrying(skopeo, src_ref, dest_dir, attempts, all_images=False, timeout=300):
    """What a build does around a pull that was cut: run it again, at most
    `attempts` times. Returns (CopyResult or None, [stderr of each failed
    attempt])."""
    failures = []
    for _ in range(attempts):
        res = skopeo_copy(skopeo, src_ref, dest_dir, all_images=all_images,
                          retry_times=3, timeout=timeout, check=False)
        if isinstance(res, clients.CopyResult):
            return res, failures
        failures.append(res.stderr.decode("utf-8", "replace")[-600:])
    return None, failures


def expected_content(img, all_images=False):
    """(manifest digests, blob digests) a client fetches for img by tag:
    an index without --all means the index and its amd64 child."""
    if img.is_index and not all_images:
        child = img.child("amd64")
        return [img.digest, child.digest], [b.digest for b in child.own_blobs()]
    return ([m.digest for m in img.all_manifests()], [b.digest for b in img.all_blobs()])


def manifest_get_targets(entries, tag_digests):
    """Map upstream manifest GET log entries to the digests they fetched:
    by digest, or by tag (tag_digests: {(repo, tag): digest})."""
    out = []
    for e in entries:
        repo, _, ref = e.path[len("/v2/"):].rpartition("/manifests/")
        if ref.startswith("sha256:"):
            out.append(ref)
        else:
            out.append(tag_digests.get((repo, ref), "%s:%s?" % (repo, ref)))
    return out


def wait_settled(nodes, timeout=15.0):
    """Until no node has a file in its tmp/ (downloads finished or dropped)."""
    last = {}

    def ok():
        for nd in nodes:
            last[nd.name] = nd.tmp_files()
        return not any(last.values())
    try:
        util.wait_until(ok, timeout, 0.1, what="tmp/ empty on every node")
    except TimeoutError as e:
        raise AssertionError("%s: %s" % (e, {k: v for k, v in last.items() if v}))


def run_members_cli(binary, admin, json_out=False, timeout=15):
    argv = [binary, "members", "--admin", admin] + (["--json"] if json_out else [])
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError("`%s` did not finish in %ss" % (" ".join(argv), timeout))
