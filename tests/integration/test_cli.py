"""The regmesh command line: version, check-config, serve on a bad config."""

import os
import re

import pytest

from rmtest import regmesh, util

GOOD = """listen: 127.0.0.1:{port}
log_level: info
storage:
  root: {root}
  max_size: 20GiB
upstreams:
  - host: docker.io
    url: http://127.0.0.1:9
    default: true
    tag_ttl: 60s
  - host: ghcr.io
    url: http://127.0.0.1:9
"""

# (case id, text replaced in GOOD, replacement, a word the error must name)
BAD = [
    ("unknown-key", "log_level: info", "log_levle: info", "log_levle"),
    ("missing-url", "    url: http://127.0.0.1:9\n    default: true",
     "    default: true", "url"),
    ("bad-size", "max_size: 20GiB", "max_size: lots", "max_size"),
    ("bad-ttl", "tag_ttl: 60s", "tag_ttl: soon", "tag_ttl"),
    ("bad-yaml", "upstreams:\n", "upstreams: [\n", None),
]


def _write(test_dir, name, text):
    path = os.path.join(test_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def _good(test_dir):
    return GOOD.format(port=util.free_port(), root=os.path.join(test_dir, "data"))


def test_version(regmesh_binary):
    cp = util.run([regmesh_binary, "version"], timeout=10, check=False)
    assert cp.returncode == 0, cp
    out = (cp.stdout + cp.stderr).decode()
    assert re.search(r"\d+\.\d+", out), "no version number in %r" % out


def test_check_config_accepts_a_good_file(regmesh_binary, test_dir):
    path = _write(test_dir, "good.yml", _good(test_dir))
    cp = util.run([regmesh_binary, "check-config", path], timeout=10, check=False)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)


def test_check_config_accepts_the_harness_config(regmesh_binary, test_dir):
    n = regmesh.Node(regmesh_binary, os.path.join(test_dir, "n"), [
        regmesh.Upstream("docker.io", "http://127.0.0.1:9", default=True),
        regmesh.Upstream("ghcr.io", "http://127.0.0.1:9", listen=True, username="u",
                         password="p")], max_size="6MiB")
    cp = util.run([regmesh_binary, "check-config", n.config_path], timeout=10, check=False,
                  env=dict(n.env))
    assert cp.returncode == 0, (n.config_text(), cp.stdout, cp.stderr)


@pytest.mark.parametrize("case,old,new,word", BAD, ids=[b[0] for b in BAD])
def test_check_config_rejects(regmesh_binary, test_dir, case, old, new, word):
    text = _good(test_dir)
    assert old in text
    path = _write(test_dir, case + ".yml", text.replace(old, new, 1))
    cp = util.run([regmesh_binary, "check-config", path], timeout=10, check=False)
    out = (cp.stdout + cp.stderr).decode()
    assert cp.returncode == 1, "check-config accepted a bad file (%s): %r" % (case, out)
    assert path in out or os.path.basename(path) in out, "error does not name the file: %r" % out
    if word:
        assert word in out, "error does not name %r: %r" % (word, out)


def test_serve_refuses_a_bad_config(regmesh_binary, test_dir):
    path = _write(test_dir, "bad.yml", _good(test_dir).replace("max_size: 20GiB",
                                                               "max_size: lots"))
    cp = util.run([regmesh_binary, "serve", "--config", path], timeout=15, check=False)
    assert cp.returncode != 0
