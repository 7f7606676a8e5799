"""
A replication group of phoneclaimd nodes on this machine, for the HA tests.

Every node listens on 127.0.0.1: its HTTP API on one port and its
replication manager on another, both picked free before the start.  The
nodes share the API token, the log-stream token and the hash key, as a
real deployment must.  Short repmgr timeouts keep elections and failure
detection within a second or two.
"""

import json
import os
import secrets
import socket
import sys
import time
import unittest

import harness
from harness import Daemon, write_secret

# Timeouts of the tests' groups, in milliseconds.
HEARTBEAT_MS = 200
ELECTION_MS = 500
ACK_MS = 500

ELECT_TIMEOUT = 30.0	# seconds to wait for a master (ASan is slow)


def wait_holders(d, phone, want, timeout=10.0):
    """Poll node d's lookup of phone until its holders' user ids are want
    (replication may still be on its way); return the last ids seen."""
    deadline = time.monotonic() + timeout
    while True:
        got = [c["user_id"] for c in
               d.ask("lookup " + phone).get("claims", [])]
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def claim_settled(d, phone, user, timeout=20.0):
    """d's answer to a claim, asked again while it is 503 with
    Retry-After, as the Action does: just after an election, a heal or a
    member's restart, a group may answer 503 for a while (the master's
    first commit may miss repl_ack_timeout; a replica may not know its
    master yet), never a wrong answer."""
    deadline = time.monotonic() + timeout
    while True:
        r = d.claim(phone, user)
        if r.status != 503 or time.monotonic() > deadline:
            return r
        time.sleep(float(r.headers.get("Retry-After") or 1))


