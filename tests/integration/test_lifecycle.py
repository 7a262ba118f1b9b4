"""The process lifecycle: one node per storage root, the command line's
details, and `make install` with a unit systemd accepts."""

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import threading
import time

import pytest

from rmtest import images, regmesh, util
from rmtest.checks import hub_upstream, pull_via_http, stream_get

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_second_instance_on_the_same_root_is_refused(make_node, make_proxy, hub, catalog):
    """A second node on a root in use fails at start naming the holder's
    PID, and leaves the first one's download in tmp/ alone."""
    img = catalog.big
    layer = max(img.layers, key=lambda b: b.size)
    # about 5 s for the whole layer, so it is in tmp/ while the second starts
    px = make_proxy(hub.url, bytes_per_sec=max(256 << 10, layer.size // 5))
    first = make_node([regmesh.Upstream("docker.io", px.url, default=True)])
    out = {}

    def pull():
        out["res"] = stream_get(first.url, "/v2/%s/blobs/%s" % (img.repo, layer.digest),
                                timeout=120)
    t = threading.Thread(target=pull)
    t.start()
    try:
        util.wait_until(lambda: first.tmp_files(), 10, what="the download in tmp/")
        second = make_node([regmesh.Upstream("docker.io", px.url, default=True)],
                           start=False, name="second", data_dir=first.data_dir)
        cp = util.run([second.binary, "serve", "--config", second.config_path],
                      timeout=20, check=False, env=second.env)
        text = (cp.stdout + cp.stderr).decode(errors="replace")
        assert cp.returncode != 0, "a second node on the same root started:\n" + text
        assert "pid %d" % first.pid in text, text
        assert "storage.root" in text, text
        assert first.tmp_files(), "the second node emptied the first one's tmp/"
    finally:
        t.join(120)
    assert out["res"] == (200, layer.digest, layer.size)
    # the commit (fsync, rename) may land just after the last byte went out
    util.wait_until(lambda: first.has_blob(layer.digest), 10, what="the blob committed")
    assert first.alive()
    # the lock goes with the process: after a stop, a new node starts
    first.stop()
    again = make_node([regmesh.Upstream("docker.io", px.url, default=True)],
                      name="again", data_dir=first.data_dir)
    assert again.has_blob(layer.digest)
    st, digest, n = stream_get(again.url, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    assert (st, digest, n) == (200, layer.digest, layer.size)


def test_version_names_the_commit(regmesh_binary):
    cp = util.run([regmesh_binary, "version"], timeout=10)
    m = re.match(r"regmesh (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12}(-dirty)?|unknown)\)$",
                 cp.stdout.decode().strip())
    assert m, cp.stdout
    if shutil.which("git") and os.path.isdir(os.path.join(REPO, ".git")):
        # a commit of this repository (the binary may predate HEAD)
        commit = m.group(2).split("-")[0]
        cp = util.run(["git", "-C", REPO, "cat-file", "-e", commit + "^{commit}"],
                      timeout=10, check=False)
        assert cp.returncode == 0, "%s is not a commit here" % commit


def test_man_page_names_every_command(regmesh_binary):
    """Each command `regmesh help` lists has its entry in regmesh(1)."""
    cp = util.run([regmesh_binary, "help"], timeout=10)
    cmds = re.findall(r"^  ([a-z][a-z-]+)(?: |$)", cp.stdout.decode(), re.M)
    assert len(cmds) >= 8, cp.stdout
    with open(os.path.join(REPO, "docs", "regmesh.1")) as f:
        man = f.read()
    missing = [c for c in cmds if not re.search(r"^\.(B|BI|TP)\b.*\b%s\b" % re.escape(c), man, re.M)]
    assert not missing, "regmesh(1) lacks: %s" % missing


@pytest.mark.parametrize("args", [["serve", "--help"], ["check-config", "--help"], ["help"]])
def test_help_exits_zero(regmesh_binary, args):
    cp = util.run([regmesh_binary] + args, timeout=10, check=False)
    assert cp.returncode == 0, cp
    assert b"usage: regmesh" in cp.stdout


BASE = """storage:
  root: {root}
upstreams:
  - host: {host}
    url: {url}
    default: true
"""


@pytest.mark.parametrize("host,url,extra,want", [
    ("https://ghcr.io", "https://ghcr.io", "",
     "upstreams[0].host: host is the registry's name, not a URL: write host: ghcr.io"),
    ("ghcr.io", "https://ghcr.io/v2/", "",
     "upstreams[0].url: url is the registry's base URL, without /v2: write url: https://ghcr.io"),
    ("ghcr.io", "https://ghcr.io", "    username: u\n    password_env: RMTEST_NEVER_SET\n",
     "upstreams[0].password_env: environment variable RMTEST_NEVER_SET is not set"),
])
def test_check_config_says_what_to_write(regmesh_binary, test_dir, host, url, extra, want):
    path = os.path.join(test_dir, "r.yml")
    with open(path, "w") as f:
        f.write(BASE.format(root=os.path.join(test_dir, "data"), host=host, url=url) + extra)
    env = {k: v for k, v in os.environ.items() if k != "RMTEST_NEVER_SET"}
    cp = util.run([regmesh_binary, "check-config", path], timeout=10, check=False, env=env)
    assert cp.returncode == 1, cp
    err = cp.stderr.decode()
    assert re.match(r"^%s:\d+:\d+: " % re.escape(path), err), err
    assert want in err, err
    if extra:   # set, the same file is fine
        env["RMTEST_NEVER_SET"] = "p"
        cp = util.run([regmesh_binary, "check-config", path], timeout=10, check=False, env=env)
        assert cp.returncode == 0, cp


def test_make_install_and_systemd_verify(test_dir):
    """`make install` puts the binary, the unit, the docs and a config where
    the unit says; systemd-analyze verify accepts the installed unit. The
    prefix is the test's own directory (nothing outside it is written)."""
    for tool in ("cmake", "make", "systemd-analyze"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed" % tool)
    prefix = os.path.join(test_dir, "prefix")
    confdir = os.path.join(prefix, "etc", "regmesh")
    build = os.path.join(test_dir, "build")
    cp = util.run(["make", "-C", REPO, "install", "BUILD=" + build, "PREFIX=" + prefix,
                   "CONFDIR=" + confdir, "DESTDIR=", "JOBS=%d" % (os.cpu_count() or 2)],
                  timeout=900, check=False)
    assert cp.returncode == 0, cp.stdout.decode()[-3000:] + cp.stderr.decode()[-3000:]
    unit = os.path.join(prefix, "lib", "systemd", "system", "regmesh.service")
    binary = os.path.join(prefix, "bin", "regmesh")
    conf = os.path.join(confdir, "regmesh.yml")
    for p in (unit, binary, conf, os.path.join(prefix, "share", "doc", "regmesh", "README.md")):
        assert os.path.isfile(p), p
    text = open(unit).read()
    assert "ExecStart=%s serve --config %s\n" % (binary, conf) in text, text
    assert "ExecReload=" in text
    assert not re.search(r"@[A-Z_]+@", text), "an unfilled @VAR@ in the unit"
    cp = util.run(["systemd-analyze", "verify", unit], timeout=60, check=False)
    # verify also complains about units it pulls in that this container
    # lacks; only lines about regmesh.service count
    ours = [l for l in (cp.stdout + cp.stderr).decode().splitlines() if "regmesh" in l]
    assert not ours, "\n".join(ours)
    # hardened: systemd's own rating of the sandbox, 2.5 or lower
    cp = util.run(["systemd-analyze", "security", "--offline=yes", unit], timeout=60,
                  check=False)
    m = re.search(r"Overall exposure level for regmesh\.service: ([0-9.]+)",
                  cp.stdout.decode())
    assert m, cp.stdout.decode()[-2000:] + cp.stderr.decode()[-2000:]
    assert float(m.group(1)) <= 2.5, cp.stdout.decode()
    for key in ("DynamicUser=yes", "CacheDirectory=regmesh", "ProtectSystem=strict",
                "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service",
                "LoadCredential=regmesh:%s/credentials\n" % confdir):
        assert key in text, key
    # the credentials directory the unit loads from, root only
    creds = os.path.join(confdir, "credentials")
    assert os.path.isdir(creds) and os.stat(creds).st_mode & 0o077 == 0, oct(
        os.stat(creds).st_mode)
    man = os.path.join(prefix, "share", "man", "man1", "regmesh.1")
    assert os.path.isfile(man), man
    if shutil.which("groff"):
        cp = util.run(["groff", "-man", "-Tutf8", "-ww", "-z", man], timeout=30, check=False)
        assert cp.returncode == 0 and not cp.stderr, cp.stderr.decode()
    # the example config's storage is the unit's cache directory
    assert "root: /var/cache/regmesh" in open(conf).read()
    # the installed binary accepts the installed example config
    util.run([binary, "check-config", conf], timeout=10)
    # an existing config is kept
    with open(conf, "a") as f:
        f.write("# edited\n")
    util.run(["make", "-C", REPO, "install", "BUILD=" + build, "PREFIX=" + prefix,
              "CONFDIR=" + confdir, "DESTDIR="], timeout=900)
    assert open(conf).read().endswith("# edited\n")


class _RawBlob:
    """A blob of random bytes for RegistryClient.upload_blob."""

    def __init__(self, size):
        self.data = os.urandom(size)
        self.size = size
        self.digest = "sha256:" + hashlib.sha256(self.data).hexdigest()

    def read(self):
        return self.data


@pytest.fixture(scope="module")
def shutdown_blob():
    return _RawBlob(256 << 20)


class _SlowReader(threading.Thread):
    """GETs path from port and reads at about `rate` bytes/s through a small
    receive buffer, so the node's send side stays busy the whole time."""

    def __init__(self, port, path, rate):
        super().__init__(daemon=True)
        self.port, self.path, self.rate = port, path, rate
        self.got = 0
        self.status = None
        self.length = None
        self.digest = None
        self.error = None
        self.started_body = threading.Event()

    def run(self):
        h = hashlib.sha256()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        try:
            s.settimeout(60)
            s.connect((util.LOCALHOST, self.port))
            s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % self.path).encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the head")
                buf += chunk
            head, body = buf.split(b"\r\n\r\n", 1)
            self.status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            self.length = int(m.group(1)) if m else None
            h.update(body)
            self.got = len(body)
            self.started_body.set()
            t0 = time.monotonic()
            while self.length is None or self.got < self.length:
                chunk = s.recv(256 << 10)
                if not chunk:
                    break
                h.update(chunk)
                self.got += len(chunk)
                ahead = self.got / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError as e:
            self.error = e
        finally:
            s.close()
            self.digest = "sha256:" + h.hexdigest()
            self.started_body.set()


def _sigterm_node(make_node, make_registry, blob, timeout, name):
    reg = make_registry(name)
    images.RegistryClient(reg.url).upload_blob("big/shutdown", blob)
    node = make_node([regmesh.Upstream("docker.io", reg.url, default=True)], name=name,
                     extra_yaml="shutdown_timeout: %s\n" % timeout)
    path = "/v2/big/shutdown/blobs/%s" % blob.digest
    assert stream_get(node.url, path, timeout=120) == (200, blob.digest, blob.size)
    return node, path


def _exit_within(node, secs):
    t0 = time.monotonic()
    node.proc.popen.wait(secs)
    return time.monotonic() - t0


def test_sigterm_lets_a_transfer_in_flight_finish(make_node, make_registry, shutdown_blob):
    """SIGTERM: new connections are refused at once, the 256 MiB response
    to a slow reader goes out whole, then the node exits 0."""
    blob = shutdown_blob
    node, path = _sigterm_node(make_node, make_registry, blob, "60s", "drain")
    mark = node.log_mark()
    rd = _SlowReader(node.port, path, rate=blob.size / 6)     # about 6 s
    rd.start()
    assert rd.started_body.wait(20) and rd.status == 200
    os.kill(node.pid, signal.SIGTERM)
    util.wait_until(lambda: not util.port_open(node.port), 5, what="the listener closed")
    assert node.alive(), "the node exited with a transfer in flight"
    took = _exit_within(node, 60)
    rd.join(10)
    assert rd.error is None, rd.error
    assert (rd.got, rd.digest) == (blob.size, blob.digest)
    assert node.proc.returncode() == 0
    print("\nnode exited %.1f s after SIGTERM, once the 256 MiB response was out" % took)
    recs = [a for a in node.access(since=mark, settle=0) if a["path"] == path]
    assert recs and recs[-1]["status"] == 200 and recs[-1]["bytes"] == blob.size
    assert "aborted" not in recs[-1], recs[-1]


def test_sigterm_cuts_at_shutdown_timeout_and_logs_it(make_node, make_registry,
                                                      shutdown_blob):
    """With a short shutdown_timeout the slow transfer is cut when it ends,
    and the access log says aborted=1, not a plain 200."""
    blob = shutdown_blob
    node, path = _sigterm_node(make_node, make_registry, blob, "1s", "cut")
    mark = node.log_mark()
    rd = _SlowReader(node.port, path, rate=blob.size / 30)    # would take 30 s
    rd.start()
    assert rd.started_body.wait(20) and rd.status == 200
    os.kill(node.pid, signal.SIGTERM)
    took = _exit_within(node, 15)
    rd.join(60)
    assert took < 8, "the node took %.1f s with shutdown_timeout 1s" % took
    assert rd.got < blob.size
    recs = [a for a in node.access(since=mark, settle=0) if a["path"] == path]
    assert recs, node.log_text()[-2000:]
    assert recs[-1].get("aborted") == "1" and recs[-1]["bytes"] < blob.size, recs[-1]
    assert "shutdown_timeout" in node.log_text()


@pytest.mark.parametrize("level", ["info", "debug"])
def test_probes_are_access_logged_only_at_debug(make_node, hub, level):
    node = make_node([hub_upstream(hub)], log_level=level)
    mark = node.log_mark()
    for p in ("/healthz", "/readyz", "/metrics"):
        assert node.request("GET", p).status == 200
    assert node.request("GET", "/v2/").status == 200
    paths = [a["path"] for a in node.access(since=mark)]
    assert "/v2/" in paths
    probes = [p for p in paths if p in ("/healthz", "/readyz", "/metrics")]
    if level == "info":
        assert probes == [], paths
    else:
        assert sorted(probes) == ["/healthz", "/metrics", "/readyz"], paths


def test_log_format_json(make_node, hub):
    """log_format: json: every line the node writes is one JSON object with
    ts, level and msg; access lines carry their fields with numbers as
    numbers."""
    node = make_node([hub_upstream(hub)], extra_yaml="log_format: json\n")
    assert node.request("GET", "/v2/").status == 200
    assert node.request("GET", "/v2/no/such/manifests/x%7Fy").status == 400   # TAG_INVALID
    node.stop()
    recs = []
    for line in node.log_text().splitlines():
        if line.startswith("--- rmtest"):         # the harness's own marker
            continue
        rec = json.loads(line)
        assert {"ts", "level", "msg"} <= set(rec), line
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", rec["ts"]), line
        recs.append(rec)
    access = [r for r in recs if r["msg"] == "access"]
    ok = [r for r in access if r["path"] == "/v2/"]
    assert ok and ok[0]["status"] == 200 and ok[0]["method"] == "GET", access
    assert isinstance(ok[0]["bytes"], int) and ok[0]["aborted"] == 0
    assert any(r["status"] == 400 and r["path"].endswith("x%7Fy") for r in access), access
    assert any("ready" in r["msg"] for r in recs)


def test_sighup_applies_ttls_and_refuses_a_broken_config(make_node, make_proxy, make_registry,
                                                         catalog, shutdown_blob):
    """SIGHUP with a shorter tags_list_ttl: applied (the next list asks the
    upstream). SIGHUP with a broken file: refused with check-config's
    file:line:col message, the node keeps serving, and a transfer in flight
    across both reloads completes."""
    blob, img = shutdown_blob, catalog.multi
    reg = make_registry("reload", [img])
    images.RegistryClient(reg.url).upload_blob("big/shutdown", blob)
    px = make_proxy(reg.url)
    node = make_node([regmesh.Upstream("docker.io", px.url, default=True, tag_ttl="1h")])
    path = "/v2/big/shutdown/blobs/%s" % blob.digest
    assert stream_get(node.url, path, timeout=120) == (200, blob.digest, blob.size)
    rd = _SlowReader(node.port, path, rate=blob.size / 6)
    rd.start()
    assert rd.started_body.wait(20) and rd.status == 200

    tags = "/v2/%s/tags/list" % img.repo

    def lists():
        return len([r for r in px.requests if r[1].split("?")[0].endswith("/tags/list")])
    assert node.request("GET", tags).status == 200
    before = lists()
    assert node.request("GET", tags).status == 200
    assert lists() == before, "the tags list is cached for the default 30 s"

    text = open(node.config_path).read()
    with open(node.config_path, "w") as f:
        f.write(text.replace("    tag_ttl: 1h\n", "    tag_ttl: 1h\n    tags_list_ttl: 1s\n"))
    mark = node.log_mark()
    os.kill(node.pid, signal.SIGHUP)
    util.wait_until(lambda: "reloaded" in node.log_text()[mark:], 10, what="the reload")
    time.sleep(1.2)
    assert node.request("GET", tags).status == 200
    assert lists() > before, "tags_list_ttl 1s from the reload was not applied"

    with open(node.config_path, "w") as f:
        f.write(text.replace("storage:", "storage: [", 1))
    mark = node.log_mark()
    os.kill(node.pid, signal.SIGHUP)
    util.wait_until(lambda: "refused" in node.log_text()[mark:], 10, what="the refusal")
    refusal = [l for l in node.log_text()[mark:].splitlines() if "refused" in l][0]
    assert re.search(re.escape(node.config_path) + r":\d+:\d+: ", refusal), refusal
    assert node.alive()
    assert stream_get(node.url, path, timeout=60) == (200, blob.digest, blob.size)
    rd.join(60)
    assert rd.error is None and (rd.got, rd.digest) == (blob.size, blob.digest)


def test_sighup_applies_upstream_allow_and_budget_in_place(make_node, make_registry, catalog):
    """Edited and reloaded, on a connection kept open throughout: a smaller
    storage.max_size evicts at once; an upstream's url pointing at another
    registry serves that registry's image; `allow:` shutting loopback out
    refuses new connections until it is reopened. A changed admin_listen is
    named as waiting for a restart and not applied."""
    a, b = catalog.stale, catalog.multi
    reg_a, reg_b = make_registry("reload-a", [a]), make_registry("reload-b", [b])
    up = regmesh.Upstream("docker.io", reg_a.url, default=True)
    node = make_node([up])
    pull_via_http(node.url, a)
    tag_b = "/v2/%s/manifests/%s" % (b.repo, b.tag)
    accept = {"Accept": images.ACCEPT_ALL}
    assert node.request("GET", tag_b, headers=accept).status == 404
    kept = http.client.HTTPConnection(util.LOCALHOST, node.port, timeout=10)

    def kept_alive():
        kept.request("GET", "/v2/")
        r = kept.getresponse()
        r.read()
        return r.status
    assert kept_alive() == 200
    # the last blob is committed just after its response
    util.wait_until(lambda: node.metric_sum("regmesh_storage_bytes") > 64 * 1024, 10,
                    what="the image in the store")

    node.max_size = "16KiB"
    node.extra_yaml = "admin_listen: %s:%d\n" % (util.LOCALHOST, util.free_port())
    log = node.reload()
    assert re.search(r"applied: .*storage\.max_size", log), log
    assert re.search(r"not applied until the next restart: .*admin_listen", log), log
    assert node.metric_sum("regmesh_storage_bytes") <= 16 * 1024   # still on the main port
    assert node.metric_sum("regmesh_storage_evictions_total") >= 1
    assert kept_alive() == 200

    node.max_size = "20GiB"
    node.extra_yaml = ""
    up.url = reg_b.url
    log = node.reload()
    assert "upstreams[docker.io].url" in log, log
    assert "next restart" not in log, log
    r = node.request("GET", tag_b, headers=accept)
    assert r.status == 200 and r.body == b.manifest, r
    assert kept_alive() == 200

    node.extra_yaml = "allow: [127.0.0.2/32]\n"
    assert "applied: allow" in node.reload()
    assert node.request("GET", "/v2/").status == 403
    node.extra_yaml = "allow: [127.0.0.0/8]\n"
    node.reload()
    assert node.request("GET", "/v2/").status == 200
    assert kept_alive() == 200
    kept.close()
    assert node.alive()


def test_access_log_false_writes_no_request_lines(make_node, hub):
    node = make_node([hub_upstream(hub)], extra_yaml="access_log: false\n")
    mark = node.log_mark()
    assert node.request("GET", "/v2/").status == 200
    assert node.request("GET", "/v2/no/such/manifests/x").status >= 400
    assert node.access(since=mark) == []
    assert "ready" in node.log_text()          # the rest of the log is there
