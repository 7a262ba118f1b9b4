"""A fleet of regmesh nodes on 127.0.0.1 (docs/cluster.md) against one
upstream (Debian's docker-registry), with skopeo as the client.

What is asserted:
  * 3 and 5 nodes, every node pulling the same images at once: the
    upstream's access log shows each blob GET and each manifest GET exactly
    once for the whole fleet, every copy has the upstream's digests, and
    some node counted regmesh_hits_total{source="peer"};
  * kill -9 of a large blob's owner while a non-owner streams it from it:
    the client's pull still succeeds with the right digest, the survivors
    mark the owner dead within DEAD_MAX_S, and /cluster/owners drops it;
  * a peer whose blob bytes are flipped on the way (a proxy it advertises
    as its peer_url): the pull through the other nodes ends with the right
    bytes after at most PULL_ATTEMPTS client runs, nothing corrupt is
    stored or left in tmp/, and regmesh_peer_errors_total{kind="digest"}
    grew;
  * tags resolved through all nodes for 2.5 TTLs reach the upstream at
    most 1 + floor(D / TTL) times (D: first request sent -> last answer);
  * `regmesh members --admin` lists every node alive; /cluster/members has
    the documented fields.
"""

import collections
import math
import os
import socket
import threading
import time

import pytest

from rmtest import images, util
from rmtest.fleet import (ALIVE, DEAD_STATES, MEMBER_FIELDS, expected_content, field,
                          make_fleet, manifest_get_targets, parse_members,  # noqa: F401
                          run_members_cli, skopeo_copy_retrying, wait_settled)

# probe 200 ms / timeout 100 ms: the suspicion timeout for <= 10 members is
# 4 x 200 ms = 0.8 s, at most 6 x that (4.8 s) without confirmations; a
# dead owner is found within a few probe rounds on top.
DEAD_MAX_S = 15.0
# a client run that was cut (a corrupt peer blob) is run again, as a build
# would: skopeo's --retry-times does not retry a body cut short.
PULL_ATTEMPTS = 4


