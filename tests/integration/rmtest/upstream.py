"""Upstream registries: Debian's docker-registry (distribution 2.8.2), its
access log, htpasswd files and a JWT token server for `auth: token`."""

import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import util

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"

# 127.0.0.1 - - [27/Nov/2025:21:00:00 +0000] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 1234 "" "ua"
_COMBINED = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+)[^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+|-)')


class AccessEntry:
    __slots__ = ("method", "uri", "path", "query", "status", "size", "user")

    def __init__(self, m):
        self.method = m.group("method")
        self.uri = m.group("uri")
        u = urllib.parse.urlsplit(self.uri)
        self.path = u.path
        self.query = u.query
        self.status = int(m.group("status"))
        s = m.group("size")
        self.size = 0 if s == "-" else int(s)
        self.user = m.group("user")

    def __repr__(self):
        return "%s %s %d %d" % (self.method, self.uri, self.status, self.size)


class AccessLog:
    """Parser of distribution's combined-format access log (its stdout).

    Tests take a mark() before acting and count what happened since."""

    def __init__(self, path):
        self.path = path

    def mark(self):
        self.settle()
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def settle(self, quiet=0.25, timeout=5.0):
        """Wait until the log has stopped growing for `quiet` seconds: the
        registry writes a line only after the response is complete."""
        deadline = time.monotonic() + timeout
        last = -1
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            try:
                size = os.path.getsize(self.path)
            except OSError:
                size = 0
            if size != last:
                last = size
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                return
            time.sleep(0.05)

    def entries(self, since=0, settle=True):
        if settle:
            self.settle()
        try:
            with open(self.path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            m = _COMBINED.match(line)
            if m:
                out.append(AccessEntry(m))
        return out

    def gets(self, since=0):
        return [e for e in self.entries(since) if e.method == "GET"]

    def get_counts(self, since=0):
        """{path: number of GET requests} since the mark."""
        counts = {}
        for e in self.gets(since):
            counts[e.path] = counts.get(e.path, 0) + 1
        return counts

    def get_bytes(self, since=0):
        """Bytes the registry sent in bodies of GET responses (HEAD lines show
        a size that was never sent, so they are left out)."""
        return sum(e.size for e in self.gets(since))

    def blob_gets(self, digest, since=0, status=None):
        suffix = "/blobs/" + digest
        return [e for e in self.gets(since) if e.path.endswith(suffix)
                and (status is None or e.status == status)]

    def manifest_gets(self, since=0):
        return [e for e in self.gets(since) if "/manifests/" in e.path]

    def all_blob_gets(self, since=0):
        return [e for e in self.gets(since) if "/blobs/" in e.path]


def make_htpasswd(path, users):
    """bcrypt htpasswd file (distribution accepts bcrypt only)."""
    lines = []
    for user, pw in users.items():
        cp = util.run(["htpasswd", "-Bbn", user, pw], timeout=30)
        lines.append(cp.stdout.decode().strip())
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Registry:
    """One distribution registry process on 127.0.0.1:<free port>."""

    def __init__(self, workdir, name, auth=None):
        self.name = name
        self.dir = os.path.join(workdir, "registry-" + name)
        os.makedirs(self.dir, exist_ok=True)
        self.storage = os.path.join(self.dir, "storage")
        os.makedirs(self.storage, exist_ok=True)
        self.port = util.free_port()
        self.auth = auth or {}
        self.config_path = os.path.join(self.dir, "config.yml")
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.app_log_path = os.path.join(self.dir, "registry.log")
        self.log = AccessLog(self.access_log_path)
        self.proc = None
        self._write_config()

    @property
    def host_port(self):
        return "%s:%d" % (util.LOCALHOST, self.port)

    @property
    def url(self):
        return "http://" + self.host_port

    def _write_config(self):
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            "    rootdirectory: %s" % self.storage,
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            "  addr: %s" % self.host_port,
            "  secret: rmtest-%s-secret" % self.name,
            "health:",
            "  storagedriver:",
            "    enabled: false",
        ]
        if "htpasswd" in self.auth:
            lines += ["auth:", "  htpasswd:",
                      "    realm: rmtest-basic-realm",
                      "    path: %s" % self.auth["htpasswd"]]
        elif "token" in self.auth:
            t = self.auth["token"]
            lines += ["auth:", "  token:",
                      "    realm: %s" % t["realm"],
                      "    service: %s" % t["service"],
                      "    issuer: %s" % t["issuer"],
                      "    rootcertbundle: %s" % t["rootcertbundle"]]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=20.0):
        # distribution reads every REGISTRY_* variable as a config override:
        # hand it a clean environment.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.dir}
        self.proc = util.Proc([REGISTRY_BIN, "serve", self.config_path],
                              log_path=self.app_log_path,
                              stdout_path=self.access_log_path, env=env,
                              name="registry-" + self.name).start()

        def up():
            if not self.proc.alive():
                raise AssertionError("registry %s exited: %s" % (
                    self.name, util.tail(self.app_log_path)))
            r = util.request(self.url, "GET", "/v2/", timeout=2)
            return r.status in (200, 401)
        util.wait_until(up, timeout, what="registry %s on %s" % (self.name, self.url))
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.alive()


