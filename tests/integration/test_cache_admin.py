"""`regmesh cache ls|stat|rm|pin|unpin|verify|warm` against a running node
and a real upstream: what an operator does to see and steer the cache."""

import json
import os

from rmtest import regmesh, util
from rmtest.checks import pull_via_http, stream_get


def cache(n, *args, check=True, timeout=120):
    cp = util.run([n.binary, "cache"] + list(args) + ["--config", n.config_path],
                  timeout=timeout, check=False, env=n.env)
    out = cp.stdout.decode(errors="replace")
    err = cp.stderr.decode(errors="replace")
    if check:
        assert cp.returncode == 0, "cache %s: rc %d\n%s\n%s" % (args, cp.returncode, out, err)
    return cp.returncode, out, err


def committed(n, blobs):
    """The commit (fsync, rename) may land just after the last byte went out."""
    util.wait_until(lambda: all(n.has_blob(b.digest) for b in blobs), 10,
                    what="the blobs committed")


def ls(n):
    _, out, _ = cache(n, "ls", "--json")
    return json.loads(out)


def test_warm_all_platforms_then_upstream_down(make_registry, make_node, catalog):
    """warm --all-platforms fetches every platform's manifest and blobs
    through the node; with the upstream stopped, every platform still
    pulls, byte for byte, and ls shows the image whole."""
    img = catalog.alpine
    reg = make_registry("warm", [img])
    n = make_node([regmesh.Upstream("docker.io", reg.url, default=True, tag_ttl="1h")])
    rc, out, _ = cache(n, "warm", "alpine:3.19", "--all-platforms")
    assert "warmed alpine:3.19: 3 manifests, %d blobs" % len(img.all_blobs()) in out, out
    committed(n, img.all_blobs())
    doc = ls(n)
    mine = [i for i in doc["images"] if i["ref"] == "docker.io/library/alpine:3.19"]
    assert mine, doc["images"]
    assert mine[0]["digest"] == img.digest
    assert mine[0]["missing"] == 0
    assert mine[0]["blobs"] == len(img.all_blobs()) + len(img.all_manifests())
    assert mine[0]["size"] == sum(b.size for b in img.all_blobs()) + sum(
        len(m.manifest) for m in img.all_manifests())

    reg.stop()
    fetched = pull_via_http(n.url, img)  # every platform, exact bytes
    assert len(fetched) == len(img.all_manifests()) + len(img.all_blobs())


def test_warm_default_platform_only(make_registry, make_node, catalog):
    img = catalog.index
    reg = make_registry("warmone", [img])
    n = make_node([regmesh.Upstream("docker.io", reg.url, default=True)])
    cache(n, "warm", "multi/arch:v1", "--platform", "linux/arm64/v8")
    arm, amd = img.child("arm64"), img.child("amd64")
    committed(n, arm.own_blobs())
    assert not any(n.has_blob(b.digest) for b in amd.layers)
    rc, _, err = cache(n, "warm", "multi/arch:v1", "--platform", "windows/amd64", check=False)
    assert rc != 0 and "no manifest for windows/amd64" in err, err
    rc, _, err = cache(n, "warm", "no/such:v1", check=False)
    assert rc != 0 and "no/such" in err, err


def test_rm_refetches_and_keeps_shared_blobs(make_registry, make_proxy, make_node, catalog):
    img, other = catalog.multi, catalog.nested
    reg = make_registry("rm", [img, other])
    px = make_proxy(reg.url)
    n = make_node([regmesh.Upstream("docker.io", px.url, default=True)])
    cache(n, "warm", img.ref(), other.ref())
    committed(n, img.own_blobs() + other.own_blobs())
    before = len(px.requests)
    # a blob by digest
    layer = img.layers[0]
    _, out, _ = cache(n, "rm", layer.digest)
    assert "removed 1 blobs" in out, out
    assert not n.has_blob(layer.digest)
    # an image: its tag and its blobs go, the other image's stay
    _, out, _ = cache(n, "rm", img.ref(), "--json")
    doc = json.loads(out)
    assert doc["ref"] == "docker.io/%s" % img.ref()
    gone = set(doc["removed"])
    assert img.digest in gone and img.config.digest in gone, doc
    assert not any(n.has_blob(b.digest) for b in img.own_blobs())
    assert all(n.has_blob(b.digest) for b in other.own_blobs())
    refs = [i["ref"] for i in ls(n)["images"]]
    assert "docker.io/" + img.ref() not in refs and "docker.io/" + other.ref() in refs, refs
    rc, _, err = cache(n, "rm", img.ref(), check=False)
    assert rc == 1 and "not in the cache" in err, err
    # the next pull goes upstream again and gets the same bytes
    pull_via_http(n.url, img)
    got = [p for (m, p, s) in px.requests[before:] if "/blobs/" in p and m == "GET"]
    assert any(layer.digest in p for p in got), got
    committed(n, img.own_blobs())


