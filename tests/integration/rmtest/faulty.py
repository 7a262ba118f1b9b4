"""A registry upstream that misbehaves on purpose, for the fault suite.

It serves blobs and manifests from memory (what the test put in it) with the
registry API's paths and headers, and on request breaks one of them in one
precise way. Faults are set per path, with `fault(path_substring, kind,
**opts)`, and apply until `clear()`:

  short        Content-Length says N, the body stops early and the
               connection closes
  long         the body carries extra bytes past Content-Length
  stall        half the body, then nothing for `secs` (default 60)
  wrong_digest a Docker-Content-Digest header naming another digest
  bad_bytes    the body is other bytes than the digest asked (same length)
  status       answer `code` (e.g. 500, 503), with Retry-After `retry_after`
               when given
  redirect_loop  307 to itself, forever
  redirect_to  307 to `url` (another host: a second FaultyRegistry, whose
               `auth_seen` says whether Authorization came along)
  bad_chunked  Transfer-Encoding: chunked with a malformed chunk size
  html         200 text/html "<html>..." where a manifest was asked
  gzip         Content-Encoding: gzip on the body (which is not gzip)
  huge_auth    401 with a 64 KiB WWW-Authenticate value
Every request is recorded in `requests` as (method, path, headers dict).

With `referrers` set ({subject digest: [descriptor dicts]}) it also serves
the OCI referrers API: artifactType filtering (OCI-Filters-Applied), pages
of `n` with a Link to the next (`last=`); without it a referrers request is
the 404 a registry without the API gives.
"""

import base64
import hashlib
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import util


