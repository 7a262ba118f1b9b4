"""Test images made offline: real gzip'ed tar layers of random content,
valid image configs, Docker schema2 / OCI manifests, indexes; and a small
registry API client that pushes them (with basic or bearer auth)."""

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
import urllib.parse

from . import util

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

ALL_MANIFEST_TYPES = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX]
ACCEPT_ALL = ", ".join(ALL_MANIFEST_TYPES)

FORMATS = {
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST),
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX),
}


class Blob:
    def __init__(self, digest, size, path, media_type):
        self.digest = digest
        self.size = size
        self.path = path
        self.media_type = media_type

    @property
    def hex(self):
        return self.digest.split(":", 1)[1]

    def read(self):
        with open(self.path, "rb") as f:
            return f.read()

    def __repr__(self):
        return "<Blob %s %d %s>" % (self.digest[:19], self.size, self.media_type)


class Image:
    """A manifest (with config and layers) or an index (with children)."""

    def __init__(self, media_type, manifest, config=None, layers=(), children=(),
                 platform=None, diff_ids=()):
        self.media_type = media_type
        self.manifest = manifest                  # exact bytes
        self.digest = util.sha256_bytes(manifest)
        self.config = config
        self.layers = list(layers)
        self.children = list(children)
        self.platform = platform
        self.diff_ids = list(diff_ids)
        self.repo = None
        self.tags = []

    @property
    def tag(self):
        return self.tags[0] if self.tags else None

    @property
    def is_index(self):
        return self.media_type in (OCI_INDEX, DOCKER_LIST)

    def own_blobs(self):
        return ([self.config] if self.config else []) + self.layers

    def all_blobs(self):
        out = list(self.own_blobs())
        for c in self.children:
            out += c.all_blobs()
        return out

    def all_manifests(self):
        out = [self]
        for c in self.children:
            out += c.all_manifests()
        return out

    def child(self, arch):
        for c in self.children:
            if c.platform and c.platform.get("architecture") == arch:
                return c
        raise KeyError(arch)

    def ref(self, host_port=None, tag=None):
        r = "%s:%s" % (self.repo, tag or self.tag)
        return "%s/%s" % (host_port, r) if host_port else r

    def __repr__(self):
        return "<Image %s:%s %s %s>" % (self.repo, self.tag, self.media_type, self.digest[:19])


class _RandomReader:
    """File-like object yielding `size` random bytes (for tarfile.addfile)."""

    def __init__(self, size):
        self.left = size

    def read(self, n=-1):
        if n is None or n < 0 or n > self.left:
            n = self.left
        self.left -= n
        return os.urandom(n)