# ---------------------------------------------------------------------------
# Token server for distribution's `auth: token`.

def libtrust_key_id(public_key):
    """The key ID distribution (libtrust) derives from a public key: base32
    of the first 240 bits of SHA-256(DER SubjectPublicKeyInfo), in groups of
    four joined by ':'."""
    from cryptography.hazmat.primitives import serialization
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


class TokenServer:
    """http.server on 127.0.0.1 issuing RS256 JWTs (python3-jwt) the way
    Docker Hub's auth service does: GET ?service=&scope= with basic auth, or
    the OAuth2 POST form. Grants the requested pull/push actions to known
    users; anonymous callers get a token with no access."""

    def __init__(self, workdir, users, service="rmtest-registry",
                 issuer="rmtest-token-issuer", expires_in=300):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.dir = os.path.join(workdir, "token-server")
        os.makedirs(self.dir, exist_ok=True)
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=False,
                    encipher_only=False, decipher_only=False), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_path = os.path.join(self.dir, "rootcert.pem")
        with open(self.cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        self.kid = libtrust_key_id(self.key.public_key())
        self.port = util.free_port()
        self.requests = []          # dicts: method, account, scopes, granted, status
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    @property
    def realm(self):
        return "http://%s:%d/token" % (util.LOCALHOST, self.port)

    def registry_auth(self):
        return {"token": {"realm": self.realm, "service": self.service,
                          "issuer": self.issuer, "rootcertbundle": self.cert_path}}

    def issue(self, account, scopes):
        import jwt
        granted = []
        for s in scopes:
            parts = s.split(":", 1)
            if len(parts) != 2 or ":" not in parts[1]:
                continue
            typ = parts[0]
            name, actions = parts[1].rsplit(":", 1)
            if typ != "repository" or account is None:
                continue
            acts = [a for a in actions.split(",") if a in ("pull", "push")]
            if acts:
                granted.append({"type": "repository", "name": name, "actions": acts})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": account or "", "aud": self.service,
                  "exp": now + self.expires_in, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": granted}
        token = jwt.encode(claims, self.key_pem, algorithm="RS256",
                           headers={"kid": self.kid})
        if isinstance(token, bytes):
            token = token.decode()
        return token, granted

    def start(self):
        ts = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def _auth(self):
                h = self.headers.get("Authorization", "")
                if not h.lower().startswith("basic "):
                    return None, False
                try:
                    user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
                except Exception:  # noqa: BLE001
                    return None, True
                if ts.users.get(user) == pw:
                    return user, False
                return None, True

            def _reply(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method, params):
                u = urllib.parse.urlsplit(self.path)
                scopes = []
                for s in params.get("scope", []):
                    scopes.extend(s.split(" "))
                account, bad = self._auth()
                if method == "POST":
                    gt = (params.get("grant_type") or [""])[0]
                    if gt == "password":
                        user = (params.get("username") or [""])[0]
                        pw = (params.get("password") or [""])[0]
                        if ts.users.get(user) == pw:
                            account, bad = user, False
                        else:
                            account, bad = None, True
                    elif gt == "refresh_token":
                        account, bad = None, True  # no refresh tokens issued
                rec = {"method": method, "path": u.path, "account": account,
                       "scopes": scopes, "service": (params.get("service") or [""])[0]}
                if u.path != "/token":
                    rec["status"] = 404
                    with ts._lock:
                        ts.requests.append(rec)
                    return self._reply(404, {"errors": [{"code": "NOT_FOUND"}]})
                if bad:
                    rec["status"] = 401
                    with ts._lock:
                        ts.requests.append(rec)
                    return self._reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                                         "message": "bad credentials"}]})
                token, granted = ts.issue(account, scopes)
                rec["status"] = 200
                rec["granted"] = granted
                with ts._lock:
                    ts.requests.append(rec)
                issued = datetime.datetime.now(datetime.timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
                self._reply(200, {"token": token, "access_token": token,
                                  "expires_in": ts.expires_in, "issued_at": issued})

            def do_GET(self):
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                self._handle("GET", q)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode() if n else ""
                self._handle("POST", urllib.parse.parse_qs(body))

        self._server = ThreadingHTTPServer((util.LOCALHOST, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="token-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def mark(self):
        with self._lock:
            return len(self.requests)

    def since(self, mark):
        with self._lock:
            return list(self.requests[mark:])
