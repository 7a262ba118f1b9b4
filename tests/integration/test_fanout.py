"""Beyond the owner (docs/cluster.md, "Beyond the owner"): a hot blob
spreads down a tree of holders instead of queueing at its owner, a second
owner keeps a replica, and keys are handed over when the ring changes.

The tree test runs eight nodes in network namespaces of their own, each on
a veth link shaped with tc tbf both ways (rmtest/netns.py Star), with the
upstream registry behind the router; the others run on 127.0.0.1, where
the point is who sends what, not how fast."""

import os
import threading
import time

from rmtest import netns, util
from rmtest.fleet import make_fleet  # noqa: F401 (fixture)
from rmtest.netns import netns_star  # noqa: F401 (fixture)
from rmtest.checks import stream_get

LINK = "160mbit"   # 20 MiB/s each way per node
FANOUT = 2


def _blob_path(img, blob):
    return "/v2/%s/blobs/%s" % (img.repo, blob.digest)


def _upstream_blob_gets(reg, mark, digest):
    return [e for e in reg.log.gets(mark) if e.path.endswith("/blobs/" + digest)]


def _big(img):
    return max(img.own_blobs(), key=lambda b: b.size)


def test_hot_blob_spreads_as_a_tree(netns_star, make_fleet, make_registry, catalog,
                                    test_dir):
    img = catalog.spread(32)
    blob = _big(img)
    seed = make_registry("spread-seed", [img])
    seed.stop()
    star = netns_star(8, LINK)
    reg = netns.NsRegistry(os.path.join(test_dir, "nsreg"), "spread", star.u,
                           storage=seed.storage).start()
    star.on_cleanup(reg.stop)
    opts = {i: {"ns": star.leaves[i], "host": star.ip(i),
                "upstream_url": reg.url_via(star.router_ip(i))} for i in range(8)}
    fl = make_fleet(reg.url_via(star.router_ip(0)), 8, node_opts=opts,
                    cluster_extra={"fanout": FANOUT, "peer_stall_timeout": "10s"})
    star.on_cleanup(fl.stop_all)
    owner = fl.first_owner(blob.digest)

    mark = reg.log.mark()
    results = {}

    def pull(nd):
        t0 = time.monotonic()
        st, dg, n = nd.ns.stream_get(nd.url, _blob_path(img, blob), timeout=180)
        results[nd.name] = (st, dg, n, time.monotonic() - t0)

    threads = [threading.Thread(target=pull, args=(nd,)) for nd in fl.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    print("\nowner %s; pulls: %s" % (owner.name, {k: "%.1f s" % v[3]
                                                   for k, v in sorted(results.items())}))
    assert len(results) == 8, "pulls that never ended: %s" % (
        {nd.name for nd in fl.nodes} - set(results))
    for name, (st, dg, n, _) in results.items():
        assert (st, dg, n) == (200, blob.digest, blob.size), "pull through %s: %r" % (
            name, results[name])

    gets = _upstream_blob_gets(reg, mark, blob.digest)
    assert len(gets) == 1, "the upstream served the blob %d times" % len(gets)
    uploads = {nd.name: nd.metric_sum("regmesh_peer_uploads_total") for nd in fl.nodes}
    redirects = sum(nd.metric_sum("regmesh_holder_redirects_total") for nd in fl.nodes)
    print("peer uploads per node: %s; redirects to holders: %d" % (uploads, redirects))
    assert max(uploads.values()) <= FANOUT + 1, uploads
    # seven nodes got it from peers: at least five went to a holder
    assert redirects >= 8 - 1 - FANOUT - 1, redirects


def test_second_owner_keeps_a_replica(make_fleet, make_registry, catalog):
    img = catalog.spread(8)
    blob = _big(img)
    reg = make_registry("replica", [img])
    fl = make_fleet(reg, 4, cluster_extra={"replicas": 2})
    names = fl.owners(fl.nodes[0], digest=blob.digest)
    first, second = fl.node(names[0]), fl.node(names[1])
    others = [nd for nd in fl.nodes if nd not in (first, second)]

    mark = reg.log.mark()
    st, dg, n = stream_get(others[0].url, _blob_path(img, blob))
    assert (st, dg) == (200, blob.digest)
    assert len(_upstream_blob_gets(reg, mark, blob.digest)) == 1
    # the second owner fills its copy from the first in the background
    util.wait_until(lambda: second.metric_sum("regmesh_replica_fills_total",
                                              result="done") >= 1,
                    20, what="replica fill on %s" % second.name)
    assert os.path.exists(second.blob_path(blob.digest))

    fl.kill9(first)
    mark = reg.log.mark()
    served_before = second.metric_sum("regmesh_peer_uploads_total")
    st, dg, n = stream_get(others[1].url, _blob_path(img, blob))
    assert (st, dg, n) == (200, blob.digest, blob.size)
    assert _upstream_blob_gets(reg, mark, blob.digest) == [], \
        "with the first owner dead the blob came from the upstream"
    assert second.metric_sum("regmesh_peer_uploads_total") > served_before, \
        "the second owner did not serve it"


def _pull_by_digest(node, img):
    """Manifest and every blob by digest through node."""
    r = node.request("GET", "/v2/%s/manifests/%s" % (img.repo, img.digest),
                     headers={"Accept": img.media_type})
    assert r.status == 200, r
    for b in img.own_blobs():
        st, dg, n = stream_get(node.url, _blob_path(img, b))
        assert (st, dg) == (200, b.digest), "%s through %s" % (b.digest, node.name)


def test_a_joining_node_costs_no_upstream_bytes(make_fleet, make_registry, catalog):
    img = catalog.multi
    reg = make_registry("join", [img])
    # weight 16 of 19: the newcomer takes most keys, so some of this image's
    fl = make_fleet(reg, 4, start=False, node_opts={3: {"cluster": {"weight": 16}}})
    for nd in fl.nodes[:3]:
        nd.start()
    fl.wait_converged(3, nodes=fl.nodes[:3])
    _pull_by_digest(fl.nodes[0], img)
    newcomer = fl.nodes[3]
    newcomer.start()
    fl.wait_converged(4)
    owned = [b.digest for b in img.own_blobs()
             if fl.owners(newcomer, digest=b.digest)[0] == newcomer.name]
    print("\nthe newcomer owns %d of %d blobs" % (len(owned), len(img.own_blobs())))
    assert owned, "harness: the newcomer owns none of the image's blobs"

    mark = reg.log.mark()
    _pull_by_digest(newcomer, img)
    gets = reg.log.gets(mark)
    assert gets == [], "a pull through the new node went upstream: %s" % (
        [e.path for e in gets])
    # and the blobs it now owns stayed with it
    for d in owned:
        assert os.path.exists(newcomer.blob_path(d))


def test_a_leaving_owner_hands_its_holders_over(make_fleet, make_registry, catalog):
    img = catalog.spread(4)
    blob = _big(img)
    reg = make_registry("leave", [img])
    fl = make_fleet(reg, 4, cluster_extra={"replicas": 1})
    doc = fl.nodes[0].get_json("/cluster/owners?digest=" + blob.digest)
    owner, heir = fl.node(doc["owners"][0]), fl.node(doc["heir"])
    holder, late = [nd for nd in fl.nodes if nd not in (owner, heir)]
    st, dg, _ = stream_get(holder.url, _blob_path(img, blob))
    assert (st, dg) == (200, blob.digest)
    # the holder told the owner it has the blob
    util.wait_until(lambda: holder.metric_sum("regmesh_peer_notices_total", kind="held",
                                              result="ok") >= 1, 10, what="held notice")

    owner.stop()          # SIGTERM: a graceful leave
    fl.wait_converged(3, nodes=[heir, holder, late])
    assert heir.metric_sum("regmesh_handover_received_total") >= 1, \
        "the leaving owner told its heir nothing"
    assert fl.owners(late, digest=blob.digest)[0] == heir.name

    mark = reg.log.mark()
    st, dg, n = stream_get(late.url, _blob_path(img, blob))
    assert (st, dg, n) == (200, blob.digest, blob.size)
    assert _upstream_blob_gets(reg, mark, blob.digest) == [], \
        "the heir went upstream though a holder had the blob"


def test_peer_egress_and_upload_limits(make_fleet, make_registry, catalog):
    """peer_egress caps what a node streams to peers; past max_peer_uploads
    a peer is told busy and takes the blob from its next source."""
    img = catalog.spread(8)
    blob = _big(img)
    reg = make_registry("egress", [img])
    rate = 4 << 20
    fl = make_fleet(reg, 3, cluster_extra={"replicas": 1, "fanout": 0,
                                           "max_peer_uploads": 1, "peer_egress": "4MiB"})
    owner = fl.first_owner(blob.digest)
    a, b = [nd for nd in fl.nodes if nd is not owner]
    # the owner caches it first (its own client: no cap)
    st, dg, _ = stream_get(owner.url, _blob_path(img, blob))
    assert (st, dg) == (200, blob.digest)

    res = {}

    def pull(nd):
        t0 = time.monotonic()
        res[nd.name] = stream_get(nd.url, _blob_path(img, blob)) + (time.monotonic() - t0,)

    ta = threading.Thread(target=pull, args=(a,))
    ta.start()
    util.wait_until(lambda: owner.metric_sum("regmesh_peer_uploads_active") >= 1, 10,
                    what="the first peer stream")
    mark = reg.log.mark()
    pull(b)
    ta.join(60)
    for nd in (a, b):
        assert res[nd.name][:3] == (200, blob.digest, blob.size), res
    # a read through the cap: 8 MiB at 4 MiB/s (less one burst of 200 KiB)
    assert res[a.name][3] >= 0.8 * blob.size / rate, res
    assert owner.metric_sum("regmesh_peer_upload_decisions_total", decision="busy") >= 1
    # b, refused by the busy owner, went to the upstream
    assert len(_upstream_blob_gets(reg, mark, blob.digest)) == 1
    print("\nthrough the cap: %.1f s; busy answers: %d" % (
        res[a.name][3], owner.metric_sum("regmesh_peer_upload_decisions_total",
                                          decision="busy")))
