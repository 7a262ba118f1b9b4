"""The real registry clients, each run privately: skopeo, containerd + ctr,
dockerd, podman. Nothing touches the machine's own sockets, configs or
/var/lib/containers; nothing may leave 127.0.0.1."""

import json
import os
import re
import shutil
import tempfile
import time

from . import util

SKOPEO = shutil.which("skopeo")
CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
DOCKERD = shutil.which("dockerd")
PODMAN = shutil.which("podman")
UNSHARE = shutil.which("unshare")
NSENTER = shutil.which("nsenter")


def missing(*tools):
    """Names of the given binaries that are absent here."""
    table = {"skopeo": SKOPEO, "containerd": CONTAINERD, "ctr": CTR,
             "dockerd": DOCKERD, "podman": PODMAN, "unshare": UNSHARE,
             "nsenter": NSENTER}
    return [t for t in tools if not table.get(t)]


def no_egress_env(base=None):
    """Environment whose proxies point where nothing listens: Go clients
    never proxy loopback addresses, so 127.0.0.1 still works while any
    fallback to a public registry dies at once instead of leaving."""
    env = dict(base or {})
    env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    dead = "http://" + util.dead_address()
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[k] = dead
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return env


def private_mounts_argv(argv, scratch, dirs=("/var/lib",)):
    """Run argv in a private mount namespace where each of `dirs` is an
    overlay whose upper dir lies in `scratch`: whatever the program writes
    there (podman/skopeo as root write /var/lib/containers/cache, which no
    flag moves; dockerd always creates /run/docker/plugins) disappears with
    the namespace. unshare and sh exec, so the PID stays the program's."""
    mounts = []
    args = []
    for i, d in enumerate(dirs):
        upper = os.path.join(scratch, "ovl%d-upper" % i)
        work = os.path.join(scratch, "ovl%d-work" % i)
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        n = 3 * i
        mounts.append('mount -t overlay overlay -o lowerdir="${%d}",upperdir="${%d}",'
                      'workdir="${%d}" "${%d}"' % (n + 1, n + 2, n + 3, n + 1))
        args += [d, upper, work]
    script = " && ".join(mounts + ['shift %d' % len(args), 'exec "$@"'])
    return [UNSHARE, "--mount", "--propagation", "private", "sh", "-c", script,
            "sh"] + args + list(argv)


def private_varlib_argv(argv, scratch):
    return private_mounts_argv(argv, scratch, ("/var/lib",))


# ---------------------------------------------------------------------------
# skopeo

class CopyResult:
    """A `dir:` copy: the top manifest bytes, its digest, and every file
    named by a digest hex (blobs and, with --all, instance manifests)."""

    def __init__(self, path):
        self.path = path
        with open(os.path.join(path, "manifest.json"), "rb") as f:
            self.manifest = f.read()
        self.digest = util.sha256_bytes(self.manifest)
        self.blobs = {}
        self.manifests = {}
        for fn in os.listdir(path):
            full = os.path.join(path, fn)
            m = re.fullmatch(r"([0-9a-f]{64})(\.manifest\.json)?", fn)
            if not m:
                continue
            digest = "sha256:" + m.group(1)
            if m.group(2):
                self.manifests[digest] = full
            else:
                self.blobs[digest] = full

    def verify(self):
        """Every blob and instance manifest file hashes to its name."""
        bad = [d for d, p in self.blobs.items() if util.sha256_file(p) != d]
        for d, p in self.manifests.items():
            if util.sha256_file(p) != d:
                bad.append(d)
        return bad

    def summary(self):
        return {"digest": self.digest, "blobs": sorted(self.blobs),
                "manifests": sorted(self.manifests)}


