"""The OCI image (deploy/image/build.sh): built here from Debian packages
with no download, pushed to the test upstream, pulled back through regmesh
itself, and run."""

import json
import os
import shutil
import subprocess

import pytest

from rmtest import regmesh, util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "deploy", "image", "build.sh")


def blob_file(layout, digest):
    return os.path.join(layout, "blobs", *digest.split(":", 1))


def manifest_of(layout, tag="latest"):
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    desc = [m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag][0]
    with open(blob_file(layout, desc["digest"]), "rb") as f:
        return desc["digest"], json.load(f)


def test_image_builds_pushes_and_pulls_back_through_regmesh(
        regmesh_binary, make_registry, make_node, skopeo, test_dir):
    if not shutil.which("umoci"):
        pytest.skip("umoci is not installed here (deploy/deps.sh test installs it)")
    layout = os.path.join(test_dir, "image")
    cp = util.run(["sh", BUILD, regmesh_binary, layout, "latest"], timeout=300)
    assert b"built " in cp.stdout, cp.stdout
    digest, manifest = manifest_of(layout)
    with open(blob_file(layout, manifest["config"]["digest"])) as f:
        config = json.load(f)
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Entrypoint"] == ["/usr/bin/regmesh"]
    assert "/var/cache/regmesh" in config["config"]["Volumes"]
    size = sum(layer["size"] for layer in manifest["layers"])
    assert size < 40 << 20, "the image is %d bytes" % size

    # push to the upstream, pull back through a node as regmesh:latest
    reg = make_registry("image")
    skopeo._run(["copy", "--dest-tls-verify=false", "oci:%s:latest" % layout,
                 "docker://%s/regmesh:latest" % reg.host_port])
    # not Docker Hub, whose one-component names get library/
    n = make_node([regmesh.Upstream("registry.local", reg.url, default=True)])
    mark = n.log_mark()
    pulled = os.path.join(test_dir, "pulled")
    skopeo._run(["copy", "--src-tls-verify=false",
                 "docker://%s/regmesh:latest" % n.host_port, "oci:%s:latest" % pulled])
    got, got_manifest = manifest_of(pulled)
    assert got == digest, "regmesh served another manifest than was pushed"
    paths = [e["path"] for e in n.access(mark)]
    assert "/v2/regmesh/manifests/latest" in paths, paths
    for layer in manifest["layers"]:
        assert "/v2/regmesh/blobs/%s" % layer["digest"] in paths, (layer, paths)
        util.wait_until(lambda d=layer["digest"]: n.has_blob(d), 10, what="the layer committed")

    # what came back runs: its binary, libraries and config are complete
    bundle = os.path.join(test_dir, "bundle")
    util.run(["umoci", "unpack", "--image", "%s:latest" % pulled, bundle], timeout=120)
    rootfs = os.path.join(bundle, "rootfs")
    out = subprocess.run(["chroot", rootfs, "/usr/bin/regmesh", "version"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith(b"regmesh "), out
    out = subprocess.run(["chroot", rootfs, "/usr/bin/regmesh", "check-config",
                          "/etc/regmesh/regmesh.yml"], capture_output=True, timeout=30)
    assert out.returncode == 0, out
    assert os.path.getsize(os.path.join(rootfs, "etc/ssl/certs/ca-certificates.crt")) > 100000
    status = os.listdir(os.path.join(rootfs, "var/lib/dpkg/status.d"))
    assert "libc6" in status and "libcurl4" in status and "ca-certificates" in status, status
    assert not os.path.exists(os.path.join(rootfs, "bin/sh")), "the image has a shell"