class ImageStore:
    """Writes blobs into a directory, named by digest hex. One per session."""

    def __init__(self, root):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self._lock = threading.Lock()

    def _put_file(self, tmp_path, media_type):
        digest = util.sha256_file(tmp_path)
        final = os.path.join(self.root, digest.split(":", 1)[1])
        os.replace(tmp_path, final)
        return Blob(digest, os.path.getsize(final), final, media_type)

    def put_bytes(self, data, media_type):
        digest = util.sha256_bytes(data)
        final = os.path.join(self.root, digest.split(":", 1)[1])
        with open(final, "wb") as f:
            f.write(data)
        return Blob(digest, len(data), final, media_type)

    def make_layer(self, files, media_type):
        """files: list of (path, content bytes or int size of random data).
        Returns (Blob of the tar.gz, diff_id = sha256 of the tar)."""
        tmp_tar = os.path.join(self.root, "tmp-%s.tar" % os.urandom(6).hex())
        dirs = set()
        with tarfile.open(tmp_tar, "w", format=tarfile.PAX_FORMAT) as tf:
            for path, content in files:
                parts = path.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        ti = tarfile.TarInfo(d)
                        ti.type = tarfile.DIRTYPE
                        ti.mode = 0o755
                        ti.mtime = 1700000000
                        tf.addfile(ti)
                ti = tarfile.TarInfo(path)
                ti.mode = 0o644
                ti.mtime = 1700000000
                if isinstance(content, int):
                    ti.size = content
                    tf.addfile(ti, _RandomReader(content))
                else:
                    ti.size = len(content)
                    tf.addfile(ti, io.BytesIO(content))
        diff_id = util.sha256_file(tmp_tar)
        tmp_gz = tmp_tar + ".gz"
        with open(tmp_tar, "rb") as src, open(tmp_gz, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    gz.write(chunk)
        os.unlink(tmp_tar)
        return self._put_file(tmp_gz, media_type), diff_id

    def make_image(self, fmt, layer_files, arch="amd64", variant=None,
                   label="rmtest"):
        """fmt: 'docker' or 'oci'; layer_files: list (one per layer) of file
        lists as in make_layer."""
        mtype, ctype, ltype, _ = FORMATS[fmt]
        layers, diff_ids = [], []
        for files in layer_files:
            blob, diff_id = self.make_layer(files, ltype)
            layers.append(blob)
            diff_ids.append(diff_id)
        config = {
            "architecture": arch,
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"rmtest": label, "nonce": os.urandom(8).hex()},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z",
                         "created_by": "rmtest layer %d" % i} for i in range(len(layers))],
        }
        if variant:
            config["variant"] = variant
        cblob = self.put_bytes(json.dumps(config, indent=2, sort_keys=True).encode(), ctype)
        manifest = {
            "schemaVersion": 2,
            "mediaType": mtype,
            "config": {"mediaType": ctype, "size": cblob.size, "digest": cblob.digest},
            "layers": [{"mediaType": ltype, "size": b.size, "digest": b.digest} for b in layers],
        }
        platform = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        return Image(mtype, json.dumps(manifest, indent=3).encode(), config=cblob,
                     layers=layers, platform=platform, diff_ids=diff_ids)

    def make_index(self, fmt, children):
        itype = FORMATS[fmt][3]
        index = {
            "schemaVersion": 2,
            "mediaType": itype,
            "manifests": [{"mediaType": c.media_type, "size": len(c.manifest),
                           "digest": c.digest, "platform": c.platform} for c in children],
        }
        return Image(itype, json.dumps(index, indent=3).encode(), children=children)


