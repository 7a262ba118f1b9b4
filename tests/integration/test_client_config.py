"""`regmesh client-config`: the files it prints and writes are the ones the
real clients use to pull through the node, merged into what a host already
has without clobbering it, and `--check` tells whether a host points at the
node."""

import json
import os
import shutil
import tomllib
import uuid

import pytest

from rmtest import clients, regmesh, util
from rmtest.checks import GHCR_HOST


def _cc(binary, *args, check=True):
    cp = util.run([binary, "client-config"] + list(args), timeout=30, check=False)
    if check:
        assert cp.returncode == 0, (cp.returncode, cp.stdout, cp.stderr)
    return cp


def _blob_gets(node, mark, digests):
    got = {a["path"].rsplit("/", 1)[1] for a in node.access(mark)
           if a["method"] == "GET" and "/blobs/" in a["path"] and a["status"] in (200, 206)}
    missing = set(digests) - got
    assert not missing, "blobs not fetched through regmesh: %s" % missing


def test_write_merges_and_check_tells(regmesh_binary, node, test_dir):
    """An existing daemon.json and registries.conf keep their other keys and
    tables; ours replace only the tables for our upstreams; a second write
    changes nothing; --check is 0 only when every file points at the node."""
    root = os.path.join(test_dir, "root")
    os.makedirs(os.path.join(root, "etc/docker"))
    os.makedirs(os.path.join(root, "etc/containers"))
    with open(os.path.join(root, "etc/docker/daemon.json"), "w") as f:
        json.dump({"log-driver": "journald", "registry-mirrors": ["https://old.example"]}, f)
    with open(os.path.join(root, "etc/containers/registries.conf"), "w") as f:
        f.write('unqualified-search-registries = ["docker.io"]\n\n'
                '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
                '[[registry.mirror]]\nlocation = "old.example/hub"\n\n'
                '[[registry]]\nprefix = "registry.internal"\nlocation = "registry.internal"\n')
    cfg = ["--config", node.config_path]
    assert _cc(regmesh_binary, "all", "--check", root, *cfg, check=False).returncode == 1

    out = _cc(regmesh_binary, "all", "--write", root, *cfg).stdout.decode()
    assert "updated %s/etc/docker/daemon.json" % root in out, out
    doc = json.load(open(os.path.join(root, "etc/docker/daemon.json")))
    assert doc["log-driver"] == "journald"
    assert doc["registry-mirrors"] == [node.url, "https://old.example"], doc
    conf = open(os.path.join(root, "etc/containers/registries.conf")).read()
    assert 'unqualified-search-registries = ["docker.io"]' in conf
    assert 'prefix = "registry.internal"' in conf
    assert "old.example/hub" not in conf, conf
    assert 'location = "%s/docker.io"' % node.host_port in conf
    assert 'location = "%s/%s"' % (node.host_port, GHCR_HOST) in conf
    hosts = open(os.path.join(root, "etc/containerd/certs.d/ghcr.io/hosts.toml")).read()
    assert 'server = "https://ghcr.io"' in hosts and node.url in hosts, hosts

    again = _cc(regmesh_binary, "all", "--write", root, *cfg).stdout.decode()
    assert "updated" not in again and "wrote" not in again, again
    ok = _cc(regmesh_binary, "all", "--check", root, *cfg)
    assert all(l.startswith("ok ") for l in ok.stdout.decode().splitlines()), ok.stdout
    # another node address: every file differs
    other = _cc(regmesh_binary, "all", "--check", root, "--node", "http://10.1.2.3:5000",
                *cfg, check=False)
    assert other.returncode == 1 and "ok " not in other.stdout.decode(), other.stdout

    # a daemon.json that is not JSON is reported and left alone
    with open(os.path.join(root, "etc/docker/daemon.json"), "w") as f:
        f.write("{ nope")
    bad = _cc(regmesh_binary, "docker", "--write", root, *cfg, check=False)
    assert bad.returncode == 1 and b"daemon.json:1:" in bad.stderr, bad.stderr
    assert open(os.path.join(root, "etc/docker/daemon.json")).read() == "{ nope"


