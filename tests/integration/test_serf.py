"""regmesh gossip against real serf agents (Debian's serf 0.9.4).

Our side is tests/gossip/gossip-agent (gossip/env_uv.c + the SWIM core);
the other side is `serf agent` on 127.0.0.1 with its default LAN profile,
so both run memberlist's LAN timings (probe 1 s, suspicion 4 s for small
clusters). Every check runs in plaintext and with a shared AES-GCM key of
16 and 32 bytes; separate tests check that mismatched keys keep the two
apart.

What is asserted:
  * we join serf, and serf joins us (both via `serf join` and a second
    agent's -join with us as the seed); everyone sees everyone alive, with
    tags, on both sides;
  * a SIGKILLed serf agent is marked dead in our status file after the
    suspicion timeout (>= 4 s, the LAN minimum) and within 20 s;
  * SIGINT of our node shows it `left` in serf; SIGKILL/SIGTERM `failed`;
  * two of our nodes and serf together: our nodes reach each other through
    the same sockets, and the death and leave of ours are seen by both;
  * a full push/pull period passes with no complaint in serf's log, no
    dropped message and no failed probe on our side.

Environment:
  GOSSIP_AGENT_BIN  the agent (default <repo>/build/tests/gossip/gossip-agent)
  RMTEST_KEEP=1     keep the logs (serf's debug log, our stderr/stdout)

The module is skipped only if `serf` is not installed
(apt-get install -y serf); a missing agent binary is an error.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from rmtest import util

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERF = shutil.which("serf") or ("/usr/bin/serf" if os.path.exists("/usr/bin/serf") else None)

pytestmark = pytest.mark.skipif(
    SERF is None, reason="serf is not installed here (apt-get install -y serf)")

# Test-only keys (bytes 0x00.. and 0x40..), as in memberlist-wire.md 13.4.
KEY16 = "AAECAwQFBgcICQoLDA0ODw=="
KEY32 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
OTHER_KEY32 = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="

# LAN profile (memberlist-wire.md 9): suspicion timeout for n <= 10 nodes is
# SuspicionMult(4) x ProbeInterval(1 s); nothing can be declared dead sooner.
SUSPICION_MIN_S = 4.0
DETECT_MAX_S = 20.0
LEFT_MAX_S = 15.0
PUSH_PULL_S = 30.0
FAILED_MAX_S = 30.0

DEAD_STATES = ("dead", "failed")


def agent_binary_path():
    return os.environ.get("GOSSIP_AGENT_BIN") or os.path.join(
        ROOT, "build", "tests", "gossip", "gossip-agent")


@pytest.fixture(scope="module")
def agent_bin():
    path = agent_binary_path()
    if not os.access(path, os.X_OK):
        pytest.fail("gossip-agent not found at %s: build it with `cmake --build build "
                    "--target gossip-agent` or set GOSSIP_AGENT_BIN" % path, pytrace=False)
    return path


# ---------------------------------------------------------------------------
# processes

class Serf:
    """A `serf agent` on 127.0.0.1 with its own bind and RPC ports."""

    def __init__(self, d, name, key=None, join=(), tags=None):
        self.name = name
        self.port = util.free_port()
        self.rpc = "127.0.0.1:%d" % util.free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.tags = dict(tags or {})
        argv = [SERF, "agent", "-node=" + name, "-bind=" + self.addr,
                "-rpc-addr=" + self.rpc, "-log-level=debug"]
        if key:
            argv.append("-encrypt=" + key)
        for j in join:
            argv.append("-join=" + j)
        for k, v in sorted(self.tags.items()):
            argv += ["-tag", "%s=%s" % (k, v)]
        self.log_path = os.path.join(d, "serf-%s.log" % name)
        self.proc = util.Proc(argv, self.log_path, name="serf-" + name)

    def start(self):
        self.proc.start()
        util.wait_until(self._ready, 20, 0.1, what="serf %s RPC on %s" % (self.name, self.rpc))
        return self

    def _ready(self):
        if not self.proc.alive():
            raise AssertionError("serf %s exited:\n%s" % (self.name, self.proc.log_tail(30)))
        return self._cli("members", check=False).returncode == 0

    def _cli(self, *args, check=True, timeout=15):
        return util.run([SERF, args[0], "-rpc-addr=" + self.rpc] + list(args[1:]),
                        timeout=timeout, check=check)

    def members(self):
        """name -> {"addr", "status", "tags", "protocol"} as serf sees it."""
        cp = self._cli("members", "-format=json")
        return {m["name"]: m for m in json.loads(cp.stdout.decode())["members"]}

    def join(self, addr, check=True):
        return self._cli("join", addr, check=check)

    def log_lines(self, *needles):
        with open(self.log_path, errors="replace") as f:
            return [ln.strip() for ln in f if any(n in ln for n in needles)]

    def problems(self):
        """serf's complaints: any [ERR] or [WARN] line in its log."""
        return self.log_lines("[ERR]", "[WARN]")


