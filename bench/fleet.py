#!/usr/bin/env python3
"""bench/fleet.py - a regmesh fleet next to independent distribution proxies.

Measures the fleet feature of docs/cluster.md on one machine, in one run,
against one upstream (Debian's docker-registry, whose access log counts what
it served), with distribution's registry in proxy mode side by side:

  1. cold fleet: N regmesh nodes forming one fleet (`cluster:` sections,
     a shared secret, each node joining all others), C clients per node
     pulling the same image at once: upstream blob bytes / image size and the
     wall time / one cold pull through a single regmesh node; the same with
     N independent distribution proxies;
  2. pull through a non-owner node: fresh fleet, one pull through node 0
     (every blob lands on its owner and on node 0), then a pull through
     node 1 (what node 1 does not own comes from peers) vs a warm pull
     through node 0 again; bytes from peers from regmesh_peer_bytes_total;
  4. cache warm: `regmesh cache warm` of the image through node 0 of a fresh
     fleet, timed against one cold pull through a single node, with the
     upstream bytes it cost and those of a pull through node 1 after it;
  3. idle gossip: N nodes with memberlist's default timings, bytes each
     node's gossip sends and receives over a window, counted three ways:
     iptables accounting rules (per node exact: nodes run under their own
     uids, TCP connections are attributed with connmark), tcpdump on lo
     (every gossip packet once) and the nodes' regmesh_gossip_* metrics.

With --upstream-mibps N, part 1 runs with the upstream behind a link of N MiB/s
(a forwarding proxy in this script, one token bucket per direction shared by
every connection, like one WAN link): every consumer of part 1 (single node,
fleet nodes, distribution proxies, direct pulls) fetches through it, and the
part-1 rows are those of that regime, labelled with the limit.

The process, upstream, image and client machinery is bench/run.py's,
imported (not copied). Python 3 standard library only. Run as root, the
script re-executes itself in a private mount and network namespace
(unshare --mount --net): skopeo's cache never reaches the real /var/lib,
the iptables rules of part 3 exist only there, and nothing of the run is
visible outside (everything listens on 127.0.0.1 of that namespace).
Exit status: 0 when everything could be measured (whatever the PASS/FAIL
lines say), 2 when something could not run, 130 on Ctrl-C.
"""

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as single  # noqa: E402  (bench/run.py: processes, upstream, images, clients)

MiB = single.MiB
KiB = 1024
NS_MARK = "RMFLEET_IN_NS"  # never REGISTRY_*: distribution reads those as config
UID_BASE = 61000           # part 3: node i runs as uid/gid UID_BASE + i
# layer sizes as shares of the image (8 layers spread the digests over the ring)
LAYER_SHARES = [64, 56, 48, 40, 40, 32, 24, 16]
Stats = single.Stats
BenchError = single.BenchError


def log(msg):
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# small helpers

_USED_PORTS = set()


def free_port(udp_too=False):
    """A TCP port free on 127.0.0.1 (and UDP too when asked), not handed out before."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port in _USED_PORTS:
                continue
            if udp_too:
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                        u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        _USED_PORTS.add(port)
        return port
    raise BenchError("no free port")


def http_get(port, path, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text):
    """Prometheus text -> {'name{labels}': value} (labels as written)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def metric_sum(metrics, name):
    """Sum of every series of `name` (any labels); None when there is none."""
    vals = [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]
    return sum(vals) if vals else None


def json_members(doc):
    """The member list of a /cluster/members answer, whatever its exact shape."""
    if isinstance(doc, dict):
        for k in ("members", "Members", "nodes"):
            if isinstance(doc.get(k), list):
                return doc[k]
        return []
    return doc if isinstance(doc, list) else []


def member_state(m):
    if isinstance(m, dict):
        for k in ("state", "status", "State", "Status"):
            if k in m:
                return str(m[k]).lower()
    return ""


def member_name(m):
    if isinstance(m, dict):
        for k in ("name", "Name", "node"):
            if k in m:
                return str(m[k])
        return ""
    return str(m)


ratio, rx = single.ratio, single.rx


# --------------------------------------------------------------------------
# pcap (tcpdump -w) reading: IPv4 length and ports of every packet

