#!/usr/bin/python3
"""bench/fanout.py - a hot blob over a fleet on shaped links (issue 12).

N nodes (default 16), each in a network namespace of its own on a veth
link shaped with tc tbf to the same rate both ways, the upstream registry
(distribution, filesystem storage) behind the router. All N pull one big
blob at once. Printed, all from one run:

  - single: one node alone pulling the blob over its link (the unit);
  - regmesh with cluster.fanout (default 2): time until the last node has
    the blob, per-node peer upload bytes, upstream bytes;
  - regmesh owner-only (cluster.fanout: 0, the code before holders; peer
    uploads uncapped so every node is served by the owner);
  - N independent distribution proxies (proxy.remoteurl), one per leaf:
    time to last and upstream bytes (the fleet-less answer).

Ratios: time-to-last / single (goal <= 2.5x with fanout; owner-only about
N x), upstream bytes / blob (1x for the fleets, N x for the proxies).
Medians over --reps. Run as root (namespaces). Uses the integration tests'
harness (tests/integration/rmtest: python3-pytest must be installed).

    sudo /usr/bin/python3 bench/fanout.py                      # 16 nodes, 40 MiB/s, 256 MiB
    sudo /usr/bin/python3 bench/fanout.py --nodes 8 --mib 64 --rate 20 --reps 1   # quicker
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from rmtest import fleet as rmfleet  # noqa: E402
from rmtest import images, netns, upstream, util  # noqa: E402


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def pull_all(targets, path, timeout):
    """targets: [(name, Netns, base url)]. GET path through each at once,
    reading (not keeping) the body. Returns {name: (status, bytes, seconds)}."""
    res = {}
    start = threading.Barrier(len(targets))

    def one(name, ns, base):
        u = urllib.parse.urlsplit(base)
        start.wait()
        t0 = time.monotonic()
        try:
            conn = netns._NsHTTPConnection(ns, u.hostname, u.port, timeout=timeout)
            conn.request("GET", path)
            r = conn.getresponse()
            n = 0
            buf = bytearray(1 << 20)
            while True:
                k = r.readinto(buf)
                if not k:
                    break
                n += k
            res[name] = (r.status, n, time.monotonic() - t0)
            conn.close()
        except Exception as e:  # noqa: BLE001 - reported in the table
            res[name] = (repr(e), 0, time.monotonic() - t0)

    ts = [threading.Thread(target=one, args=t, daemon=True) for t in targets]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout + 30)
    return res


def upstream_blob_bytes(reg, mark, digest):
    es = [e for e in reg.log.gets(mark) if e.path.endswith("/blobs/" + digest)]
    return len(es), sum(e.size for e in es)


class NsProxy:
    """distribution with proxy.remoteurl inside a leaf namespace."""

    def __init__(self, workdir, ns, host, remote):
        self.ns, self.host = ns, host
        self.dir = tempfile.mkdtemp(prefix="dist-", dir=workdir)
        self.port = util.free_port()
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write("\n".join([
                "version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
                "storage:", "  cache:", "    blobdescriptor: inmemory", "  filesystem:",
                "    rootdirectory: %s" % os.path.join(self.dir, "storage"),
                "http:", "  addr: %s:%d" % (host, self.port),
                "proxy:", "  remoteurl: %s" % remote]) + "\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.dir}
        self.proc = util.Proc(ns.argv([upstream.REGISTRY_BIN, "serve", cfg]),
                              log_path=os.path.join(self.dir, "log"), env=env,
                              name="dist").start()
        util.wait_until(lambda: ns.port_open(host, self.port), 20, what="distribution proxy")

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def stop(self):
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_fleet(a, star, reg, work, n, extra, path, digest, tag):
    d = tempfile.mkdtemp(prefix=tag + "-", dir=work)
    opts = {i: {"ns": star.leaves[i], "host": star.ip(i),
                "upstream_url": reg.url_via(star.router_ip(i))} for i in range(n)}
    fl = rmfleet.Fleet(d, reg.url_via(star.router_ip(0)), n, node_opts=opts,
                       cluster_extra=extra, binary=a.regmesh, log_level="warn")
    try:
        fl.start(timeout=60)
        mark = reg.log.mark()
        t0 = time.monotonic()
        res = pull_all([(nd.name, nd.ns, nd.url) for nd in fl.nodes], path, a.timeout)
        last = time.monotonic() - t0
        gets, ubytes = upstream_blob_bytes(reg, mark, digest)
        up = {nd.name: nd.metric_sum("regmesh_peer_upload_bytes_total") for nd in fl.nodes}
        return {"last": last, "res": res, "up_gets": gets, "up_bytes": ubytes, "uploads": up}
    finally:
        fl.stop_all()
        shutil.rmtree(d, ignore_errors=True)


def run_dist(a, star, reg, work, n, path, digest):
    proxies = []
    try:
        for i in range(n):
            proxies.append(NsProxy(work, star.leaves[i], star.ip(i),
                                   reg.url_via(star.router_ip(i))))
        mark = reg.log.mark()
        t0 = time.monotonic()
        res = pull_all([("d%d" % i, p.ns, p.url) for i, p in enumerate(proxies)], path,
                       a.timeout)
        last = time.monotonic() - t0
        gets, ubytes = upstream_blob_bytes(reg, mark, digest)
        return {"last": last, "res": res, "up_gets": gets, "up_bytes": ubytes}
    finally:
        for p in proxies:
            p.stop()


def check(res, size):
    bad = {k: v for k, v in res.items() if v[0] != 200 or v[1] != size}
    return "all %d ok" % len(res) if not bad else "FAILED %s" % bad


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--rate", type=float, default=40.0, help="MiB/s per link, each way")
    p.add_argument("--mib", type=int, default=256, help="blob size")
    p.add_argument("--fanout", type=int, default=2)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--no-owner-only", action="store_true")
    p.add_argument("--no-distribution", action="store_true")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                   help="where node data goes (default /dev/shm: the disk is not measured)")
    p.add_argument("--regmesh", default=os.environ.get("REGMESH_BIN") or
                   os.path.join(HERE, "..", "build", "regmesh"))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/fanout.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    a.regmesh = os.path.abspath(a.regmesh)
    rate = "%dkbit" % int(a.rate * 1024 * 1024 * 8 / 1000)
    work = tempfile.mkdtemp(prefix="rm-fanout-", dir=a.tmp)
    imgdir = tempfile.mkdtemp(prefix="rm-fanout-img-")
    star = None
    try:
        log("making a %d MiB image" % a.mib)
        cat = images.Catalog(images.ImageStore(imgdir))
        img = cat.spread(a.mib)
        blob = max(img.own_blobs(), key=lambda b: b.size)
        path = "/v2/%s/blobs/%s" % (img.repo, blob.digest)
        seed = upstream.Registry(imgdir, "seed").start()
        images.RegistryClient(seed.url).push(img)
        seed.stop()
        log("star of %d namespaces, links %s (%.0f MiB/s) each way" % (a.nodes, rate, a.rate))
        star = netns.Star(a.nodes, rate).create()
        reg = netns.NsRegistry(os.path.join(imgdir, "ns"), "up", star.u,
                               storage=seed.storage).start()
        star.on_cleanup(reg.stop)

        rows = {"single": [], "fanout": [], "owner": [], "dist": []}
        for rep in range(a.reps):
            log("rep %d: one node alone" % (rep + 1))
            rows["single"].append(run_fleet(a, star, reg, work, 1, {}, path, blob.digest,
                                            "single"))
            log("rep %d: %d nodes, fanout %d" % (rep + 1, a.nodes, a.fanout))
            rows["fanout"].append(run_fleet(a, star, reg, work, a.nodes,
                                            {"fanout": a.fanout}, path, blob.digest, "fan"))
            if not a.no_owner_only:
                log("rep %d: %d nodes, owner only" % (rep + 1, a.nodes))
                rows["owner"].append(run_fleet(
                    a, star, reg, work, a.nodes, {"fanout": 0, "max_peer_uploads": 4096},
                    path, blob.digest, "owner"))
            if not a.no_distribution:
                log("rep %d: %d distribution proxies" % (rep + 1, a.nodes))
                rows["dist"].append(run_dist(a, star, reg, work, a.nodes, path, blob.digest))

        size = blob.size
        single = statistics.median(r["last"] for r in rows["single"])
        print()
        print("%d nodes, links %.0f MiB/s each way, blob %d MiB, %d rep(s); medians"
              % (a.nodes, a.rate, a.mib, a.reps))
        print("%-34s %10s %10s %14s %s" % ("", "last (s)", "x single", "upstream x blob",
                                           "pulls"))
        for key, label in (("single", "one node alone"),
                           ("fanout", "regmesh fanout %d" % a.fanout),
                           ("owner", "regmesh owner only (fanout 0)"),
                           ("dist", "%d distribution proxies" % a.nodes)):
            rs = rows[key]
            if not rs:
                continue
            last = statistics.median(r["last"] for r in rs)
            ub = statistics.median(r["up_bytes"] for r in rs)
            print("%-34s %10.1f %9.2fx %13.2fx  %s" % (label, last, last / single, ub / size,
                                                       check(rs[-1]["res"], size)))
        for key in ("fanout", "owner"):
            if rows[key]:
                up = rows[key][-1]["uploads"]
                print("peer upload bytes per node, %s (x blob): %s" % (
                    key, " ".join("%s=%.2f" % (k, v / size) for k, v in sorted(
                        up.items(), key=lambda kv: int(kv[0][1:])))))
        return 0
    finally:
        if star:
            errs = star.teardown()
            if errs:
                print("teardown: %s" % errs, file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(imgdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
