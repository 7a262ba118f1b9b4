"""The fixtures themselves, checked against the upstream registries directly
(no regmesh): if these pass and a regmesh test fails, regmesh is at fault."""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import time

import pytest

from rmtest import images, regmesh, util
from rmtest.checks import TEST_PASSWORD, TEST_USER, pull_via_http, stream_get


def _all_images(catalog):
    return catalog.hub_images() + [catalog.tool, catalog.private]


def test_images_are_real_and_consistent(catalog):
    """Layers are tar.gz that unpack; diff_ids are the tars' sha256; every
    descriptor matches the blob it names."""
    for img in _all_images(catalog):
        for m in img.all_manifests():
            doc = json.loads(m.manifest)
            assert doc["schemaVersion"] == 2
            assert doc["mediaType"] == m.media_type
            if m.is_index:
                assert [d["digest"] for d in doc["manifests"]] == [c.digest for c in m.children]
                assert {d["platform"]["architecture"] for d in doc["manifests"]} == {"amd64", "arm64"}
                continue
            assert doc["config"]["digest"] == m.config.digest
            assert doc["config"]["size"] == m.config.size
            assert len(doc["layers"]) == len(m.layers) >= 1
            cfg = json.loads(m.config.read())
            assert cfg["os"] == "linux" and cfg["architecture"] in ("amd64", "arm64")
            assert cfg["rootfs"]["diff_ids"] == m.diff_ids
            for desc, blob in zip(doc["layers"], m.layers):
                assert desc["digest"] == blob.digest == util.sha256_file(blob.path)
                assert desc["size"] == blob.size
                if blob.size > 8 << 20:
                    continue   # the big layer: its hash was checked, skip unpacking
                raw = gzip.decompress(blob.read())
                assert "sha256:" + hashlib.sha256(raw).hexdigest() in m.diff_ids
                with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
                    assert any(ti.isfile() for ti in tf.getmembers())
    assert len(catalog.multi.layers) >= 3
    assert catalog.big.layers[0].size >= catalog.big_mib * 1024 * 1024
    assert catalog.alpine.media_type == images.DOCKER_LIST
    assert catalog.index.media_type == images.OCI_INDEX
    assert catalog.nested.media_type == images.OCI_MANIFEST
    assert catalog.multi.media_type == images.DOCKER_MANIFEST


def test_hub_serves_every_pushed_image(hub, catalog):
    for img in catalog.hub_images():
        if img is catalog.big:
            r = util.request(hub.url, "HEAD", "/v2/%s/blobs/%s" % (img.repo, img.layers[0].digest))
            assert r.status == 200 and int(r.header("Content-Length")) == img.layers[0].size
            continue
        pull_via_http(hub.url, img)
        for t in img.tags:
            r = util.request(hub.url, "HEAD", "/v2/%s/manifests/%s" % (img.repo, t),
                             headers={"Accept": images.ACCEPT_ALL})
            assert r.status == 200
            assert r.header("Docker-Content-Digest") == img.digest
            assert r.header("Content-Type") == img.media_type
            assert int(r.header("Content-Length")) == len(img.manifest)


def test_ghcr_serves_only_its_image(ghcr, catalog):
    pull_via_http(ghcr.url, catalog.tool)
    r = util.request(ghcr.url, "GET", "/v2/multi/layers/manifests/v1")
    assert r.status == 404


def test_access_log_counts_gets_and_bytes(hub, catalog):
    blob = catalog.multi.layers[1]
    path = "/v2/%s/blobs/%s" % (catalog.multi.repo, blob.digest)
    mark = hub.log.mark()
    assert util.request(hub.url, "HEAD", path).status == 200
    assert util.request(hub.url, "GET", path).status == 200
    assert util.request(hub.url, "GET", path, headers={"Range": "bytes=0-9"}).status == 206
    entries = hub.log.entries(mark)
    assert [e.method for e in entries] == ["HEAD", "GET", "GET"], entries
    assert len(hub.log.blob_gets(blob.digest, mark, status=200)) == 1
    assert len(hub.log.blob_gets(blob.digest, mark)) == 2
    assert hub.log.get_bytes(mark) == blob.size + 10
    assert hub.log.get_counts(mark) == {path: 2}


def test_big_blob_streams_from_hub(hub, catalog):
    b = catalog.big.layers[0]
    mark = hub.log.mark()
    st, digest, n = stream_get(hub.url, "/v2/big/blob/blobs/" + b.digest)
    assert (st, digest, n) == (200, b.digest, b.size)
    assert len(hub.log.blob_gets(b.digest, mark)) == 1
    assert hub.log.get_bytes(mark) == b.size