def test_pin_survives_eviction_and_restart(make_registry, make_node, catalog):
    a, b = catalog.evict("a"), catalog.evict("b")
    reg = make_registry("pin", [a, b])
    # room for about one of the 4 MiB images
    n = make_node([regmesh.Upstream("docker.io", reg.url, default=True)], max_size="6MiB")
    cache(n, "warm", a.ref())
    committed(n, a.own_blobs())
    _, out, _ = cache(n, "pin", a.ref())
    assert "pinned docker.io/%s" % a.ref() in out, out
    rc, _, err = cache(n, "rm", a.ref(), check=False)
    assert rc == 1 and "pinned" in err, err
    rc, _, err = cache(n, "rm", a.layers[0].digest, check=False)
    assert rc == 1 and "pinned" in err, err
    cache(n, "warm", b.ref())
    assert all(n.has_blob(x.digest) for x in a.own_blobs()), "a pinned image was evicted"
    n.restart()
    doc = ls(n)
    assert [i["pinned"] for i in doc["images"] if i["ref"] == "docker.io/" + a.ref()] == [True]
    assert any(p["name"] == "docker.io/" + a.ref() for p in doc["pins"])
    _, out, _ = cache(n, "stat", "--json")
    st = json.loads(out)
    assert st["pins"] == 1 and st["pinned_bytes"] >= a.layers[0].size, st
    # unpinned, it is an ordinary LRU entry again: the next image evicts it
    _, out, _ = cache(n, "unpin", a.ref())
    assert "unpinned" in out
    cache(n, "warm", b.ref())
    st = json.loads(cache(n, "stat", "--json")[1])
    assert st["pins"] == 0 and st["bytes"] <= 6 << 20, st
    assert not n.has_blob(a.layers[0].digest)


def test_verify_quarantines_a_corrupted_blob(make_registry, make_node, catalog):
    img = catalog.multi
    reg = make_registry("verify", [img])
    n = make_node([regmesh.Upstream("docker.io", reg.url, default=True)])
    cache(n, "warm", img.ref())
    committed(n, img.own_blobs())
    rc, out, _ = cache(n, "verify")
    assert rc == 0 and "0 quarantined" in out, out
    layer = img.layers[1]
    path = n.blob_path(layer.digest)
    with open(path, "r+b") as f:  # one byte flipped behind the node's back
        f.seek(layer.size // 2)
        c = f.read(1)
        f.seek(layer.size // 2)
        f.write(bytes([c[0] ^ 0xFF]))
    rc, out, _ = cache(n, "verify", check=False)
    assert rc == 3, out
    assert "quarantined %s" % layer.digest in out, out
    assert not n.has_blob(layer.digest)
    q = os.listdir(os.path.join(n.data_dir, "quarantine"))
    assert any(layer.digest.split(":")[1] in f for f in q), q
    assert n.metric_sum("regmesh_cache_corrupt_blobs_total") == 1
    st = json.loads(cache(n, "stat", "--json")[1])
    assert st["quarantined"] == 1
    # the next pull fetches it again, right
    st, digest, size = stream_get(n.url, "/v2/%s/blobs/%s" % (img.repo, layer.digest))
    assert (st, digest, size) == (200, layer.digest, layer.size)
    assert n.verify_store() == []