class Catalog:
    """The session's test images, generated lazily once each."""

    def __init__(self, store, big_mib=64):
        self.store = store
        self.big_mib = big_mib
        self._cache = {}
        self._lock = threading.Lock()

    def _get(self, key, fn):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = fn()
            return self._cache[key]

    def _small_files(self, n_files=2, size=64 * 1024, prefix="data"):
        return [("%s/file%d.bin" % (prefix, i), size) for i in range(n_files)] + [
            ("%s/README" % prefix, b"made by regmesh integration tests\n")]

    def _named(self, img, repo, *tags):
        img.repo = repo
        img.tags = list(tags)
        for c in img.children:
            c.repo = repo
        return img

    # --- docker.io upstream ("hub") -------------------------------------
    @property
    def multi(self):
        """Docker schema2, 4 layers."""
        return self._get("multi", lambda: self._named(self.store.make_image("docker", [
            self._small_files(2, 256 * 1024, "l0"),
            self._small_files(2, 512 * 1024, "l1"),
            self._small_files(1, 1024 * 1024, "l2"),
            self._small_files(3, 32 * 1024, "l3"),
        ], label="multi"), "multi/layers", "v1"))

    @property
    def nested(self):
        """OCI image manifest under a nested name."""
        return self._get("nested", lambda: self._named(self.store.make_image("oci", [
            self._small_files(2, 128 * 1024, "a"),
            self._small_files(1, 300 * 1024, "b"),
        ], label="nested"), "team/sub/app", "v1"))

    @property
    def alpine(self):
        """library/alpine:3.19: a Docker manifest list, linux/amd64 + linux/arm64."""
        def mk():
            kids = []
            for arch, variant in (("amd64", None), ("arm64", "v8")):
                kids.append(self.store.make_image("docker", [[
                    ("etc/alpine-release", b"3.19.0\n"),
                    ("etc/os-release", b'NAME="rmtest alpine"\nVERSION_ID=3.19.0\n'),
                    ("usr/share/rmtest/%s.bin" % arch, 200 * 1024),
                ]], arch=arch, variant=variant, label="alpine-" + arch))
            return self._named(self.store.make_index("docker", kids), "library/alpine", "3.19")
        return self._get("alpine", mk)

    @property
    def index(self):
        """OCI index with OCI manifests for linux/amd64 and linux/arm64."""
        def mk():
            kids = [self.store.make_image("oci", [self._small_files(2, 96 * 1024, arch)],
                                          arch=arch, variant=variant, label="index-" + arch)
                    for arch, variant in (("amd64", None), ("arm64", "v8"))]
            return self._named(self.store.make_index("oci", kids), "multi/arch", "v1")
        return self._get("index", mk)

    @property
    def big(self):
        """One layer of big_mib MiB of random data (kill -9 / streaming tests)."""
        return self._get("big", lambda: self._named(self.store.make_image("docker", [
            [("big/random.bin", self.big_mib * 1024 * 1024)]], label="big"),
            "big/blob", "v1"))

    @property
    def dotted(self):
        """A name whose first component looks like a host regmesh does not
        know: must go to the default upstream unchanged."""
        return self._get("dotted", lambda: self._named(self.store.make_image("oci", [
            self._small_files(1, 64 * 1024, "d")], label="dotted"),
            "notconfigured.io/proj/app", "v1"))

    @property
    def tagged(self):
        """One small image under five tags (tags/list pagination)."""
        return self._get("tagged", lambda: self._named(self.store.make_image("oci", [
            self._small_files(1, 16 * 1024, "t")], label="tagged"),
            "multi/tags", "t1", "t2", "t3", "t4", "t5"))

    @property
    def corrupt(self):
        return self._get("corrupt", lambda: self._named(self.store.make_image("docker", [
            [("c/data.bin", 1024 * 1024)]], label="corrupt"), "corrupt/me", "v1"))

    @property
    def stale(self):
        return self._get("stale", lambda: self._named(self.store.make_image("oci", [
            self._small_files(1, 128 * 1024, "s")], label="stale"), "stale/app", "v1"))

    def evict(self, which, mib=4):
        return self._get("evict-" + which, lambda: self._named(self.store.make_image("docker", [
            [("e/%s.bin" % which, mib * 1024 * 1024)]], label="evict-" + which),
            "evict/" + which, "v1"))

    def spread(self, mib=32):
        """One layer of random data, for the fleet fan-out tests."""
        return self._get("spread-%d" % mib, lambda: self._named(self.store.make_image("docker", [
            [("spread/random.bin", mib * 1024 * 1024)]], label="spread-%d" % mib),
            "spread/blob", "v%d" % mib))

    # --- ghcr.io upstream ----------------------------------------------
    @property
    def tool(self):
        return self._get("tool", lambda: self._named(self.store.make_image("oci", [
            self._small_files(2, 100 * 1024, "tool"),
            self._small_files(1, 50 * 1024, "etc")], label="tool"), "org/tool", "v1"))

    # --- authenticated upstreams ---------------------------------------
    @property
    def private(self):
        return self._get("private", lambda: self._named(self.store.make_image("docker", [
            self._small_files(1, 80 * 1024, "p0"),
            self._small_files(1, 40 * 1024, "p1")], label="private"), "private/app", "v1"))

    def hub_images(self):
        return [self.multi, self.nested, self.alpine, self.index, self.big, self.dotted,
                self.tagged, self.corrupt, self.evict("a"), self.evict("b")]


# ---------------------------------------------------------------------------
# Registry API client (push and direct reads), urllib/http.client only.

def parse_challenge(value):
    """'Bearer realm="x",service="y",scope="z"' -> ('bearer', {...})."""
    scheme, _, rest = value.strip().partition(" ")
    params = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        j = rest.find("=", i)
        if j < 0:
            break
        key = rest[i:j].strip().lower()
        i = j + 1
        if i < len(rest) and rest[i] == '"':
            k = rest.find('"', i + 1)
            if k < 0:
                k = len(rest)
            params[key] = rest[i + 1:k]
            i = k + 1
        else:
            k = rest.find(",", i)
            if k < 0:
                k = len(rest)
            params[key] = rest[i:k].strip()
            i = k
    return scheme.lower(), params