def read_pcap(path):
    """Yields (ts, proto, sport, dport, ip_len) for each IPv4 TCP/UDP packet."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise BenchError(f"{path}: not a pcap file")
    frac = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    linktype = struct.unpack(e + "I", data[20:24])[0] & 0x0FFFFFFF
    hdr = {1: 14, 113: 16, 276: 20, 0: 4, 12: 0, 101: 0}.get(linktype)
    if hdr is None:
        raise BenchError(f"{path}: link type {linktype} not handled")
    off = 24
    while off + 16 <= len(data):
        sec, sub, incl, orig = struct.unpack(e + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if linktype == 1 and pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[hdr:]
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        tot = struct.unpack(">H", ip[2:4])[0]
        proto = ip[9]
        if proto not in (6, 17) or len(ip) < ihl + 4:
            continue
        sport, dport = struct.unpack(">HH", ip[ihl:ihl + 4])
        yield sec + sub * frac, ("tcp" if proto == 6 else "udp"), sport, dport, tot, tot - ihl - 8


# --------------------------------------------------------------------------
# --upstream-mibps: the upstream behind one slow link

class Link:
    """One direction of a link of `rate` bytes/s, shared by every connection (GCRA token bucket:
    a sender reserves its chunk's transmission time in order and sleeps until its turn; bursts up
    to `burst` bytes pass at once after an idle spell). Counts what went through."""

    def __init__(self, rate, burst):
        self.rate = float(rate)
        self.tau = burst / self.rate
        self.lock = threading.Lock()
        self.tat = time.monotonic()  # when the bytes reserved so far will have been sent
        self.bytes = 0
        self.last = 0.0              # monotonic time of the last chunk through

    def take(self, n):
        with self.lock:
            now = time.monotonic()
            tat = max(self.tat, now)
            start = tat - self.tau
            self.tat = tat + n / self.rate
            self.bytes += n
        if start > now:
            time.sleep(start - now)
        self.last = time.monotonic()


class Throttle:
    """TCP forwarder on 127.0.0.1:port to 127.0.0.1:target, every byte paced by a Link per
    direction (down: upstream to consumers, up: requests), threads only, standard library."""

    CHUNK = 64 * KiB

    def __init__(self, target, mibps):
        self.target = target
        rate = mibps * MiB
        self.down = Link(rate, self.CHUNK)
        self.up = Link(rate, self.CHUNK)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.conns = 0
        self.stopping = False
        self.conn_socks = set()
        self.clock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, name="throttle-accept", daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _pump(self, src, dst, link):
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                link.take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _serve(self, c):
        try:
            u = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            u.settimeout(None)
        except OSError:
            c.close()
            return
        for x in (c, u):
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.clock:
            self.conns += 1
            self.conn_socks.update((c, u))
        t = threading.Thread(target=self._pump, args=(u, c, self.down), daemon=True)
        t.start()
        self._pump(c, u, self.up)
        t.join()
        with self.clock:
            self.conn_socks.difference_update((c, u))
        c.close()
        u.close()

    def idle_for(self):
        """Seconds since the last byte went through in either direction."""
        return time.monotonic() - max(self.down.last, self.up.last)

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.clock:
            socks = list(self.conn_socks)
        for x in socks:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------
# the run

class Ctx(single.WorkDirs):
    """What run.py's pull helpers read from their cfg argument, plus our state."""

    def __init__(self, args, tmp):
        self.a = args
        self.tmp = tmp
        self.skopeo = shutil.which("skopeo") if not args.python_puller else None
        single.make_client_dirs(self, tmp)
        self.counter = 0
        self.errors = []
        self.notes = []
        self.rm_log_errors = []
        self.res = {}
        self.load0 = single.loadavg()
        self.secret = base64.b64encode(os.urandom(32)).decode()
        self.fleet_block = None  # why the fleet cannot run (once known)
        self.has_rm = args.regmesh_bin is not None
        self.has_d = not args.no_distribution
        self.throttle = None    # part 1 with --upstream-mibps: the Throttle in front of the upstream

    def error(self, what, e):
        msg = f"{what}: {e}"
        self.errors.append(msg)
        log(f"ERROR {msg}")

    # -- upstream and content ---------------------------------------------
    def start_upstream(self):
        self.upstream = single.start_upstream_registry(self._dir("upstream"), free_port())
        port = self.upstream.port
        self.alog = single.AccessLog(self.upstream.out_path)
        self.up_port = port  # where proxies and regmesh nodes fetch from (the Throttle's port in part 1)
        log(f"upstream docker-registry on 127.0.0.1:{port}")

    def push_image(self):
        total = self.a.size_mib * MiB
        up = single.Pusher(self.upstream.port)
        t0 = time.monotonic()
        self.image_digest, self.blobs = single.push_image(
            up, [max(4096, int(total * share / sum(LAYER_SHARES))) for share in LAYER_SHARES])
        self.image_bytes = sum(n for _, n in self.blobs)
        up.close()
        log(f"pushed {single.IMAGE_NAME}:{single.IMAGE_TAG}: {len(LAYER_SHARES)} layers + config = "
            f"{self.image_bytes / MiB:.1f} MiB, {self.image_digest[:19]}, in {time.monotonic() - t0:.1f}s")

    # -- servers ------------------------------------------------------------
    def start_distribution(self):
        d = self._dir("distribution")
        port = free_port()
        cfgp = os.path.join(d, "config.yml")
        single.write_distribution_config(cfgp, port, os.path.join(d, "storage"),
                                         remote=f"http://127.0.0.1:{self.up_port}", accesslog=False)
        return single.Server("distribution", "distribution", [single.DISTRIBUTION_BIN, "serve", cfgp],
                             port, d, single.registry_env()).start()

    def regmesh_config(self, d, port, cluster=None):
        lines = [f"listen: 127.0.0.1:{port}", "log_level: warn", "access_log: false", "storage:",
                 f"  root: {os.path.join(d, 'data')}", "  max_size: 20GiB", "upstreams:",
                 "  - host: docker.io", f"    url: http://127.0.0.1:{self.up_port}",
                 "    default: true", "    tag_ttl: 60s"]
        if cluster:
            lines.append("cluster:")
            for k, v in cluster.items():
                if isinstance(v, list):
                    lines.append(f"  {k}:")
                    lines += [f"    - {x}" for x in v]
                else:
                    lines.append(f"  {k}: {v}")
        p = os.path.join(d, "regmesh.yml")
        with open(p, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(p, 0o644)
        return p

    def start_regmesh(self, label, cluster=None, d=None, port=None, uid=None):
        d = d or self._dir(label)
        port = port or free_port()
        cfgp = self.regmesh_config(d, port, cluster)
        argv = [self.a.regmesh_bin, "serve", "--config", cfgp]
        if uid is not None:
            os.chown(d, uid, uid)
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] + argv
        return single.Server(label, "regmesh", argv, port, d).start()

    def stop_server(self, srv):
        if srv is None or srv.proc is None:
            return
        srv.stop()
        if srv.kind == "regmesh":
            self.rm_log_errors += [f"{srv.label}: {x}" for x in single.error_lines(srv.err_path)]
            if srv.proc.returncode not in (0, -signal.SIGTERM):
                self.notes.append(f"regmesh ({srv.label}) exited with {srv.proc.returncode} when "
                                  "stopped with SIGTERM")
        if not self.a.keep_tmp:
            shutil.rmtree(srv.workdir, ignore_errors=True)

    def metrics(self, port):
        st, body = http_get(port, "/metrics")
        if st != 200:
            raise BenchError(f"GET :{port}/metrics -> {st}")
        return parse_metrics(body.decode("utf-8", "replace"))

    # -- clients ----------------------------------------------------------
    def pull_multi(self, ports, timeout=1200.0):
        """One pull per entry of ports, all started at once: (wall s, [pull s], [errors])."""
        env = single.skopeo_env(self)
        procs, errs, ends = [], [], {}
        t0 = time.perf_counter()
        try:
            for port in ports:
                d = tempfile.mkdtemp(prefix="pull-", dir=self.pulls)
                e = open(d + ".err", "wb")
                procs.append((single.spawn(single.pull_argv(self, port, d), stdout=subprocess.DEVNULL,
                                           stderr=e, env=env), e, d, port))
            deadline = time.monotonic() + timeout
            while len(ends) < len(procs) and time.monotonic() < deadline:
                for i, (p, _, _, _) in enumerate(procs):
                    if i not in ends and p.poll() is not None:
                        ends[i] = time.perf_counter() - t0
                if len(ends) < len(procs):
                    time.sleep(0.005)
            wall = time.perf_counter() - t0
            for i, (p, e, d, port) in enumerate(procs):
                if p.poll() is None:
                    single.stop_proc(p)
                    errs.append(f"pull {i} (:{port}) timed out after {timeout:.0f}s")
                else:
                    single.reap(p)
                    if p.returncode != 0:
                        e.flush()
                        errs.append(f"pull {i} (:{port}) exit {p.returncode}: {single.tail(d + '.err', 4)}")
        finally:
            for p, e, d, _ in procs:
                if p.poll() is None:
                    single.stop_proc(p)
                e.close()
                shutil.rmtree(d, ignore_errors=True)
                try:
                    os.unlink(d + ".err")
                except OSError:
                    pass
        return wall, [ends[i] for i in sorted(ends)], errs

    def pull_one(self, port):
        wall, _, errs = self.pull_multi([port])
        if errs:
            raise BenchError(f"pull from :{port} failed: " + "; ".join(errs))
        return wall

    def counted(self, fn, *a):
        """Run fn with the upstream log marked; returns (fn's result, upstream blob bytes)."""
        off = self.alog.mark()
        r = fn(*a)
        if self.throttle:
            self.throttle_settle()  # the upstream logs a GET before its last bytes leave the link
            self.alog.settle(min(self.a.settle, 0.3))
        else:
            self.alog.settle(self.a.settle)
        return r, self.alog.blob_get_bytes_since(off)

    def throttle_settle(self, timeout=300.0):
        """Wait until no byte went through the throttled link for --settle seconds: a proxy that
        still fetches after its clients are done (distribution) writes its log line only when the
        slow transfer ends, so a quiet log alone does not mean the upstream is done."""
        deadline = time.monotonic() + timeout
        while self.throttle.idle_for() < self.a.settle:
            if time.monotonic() > deadline:
                log(f"warning: throttled link still busy {timeout:.0f}s after the pulls ended")
                return
            time.sleep(0.1)


