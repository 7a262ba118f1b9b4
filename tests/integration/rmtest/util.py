"""Small shared helpers: ports, processes, HTTP over TCP and unix sockets."""

import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse

LOCALHOST = "127.0.0.1"


def sha256_bytes(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return "sha256:" + h.hexdigest()


_used_ports = set()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Never hands out the same port twice in one session, so two fixtures
    asking close together cannot collide with each other.
    """
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((LOCALHOST, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port found")


def dead_address():
    """host:port on 127.0.0.1 where nothing listens (for proxies/servers that
    must never be reached)."""
    return "%s:%d" % (LOCALHOST, free_port())


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - we report the last one
            last_exc = e
        time.sleep(interval)
    raise TimeoutError("timed out after %.1fs waiting for %s (last error: %r)"
                       % (timeout, what, last_exc))


def port_open(port, host=LOCALHOST):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unix_socket_open(path):
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


try:
    import ctypes
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except Exception:  # noqa: BLE001
    _prctl = None


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL if the test process dies, so an
    interrupted run leaves no daemons behind (survives exec, not fork).
    Runs between fork and exec: no imports, nothing but the syscall."""
    if _prctl is not None:
        _prctl(1, 9, 0, 0, 0)   # PR_SET_PDEATHSIG, SIGKILL


class Proc:
    """A process this test session started; stopped by its PID only."""

    def __init__(self, argv, log_path, env=None, cwd=None, stdout_path=None,
                 name=None):
        self.argv = list(argv)
        self.log_path = log_path
        self.stdout_path = stdout_path or log_path
        self.name = name or os.path.basename(argv[0])
        self.env = env
        self.cwd = cwd
        self.popen = None

    def start(self):
        out = open(self.stdout_path, "ab")
        err = out if self.stdout_path == self.log_path else open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
                preexec_fn=_die_with_parent)
        finally:
            out.close()
            if err is not out:
                err.close()
        return self

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def returncode(self):
        return None if self.popen is None else self.popen.poll()

    def stop(self, timeout=10.0, sig=signal.SIGTERM):
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(10)
        self.popen = None

    def kill9(self):
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(10)
        self.popen = None

    def log_tail(self, n=60):
        return tail(self.log_path, n)


def tail(path, n=60):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log at %s)" % path
    return "\n".join(lines[-n:])


def run(argv, timeout, env=None, cwd=None, check=True, input=None):
    """Run a short-lived command, bounded in time; returns CompletedProcess."""
    try:
        cp = subprocess.run(argv, env=env, cwd=cwd, capture_output=True,
                            timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("command timed out after %ss: %s\nstdout: %s\nstderr: %s" % (
            timeout, " ".join(argv), _dec(e.stdout), _dec(e.stderr)))
    if check and cp.returncode != 0:
        raise AssertionError("command failed (rc=%d): %s\nstdout: %s\nstderr: %s" % (
            cp.returncode, " ".join(argv), _dec(cp.stdout), _dec(cp.stderr)))
    return cp


def _dec(b):
    if b is None:
        return ""
    if isinstance(b, bytes):
        b = b.decode("utf-8", "replace")
    return b[-4000:]


class Response:
    def __init__(self, status, reason, headers, body, elapsed):
        self.status = status
        self.reason = reason
        self.headers = headers        # list of (name, value)
        self.body = body
        self.elapsed = elapsed
        self.incomplete = False      # True (or an error text) if the body was cut short

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def error_codes(self):
        try:
            return [e.get("code") for e in self.json().get("errors", [])]
        except Exception:  # noqa: BLE001
            return []

    def __repr__(self):
        return "<Response %d %s %r>" % (self.status, self.headers, self.body[:300])


# "host:port" -> (CA file, client cert, client key) for https:// requests
# to a TLS listener a test started (see regmesh.Node's tls_ca).
TLS_TRUST = {}


def tls_context(netloc):
    """An ssl context trusting the CA registered for netloc (and presenting
    its client certificate, if any), else the system's."""
    ca, cert, key = TLS_TRUST.get(netloc, (None, None, None))
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def request(base, method, path, headers=None, body=None, timeout=30.0,
            read_body=True):
    """One HTTP request with http.client (no redirects, no retries).

    base: "http://127.0.0.1:PORT". headers: dict or list of (k, v) pairs
    (a list may repeat a header name, sent as separate lines).
    """
    u = urllib.parse.urlsplit(base)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout,
                                           context=tls_context(u.netloc))
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
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
        r = Response(resp.status, resp.reason, resp.getheaders(), data,
                     time.monotonic() - t0)
        r.incomplete = incomplete
        return r
    finally:
        conn.close()


def get_json(base, path, **kw):
    r = request(base, "GET", path, **kw)
    return r, (r.json() if r.body else None)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def unix_request(sock_path, method, path, body=None, headers=None, timeout=120.0):
    conn = UnixHTTPConnection(sock_path, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.reason, resp.getheaders(), resp.read(), 0)
    finally:
        conn.close()
