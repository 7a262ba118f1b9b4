#!/usr/bin/env python3
"""bench/colddisk.py - does a download from a cold disk stall the other clients?

One client downloads a cached 256 MiB blob again and again while another
times HEAD /v2/<name>/manifests/<digest> (cached) on its own connection:
once with the blob in the page cache ("warm") and once with its pages
dropped before each download (posix_fadvise(DONTNEED) on the stored file:
"cold"). A server that reads files on its event loop makes every HEAD wait
for the disk behind the download's reads; one that reads them elsewhere
does not. Side by side in one run: regmesh (this build), optionally an older
regmesh binary (--old-bin), and distribution's registry in proxy mode.

The upstream, images, servers and HEAD client are bench/run.py's, imported.
Prints p50/p99 HEAD latency per server and mode, the cold/warm p99 ratio and
regmesh's cold p99 against distribution's, medians over --reps.
"""

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

log = run.log


def stored_blob(srv, kind, digest):
    hexd = digest.split(":", 1)[1]
    if kind == "distribution":
        return os.path.join(srv.workdir, "storage", "docker", "registry", "v2", "blobs",
                            "sha256", hexd[:2], hexd, "data")
    return os.path.join(srv.workdir, "data", "blobs", "sha256", hexd[:2], hexd)


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def get_manifest(port, name, ref):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", f"/v2/{name}/manifests/{ref}", headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise run.BenchError(f"GET manifest {ref} -> {r.status}")
    finally:
        c.close()


class Downloader(threading.Thread):
    """Downloads the blob until stopped; drops its pages first when cold."""

    def __init__(self, port, digest, path, cold):
        super().__init__(daemon=True)
        self.port, self.digest, self.path, self.cold = port, digest, path, cold
        self.stop_ev = threading.Event()
        self.bytes = 0
        self.rounds = 0
        self.error = None

    def run(self):
        try:
            while not self.stop_ev.is_set():
                if self.cold:
                    drop_cache(self.path)
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                c.request("GET", f"/v2/{run.BLOBS_NAME}/blobs/{self.digest}")
                r = c.getresponse()
                while not self.stop_ev.is_set():
                    b = r.read(1 << 20)
                    if not b:
                        break
                    self.bytes += len(b)
                c.close()
                self.rounds += 1
        except Exception as e:  # noqa: BLE001 (reported)
            self.error = e


def measure(port, digest, path, image_digest, n, cold):
    d = Downloader(port, digest, path, cold)
    d.start()
    time.sleep(0.3)  # the download under way
    t0 = time.monotonic()
    try:
        lat, _ = run.head_series(port, f"/v2/{run.IMAGE_NAME}/manifests/{image_digest}", n,
                                 image_digest)
    finally:
        d.stop_ev.set()
        d.join(30)
    secs = time.monotonic() - t0
    if d.error:
        raise run.BenchError(f"download: {d.error}")
    return lat, d.bytes / secs / run.MiB


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--head-n", type=int, default=2000)
    p.add_argument("--big-mib", type=float, default=256)
    p.add_argument("--regmesh-bin", default=os.environ.get("REGMESH_BIN") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "regmesh"))
    p.add_argument("--old-bin", help="an older regmesh binary to measure beside it")
    p.add_argument("--no-distribution", action="store_true")
    a = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="regmesh-colddisk-")
    # what run.Bench expects of its arguments
    a.scale, a.small_kib, a.python_puller, a.keep_tmp = 0.05, 64, True, False
    sides = [("regmesh", a.regmesh_bin)]
    if a.old_bin:
        sides.append(("regmesh-old", a.old_bin))
    if not a.no_distribution:
        sides.append(("distribution", None))
    res = {}
    try:
        b = run.Bench(a, tmp)
        b.start_upstream()
        b.push_images()
        for side, binary in sides:
            kind = "distribution" if side == "distribution" else "regmesh"
            if binary:
                b.a.regmesh_bin = binary
            srv = b.start_proxy(kind)
            try:
                run.get_blob_sha256(srv.port, run.BLOBS_NAME, b.big_digest)
                get_manifest(srv.port, run.IMAGE_NAME, b.image_digest)
                time.sleep(1.0)  # the commit after the last byte
                path = stored_blob(srv, kind, b.big_digest)
                if not os.path.exists(path):
                    raise run.BenchError(f"{side}: no stored blob at {path}")
                run.head_series(srv.port, f"/v2/{run.IMAGE_NAME}/manifests/{b.image_digest}",
                                100, b.image_digest)
                for rep in range(a.reps):
                    for cold in ((False, True) if rep % 2 == 0 else (True, False)):
                        lat, mibps = measure(srv.port, b.big_digest, path, b.image_digest,
                                             a.head_n, cold)
                        mode = "cold" if cold else "warm"
                        res.setdefault((side, mode), []).append(
                            (run.pct(lat, 50), run.pct(lat, 99), mibps))
                        log(f"{side:13s} rep {rep + 1} {mode}: HEAD p50 {run.pct(lat, 50):.3f} ms "
                            f"p99 {run.pct(lat, 99):.3f} ms, download {mibps:.0f} MiB/s")
            finally:
                srv.stop()
    finally:
        run.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(side, mode, i):
        v = [x[i] for x in res.get((side, mode), [])]
        return statistics.median(v) if v else float("nan")
    print(f"\ncold-disk bench: {a.big_mib:g} MiB blob downloaded in a loop beside {a.head_n} "
          f"HEADs of a cached manifest, {a.reps} reps (medians), {os.cpu_count()} CPUs, "
          f"load {run.loadavg()}")
    print(f"{'server':14s} {'mode':5s} {'HEAD p50 ms':>12s} {'HEAD p99 ms':>12s} "
          f"{'download MiB/s':>15s}")
    for side, _ in sides:
        for mode in ("warm", "cold"):
            print(f"{side:14s} {mode:5s} {med(side, mode, 0):12.3f} {med(side, mode, 1):12.3f} "
                  f"{med(side, mode, 2):15.0f}")
    r = med("regmesh", "cold", 1) / med("regmesh", "warm", 1)
    print(f"\nregmesh cold p99 / warm p99: {r:.2f}x (target <= 2x)")
    if not a.no_distribution:
        d = med("distribution", "cold", 1)
        print(f"regmesh cold p99 / distribution cold p99: {med('regmesh', 'cold', 1) / d:.2f}x "
              f"(target <= 1x)")
    if a.old_bin:
        print(f"old regmesh cold p99 / warm p99: "
              f"{med('regmesh-old', 'cold', 1) / med('regmesh-old', 'warm', 1):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