class Fleet:
    """N regmesh nodes that form one fleet, each joining all the others."""

    def __init__(self, ctx, tag, n, uids=None, timings=None):
        self.ctx, self.tag, self.n = ctx, tag, n
        self.uids = uids
        self.timings = timings or {}
        self.nodes = []
        self.dirs = [ctx._dir(f"{tag}-{i}") for i in range(n)]
        self.ports = [free_port() for _ in range(n)]
        self.gports = [free_port(udp_too=True) for _ in range(n)]
        self.pports = [free_port() for _ in range(n)]
        self.names = [f"{tag}-{i}" for i in range(n)]

    def cluster_section(self, i):
        c = {"name": self.names[i], "bind": f"127.0.0.1:{self.gports[i]}",
             "peer_listen": f"127.0.0.1:{self.pports[i]}",
             "join": [f"127.0.0.1:{g}" for j, g in enumerate(self.gports) if j != i],
             "secret": self.ctx.secret}
        c.update(self.timings)
        return c

    def check_config(self):
        """`regmesh check-config` on node 0's file: None, or why the fleet cannot run."""
        p = self.ctx.regmesh_config(self.dirs[0], self.ports[0], self.cluster_section(0))
        r = subprocess.run([self.ctx.a.regmesh_bin, "check-config", p], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        if r.returncode != 0:
            return (r.stdout.decode("utf-8", "replace").strip().splitlines() or ["?"])[-1]
        return None

    def start(self, converge_timeout=60.0):
        if self.ctx.fleet_block:
            raise BenchError(self.ctx.fleet_block)
        if self.ctx.fleet_block is None:
            why = self.check_config()
            if why:
                self.ctx.fleet_block = f"regmesh rejects the cluster configuration: {why}"
                raise BenchError(self.ctx.fleet_block)
            self.ctx.fleet_block = ""
        try:
            for i in range(self.n):
                self.nodes.append(self.ctx.start_regmesh(
                    self.names[i], self.cluster_section(i), self.dirs[i], self.ports[i],
                    None if self.uids is None else self.uids[i]))
            t0 = time.monotonic()
            self.wait_converged(converge_timeout)
            log(f"fleet {self.tag}: {self.n} nodes alive on every node after "
                f"{time.monotonic() - t0:.1f}s (registry ports {self.ports}, gossip {self.gports})")
        except BaseException:
            self.stop()
            raise
        return self

    def alive_seen(self, i):
        """How many members node i reports alive (metric, else /cluster/members)."""
        try:
            m = self.ctx.metrics(self.ports[i])
            for k, v in m.items():
                if k.startswith("regmesh_cluster_members{") and 'state="alive"' in k:
                    return int(v)
            st, body = http_get(self.ports[i], "/cluster/members")
            if st == 200:
                return sum(1 for x in json_members(json.loads(body)) if member_state(x) == "alive")
        except (OSError, ValueError, BenchError):
            pass
        return 0

    def wait_converged(self, timeout):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            for s in self.nodes:
                if not s.alive():
                    raise BenchError(f"{s.label} exited with {s.proc.returncode}:\n"
                                     f"{single.tail(s.err_path)}")
            seen = [self.alive_seen(i) for i in range(self.n)]
            if all(x >= self.n for x in seen):
                return
            time.sleep(0.2)
        raise BenchError(f"fleet {self.tag} did not converge in {timeout:.0f}s: alive members seen "
                         f"per node {seen}; node 0 log:\n{single.tail(self.nodes[0].err_path)}")

    def first_owner(self, digest):
        """Name of the first owner of digest (GET /cluster/owners on node 0), or None."""
        try:
            st, body = http_get(self.ports[0], "/cluster/owners?digest=" + urllib.parse.quote(digest))
            if st != 200:
                return None
            doc = json.loads(body)
            lst = doc
            if isinstance(doc, dict):
                lst = next((doc[k] for k in ("owners", "preference", "nodes", "members")
                            if isinstance(doc.get(k), list)), [])
            return member_name(lst[0]) if lst else None
        except (OSError, ValueError, IndexError):
            return None

    def metric_sum(self, i, name):
        try:
            return metric_sum(self.ctx.metrics(self.ports[i]), name)
        except (OSError, BenchError):
            return None

    def stop(self):
        for s in self.nodes:
            self.ctx.stop_server(s)
        self.nodes = []
        if not self.ctx.a.keep_tmp:
            for d in self.dirs:
                shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------
# part 1: cold pulls, one client vs N x C clients

def part_cold(ctx):
    a = ctx.a
    N, C = a.nodes, a.clients
    items = ["direct-1"]
    if ctx.has_d:
        items += ["distribution-1", f"distribution-{N}x{C}"]
    if ctx.has_rm:
        items += ["regmesh-1", f"fleet-{N}x{C}"]
    if not a.upstream_mibps:  # over the link it would take N*C images' time, known in advance
        items.append(f"direct-{N}x{C}")
    log("part 1: warm-up direct pull")
    ctx.pull_one(ctx.upstream.port)
    ctx.alog.settle(0.5)
    R = {k: {"wall": [], "bytes": [], "fails": [], "peer": [], "pulls": [], "link": []} for k in items}
    thr = None
    if a.upstream_mibps:
        thr = ctx.throttle = Throttle(ctx.upstream.port, a.upstream_mibps)
        ctx.up_port = thr.port
        floor = ctx.image_bytes / (a.upstream_mibps * MiB)
        log(f"part 1: upstream behind a {a.upstream_mibps:g} MiB/s link (127.0.0.1:{thr.port}, shared by "
            f"every connection): one image takes >= {floor:.1f}s over it; no {N * C} direct pulls "
            f"(>= {N * C * floor:.0f}s over it)")
    try:
        for rep in range(a.reps):
            order = items[rep % len(items):] + items[:rep % len(items)]
            for item in order:
                servers, fleet = [], None
                link0 = thr.down.bytes if thr else 0
                try:
                    if item == "direct-1":
                        t, b = ctx.counted(ctx.pull_one, ctx.up_port)
                        R[item]["wall"].append(t)
                        R[item]["bytes"].append(b)
                    elif item in ("distribution-1", "regmesh-1"):
                        srv = (ctx.start_distribution() if item[0] == "d"
                               else ctx.start_regmesh("regmesh-single"))
                        servers.append(srv)
                        t, b = ctx.counted(ctx.pull_one, srv.port)
                        R[item]["wall"].append(t)
                        R[item]["bytes"].append(b)
                    else:
                        if item.startswith("fleet"):
                            fleet = Fleet(ctx, f"cold{rep}", N).start()
                            ports = fleet.ports
                        elif item.startswith("distribution"):
                            for _ in range(N):
                                servers.append(ctx.start_distribution())
                            ports = [s.port for s in servers]
                        else:
                            ports = [ctx.upstream.port] * N
                        (wall, per, errs), b = ctx.counted(ctx.pull_multi, ports * C)
                        R[item]["wall"].append(wall)
                        R[item]["bytes"].append(b)
                        R[item]["fails"].append(len(errs))
                        R[item]["pulls"] += per
                        for e in errs[:3]:
                            log(f"  {item}: {e.splitlines()[0][:300]}")
                        if fleet:
                            # a node that got nothing from peers has no series yet
                            peer = [fleet.metric_sum(i, "regmesh_peer_bytes_total") for i in range(N)]
                            if any(x is not None for x in peer):
                                R[item]["peer"].append(sum(x or 0 for x in peer))
                            else:
                                ctx.notes.append("regmesh_peer_bytes_total on no fleet node's /metrics")
                    i = R[item]
                    if thr:
                        i["link"].append(thr.down.bytes - link0)
                    log(f"part 1 rep {rep + 1}/{a.reps} {item:22s} wall {i['wall'][-1]:7.2f}s  upstream blob "
                        f"bytes {i['bytes'][-1] / ctx.image_bytes:5.2f}x image"
                        + (f", {i['fails'][-1]} pulls failed" if i["fails"] else "")
                        + (f", peer bytes {i['peer'][-1] / ctx.image_bytes:.2f}x image" if i["peer"] else "")
                        + (f", through the link {i['link'][-1] / ctx.image_bytes:.2f}x image" if thr else ""))
                except BenchError as e:
                    ctx.error(f"part 1 {item}", str(e).splitlines()[0] if ctx.fleet_block else e)
                    if ctx.fleet_block and item.startswith("fleet"):
                        items.remove(item)  # no point in retrying every rep
                finally:
                    if fleet:
                        fleet.stop()
                    for s in servers:
                        ctx.stop_server(s)
    finally:
        if thr:
            thr.stop()
            ctx.throttle = None
            ctx.up_port = ctx.upstream.port
    ctx.res["cold"] = R


# --------------------------------------------------------------------------
# part 2: pull through a node that does not own the blobs

def part_peer(ctx):
    a = ctx.a
    R = {k: [] for k in ("rm_cold0", "rm_peer", "rm_warm", "rm_peer_bytes", "rm_peer_up", "rm_expect",
                         "rm_peer_hits", "d_cold0", "d_other", "d_warm", "d_other_up", "direct")}
    for rep in range(a.reps):
        # direct pull: the baseline
        try:
            R["direct"].append(ctx.pull_one(ctx.upstream.port))
        except BenchError as e:
            ctx.error("part 2 direct pull", e)
        if ctx.has_rm and not ctx.fleet_block:
            fleet = None
            try:
                fleet = Fleet(ctx, f"peer{rep}", a.nodes).start()
                t0, b0 = ctx.counted(ctx.pull_one, fleet.ports[0])
                R["rm_cold0"].append(t0)
                own1 = [fleet.first_owner(d) for d, _ in ctx.blobs]
                if all(own1):
                    R["rm_expect"].append(sum(n for (_, n), o in zip(ctx.blobs, own1)
                                              if o != fleet.names[1]))
                    log(f"part 2 rep {rep + 1}: first owners of the image's blobs: "
                        + ", ".join(f"{o.split('-')[-1]}" for o in own1)
                        + f" (node 1 owns {sum(1 for o in own1 if o == fleet.names[1])} of {len(own1)})")
                pb0 = fleet.metric_sum(1, "regmesh_peer_bytes_total")
                ph0 = fleet.metric_sum(1, 'regmesh_hits_total{source="peer"}')
                # the pull through node 1 and the warm pull through node 0, order alternating
                steps = [("peer", 1), ("warm", 0)]
                if rep % 2:
                    steps.reverse()
                for what, node in steps:
                    t, b = ctx.counted(ctx.pull_one, fleet.ports[node])
                    R["rm_" + what].append(t)
                    if what == "peer":
                        R["rm_peer_up"].append(b)
                        pb1 = fleet.metric_sum(1, "regmesh_peer_bytes_total")
                        ph1 = fleet.metric_sum(1, 'regmesh_hits_total{source="peer"}')
                        if pb1 is not None:  # no series before the first peer byte
                            R["rm_peer_bytes"].append(pb1 - (pb0 or 0))
                        else:
                            R["rm_peer_bytes"].append(0)
                        if ph1 is not None:
                            R["rm_peer_hits"].append(ph1 - (ph0 or 0))
                log(f"part 2 rep {rep + 1}/{a.reps} regmesh: cold via node 0 {t0:.2f}s (upstream "
                    f"{b0 / ctx.image_bytes:.2f}x), via node 1 {R['rm_peer'][-1]:.2f}s (upstream "
                    f"{R['rm_peer_up'][-1] / ctx.image_bytes:.2f}x, from peers "
                    + (f"{R['rm_peer_bytes'][-1] / ctx.image_bytes:.2f}x" if R["rm_peer_bytes"] else "-")
                    + f"), warm via node 0 {R['rm_warm'][-1]:.2f}s")
            except BenchError as e:
                ctx.error("part 2 regmesh", str(e).splitlines()[0] if ctx.fleet_block else e)
            finally:
                if fleet:
                    fleet.stop()
        if ctx.has_d:
            d0 = d1 = None
            try:
                d0, d1 = ctx.start_distribution(), ctx.start_distribution()
                t0, _ = ctx.counted(ctx.pull_one, d0.port)
                R["d_cold0"].append(t0)
                steps = [("other", d1), ("warm", d0)]
                if rep % 2:
                    steps.reverse()
                for what, srv in steps:
                    t, b = ctx.counted(ctx.pull_one, srv.port)
                    R["d_" + what].append(t)
                    if what == "other":
                        R["d_other_up"].append(b)
                log(f"part 2 rep {rep + 1}/{a.reps} distribution: cold via proxy 0 {t0:.2f}s, via proxy 1 "
                    f"{R['d_other'][-1]:.2f}s (upstream {R['d_other_up'][-1] / ctx.image_bytes:.2f}x), "
                    f"warm via proxy 0 {R['d_warm'][-1]:.2f}s")
            except BenchError as e:
                ctx.error("part 2 distribution", e)
            finally:
                ctx.stop_server(d0)
                ctx.stop_server(d1)
    ctx.res["peer"] = R


# --------------------------------------------------------------------------
# part 3: idle gossip traffic

class Accounting:
    """iptables rules in our private network namespace: bytes each node sends and receives on
    its gossip port. Every packet on lo passes OUTPUT once. Node i runs as uid U_i: its UDP
    packets are matched by owner; a TCP connection gets the dialer's uid as connmark on its
    first packet, so both directions are attributed even for packets the kernel sends alone
    (ACKs after close); the listener side is matched by port."""

    def __init__(self, gports, uids):
        self.gports, self.uids = gports, uids
        self.chains = ["RMF_G", "RMF_UDP", "RMF_TCP"] + [f"RMF_{d}{i}" for i in range(len(gports))
                                                          for d in "SR"]

    def _ipt(self, *args):
        r = subprocess.run(["iptables", "-w", "5"] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        if r.returncode != 0:
            raise BenchError(f"iptables {' '.join(args)}: {r.stdout.decode(errors='replace').strip()}")

    def install(self):
        gp = ",".join(str(g) for g in self.gports)
        for c in self.chains:
            self._ipt("-N", c)
        for proto in ("udp", "tcp"):
            self._ipt("-A", "OUTPUT", "-p", proto, "-m", "multiport", "--ports", gp, "-j", "RMF_G")
        self._ipt("-A", "RMF_G", "-p", "udp", "-j", "RMF_UDP")
        self._ipt("-A", "RMF_G", "-p", "tcp", "-j", "RMF_TCP")
        for i, (g, u) in enumerate(zip(self.gports, self.uids)):
            S, R, g, u = f"RMF_S{i}", f"RMF_R{i}", str(g), str(u)
            self._ipt("-A", "RMF_G", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-m", "owner",
                      "--uid-owner", u, "-j", "CONNMARK", "--set-mark", u)
            self._ipt("-A", "RMF_G", "-p", "udp", "-m", "owner", "--uid-owner", u, "-j", S)
            self._ipt("-A", "RMF_G", "-p", "udp", "--dport", g, "-j", R)
            self._ipt("-A", "RMF_G", "-p", "tcp", "-m", "connmark", "--mark", u, "-m", "conntrack",
                      "--ctdir", "ORIGINAL", "-j", S)
            self._ipt("-A", "RMF_G", "-p", "tcp", "-m", "connmark", "--mark", u, "-m", "conntrack",
                      "--ctdir", "REPLY", "-j", R)
            self._ipt("-A", "RMF_G", "-p", "tcp", "--dport", g, "-m", "conntrack", "--ctdir",
                      "ORIGINAL", "-j", R)
            self._ipt("-A", "RMF_G", "-p", "tcp", "--sport", g, "-m", "conntrack", "--ctdir",
                      "REPLY", "-j", S)

    def read(self):
        """{target chain: bytes} from the jump rules' counters."""
        r = subprocess.run(["iptables-save", "-c", "-t", "filter"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        if r.returncode != 0:
            raise BenchError("iptables-save failed: " + r.stdout.decode(errors="replace"))
        out = {}
        for line in r.stdout.decode().splitlines():
            m = re.match(r"^\[(\d+):(\d+)\] -A RMF_G .* -j (RMF_\w+)", line)
            if m:
                out[m.group(3)] = out.get(m.group(3), 0) + int(m.group(2))
        return out

    def remove(self):
        gp = ",".join(str(g) for g in self.gports)
        for proto in ("udp", "tcp"):
            subprocess.run(["iptables", "-w", "5", "-D", "OUTPUT", "-p", proto, "-m", "multiport",
                            "--ports", gp, "-j", "RMF_G"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        for c in self.chains:
            subprocess.run(["iptables", "-w", "5", "-F", c], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        for c in self.chains:
            subprocess.run(["iptables", "-w", "5", "-X", c], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


def gossip_metric_bytes(m):
    """(sent, received, [series]) of the regmesh_gossip_* byte counters in one scrape."""
    sent = recv = 0.0
    found, ks, kr = [], False, False
    for k, v in m.items():
        if not k.startswith("regmesh_gossip_") or "bytes" not in k:
            continue
        found.append(k)
        low = k.lower()
        if re.search(r"sent|send|_tx|_out|\"out\"|\"tx\"|egress|written", low):
            sent += v
            ks = True
        elif re.search(r"recv|receiv|_rx|_in[_{]|_in$|\"in\"|\"rx\"|ingress|read", low):
            recv += v
            kr = True
    return (sent if ks else None), (recv if kr else None), sorted(found)


def part_gossip(ctx):
    a = ctx.a
    N, W = a.nodes, a.gossip_secs
    R = ctx.res["gossip"] = {}
    if not ctx.has_rm:
        return
    if ctx.fleet_block:
        ctx.error("part 3 gossip", ctx.fleet_block)
        return
    in_ns = os.environ.get(NS_MARK) == "1" and ctx.netns
    use_ipt = in_ns and os.geteuid() == 0 and shutil.which("iptables") and shutil.which("setpriv")
    use_tcpdump = os.geteuid() == 0 and shutil.which("tcpdump")
    if not use_ipt:
        ctx.notes.append("part 3: no iptables accounting (needs root in the private network "
                         "namespace, iptables and setpriv)")
    if not use_tcpdump:
        ctx.notes.append("part 3: no tcpdump count (needs root and tcpdump)")
    uids = [UID_BASE + i for i in range(N)] if use_ipt else None
    # memberlist's LAN defaults, spelt out (gossip 200ms has no key: the node's default)
    timings = {"probe_interval": "1s", "probe_timeout": "500ms", "push_pull_interval": "30s"}
    fleet = Fleet(ctx, "idle", N, uids=uids, timings=timings)
    acct, tcpd = None, None
    pcap = os.path.join(ctx.tmp, "gossip.pcap")
    try:
        if use_ipt:
            os.chmod(ctx.tmp, 0o711)  # the nodes' uids must reach the binary and their dirs
            acct = Accounting(fleet.gports, uids)
            acct.install()  # before the nodes start: every connection is tracked from its SYN
        fleet.start()
        log(f"part 3: {N} idle nodes up; settling {a.gossip_settle:.0f}s before the {W:.0f}s window")
        time.sleep(a.gossip_settle)
        if use_tcpdump:
            filt = " or ".join(f"port {g}" for g in fleet.gports)
            err = os.path.join(ctx.tmp, "tcpdump.err")
            tcpd = single.spawn(["timeout", "-s", "INT", str(int(W + 30)), "tcpdump", "-i", "lo", "-n",
                                 "-s", "128", "-U", "-w", pcap, filt],
                                stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "listening on" not in single.tail(err, 5):
                time.sleep(0.05)
            time.sleep(0.2)
        m0 = [ctx.metrics(p) for p in fleet.ports]
        c0 = acct.read() if acct else None
        t0 = time.time()
        time.sleep(W)
        t1 = time.time()
        c1 = acct.read() if acct else None
        m1 = [ctx.metrics(p) for p in fleet.ports]
        dt = t1 - t0
        R["secs"] = dt
        R["alive_end"] = [fleet.alive_seen(i) for i in range(N)]
        if tcpd:
            time.sleep(0.3)
            tcpd.send_signal(signal.SIGINT)
            try:
                single.reap(tcpd, timeout=10)
            except subprocess.TimeoutExpired:
                single.stop_proc(tcpd)
            drops = re.search(r"(\d+) packets? dropped by kernel", single.tail(err, 10))
            if drops and int(drops.group(1)):
                ctx.notes.append(f"tcpdump: {drops.group(1)} packets dropped by kernel")
            gp = {g: i for i, g in enumerate(fleet.gports)}
            tot = {"udp": 0, "tcp": 0}
            udp_sent, udp_recv = [0] * N, [0] * N
            udp_pay = [0] * N  # UDP payload sent+received: what the node's counter counts
            tcp_listen = [0] * N
            for ts, proto, sp, dp, ln, pay in read_pcap(pcap):
                if not (t0 <= ts <= t1):
                    continue
                tot[proto] += ln
                if proto == "udp":
                    if sp in gp:
                        udp_sent[gp[sp]] += ln
                        udp_pay[gp[sp]] += pay
                    if dp in gp:
                        udp_recv[gp[dp]] += ln
                        udp_pay[gp[dp]] += pay
                else:
                    for p in {sp, dp} & set(gp):
                        tcp_listen[gp[p]] += ln
            R["td_total"] = (tot["udp"] + tot["tcp"]) / dt
            R["td_udp"] = tot["udp"] / dt
            R["td_tcp"] = tot["tcp"] / dt
            R["td_udp_node"] = [(s + r) / dt for s, r in zip(udp_sent, udp_recv)]
            R["td_tcp_listen"] = [x / dt for x in tcp_listen]
            R["td_udp_payload"] = [x / dt for x in udp_pay]
        if acct:
            d = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}
            sent = [d.get(f"RMF_S{i}", 0) for i in range(N)]
            recv = [d.get(f"RMF_R{i}", 0) for i in range(N)]
            total = d.get("RMF_UDP", 0) + d.get("RMF_TCP", 0)
            R["ipt_sent"] = [x / dt for x in sent]
            R["ipt_recv"] = [x / dt for x in recv]
            R["ipt_total"] = total / dt
            R["ipt_udp"] = d.get("RMF_UDP", 0) / dt
            if total != sum(sent) or total != sum(recv):  # each packet has one sender, one receiver
                ctx.notes.append(f"iptables: of {total} gossip bytes, {sum(sent)} attributed to a "
                                 f"sender and {sum(recv)} to a receiver")
        ms, mr, found = [], [], set()
        for x0, x1 in zip(m0, m1):
            s0, r0, f0 = gossip_metric_bytes(x0)
            s1, r1, f1 = gossip_metric_bytes(x1)
            found.update(f1)
            ms.append(None if s1 is None else (s1 - s0) / dt)
            mr.append(None if r1 is None else (r1 - r0) / dt)
        R["m_series"] = sorted(found)
        if found:
            R["m_sent"], R["m_recv"] = ms, mr
            log("part 3: node gossip byte counters: " + ", ".join(sorted(found)))
        else:
            log("part 3: no regmesh_gossip_*bytes* series in /metrics")
        for i in range(N):
            parts = [f"node {i}:"]
            if acct:
                parts.append(f"iptables sent {R['ipt_sent'][i] / KiB:.3f} recv {R['ipt_recv'][i] / KiB:.3f} KiB/s")
            if "td_total" in R:
                parts.append(f"tcpdump UDP {R['td_udp_node'][i] / KiB:.3f}, TCP as listener "
                             f"{R['td_tcp_listen'][i] / KiB:.3f} KiB/s")
            if found:
                parts.append(f"metrics sent {'-' if ms[i] is None else f'{ms[i] / KiB:.3f}'} recv "
                             f"{'-' if mr[i] is None else f'{mr[i] / KiB:.3f}'} KiB/s")
            log("part 3 " + " ".join(parts))
    except BenchError as e:
        ctx.error("part 3 gossip", str(e).splitlines()[0] if ctx.fleet_block else e)
    finally:
        if tcpd and tcpd.poll() is None:
            single.stop_proc(tcpd)
        fleet.stop()
        if acct:
            acct.remove()
        if not a.keep_tmp:
            try:
                os.unlink(pcap)
            except OSError:
                pass


# --------------------------------------------------------------------------
# report

# --------------------------------------------------------------------------
# part 4: `regmesh cache warm` across the fleet

def part_warm(ctx):
    """A fresh fleet, `regmesh cache warm` of the image through node 0 (every blob to its owner
    and to node 0), against one cold pull through a single regmesh node in the same rep; then a
    pull through node 1, which the warm should have made free of upstream bytes."""
    a = ctx.a
    R = {k: [] for k in ("single", "single_up", "warm", "warm_up", "after", "after_up")}
    ref = f"{single.IMAGE_NAME}:{single.IMAGE_TAG}"
    if not ctx.has_rm or ctx.fleet_block:
        ctx.res["warm"] = R
        return
    for rep in range(a.reps):
        srv = fleet = None
        try:
            srv = ctx.start_regmesh("regmesh-single")
            t, b = ctx.counted(ctx.pull_one, srv.port)
            R["single"].append(t)
            R["single_up"].append(b)
            ctx.stop_server(srv)
            srv = None
            fleet = Fleet(ctx, f"warm{rep}", a.nodes).start()

            def warm():
                t0 = time.monotonic()
                r = subprocess.run([a.regmesh_bin, "cache", "warm", ref, "--node",
                                    f"http://127.0.0.1:{fleet.ports[0]}"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
                if r.returncode != 0:
                    raise BenchError("regmesh cache warm: " + r.stdout.decode(errors="replace")[-500:])
                return time.monotonic() - t0
            t, b = ctx.counted(warm)
            R["warm"].append(t)
            R["warm_up"].append(b)
            t, b = ctx.counted(ctx.pull_one, fleet.ports[1])
            R["after"].append(t)
            R["after_up"].append(b)
            log(f"part 4 rep {rep + 1}/{a.reps}: single cold pull {R['single'][-1]:.2f}s, warm through "
                f"node 0 of {a.nodes} {R['warm'][-1]:.2f}s (upstream {R['warm_up'][-1] / ctx.image_bytes:.2f}x "
                f"image), then a pull through node 1 {t:.2f}s (upstream {b / ctx.image_bytes:.2f}x)")
        except BenchError as e:
            ctx.error("part 4", e)
        finally:
            if fleet:
                fleet.stop()
            if srv:
                ctx.stop_server(srv)
    ctx.res["warm"] = R


def report(ctx):
    a = ctx.a
    N, C = a.nodes, a.clients
    NC = f"{N}x{C}"
    rows, verdicts = [], []
    img = ctx.image_bytes

    def col_rm(text):
        return text if ctx.has_rm else "n/a"

    def col_d(text):
        return text if ctx.has_d else "(skipped)"

    def verdict(ok, text):
        if not ctx.has_rm:
            verdicts.append(("SKIP", text + " (regmesh not run)"))
        elif ok is None:
            verdicts.append(("FAIL", text + " (not measured)"))
        else:
            verdicts.append(("PASS" if ok else "FAIL", text))

    marks = {}  # part -> (first row, first verdict): parts not run are left out of the table

    # part 1
    marks["1"] = (len(rows), len(verdicts))
    R = ctx.res.get("cold", {})
    L = a.upstream_mibps
    T = f"[upstream {L:g} MiB/s] " if L else ""  # part 1's labels in the throttled regime
    if L:
        floor1 = img / (L * MiB)
        rows.append([f"{T}link floor: image / {L:g} MiB/s, s", col_rm("-"), col_d("-"), f"{floor1:.2f}",
                     f"{N * C} direct pulls over the link: >= {N * C * floor1:.0f} (not run)",
                     "(info: 1 image over the link)"])

    def st(item, key, scale=1.0):
        v = R.get(item, {}).get(key, [])
        return Stats([x / scale for x in v])

    def fails(item):
        f = R.get(item, {}).get("fails", [])
        return f" ({sum(f)} of {len(f) * N * C} pulls failed)" if sum(f) else ""

    c1 = {k: st(k, "wall") for k in ("regmesh-1", "distribution-1", "direct-1")}
    rows.append([f"{T}1 cold pull, 1 client, s (n={a.reps})", col_rm(c1["regmesh-1"].fmt(2)),
                 col_d(c1["distribution-1"].fmt(2)), c1["direct-1"].fmt(2) + " direct",
                 f"{rx(ratio(c1['regmesh-1'].med, c1['direct-1'].med))} direct (dist "
                 f"{rx(ratio(c1['distribution-1'].med, c1['direct-1'].med))})", "(info: denominator)"])
    b1 = {k: st(k, "bytes", img) for k in ("regmesh-1", "distribution-1", "direct-1")}
    rows.append([f"{T}  upstream blob bytes, 1 cold pull (x image)", col_rm(b1["regmesh-1"].fmt(2, "x")),
                 col_d(b1["distribution-1"].fmt(2, "x")), b1["direct-1"].fmt(2, "x") + " direct", "",
                 "(info)"])
    fl, dm, dr = f"fleet-{NC}", f"distribution-{NC}", f"direct-{NC}"
    bb = {k: st(k, "bytes", img) for k in (fl, dm, dr)}
    rows.append([f"{T}{N * C} cold pulls at once ({C} per node), upstream blob bytes (x image)",
                 col_rm(bb[fl].fmt(2, "x") + fails(fl)), col_d(bb[dm].fmt(2, "x") + fails(dm)),
                 bb[dr].fmt(2, "x") + " direct" + fails(dr) if not L else "- (not run)",
                 f"{rx(bb[fl].med)} (dist {rx(bb[dm].med)})",
                 "= 1.00x image"])
    worst = max(bb[fl].vals) if bb[fl].vals else None
    nf = sum(R.get(fl, {}).get("fails", []))
    verdict(None if worst is None else (round(worst, 2) <= 1.00 and not nf),
            f"{T}{N} nodes, {N * C} cold pulls: upstream blob bytes = {rx(worst)} of the image, worst run"
            f"{f', {nf} pulls failed' if nf else ''} (target 1.00x; {N} distribution proxies "
            f"{rx(bb[dm].med)})")
    ww = {k: st(k, "wall") for k in (fl, dm, dr)}
    wr = ratio(ww[fl].med, c1["regmesh-1"].med)
    wd = ratio(ww[dm].med, c1["distribution-1"].med)
    wx = ratio(ww[dr].med, c1["direct-1"].med)
    if not L:
        rows.append([f"{N * C} cold pulls at once, wall s", col_rm(ww[fl].fmt(2)), col_d(ww[dm].fmt(2)),
                     ww[dr].fmt(2) + f" direct ({N * C} clients)",
                     f"{rx(wr)} 1 rm pull, {rx(ratio(ww[fl].med, ww[dr].med))} {N * C} direct (dist "
                     f"{rx(wd)} 1 dist pull; direct {rx(wx)} 1 direct)",
                     "<= 1.5x 1 cold pull"])
    else:
        rows.append([f"{T}{N * C} cold pulls at once, wall s", col_rm(ww[fl].fmt(2)), col_d(ww[dm].fmt(2)),
                     f">= {N * C * floor1:.0f} over the link (not run)",
                     f"{rx(wr)} 1 rm pull, {rx(ratio(ww[fl].med, floor1))} link floor (dist {rx(wd)} 1 dist "
                     f"pull, {rx(ratio(ww[dm].med, floor1))} link floor)",
                     "<= 1.5x 1 cold pull"])
    if not L:
        verdict(None if wr is None else wr <= 1.5,
                f"{N * C} cold pulls through {N} nodes, wall = {rx(wr)} one cold pull through one node "
                f"(target <= 1.5x; distribution {rx(wd)}; {N * C} direct pulls {rx(wx)} one direct pull)")
    else:
        verdict(None if wr is None else wr <= 1.5,
                f"{T}{N * C} cold pulls through {N} nodes, wall = {rx(wr)} one cold pull through one node "
                f"(target <= 1.5x; distribution {rx(wd)}; the link alone needs {floor1:.1f}s, the rest is "
                f"the {N * C} clients' own work here: see the direct column of a run without the limit)")
    pp = {k: Stats(R.get(k, {}).get("pulls", [])) for k in (fl, dm, dr)}
    rows.append([f"{T}  one client's pull within those, s (n={len(pp[fl].vals) or len(pp[dm].vals)})",
                 col_rm(pp[fl].fmt(2)), col_d(pp[dm].fmt(2)),
                 pp[dr].fmt(2) + " direct" if not L else "-", "", "(info)"])
    pb = st(fl, "peer", img)
    rows.append([f"{T}  bytes nodes got from peers (x image)", col_rm(pb.fmt(2, "x")), col_d("-"), "-", "",
                 f"(info: <= {N - 1}.00x)"])
    if L:
        lk = {k: st(k, "link", img) for k in (fl, dm, "direct-1")}
        rows.append([f"{T}  bytes through the link, {N * C} pulls (x image)", col_rm(lk[fl].fmt(2, "x")),
                     col_d(lk[dm].fmt(2, "x")), lk["direct-1"].fmt(2, "x") + " (1 direct pull)", "",
                     "(cross-check: bodies + headers)"])

    # part 2
    marks["2"] = (len(rows), len(verdicts))
    P = ctx.res.get("peer", {})

    def ps(k, scale=1.0):
        return Stats([x / scale for x in P.get(k, [])])
    peer, warm, dother, dwarm, direct = ps("rm_peer"), ps("rm_warm"), ps("d_other"), ps("d_warm"), ps("direct")
    pr = ratio(peer.med, warm.med)
    dpr = ratio(dother.med, dwarm.med)
    rows.append([f"pull via node 1, blobs on their owners, s (n={a.reps})", col_rm(peer.fmt(2)),
                 col_d(dother.fmt(2) + " (proxy 1: cold)"), direct.fmt(2) + " direct",
                 f"{rx(pr)} warm (dist {rx(dpr)})", "<= 1.3x warm local pull"])
    rows.append(["warm local pull (node 0 again), s", col_rm(warm.fmt(2)), col_d(dwarm.fmt(2)),
                 direct.fmt(2) + " direct", f"{rx(ratio(warm.med, direct.med))} direct (dist "
                 f"{rx(ratio(dwarm.med, direct.med))})", "(info)"])
    verdict(None if pr is None else pr <= 1.3,
            f"pull through a non-owner node = {rx(pr)} a warm local pull (target <= 1.3x; with "
            f"distribution the other proxy pulls cold: {rx(dpr)})")
    pbytes, pexp = ps("rm_peer_bytes", img), ps("rm_expect", img)
    rows.append(["  bytes node 1 got from peers (x image)", col_rm(pbytes.fmt(2, "x")), col_d("-"), "-",
                 f"expected {pexp.fmt(2, 'x')} (blobs node 1 does not own)" if pexp.vals else "",
                 "> 0 (info)"])
    ph = ps("rm_peer_hits")
    if ph.vals:
        rows.append(["  peer hits on node 1 (regmesh_hits_total{source=peer})", col_rm(ph.fmt(0)),
                     col_d("-"), "-", "", "(info)"])
    pu, du = ps("rm_peer_up", img), ps("d_other_up", img)
    rows.append(["  upstream blob bytes during that pull (x image)", col_rm(pu.fmt(2, "x")),
                 col_d(du.fmt(2, "x")), "-", "", "0 for regmesh"])
    verdict(bool(pbytes.vals) and min(pbytes.vals) > 0 and bool(pu.vals) and max(pu.vals) == 0
            if (pbytes.vals or pu.vals) else None,
            f"pull through a non-owner node went through peers: {pbytes.fmt(2, 'x')} of the image from "
            f"peers, {pu.fmt(2, 'x')} from the upstream (target > 0 and 0)")

    # part 3
    marks["3"] = (len(rows), len(verdicts))
    G = ctx.res.get("gossip", {})
    secs = G.get("secs")
    W = f"{secs:.0f}s" if secs else f"{a.gossip_secs:.0f}s"

    def krange(vals):
        if not vals:
            return "-"
        v = sorted(x / KiB for x in vals)
        return f"max {v[-1]:.3f} [{v[0]:.3f}-{v[-1]:.3f}]"

    ipt = None
    if "ipt_sent" in G:
        ipt = [s + r for s, r in zip(G["ipt_sent"], G["ipt_recv"])]
        i = max(range(N), key=lambda k: ipt[k])
        rows.append([f"idle gossip, {N} nodes, KiB/s per node sent+recv: iptables, IP bytes ({W})",
                     col_rm(f"{krange(ipt)}; busiest sent {G['ipt_sent'][i] / KiB:.3f} recv "
                            f"{G['ipt_recv'][i] / KiB:.3f}"), col_d("(no gossip)"), "-",
                     f"fleet {G['ipt_total'] / KiB:.3f} KiB/s on the wire, UDP "
                     f"{G['ipt_udp'] / KiB:.3f}", "< 2 KiB/s every node"])
    else:
        rows.append(["idle gossip, KiB/s per node: iptables", col_rm("-"), col_d("(no gossip)"), "-", "",
                     "< 2 KiB/s every node"])
    tdm = None
    if "td_total" in G:
        tdm = 2 * G["td_total"] / N
        rows.append(["  tcpdump on lo, IP bytes: mean per node sent+recv",
                     col_rm(f"{tdm / KiB:.3f} (UDP per node {krange(G['td_udp_node'])}; TCP as listener "
                            f"{krange(G['td_tcp_listen'])})"), col_d("(no gossip)"), "-",
                     f"fleet {G['td_total'] / KiB:.3f} KiB/s, UDP {G['td_udp'] / KiB:.3f}"
                     + (f"; iptables {rx(ratio(G['ipt_total'], G['td_total']), 3)}" if "ipt_total" in G
                        else ""), "(cross-check)"])
    else:
        rows.append(["  tcpdump on lo, mean per node", col_rm("-"), col_d("(no gossip)"), "-", "",
                     "(cross-check)"])
    if G.get("m_series"):
        ms, mr = G.get("m_sent", []), G.get("m_recv", [])
        tot = [(s or 0) + (r or 0) for s, r in zip(ms, mr)]
        udp_only = all("udp" in k for k in G["m_series"])
        cmp = ""
        if udp_only and "td_udp_payload" in G:
            cmp = (f"tcpdump UDP payload {krange(G['td_udp_payload'])}; metric/tcpdump "
                   f"{rx(ratio(sum(tot), sum(G['td_udp_payload'])), 3)}")
        rows.append([f"  node metrics {'+'.join(sorted({re.sub(r'{.*', '', k) for k in G['m_series']}))}"
                     + (" (UDP payload only)" if udp_only else ""),
                     col_rm(f"{krange(tot)} sent+recv"), col_d("(no gossip)"), "-",
                     cmp or "payload bytes (no IP/UDP/TCP headers)", "(cross-check)"])
    elif "secs" in G:
        rows.append(["  node metrics regmesh_gossip_*bytes*", col_rm("none exported"), col_d("(no gossip)"),
                     "-", "", "(cross-check)"])
    busiest = max(ipt) if ipt else None
    how = "iptables, busiest node"
    if busiest is None and tdm is not None:
        busiest, how = tdm, "tcpdump, mean per node: no per-node count"
    verdict(None if busiest is None else busiest < 2 * KiB,
            f"idle gossip = {'-' if busiest is None else f'{busiest / KiB:.3f}'} KiB/s per node ({how}; "
            f"target < 2 KiB/s, memberlist default timings, {W} window)")
    if G.get("alive_end") and any(x != N for x in G["alive_end"]):
        ctx.notes.append(f"part 3: alive members seen per node at the end of the window: {G['alive_end']}")

    # part 4
    marks["4"] = (len(rows), len(verdicts))
    W4 = ctx.res.get("warm", {})

    def ws(k, scale=1.0):
        return Stats([x / scale for x in W4.get(k, [])])
    sw, ww, aw = ws("single"), ws("warm"), ws("after")
    wr = ratio(ww.med, sw.med)
    rows.append([f"cache warm through node 0 of {N}, s (n={a.reps})", col_rm(ww.fmt(2)), col_d("-"),
                 sw.fmt(2) + " one cold pull, 1 node", f"{rx(wr)} single pull", "<= 1.2x single pull"])
    wu = ws("warm_up", img)
    rows.append(["  upstream blob bytes of the warm (x image)", col_rm(wu.fmt(2, "x")), col_d("-"),
                 ws("single_up", img).fmt(2, "x") + " single pull", "", "1.00x (each blob once)"])
    au = ws("after_up", img)
    rows.append(["  then a pull through node 1: s, upstream bytes (x image)",
                 col_rm(f"{aw.fmt(2)}, {au.fmt(2, 'x')}"), col_d("-"), "-", "", "0 upstream"])
    verdict(None if wr is None else wr <= 1.2,
            f"cache warm across a {N}-node fleet = {rx(wr)} one cold pull (target <= 1.2x)")
    verdict(None if not wu.vals else max(wu.vals) <= 1.001 and max(au.vals or [1]) == 0,
            f"cache warm fetched each blob once ({wu.fmt(2, 'x')} the image upstream) and left the fleet "
            f"warm ({au.fmt(2, 'x')} upstream for the next pull)")

    ends = {"1": marks["2"], "2": marks["3"], "3": marks["4"], "4": (len(rows), len(verdicts))}
    for part in ("4", "3", "2", "1"):
        if part not in a.parts:
            del rows[marks[part][0]:ends[part][0]]
            del verdicts[marks[part][1]:ends[part][1]]

    head = ["metric", "regmesh", "distribution proxy", "direct/baseline", "ratio", "target"]
    client = "skopeo" if ctx.skopeo else "python puller (bench/run.py's)"
    out = ["", f"regmesh fleet bench: image {img / MiB:.1f} MiB in {len(ctx.blobs)} blobs, {N} nodes x "
               f"{C} clients, {a.reps} reps, client {client}, {os.cpu_count()} CPUs, load average at "
               f"start {ctx.load0}, at end {single.loadavg()}",
           f"regmesh: {a.regmesh_desc if a.regmesh_bin else 'not found: ' + a.regmesh_missing}"]
    if a.upstream_mibps and "1" in a.parts:
        out.append(f"part 1: the upstream behind one {a.upstream_mibps:g} MiB/s link (each direction, shared "
                   f"by every connection of every consumer; no added latency); {N * C} direct pulls not run; "
                   f"parts 2 and 3 unthrottled")
    out += [""] + single.table(head, rows)
    out.append("")
    out += [f"{v}  {t}" for v, t in verdicts]
    for n_ in dict.fromkeys(ctx.notes):
        out.append(f"note: {n_}")
    if ctx.rm_log_errors:
        out.append("")
        out.append(f"note: regmesh logged {len(ctx.rm_log_errors)} error lines; first ones:")
        seen = []
        for e in ctx.rm_log_errors:
            k = re.sub(r"\d+", "N", e)
            if k not in seen:
                seen.append(k)
                out.append("  " + e[:200])
            if len(seen) >= 5:
                break
    if ctx.errors:
        out.append("")
        out.append("errors (measurements that could not run):")
        for e in dict.fromkeys(x.splitlines()[0][:300] for x in ctx.errors):
            out.append("  " + e)
    print("\n".join(out), flush=True)


# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description="a regmesh fleet vs independent distribution proxies")
    p.add_argument("--quick", action="store_true", help="64 MiB image, 2 reps, 20 s gossip window")
    p.add_argument("--size-mib", type=int, help="image size in MiB (default 320)")
    p.add_argument("--reps", type=int, help="repetitions of parts 1 and 2 (default 3)")
    p.add_argument("--nodes", type=int, default=5, help="fleet size and distribution proxies (5)")
    p.add_argument("--clients", type=int, default=5, help="concurrent clients per node in part 1 (5)")
    p.add_argument("--gossip-secs", type=float, help="idle gossip window, s (default 30)")
    p.add_argument("--gossip-settle", type=float, default=5.0,
                   help="idle time after the fleet converged, before the window (5)")
    p.add_argument("--parts", default="1,2,3,4", help="which parts to run (1,2,3,4)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds the upstream log must stay quiet before counting bytes")
    p.add_argument("--regmesh-bin", help="default: $REGMESH_BIN or <repo>/build/regmesh")
    p.add_argument("--no-distribution", action="store_true", help="skip the distribution proxies")
    p.add_argument("--python-puller", action="store_true", help="bench/run.py's Python puller, not skopeo")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs) for a look")
    p.add_argument("--upstream-mibps", type=float, metavar="N",
                   help="part 1 with the upstream behind one N MiB/s link shared by every consumer "
                        "(default: unlimited)")
    a = p.parse_args(argv)
    a.size_mib = a.size_mib or (64 if a.quick else 320)
    a.reps = a.reps or (2 if a.quick else 3)
    a.gossip_secs = a.gossip_secs or (20.0 if a.quick else 30.0)
    a.parts = {x.strip() for x in a.parts.split(",") if x.strip()}
    if a.nodes < 2:
        p.error("--nodes must be at least 2")
    if a.upstream_mibps is not None and not a.upstream_mibps > 0:
        p.error("--upstream-mibps must be > 0")
    a.regmesh_missing = a.regmesh_desc = ""
    if a.regmesh_bin is None:
        a.regmesh_bin = single.default_regmesh_bin()
    if not (os.path.isfile(a.regmesh_bin) and os.access(a.regmesh_bin, os.X_OK)):
        a.regmesh_missing, a.regmesh_bin = a.regmesh_bin, None
    return a


def main(argv):
    a = parse_args(argv)
    if os.geteuid() == 0 and os.environ.get(NS_MARK) != "1" and shutil.which("unshare"):
        os.environ[NS_MARK] = "1"
        script = os.path.abspath(__file__)
        for ns in (["--mount", "--net"], ["--mount"]):
            if subprocess.run(["unshare"] + ns + ["true"], stderr=subprocess.DEVNULL).returncode == 0:
                os.environ["RMFLEET_NETNS"] = "1" if "--net" in ns else "0"
                try:
                    os.execvp("unshare", ["unshare"] + ns + ["--propagation", "private", "--",
                                                             sys.executable, script] + argv)
                except OSError as e:
                    log(f"unshare failed ({e}); running in the host's namespaces")
                break
    if not os.access(single.DISTRIBUTION_BIN, os.X_OK):
        log("docker-registry not found; cannot run")
        return 2
    if a.regmesh_bin is None:
        log(f"regmesh binary not found at {a.regmesh_missing}: measuring the distribution side only")
        if a.no_distribution:
            log("nothing to measure")
            return 2

    def body(tmp):
        netns = False
        if os.environ.get(NS_MARK) == "1" and os.environ.get("RMFLEET_NETNS") == "1":
            if subprocess.run(["ip", "link", "set", "lo", "up"]).returncode != 0:
                raise BenchError("cannot bring lo up in the private network namespace")
            netns = True
        if a.regmesh_bin:
            a.regmesh_bin, a.regmesh_desc = single.copy_binary(a.regmesh_bin, tmp, "regmesh")
            os.chmod(a.regmesh_bin, 0o755)
        ctx = Ctx(a, tmp)
        ctx.netns = netns
        log(f"{'private mount+network namespace' if netns else 'no private network namespace'}; "
            f"client {'skopeo' if ctx.skopeo else 'python puller'}; load average {ctx.load0}")
        ctx.start_upstream()
        ctx.push_image()
        if "1" in a.parts:
            part_cold(ctx)
        if "2" in a.parts:
            part_peer(ctx)
        if "3" in a.parts:
            part_gossip(ctx)
        if "4" in a.parts:
            part_warm(ctx)
        report(ctx)
        return 2 if ctx.errors else 0
    return single.run_bench(body, "regmesh-fleet-", a.keep_tmp, mark=NS_MARK, say=log)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
