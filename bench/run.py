#!/usr/bin/env python3
"""bench/run.py - regmesh next to distribution's registry in proxy mode.

One run starts, on 127.0.0.1 only:
  - an upstream: Debian's docker-registry (distribution 2.8) with filesystem
    storage in a temp dir, filled with images this script makes; its access
    log (stdout, combined format) counts what the upstream served;
  - the competitor: a second docker-registry with `proxy: remoteurl:` at the
    upstream, fresh storage for every cold measurement;
  - regmesh (REGMESH_BIN or build/regmesh) with the upstream as its default
    upstream, fresh data dir for every cold measurement;
then measures cold/warm pulls with skopeo, upstream bytes per cold pull and
per N concurrent cold pulls, HEAD latency by tag and by digest, wrk
throughput on a cached small and a cached big blob, and peak RSS, and prints
one table of medians with the ratios the targets are stated in.

Python 3 standard library only. Run as root, the whole script re-executes
itself in a private mount namespace (unshare --mount) with an overlay over
/var/lib, so skopeo's blob-info cache (/var/lib/containers/cache, which no
flag moves) never reaches the real disk. Exit status: 0 when everything could
be measured (whatever the PASS/FAIL lines say), 2 when something could not
run, 130 on Ctrl-C.
"""

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse

MiB = 1024 * 1024
NS_MARK = "RMBENCH_IN_MOUNT_NS"  # never REGISTRY_*: distribution reads those as config
DISTRIBUTION_BIN = "/usr/bin/docker-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT = ", ".join([
    MANIFEST_V2,
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])
IMAGE_NAME, IMAGE_TAG = "bench/app", "v1"
BLOBS_NAME, BLOBS_TAG = "bench/blobs", "v1"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A measurement could not run (not a target missed)."""


# --------------------------------------------------------------------------
# processes and cleanup

LIVE = {}  # pid -> Popen of every process this script started and has not reaped


def spawn(argv, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("start_new_session", True)  # Ctrl-C reaches us only; we stop them
    p = subprocess.Popen(argv, **kw)
    LIVE[p.pid] = p
    return p


def reap(p, timeout=None):
    try:
        rc = p.wait(timeout=timeout)
    finally:
        if p.returncode is not None:
            LIVE.pop(p.pid, None)
    return rc


def stop_proc(p, grace=5.0):
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL."""
    if p.poll() is None:
        try:
            p.terminate()
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=grace)
        except ProcessLookupError:
            pass
    LIVE.pop(p.pid, None)


def stop_all():
    for p in list(LIVE.values()):
        try:
            stop_proc(p, grace=3.0)
        except Exception as e:  # keep cleaning up
            log(f"could not stop pid {p.pid}: {e}")


def on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def tail(path, n=15):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# small HTTP helpers (all on 127.0.0.1)

def http_get_status(port, path, timeout=2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def sha256_stream(f):
    """Reads f (a file or an http.client response) to its end: (sha256 digest, size)."""
    h, n = hashlib.sha256(), 0
    while True:
        chunk = f.read(MiB)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def read_sha256(resp):
    """Reads an http.client response to its end: (status, sha256 digest, size)."""
    digest, n = sha256_stream(resp)
    return resp.status, digest, n


def get_blob_sha256(port, name, digest, timeout=300):
    """GET a blob through port, streaming; returns (status, sha256 digest, size)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", f"/v2/{name}/blobs/{digest}")
        return read_sha256(c.getresponse())
    finally:
        c.close()


# --------------------------------------------------------------------------
# servers

class Server:
    """One registry process on 127.0.0.1:port; remembers its log files."""

    def __init__(self, label, kind, argv, port, workdir, env=None):
        self.label, self.kind, self.argv, self.port = label, kind, argv, port
        self.workdir, self.env = workdir, env
        self.out_path = os.path.join(workdir, "stdout.log")
        self.err_path = os.path.join(workdir, "stderr.log")
        self.proc = None
        self.hwm_kib = None

    def start(self, ready_timeout=30.0):
        self._out = open(self.out_path, "ab")
        self._err = open(self.err_path, "ab")
        self.proc = spawn(self.argv, stdout=self._out, stderr=self._err, env=self.env,
                          cwd=self.workdir)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited with {self.proc.returncode} at start:\n"
                                 f"{tail(self.err_path)}\n{tail(self.out_path)}")
            try:
                if http_get_status(self.port, "/v2/", timeout=1.0) == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        stop_proc(self.proc)
        raise BenchError(f"{self.label} not ready on :{self.port} within {ready_timeout}s:\n"
                         f"{tail(self.err_path)}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def hwm(self):
        if self.alive():
            v = vm_hwm_kib(self.proc.pid)
            if v is not None:
                self.hwm_kib = max(self.hwm_kib or 0, v)
        return self.hwm_kib

    def stop(self):
        if self.proc is not None:
            self.hwm()
            stop_proc(self.proc)
            self._out.close()
            self._err.close()


def registry_env():
    # distribution treats every REGISTRY_* variable as a config override
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


def write_distribution_config(path, port, root, remote=None, accesslog=True):
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        f"    disabled: {'false' if accesslog else 'true'}",
        "storage:",
        "  cache:",
        "    blobdescriptor: inmemory",
        "  filesystem:",
        f"    rootdirectory: {root}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if remote:
        lines += ["proxy:", f"  remoteurl: {remote}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def start_upstream_registry(d, port=None):
    """The upstream: a docker-registry with its storage and access log in d, on
    port (a free one by default); returns the started Server."""
    port = port or free_port()
    cfgp = os.path.join(d, "config.yml")
    write_distribution_config(cfgp, port, os.path.join(d, "storage"))
    return Server("upstream", "direct", [DISTRIBUTION_BIN, "serve", cfgp], port, d,
                  registry_env()).start()


class AccessLog:
    """The upstream's combined-format access log, read by byte offset."""

    LINE = re.compile(r'"(?P<m>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<st>\d{3}) (?P<sz>\d+|-)')
    BLOB = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}(\?.*)?$")

    def __init__(self, path):
        self.path = path

    def mark(self):
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def settle(self, quiet=1.0, timeout=30.0):
        """Wait until the log has not grown for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last, since = self.mark(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.mark()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
        log("warning: upstream access log still growing after settle timeout")

    def requests_since(self, off):
        with open(self.path, "rb") as f:
            f.seek(off)
            data = f.read()
        out = []
        for line in data.decode("utf-8", "replace").splitlines():
            m = self.LINE.search(line)
            if m:
                out.append((m["m"], m["path"], int(m["st"]), 0 if m["sz"] == "-" else int(m["sz"])))
        return out

    def blob_get_bytes_since(self, off):
        return sum(sz for m, path, st, sz in self.requests_since(off)
                   if m == "GET" and self.BLOB.match(path))


# --------------------------------------------------------------------------
# images

def human(n):
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n // 1024} KiB"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(size):
    """A gzip'd tar holding one file of `size` random bytes: (blob, diff_id)."""
    payload = os.urandom(size)
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("data.bin")
        ti.size, ti.mode, ti.mtime = size, 0o644, 0
        tf.addfile(ti, io.BytesIO(payload))
    raw = bio.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), sha(raw)