class FaultyRegistry:
    def __init__(self, host=None, basic_auth=None):
        """host: the address to listen on (another 127.0.0.x is another
        host to a client); basic_auth: (user, password) every request must
        carry, else a Basic challenge."""
        self.host = host or util.LOCALHOST
        self.basic_auth = basic_auth
        self.auth_seen = 0   # requests that carried an Authorization header
        self.blobs = {}      # digest -> bytes
        self.manifests = {}  # (repo, ref) -> (media_type, bytes)
        self.faults = []     # (substring, kind, opts)
        self.referrers = None  # subject digest -> [descriptors]
        self.requests = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.port = util.free_port()
        self._server = None

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    # -- content -------------------------------------------------------------
    def add_blob(self, data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[d] = data
        return d

    def add_image(self, repo, tag, layers):
        """layers: list of bytes. Returns (manifest digest, [layer digests], config digest)."""
        ld = [self.add_blob(b) for b in layers]
        cfg = json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        cd = self.add_blob(cfg)
        man = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cd, "size": len(cfg)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": d, "size": len(b)} for d, b in zip(ld, layers)],
        }, indent=2).encode()
        md = "sha256:" + hashlib.sha256(man).hexdigest()
        mt = "application/vnd.oci.image.manifest.v1+json"
        self.manifests[(repo, tag)] = (mt, man)
        self.manifests[(repo, md)] = (mt, man)
        return md, ld, cd

    def fault(self, where, kind, **opts):
        with self._lock:
            self.faults.append((where, kind, opts))

    def clear(self):
        with self._lock:
            self.faults = []

    def _fault_for(self, path):
        with self._lock:
            for where, kind, opts in self.faults:
                if where in path:
                    return kind, opts
        return None, None

    # -- server --------------------------------------------------------------
    def start(self):
        reg = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            def _referrers(self, p, query):
                if reg.referrers is None:
                    return 404, b"404 page not found\n", "text/plain", None, []
                subject = p.rsplit("/", 1)[1]
                q = urllib.parse.parse_qs(query)
                descs = list(reg.referrers.get(subject, []))
                hdrs = []
                if "artifactType" in q:
                    descs = [d for d in descs if d.get("artifactType") == q["artifactType"][0]]
                    hdrs.append(("OCI-Filters-Applied", "artifactType"))
                descs.sort(key=lambda d: d["digest"])
                if "last" in q:
                    descs = [d for d in descs if d["digest"] > q["last"][0]]
                if "n" in q and len(descs) > int(q["n"][0]):
                    descs = descs[:int(q["n"][0])]
                    nq = dict((k, v[0]) for k, v in q.items())
                    nq["last"] = descs[-1]["digest"]
                    hdrs.append(("Link", '<%s?%s>; rel="next"' % (p, urllib.parse.urlencode(nq))))
                body = json.dumps({"schemaVersion": 2,
                                   "mediaType": "application/vnd.oci.image.index.v1+json",
                                   "manifests": descs}).encode()
                return 200, body, "application/vnd.oci.image.index.v1+json", None, hdrs

            def _object(self):
                """(status, body, content type, digest) for the path."""
                p = self.path.split("?", 1)[0]
                if p in ("/v2", "/v2/"):
                    return 200, b"{}", "application/json", None
                if "/blobs/" in p:
                    d = p.rsplit("/", 1)[1]
                    if d in reg.blobs:
                        return 200, reg.blobs[d], "application/octet-stream", d
                    return 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', "application/json", None
                if "/manifests/" in p:
                    repo, ref = p[4:].rsplit("/manifests/", 1)
                    if (repo, ref) in reg.manifests:
                        mt, body = reg.manifests[(repo, ref)]
                        return 200, body, mt, "sha256:" + hashlib.sha256(body).hexdigest()
                    return (404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', "application/json",
                            None)
                return 404, b"", "text/plain", None

            def _handle(self):
                with reg._lock:
                    reg.requests.append((self.command, self.path, dict(self.headers.items())))
                kind, o = reg._fault_for(self.path)
                auth = self.headers.get("Authorization")
                if auth:
                    with reg._lock:
                        reg.auth_seen += 1
                if reg.basic_auth:
                    want = "Basic " + base64.b64encode(
                        ("%s:%s" % reg.basic_auth).encode()).decode()
                    if auth != want:
                        return self._send(401, b"", [("WWW-Authenticate",
                                                      'Basic realm="faulty"')])
                path, _, query = self.path.partition("?")
                if "/referrers/" in path:
                    status, body, ctype, _, hdrs = self._referrers(path, query)
                    return self._send(status, body, [("Content-Type", ctype)] + hdrs)
                status, body, ctype, digest = self._object()
                if kind == "status":
                    hdrs = [("Retry-After", str(o["retry_after"]))] if "retry_after" in o else []
                    return self._send(o["code"], b"", hdrs)
                if kind == "redirect_loop":
                    return self._send(307, b"", [("Location", self.path)])
                if kind == "redirect_to":
                    return self._send(307, b"", [("Location", o["url"] + self.path)])
                if kind == "huge_auth":
                    v = 'Bearer realm="http://127.0.0.1:1/token",scope="' + "x" * 65536 + '"'
                    return self._send(401, b"", [("WWW-Authenticate", v)])
                if kind == "html":
                    return self._send(200, b"<html><body>Sign in</body></html>",
                                      [("Content-Type", "text/html")])
                if status != 200:
                    return self._send(status, body, [("Content-Type", ctype)])
                hdrs = [("Content-Type", ctype)]
                if digest:
                    hdrs.append(("Docker-Content-Digest", digest))
                if kind == "wrong_digest":
                    other = "sha256:" + hashlib.sha256(body + b"x").hexdigest()
                    hdrs[-1] = ("Docker-Content-Digest", other)
                if kind == "bad_bytes":
                    body = bytes(b ^ 0x5A for b in body)
                if kind == "gzip":
                    hdrs.append(("Content-Encoding", "gzip"))
                if kind == "bad_chunked":
                    self.send_response(200)
                    for k, v in hdrs:
                        self.send_header(k, v)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(b"zz\r\n" + body[:10] + b"\r\n0\r\n\r\n")
                    self.close_connection = True
                    return
                if self.command == "HEAD":
                    return self._send(200, body, hdrs)
                self.send_response(200)
                for k, v in hdrs:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "short":
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if kind == "stall":
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    reg._stop.wait(o.get("secs", 60))
                    self.close_connection = True
                    return
                self.wfile.write(body)
                if kind == "long":
                    self.wfile.write(b"EXTRA-BYTES-PAST-CONTENT-LENGTH")
                    self.close_connection = True

            do_GET = _handle
            do_HEAD = _handle

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        util.wait_until(lambda: util.port_open(self.port, host=self.host), 10,
                        what="the faulty registry")
        return self

    def stop(self):
        self._stop.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        time.sleep(0.05)