def test_upstream_accept_semantics(hub, catalog):
    """Premise of test_api's Accept test: distribution answers 404 for an
    index tag when only the image manifest type is accepted, and the index
    when the index type arrives on a second Accept line."""
    path = "/v2/%s/manifests/%s" % (catalog.index.repo, catalog.index.tag)
    r = util.request(hub.url, "GET", path, headers={"Accept": images.OCI_MANIFEST})
    assert r.status == 404
    for order in ((images.OCI_INDEX, images.OCI_MANIFEST), (images.OCI_MANIFEST, images.OCI_INDEX)):
        r = util.request(hub.url, "GET", path, headers=[("Accept", a) for a in order])
        assert r.status == 200 and r.body == catalog.index.manifest
        assert r.header("Content-Type") == images.OCI_INDEX


def test_upstream_tags_list_is_not_paginated(hub, catalog):
    """distribution 2.8.2 ignores n/last on tags/list: whatever paginates
    through regmesh was paginated by regmesh."""
    r = util.request(hub.url, "GET", "/v2/multi/tags/tags/list?n=2")
    assert r.status == 200
    assert sorted(r.json()["tags"]) == ["t1", "t2", "t3", "t4", "t5"]


def test_token_auth_registry(token_registry, token_server, catalog):
    r = util.request(token_registry.url, "GET", "/v2/%s/manifests/v1" % catalog.private.repo)
    assert r.status == 401
    scheme, params = images.parse_challenge(r.header("WWW-Authenticate"))
    assert scheme == "bearer" and params["realm"] == token_server.realm
    assert params["service"] == token_server.service
    mark = token_server.mark()
    c = images.RegistryClient(token_registry.url, TEST_USER, TEST_PASSWORD)
    r = c.get_manifest(catalog.private.repo, "v1")
    assert r.status == 200 and r.body == catalog.private.manifest
    reqs = token_server.since(mark)
    assert any(q["account"] == TEST_USER and "repository:private/app:pull" in q["scopes"]
               and q["status"] == 200 for q in reqs), reqs
    # anonymous: a token without access, still 401 at the registry
    anon = images.RegistryClient(token_registry.url)
    assert anon.get_manifest(catalog.private.repo, "v1").status == 401
    # wrong password: the token server refuses
    bad = images.RegistryClient(token_registry.url, TEST_USER, "wrong")
    with pytest.raises(AssertionError, match="token request failed"):
        bad.get_manifest(catalog.private.repo, "v1")
    # the OAuth2 POST form works too (containerd-style clients use it)
    body = ("grant_type=password&client_id=rmtest&service=%s&scope=repository:private/app:pull"
            "&username=%s&password=%s" % (token_server.service, TEST_USER, TEST_PASSWORD)).encode()
    r = util.request(token_server.realm.rsplit("/token", 1)[0], "POST", "/token",
                     headers={"Content-Type": "application/x-www-form-urlencoded"}, body=body)
    assert r.status == 200
    tok = r.json()["access_token"]
    r = util.request(token_registry.url, "GET", "/v2/private/app/manifests/v1",
                     headers={"Authorization": "Bearer " + tok, "Accept": images.ACCEPT_ALL})
    assert r.status == 200 and r.body == catalog.private.manifest


def test_htpasswd_registry(basic_registry, catalog):
    r = util.request(basic_registry.url, "GET", "/v2/")
    assert r.status == 401
    scheme, _ = images.parse_challenge(r.header("WWW-Authenticate"))
    assert scheme == "basic"
    c = images.RegistryClient(basic_registry.url, TEST_USER, TEST_PASSWORD)
    r = c.get_manifest(catalog.private.repo, "v1")
    assert r.status == 200 and r.body == catalog.private.manifest
    for b in catalog.private.own_blobs():
        r = c.get_blob(catalog.private.repo, b.digest)
        assert r.status == 200 and util.sha256_bytes(r.body) == b.digest
    bad = images.RegistryClient(basic_registry.url, TEST_USER, "wrong")
    assert bad.get_manifest(catalog.private.repo, "v1").status == 401


