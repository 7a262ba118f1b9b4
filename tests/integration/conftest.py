"""Shared fixtures for regmesh's integration tests.

Upstreams are Debian's docker-registry (distribution 2.8.2) processes on
127.0.0.1, filled with images the tests make themselves; regmesh nodes are
started per test with fresh data dirs. Everything a test starts is stopped
by PID, and every directory it made is removed.

Environment:
  REGMESH_BIN     regmesh binary (default /work/main/build/regmesh)
  RMTEST_BIG_MIB  size of the big layer in MiB (default 64)
  RMTEST_KEEP=1   keep the session's temp dir (logs, data dirs) for debugging
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rmtest import clients, images, proxy, regmesh, upstream  # noqa: E402

from rmtest.checks import (TEST_USER, TEST_PASSWORD, ghcr_upstream,  # noqa: E402
                           hub_upstream)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


# ---------------------------------------------------------------------------
# session: temp dir, images, upstream registries

@pytest.fixture(scope="session")
def session_dir():
    d = tempfile.mkdtemp(prefix="rmtest-")
    yield d
    if os.environ.get("RMTEST_KEEP"):
        print("\nrmtest: kept %s" % d)
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def test_dir(session_dir, request):
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:60]
    d = tempfile.mkdtemp(prefix=name + "-", dir=session_dir)
    yield d
    if not os.environ.get("RMTEST_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def catalog(session_dir):
    big = int(os.environ.get("RMTEST_BIG_MIB", "64"))
    return images.Catalog(images.ImageStore(os.path.join(session_dir, "images")), big_mib=big)


def _need_registry():
    if not os.path.exists(upstream.REGISTRY_BIN):
        pytest.fail("docker-registry (distribution) not found at %s: "
                    "`sh deploy/deps.sh test` installs it" % upstream.REGISTRY_BIN)


@pytest.fixture(scope="session")
def hub(session_dir, catalog):
    """Plain upstream standing for docker.io, with every hub image."""
    _need_registry()
    reg = upstream.Registry(session_dir, "hub").start()
    try:
        c = images.RegistryClient(reg.url)
        for img in catalog.hub_images():
            c.push(img)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def ghcr(session_dir, catalog):
    """Second plain upstream standing for ghcr.io."""
    _need_registry()
    reg = upstream.Registry(session_dir, "ghcr").start()
    try:
        images.RegistryClient(reg.url).push(catalog.tool)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def token_server(session_dir):
    ts = upstream.TokenServer(session_dir, {TEST_USER: TEST_PASSWORD}).start()
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def token_registry(session_dir, catalog, token_server):
    """Upstream with `auth: token` (JWTs from token_server)."""
    _need_registry()
    reg = upstream.Registry(session_dir, "token", auth=token_server.registry_auth()).start()
    try:
        images.RegistryClient(reg.url, TEST_USER, TEST_PASSWORD).push(catalog.private)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def basic_registry(session_dir, catalog):
    """Upstream with `auth: htpasswd` (bcrypt)."""
    _need_registry()
    path = os.path.join(session_dir, "htpasswd")
    upstream.make_htpasswd(path, {TEST_USER: TEST_PASSWORD})
    reg = upstream.Registry(session_dir, "basic", auth={"htpasswd": path}).start()
    try:
        images.RegistryClient(reg.url, TEST_USER, TEST_PASSWORD).push(catalog.private)
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def make_registry(session_dir):
    """Factory for a throw-away plain registry (tests that stop it)."""
    regs = []

    def make(name, imgs=()):
        _need_registry()
        reg = upstream.Registry(tempfile.mkdtemp(prefix=name + "-", dir=session_dir),
                                name).start()
        regs.append(reg)
        c = images.RegistryClient(reg.url)
        for img in imgs:
            c.push(img)
        return reg
    yield make
    for r in regs:
        r.stop()
        if not os.environ.get("RMTEST_KEEP"):
            shutil.rmtree(os.path.dirname(r.dir), ignore_errors=True)


@pytest.fixture
def make_proxy():
    """Factory for misbehaving HTTP proxies in front of an upstream."""
    started = []

    def make(target_url, **kw):
        p = proxy.UpstreamProxy(target_url, **kw).start()
        started.append(p)
        return p
    yield make
    for p in started:
        p.stop()


# ---------------------------------------------------------------------------
# regmesh

@pytest.fixture(scope="session")
def regmesh_binary():
    path = regmesh.regmesh_bin()
    if not regmesh.binary_ok(path):
        pytest.fail(regmesh.missing_binary_message(path), pytrace=False)
    return path


@pytest.fixture
def make_node(regmesh_binary, test_dir, request):
    """Factory: make_node(upstreams=[regmesh.Upstream(...)], max_size=..)
    starts a regmesh node on free ports with a generated config in the
    test's dir and returns the running rmtest.regmesh.Node. All nodes are
    stopped (by PID) at teardown; on failure their log tails are printed."""
    nodes = []

    def make(upstreams, start=True, name=None, **kw):
        name = name or "node%d" % len(nodes)
        n = regmesh.Node(regmesh_binary, os.path.join(test_dir, name), upstreams, **kw)
        nodes.append(n)
        if start:
            n.start()
        return n
    yield make
    regmesh.stop_and_report(nodes, _failed(request))


@pytest.fixture
def node(make_node, hub, ghcr):
    """A node with docker.io -> hub (default) and ghcr.io -> ghcr, one
    listener (tests of per-upstream listeners make their own node)."""
    return make_node([hub_upstream(hub), ghcr_upstream(ghcr)])


# ---------------------------------------------------------------------------
# clients

@pytest.fixture(scope="session")
def skopeo(session_dir):
    miss = clients.missing("skopeo", "unshare")
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))
    return clients.Skopeo(os.path.join(session_dir, "skopeo"))


@pytest.fixture(scope="session")
def direct_copies(session_dir, skopeo):
    """Cache of skopeo copies made directly from an upstream (the reference
    a copy through regmesh is compared with)."""
    cache = {}
    base = os.path.join(session_dir, "direct")

    def get(registry, ref, all_images=False, src_creds=None):
        key = (registry.host_port, ref, all_images)
        if key not in cache:
            dest = os.path.join(base, "%d" % len(cache))
            cache[key] = skopeo.copy("%s/%s" % (registry.host_port, ref), dest,
                                     all_images=all_images, src_creds=src_creds)
        return cache[key]
    return get


@pytest.fixture(scope="session")
def containerd(session_dir):
    miss = clients.missing("containerd", "ctr")
    if miss:
        pytest.skip("not installed here: %s" % ", ".join(miss))
    c = clients.Containerd(os.path.join(session_dir, "containerd")).start()
    yield c
    c.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "clients: runs a real registry client daemon")
