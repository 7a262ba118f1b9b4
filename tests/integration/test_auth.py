"""Upstreams that need credentials: token auth (JWT realm) and htpasswd."""

import os

from rmtest import images, regmesh, util
from rmtest.checks import (BASIC_HOST, TEST_PASSWORD, TEST_USER, TOKEN_HOST, hub_upstream,
                           pull_via_http)


def _auth_node(make_node, hub, token_registry, basic_registry, with_creds=True,
               password=TEST_PASSWORD):
    kw = {"username": TEST_USER, "password": password} if with_creds else {}
    return make_node([
        hub_upstream(hub),
        regmesh.Upstream(TOKEN_HOST, token_registry.url, **kw),
        regmesh.Upstream(BASIC_HOST, basic_registry.url, **kw),
    ])


def test_pull_through_token_upstream(make_node, hub, token_registry, basic_registry,
                                     token_server, catalog, skopeo, test_dir):
    node = _auth_node(make_node, hub, token_registry, basic_registry)
    img = catalog.private
    mark_ts, mark_up = token_server.mark(), token_registry.log.mark()
    res = skopeo.copy("%s/%s/%s" % (node.host_port, TOKEN_HOST, img.ref()),
                      os.path.join(test_dir, "tok"))
    assert res.digest == img.digest and res.verify() == []
    assert set(res.blobs) == {b.digest for b in img.own_blobs()}
    reqs = token_server.since(mark_ts)
    assert any(q["status"] == 200 and q["account"] == TEST_USER
               and any(s.startswith("repository:private/app:") and "pull" in s
                       for s in q["scopes"]) for q in reqs), \
        "regmesh did not get a token for %s with its credentials: %r" % (TEST_USER, reqs)
    for b in img.own_blobs():
        assert len(token_registry.log.blob_gets(b.digest, mark_up, status=200)) == 1
    # ?ns= reaches the same upstream, now warm
    mark_up = token_registry.log.mark()
    pull_via_http(node.url, img, query="ns=" + TOKEN_HOST)
    assert token_registry.log.all_blob_gets(mark_up) == []


def test_pull_through_htpasswd_upstream(make_node, hub, token_registry, basic_registry,
                                        catalog, skopeo, test_dir):
    node = _auth_node(make_node, hub, token_registry, basic_registry)
    img = catalog.private
    mark = basic_registry.log.mark()
    pull_via_http(node.url, img, query="ns=" + BASIC_HOST)
    # htpasswd answers 401 to anything without valid credentials: a 200 for
    # each blob proves regmesh authenticated
    for b in img.own_blobs():
        assert len(basic_registry.log.blob_gets(b.digest, mark, status=200)) == 1
    res = skopeo.copy("%s/%s/%s" % (node.host_port, BASIC_HOST, img.ref()),
                      os.path.join(test_dir, "basic"))
    assert res.digest == img.digest and res.verify() == []


def _assert_clean_error(r):
    assert r.status in (401, 403, 502), "want 401/403/502, got %r" % r
    assert r.header("Content-Type", "").split(";")[0].strip() == "application/json", r
    assert r.json().get("errors"), r


def test_without_credentials_fails_cleanly(make_node, hub, token_registry, basic_registry,
                                           catalog):
    node = _auth_node(make_node, hub, token_registry, basic_registry, with_creds=False)
    img = catalog.private
    for host in (BASIC_HOST, TOKEN_HOST):
        r = node.request("GET", "/v2/%s/%s/manifests/%s" % (host, img.repo, img.tag),
                         headers={"Accept": images.ACCEPT_ALL}, timeout=60)
        _assert_clean_error(r)
        r = node.request("GET", "/v2/%s/blobs/%s?ns=%s" % (img.repo, img.layers[0].digest, host),
                         timeout=60)
        _assert_clean_error(r)
        assert not node.has_blob(img.layers[0].digest)
    assert node.alive()
    assert node.request("GET", "/healthz").status == 200
    # the default upstream is unaffected
    pull_via_http(node.url, catalog.nested)


def test_wrong_password_fails_cleanly(make_node, hub, token_registry, basic_registry, catalog):
    node = _auth_node(make_node, hub, token_registry, basic_registry, password="wrong-pw")
    img = catalog.private
    for host in (BASIC_HOST, TOKEN_HOST):
        r = node.request("GET", "/v2/%s/%s/manifests/%s" % (host, img.repo, img.tag),
                         headers={"Accept": images.ACCEPT_ALL}, timeout=60)
        _assert_clean_error(r)
    assert node.alive() and util.request(node.url, "GET", "/healthz").status == 200