def free_ports(n):
    """Return n distinct TCP ports free on 127.0.0.1 right now, below the
    kernel's ephemeral range.  A port the kernel hands out for port 0 is
    an ephemeral one, and any outgoing connection on the machine (a
    forward, repmgr, the bench) may take it as its local port before the
    member binds it: a CI run lost a group that way ("Address already in
    use").  Ports below the range are never taken so; one that cannot be
    bound now (listening, or in TIME-WAIT) is skipped."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    first, last = 10000, low - 1
    rng = secrets.SystemRandom()
    ports = []
    for _ in range(1000 * n if last - first >= 100 else 0):
        p = rng.randint(first, last)
        if p in ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        ports.append(p)
        if len(ports) == n:
            return ports
    # No room below the range: the kernel's choice, as before.
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Group:
    """n nodes configured as one replication group (not started)."""

    def __init__(self, n=3, priorities=None, netcut=None, **conf):
        ports = free_ports(2 * n)
        self.api = ["127.0.0.1:%d" % p for p in ports[:n]]
        self.repl = ["127.0.0.1:%d" % p for p in ports[n:]]
        key = secrets.token_bytes(32)
        self.nodes = []
        for i in range(n):
            settings = {"repl_heartbeat": HEARTBEAT_MS,
                        "repl_election_timeout": ELECTION_MS,
                        "repl_ack_timeout": ACK_MS}
            settings.update(conf)
            d = Daemon(listen=self.api[i], repl_local=self.repl[i],
                       **settings)
            if priorities is not None:
                d.conf["repl_priority"] = priorities[i]
            if self.nodes:
                first = self.nodes[0]
                d.api_token = first.api_token
                d.log_stream_token = first.log_stream_token
                write_secret(d.api_token_file, d.api_token + "\n")
                write_secret(d.log_stream_token_file,
                             d.log_stream_token + "\n")
            keyfile = d.path("hash.key")
            fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, key)
            os.close(fd)
            d.conf["hash_key_file"] = keyfile
            if netcut is not None:
                self.wrap_netcut(d, netcut)
            self.nodes.append(d)
        for d in self.nodes:
            self.configure_member(d)

    def configure_member(self, d):
        """Write d's configuration as a member: a repl_peer line for every
        other node."""
        i = self.nodes.index(d)
        d.write_conf(d.conf_lines() + [
            "repl_peer = %s %s" % (self.repl[j], self.api[j])
            for j in range(len(self.nodes)) if j != i])

    @staticmethod
    def configure_alone(d, extra=()):
        """Write d's configuration as a single daemon (no replication
        keys) with the group's hash key, and the extra lines."""
        lines = [l for l in d.conf_lines()
                 if not l.startswith(("repl_", "hash_key_file"))]
        d.write_conf(lines + ["hash_key_file = " + d.conf["hash_key_file"]] +
                     list(extra))

    @staticmethod
    def wrap_netcut(d, shim):
        """Run d under the netcut shim (tests/tools/netcut.c), reading the
        ports to cut from d.cut_file."""
        d.cut_file = d.path("netcut")
        harness.write_file(d.cut_file, "")
        harness.preload(d, shim, NETCUT_FILE=d.cut_file)

    @staticmethod
    def port(addr):
        return addr.rsplit(":", 1)[1]

    def partition(self, minority):
        """Cut the nodes in minority off from the others (both ways, the
        replication ports and, from the minority, the others' APIs)."""
        inside = [self.nodes.index(d) for d in minority]
        outside = [i for i in range(len(self.nodes)) if i not in inside]
        for i, d in enumerate(self.nodes):
            if i in inside:
                ports = [self.port(self.repl[j]) for j in outside] + \
                    [self.port(self.api[j]) for j in outside] + \
                    [self.port(self.repl[i])]
            else:
                ports = [self.port(self.repl[j]) for j in inside]
            harness.write_file(d.cut_file, " ".join(ports) + "\n")

    def heal(self):
        for d in self.nodes:
            harness.write_file(d.cut_file, "")

    def start(self, nodes=None):
        for d in nodes if nodes is not None else self.nodes:
            d.start()

    def stop(self):
        for d in self.nodes:
            if d.running():
                d.stop()

    def status(self, d):
        """The node's status, or None if it cannot be asked."""
        try:
            return d.ask("status", timeout=5.0)
        except (OSError, AssertionError, ValueError):
            return None

    def roles(self, nodes=None):
        """Each running node's replication member of status (or None)."""
        out = []
        for d in nodes if nodes is not None else self.nodes:
            s = self.status(d) if d.running() else None
            out.append(s.get("replication") if s else None)
        return out

    def wait_master(self, nodes=None, timeout=ELECT_TIMEOUT, exclude=None):
        """Wait until exactly one of nodes is master with its store open and
        every other running one of them is a ready replica naming it;
        return the master's Daemon."""
        nodes = [d for d in (nodes if nodes is not None else self.nodes)
                 if d.running()]
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.roles(nodes)
            masters = [d for d, r in zip(nodes, last)
                       if r and r.get("role") == "master" and r.get("ready")]
            if len(masters) == 1 and masters[0] is not exclude:
                m = masters[0]
                addr = self.repl[self.nodes.index(m)]
                if all(r and (d is m or (r.get("role") == "replica" and
                                         r.get("ready") and
                                         r.get("master") == addr))
                       for d, r in zip(nodes, last)):
                    return m
            time.sleep(0.1)
        raise AssertionError("no single master within %.0f s: %s" %
                             (timeout, json.dumps(last)))

    def replicas(self, master):
        return [d for d in self.nodes if d is not master and d.running()]


class GroupTestCase(unittest.TestCase):
    """A fresh three-node group per test; logs printed if it fails."""

    def make_group(self):
        return Group(3, pending_ttl=3600)

    def setUp(self):
        self.group = self.make_group()
        self.addCleanup(self.finish_group)
        self.group.start()
        self.master = self.group.wait_master()

    def run(self, result=None):
        self._before = None
        if result is not None:
            self._before = len(result.failures) + len(result.errors)
            self._result = result
        return super().run(result)

    def finish_group(self):
        self.group.stop()
        failed = self._before is None or \
            len(self._result.failures) + len(self._result.errors) > \
            self._before
        problems = []
        for d in self.group.nodes:
            d.check_log()
            problems += [p for p in d.problems if "exited" not in p]
        for d in self.group.nodes:
            if failed or problems:
                print("---- %s\n%s" % (d.dir, d.tail(40)), file=sys.stderr)
            else:
                d.remove()
        self.assertEqual(problems, [])
