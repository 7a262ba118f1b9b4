"""A regmesh fleet under faults: a network partition (namespaces the test
makes, iptables inside them only), an upstream that rate-limits one node,
and a real serf agent joining the fleet's encrypted gossip.

What is asserted:
  * partition 2 | 2: each side keeps serving a cold pull through one of its
    nodes, each side lists the other's nodes suspect/dead and then dead; after
    the rules are removed every node lists all four alive within HEAL_MAX_S
    and /cluster/owners agrees on every node for every digest pulled;
  * rate-limit pooling: a node whose upstream answers its manifest GETs with
    429 (ratelimit-remaining: 0) still serves the pull of a manifest it owns,
    by delegating the GET to a peer that has budget
    (regmesh_ratelimit_delegations_total > 0; the 429 proxy saw its GET; the
    budget proxy saw the delegated one);
  * `serf agent -encrypt <fleet secret>` joining a node lists every regmesh
    node alive with the url, zone, weight and version tags.

The partition test is skipped only when `ip`/`iptables` are absent (or not
root); the serf test only when `serf` is not installed.
"""

import collections
import json
import os
import re
import shutil
import time

import pytest

from rmtest import images, netns, util
from rmtest.checks import HUB_HOST
from rmtest.fleet import (ALIVE, DEAD_STATES, NOT_ALIVE, field, free_gossip_port,  # noqa: F401
                          make_fleet, manifest_get_targets, parse_members)
from rmtest.netns import netns_lab  # noqa: F401 (fixture)
from rmtest.rlproxy import RateLimitProxy

SERF = shutil.which("serf") or ("/usr/bin/serf" if os.path.exists("/usr/bin/serf") else None)

# probe 200 ms: suspicion 0.8 s .. 4.8 s (memberlist-wire.md 9), detection
# within a few seconds; 15 s is generous.
DETECT_MAX_S = 15.0
# After the heal, dead members come back through the gossip core's
# reconnect (every 30 s, each node with probability dead/alive: 2/2 here,
# so every node tries once per 30 s, docs/decisions.md "Gossip"), then
# refutation and push/pull (1 s here). Nothing in the config shortens the
# reconnect interval, hence 30 s plus the push/pull rounds and slack.
HEAL_MAX_S = 45.0


# ---------------------------------------------------------------------------
# partition

