#!/usr/bin/env python3
"""bench/tls.py - regmesh's TLS listener next to nginx serving the same files.

One run starts, on 127.0.0.1 only:
  - an upstream: Debian's docker-registry holding a 256 MiB and a 1 MiB blob
    of random bytes (bench/blobs), pushed with bench/run.py's Pusher;
  - regmesh with `tls:` (a certificate from `regmesh ca init` / `ca issue`),
    its cache seeded with both blobs through its own TLS listener;
  - nginx (Debian's nginx-light) as a private process: its own config,
    pid, logs and temp dirs in the run's temp dir, `worker_processes 1`,
    `sendfile on`, `ssl_protocols TLSv1.2 TLSv1.3` with the same certificate,
    `keepalive_requests 100000`, serving the same bytes as static files at
    the same URL paths;
  - two plain-HTTP regmesh nodes, one with an `allow:` list and one without,
    each seeded the same way;
  - with --baseline-bin OLD, two more plain nodes, this build and OLD, to
    show a change costs no throughput (--no-tls --no-plain for that alone);
then runs wrk against each side, interleaved (the order flips every round),
`--reps` rounds, and prints medians [min-max] and the ratios:
  - 256 MiB blob, `wrk -t1 -c2`: MiB/s and server CPU seconds per GiB sent
    (utime+stime from /proc/<pid>/stat of the server and its children);
  - 1 MiB blob with keep-alive, `wrk -t2 -c16`: req/s and CPU s per GiB;
  - the same two over plain HTTP for regmesh with and without `allow:`.
Both servers log every request (regmesh at log_level info, nginx's
access_log), so neither skips that work. nginx uses no kernel TLS here
(Debian's build does not enable it by default), like regmesh today.

Reuses bench/run.py's process, upstream and wrk-parsing helpers (imported,
not copied). Python 3 standard library only. Bounded: every process is
stopped by PID at the end, also on Ctrl-C. Exit status 0 when everything was
measured, 2 when something could not run, 130 on Ctrl-C.
"""

import argparse
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as rb  # noqa: E402  (bench/run.py)

MiB = rb.MiB
NAME = "bench/blobs"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
log = rb.log


# --------------------------------------------------------------------------
# processes

def tree_cpu_seconds(pid):
    """utime+stime of pid and its direct children (nginx's worker)."""
    total = rb.cpu_seconds(pid)
    if total is None:
        return None
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    for k in kids:
        c = rb.cpu_seconds(k)
        if c is not None:
            total += c
    return total