def manifest_for(config_blob, layers, layer_type=LAYER_GZ):
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG_V1, "size": len(config_blob), "digest": sha(config_blob)},
        "layers": [{"mediaType": layer_type, "size": len(b), "digest": sha(b)} for b in layers],
    }, indent=3).encode()


def config_for(diff_ids):
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/data.bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "regmesh bench"} for _ in diff_ids],
    }).encode()


def push_image(up, sizes, name=IMAGE_NAME, tag=IMAGE_TAG):
    """Pushes with Pusher up an image of one make_layer per size, its config and
    its manifest: (manifest digest, [(digest, size)] of the config, then the layers)."""
    layers, diff_ids = [], []
    for size in sizes:
        blob, did = make_layer(size)
        up.blob(name, blob)
        layers.append(blob)
        diff_ids.append(did)
    cfg = config_for(diff_ids)
    up.blob(name, cfg)
    digest = up.manifest(name, tag, manifest_for(cfg, layers))
    return digest, [(sha(cfg), len(cfg))] + [(sha(b), len(b)) for b in layers]


class Pusher:
    """Pushes blobs and manifests to the upstream with the registry HTTP API."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def _do(self, method, path, body=None, headers=None, want=()):
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        if want and r.status not in want:
            raise BenchError(f"push: {method} {path} -> {r.status} {data[:300]!r}")
        return r

    def blob(self, name, data):
        digest = sha(data)
        r = self._do("POST", f"/v2/{name}/blobs/uploads/", b"", {"Content-Length": "0"}, (202,))
        loc = urllib.parse.urlsplit(r.getheader("Location"))
        path = loc.path + ("?" + loc.query + "&" if loc.query else "?")
        self._do("PUT", path + "digest=" + urllib.parse.quote(digest), data,
                 {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
                 (201,))
        return digest

    def manifest(self, name, ref, body):
        r = self._do("PUT", f"/v2/{name}/manifests/{ref}", body,
                     {"Content-Type": MANIFEST_V2, "Content-Length": str(len(body))}, (201,))
        return r.getheader("Docker-Content-Digest") or sha(body)

    def close(self):
        self.conn.close()


# --------------------------------------------------------------------------
# pull clients

def pull_argv(cfg, port, dest):
    ref = f"127.0.0.1:{port}/{IMAGE_NAME}:{IMAGE_TAG}"
    if cfg.skopeo:
        return [cfg.skopeo, "--insecure-policy", "--tmpdir", cfg.skopeo_tmp, "copy",
                "--src-tls-verify=false", "--src-no-creds", "--retry-times", "0",
                f"docker://{ref}", f"dir:{dest}"]
    return [sys.executable, os.path.abspath(__file__), "--_pull", f"127.0.0.1:{port}",
            IMAGE_NAME, IMAGE_TAG, dest]


def skopeo_env(cfg):
    env = dict(os.environ)
    env.update({"HOME": cfg.home, "XDG_DATA_HOME": os.path.join(cfg.home, "share"),
                "XDG_CONFIG_HOME": os.path.join(cfg.home, "config"),
                "XDG_RUNTIME_DIR": os.path.join(cfg.home, "run"),
                "CONTAINERS_REGISTRIES_CONF": cfg.registries_conf,
                "TMPDIR": cfg.skopeo_tmp})
    return env


def make_client_dirs(cfg, tmp):
    """What skopeo_env and pull_many read from cfg, made below tmp: a HOME, the
    pulls' and skopeo's temp dirs and a registries.conf with no search registries."""
    cfg.home = os.path.join(tmp, "home")
    cfg.pulls = os.path.join(tmp, "pulls")
    cfg.skopeo_tmp = os.path.join(tmp, "skopeo-tmp")
    cfg.registries_conf = os.path.join(tmp, "registries.conf")
    for d in (cfg.home, cfg.pulls, cfg.skopeo_tmp):
        os.makedirs(d)
    with open(cfg.registries_conf, "w") as f:
        f.write('unqualified-search-registries = []\n')


def pull_many(cfg, port, n, timeout=600.0):
    """Start n pulls of the test image at once; returns (wall seconds, [failures])."""
    dests = [tempfile.mkdtemp(prefix="pull-", dir=cfg.pulls) for _ in range(n)]
    procs, errs = [], []
    env = skopeo_env(cfg)
    t0 = time.perf_counter()
    try:
        for d in dests:
            e = open(os.path.join(d + ".err"), "wb")
            procs.append((spawn(pull_argv(cfg, port, d), stdout=subprocess.DEVNULL, stderr=e,
                                env=env), e, d))
        deadline = time.monotonic() + timeout
        pending = set(range(n))
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                if procs[i][0].poll() is not None:
                    pending.discard(i)
            if pending:
                time.sleep(0.002)
        for i, (p, e, d) in enumerate(procs):
            if p.poll() is None:
                stop_proc(p)
                errs.append(f"pull {i} timed out after {timeout}s")
            else:
                reap(p)
                if p.returncode != 0:
                    e.flush()
                    errs.append(f"pull {i} exit {p.returncode}: {tail(d + '.err', 6)}")
        wall = time.perf_counter() - t0
    finally:
        for p, e, d in procs:
            if p.poll() is None:
                stop_proc(p)
            e.close()
        for d in dests:
            shutil.rmtree(d, ignore_errors=True)
            try:
                os.unlink(d + ".err")
            except OSError:
                pass
    return wall, errs


def pull_one(cfg, port):
    wall, errs = pull_many(cfg, port, 1)
    if errs:
        raise BenchError(f"pull from :{port} failed: " + "; ".join(errs))
    return wall


def python_pull(target, name, tag, dest):
    """Fallback pull client when skopeo is absent: manifest, then blobs on 4 threads."""
    host, port = target.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=300)
    c.request("GET", f"/v2/{name}/manifests/{tag}", headers={"Accept": ACCEPT})
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"manifest: {r.status}")
    m = json.loads(body)
    todo = [m["config"]] + m["layers"]
    lock, errors = threading.Lock(), []

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        while True:
            with lock:
                if not todo:
                    break
                d = todo.pop()
            conn.request("GET", f"/v2/{name}/blobs/{d['digest']}")
            resp = conn.getresponse()
            h = hashlib.sha256()
            with open(os.path.join(dest, d["digest"].split(":")[1]), "wb") as f:
                while True:
                    chunk = resp.read(MiB)
                    if not chunk:
                        break
                    h.update(chunk)
                    f.write(chunk)
            if resp.status != 200 or "sha256:" + h.hexdigest() != d["digest"]:
                errors.append(f"{d['digest']}: status {resp.status}")
        conn.close()

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        sys.exit("; ".join(errors))


# --------------------------------------------------------------------------
# HEAD latency on one keep-alive connection

class HeadClient:
    """HEAD requests on one keep-alive TCP connection.

    Raw socket on purpose: http.client spends tens of microseconds per
    response parsing headers, which would flatten the very ratios (tag vs
    digest) the target is about. Only the status line and two headers are
    read."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.reconnects = -1

    def _connect(self):
        if self.sock:
            self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reconnects += 1

    def head(self, path):
        req = (f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
               f"Accept: {ACCEPT}\r\nUser-Agent: regmesh-bench\r\n\r\n").encode()
        for attempt in (0, 1):
            if self.sock is None:
                self._connect()
            try:
                self.sock.sendall(req)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                    if len(buf) > 65536:
                        raise BenchError("HEAD response head too large")
                break
            except (ConnectionError, socket.timeout, OSError):
                self.sock.close()
                self.sock = None
                if attempt:
                    raise
        head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        hdrs = {}
        for h in head[1:]:
            k, _, v = h.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if hdrs.get("connection", "").lower() == "close":
            self.sock.close()
            self.sock = None
        return status, hdrs

    def close(self):
        if self.sock:
            self.sock.close()