class Skopeo:
    def __init__(self, workdir):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.policy = os.path.join(workdir, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        self.registries_conf = os.path.join(workdir, "registries.conf")
        with open(self.registries_conf, "w") as f:
            f.write('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
        self._n = 0

    def _run(self, args, timeout=300, check=True, env_extra=None):
        self._n += 1
        scratch = tempfile.mkdtemp(prefix="skopeo-%d-" % self._n, dir=self.dir)
        try:
            home = os.path.join(scratch, "home")
            os.makedirs(home)
            env = no_egress_env({"HOME": home, "XDG_RUNTIME_DIR": home,
                                 "CONTAINERS_REGISTRIES_CONF": self.registries_conf})
            env.update(env_extra or {})
            tmp = os.path.join(scratch, "tmp")
            os.makedirs(tmp)
            # skopeo 1.9 reads CONTAINERS_REGISTRIES_CONF for nothing; its
            # (hidden) --registries-conf is what makes the file count
            argv = [SKOPEO, "--policy", self.policy, "--registries-conf", self.registries_conf,
                    "--tmpdir", tmp] + list(args)
            return util.run(private_varlib_argv(argv, scratch), timeout=timeout,
                            env=env, check=check)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def copy(self, src_ref, dest_dir, all_images=False, src_creds=None, timeout=300,
             check=True, tls_verify=False, cert_dir=None, env_extra=None):
        """skopeo copy docker://<src_ref> dir:<dest_dir>. Returns CopyResult
        (or the CompletedProcess if check=False and it failed).
        tls_verify: --src-tls-verify (default false); cert_dir:
        --src-cert-dir (a directory of *.crt CAs, containers-certs.d(5));
        env_extra: environment on top of the no-egress one (HTTPS_PROXY)."""
        if os.path.exists(dest_dir):
            shutil.rmtree(dest_dir)
        os.makedirs(os.path.dirname(dest_dir), exist_ok=True)
        args = ["copy", "--src-tls-verify=%s" % ("true" if tls_verify else "false"),
                "--retry-times", "0"]
        if cert_dir:
            args += ["--src-cert-dir", cert_dir]
        if all_images:
            args.append("--all")
        if src_creds:
            args += ["--src-creds", src_creds]
        args += ["docker://" + src_ref, "dir:" + dest_dir]
        cp = self._run(args, timeout=timeout, check=check, env_extra=env_extra)
        if cp.returncode != 0:
            return cp
        return CopyResult(dest_dir)

    def inspect_raw(self, ref, timeout=120, tls_verify=False, cert_dir=None, check=True):
        args = ["inspect", "--raw", "--tls-verify=%s" % ("true" if tls_verify else "false")]
        if cert_dir:
            args += ["--cert-dir", cert_dir]
        cp = self._run(args + ["docker://" + ref], timeout=timeout, check=check)
        return cp.stdout if check else cp

    def manifest_digest(self, ref):
        return util.sha256_bytes(self.inspect_raw(ref))


# ---------------------------------------------------------------------------
# containerd + ctr

class Containerd:
    """A private containerd: own config, root, state, sockets; CRI off."""

    def __init__(self, workdir):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.root = os.path.join(workdir, "root")
        self.state = os.path.join(workdir, "state")
        # unix socket paths must stay short (108 bytes)
        self.sockdir = tempfile.mkdtemp(prefix="ctrd-")
        self.sock = os.path.join(self.sockdir, "c.sock")
        self.config = os.path.join(workdir, "config.toml")
        self.log_path = os.path.join(workdir, "containerd.log")
        with open(self.config, "w") as f:
            f.write("\n".join([
                "version = 2",
                'root = "%s"' % self.root,
                'state = "%s"' % self.state,
                'disabled_plugins = ["io.containerd.grpc.v1.cri", '
                '"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", '
                '"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]',
                "[grpc]",
                '  address = "%s"' % self.sock,
                "[ttrpc]",
                '  address = "%s.ttrpc"' % self.sock,
                "[debug]",
                '  address = ""',
                '  level = "info"',
                "[metrics]",
                '  address = ""',
                '[plugins."io.containerd.internal.v1.opt"]',
                '  path = "%s"' % os.path.join(workdir, "opt"),
                "",
            ]))
        self.proc = None

    def start(self, timeout=30):
        env = no_egress_env({"HOME": self.dir})
        self.proc = util.Proc([CONTAINERD, "--config", self.config],
                              log_path=self.log_path, env=env, name="containerd").start()

        def up():
            if not self.proc.alive():
                raise AssertionError("containerd exited: " + util.tail(self.log_path))
            return util.unix_socket_open(self.sock)
        util.wait_until(up, timeout, what="containerd socket %s" % self.sock)
        return self

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=15)
            self.proc = None
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def ctr(self, args, namespace, timeout=180, check=True, env_extra=None):
        env = no_egress_env({"HOME": self.dir})
        env.update(env_extra or {})
        return util.run([CTR, "--address", self.sock, "--namespace", namespace] + list(args),
                        timeout=timeout, env=env, check=check)

    def pull(self, ref, hosts_dir, namespace, timeout=180, check=True):
        return self.ctr(["images", "pull", "--hosts-dir", hosts_dir, ref],
                        namespace=namespace, timeout=timeout, check=check)

    def image_digest(self, ref, namespace):
        cp = self.ctr(["images", "ls"], namespace=namespace, timeout=30)
        for line in cp.stdout.decode().splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                for c in cols:
                    if c.startswith("sha256:"):
                        return c
        return None

    def remove_namespace(self, namespace):
        """Drop what a test pulled into its namespace (images, content, snapshots)."""
        cp = self.ctr(["images", "ls", "-q"], namespace=namespace, timeout=30, check=False)
        refs = cp.stdout.decode().split()
        if refs:
            self.ctr(["images", "rm", "--sync"] + refs, namespace=namespace, timeout=60,
                     check=False)
        cp = self.ctr(["content", "ls", "-q"], namespace=namespace, timeout=30, check=False)
        digests = cp.stdout.decode().split()
        if digests:
            self.ctr(["content", "rm"] + digests, namespace=namespace, timeout=60, check=False)
        self.ctr(["namespaces", "rm", namespace], namespace="default", timeout=30,
                 check=False)


def write_hosts_toml(hosts_dir, registry, mirror_url, server=None, ca=None):
    """hosts_dir/<registry>/hosts.toml with `mirror_url` as the only usable
    host; `server` defaults to an address where nothing listens. ca: a CA
    file the host (and an https:// server) is verified against."""
    d = os.path.join(hosts_dir, registry)
    os.makedirs(d, exist_ok=True)
    server = server or "http://" + util.dead_address()
    text = 'server = "%s"\n' % server
    if ca and server.startswith("https://"):
        text += 'ca = "%s"\n' % ca
    text += '\n[host."%s"]\n  capabilities = ["pull", "resolve"]\n' % mirror_url
    if ca:
        text += '  ca = "%s"\n' % ca
    with open(os.path.join(d, "hosts.toml"), "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------
# dockerd

class Dockerd:
    """A private dockerd (vfs, no iptables, no bridge) on a unix socket,
    using a private containerd, with `registry-mirrors`."""

    def __init__(self, workdir, containerd, mirrors, namespace, certs_d=None, ns=None,
                 no_proxy=(), env_extra=None):
        """certs_d: a directory laid out like /etc/docker/certs.d
        (<host:port>/ca.crt, client.cert, client.key) that dockerd sees at
        that path in its own mount namespace, live (a symlink in an overlay
        over /etc/docker; the real /etc is untouched). ns: a netns.Netns to
        run dockerd in (dockerd treats 127.0.0.0/8 as an insecure registry:
        no verification and certs.d unread there). no_proxy: addresses
        dockerd may reach without the dead proxy (Go proxies all but
        loopback). env_extra: environment on top of that (HTTPS_PROXY,
        SSL_CERT_FILE for the proxy mode)."""
        self.dir = workdir
        self.env_extra = dict(env_extra or {})
        self.certs_d = certs_d
        self.ns = ns
        self.no_proxy = list(no_proxy)
        os.makedirs(workdir, exist_ok=True)
        self.sockdir = tempfile.mkdtemp(prefix="dkr-")
        self.sock = os.path.join(self.sockdir, "d.sock")
        self.log_path = os.path.join(workdir, "dockerd.log")
        self.config = os.path.join(workdir, "daemon.json")
        cfg = {
            "storage-driver": "vfs",
            "iptables": False,
            "ip-masq": False,
            "ip-forward": False,
            "bridge": "none",
            "data-root": os.path.join(workdir, "data"),
            "exec-root": os.path.join(self.sockdir, "exec"),
            "pidfile": os.path.join(workdir, "dockerd.pid"),
            "hosts": ["unix://" + self.sock],
            "deprecated-key-path": os.path.join(workdir, "key.json"),
            "containerd": containerd.sock,
            "containerd-namespace": namespace,
            "containerd-plugins-namespace": namespace + "-plugins",
            "registry-mirrors": list(mirrors),
            "log-level": "info",
            "max-concurrent-downloads": 3,
        }
        with open(self.config, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = None

    def start(self, timeout=60):
        env = no_egress_env({"HOME": self.dir})
        if self.no_proxy:
            env["NO_PROXY"] = env["no_proxy"] = ",".join(self.no_proxy)
        env.update(self.env_extra)
        # dockerd creates /run/docker/plugins whatever its exec-root: give it
        # a private /run (and /var/lib, to be safe) in its own mount namespace.
        scratch = os.path.join(self.dir, "ns")
        dirs = ("/run", "/var/lib")
        if self.certs_d:
            # an overlay over /etc/docker (or /etc) whose upper dir already
            # holds certs.d as a symlink to ours: dockerd reads only that
            # fixed path, again at every pull
            top = "/etc/docker" if os.path.isdir("/etc/docker") else "/etc"
            dirs += (top,)
            upper = os.path.join(scratch, "ovl%d-upper" % (len(dirs) - 1))
            dest = os.path.join(upper, "certs.d" if top == "/etc/docker"
                                else os.path.join("docker", "certs.d"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if os.path.lexists(dest):
                os.unlink(dest)
            os.symlink(os.path.abspath(self.certs_d), dest)
        argv = private_mounts_argv([DOCKERD, "--config-file", self.config], scratch, dirs)
        if self.ns is not None:
            # nsenter, not `ip netns exec`: that remounts /sys, and dockerd
            # then finds no cgroup mounts
            argv = [NSENTER, "--net=/run/netns/%s" % self.ns.name] + argv
        self.proc = util.Proc(argv, log_path=self.log_path, env=env, name="dockerd").start()

        def up():
            if not self.proc.alive():
                raise AssertionError("dockerd exited: " + util.tail(self.log_path))
            if not util.unix_socket_open(self.sock):
                return False
            return self.api("GET", "/_ping", timeout=5).status == 200
        util.wait_until(up, timeout, interval=0.2, what="dockerd socket %s" % self.sock)
        return self

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=20)
            self.proc = None
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def api(self, method, path, body=None, timeout=180):
        return util.unix_request(self.sock, method, "/v1.41" + path, body=body,
                                 timeout=timeout)

    def pull(self, image, tag, timeout=240):
        """POST /images/create; returns (ok, list of progress messages)."""
        r = self.api("POST", "/images/create?fromImage=%s&tag=%s" % (image, tag),
                     timeout=timeout)
        msgs = []
        for line in r.body.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line:
                try:
                    msgs.append(json.loads(line))
                except ValueError:
                    msgs.append({"raw": line})
        ok = r.status == 200 and not any("error" in m for m in msgs)
        return ok, msgs

    def inspect(self, ref):
        r = self.api("GET", "/images/%s/json" % ref, timeout=30)
        return r.status, (r.json() if r.status == 200 else r.body)


# ---------------------------------------------------------------------------
# podman

class Podman:
    """podman with private root/runroot/tmpdir, vfs, cgroupfs, file events
    and locks, its own containers.conf and registries.conf; run in a private
    mount namespace so /var/lib/containers is never written."""

    def __init__(self, workdir, registries_conf_text):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.root = os.path.join(workdir, "root")
        # podman refuses a runroot longer than 50 characters
        self.runroot = tempfile.mkdtemp(prefix="pmr-")
        self.tmpdir = os.path.join(workdir, "tmp")
        self.home = os.path.join(workdir, "home")
        for d in (self.root, self.runroot, self.tmpdir, self.home,
                  os.path.join(workdir, "cni"), os.path.join(workdir, "copytmp")):
            os.makedirs(d, exist_ok=True)
        self.containers_conf = os.path.join(workdir, "containers.conf")
        with open(self.containers_conf, "w") as f:
            f.write("\n".join([
                "[engine]",
                'lock_type = "file"',
                'events_logger = "file"',
                'events_logfile_path = "%s"' % os.path.join(workdir, "events.log"),
                'image_copy_tmp_dir = "%s"' % os.path.join(workdir, "copytmp"),
                'tmp_dir = "%s"' % self.tmpdir,
                'cgroup_manager = "cgroupfs"',
                "[network]",
                'network_backend = "cni"',
                'network_config_dir = "%s"' % os.path.join(workdir, "cni"),
                "",
            ]))
        self.registries_conf = os.path.join(workdir, "registries.conf")
        with open(self.registries_conf, "w") as f:
            f.write(registries_conf_text)
        self.policy = os.path.join(workdir, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)

    def run(self, args, timeout=240, check=True, env_extra=None):
        env = no_egress_env({
            "HOME": self.home, "XDG_RUNTIME_DIR": self.home,
            "CONTAINERS_CONF": self.containers_conf,
            "CONTAINERS_REGISTRIES_CONF": self.registries_conf,
            "CONTAINERS_STORAGE_CONF": os.path.join(self.dir, "storage.conf"),
        })
        env.update(env_extra or {})
        if not os.path.exists(env["CONTAINERS_STORAGE_CONF"]):
            with open(env["CONTAINERS_STORAGE_CONF"], "w") as f:
                f.write('[storage]\ndriver = "vfs"\nrunroot = "%s"\ngraphroot = "%s"\n'
                        % (self.runroot, self.root))
        argv = [PODMAN, "--root", self.root, "--runroot", self.runroot,
                "--tmpdir", self.tmpdir, "--storage-driver", "vfs",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file"] + list(args)
        scratch = tempfile.mkdtemp(prefix="podman-ns-", dir=self.dir)
        try:
            return util.run(private_varlib_argv(argv, scratch), timeout=timeout, env=env,
                            check=check)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def pull(self, ref, tls_verify=None, timeout=240, check=True, cert_dir=None,
             env_extra=None):
        """cert_dir: --cert-dir (a directory of *.crt CAs, used for every
        registry and mirror of this pull)."""
        args = ["pull"]
        if tls_verify is not None:
            args.append("--tls-verify=%s" % ("true" if tls_verify else "false"))
        if cert_dir:
            args += ["--cert-dir", cert_dir]
        args += ["--signature-policy", self.policy, ref]
        return self.run(args, timeout=timeout, check=check, env_extra=env_extra)

    def image_digest(self, ref):
        cp = self.run(["image", "inspect", "--format", "{{.Digest}}", ref], timeout=60)
        return cp.stdout.decode().strip()

    def cleanup(self):
        # everything else podman wrote is under self.dir (removed with the
        # test's dir); the runroot lives apart for its short path.
        self.run(["rmi", "-a", "-f"], timeout=60, check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)


def podman_mirror_conf(prefix, location, mirror, insecure=True):
    return "\n".join([
        "unqualified-search-registries = []",
        'short-name-mode = "disabled"',
        "",
        "[[registry]]",
        'prefix = "%s"' % prefix,
        'location = "%s"' % location,
        "",
        "[[registry.mirror]]",
        'location = "%s"' % mirror,
        "insecure = %s" % ("true" if insecure else "false"),
        "",
    ])


def wait_gone(path, timeout=10):
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not os.path.exists(path)
