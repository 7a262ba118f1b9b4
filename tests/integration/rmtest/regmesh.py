"""Harness for a regmesh node: generated config, free ports, start/stop by
PID, its access log and /metrics."""

import hashlib
import os
import re
import signal
import time

from . import util

DEFAULT_BIN = "/work/main/build/regmesh"


def regmesh_bin():
    return os.environ.get("REGMESH_BIN") or DEFAULT_BIN


def missing_binary_message(path=None):
    path = path or regmesh_bin()
    return ("regmesh binary not found at %s (build it with `make build`, or set "
            "REGMESH_BIN to its path)" % path)


def binary_ok(path=None):
    path = path or regmesh_bin()
    return os.path.isfile(path) and os.access(path, os.X_OK)


class Upstream:
    """One `upstreams:` entry. `url` is where regmesh fetches from."""

    def __init__(self, host, url, default=False, tag_ttl="60s", listen=False,
                 username=None, password=None, private=False, resolve_timeout=None,
                 first_byte_timeout=None, options=None):
        """options: more keys of the entry, {"low_speed_time": "2s", ...}."""
        self.host = host
        self.options = dict(options or {})
        self.resolve_timeout = resolve_timeout
        self.first_byte_timeout = first_byte_timeout
        self.private = private
        self.url = url
        self.default = default
        self.tag_ttl = tag_ttl
        self.listen = listen          # True = a free port is picked
        self.port = None
        self.username = username
        self.password = password
        self.password_env = None


# access id=.. remote=.. "GET /v2/.." status=200 bytes=N ms=M src=local
_REQ = re.compile(r'"(?P<method>[A-Z]+) (?P<target>[^" ]+)(?: HTTP/[0-9.]+)?"')
_KV = re.compile(r'(?<![^\s])(?P<k>[a-z_]+)=(?P<v>"[^"]*"|\S+)')


def parse_access_line(line):
    if not re.search(r'(^|\s)access(\s|$)', line):
        return None
    m = _REQ.search(line)
    if not m:
        return None
    rec = {"method": m.group("method"), "target": m.group("target")}
    path, _, query = m.group("target").partition("?")
    rec["path"] = path
    rec["query"] = query
    rest = line[:m.start()] + " " + line[m.end():]
    for kv in _KV.finditer(rest):
        v = kv.group("v")
        if v.startswith('"'):
            v = v[1:-1]
        rec[kv.group("k")] = v
    for k in ("status", "bytes", "ms"):
        if k in rec:
            try:
                rec[k] = int(float(rec[k]))
            except ValueError:
                pass
    return rec


