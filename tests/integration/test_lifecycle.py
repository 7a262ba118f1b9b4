"""The process lifecycle: one node per storage root, the command line's
details, and `make install` with a unit systemd accepts."""

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from rmtest import regmesh, util
from rmtest.checks import hub_upstream, stream_get

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
        head = util.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"],
                        timeout=10).stdout.decode().strip()
        assert m.group(2).split("-")[0] == head


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
    assert "@" not in text.replace("$MAINPID", ""), "an unfilled @VAR@ in the unit"
    cp = util.run(["systemd-analyze", "verify", unit], timeout=60, check=False)
    # verify also complains about units it pulls in that this container
    # lacks; only lines about regmesh.service count
    ours = [l for l in (cp.stdout + cp.stderr).decode().splitlines() if "regmesh" in l]
    assert not ours, "\n".join(ours)
    # the installed binary accepts the installed example config
    util.run([binary, "check-config", conf], timeout=10)
    # an existing config is kept
    with open(conf, "a") as f:
        f.write("# edited\n")
    util.run(["make", "-C", REPO, "install", "BUILD=" + build, "PREFIX=" + prefix,
              "CONFDIR=" + confdir, "DESTDIR="], timeout=900)
    assert open(conf).read().endswith("# edited\n")
