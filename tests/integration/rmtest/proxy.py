"""A small HTTP reverse proxy put between regmesh and an upstream registry,
to make the upstream misbehave: flip bytes in blob bodies, serve slowly,
or refuse connections."""

import http.client
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import util

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
              "te", "trailers", "transfer-encoding", "upgrade"}


class UpstreamProxy:
    """Forwards every request to `target` (http://host:port).

    Knobs (may be changed while running):
      corrupt_blobs  - XOR 0xff one byte in every 64 KiB of GET /blobs/ bodies
                       (length unchanged, so only a digest check can tell)
      bytes_per_sec  - throttle response bodies (None = full speed)
      hang           - accept requests and never answer them (until hang is
                       cleared or the proxy stops; at most HANG_MAX_S)
      fail_status    - answer every request with this status at once (None:
                       forward)
    """

    HANG_MAX_S = 120

    CHUNK = 64 * 1024

    def __init__(self, target, corrupt_blobs=False, bytes_per_sec=None):
        u = urllib.parse.urlsplit(target)
        self.target_host = u.hostname
        self.target_port = u.port
        self.corrupt_blobs = corrupt_blobs
        self.bytes_per_sec = bytes_per_sec
        self.hang = False
        self.fail_status = None
        self.hung = 0                # requests held by `hang`
        self._stopping = threading.Event()
        self.port = util.free_port()
        self.requests = []           # (method, path, status)
        self.corrupted = 0           # number of blob bodies corrupted
        self.bytes_sent = 0          # body bytes sent to clients, all requests
        self._lock = threading.Lock()
        self._server = None

    @property
    def host_port(self):
        return "%s:%d" % (util.LOCALHOST, self.port)

    @property
    def url(self):
        return "http://" + self.host_port

    def start(self):
        px = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                status = px.fail_status
                if status:
                    with px._lock:
                        px.requests.append((self.command, self.path, status))
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if px.hang:
                    with px._lock:
                        px.hung += 1
                    deadline = time.monotonic() + px.HANG_MAX_S
                    while px.hang and time.monotonic() < deadline:
                        if px._stopping.wait(0.05):
                            break
                    self.close_connection = True
                    return
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
                    with px._lock:
                        px.requests.append((self.command, self.path, resp.status))
                    length = resp.getheader("Content-Length")
                    is_blob = (self.command == "GET" and "/blobs/" in self.path
                               and resp.status in (200, 206))
                    if length is None and self.command != "HEAD":
                        data = resp.read()
                        length = str(len(data))
                        stream = None
                    else:
                        data = None
                        stream = resp
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        lk = k.lower()
                        if lk in HOP_BY_HOP or lk == "content-length":
                            continue
                        if lk == "location":
                            v = v.replace("%s:%d" % (px.target_host, px.target_port),
                                          px.host_port)
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
                    corrupt = is_blob and px.corrupt_blobs
                    if corrupt and left > 0:
                        with px._lock:
                            px.corrupted += 1
                    t0 = time.monotonic()
                    sent = 0
                    while left > 0:
                        chunk = stream.read(min(px.CHUNK, left))
                        if not chunk:
                            break
                        left -= len(chunk)
                        if corrupt:
                            b = bytearray(chunk)
                            b[len(b) // 2] ^= 0xFF
                            chunk = bytes(b)
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        with px._lock:
                            px.bytes_sent += len(chunk)
                        rate = px.bytes_per_sec
                        if rate:
                            ahead = sent / float(rate) - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(min(ahead, 1.0))
                except (ConnectionError, OSError):
                    self.close_connection = True
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = ThreadingHTTPServer((util.LOCALHOST, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="upstream-proxy",
                         daemon=True).start()
        return self

    def stop(self):
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def blob_gets(self, digest):
        with self._lock:
            return [r for r in self.requests if r[0] == "GET" and r[1].split("?")[0].endswith(digest)]