def test_corrupting_and_slow_proxy(hub, catalog, make_proxy):
    b = catalog.corrupt.layers[0]
    path = "/v2/%s/blobs/%s" % (catalog.corrupt.repo, b.digest)
    px = make_proxy(hub.url)
    st, digest, n = stream_get(px.url, path)
    assert (st, digest, n) == (200, b.digest, b.size)
    r = util.request(px.url, "GET", "/v2/%s/manifests/v1" % catalog.corrupt.repo,
                     headers={"Accept": images.ACCEPT_ALL})
    assert r.body == catalog.corrupt.manifest
    px.corrupt_blobs = True
    st, digest, n = stream_get(px.url, path)
    assert st == 200 and n == b.size and digest != b.digest
    r = util.request(px.url, "GET", "/v2/%s/manifests/v1" % catalog.corrupt.repo,
                     headers={"Accept": images.ACCEPT_ALL})
    assert r.body == catalog.corrupt.manifest, "manifests must pass untouched"
    px.corrupt_blobs = False
    px.bytes_per_sec = 4 * 1024 * 1024
    t0 = time.monotonic()
    st, digest, n = stream_get(px.url, path)
    took = time.monotonic() - t0
    assert digest == b.digest
    assert took >= 0.8 * b.size / px.bytes_per_sec, took


def test_regmesh_harness_parsers():
    line = ('2026-01-01T00:00:00Z info access id=7f3a remote=127.0.0.1:5555 '
            '"GET /v2/library/alpine/blobs/sha256:abc?ns=docker.io HTTP/1.1" status=200 '
            'bytes=1234 ms=5 src=local')
    rec = regmesh.parse_access_line(line)
    assert rec["method"] == "GET" and rec["path"] == "/v2/library/alpine/blobs/sha256:abc"
    assert rec["query"] == "ns=docker.io"
    assert (rec["status"], rec["bytes"], rec["ms"], rec["src"]) == (200, 1234, 5, "local")
    assert regmesh.parse_access_line("level=info msg=started") is None
    m = regmesh.parse_metrics('# HELP x\nregmesh_hits_total{source="local"} 3\n'
                              'regmesh_hits_total{source="upstream"} 2\nfoo 1.5e3\n')
    assert ("regmesh_hits_total", {"source": "local"}, 3.0) in m
    assert ("foo", {}, 1500.0) in m
    up = regmesh.Upstream("ghcr.io", "http://127.0.0.1:1", listen=True, username="u",
                          password="p")
    n = regmesh.Node("/nonexistent", "/tmp/rmtest-unused-%d" % util.free_port(),
                     [regmesh.Upstream("docker.io", "http://127.0.0.1:2", default=True), up])
    try:
        text = n.config_text()
        assert "listen: 127.0.0.1:%d" % n.port in text
        assert "    listen: 127.0.0.1:%d" % up.port in text
        assert "    password_env: %s" % up.password_env in text
        assert n.env[up.password_env] == "p"
        assert not up.password_env.startswith("REGISTRY_")
    finally:
        shutil.rmtree(n.dir, ignore_errors=True)


def test_skopeo_direct_copies(hub, ghcr, catalog, direct_copies):
    cases = [
        (hub, catalog.multi, False, catalog.multi.digest, catalog.multi.own_blobs()),
        (hub, catalog.nested, False, catalog.nested.digest, catalog.nested.own_blobs()),
        (hub, catalog.index, True, catalog.index.digest, catalog.index.all_blobs()),
        (hub, catalog.alpine, False, catalog.alpine.child("amd64").digest,
         catalog.alpine.child("amd64").own_blobs()),
        (hub, catalog.dotted, False, catalog.dotted.digest, catalog.dotted.own_blobs()),
        (ghcr, catalog.tool, False, catalog.tool.digest, catalog.tool.own_blobs()),
    ]
    for reg, img, all_images, top, blobs in cases:
        res = direct_copies(reg, img.ref(), all_images)
        assert res.verify() == []
        assert res.digest == top, img
        assert set(res.blobs) == {b.digest for b in blobs}, img
        if all_images:
            assert set(res.manifests) == {c.digest for c in img.children}


def test_skopeo_inspect_digest(hub, catalog, skopeo):
    assert skopeo.manifest_digest("%s/%s" % (hub.host_port, catalog.alpine.ref())) == \
        catalog.alpine.digest
    assert skopeo.manifest_digest("%s/%s" % (hub.host_port, catalog.nested.ref())) == \
        catalog.nested.digest


def test_skopeo_direct_with_credentials(token_registry, basic_registry, catalog, skopeo,
                                        test_dir):
    for reg in (token_registry, basic_registry):
        res = skopeo.copy("%s/%s" % (reg.host_port, catalog.private.ref()),
                          os.path.join(test_dir, reg.name),
                          src_creds="%s:%s" % (TEST_USER, TEST_PASSWORD))
        assert res.digest == catalog.private.digest
        assert set(res.blobs) == {b.digest for b in catalog.private.own_blobs()}
        cp = skopeo.copy("%s/%s" % (reg.host_port, catalog.private.ref()),
                         os.path.join(test_dir, reg.name + "-anon"), check=False)
        assert cp.returncode != 0