def _pull_all_at_once(fl, skopeo, imgs, test_dir, tag):
    """Every node pulls every image, the nodes in parallel (one skopeo per
    node at a time, all starting together). Returns {(node, key): result}."""
    results, errors = {}, []
    barrier = threading.Barrier(len(fl.nodes))

    def pull(node):
        try:
            barrier.wait(30)
            for key, img in imgs:
                dest = os.path.join(test_dir, "%s-%s-%s" % (tag, node.name, key))
                results[(node.name, key)] = skopeo.copy(
                    "%s/%s" % (node.host_port, img.ref()), dest, timeout=180)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append("%s: %s" % (node.name, e))
    threads = [threading.Thread(target=pull, args=(nd,), daemon=True) for nd in fl.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not [t for t in threads if t.is_alive()], "pulls still running after 300 s"
    assert not errors, "pulls failed:\n" + "\n".join(errors)
    return results


@pytest.mark.parametrize("n", [3, 5])
def test_concurrent_pulls_fetch_each_object_once(make_fleet, hub, catalog, skopeo, test_dir, n):
    imgs = [("multi", catalog.multi), ("nested", catalog.nested), ("alpine", catalog.alpine)]
    # nothing here needs fast failure detection: slower probes keep a busy
    # two-CPU machine from suspecting a healthy node
    fl = make_fleet(hub, n, probe_interval="500ms", probe_timeout="250ms")
    want_manifests, want_blobs = [], []
    for _, img in imgs:
        m, b = expected_content(img)
        want_manifests += m
        want_blobs += b
    tag_digests = {(img.repo, img.tag): img.digest for _, img in imgs}

    mark = hub.log.mark()
    results = _pull_all_at_once(fl, skopeo, imgs, test_dir, "c%d" % n)

    for (name, key), res in sorted(results.items()):
        img = dict(imgs)[key]
        assert res.verify() == [], "%s via %s: files not matching their digests" % (key, name)
        # skopeo without --all stores the instance it picked (amd64) as manifest.json
        top = img.child("amd64").digest if img.is_index else img.digest
        assert res.digest == top, "%s via %s: manifest %s, upstream has %s" % (
            key, name, res.digest, top)
        assert set(res.blobs) == set(expected_content(img)[1]), (key, name, sorted(res.blobs))

    gets = hub.log.gets(mark)
    bad = [e for e in gets if e.status not in (200, 206)]
    assert not bad, "upstream GETs that failed: %s" % bad
    blob_counts = collections.Counter(e.path.rsplit("/", 1)[1] for e in gets
                                      if "/blobs/" in e.path)
    assert blob_counts == collections.Counter(want_blobs), (
        "blob GETs at the upstream for the whole fleet of %d (want each once): %s"
        % (n, {d[:19]: c for d, c in blob_counts.items() if c != 1 or d not in want_blobs}
           or {d[:19]: 0 for d in want_blobs if d not in blob_counts}))
    man_counts = collections.Counter(
        manifest_get_targets([e for e in gets if "/manifests/" in e.path], tag_digests))
    assert man_counts == collections.Counter(want_manifests), (
        "manifest GETs at the upstream for the whole fleet of %d (want each once): %s"
        % (n, dict(man_counts)))
    others = [e for e in gets if "/blobs/" not in e.path and "/manifests/" not in e.path
              and e.path not in ("/v2/", "/v2")]
    assert not others, others

    peer_hits = {nd.name: nd.metric_sum("regmesh_hits_total", source="peer") for nd in fl.nodes}
    assert sum(peer_hits.values()) > 0, "no node counted a peer hit: %s" % peer_hits
    for nd in fl.nodes:
        assert nd.verify_store() == [], nd.name


def test_owner_killed_mid_pull(make_fleet, make_proxy, hub, catalog, skopeo, test_dir):
    img = catalog.big
    layer = max(img.layers, key=lambda b: b.size)
    # the upstream sends one whole copy of the layer in about 6 s (whatever
    # RMTEST_BIG_MIB is), so the owner is killed well inside its download
    rate = max(256 << 10, layer.size // 6)
    px = make_proxy(hub.url, bytes_per_sec=rate)
    fl = make_fleet(px.url, 3)
    prefs = fl.owners(fl.nodes[0], digest=layer.digest)
    owner = fl.node(prefs[0])
    survivors = [nd for nd in fl.nodes if nd is not owner]
    # pull through a node outside the preference list if there is one
    via = ([nd for nd in survivors if nd.name not in prefs] or survivors)[0]
    print("\nbig layer %d MiB at %d MiB/s: preference %s, pulling via %s" % (
        layer.size >> 20, rate >> 20, prefs, via.name))

    out = {}

    def pull():
        try:
            out["res"] = skopeo.copy("%s/%s" % (via.host_port, img.ref()),
                                     os.path.join(test_dir, "big"), timeout=240)
        except BaseException as e:  # noqa: BLE001 - asserted below
            out["err"] = e
    before = px.bytes_sent
    t = threading.Thread(target=pull, daemon=True)
    t.start()
    util.wait_until(lambda: px.bytes_sent - before >= layer.size // 4 or "err" in out, 60, 0.02,
                    what="a quarter of the big layer to leave the upstream")
    sent = px.bytes_sent - before
    assert "err" not in out, "pull failed before the kill: %s" % out.get("err")
    assert sent < layer.size, "the upstream had sent the whole layer before the kill"
    fl.kill9(owner)
    t_kill = time.monotonic()
    deaths = fl.watch_state(survivors, owner.name, DEAD_STATES, DEAD_MAX_S)
    t.join(240)
    assert not t.is_alive(), "pull through %s still running 240 s after the kill" % via.name
    assert "err" not in out, "pull through %s failed after the owner %s was killed: %s" % (
        via.name, owner.name, out["err"])
    res = out["res"]
    print("pull finished %.1f s after the kill (%d MiB had left the upstream)" % (
        time.monotonic() - t_kill, sent >> 20))
    assert res.digest == img.digest and res.verify() == []
    assert layer.digest in res.blobs
    # the owner's download was cut: someone had to fetch it (again) upstream
    assert len(px.blob_gets(layer.digest)) >= 2, (
        "one upstream GET of the layer: %s did not stream it from the owner %s" % (
            via.name, owner.name), px.blob_gets(layer.digest))

    seen = deaths()
    print("seconds from the kill until each survivor lists %s dead: %s" % (owner.name, seen))
    late = {k: v for k, v in seen.items() if v is None}
    assert not late, "not marked dead within %.0f s of the kill: %s; views: %s" % (
        DEAD_MAX_S, late, {nd.name: fl.states(nd) for nd in survivors})
    for nd in survivors:
        names = fl.owners(nd, digest=layer.digest)
        assert owner.name not in names, "%s still names the dead %s: %s" % (
            nd.name, owner.name, names)
        assert names and set(names) <= {s.name for s in survivors}, names
    wait_settled(survivors)
    for nd in survivors:
        assert nd.verify_store() == [], nd.name
    assert via.has_blob(layer.digest)


def test_corrupting_peer_is_avoided(make_fleet, make_proxy, hub, catalog, skopeo, test_dir):
    img = catalog.multi
    layer = max(img.layers, key=lambda b: b.size)
    fl = make_fleet(hub, 3, start=False)
    proxies = {}
    for nd in fl.nodes:
        # every node advertises a proxy in front of its peer port; only
        # the owner's will flip bytes, once we know who owns the layer
        proxies[nd.name] = make_proxy(nd.peer_listen_url)
        nd.cluster["peer_url"] = proxies[nd.name].url
        nd.write_config()
    fl.start()
    bad = fl.first_owner(layer.digest)
    proxies[bad.name].corrupt_blobs = True
    pullers = [nd for nd in fl.nodes if nd is not bad]
    print("\nbad peer %s (owns %s); pulling via %s" % (
        bad.name, layer.digest[:19], [nd.name for nd in pullers]))

    for nd in pullers:
        res, failures = skopeo_copy_retrying(skopeo, "%s/%s" % (nd.host_port, img.ref()),
                                             os.path.join(test_dir, "via-" + nd.name),
                                             PULL_ATTEMPTS)
        print("via %s: %d failed run(s) before the good one" % (nd.name, len(failures)))
        assert res is not None, "pull via %s failed %d times:\n%s" % (
            nd.name, PULL_ATTEMPTS, "\n---\n".join(failures))
        assert res.digest == img.digest and res.verify() == []
        assert set(res.blobs) == {b.digest for b in img.own_blobs()}

    assert proxies[bad.name].corrupted > 0, (
        "harness/ownership: no blob went through %s's corrupting peer_url" % bad.name)
    errs = {nd.name: nd.metric_sum("regmesh_peer_errors_total", kind="digest") for nd in pullers}
    assert sum(errs.values()) > 0, "no regmesh_peer_errors_total{kind=\"digest\"}: %s" % errs
    wait_settled(fl.nodes)
    for nd in fl.nodes:
        assert nd.verify_store() == [], "%s stored corrupt blobs" % nd.name
        assert nd.tmp_files() == [], nd.name


def test_tags_resolved_once_per_ttl_for_the_fleet(make_fleet, hub, catalog):
    ttl = 3.0
    img = catalog.nested
    fl = make_fleet(hub, 3, tag_ttl="3s")
    tag_path = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    answers, errors = [], []
    lock = threading.Lock()
    mark = hub.log.mark()
    t_start = time.monotonic()
    stop_at = t_start + 2.5 * ttl
    done_at = [t_start]

    def resolve(node, k):
        for i in range(400):                       # bounded: ~7.5 s at >= 20 ms each
            if time.monotonic() >= stop_at:
                return
            method = "HEAD" if (i + k) % 2 else "GET"
            try:
                r = node.request(method, tag_path, headers={"Accept": images.ACCEPT_ALL},
                                 timeout=10)
            except OSError as e:
                with lock:
                    errors.append("%s %s: %r" % (node.name, method, e))
                return
            with lock:
                done_at[0] = max(done_at[0], time.monotonic())
                answers.append((node.name, method, r.status, r.header("Docker-Content-Digest")))
            time.sleep(0.02)
    threads = [threading.Thread(target=resolve, args=(nd, k), daemon=True)
               for k, nd in enumerate(fl.nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    span = done_at[0] - t_start
    bad = [a for a in answers if a[2] != 200 or a[3] != img.digest]
    assert not bad, bad[:10]
    assert len({a[0] for a in answers}) == 3 and len(answers) >= 30, len(answers)

    entries = hub.log.entries(mark)
    tag_reqs = [e for e in entries if e.path == tag_path and e.method in ("HEAD", "GET")]
    # Only the tag's owner asks the upstream, and only once its answer is
    # older than the TTL: consecutive upstream requests start >= TTL apart.
    # k requests in the span from our first request sent to our last answer
    # received: (k - 1) * TTL <= span, so k <= 1 + floor(span / TTL).
    bound = 1 + int(math.floor(span / ttl))
    print("\n%d answers in %.2f s; %d upstream tag requests (bound %d): %s" % (
        len(answers), span, len(tag_reqs), bound, [e.method for e in tag_reqs]))
    assert len(tag_reqs) <= bound, (
        "the fleet asked the upstream for %s:%s %d times in %.2f s with a %.0f s TTL "
        "(at most %d): %s" % (img.repo, img.tag, len(tag_reqs), span, ttl, bound, tag_reqs))
    # and the TTL does expire: requests kept coming more than one TTL after the first
    assert len(tag_reqs) >= 2, "tag never re-resolved after its TTL: %s" % tag_reqs
    by_digest = [e for e in entries if e.method == "GET" and e.path.endswith(
        "/manifests/" + img.digest)]
    assert len(by_digest) <= 1, "manifest GET by digest %d times" % len(by_digest)


def test_members_cli_and_json(make_fleet, hub, regmesh_binary):
    fl = make_fleet(hub, 3)
    want = {nd.name: nd for nd in fl.nodes}
    for viewer in fl.nodes:
        members = parse_members(viewer.get_json("/cluster/members"))
        assert set(members) == set(want), (viewer.name, sorted(members))
        shares = []
        for name, m in members.items():
            missing = [k for k in MEMBER_FIELDS if field(m, k) is None]
            assert not missing, "member %s in %s's /cluster/members lacks %s: %r" % (
                name, viewer.name, missing, m)
            nd = want[name]
            assert field(m, "state") == ALIVE, m
            assert field(m, "zone") == nd.cluster["zone"], m
            assert int(field(m, "weight")) == 1, m
            assert field(m, "url") == nd.peer_url, m
            assert str(field(m, "addr")) == nd.gossip_addr, m
            shares.append(float(field(m, "share")))
        total = sum(shares)
        scale = 100.0 if total > 2 else 1.0          # a fraction or a percentage
        assert abs(total - scale) <= 0.02 * scale, shares
        assert all(0.2 * scale <= s <= 0.47 * scale for s in shares), shares

    node = fl.nodes[1]
    cp = run_members_cli(regmesh_binary, node.host_port)
    out = cp.stdout.decode("utf-8", "replace")
    assert cp.returncode == 0, (cp.returncode, out, cp.stderr)
    lines = out.splitlines()
    for name, nd in want.items():
        rows = [ln for ln in lines if ln.split() and name in ln.split()]
        assert len(rows) == 1, "`regmesh members` output has %d rows for %s:\n%s" % (
            len(rows), name, out)
        assert ALIVE in rows[0].split(), rows[0]
        assert nd.peer_url in rows[0] and nd.gossip_addr in rows[0], rows[0]
    cp = run_members_cli(regmesh_binary, node.host_port, json_out=True)
    assert cp.returncode == 0, (cp.returncode, cp.stdout, cp.stderr)
    import json
    members = parse_members(json.loads(cp.stdout.decode()))
    assert {n: field(m, "state") for n, m in members.items()} == {n: ALIVE for n in want}


def test_join_through_a_dns_name_that_comes_up_later(make_fleet, hub):
    """A seed given by DNS name (`localhost`, resolved by the node) that is
    not running yet: the node runs alone, keeps resolving and joining in
    the background, and is in the fleet once the seed starts."""
    fl = make_fleet(hub, 2, start=False)
    early, late = fl.nodes
    early.cluster["join"] = ["localhost:%d" % late.gossip_port]
    early.write_config()
    late.cluster["join"] = []
    late.write_config()
    early.start()
    time.sleep(2.0)
    assert early.alive(), "a node whose seed is down must keep running"
    assert fl.states(early) == {early.name: ALIVE}, fl.states(early)
    late.start()
    # join retries back off from 1 s; the node re-resolves every 10 s
    fl.wait_converged(2, timeout=40.0, nodes=[early, late])
    assert "joining through" in early.log_text()


def test_two_nodes_with_one_name_say_so(make_fleet, hub, regmesh_binary):
    """Cloned machines share host names: two nodes with one cluster.name
    never form a fleet, and both log it as an error, count it in
    regmesh_cluster_name_conflicts_total and show it in `regmesh members`."""
    fl = make_fleet(hub, 2, start=False, node_opts={0: {"cluster": {"name": "twin"}},
                                                    1: {"cluster": {"name": "twin"}}})
    for nd in fl.nodes:
        nd.start()

    def both_noticed():
        return all(nd.metric_sum("regmesh_cluster_name_conflicts_total") > 0 and
                   "member name conflict" in nd.log_text() for nd in fl.nodes)
    util.wait_until(both_noticed, 20, interval=0.3, what="both nodes to see the conflict")
    for nd in fl.nodes:
        errs = [l for l in nd.log_text().splitlines() if "member name conflict" in l]
        assert errs and " error " in errs[0] and "twin" in errs[0], errs
        assert len(errs) <= 2, "logged once a minute, not per message: %s" % errs
        cp = util.run([regmesh_binary, "members", "--admin", nd.host_port], timeout=20)
        assert "name conflict" in cp.stdout.decode(), cp.stdout


def test_two_nodes_with_the_default_name_still_form_a_fleet(make_fleet, hub):
    """Without cluster.name both nodes take the host name (this machine's
    for both, as on cloned VMs): one of them adds its address, says so, and
    the two form a fleet of two with distinct names."""
    host = socket.gethostname()
    fl = make_fleet(hub, 2, start=False, node_opts={0: {"cluster": {"name": None}},
                                                    1: {"cluster": {"name": None}}})
    for nd in fl.nodes:
        nd.start()

    def names(nd):
        return sorted(n for n, m in fl.members(nd).items() if field(m, "state") == ALIVE)
    want = sorted([host, "%s-%s" % (host, util.LOCALHOST)])
    util.wait_until(lambda: all(names(nd) == want for nd in fl.nodes), 40, interval=0.5,
                    what="two members named %s" % want)
    renamed = [nd for nd in fl.nodes if "has our default name" in nd.log_text()]
    assert len(renamed) == 1, "exactly one node renames itself"
    assert renamed[0].get_json("/cluster/members")["self"] == want[1]