def parse_metrics(text):
    """Prometheus text -> list of (name, {labels}, value)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', line)
        if not m:
            continue
        labels = {}
        if m.group(2):
            for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2)):
                labels[lm.group(1)] = lm.group(2)
        try:
            val = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), labels, val))
    return out


def stop_and_report(nodes, failed):
    """Test teardown: stop every node by PID; print a node's log tail when
    the test failed or the node had exited on its own."""
    for n in nodes:
        rc = n.proc.returncode() if n.proc else None
        n.stop()
        if failed or rc is not None:
            print("\n--- regmesh log %s (exited: %s) ---\n%s" % (
                n.log_path, rc, util.tail(n.log_path, 80)))


class Node:
    """A regmesh process. Attributes: url, port, host_port, data_dir,
    log_path, config_path, upstreams (by host; .port set for listeners)."""

    def __init__(self, binary, workdir, upstreams, max_size="20GiB", log_level="info",
                 data_dir=None, extra_yaml="", tls=None, admin=False):
        """tls: {"cert", "key", optional "client_ca", "min_version"} for the
        `tls:` block, plus "ca": the CA file the harness trusts for it.
        admin: add admin_listen on a free port (admin_url); the harness's
        /healthz and /metrics then go there."""
        self.binary = binary
        # (subclasses in the tests keep their own admin_port)
        self.admin_listen_port = util.free_port() if admin else None
        self.tls = tls
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = util.free_port()
        self.data_dir = data_dir or os.path.join(workdir, "data")
        self.log_path = os.path.join(workdir, "regmesh.log")
        self.config_path = os.path.join(workdir, "regmesh.yml")
        self.max_size = max_size
        self.log_level = log_level
        self.extra_yaml = extra_yaml
        self.upstreams = {}
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir}
        for i, u in enumerate(upstreams):
            if u.listen is True:
                u.port = util.free_port()
            elif u.listen:
                u.port = int(str(u.listen).rsplit(":", 1)[1])
            if u.password is not None:
                u.password_env = "RMTEST_UPSTREAM_PASSWORD_%d" % i
                self.env[u.password_env] = u.password
            self.upstreams[u.host] = u
        self.proc = None
        self.write_config()

    # -- addresses -------------------------------------------------------
    @property
    def host_port(self):
        return "%s:%d" % (util.LOCALHOST, self.port)

    @property
    def url(self):
        if self.tls:
            util.TLS_TRUST[self.host_port] = (self.tls.get("ca"), None, None)
            return "https://" + self.host_port
        return "http://" + self.host_port

    @property
    def control_url(self):
        """Where /healthz, /metrics and /cache/ are served."""
        if self.admin_listen_port:
            return "http://%s:%d" % (util.LOCALHOST, self.admin_listen_port)
        return self.url

    def listener_url(self, host):
        u = self.upstreams[host]
        assert u.port, "upstream %s has no listener" % host
        return "http://%s:%d" % (util.LOCALHOST, u.port)

    # -- config ----------------------------------------------------------
    def config_text(self):
        lines = ["listen: %s" % self.host_port,
                 "log_level: %s" % self.log_level,
                 "storage:",
                 "  root: %s" % self.data_dir,
                 "  max_size: %s" % self.max_size,
                 "upstreams:"]
        for u in self.upstreams.values():
            lines.append("  - host: %s" % u.host)
            lines.append("    url: %s" % u.url)
            if u.default:
                lines.append("    default: true")
            if u.tag_ttl:
                lines.append("    tag_ttl: %s" % u.tag_ttl)
            if u.resolve_timeout:
                lines.append("    resolve_timeout: %s" % u.resolve_timeout)
            if u.first_byte_timeout:
                lines.append("    first_byte_timeout: %s" % u.first_byte_timeout)
            if u.port:
                lines.append("    listen: %s:%d" % (util.LOCALHOST, u.port))
            if u.username is not None:
                lines.append("    username: %s" % u.username)
            if u.password_env:
                lines.append("    password_env: %s" % u.password_env)
            if u.private:
                lines.append("    private: true")
            for k, v in u.options.items():
                lines.append("    %s: %s" % (k, v))
        if self.tls:
            lines.append("tls:")
            for k in ("cert", "key", "client_ca", "min_version"):
                if self.tls.get(k):
                    lines.append('  %s: "%s"' % (k, self.tls[k]))
        if self.admin_listen_port:
            lines.append("admin_listen: %s:%d" % (util.LOCALHOST, self.admin_listen_port))
        text = "\n".join(lines) + "\n"
        if self.extra_yaml:
            text += self.extra_yaml.rstrip("\n") + "\n"
        return text

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(self.config_text())

    def reload(self, timeout=10.0):
        """Writes the config as the attributes now say, sends SIGHUP and
        returns what the node logged about it."""
        self.write_config()
        mark = self.log_mark()
        os.kill(self.pid, signal.SIGHUP)
        done = re.compile(r"SIGHUP: \S+ (reloaded|refused)")
        util.wait_until(lambda: done.search(self.log_text()[mark:]), timeout,
                        what="the reload")
        time.sleep(0.2)                    # the line after it (what waits a restart)
        return self.log_text()[mark:]

    # -- process ---------------------------------------------------------
    def start(self, timeout=20.0):
        assert self.proc is None or not self.proc.alive(), "already running"
        with open(self.log_path, "ab") as f:
            f.write(("--- rmtest: start %s\n" % time.strftime("%H:%M:%S")).encode())
        self.proc = util.Proc([self.binary, "serve", "--config", self.config_path],
                              log_path=self.log_path, env=self.env, cwd=self.dir,
                              name="regmesh").start()

        def healthy():
            if not self.proc.alive():
                raise AssertionError("regmesh exited with %s during start; log:\n%s" % (
                    self.proc.returncode(), util.tail(self.log_path)))
            return util.request(self.control_url, "GET", "/healthz", timeout=2).status == 200
        try:
            util.wait_until(healthy, timeout, what="regmesh /healthz on %s" % self.url)
        except TimeoutError as e:
            raise AssertionError("%s\nlog:\n%s" % (e, util.tail(self.log_path)))
        for u in self.upstreams.values():
            if u.port:
                util.wait_until(lambda: util.port_open(u.port), 10,
                                what="regmesh listener for %s" % u.host)
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()

    def kill9(self):
        if self.proc:
            self.proc.kill9()

    def restart(self, timeout=20.0):
        self.stop()
        return self.start(timeout)

    def alive(self):
        return self.proc is not None and self.proc.alive()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    # -- observation -----------------------------------------------------
    def log_mark(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def access(self, since=0, settle=0.2):
        """Parsed access lines written since the mark."""
        if settle:
            time.sleep(settle)
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            rec = parse_access_line(line)
            if rec:
                out.append(rec)
        return out

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def metrics(self):
        r = util.request(self.control_url, "GET", "/metrics", timeout=10)
        assert r.status == 200, "/metrics: %r" % r
        return parse_metrics(r.body.decode("utf-8", "replace"))

    def metric_sum(self, name, **labels):
        return sum(v for n, lb, v in self.metrics()
                   if n == name and all(lb.get(k) == val for k, val in labels.items()))

    def request(self, method, path, **kw):
        return util.request(self.url, method, path, **kw)

    # -- storage checks --------------------------------------------------
    def blob_path(self, digest):
        algo, hexd = digest.split(":", 1)
        return os.path.join(self.data_dir, "blobs", algo, hexd[:2], hexd)

    def has_blob(self, digest):
        return os.path.exists(self.blob_path(digest))

    def stored_blobs(self):
        """{digest: path} of every content file under blobs/ (not .meta)."""
        out = {}
        root = os.path.join(self.data_dir, "blobs")
        for dirpath, _, files in os.walk(root):
            for fn in files:
                if re.fullmatch(r"[0-9a-f]{64}", fn):
                    algo = os.path.basename(os.path.dirname(dirpath))
                    out["%s:%s" % (algo, fn)] = os.path.join(dirpath, fn)
        return out

    def files_named_like(self, digest):
        """Every file anywhere in the data dir whose name contains the hex."""
        hexd = digest.split(":", 1)[1]
        hits = []
        for dirpath, _, files in os.walk(self.data_dir):
            for fn in files:
                if hexd in fn:
                    hits.append(os.path.join(dirpath, fn))
        return hits

    def verify_store(self):
        """Every stored blob hashes to its name. Returns the bad ones."""
        bad = []
        for digest, path in self.stored_blobs().items():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if "sha256:" + h.hexdigest() != digest:
                bad.append(path)
        return bad

    def tmp_files(self):
        out = []
        for dirpath, _, files in os.walk(os.path.join(self.data_dir, "tmp")):
            out += [os.path.join(dirpath, f) for f in files]
        return out