def test_buildkitd_toml_follows_the_schema(regmesh_binary, node, test_dir):
    """buildkitd is not packaged here: its file is parsed with Python's
    tomllib and compared with buildkit's documented keys: [registry."<host>"]
    mirrors (host[:port], no scheme) for each upstream, and the node's own
    table with http = true."""
    out = _cc(regmesh_binary, "buildkit", "--config", node.config_path).stdout.decode()
    text = out.split("\n", 1)[1]
    doc = tomllib.loads(text)
    regs = doc["registry"]
    for host in ("docker.io", GHCR_HOST):
        assert regs[host]["mirrors"] == [node.host_port], regs
    assert regs[node.host_port]["http"] is True
    assert set(regs) == {"docker.io", GHCR_HOST, node.host_port}


@pytest.fixture
def ctr_ns(containerd):
    ns = "rmtest-" + uuid.uuid4().hex[:8]
    yield ns
    containerd.remove_namespace(ns)


def test_containerd_pulls_with_the_written_hosts_dir(regmesh_binary, containerd, ctr_ns, node,
                                                     catalog, test_dir):
    root = os.path.join(test_dir, "root")
    _cc(regmesh_binary, "containerd", "--config", node.config_path, "--no-fallback",
        "--write", root)
    hosts = os.path.join(root, "etc/containerd/certs.d")
    mark = node.log_mark()
    containerd.pull("docker.io/library/alpine:3.19", hosts, ctr_ns)
    containerd.pull("ghcr.io/%s" % catalog.tool.ref(), hosts, ctr_ns)
    assert containerd.image_digest("docker.io/library/alpine:3.19", ctr_ns) == catalog.alpine.digest
    assert containerd.image_digest("ghcr.io/%s" % catalog.tool.ref(), ctr_ns) == catalog.tool.digest
    _blob_gets(node, mark, [b.digest for b in catalog.alpine.child("amd64").own_blobs()] +
               [b.digest for b in catalog.tool.own_blobs()])


