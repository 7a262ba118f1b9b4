"""The regmesh command line: version, check-config, serve on a bad config,
and `members` against a stand-in for a node's /cluster/members."""

import base64
import http.server
import json
import os
import re
import threading

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
    ("cluster-bind", "log_level: info", "log_level: info\ncluster:\n  bind: localhost:7946",
     "cluster.bind"),
    ("cluster-weight", "log_level: info", "log_level: info\ncluster: {weight: 17}",
     "cluster.weight"),
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


def test_check_config_cluster_secret_file(regmesh_binary, test_dir):
    """secret_file is relative to the config's directory, read at load time,
    and its content never appears in a message."""
    key = base64.b64encode(os.urandom(32)).decode()
    _write(test_dir, "cluster.key", key + "\n")
    text = _good(test_dir) + ("cluster:\n  name: n1\n  bind: 127.0.0.1:%d\n"
                              "  join: [127.0.0.1:7946]\n  secret_file: cluster.key\n"
                              % util.free_port())
    path = _write(test_dir, "cluster.yml", text)
    cp = util.run([regmesh_binary, "check-config", path], timeout=10, check=False,
                  cwd="/")
    assert cp.returncode == 0, (cp.stdout, cp.stderr)

    short = base64.b64encode(os.urandom(20)).decode()
    _write(test_dir, "cluster.key", short + "\n")
    cp = util.run([regmesh_binary, "check-config", path], timeout=10, check=False)
    out = (cp.stdout + cp.stderr).decode()
    assert cp.returncode == 1, out
    assert "cluster.secret_file" in out and "20 bytes" in out, out
    assert short not in out and short[:8] not in out, out

    path = _write(test_dir, "both.yml", text.replace(
        "  secret_file:", "  secret: %s\n  secret_file:" % short))
    cp = util.run([regmesh_binary, "check-config", path], timeout=10, check=False)
    out = (cp.stdout + cp.stderr).decode()
    assert cp.returncode == 1, out
    assert "secret and secret_file cannot both be set" in out, out
    assert short[:8] not in out, out


def test_serve_refuses_a_bad_config(regmesh_binary, test_dir):
    path = _write(test_dir, "bad.yml", _good(test_dir).replace("max_size: 20GiB",
                                                               "max_size: lots"))
    cp = util.run([regmesh_binary, "serve", "--config", path], timeout=15, check=False)
    assert cp.returncode != 0


# ---------------------------------------------------------------------------
# regmesh members: no cluster needed, the endpoint is played by a thread

MEMBERS = {"self": "n1", "members": [
    {"name": "n3", "state": "suspect", "addr": "127.0.0.1:7948",
     "url": "http://127.0.0.1:5002", "zone": "rack-2", "weight": 4,
     "version": "0.1.0", "share": 0.5, "ratelimit": {"docker.io": 12}},
    {"name": "n1", "state": "alive", "addr": "127.0.0.1:7946",
     "url": "http://127.0.0.1:5000", "zone": "", "weight": 1,
     "version": "0.1.0", "share": 0.3333, "ratelimit": {"docker.io": -1}},
    {"name": "n2", "state": "alive", "addr": "[::1]:7947",
     "url": "http://127.0.0.1:5001", "zone": "rack-1", "weight": 1,
     "version": "0.1.0", "share": 0.1667, "ratelimit": {}},
]}


