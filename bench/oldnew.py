#!/usr/bin/env python3
"""bench/oldnew.py - cached-blob throughput and memory of two regmesh builds
side by side: this one and --old-bin, in one run, against one upstream.

wrk on a 256 MiB blob (-t1 -c2, MiB/s) and a 1 MiB blob (-t2 -c16, req/s),
reps interleaved so both builds see the same machine; peak RSS (VmHWM)
of each process at the end. For a change that must not cost throughput
(e.g. where file reads happen): the figures should agree within noise.
The upstream, blobs and wrk runner are bench/run.py's, imported.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

log = run.log


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-bin", required=True)
    p.add_argument("--regmesh-bin", default=os.environ.get("REGMESH_BIN") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "regmesh"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--wrk-secs", type=int, default=5)
    p.add_argument("--big-mib", type=float, default=256)
    a = p.parse_args(argv)
    a.scale, a.small_kib, a.python_puller, a.keep_tmp = 0.05, 1024, True, False
    a.no_distribution = True
    if not shutil.which("wrk"):
        log("wrk not found")
        return 2
    tmp = tempfile.mkdtemp(prefix="regmesh-oldnew-")
    builds = [("new", a.regmesh_bin), ("old", a.old_bin)]
    res = {}
    srvs = {}
    try:
        b = run.Bench(a, tmp)
        b.start_upstream()
        b.push_images()
        for name, binary in builds:
            b.a.regmesh_bin = binary
            srvs[name] = b.start_proxy("regmesh")
            for digest, size in ((b.small_digest, b.small_size), (b.big_digest, b.big_size)):
                st, got, n = run.get_blob_sha256(srvs[name].port, run.BLOBS_NAME, digest)
                if st != 200 or got != digest or n != size:
                    raise run.BenchError(f"{name}: warming: {st} {n}")
        for key, digest, t, c in (("big", b.big_digest, 1, 2), ("small", b.small_digest, 2, 16)):
            for rep in range(a.reps):
                order = builds if rep % 2 == 0 else builds[::-1]
                for name, _ in order:
                    srv = srvs[name]
                    rps, mibps, errs, cpu, _ = run.run_wrk(
                        b, srv.port, f"/v2/{run.BLOBS_NAME}/blobs/{digest}", t, c, a.wrk_secs,
                        srv.proc.pid)
                    v = mibps if key == "big" else rps
                    res.setdefault((key, name), []).append(v)
                    log(f"wrk {key} rep {rep + 1} {name}: {v:.1f} {'MiB/s' if key == 'big' else 'req/s'}"
                        + (f" ({errs} errors)" if errs else ""))
        hwm = {name: srvs[name].hwm() for name, _ in builds}
    finally:
        run.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nold vs new: wrk {a.wrk_secs}s x {a.reps} reps interleaved (medians [min-max]), "
          f"{os.cpu_count()} CPUs, load {run.loadavg()}")
    for key, unit in (("big", "MiB/s, 256 MiB blob -t1 -c2"), ("small", "req/s, 1 MiB blob -t2 -c16")):
        cells = []
        for name, _ in builds:
            v = res[(key, name)]
            cells.append(f"{name} {statistics.median(v):.0f} [{min(v):.0f}-{max(v):.0f}]")
        r = statistics.median(res[(key, "new")]) / statistics.median(res[(key, "old")])
        print(f"{unit}: " + ", ".join(cells) + f"; new/old {r:.2f}x")
    print("VmHWM MiB: " + ", ".join(f"{n} {hwm[n] / 1024:.1f}" for n, _ in builds if hwm[n]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