def test_podman_and_skopeo_pull_with_the_written_registries_conf(regmesh_binary, node, catalog,
                                                                 test_dir):
    miss = clients.missing("podman", "skopeo", "unshare")
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))
    root = os.path.join(test_dir, "root")
    os.makedirs(os.path.join(root, "etc/containers"))
    conf = os.path.join(root, "etc/containers/registries.conf")
    with open(conf, "w") as f:
        f.write('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
    _cc(regmesh_binary, "podman", "--config", node.config_path, "--no-fallback",
        "--write", root)
    text = open(conf).read()

    pm = clients.Podman(os.path.join(test_dir, "podman"), text)
    try:
        mark = node.log_mark()
        pm.pull("ghcr.io/" + catalog.tool.ref())
        assert pm.image_digest("ghcr.io/" + catalog.tool.ref()) == catalog.tool.digest
        _blob_gets(node, mark, [b.digest for b in catalog.tool.own_blobs()])
    finally:
        pm.cleanup()

    sk = clients.Skopeo(os.path.join(test_dir, "skopeo"))
    with open(sk.registries_conf, "w") as f:
        f.write(text)
    mark = node.log_mark()
    res = sk.copy("docker.io/library/alpine:3.19", os.path.join(test_dir, "copy"))
    amd = catalog.alpine.child("amd64")
    assert res.digest == amd.digest, res.digest
    _blob_gets(node, mark, [b.digest for b in amd.own_blobs()])
    assert all(a["path"].startswith("/v2/docker.io/") for a in node.access(mark)
               if "/v2/" in a["path"] and a["path"] != "/v2/")


def test_dockerd_pulls_with_the_merged_daemon_json(regmesh_binary, containerd, node, catalog,
                                                   test_dir):
    """The harness's own daemon.json (data root, sockets, vfs) is merged by
    client-config; dockerd started on the result keeps its settings and
    pulls Docker Hub names through the node."""
    if clients.missing("dockerd"):
        pytest.skip("not installed here: dockerd")
    dk = clients.Dockerd(os.path.join(test_dir, "dockerd"), containerd, [],
                         "rmtest-dk-" + uuid.uuid4().hex[:8])
    root = os.path.join(test_dir, "root")
    os.makedirs(os.path.join(root, "etc/docker"))
    target = os.path.join(root, "etc/docker/daemon.json")
    shutil.copy(dk.config, target)
    out = _cc(regmesh_binary, "docker", "--config", node.config_path, "--write", root)
    assert "registry-mirrors: %s added first" % node.url in out.stdout.decode(), out.stdout
    merged = json.load(open(target))
    before = json.load(open(dk.config))
    assert merged["registry-mirrors"] == [node.url]
    assert {k: v for k, v in merged.items() if k != "registry-mirrors"} == \
        {k: v for k, v in before.items() if k != "registry-mirrors"}
    shutil.copy(target, dk.config)
    dk.start()
    try:
        mark = node.log_mark()
        ok, msgs = dk.pull("alpine", "3.19")
        assert ok, "docker pull failed: %r" % msgs[-5:]
        st, info = dk.inspect("alpine:3.19")
        assert st == 200 and "alpine@" + catalog.alpine.digest in info["RepoDigests"], info
        _blob_gets(node, mark, [b.digest for b in catalog.alpine.child("amd64").own_blobs()])
    finally:
        dk.stop()


# ---------------------------------------------------------------------------
# --proxy: HTTPS_PROXY and the proxy CA instead of mirror settings

def _proxy_config(test_dir, binary, listen="0.0.0.0:3128", proxy=True):
    """A config with Docker Hub (and an alias), ghcr.io with an alias, a
    registry on a port, and a proxy: section whose CA `regmesh ca init` made.
    Returns (path, CA certificate path)."""
    ca_dir = os.path.join(test_dir, "proxy-ca")
    if not os.path.isdir(ca_dir):
        util.run([binary, "ca", "init", ca_dir], timeout=30)
    crt = os.path.join(ca_dir, "ca.crt")
    lines = ["listen: 127.0.0.1:5000",
             "storage: {root: %s}" % os.path.join(test_dir, "data"),
             "upstreams:",
             "  - host: docker.io",
             "    url: https://registry-1.docker.io",
             "    default: true",
             "    aliases: [production.cloudflare.docker.com]",
             "  - host: ghcr.io",
             "    url: https://ghcr.io",
             "    aliases: [pkg-containers.githubusercontent.com]",
             "  - host: registry.internal:5443",
             "    url: https://registry.internal:5443"]
    if proxy:
        lines += ["proxy:",
                  '  listen: "%s"' % listen,
                  "  ca: {cert: %s, key: %s}" % (crt, os.path.join(ca_dir, "ca.key"))]
    path = os.path.join(test_dir, "proxy.yaml" if proxy else "plain.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, crt


NON_HUB = ("ghcr.io", "pkg-containers.githubusercontent.com", "registry.internal:5443")
ALL_NAMES = ("docker.io", "production.cloudflare.docker.com") + NON_HUB


def _env_line(text):
    """The Environment= of a systemd drop-in, as {name: value}."""
    import configparser
    import shlex
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(text)
    return dict(w.split("=", 1) for w in shlex.split(ini["Service"]["Environment"]))


def test_proxy_docker_prints_the_dropin_and_where_the_ca_goes(regmesh_binary, test_dir):
    """dockerd: HTTPS_PROXY from proxy.listen (a wildcard as loopback) in a
    drop-in; the CA in certs.d for every host and alias except Docker Hub's,
    which dockerd checks against the system store only."""
    cfg, crt = _proxy_config(test_dir, regmesh_binary)
    out = _cc(regmesh_binary, "docker", "--proxy", "--config", cfg).stdout.decode()
    dropin = "# ---- /etc/systemd/system/docker.service.d/regmesh-proxy.conf\n"
    assert dropin in out, out
    env = _env_line(out.split(dropin, 1)[1].split("# ----", 1)[0])
    assert env == {"HTTPS_PROXY": "http://127.0.0.1:3128", "HTTP_PROXY": "http://127.0.0.1:3128",
                   "NO_PROXY": "localhost,127.0.0.0/8,::1"}, env
    for h in NON_HUB:
        assert "# ---- /etc/docker/certs.d/%s/regmesh-proxy-ca.crt: a copy of %s\n" % (h, crt) \
            in out, out
    assert "/etc/docker/certs.d/docker.io/" not in out, out
    assert "/etc/docker/certs.d/production.cloudflare.docker.com/" not in out, out
    assert "# ---- /usr/local/share/ca-certificates/regmesh-proxy-ca.crt: a copy of %s\n" % crt \
        in out, out
    assert "# then: update-ca-certificates" in out, out
    assert "# then: systemctl daemon-reload && systemctl restart docker\n" in out, out
    assert "daemon.json" not in out and "hosts.toml" not in out, out

    other = _cc(regmesh_binary, "docker", "--proxy", "--proxy-url", "http://10.1.2.3:8080",
                "--config", cfg).stdout.decode()
    assert '"HTTPS_PROXY=http://10.1.2.3:8080"' in other, other
    v6, _ = _proxy_config(test_dir, regmesh_binary, listen="[::]:3129")
    assert '"HTTPS_PROXY=http://[::1]:3129"' in _cc(
        regmesh_binary, "docker", "--proxy", "--config", v6).stdout.decode()


def test_proxy_write_then_check(regmesh_binary, test_dir):
    """--write puts the CA's bytes everywhere a client looks for it and
    files the clients parse; an existing buildkitd.toml keeps its lines;
    --check is 0 right after and 1 once a file changed or went."""
    cfg, crt = _proxy_config(test_dir, regmesh_binary, listen="127.0.0.1:3128")
    ca = open(crt, "rb").read()
    root = os.path.join(test_dir, "root")
    os.makedirs(os.path.join(root, "etc/buildkit"))
    bk_path = os.path.join(root, "etc/buildkit/buildkitd.toml")
    with open(bk_path, "w") as f:
        f.write('debug = true\n\n[worker.oci]\n  enabled = true\n')
    assert _cc(regmesh_binary, "all", "--proxy", "--check", root, "--config", cfg,
               check=False).returncode == 1
    _cc(regmesh_binary, "all", "--proxy", "--write", root, "--config", cfg)

    def rd(rel, mode="r"):
        with open(os.path.join(root, rel), mode) as f:
            return f.read()

    url = "http://127.0.0.1:3128"
    for unit in ("docker", "containerd", "buildkit"):
        env = _env_line(rd("etc/systemd/system/%s.service.d/regmesh-proxy.conf" % unit))
        assert env["HTTPS_PROXY"] == url and env["HTTP_PROXY"] == url, (unit, env)
    cas = ["etc/docker/certs.d/%s/regmesh-proxy-ca.crt" % h for h in NON_HUB]
    cas += ["usr/local/share/ca-certificates/regmesh-proxy-ca.crt",
            "etc/buildkit/regmesh-proxy-ca.crt"]
    for h in ALL_NAMES:
        cas += ["etc/containerd/certs.d/%s/regmesh-proxy-ca.crt" % h,
                "etc/containers/certs.d/%s/regmesh-proxy-ca.crt" % h]
        hosts = tomllib.loads(rd("etc/containerd/certs.d/%s/hosts.toml" % h))
        server = "registry-1.docker.io" if h == "docker.io" else h
        assert hosts == {"server": "https://" + server,
                         "ca": "/etc/containerd/certs.d/%s/regmesh-proxy-ca.crt" % h,
                         "host": {}}, hosts
    assert not os.path.exists(os.path.join(root, "etc/docker/certs.d/docker.io"))
    for rel in cas:
        assert rd(rel, "rb") == ca, rel
        assert os.stat(os.path.join(root, rel)).st_mode & 0o777 == 0o644, rel
    bk = tomllib.loads(rd("etc/buildkit/buildkitd.toml"))
    assert bk["debug"] is True and bk["worker"]["oci"]["enabled"] is True, bk
    assert bk["registry"] == {h: {"ca": ["/etc/buildkit/regmesh-proxy-ca.crt"]}
                              for h in ALL_NAMES}, bk
    pm = tomllib.loads(rd("etc/containers/containers.conf.d/regmesh-proxy.conf"))
    assert sorted(pm["engine"]["env"]) == sorted(
        ["HTTPS_PROXY=" + url, "HTTP_PROXY=" + url, "NO_PROXY=localhost,127.0.0.0/8,::1"]), pm
    assert pm["containers"]["http_proxy"] is False, pm

    again = _cc(regmesh_binary, "all", "--proxy", "--write", root, "--config", cfg)
    assert "wrote" not in again.stdout.decode() and "updated" not in again.stdout.decode()
    ok = _cc(regmesh_binary, "all", "--proxy", "--check", root, "--config", cfg)
    lines = ok.stdout.decode().splitlines()
    assert lines and all(l.startswith("ok ") for l in lines), lines
    assert not any("then:" in l for l in lines), lines

    changed = os.path.join(root, "etc/docker/certs.d/ghcr.io/regmesh-proxy-ca.crt")
    with open(changed, "ab") as f:
        f.write(b"\n")
    gone = os.path.join(root, "etc/containers/containers.conf.d/regmesh-proxy.conf")
    os.unlink(gone)
    bad = _cc(regmesh_binary, "all", "--proxy", "--check", root, "--config", cfg, check=False)
    out = bad.stdout.decode()
    assert bad.returncode == 1, out
    assert "differs  %s" % changed in out and "missing  %s" % gone in out, out
    # another proxy address: the drop-ins differ
    other = _cc(regmesh_binary, "docker", "--proxy", "--check", root, "--config", cfg,
                "--proxy-url", "http://10.1.2.3:3128", check=False)
    assert other.returncode == 1 and "differs " in other.stdout.decode(), other.stdout


def test_proxy_needs_a_proxy_section(regmesh_binary, test_dir):
    plain, _ = _proxy_config(test_dir, regmesh_binary, proxy=False)
    for args in (["--config", plain], []):
        cp = _cc(regmesh_binary, "docker", "--proxy", *args, check=False)
        assert cp.returncode == 1, (cp.stdout, cp.stderr)
        assert b"the config has no proxy: section; see docs/proxy.md" in cp.stderr, cp.stderr
        assert cp.stdout == b""
    cfg, _ = _proxy_config(test_dir, regmesh_binary)
    # mirror options mean nothing with --proxy, and --proxy-url nothing without it
    for args in (["--proxy", "--node", "http://10.1.2.3:5000"], ["--proxy", "--no-fallback"],
                 ["--proxy-url", "http://10.1.2.3:3128"],
                 ["--proxy", "--proxy-url", "https://10.1.2.3:3128"],
                 ["--proxy", "--proxy-url", "http://10.1.2.3:3128/x"]):
        assert _cc(regmesh_binary, "docker", "--config", cfg, *args,
                   check=False).returncode == 2, args


def test_containerd_pulls_through_the_proxy_with_the_written_files(
        regmesh_binary, containerd, ctr_ns, make_node, hub, ghcr, catalog, test_dir):
    """ctr with the drop-in's environment and the written hosts dir pulls
    ghcr.io and Docker Hub names through the node's proxy listener, trusting
    its leaves where client-config put the CA (containerd 1.6 parses the
    hosts.toml with its empty [host] table)."""
    ca_dir = os.path.join(test_dir, "proxy-ca")
    util.run([regmesh_binary, "ca", "init", ca_dir], timeout=30)
    port = util.free_port()
    node = make_node([regmesh.Upstream("docker.io", hub.url, default=True),
                      regmesh.Upstream("ghcr.io", ghcr.url)],
                     extra_yaml="proxy:\n  listen: %s:%d\n  ca: {cert: %s, key: %s}\n" % (
                         util.LOCALHOST, port, os.path.join(ca_dir, "ca.crt"),
                         os.path.join(ca_dir, "ca.key")))
    util.wait_until(lambda: util.port_open(port), 10, what="the proxy listener")
    root = os.path.join(test_dir, "root")
    _cc(regmesh_binary, "containerd", "--proxy", "--config", node.config_path, "--write", root)
    env = _env_line(open(os.path.join(
        root, "etc/systemd/system/containerd.service.d/regmesh-proxy.conf")).read())
    assert env["HTTPS_PROXY"] == "http://%s:%d" % (util.LOCALHOST, port)
    # the files name /etc/containerd/certs.d; ctr reads them from ROOT
    hosts = os.path.join(root, "etc/containerd/certs.d")
    for h in os.listdir(hosts):
        t = os.path.join(hosts, h, "hosts.toml")
        with open(t) as f:
            text = f.read().replace('"/etc/containerd/', '"%s/etc/containerd/' % root)
        with open(t, "w") as f:
            f.write(text)
    mark = node.log_mark()
    for ref, img in (("ghcr.io/%s" % catalog.tool.ref(), catalog.tool),
                     ("docker.io/library/alpine:3.19", catalog.alpine)):
        cp = containerd.ctr(["images", "pull", "--hosts-dir", hosts, ref], namespace=ctr_ns,
                            timeout=120, check=False, env_extra=env)
        assert cp.returncode == 0, cp.stderr.decode()
        assert containerd.image_digest(ref, ctr_ns) == img.digest
    hosts_seen = {a.get("host") for a in node.access(mark)}
    assert {"ghcr.io:443", "registry-1.docker.io:443"} <= hosts_seen, hosts_seen
    _blob_gets(node, mark, [b.digest for b in catalog.alpine.child("amd64").own_blobs()] +
               [b.digest for b in catalog.tool.own_blobs()])