def test_partition_each_side_serves_then_ring_heals(netns_lab, make_fleet, make_registry,
                                                     catalog, skopeo, test_dir):
    lab = netns_lab
    pulled = catalog.multi          # cold on both sides, during the partition
    other = catalog.nested
    # fill a registry on 127.0.0.1, stop it, serve its storage inside the lab
    seed = make_registry("part-seed", [pulled, other])
    seed.stop()
    reg = netns.NsRegistry(os.path.join(test_dir, "nsreg"), "part", lab.u,
                           storage=seed.storage).start()
    lab.on_cleanup(reg.stop)
    for side in ("a", "b"):
        ns = lab.side_ns(side)
        r = ns.request(reg.url_via(lab.router_ip[side]), "GET", "/v2/", timeout=5)
        assert r.status == 200, "harness: upstream not reachable from side %s: %r" % (side, r)

    sides = {0: "a", 1: "a", 2: "b", 3: "b"}
    opts = {i: {"ns": lab.side_ns(s), "host": lab.side_ip[s],
                "upstream_url": reg.url_via(lab.router_ip[s])} for i, s in sides.items()}
    fl = make_fleet(reg.url_via(lab.router_ip["a"]), 4, node_opts=opts,
                    push_pull_interval="1s",
                    cluster_extra={"peer_timeout": "1s", "peer_stall_timeout": "2s"})
    lab.on_cleanup(fl.stop_all)
    side_a = [fl.nodes[i] for i in (0, 1)]
    side_b = [fl.nodes[i] for i in (2, 3)]
    names = {nd.name for nd in fl.nodes}

    lab.partition()
    t_cut = time.monotonic()
    # harness: the cut is real (a TCP connect across it times out)
    assert not lab.a.port_open(side_b[0].host, side_b[0].port, timeout=1.0), \
        "harness: side a still reaches side b"
    assert lab.a.port_open(side_a[0].host, side_a[0].port), "harness: side a lost itself"

    for mine, theirs in ((side_a, side_b), (side_b, side_a)):
        for obs in mine:
            for nd in theirs:
                fl.wait_state(obs, nd.name, NOT_ALIVE, DETECT_MAX_S)
    print("\nboth sides list the other suspect/dead %.1f s after the cut"
          % (time.monotonic() - t_cut))

    # each side serves a cold pull through one of its nodes
    up_mark = reg.log.mark()
    for side, nd in (("a", side_a[0]), ("b", side_b[0])):
        sk = netns.NsSkopeo(os.path.join(test_dir, "skopeo-" + side), lab.side_ns(side),
                            no_proxy=[lab.side_ip["a"], lab.side_ip["b"]])
        t0 = time.monotonic()
        res = sk.copy("%s/%s" % (nd.host_port, pulled.ref()),
                      os.path.join(test_dir, "pull-" + side), timeout=120)
        print("side %s: pull via %s took %.1f s" % (side, nd.name, time.monotonic() - t0))
        assert res.digest == pulled.digest and res.verify() == []
        assert set(res.blobs) == {b.digest for b in pulled.own_blobs()}

    # each side is a fleet of its own: one upstream fetch per object per side
    gets = reg.log.gets(up_mark)
    counts = collections.Counter(e.path.rsplit("/", 1)[1] for e in gets if "/blobs/" in e.path)
    assert counts == collections.Counter(
        [b.digest for b in pulled.own_blobs()] * 2), (
        "blob GETs at the upstream during the partition (want 2 each, one per side): %s"
        % {d[:19]: c for d, c in counts.items()})
    mans = collections.Counter(manifest_get_targets(
        [e for e in gets if "/manifests/" in e.path], {(pulled.repo, pulled.tag): pulled.digest}))
    assert mans == collections.Counter({pulled.digest: 2}), dict(mans)

    for mine, theirs in ((side_a, side_b), (side_b, side_a)):
        for obs in mine:
            for nd in theirs:
                fl.wait_state(obs, nd.name, DEAD_STATES, DETECT_MAX_S)
            st = fl.states(obs)
            assert all(st.get(m.name) == ALIVE for m in mine), (obs.name, st)
    assert lab.forward_drops() > 0, "harness: the partition rules dropped nothing"
    print("both sides list the other dead %.1f s after the cut" % (time.monotonic() - t_cut))

    lab.heal()
    t_heal = time.monotonic()
    fl.wait_converged(names=names, timeout=HEAL_MAX_S, nodes=fl.nodes)
    print("all four alive everywhere %.1f s after the heal" % (time.monotonic() - t_heal))

    # the pulled digests, and 24 random keys so that the ring's spread over
    # both sides shows too (all 24 first owners on one side: 2 in 2^24)
    digests = [pulled.digest] + [b.digest for b in pulled.own_blobs()] + [
        b.digest for b in other.own_blobs()] + [
        "sha256:" + os.urandom(32).hex() for _ in range(24)]
    views = {nd.name: [tuple(fl.owners(nd, digest=d)) for d in digests] for nd in fl.nodes}
    first = views[fl.nodes[0].name]
    for name, v in views.items():
        assert v == first, "owners differ after the heal: %s vs %s: %s" % (
            fl.nodes[0].name, name, {n: vv for n, vv in views.items()})
    for lst in first:
        assert lst and set(lst) <= names, first
    assert {lst[0] for lst in first} - {nd.name for nd in side_a} and \
        {lst[0] for lst in first} - {nd.name for nd in side_b}, \
        "the healed ring has first owners on one side only: %s" % first
    for nd in fl.nodes:
        assert nd.verify_store() == [], nd.name


# ---------------------------------------------------------------------------
# rate-limit pooling

def _owned_image(fl, node, store, tries=64):
    """A fresh small image whose manifest digest `node` owns first (the
    digest is known before the push, so ownership is asked up front)."""
    for i in range(tries):
        img = store.make_image("docker", [[("rl/file.bin", 2048)]], label="rl-%d" % i)
        if fl.owners(node, digest=img.digest)[0] == node.name:
            return img
    raise AssertionError("harness: none of %d manifests owned by %s" % (tries, node.name))


def _owned_tag(fl, node, repo, tries=64):
    for i in range(tries):
        tag = "t%d" % i
        if fl.owners(node, tag="%s/%s:%s" % (HUB_HOST, repo, tag))[0] == node.name:
            return tag
    return "t0"     # tag ownership only shapes the HEAD, which passes anyway