class RegistryClient:
    def __init__(self, base, username=None, password=None):
        self.base = base.rstrip("/")
        self.username = username
        self.password = password
        self._tokens = {}

    def _basic(self):
        raw = ("%s:%s" % (self.username, self.password)).encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _token(self, params):
        realm = params["realm"]
        q = [("service", params.get("service", ""))]
        if params.get("scope"):
            for s in params["scope"].split(" "):
                q.append(("scope", s))
        key = (realm, tuple(q))
        if key in self._tokens:
            return self._tokens[key]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(q)
        u = urllib.parse.urlsplit(url)
        hdrs = {}
        if self.username is not None:
            hdrs["Authorization"] = self._basic()
        r = util.request("%s://%s" % (u.scheme, u.netloc), "GET",
                         u.path + "?" + u.query, headers=hdrs)
        if r.status != 200:
            raise AssertionError("token request failed: %r" % r)
        j = r.json()
        tok = j.get("token") or j.get("access_token")
        self._tokens[key] = tok
        return tok

    def request(self, method, path, headers=None, body=None, timeout=120.0):
        """path may be absolute (Location headers). Retries once after a 401
        challenge with basic or bearer credentials."""
        base = self.base
        if path.startswith("http://") or path.startswith("https://"):
            u = urllib.parse.urlsplit(path)
            base = "%s://%s" % (u.scheme, u.netloc)
            path = u.path + ("?" + u.query if u.query else "")
        hdrs = list((headers or {}).items()) if isinstance(headers, dict) else list(headers or [])
        auth = getattr(self, "_last_auth", None)
        body_bytes = body
        if hasattr(body, "read"):
            body_bytes = body.read()
        for attempt in range(2):
            h = list(hdrs)
            if auth:
                h.append(("Authorization", auth))
            r = util.request(base, method, path, headers=h, body=body_bytes, timeout=timeout)
            if r.status != 401 or attempt == 1:
                if auth and r.status != 401:
                    self._last_auth = auth
                return r
            ch = r.header("WWW-Authenticate")
            if not ch:
                return r
            scheme, params = parse_challenge(ch)
            if scheme == "basic":
                if self.username is None:
                    return r
                auth = self._basic()
            elif scheme == "bearer":
                auth = "Bearer " + self._token(params)
            else:
                return r
        return r

    def blob_exists(self, repo, digest):
        return self.request("HEAD", "/v2/%s/blobs/%s" % (repo, digest)).status == 200

    def upload_blob(self, repo, blob):
        if self.blob_exists(repo, blob.digest):
            return
        r = self.request("POST", "/v2/%s/blobs/uploads/" % repo, body=b"")
        assert r.status == 202, "upload start %s: %r" % (repo, r)
        loc = r.header("Location")
        if not loc.startswith("http"):
            loc = self.base + loc
        loc += ("&" if "?" in loc else "?") + urllib.parse.urlencode({"digest": blob.digest})
        r = self.request("PUT", loc, headers={"Content-Type": "application/octet-stream"},
                         body=blob.read())
        assert r.status == 201, "upload %s %s: %r" % (repo, blob.digest, r)

    def put_manifest(self, repo, ref, data, media_type):
        r = self.request("PUT", "/v2/%s/manifests/%s" % (repo, ref),
                         headers={"Content-Type": media_type}, body=data)
        assert r.status == 201, "put manifest %s:%s: %r" % (repo, ref, r)
        return r.header("Docker-Content-Digest")

    def get_manifest(self, repo, ref, accept=ACCEPT_ALL, method="GET"):
        return self.request(method, "/v2/%s/manifests/%s" % (repo, ref),
                            headers={"Accept": accept})

    def get_blob(self, repo, digest, headers=None):
        return self.request("GET", "/v2/%s/blobs/%s" % (repo, digest), headers=headers)

    def push(self, image, repo=None, tags=None):
        repo = repo or image.repo
        tags = image.tags if tags is None else tags
        for child in image.children:
            self.push(child, repo=repo, tags=[])
        for b in image.own_blobs():
            self.upload_blob(repo, b)
        if not tags:
            d = self.put_manifest(repo, image.digest, image.manifest, image.media_type)
            assert d == image.digest, (d, image.digest)
        for t in tags:
            d = self.put_manifest(repo, t, image.manifest, image.media_type)
            assert d == image.digest, (d, image.digest)


def sha256_hex_of(data):
    return hashlib.sha256(data).hexdigest()