def head_series(port, path, n, want_digest):
    """n timed HEADs of path on one connection; returns sorted ms list, reconnects."""
    hc = HeadClient(port)
    try:
        st, h = hc.head(path)
        if st != 200 or h.get("docker-content-digest") != want_digest:
            raise BenchError(f"HEAD :{port}{path} -> {st}, digest {h.get('docker-content-digest')}")
        out = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            st, _ = hc.head(path)
            out.append((time.perf_counter_ns() - t0) / 1e6)
            if st != 200:
                raise BenchError(f"HEAD :{port}{path} -> {st}")
        return sorted(out), hc.reconnects
    finally:
        hc.close()


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


# --------------------------------------------------------------------------
# wrk

UNITS = {"B": 1, "KB": 1024, "MB": MiB, "GB": 1024 * MiB, "TB": 1024 * 1024 * MiB}


def cpu_seconds(pid):
    """utime + stime of pid in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_wrk(cfg, port, path, threads, conns, secs, server_pid=None):
    """One wrk run; returns (req/s, MiB/s, errors, server CPU s, MiB read)."""
    url = f"http://127.0.0.1:{port}{path}"
    cpu0 = cpu_seconds(server_pid) if server_pid else None
    argv = [cfg.wrk, f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "60s", url]
    p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=secs + 60)
    except subprocess.TimeoutExpired:
        stop_proc(p)
        raise BenchError(f"wrk on {url} did not finish")
    finally:
        if p.poll() is None:
            stop_proc(p)
        LIVE.pop(p.pid, None)
    cpu1 = cpu_seconds(server_pid) if server_pid else None
    out = out.decode("utf-8", "replace")
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"\d+ requests in [\d.]+\w+, ([\d.]+)([KMGT]?B) read", out)
    tps = re.search(r"Transfer/sec:\s*([\d.]+)([KMGT]?B)", out)
    if p.returncode != 0 or not rps or not tps:
        raise BenchError(f"wrk failed on {url}:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0)
    if sock:
        errors += int(sock.group(1)) + int(sock.group(4))
    cpu = cpu1 - cpu0 if (cpu0 is not None and cpu1 is not None) else None
    read_mib = float(total.group(1)) * UNITS[total.group(2)] / MiB if total else None
    return float(rps.group(1)), float(tps.group(1)) * UNITS[tps.group(2)] / MiB, errors, cpu, read_mib


# --------------------------------------------------------------------------
# the run

class Stats:
    def __init__(self, vals):
        self.vals = [v for v in vals if v is not None]

    @property
    def med(self):
        return statistics.median(self.vals) if self.vals else None

    def fmt(self, digits=3, unit=""):
        if not self.vals:
            return "-"
        if len(self.vals) == 1:
            return f"{self.med:.{digits}f}{unit}"
        return (f"{self.med:.{digits}f}{unit} [{min(self.vals):.{digits}f}-"
                f"{max(self.vals):.{digits}f}]")


class WorkDirs:
    """Numbered work dirs below self.tmp: 001-upstream, 002-regmesh, ..."""
    counter = 0
    width = 3

    def _dir(self, tag):
        self.counter += 1
        d = os.path.join(self.tmp, f"{self.counter:0{self.width}d}-{tag}")
        os.makedirs(d)
        return d


def error_lines(path):
    """The lines of a log file that speak of an error, stripped ([] without the file)."""
    try:
        with open(path, "rb") as f:
            return [line.strip() for line in f.read().decode("utf-8", "replace").splitlines()
                    if re.search(r"\b(error|fatal|crit|panic)\b", line, re.I)]
    except OSError:
        return []


def ratio(x, y):
    return x / y if (x is not None and y) else None


def rx(v, d=2):
    return "-" if v is None else f"{v:.{d}f}x"


def table(head, rows):
    """The report's table: the head, a rule, the rows; columns padded, joined by |."""
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]

    def line(cells):
        return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [line(head), "-+-".join("-" * w for w in widths)] + [line(x) for x in rows]