def _budget_seen(member):
    """The docker.io budget a member's entry shows (None: not shown):
    {"ratelimit": {"docker.io": 90}}, or serf's tag form "docker.io=90"."""
    rl = member.get("ratelimit", member.get("rl"))
    if rl is None and isinstance(member.get("tags"), dict):
        rl = member["tags"].get("rl")
    if isinstance(rl, dict):
        return rl.get(HUB_HOST)
    if isinstance(rl, str):
        for kv in rl.split(","):
            k, _, v = kv.partition("=")
            if k == HUB_HOST:
                return int(v)
    return None


def test_ratelimited_node_delegates_manifest_get(make_fleet, make_registry, skopeo, test_dir):
    reg = make_registry("rl")
    deny = RateLimitProxy(reg.url, mode="deny").start()
    budget = RateLimitProxy(reg.url, mode="budget", remaining=90).start()
    try:
        fl = make_fleet(budget.url, 3, node_opts={0: {"upstream_url": deny.url}})
        a = fl.nodes[0]
        store = images.ImageStore(os.path.join(test_dir, "images"))
        img = _owned_image(fl, a, store)
        img.repo = "rl/app"
        img.tags = [_owned_tag(fl, a, img.repo)]
        images.RegistryClient(reg.url).push(img)
        print("\n%s owns manifest %s; tag %s owners %s" % (
            a.name, img.digest[:19], img.tag,
            fl.owners(a, tag="%s/%s:%s" % (HUB_HOST, img.repo, img.tag))))

        # the peers' budget (their start ping went through the budget proxy)
        # reaches a by gossip; wait for it when /cluster/members shows it. A
        # node republishes its budget at most every 5 s after its start
        # metadata, on a 1 s tick (node/cluster.c), then gossip spreads it:
        # about 7 s after the last node started; 15 s is the bound.
        def peers_have_budget():
            ms = parse_members(a.get_json("/cluster/members"))
            vals = [_budget_seen(ms[nd.name]) for nd in fl.nodes[1:] if nd.name in ms]
            if all(v is None for v in vals):
                return "not shown"
            return all(v == 90 for v in vals)
        shown = util.wait_until(peers_have_budget, 15, 0.1, what="peers' budget gossiped to n0")
        if shown == "not shown":
            time.sleep(1.0)      # no rl field in the JSON: give gossip a moment

        deny_mark = len(deny.requests)
        res = skopeo.copy("%s/%s" % (a.host_port, img.ref()), os.path.join(test_dir, "pull"),
                          timeout=120)
        assert res.digest == img.digest and res.verify() == []
        assert set(res.blobs) == {b.digest for b in img.own_blobs()}

        denied = [r for r in deny.requests[deny_mark:]
                  if r[0] == "GET" and "/manifests/" in r[1] and r[2] == 429]
        assert denied, "the 429 proxy saw no manifest GET from %s: %s" % (
            a.name, deny.requests[deny_mark:])
        delegated = budget.seen("GET", "/v2/%s/manifests/" % img.repo)
        assert delegated, "no manifest GET reached the upstream through a peer with budget: %s" % (
            budget.requests)
        n_deleg = a.metric_sum("regmesh_ratelimit_delegations_total")
        assert n_deleg > 0, "regmesh_ratelimit_delegations_total on %s is %s" % (a.name, n_deleg)
        print("429s to %s: %d; delegated GETs seen upstream: %d; delegations: %d" % (
            a.name, len(denied), len(delegated), n_deleg))
    finally:
        deny.stop()
        budget.stop()


# ---------------------------------------------------------------------------
# serf

def _serf_members(rpc):
    cp = util.run([SERF, "members", "-rpc-addr=" + rpc, "-format=json"], timeout=15)
    return {m["name"]: m for m in json.loads(cp.stdout.decode())["members"]}


