"""A proxy in front of an upstream registry that plays Docker Hub's rate
limit (distribution 2.8.2 sends no ratelimit-* headers at all).

  mode="deny":   every manifest GET is answered 429 TOOMANYREQUESTS with
                 `ratelimit-limit: <limit>;w=<window>`,
                 `ratelimit-remaining: 0;w=<window>` and `Retry-After: 0`;
                 everything else (HEAD, blobs, /v2/) passes unchanged.
  mode="budget": everything passes, and every response carries
                 `ratelimit-limit: <limit>;w=<window>` and
                 `ratelimit-remaining: <remaining>;w=<window>`, so the node
                 behind it sees (and gossips) a budget.

`requests` records (method, path, status) of everything it answered."""

import http.client
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import util

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
              "te", "trailers", "transfer-encoding", "upgrade"}

TOO_MANY = json.dumps({"errors": [{
    "code": "TOOMANYREQUESTS",
    "message": "You have reached your pull rate limit (rmtest rlproxy).",
    "detail": None}]}).encode()


class RateLimitProxy:
    CHUNK = 256 * 1024

    def __init__(self, target, mode="deny", limit=100, remaining=90, window=21600):
        assert mode in ("deny", "budget"), mode
        u = urllib.parse.urlsplit(target)
        self.target_host = u.hostname
        self.target_port = u.port
        self.mode = mode
        self.limit = limit
        self.remaining = remaining
        self.window = window
        self.port = util.free_port()
        self.requests = []
        self._lock = threading.Lock()
        self._server = None

    @property
    def host_port(self):
        return "%s:%d" % (util.LOCALHOST, self.port)

    @property
    def url(self):
        return "http://" + self.host_port

    def _rl_headers(self, remaining):
        return [("ratelimit-limit", "%d;w=%d" % (self.limit, self.window)),
                ("ratelimit-remaining", "%d;w=%d" % (remaining, self.window))]

    def start(self):
        px = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _record(self, status):
                with px._lock:
                    px.requests.append((self.command, self.path, status))

            def _deny(self):
                self._record(429)
                self.send_response(429, "Too Many Requests")
                self.send_header("Content-Type", "application/json")
                for k, v in px._rl_headers(0):
                    self.send_header(k, v)
                self.send_header("Retry-After", "0")
                self.send_header("docker-ratelimit-source", "rmtest-rlproxy")
                self.send_header("Content-Length", str(len(TOO_MANY)))
                self.end_headers()
                self.wfile.write(TOO_MANY)

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                path = urllib.parse.urlsplit(self.path).path
                if px.mode == "deny" and self.command == "GET" and "/manifests/" in path:
                    return self._deny()
                conn = http.client.HTTPConnection(px.target_host, px.target_port, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        lk = k.lower()
                        if lk in HOP_BY_HOP or lk == "content-length":
                            continue
                        if lk == "host":
                            v = "%s:%d" % (px.target_host, px.target_port)
                        conn.putheader(k, v)
                    if body is not None:
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    self._record(resp.status)
                    length = resp.getheader("Content-Length")
                    data = None
                    if length is None and self.command != "HEAD":
                        data = resp.read()
                        length = str(len(data))
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        lk = k.lower()
                        if lk in HOP_BY_HOP or lk == "content-length" or lk.startswith(
                                "ratelimit-"):
                            continue
                        if lk == "location":
                            v = v.replace("%s:%d" % (px.target_host, px.target_port),
                                          px.host_port)
                        self.send_header(k, v)
                    if px.mode == "budget":
                        for k, v in px._rl_headers(px.remaining):
                            self.send_header(k, v)
                    if length is not None:
                        self.send_header("Content-Length", length)
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    if data is not None:
                        self.wfile.write(data)
                        return
                    left = int(length)
                    while left > 0:
                        chunk = resp.read(min(px.CHUNK, left))
                        if not chunk:
                            break
                        left -= len(chunk)
                        self.wfile.write(chunk)
                except (ConnectionError, OSError):
                    self.close_connection = True
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer((util.LOCALHOST, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="rlproxy-" + self.mode,
                         daemon=True).start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def seen(self, method=None, contains=None, status=None):
        with self._lock:
            reqs = list(self.requests)
        return [r for r in reqs if (method is None or r[0] == method)
                and (contains is None or contains in r[1])
                and (status is None or r[2] == status)]