def errors_section(errors, title="errors (measurements that could not run):"):
    """The report's last lines: the first line of every error, under a title."""
    if not errors:
        return []
    return ["", title] + ["  " + e.splitlines()[0][:300] for e in errors]


class Bench(WorkDirs):
    def __init__(self, args, tmp):
        self.a = args
        self.tmp = tmp
        self.errors = []
        self.res = {}            # (metric, side) -> value
        self.hwm = {"regmesh": [], "distribution": []}  # KiB per instance
        self.hwm_main = {}  # KiB of the long-lived instance (N pulls, HEADs, wrk)
        self.rm_log_errors = []  # error lines from regmesh's logs, for the report
        self.notes = []
        self.main = {}
        self.skopeo = shutil.which("skopeo") if not args.python_puller else None
        self.wrk = shutil.which("wrk")
        make_client_dirs(self, tmp)
        self.upstream = None
        self.load0 = loadavg()
        self.image_bytes = 0
        self.counter = 0
        self.sides = ["direct"]
        if not args.no_distribution:
            self.sides.append("distribution")
        if args.regmesh_bin:
            self.sides.append("regmesh")

    # -- servers -----------------------------------------------------------
    def start_upstream(self):
        self.upstream = start_upstream_registry(self._dir("upstream"))
        self.alog = AccessLog(self.upstream.out_path)
        log(f"upstream docker-registry on 127.0.0.1:{self.upstream.port}")

    def start_proxy(self, side):
        d = self._dir(side)
        port = free_port()
        up = f"http://127.0.0.1:{self.upstream.port}"
        if side == "distribution":
            cfgp = os.path.join(d, "config.yml")
            write_distribution_config(cfgp, port, os.path.join(d, "storage"), remote=up,
                                      accesslog=False)
            argv, env = [DISTRIBUTION_BIN, "serve", cfgp], registry_env()
        else:
            cfgp = os.path.join(d, "regmesh.yml")
            with open(cfgp, "w") as f:
                f.write(f"listen: 127.0.0.1:{port}\nlog_level: warn\nstorage:\n"
                        f"  root: {os.path.join(d, 'data')}\n  max_size: 20GiB\n"
                        f"upstreams:\n  - host: docker.io\n    url: {up}\n"
                        f"    default: true\n    tag_ttl: 60s\n")
            argv, env = [self.a.regmesh_bin, "serve", "--config", cfgp], None
        return Server(side, side, argv, port, d, env).start()

    def stop_proxy(self, srv, what="cold"):
        srv.stop()
        if srv.kind == "regmesh":
            self.rm_log_errors += error_lines(srv.err_path)
            if srv.proc.returncode not in (0, -signal.SIGTERM):
                self.notes.append(f"regmesh ({what} instance) exited with {srv.proc.returncode} "
                                  "when stopped with SIGTERM")
        if srv.hwm_kib:
            self.hwm[srv.kind].append(srv.hwm_kib)
            log(f"{srv.label} ({what} instance) VmHWM {srv.hwm_kib / 1024:.1f} MiB")
        if not self.a.keep_tmp:
            shutil.rmtree(srv.workdir, ignore_errors=True)

    def port_of(self, side, srv=None):
        return self.upstream.port if side == "direct" else srv.port

    def guarded(self, what, side, fn, *a):
        """Run one measurement; record an error for the report instead of dying."""
        try:
            return fn(*a)
        except BenchError as e:
            self.errors.append(f"{side}: {what}: {e}")
            log(f"ERROR {side}: {what}: {e}")
            return None

    # -- content -----------------------------------------------------------
    def push_images(self):
        s = self.a.scale
        layer_mib = [24, 16, 10, 6, 4]
        up = Pusher(self.upstream.port)
        t0 = time.monotonic()
        self.image_digest, blobs = push_image(up, [max(4096, int(m * MiB * s)) for m in layer_mib])
        self.image_bytes = sum(n for _, n in blobs)
        small = os.urandom(self.a.small_kib * 1024)
        big = os.urandom(int(self.a.big_mib * MiB))
        self.small_digest = up.blob(BLOBS_NAME, small)
        self.big_digest = up.blob(BLOBS_NAME, big)
        self.small_size, self.big_size = len(small), len(big)
        bcfg = config_for([])
        up.blob(BLOBS_NAME, bcfg)
        up.manifest(BLOBS_NAME, BLOBS_TAG,
                    manifest_for(bcfg, [small, big], "application/octet-stream"))
        del small, big
        up.close()
        log(f"pushed {IMAGE_NAME}:{IMAGE_TAG} ({len(layer_mib)} layers + config = "
            f"{self.image_bytes / MiB:.1f} MiB, {self.image_digest[:19]}), "
            f"{human(self.small_size)} and {human(self.big_size)} blobs "
            f"in {time.monotonic() - t0:.1f}s")

    # -- measurements ------------------------------------------------------
    def cold_pulls(self):
        a = self.a
        times = {s: [] for s in self.sides}
        bytes_ = {s: [] for s in self.sides}
        log("warm-up direct pull")
        pull_one(self, self.upstream.port)
        self.alog.settle(0.5)
        for rep in range(a.reps):
            order = self.sides[rep % len(self.sides):] + self.sides[:rep % len(self.sides)]
            for side in order:
                srv = None
                try:
                    if side != "direct":
                        srv = self.start_proxy(side)
                    port = self.port_of(side, srv)
                    off = self.alog.mark()
                    t = pull_one(self, port)
                    self.alog.settle(a.settle)
                    b = self.alog.blob_get_bytes_since(off)
                    times[side].append(t)
                    bytes_[side].append(b)
                    log(f"cold pull {rep + 1}/{a.reps} {side:12s} {t:7.3f}s  upstream blob bytes "
                        f"{b / self.image_bytes:.2f}x image")
                except BenchError as e:
                    self.errors.append(f"{side}: cold pull: {e}")
                    log(f"ERROR {side}: cold pull: {e}")
                finally:
                    if srv:
                        self.stop_proxy(srv)
        for s in self.sides:
            self.res[("cold", s)] = Stats(times[s])
            self.res[("bytes1", s)] = Stats([b / self.image_bytes for b in bytes_[s]])

    def concurrent_and_main(self):
        """Fresh long-lived instances: N concurrent cold pulls first, then the rest."""
        a = self.a
        self.main = {}
        for side in self.sides:
            try:
                srv = None if side == "direct" else self.start_proxy(side)
                self.main[side] = srv
                port = self.port_of(side, srv)
                off = self.alog.mark()
                wall, fails = pull_many(self, port, a.concurrency)
                self.alog.settle(a.settle)
                b = self.alog.blob_get_bytes_since(off)
                self.res[("bytesN", side)] = Stats([b / self.image_bytes])
                self.res[("wallN", side)] = Stats([wall])
                self.res[("failN", side)] = len(fails)
                log(f"{a.concurrency} concurrent cold pulls {side:12s} wall {wall:7.3f}s  upstream "
                    f"blob bytes {b / self.image_bytes:.2f}x image, {len(fails)} pulls failed")
                for f in fails:
                    log(f"  {side}: {f.splitlines()[0][:300]}")
            except BenchError as e:
                self.errors.append(f"{side}: {a.concurrency} concurrent pulls: {e}")
                log(f"ERROR {side}: concurrent pulls: {e}")

    def log_hwm(self, phase):
        parts = [f"{s} {v.hwm() / 1024:.1f}" for s, v in self.main.items()
                 if v is not None and v.alive() and v.hwm()]
        if parts:
            log(f"VmHWM MiB after {phase}: " + ", ".join(parts))

    def live_sides(self):
        return [s for s in self.sides if s == "direct" or (self.main.get(s) and self.main[s].alive())]

    def warm_pulls(self):
        times = {s: [] for s in self.sides}
        for rep in range(self.a.reps):
            for side in self.live_sides():
                t = self.guarded("warm pull", side, pull_one, self, self.port_of(side, self.main.get(side)))
                if t is not None:
                    times[side].append(t)
        for s in self.sides:
            self.res[("warm", s)] = Stats(times[s])
        log("warm pulls: " + ", ".join(f"{s} {self.res[('warm', s)].fmt()}s" for s in self.sides))

    def heads(self):
        n = self.a.head_n
        for side in self.live_sides():
            port = self.port_of(side, self.main.get(side))
            tag_path = f"/v2/{IMAGE_NAME}/manifests/{IMAGE_TAG}"
            dig_path = f"/v2/{IMAGE_NAME}/manifests/{self.image_digest}"
            try:
                head_series(port, tag_path, self.a.head_warmup, self.image_digest)
                head_series(port, dig_path, self.a.head_warmup, self.image_digest)
                self.alog.settle(0.3, 5)
                off = self.alog.mark()
                tags, rc1 = head_series(port, tag_path, n, self.image_digest)
                self.alog.settle(0.5, 10)
                up_tag = len(self.alog.requests_since(off))
                off = self.alog.mark()
                digs, rc2 = head_series(port, dig_path, n, self.image_digest)
                self.alog.settle(0.5, 10)
                up_dig = len(self.alog.requests_since(off))
            except (BenchError, OSError) as e:
                self.errors.append(f"{side}: HEAD: {e}")
                log(f"ERROR {side}: HEAD: {e}")
                continue
            self.res[("head_tag", side)] = tags
            self.res[("head_dig", side)] = digs
            self.res[("head_up_tag", side)] = up_tag
            self.res[("head_up_dig", side)] = up_dig
            log(f"HEAD {side:12s} tag p50 {pct(tags, 50):.3f} ms p99 {pct(tags, 99):.3f} ms | digest "
                f"p50 {pct(digs, 50):.3f} ms p99 {pct(digs, 99):.3f} ms | upstream requests during "
                f"tag HEADs {up_tag}, digest HEADs {up_dig} | reconnects {rc1 + rc2}")

    def wrks(self):
        a = self.a
        blobs = [("small", self.small_digest, self.small_size, a.wrk_small_args),
                 ("big", self.big_digest, self.big_size, a.wrk_big_args)]
        for side in self.live_sides():
            port = self.port_of(side, self.main.get(side))
            for key, digest, size, _ in blobs:
                st, got, n = get_blob_sha256(port, BLOBS_NAME, digest)
                if st != 200 or got != digest or n != size:
                    self.errors.append(f"{side}: warming {key} blob: status {st}, {n} bytes")
                    log(f"ERROR {side}: warming {key} blob: status {st}, {got}, {n} bytes")
            time.sleep(0.5)
        self.log_hwm("one cold GET of each wrk blob")
        for key, digest, size, (t, c) in blobs:
            vals = {s: [] for s in self.sides}
            cpus = {s: [] for s in self.sides}
            for rep in range(a.reps):
                sides = self.live_sides()
                sides = sides[rep % len(sides):] + sides[:rep % len(sides)]
                for side in sides:
                    port = self.port_of(side, self.main.get(side))
                    pid = (self.upstream if side == "direct" else self.main[side]).proc.pid
                    r = self.guarded(f"wrk {key}", side, run_wrk, self, port,
                                     f"/v2/{BLOBS_NAME}/blobs/{digest}", t, c, a.wrk_secs, pid)
                    if r is None:
                        continue
                    rps, mibps, errs, cpu, read_mib = r
                    if errs:
                        self.errors.append(f"{side}: wrk {key}: {errs} errors/non-2xx responses")
                    vals[side].append(rps if key == "small" else mibps)
                    # server CPU per GiB sent: much less sensitive to a busy machine
                    if cpu is not None and read_mib:
                        cpus[side].append(cpu / (read_mib / 1024))
                    log(f"wrk {key} {rep + 1}/{a.reps} {side:12s} {rps:10.1f} req/s {mibps:9.1f} MiB/s"
                        + (f"  server CPU {cpu:.2f}s" if cpu is not None else "")
                        + (f"  ({errs} errors)" if errs else ""))
            for s in self.sides:
                self.res[("wrk_" + key, s)] = Stats(vals[s])
                self.res[("wrkcpu_" + key, s)] = Stats(cpus[s])
            self.log_hwm(f"wrk on the {key} blob")

    def finish_main(self):
        for side, srv in self.main.items():
            if srv is not None:
                self.hwm_main[side] = srv.hwm()
                self.stop_proxy(srv, "long-lived")
        self.res[("hwm", "direct")] = self.upstream.hwm()

    # -- report ------------------------------------------------------------
    def report(self):
        a, r, S = self.a, self.res, self.sides
        has_rm, has_d = "regmesh" in S, "distribution" in S

        def st(key, side):
            return r.get((key, side)) or Stats([])

        rows, verdicts = [], []

        def col(side, text):
            if side not in S:
                return "n/a" if side == "regmesh" else "(skipped)"
            return text

        def verdict(ok, text):
            if not has_rm:
                verdicts.append(("SKIP", text + " (regmesh not run)"))
            elif ok is None:
                verdicts.append(("FAIL", text + " (not measured)"))
            else:
                verdicts.append(("PASS" if ok else "FAIL", text))

        n = a.reps
        # cold pull
        c = {s: st("cold", s) for s in ("regmesh", "distribution", "direct")}
        rr = ratio(c["regmesh"].med, c["direct"].med)
        dr = ratio(c["distribution"].med, c["direct"].med)
        rows.append([f"cold pull, s (median [min-max], n={n})", col("regmesh", c["regmesh"].fmt()),
                     col("distribution", c["distribution"].fmt()), c["direct"].fmt() + " direct",
                     f"{rx(rr)} direct (dist {rx(dr)})", "regmesh <= 1.15x direct"])
        verdict(rr is not None and rr <= 1.15,
                f"cold pull / direct pull = {rx(rr)} (target <= 1.15x; distribution {rx(dr)})")
        # bytes
        for key, label, tgt in (("bytes1", "upstream blob bytes, 1 cold pull (x image)", 1),
                                ("bytesN", f"upstream blob bytes, {a.concurrency} concurrent cold "
                                           "pulls (x image)", a.concurrency)):
            b = {s: st(key, s) for s in ("regmesh", "distribution", "direct")}

            def bf(side):
                f = r.get(("failN", side)) if key == "bytesN" else None
                return col(side, b[side].fmt(2, "x") + (f" ({f} of {a.concurrency} pulls failed)"
                                                         if f else ""))
            rows.append([label, bf("regmesh"), bf("distribution"),
                         f"{b['direct'].fmt(2, 'x')} direct; image {self.image_bytes / MiB:.1f} MiB",
                         f"{rx(b['regmesh'].med)} (dist {rx(b['distribution'].med)})", "= 1.00x image"])
            worst = max(b["regmesh"].vals) if b["regmesh"].vals else None
            fails = r.get(("failN", "regmesh")) if key == "bytesN" else 0
            verdict(worst is not None and round(worst, 2) <= 1.00 and not fails,
                    f"{label.replace(' (x image)', '')} = {rx(worst)} of the image"
                    f"{', worst run' if key == 'bytes1' else ''}"
                    f"{f', {fails} pulls failed' if fails else ''} (target 1.00x; distribution "
                    f"{rx(b['distribution'].med)})")
        w = {s: st("wallN", s) for s in ("regmesh", "distribution", "direct")}
        rows.append([f"{a.concurrency} concurrent cold pulls, wall s", col("regmesh", w["regmesh"].fmt()),
                     col("distribution", w["distribution"].fmt()), w["direct"].fmt() + " direct",
                     f"{rx(ratio(w['regmesh'].med, w['direct'].med))} direct "
                     f"(dist {rx(ratio(w['distribution'].med, w['direct'].med))})", "(info)"])
        w = {s: st("warm", s) for s in ("regmesh", "distribution", "direct")}
        rows.append([f"warm pull (cached), s (n={n})", col("regmesh", w["regmesh"].fmt()),
                     col("distribution", w["distribution"].fmt()), w["direct"].fmt() + " direct",
                     f"{rx(ratio(w['regmesh'].med, w['direct'].med))} direct "
                     f"(dist {rx(ratio(w['distribution'].med, w['direct'].med))})", "(info)"])
        # HEAD
        def hfmt(side, key):
            v = r.get((key, side))
            if not v:
                return col(side, "-")
            return f"{pct(v, 50):.3f} [p99 {pct(v, 99):.3f}]"

        def p50(side, key):
            v = r.get((key, side))
            return pct(v, 50) if v else None

        rt = ratio(p50("regmesh", "head_tag"), p50("regmesh", "head_dig"))
        dt = ratio(p50("distribution", "head_tag"), p50("direct", "head_tag"))
        rows.append([f"HEAD manifests/<tag>, ms p50 [p99], n={a.head_n}", hfmt("regmesh", "head_tag"),
                     hfmt("distribution", "head_tag"), hfmt("direct", "head_tag") + " direct",
                     f"{rx(rt)} rm digest (dist {rx(dt, 1)} direct)", "<= 1.5x HEAD by digest"])
        rows.append(["HEAD manifests/<digest>, ms p50 [p99]", hfmt("regmesh", "head_dig"),
                     hfmt("distribution", "head_dig"), hfmt("direct", "head_dig") + " direct",
                     f"{rx(ratio(p50('regmesh', 'head_dig'), p50('direct', 'head_dig')))} direct "
                     f"(dist {rx(ratio(p50('distribution', 'head_dig'), p50('direct', 'head_dig')))})",
                     "(info)"])
        ut = {s: r.get(("head_up_tag", s)) for s in ("regmesh", "distribution")}
        ud = {s: r.get(("head_up_dig", s)) for s in ("regmesh", "distribution")}

        def cnt(s):
            return col(s, "-" if ut[s] is None else f"{ut[s]} (digest HEADs: {ud[s]})")
        rows.append([f"upstream requests during {a.head_n} tag HEADs", cnt("regmesh"), cnt("distribution"),
                     "-", "", "0 within tag_ttl"])
        verdict(ut["regmesh"] == 0 if ut["regmesh"] is not None else None,
                f"HEAD manifests/<tag> within tag_ttl: {'-' if ut['regmesh'] is None else ut['regmesh']}"
                f" upstream requests in {a.head_n} (target 0; distribution "
                f"{'-' if ut['distribution'] is None else ut['distribution']})")
        verdict(rt is not None and rt <= 1.5,
                f"HEAD manifests/<tag> p50 = {rx(rt)} of HEAD by digest (target <= 1.5x; "
                f"distribution tag HEAD = {rx(dt, 1)} direct)")
        # wrk
        for key, label, unit, tgt in (
                ("small", f"wrk {human(self.small_size)} blob -t{a.wrk_small_args[0]} "
                          f"-c{a.wrk_small_args[1]}, req/s", "req/s", 2.0),
                ("big", f"wrk {human(self.big_size)} blob -t{a.wrk_big_args[0]} "
                        f"-c{a.wrk_big_args[1]}, MiB/s", "MiB/s", 1.0)):
            v = {s: st("wrk_" + key, s) for s in ("regmesh", "distribution", "direct")}
            q = ratio(v["regmesh"].med, v["distribution"].med)
            rows.append([label + f" (n={n}, {a.wrk_secs}s)", col("regmesh", v["regmesh"].fmt(1)),
                         col("distribution", v["distribution"].fmt(1)), v["direct"].fmt(1) + " direct",
                         f"{rx(q)} dist", f">= {tgt:.0f}x distribution"])
            note = ""
            if q is not None and q < tgt and v["regmesh"].vals and v["distribution"].vals and \
                    max(v["regmesh"].vals) >= tgt * min(v["distribution"].vals):
                note = "; the runs' ranges overlap: within this machine's noise, re-run to confirm"
            if has_rm and not has_d:
                # the target is a ratio to distribution: nothing to compare with
                verdicts.append(("SKIP", f"{label} (distribution not run)"))
            else:
                verdict(q is not None and q >= tgt,
                        f"{label}: regmesh = {rx(q)} distribution (target >= {tgt:.0f}x{note})")
            cp = {s: st("wrkcpu_" + key, s) for s in ("regmesh", "distribution", "direct")}
            rows.append([f"  server CPU s per GiB sent ({key} blob)", col("regmesh", cp["regmesh"].fmt(2)),
                         col("distribution", cp["distribution"].fmt(2)), cp["direct"].fmt(2) + " direct",
                         f"{rx(ratio(cp['regmesh'].med, cp['distribution'].med))} dist",
                         "(info: lower is better)"])
        # RSS
        def mib(kib):
            return None if kib is None else kib / 1024.0
        hr = max(self.hwm["regmesh"]) if self.hwm["regmesh"] else None
        hd = max(self.hwm["distribution"]) if self.hwm["distribution"] else None
        hu = r.get(("hwm", "direct"))

        def rss(side, v):
            if v is None:
                return col(side, "-")
            m = self.hwm_main.get(side)
            return (f"{mib(v):.1f} (long-lived {'-' if m is None else f'{mib(m):.1f}'}; "
                    f"{len(self.hwm[side])} instances)")
        rows.append(["peak RSS (VmHWM), MiB, max over instances", rss("regmesh", hr),
                     rss("distribution", hd), "-" if hu is None else f"{mib(hu):.1f} upstream (info)",
                     "", "<= 32 MiB"])
        verdict(hr is not None and mib(hr) <= 32.0,
                f"peak RSS = {'-' if hr is None else f'{mib(hr):.1f}'} MiB (target <= 32 MiB; "
                f"distribution {'-' if hd is None else f'{mib(hd):.1f}'} MiB)")

        head = ["metric", "regmesh", "distribution proxy", "direct/baseline", "ratio", "target"]
        out = ["", f"regmesh bench: image {self.image_bytes / MiB:.1f} MiB in 6 blobs, scale "
                   f"{a.scale}, {a.reps} reps, client {'skopeo' if self.skopeo else 'python puller'}, "
                   f"{os.cpu_count()} CPUs, load average at start {self.load0}, at end {loadavg()}",
               f"regmesh: {a.regmesh_desc if a.regmesh_bin else 'not found: ' + a.regmesh_missing}",
               ""] + table(head, rows)
        out.append("")
        out += [f"{v}  {t}" for v, t in verdicts]
        for n_ in dict.fromkeys(self.notes):
            out.append(f"note: {n_}")
        if self.rm_log_errors:
            out.append("")
            out.append(f"note: regmesh logged {len(self.rm_log_errors)} error lines; first ones:")
            seen = []
            for e in self.rm_log_errors:
                k = re.sub(r"^\S+\s+", "", re.sub(r"id=\d+", "id=N", e))
                if k not in seen:
                    seen.append(k)
            out += ["  " + k[:200] for k in seen[:5]]
        out += errors_section(self.errors)
        print("\n".join(out), flush=True)