def wait_port(port, proc, what, err_path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise rb.BenchError(f"{what} exited with {proc.returncode}:\n{rb.tail(err_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise rb.BenchError(f"{what} not listening on :{port} within {timeout}s:\n{rb.tail(err_path)}")


class Proc:
    """A server we started: argv, log file, pid; stopped by PID."""

    def __init__(self, label, argv, port, workdir, env=None, scheme="http"):
        self.label, self.argv, self.port, self.dir = label, argv, port, workdir
        self.env, self.scheme = env, scheme
        self.log_path = os.path.join(workdir, "server.log")
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as out:
            self.proc = rb.spawn(self.argv, stdout=out, stderr=out, env=self.env, cwd=self.dir)
        wait_port(self.port, self.proc, self.label, self.log_path)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def stop(self):
        if self.proc is not None:
            rb.stop_proc(self.proc)


# --------------------------------------------------------------------------
# HTTP(S) checks

def fetch_sha(url, cafile, timeout=300):
    """(status, sha256 digest, bytes) of a GET, streaming."""
    u = re.match(r"(https?)://([^:/]+):(\d+)(/.*)", url)
    scheme, host, port, path = u.group(1), u.group(2), int(u.group(3)), u.group(4)
    if scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        c = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        return rb.read_sha256(c.getresponse())
    finally:
        c.close()


def wrk(url, threads, conns, secs, pid):
    """One wrk run: (req/s, MiB/s, errors, server CPU s, MiB read)."""
    cpu0 = tree_cpu_seconds(pid)
    argv = [shutil.which("wrk"), f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "60s",
            url]
    p = rb.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=secs + 60)
    except subprocess.TimeoutExpired:
        rb.stop_proc(p)
        raise rb.BenchError(f"wrk on {url} did not finish")
    finally:
        if p.poll() is None:
            rb.stop_proc(p)
        rb.LIVE.pop(p.pid, None)
    cpu1 = tree_cpu_seconds(pid)
    out = out.decode("utf-8", "replace")
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    tps = re.search(r"Transfer/sec:\s*([\d.]+)([KMGT]?B)", out)
    total = re.search(r"\d+ requests in [\d.]+\w+, ([\d.]+)([KMGT]?B) read", out)
    if p.returncode != 0 or not rps or not tps or not total:
        raise rb.BenchError(f"wrk failed on {url}:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (
        int(sock.group(1)) + int(sock.group(4)) if sock else 0)
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    read_mib = float(total.group(1)) * rb.UNITS[total.group(2)] / MiB
    return (float(rps.group(1)), float(tps.group(1)) * rb.UNITS[tps.group(2)] / MiB, errors,
            cpu, read_mib)


# --------------------------------------------------------------------------
# the run

class TLSBench(rb.WorkDirs):
    width = 2

    def __init__(self, a, tmp):
        self.a, self.tmp = a, tmp
        self.res = {}          # (metric, side) -> [values]
        self.errors = []

    # -- content and certificates ------------------------------------------
    def upstream_and_blobs(self):
        self.upstream = rb.start_upstream_registry(self._dir("upstream"))
        port = self.upstream.port
        self.www = self._dir("www")
        up = rb.Pusher(port)
        self.blobs = {}
        for key, size in (("big", int(self.a.big_mib * MiB)), ("small", self.a.small_kib * 1024)):
            data = os.urandom(size)
            digest = up.blob(NAME, data)
            path = f"/v2/{NAME}/blobs/{digest}"
            f = os.path.join(self.www, path.lstrip("/"))
            os.makedirs(os.path.dirname(f), exist_ok=True)
            with open(f, "wb") as out:
                out.write(data)
            self.blobs[key] = (path, digest, size)
        up.close()
        log(f"upstream on :{port} with a {rb.human(self.blobs['big'][2])} and a "
            f"{rb.human(self.blobs['small'][2])} blob; same bytes under {self.www}")

    def certificates(self):
        self.ca, _, self.crt, self.key = rb.make_certs(self.a.regmesh_bin, self._dir("pki"))

    # -- servers -------------------------------------------------------------
    def regmesh(self, label, tls=False, allow=None, binary=None):
        d = self._dir(label)
        port = rb.free_port()
        cfg = os.path.join(d, "regmesh.yml")
        lines = [f"listen: 127.0.0.1:{port}", f"log_level: {self.a.regmesh_log_level}",
                 "storage:", f"  root: {os.path.join(d, 'data')}", "  max_size: 20GiB",
                 "upstreams:", "  - host: docker.io",
                 f"    url: http://127.0.0.1:{self.upstream.port}", "    default: true",
                 "    tag_ttl: 60s"]
        if tls:
            lines += ["tls:", f'  cert: "{self.crt}"', f'  key: "{self.key}"',
                      '  min_version: "1.2"']
        if allow:
            lines.append("allow: [%s]" % ", ".join(allow))
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        srv = Proc(label, [binary or self.a.regmesh_bin, "serve", "--config", cfg], port, d,
                   scheme="https" if tls else "http").start()
        for key, (path, digest, size) in self.blobs.items():
            got = fetch_sha(srv.url(path), self.ca)
            if got != (200, digest, size):
                raise rb.BenchError(f"{label}: seeding {key} blob gave {got}")
        # seeded: the second read is served from disk
        got = fetch_sha(srv.url(self.blobs["big"][0]), self.ca)
        if got[0] != 200:
            raise rb.BenchError(f"{label}: cached read gave {got}")
        log(f"{label} on {srv.url('')} (pid {srv.pid}), cache seeded")
        return srv

    def nginx(self):
        d = self._dir("nginx")
        port = rb.free_port()
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(d, sub))
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""# private nginx for bench/tls.py
worker_processes 1;
daemon off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 65s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {self.crt};
        ssl_certificate_key {self.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {self.www};
    }}
}}
""")
        srv = Proc("nginx", [NGINX, "-e", os.path.join(d, "error.log"), "-p", d, "-c", conf],
                   port, d, scheme="https").start()
        for key, (path, digest, size) in self.blobs.items():
            got = fetch_sha(srv.url(path), self.ca)
            if got != (200, digest, size):
                raise rb.BenchError(f"nginx: {key} blob gave {got}")
        log(f"nginx on {srv.url('')} (pid {srv.pid})")
        return srv

    # -- measurements --------------------------------------------------------
    def add(self, metric, side, v):
        self.res.setdefault((metric, side), []).append(v)

    def measure(self, pairs):
        """pairs: [(group, [(side, server), (side, server)])]; interleaved."""
        a = self.a
        for rep in range(a.reps):
            for group, sides in pairs:
                order = sides if rep % 2 == 0 else list(reversed(sides))
                for side, srv in order:
                    for key, (t, c) in (("big", (1, 2)), ("small", (2, 16))):
                        path = self.blobs[key][0]
                        try:
                            rps, mibs, errs, cpu, read = wrk(srv.url(path), t, c, a.secs, srv.pid)
                        except rb.BenchError as e:
                            self.errors.append(f"{side} {key}: {e}")
                            log(f"ERROR {side} {key}: {str(e).splitlines()[0]}")
                            continue
                        if errs:
                            self.errors.append(f"{side} {key}: {errs} wrk errors in round {rep + 1}")
                        self.add(f"{group}:{key}:rps", side, rps)
                        self.add(f"{group}:{key}:mibs", side, mibs)
                        if cpu is not None and read:
                            self.add(f"{group}:{key}:cpu", side, cpu / (read / 1024.0))
                        log(f"round {rep + 1}/{a.reps} {side:14s} {key:5s}: {rps:9.1f} req/s "
                            f"{mibs:8.1f} MiB/s, cpu {cpu if cpu is None else round(cpu, 2)} s "
                            f"for {read / 1024.0:.2f} GiB")

    # -- report --------------------------------------------------------------
    def report(self):
        a = self.a

        ratio, rx = rb.ratio, rb.rx

        def st(metric, side):
            return rb.Stats(self.res.get((metric, side), []))

        big, small = rb.human(self.blobs["big"][2]), rb.human(self.blobs["small"][2])
        rows = []
        groups = {g for (m, _) in self.res for g in [m.split(":")[0]]}
        for group, left, right, lname, rname in (
                ("tls", "regmesh-tls", "nginx", "regmesh TLS", "nginx TLS"),
                ("plain", "regmesh-allow", "regmesh-open", "regmesh allow:", "regmesh no allow:"),
                ("base", "regmesh-new", "regmesh-old", "this build", "baseline")):
            if group not in groups:
                continue
            rows.append([f"[{group}]", lname, rname, "ratio (left/right)"])
            for metric, label, digits in (
                    (f"{group}:big:mibs", f"{big} blob -t1 -c2, MiB/s", 1),
                    (f"{group}:big:cpu", f"  server CPU s per GiB ({big})", 3),
                    (f"{group}:small:rps", f"{small} blob -t2 -c16 keep-alive, req/s", 1),
                    (f"{group}:small:mibs", f"  {small} blob, MiB/s", 1),
                    (f"{group}:small:cpu", f"  server CPU s per GiB ({small})", 3)):
                l, r = st(metric, left), st(metric, right)
                rows.append([label, l.fmt(digits), r.fmt(digits), rx(ratio(l.med, r.med))])
        head = ["metric (median [min-max])", "", "", ""]
        widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(4)]
        out = ["", f"regmesh TLS bench: {a.reps} rounds x {a.secs}s per wrk run, interleaved; "
                   f"{os.cpu_count()} CPUs; load average at end {rb.loadavg()}",
               f"regmesh: {a.regmesh_desc}", f"nginx: {self.nginx_version}"]
        if a.baseline_bin:
            out.append(f"baseline: {a.baseline_desc}")
        out.append("")
        for row in rows:
            out.append(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        out.append("")
        out.append("CPU s per GiB: server utime+stime over the wrk run / GiB wrk read "
                   "(lower is better); ratios are regmesh/nginx, allow/no-allow and "
                   "this build/baseline.")
        out += rb.errors_section(self.errors, "errors:")
        print("\n".join(out), flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description="regmesh TLS listener vs nginx, side by side")
    p.add_argument("--quick", action="store_true", help="64 MiB blob, 3 rounds, 3 s runs")
    p.add_argument("--big-mib", type=float, help="big blob in MiB (256)")
    p.add_argument("--small-kib", type=int, default=1024, help="small blob in KiB (1024)")
    p.add_argument("--reps", type=int, help="rounds (5)")
    p.add_argument("--secs", type=int, help="seconds per wrk run (10)")
    p.add_argument("--regmesh-bin", help="default: $REGMESH_BIN or <repo>/build/regmesh")
    p.add_argument("--regmesh-log-level", default="info",
                   help="info (default) logs every request, as nginx's access_log does")
    p.add_argument("--no-plain", action="store_true", help="skip the plain-HTTP allow: pair")
    p.add_argument("--no-tls", action="store_true", help="skip the TLS vs nginx pair")
    p.add_argument("--baseline-bin",
                   help="also compare this build's plain listener with an older regmesh binary")
    p.add_argument("--keep-tmp", action="store_true")
    a = p.parse_args(argv)
    a.big_mib = a.big_mib if a.big_mib is not None else (64 if a.quick else 256)
    a.reps = a.reps or (3 if a.quick else 5)
    a.secs = a.secs or (3 if a.quick else 10)
    if a.regmesh_bin is None:
        a.regmesh_bin = rb.default_regmesh_bin()
    return a


def main(argv):
    a = parse_args(argv)
    if not rb.have_tools((("docker-registry", rb.DISTRIBUTION_BIN), ("wrk", shutil.which("wrk")),
                          ("nginx", NGINX), ("regmesh", a.regmesh_bin))):
        return 2

    def body(tmp):
        a.regmesh_bin, a.regmesh_desc = rb.copy_binary(a.regmesh_bin, tmp, "regmesh")
        if a.baseline_bin:
            a.baseline_bin, a.baseline_desc = rb.copy_binary(a.baseline_bin, tmp, "regmesh-baseline")
        b = TLSBench(a, tmp)
        b.nginx_version = subprocess.run([NGINX, "-v"], capture_output=True).stderr.decode().strip()
        b.upstream_and_blobs()
        b.certificates()
        pairs = []
        if not a.no_tls:
            rm_tls = b.regmesh("regmesh-tls", tls=True)
            ngx = b.nginx()
            pairs.append(("tls", [("regmesh-tls", rm_tls), ("nginx", ngx)]))
        if not a.no_plain:
            rm_allow = b.regmesh("regmesh-allow", allow=["127.0.0.0/8", "10.0.0.0/8"])
            rm_open = b.regmesh("regmesh-open")
            pairs.append(("plain", [("regmesh-allow", rm_allow), ("regmesh-open", rm_open)]))
        if a.baseline_bin:
            new = b.regmesh("regmesh-new")
            old = b.regmesh("regmesh-old", binary=a.baseline_bin)
            pairs.append(("base", [("regmesh-new", new), ("regmesh-old", old)]))
        b.measure(pairs)
        b.report()
        return 2 if b.errors else 0
    # no private mount namespace: nothing here writes outside the temp dir
    return rb.run_bench(body, "regmesh-tls-bench-", a.keep_tmp,
                        (rb.BenchError, subprocess.CalledProcessError, OSError), mark=None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