class Agent:
    """Our gossip-agent; its member list comes from its status file."""

    def __init__(self, binary, d, name, key=None, join=(), tags=None):
        self.name = name
        self.port = util.free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.tags = dict(tags or {})
        self.status_path = os.path.join(d, "agent-%s.status" % name)
        argv = [binary, "--name", name, "--bind", self.addr, "--status-file",
                self.status_path, "--log-level", "debug"]
        if key:
            argv += ["--key", key]
        for j in join:
            argv += ["--join", j]
        for k, v in sorted(self.tags.items()):
            argv += ["--tag", "%s=%s" % (k, v)]
        self.log_path = os.path.join(d, "agent-%s.log" % name)
        self.out_path = os.path.join(d, "agent-%s.out" % name)
        self.proc = util.Proc(argv, self.log_path, stdout_path=self.out_path,
                              name="gossip-agent-" + name)

    def start(self):
        self.proc.start()
        util.wait_until(self._ready, 10, 0.05, what="gossip-agent %s up" % self.name)
        return self

    def _ready(self):
        if not self.proc.alive():
            raise AssertionError("gossip-agent %s exited (rc=%s):\n%s" % (
                self.name, self.proc.returncode(), self.proc.log_tail(30)))
        m = self.members().get(self.name)
        return m is not None and m["state"] == "alive"

    def members(self):
        """name -> {"addr", "state", "incarnation", "tags"} from the status file."""
        out = {}
        try:
            with open(self.status_path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            parts = line.split()
            if len(parts) < 4:
                continue
            tags = {}
            if len(parts) > 4 and parts[4] not in ("-", "?"):
                for kv in parts[4].split(","):
                    k, _, v = kv.partition("=")
                    tags[k] = v
            out[parts[0]] = {"addr": parts[1], "state": parts[2],
                             "incarnation": int(parts[3]), "tags": tags}
        return out

    def send(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("gossip-agent %s still running %ss after the signal:\n%s"
                                 % (self.name, timeout, self.proc.log_tail(30)))

    def stats(self):
        """The agent's counters (SIGUSR1 makes it print a "stats k=v ..." line)."""
        before = self.stdout().count("\nstats ")
        self.send(signal.SIGUSR1)
        util.wait_until(lambda: self.stdout().count("\nstats ") > before, 5, 0.05,
                        what="stats line from %s" % self.name)
        line = self.stdout().rsplit("\nstats ", 1)[1].split("\n", 1)[0]
        return {k: int(v) for k, v in (kv.split("=") for kv in line.split())}

    def stdout(self):
        try:
            with open(self.out_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


@pytest.fixture
def cluster(test_dir, agent_bin, request):
    """Factory for serf agents and our agents; all stopped by PID at teardown,
    with their log tails printed when the test failed."""
    started = []

    class Factory:
        def serf(self, name, **kw):
            s = Serf(test_dir, name, **kw)
            started.append(s)
            return s.start()

        def agent(self, name, **kw):
            a = Agent(agent_bin, test_dir, name, **kw)
            started.append(a)
            return a.start()

    yield Factory()
    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    for p in reversed(started):
        p.proc.stop(timeout=5, sig=signal.SIGKILL)
        if failed:
            print("\n--- %s (%s) ---\n%s" % (p.proc.name, p.log_path, util.tail(p.log_path, 60)))
            if isinstance(p, Agent):
                print("--- %s stdout ---\n%s\n--- status ---\n%s" % (
                    p.name, "\n".join(p.stdout().splitlines()[-30:]), p.members()))


@pytest.fixture(params=[None, KEY16, KEY32], ids=["plain", "aes128", "aes256"])
def key(request):
    return request.param


# ---------------------------------------------------------------------------
# waiting on both views

def serf_sees(serf, name, status, tags=None):
    m = serf.members().get(name)
    if m is None or m["status"] != status:
        return False
    return tags is None or m["tags"] == tags


def agent_sees(agent, name, states, tags=None):
    m = agent.members().get(name)
    if m is None or m["state"] not in states:
        return False
    return tags is None or m["tags"] == tags


def wait_serf(serf, name, status, timeout, tags=None):
    return util.wait_until(lambda: serf_sees(serf, name, status, tags), timeout, 0.1,
                           what="serf %s to show %s %s (%s)" % (
                               serf.name, name, status, _serf_view(serf)))


def wait_agent(agent, name, states, timeout, tags=None):
    if isinstance(states, str):
        states = (states,)
    return util.wait_until(lambda: agent_sees(agent, name, states, tags), timeout, 0.05,
                           what="our %s to show %s %s" % (agent.name, name, "/".join(states)))


def _serf_view(serf):
    try:
        return {n: m["status"] for n, m in serf.members().items()}
    except Exception as e:  # noqa: BLE001 - only for the message
        return repr(e)


def assert_clean_stats(st):
    """Nothing serf sent was dropped as undecodable, and no probe failed."""
    bad = {k: st[k] for k in ("dropped_malformed", "dropped_auth", "dropped_oversize",
                              "dropped_crc", "probe_failures", "suspicions",
                              "refutations", "udp_send_errors", "streams_refused",
                              "streams_timed_out") if st[k]}
    assert not bad, "agent counters: %s (all: %s)" % (bad, st)


# ---------------------------------------------------------------------------
# 1. we join serf

def test_we_join_serf(cluster, key):
    a = cluster.serf("serf-a", key=key, tags={"role": "upstream", "zone": "z1"})
    n = cluster.agent("rm-1", key=key, join=[a.addr],
                      tags={"role": "mirror", "url": "http://127.0.0.1:5000"})
    wait_serf(a, "rm-1", "alive", 10, tags=n.tags)
    m = a.members()["rm-1"]
    assert m["addr"] == n.addr
    # serf shows our delegate versions (Vsn[3..5] = 2, 5, 5 like serf's own)
    assert m["protocol"] == {"min": 2, "max": 5, "version": 5}, m
    wait_agent(n, "serf-a", "alive", 10, tags=a.tags)
    assert n.members()["serf-a"]["addr"] == a.addr
    # and it stays so across a few probe rounds (we answer serf's pings)
    time.sleep(3)
    assert serf_sees(a, "rm-1", "alive"), _serf_view(a)
    assert agent_sees(n, "serf-a", ("alive",)), n.members()
    assert a.problems() == []
    assert_clean_stats(n.stats())


# ---------------------------------------------------------------------------
# 2. serf joins us

def test_serf_joins_us(cluster, key):
    n = cluster.agent("rm-1", key=key, tags={"role": "mirror"})
    a = cluster.serf("serf-a", key=key, tags={"role": "upstream"})
    cp = a.join(n.addr)
    assert b"Successfully joined cluster by contacting 1 node" in cp.stdout, cp.stdout
    wait_serf(a, "rm-1", "alive", 10, tags=n.tags)
    wait_agent(n, "serf-a", "alive", 10, tags=a.tags)

    # a second serf agent with our node as its only seed learns serf-a
    # through us (our push/pull reply lists every member)
    b = cluster.serf("serf-b", key=key, join=[n.addr], tags={"role": "edge"})
    for s in (a, b):
        for name in ("rm-1", "serf-a", "serf-b"):
            wait_serf(s, name, "alive", 15)
    wait_agent(n, "serf-b", "alive", 15, tags=b.tags)
    assert b.members()["rm-1"]["tags"] == n.tags
    time.sleep(3)
    for s in (a, b):
        view = _serf_view(s)
        assert view == {"rm-1": "alive", "serf-a": "alive", "serf-b": "alive"}, view
    states = {k: v["state"] for k, v in n.members().items()}
    assert states == {"rm-1": "alive", "serf-a": "alive", "serf-b": "alive"}, states
    assert a.problems() == [] and b.problems() == []
    assert_clean_stats(n.stats())


# ---------------------------------------------------------------------------
# steady state: a full push/pull period with no complaint on either side

@pytest.mark.parametrize("key", [None, KEY32], ids=["plain", "aes256"])
def test_steady_state_push_pull(cluster, key):
    a = cluster.serf("serf-a", key=key, tags={"role": "upstream"})
    n = cluster.agent("rm-1", key=key, join=[a.addr], tags={"role": "mirror"})
    wait_serf(a, "rm-1", "alive", 10)
    t0 = time.monotonic()
    joined = len(a.log_lines("Stream connection from="))
    # our periodic push/pull runs every interval (30 s, the first one
    # staggered below it); one that fell just before `joined` was counted
    # (its log line late) leaves a whole interval to wait, so allow two
    # (seen once: 35 s ran out); meanwhile both sides probe every second
    util.wait_until(lambda: len(a.log_lines("Stream connection from=")) > joined,
                    2 * PUSH_PULL_S + 5, 0.5, what="a periodic push/pull from rm-1 to serf")
    time.sleep(3)
    elapsed = time.monotonic() - t0
    print("\nfirst periodic push/pull after %.1f s" % (elapsed - 3))
    assert serf_sees(a, "rm-1", "alive", tags=n.tags), _serf_view(a)
    m = n.members()
    assert m["serf-a"]["state"] == "alive" and m["serf-a"]["incarnation"] == 1, m
    assert m["rm-1"]["incarnation"] == 1, m   # never had to refute anything
    assert a.problems() == []
    st = n.stats()
    assert_clean_stats(st)
    assert st["probes"] >= int(elapsed) - 2 and st["streams_out"] >= 2, (elapsed, st)
    assert st["udp_recv"] > 0 and st["streams_in"] == 0, st


# ---------------------------------------------------------------------------
# 3. a killed serf agent is detected

def test_killed_serf_marked_dead(cluster, key):
    a = cluster.serf("serf-a", key=key)
    b = cluster.serf("serf-b", key=key, join=[a.addr])
    n = cluster.agent("rm-1", key=key, join=[a.addr])
    for name in ("serf-a", "serf-b"):
        wait_agent(n, name, "alive", 15)
    wait_serf(b, "rm-1", "alive", 15)
    time.sleep(2)  # a few probe rounds in steady state

    a.proc.kill9()
    t0 = time.monotonic()
    suspect_at = dead_at = None
    while time.monotonic() - t0 < DETECT_MAX_S + 5:
        st = n.members().get("serf-a", {}).get("state")
        now = time.monotonic() - t0
        if st == "suspect" and suspect_at is None:
            suspect_at = now
        if st in DEAD_STATES:
            dead_at = now
            break
        time.sleep(0.05)
    print("\nkey=%s: serf-a killed -> suspect after %s s, dead after %s s" % (
        "none" if key is None else "%d-byte" % len(base64.b64decode(key)),
        "%.2f" % suspect_at if suspect_at is not None else "-",
        "%.2f" % dead_at if dead_at is not None else "-"))
    assert dead_at is not None, "serf-a not marked dead within %ss: %s" % (
        DETECT_MAX_S + 5, n.members())
    assert dead_at <= DETECT_MAX_S, "detection took %.2fs" % dead_at
    assert dead_at >= SUSPICION_MIN_S - 0.25, (
        "serf-a declared dead %.2fs after the kill, before the %.0fs suspicion timeout"
        % (dead_at, SUSPICION_MIN_S))
    # the survivors still agree on each other
    assert agent_sees(n, "serf-b", ("alive",)), n.members()
    wait_serf(b, "serf-a", "failed", 15)
    assert serf_sees(b, "rm-1", "alive"), _serf_view(b)


# ---------------------------------------------------------------------------
# mixed: two of ours and a serf agent; one of ours dies, one leaves

def test_mixed_cluster(cluster, key):
    a = cluster.serf("serf-a", key=key)
    n1 = cluster.agent("rm-1", key=key)
    n2 = cluster.agent("rm-2", key=key, join=[n1.addr])
    a.join(n2.addr)   # serf learns rm-1 through rm-2's push/pull reply
    for name in ("rm-1", "rm-2", "serf-a"):
        wait_serf(a, name, "alive", 15)
        wait_agent(n1, name, "alive", 15)
        wait_agent(n2, name, "alive", 15)

    n1.proc.kill9()
    t0 = time.monotonic()
    wait_agent(n2, "rm-1", DEAD_STATES, DETECT_MAX_S)
    dead_after = time.monotonic() - t0
    wait_serf(a, "rm-1", "failed", DETECT_MAX_S)
    print("\nrm-1 killed -> rm-2 marks it dead after %.2f s, serf after %.2f s" % (
        dead_after, time.monotonic() - t0))
    assert dead_after >= SUSPICION_MIN_S - 0.25, dead_after
    assert agent_sees(n2, "serf-a", ("alive",)), n2.members()

    n2.send(signal.SIGINT)
    wait_serf(a, "rm-2", "left", LEFT_MAX_S)
    assert n2.wait_exit(15) == 0, n2.stdout()
    view = _serf_view(a)
    assert view == {"rm-1": "failed", "rm-2": "left", "serf-a": "alive"}, view


# ---------------------------------------------------------------------------
# 4. serf sees our node leave or fail

def test_graceful_leave_shows_left(cluster, key):
    a = cluster.serf("serf-a", key=key)
    n = cluster.agent("rm-1", key=key, join=[a.addr])
    wait_serf(a, "rm-1", "alive", 10)
    time.sleep(1)
    n.send(signal.SIGINT)
    t0 = time.monotonic()
    wait_serf(a, "rm-1", "left", LEFT_MAX_S)
    left_after = time.monotonic() - t0
    rc = n.wait_exit(15)
    print("\nrm-1 SIGINT -> serf shows left after %.2f s; agent exited rc=%s" % (left_after, rc))
    assert rc == 0, n.stdout()
    assert "leaving" in n.stdout() and "stopped" in n.stdout()
    time.sleep(2)  # and it stays left, never failed
    assert serf_sees(a, "rm-1", "left"), _serf_view(a)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_node_shows_failed(cluster, key, sig):
    a = cluster.serf("serf-a", key=key)
    n = cluster.agent("rm-1", key=key, join=[a.addr])
    wait_serf(a, "rm-1", "alive", 10)
    time.sleep(1)
    n.send(sig)
    t0 = time.monotonic()
    rc = n.wait_exit(10)
    wait_serf(a, "rm-1", "failed", FAILED_MAX_S)
    failed_after = time.monotonic() - t0
    print("\nrm-1 %s -> serf shows failed after %.2f s (agent rc=%s)" % (
        sig.name, failed_after, rc))
    assert failed_after >= SUSPICION_MIN_S - 0.25, failed_after
    if sig == signal.SIGTERM:
        assert rc == 0, n.stdout()


# ---------------------------------------------------------------------------
# 5. mismatched keys keep nodes apart

@pytest.mark.parametrize("serf_key,our_key", [
    (KEY32, OTHER_KEY32), (KEY32, None), (None, KEY32), (KEY16, KEY32),
], ids=["other-key", "we-plain", "serf-plain", "aes128-vs-aes256"])
def test_mismatched_key_cannot_join(cluster, serf_key, our_key):
    a = cluster.serf("serf-a", key=serf_key)
    n = cluster.agent("rm-1", key=our_key, join=[a.addr])
    # serf cannot join us either
    cp = a.join(n.addr, check=False)
    assert cp.returncode != 0, cp.stdout
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert set(a.members()) == {"serf-a"}, _serf_view(a)
        assert set(n.members()) == {"rm-1"}, n.members()
        time.sleep(0.25)
    assert n.proc.alive(), n.proc.log_tail(30)
    assert a.proc.alive(), a.proc.log_tail(30)
    # and it is the authentication that kept them apart, on both paths:
    # serf's answers to our join and serf's own join stream to us
    st = n.stats()
    assert st["dropped_auth"] >= 2 and st["streams_in"] >= 1, st