def setup_mount_ns(tmp):
    """Inside our private mount namespace: hide skopeo's root cache dir writes."""
    target = "/var/lib/containers"
    if os.path.isdir(target):
        cmds = [["mount", "-t", "tmpfs", "-o", "size=64m", "rmbench", target]]
        mnt = target
    else:
        up, wk = os.path.join(tmp, "ovl-upper"), os.path.join(tmp, "ovl-work")
        os.makedirs(up)
        os.makedirs(wk)
        cmds = [["mount", "-t", "overlay", "rmbench", "-o",
                 f"lowerdir=/var/lib,upperdir={up},workdir={wk}", "/var/lib"],
                ["mount", "-t", "tmpfs", "-o", "size=64m", "rmbench", "/var/lib"]]
        mnt = "/var/lib"
    for c in cmds:
        if subprocess.run(c, stderr=subprocess.DEVNULL).returncode == 0:
            return mnt
    return None


# --------------------------------------------------------------------------
# what every bench script's main() does

def default_regmesh_bin():
    """$REGMESH_BIN or <repo>/build/regmesh."""
    return os.environ.get("REGMESH_BIN") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "regmesh")


def have_tools(tools):
    """True when every (name, path) of tools is an executable; else logs the
    first one missing."""
    for tool, path in tools:
        if not path or not os.access(path, os.X_OK):
            log(f"{tool} not found; cannot run")
            return False
    return True