class _FakeNode:
    """Answers GET /cluster/members with (status, body); records paths."""

    def __init__(self, status=200, body=MEMBERS):
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.paths = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                fake.paths.append(self.path)
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(fake.body)))
                self.end_headers()
                self.wfile.write(fake.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((util.LOCALHOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def fake_node():
    made = []

    def make(**kw):
        f = _FakeNode(**kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def _members(regmesh_binary, *args):
    cp = util.run([regmesh_binary, "members"] + list(args), timeout=20, check=False)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def test_members_table(regmesh_binary, fake_node):
    f = fake_node()
    rc, out, err = _members(regmesh_binary, "--admin", "127.0.0.1:%d" % f.port)
    assert rc == 0, (out, err)
    assert f.paths == ["/cluster/members"]
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "ADDRESS", "ZONE", "WEIGHT", "SHARE",
                                "URL"], out
    rows = [line.split() for line in lines[1:-1]]
    assert rows == [
        ["n1", "alive", "127.0.0.1:7946", "-", "1", "33.3%", "http://127.0.0.1:5000"],
        ["n2", "alive", "[::1]:7947", "rack-1", "1", "16.7%", "http://127.0.0.1:5001"],
        ["n3", "suspect", "127.0.0.1:7948", "rack-2", "4", "50.0%", "http://127.0.0.1:5002"],
    ], out
    assert lines[-1] == "3 members: 2 alive, 1 suspect", out
    # the columns line up: every row's ADDRESS starts where the title does
    col = lines[0].index("ADDRESS")
    assert all(line[col:].split()[0] == r[2] for line, r in zip(lines[1:-1], rows)), out


def test_members_json_is_the_body(regmesh_binary, fake_node):
    f = fake_node()
    rc, out, err = _members(regmesh_binary, "--json", "--admin", "127.0.0.1:%d" % f.port)
    assert rc == 0, (out, err)
    assert out.rstrip("\n") == f.body.decode()
    assert json.loads(out) == MEMBERS


def test_members_address_from_config(regmesh_binary, test_dir, fake_node):
    """admin_listen wins over listen, and its wildcard host is asked on loopback."""
    f = fake_node()
    path = _write(test_dir, "members.yml", _good(test_dir).replace(
        "log_level: info", "admin_listen: 0.0.0.0:%d\nlog_level: info" % f.port))
    rc, out, err = _members(regmesh_binary, "--config", path)
    assert rc == 0, (out, err)
    assert f.paths == ["/cluster/members"]
    assert out.splitlines()[-1] == "3 members: 2 alive, 1 suspect"


def test_members_states_and_odd_fields(regmesh_binary, fake_node):
    """Every state is counted; missing fields print '-'; control bytes from
    the network never reach the terminal."""
    body = {"self": "a", "members": [
        {"name": "d", "state": "dead", "addr": "10.0.0.4:7946", "weight": 1, "share": 0},
        {"name": "a\x1b[31m", "state": "alive"},
        {"name": "l", "state": "left", "zone": "z", "weight": 2, "share": 1},
        "not an object",
    ]}
    f = fake_node(body=body)
    rc, out, err = _members(regmesh_binary, "--admin", "127.0.0.1:%d" % f.port)
    assert rc == 0, (out, err)
    assert "\x1b" not in out
    rows = [line.split() for line in out.splitlines()[1:-1]]
    assert ["-", "-", "-", "-", "-", "-", "-"] in rows
    assert ["a?[31m", "alive", "-", "-", "-", "-", "-"] in rows
    assert ["d", "dead", "10.0.0.4:7946", "-", "1", "0.0%", "-"] in rows
    assert ["l", "left", "-", "z", "2", "100.0%", "-"] in rows
    assert out.splitlines()[-1] == "4 members: 1 alive, 1 dead, 1 left, 1 other", out


def test_members_empty(regmesh_binary, fake_node):
    f = fake_node(body={"self": "n1", "members": []})
    rc, out, err = _members(regmesh_binary, "--admin", "127.0.0.1:%d" % f.port)
    assert rc == 0, (out, err)
    assert out.splitlines() == ["NAME  STATE  ADDRESS  ZONE  WEIGHT  SHARE  URL",
                                "0 members"]


def test_members_registry_error(regmesh_binary, fake_node):
    f = fake_node(status=404, body={"errors": [
        {"code": "NOT_FOUND", "message": "this node runs without a cluster: section"}]})
    rc, out, err = _members(regmesh_binary, "--admin", "127.0.0.1:%d" % f.port)
    assert rc == 1
    assert out == ""
    assert err == "regmesh members: this node runs without a cluster: section\n"


def test_members_other_errors(regmesh_binary, fake_node):
    f = fake_node(status=500, body=b"<html>oops</html>")
    addr = "127.0.0.1:%d" % f.port
    rc, out, err = _members(regmesh_binary, "--admin", addr)
    assert rc == 1
    assert err == "regmesh members: http://%s/cluster/members answered HTTP 500\n" % addr
    f = fake_node(body=b"{not json")
    addr = "127.0.0.1:%d" % f.port
    rc, out, err = _members(regmesh_binary, "--admin", addr)
    assert rc == 1
    assert err.startswith("regmesh members: unexpected answer from http://%s/cluster/members: "
                          % addr), err


def test_members_unreachable(regmesh_binary):
    addr = util.dead_address()
    rc, out, err = _members(regmesh_binary, "--admin", addr)
    assert rc == 1
    assert out == ""
    assert err.startswith("regmesh members: cannot reach http://%s/cluster/members: " % addr), err
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize("args,word", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--admin", "127.0.0.1"], "invalid address '127.0.0.1'"),
    (["--admin", "127.0.0.1:0"], "invalid address '127.0.0.1:0'"),
    (["--admin", "evil.example/x?:80"], "invalid address"),
], ids=["unknown-arg", "no-port", "port-0", "url-chars"])
def test_members_usage_errors(regmesh_binary, args, word):
    rc, out, err = _members(regmesh_binary, *args)
    assert rc == 2, (out, err)
    assert word in err, err


def test_members_bad_config(regmesh_binary, test_dir):
    path = _write(test_dir, "bad.yml", _good(test_dir).replace("max_size: 20GiB",
                                                               "max_size: lots"))
    rc, out, err = _members(regmesh_binary, "--config", path)
    assert rc == 1
    assert path in err and "max_size" in err, err


def test_members_help(regmesh_binary):
    rc, out, err = _members(regmesh_binary, "--help")
    assert rc == 0
    assert "--admin HOST:PORT" in out and "--json" in out
    cp = util.run([regmesh_binary, "help"], timeout=10, check=False)
    assert b"members" in cp.stdout