@pytest.mark.skipif(SERF is None, reason="serf is not installed here (apt-get install -y serf)")
def test_serf_agent_lists_the_fleet(make_fleet, hub, test_dir):
    fl = make_fleet(hub, 3)
    bind = "127.0.0.1:%d" % free_gossip_port()
    rpc = "127.0.0.1:%d" % util.free_port()
    log = os.path.join(test_dir, "serf.log")
    proc = util.Proc([SERF, "agent", "-node=serf-probe", "-bind=" + bind, "-rpc-addr=" + rpc,
                      "-encrypt=" + fl.secret, "-join=" + fl.nodes[0].gossip_addr,
                      "-log-level=debug"], log, name="serf").start()
    try:
        last = {}

        def all_alive():
            if not proc.alive():
                raise AssertionError("serf exited: %s" % util.tail(log, 30))
            ms = _serf_members(rpc)
            last["v"] = ms
            return all(ms.get(nd.name, {}).get("status") == "alive" for nd in fl.nodes)
        try:
            util.wait_until(all_alive, 20, 0.2, what="serf to list every regmesh node alive")
        except TimeoutError as e:
            raise AssertionError("%s: %s\nserf log:\n%s" % (
                e, {n: m.get("status") for n, m in last.get("v", {}).items()},
                util.tail(log, 40)))
        ms = last["v"]
        for nd in fl.nodes:
            tags = ms[nd.name]["tags"]
            assert tags.get("url") == nd.peer_url, tags
            assert tags.get("zone") == nd.cluster["zone"], tags
            assert tags.get("weight") == "1", tags
            assert tags.get("version"), tags
            assert ms[nd.name]["addr"] == nd.gossip_addr, ms[nd.name]
        problems = [ln for ln in open(log, errors="replace").read().splitlines()
                    if "[ERR]" in ln]
        assert not problems, problems[:10]
        # the serf agent has no registry URL: it must own none of the ring,
        # or the keys it "owned" would always go upstream
        seen = {}

        def serf_listed():
            seen["m"] = fl.members(fl.nodes[0])
            return "serf-probe" in seen["m"]
        util.wait_until(serf_listed, 20, 0.2, what="the fleet to list serf-probe")
        ms = seen["m"]
        assert field(ms["serf-probe"], "share") == 0, ms["serf-probe"]
        total = sum(field(ms[nd.name], "share") for nd in fl.nodes)
        assert abs(total - 1.0) < 0.01, {n: field(m, "share") for n, m in ms.items()}
    finally:
        proc.stop(timeout=5)


def test_grafana_dashboard_queries_parse_and_name_real_metrics(make_fleet, make_registry,
                                                               test_dir):
    """deploy/grafana/regmesh-dashboard.json: every query is valid PromQL
    (promtool parses it as a recording rule) and every regmesh_* series it
    reads is one a fleet node exports."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dash = json.load(open(os.path.join(repo, "deploy", "grafana", "regmesh-dashboard.json")))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    rules = os.path.join(test_dir, "rules.yml")
    with open(rules, "w") as f:
        f.write("groups:\n- name: dashboard\n  rules:\n")
        for i, e in enumerate(exprs):
            e = (e.replace("$__rate_interval", "5m").replace("$__range", "6h")
                 .replace("$instance", ".*"))
            f.write("  - record: dashboard:q%d\n    expr: %s\n" % (i, json.dumps(e)))
    cp = util.run([promtool, "check", "rules", rules], timeout=30, check=False)
    assert cp.returncode == 0, cp.stdout.decode() + cp.stderr.decode()

    # an upstream that reports a rate limit, so the budget series exist
    budget = RateLimitProxy(make_registry("dash").url, mode="budget", remaining=90).start()
    try:
        fl = make_fleet(budget.url, 1)
        util.wait_until(lambda: fl.nodes[0].metric_sum("regmesh_upstream_ratelimit_remaining")
                        == 90, 15, what="the rate limit in the metrics")
        exported = {n for n, _, _ in fl.nodes[0].metrics()}
    finally:
        budget.stop()
    wanted = {re.sub(r"_(bucket|sum|count)$", "", m)
              for e in exprs for m in re.findall(r"regmesh_[a-z_]+", e)}
    exported |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in exported}
    # counters that only appear once something happened (a denial, a
    # timeout) must at least be ones the node's code registers
    registered = set()
    for fn in os.listdir(os.path.join(repo, "node")):
        if fn.endswith(".c"):
            registered |= set(re.findall(r'"(regmesh_[a-z_]+)"',
                                         open(os.path.join(repo, "node", fn)).read()))
    missing = wanted - exported - registered
    assert not missing, "the dashboard reads series no node exports: %s" % sorted(missing)
    for always in ("regmesh_cache_requests_total", "regmesh_upstream_ratelimit_remaining",
                   "regmesh_cluster_members", "regmesh_upstream_circuit_state",
                   "regmesh_storage_bytes", "regmesh_http_request_duration_seconds"):
        assert always in wanted and always in exported, always