def copy_binary(src, tmp, name):
    """A private copy tmp/name of a binary (a rebuild during the run must not
    mix two versions): (its path, what the report says of src: path, mtime,
    sha256)."""
    dest = os.path.join(tmp, name)
    shutil.copy2(src, dest)
    with open(dest, "rb") as f:
        return dest, (f"{src} (mtime {time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(src)))}"
                      f", sha256 {hashlib.sha256(f.read()).hexdigest()[:12]})")


def make_certs(regmesh_bin, pki):
    """`regmesh ca init` a CA in pki/ca and `ca issue` it a certificate for
    127.0.0.1: (ca.crt, ca.key, bench.crt, bench.key). Raises
    subprocess.CalledProcessError (regmesh's stderr passes through)."""
    ca = os.path.join(pki, "ca")
    for argv in (["ca", "init", ca], ["ca", "issue", ca, "bench", "--ip", "127.0.0.1"]):
        subprocess.run([regmesh_bin] + argv, check=True, stdout=subprocess.DEVNULL)
    return tuple(os.path.join(ca, n) for n in ("ca.crt", "ca.key", "bench.crt", "bench.key"))


def reexec_in_mount_ns(script, argv, mark=NS_MARK):
    """As root, once (mark in the environment): re-execute script with argv
    in a private mount namespace. Returns only where it does not."""
    if os.geteuid() == 0 and os.environ.get(mark) != "1" and shutil.which("unshare"):
        os.environ[mark] = "1"
        try:
            os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", "--",
                                  sys.executable, script] + argv)
        except OSError as e:
            log(f"unshare failed ({e}); running without a private mount namespace")


def run_bench(body, prefix, keep_tmp, errors=(BenchError,), mark=NS_MARK, say=log):
    """main()'s frame: SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt; a
    temp dir (prefix); in the private mount namespace (mark set; None: never)
    skopeo's cache dir covered; then body(tmp), which returns the exit status.
    130 on Ctrl-C, 2 on one of `errors`; at the end every process stopped,
    the mount and the temp dir (unless keep_tmp) removed."""
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (cmd &)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    tmp = tempfile.mkdtemp(prefix=prefix)
    mnt = None
    rc = 0
    t0 = time.monotonic()
    try:
        if mark and os.environ.get(mark) == "1":
            mnt = setup_mount_ns(tmp)
            if not mnt:
                say("warning: could not cover /var/lib/containers; skopeo may leave its cache there")
        rc = body(tmp)
        say(f"done in {time.monotonic() - t0:.0f}s")
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        rc = 130
    except errors as e:
        say(f"ERROR: {e}")
        rc = 2
    finally:
        stop_all()
        if mnt:
            subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
        if keep_tmp:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


def parse_args(argv):
    p = argparse.ArgumentParser(description="regmesh vs distribution proxy, side by side")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, 3 reps, short wrk runs (under 3 minutes)")
    p.add_argument("--scale", type=float, help="multiply the pull image size (default 1.0: ~60 MiB)")
    p.add_argument("--big-mib", type=float, help="size of the big wrk blob in MiB (default 256)")
    p.add_argument("--small-kib", type=int, default=1024, help="small wrk blob in KiB (1024)")
    p.add_argument("--reps", type=int, help="repetitions per timing (default 5)")
    p.add_argument("--head-n", type=int, help="HEAD requests per series (default 500)")
    p.add_argument("--head-warmup", type=int, default=50)
    p.add_argument("--wrk-secs", type=int, help="wrk duration (default 10)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent cold pulls (8)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds the upstream log must stay quiet before counting bytes")
    p.add_argument("--regmesh-bin", help="default: $REGMESH_BIN or <repo>/build/regmesh")
    p.add_argument("--no-distribution", action="store_true", help="skip the distribution proxy")
    p.add_argument("--python-puller", action="store_true", help="use the Python puller, not skopeo")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs) for a look")
    p.add_argument("--_pull", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    q = a.quick
    a.scale = a.scale if a.scale is not None else (0.25 if q else 1.0)
    a.big_mib = a.big_mib if a.big_mib is not None else (64 if q else 256)
    a.reps = a.reps or (3 if q else 5)
    a.head_n = a.head_n or (200 if q else 500)
    a.wrk_secs = a.wrk_secs or (3 if q else 10)
    a.wrk_small_args = (2, 16)
    a.wrk_big_args = (1, 2)
    a.regmesh_missing = a.regmesh_desc = ""
    if a.regmesh_bin is None:
        a.regmesh_bin = default_regmesh_bin()
    if not (os.path.isfile(a.regmesh_bin) and os.access(a.regmesh_bin, os.X_OK)):
        a.regmesh_missing, a.regmesh_bin = a.regmesh_bin, None
    return a


def main(argv):
    a = parse_args(argv)
    if a._pull:
        python_pull(*a._pull)
        return 0
    reexec_in_mount_ns(os.path.abspath(__file__), argv)
    if not have_tools((("docker-registry", DISTRIBUTION_BIN), ("wrk", shutil.which("wrk")))):
        return 2
    if a.regmesh_bin is None:
        log(f"regmesh binary not found at {a.regmesh_missing}: measuring the distribution side only")
    if a.no_distribution and a.regmesh_bin is None:
        log("nothing to measure")
        return 2

    def body(tmp):
        if a.regmesh_bin:
            a.regmesh_bin, a.regmesh_desc = copy_binary(a.regmesh_bin, tmp, "regmesh")
        b = Bench(a, tmp)
        if not b.skopeo:
            log("skopeo not found (or --python-puller): pulling with the Python puller")
        b.start_upstream()
        b.push_images()
        b.cold_pulls()
        b.concurrent_and_main()
        b.log_hwm("concurrent cold pulls")
        b.warm_pulls()
        b.heads()
        b.log_hwm("warm pulls and HEADs")
        b.wrks()
        b.finish_main()
        b.report()
        return 2 if b.errors else 0
    return run_bench(body, "regmesh-bench-", a.keep_tmp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
