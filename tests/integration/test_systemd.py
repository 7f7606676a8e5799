"""
systemd integration (issue 4, point 5).

- Readiness: with NOTIFY_SOCKET naming a datagram socket the test binds (a
  path, or '@' and an abstract name), the daemon sends READY=1 and STATUS=
  once it serves, RELOADING=1 (with MONOTONIC_USEC=) then READY=1 around a
  SIGHUP, STOPPING=1 on SIGTERM and SIGINT and when the store fails, and a
  STATUS= line when start-up fails.  Messages come from the main process,
  as systemd's NotifyAccess=main wants.  A notification socket that is
  missing or unusable is logged once and changes nothing else.
- The unit: filled in with the configured paths, accepted by
  "systemd-analyze verify" (when the tool exists), and hardened; every
  system call the daemon makes (traced with strace) passes its
  SystemCallFilter=.
- "make install DESTDIR=..." puts every file where configure said, and
  nothing else; it never overwrites a configuration; "make uninstall"
  removes what it installed.
"""

import contextlib
import http.client
import os
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import DaemonTestCase, fresh_number, fresh_user, write_file

harness.require_daemon()

MSG_TIMEOUT = 10.0	# seconds to wait for a notification
QUIET = 0.3		# seconds in which no further message may arrive
UNIT = "phoneclaimd.service"


@contextlib.contextmanager
def environment(**changes):
    """Set (or, with None, remove) environment variables for a block."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Message:
    """One notification: its fields in order and the sender's pid."""

    def __init__(self, data, pid):
        self.raw = data.decode("utf-8", "replace")
        self.pid = pid
        self.fields = {}
        for line in self.raw.split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                self.fields[key] = value

    def get(self, key):
        return self.fields.get(key)

    def __repr__(self):
        return "<%r from pid %s>" % (self.raw, self.pid)


class NotifySocket:
    """The datagram socket systemd would listen on, with sender creds."""

    def __init__(self, directory=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if directory is None:
            name = "pcd-notify-" + secrets.token_hex(8)
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(directory, "notify.sock")
            self.sock.bind(self.address)

    def receive(self, timeout=MSG_TIMEOUT):
        """Return the next Message, or None after timeout seconds."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return None
        data, ancdata, _, _ = self.sock.recvmsg(
            65536, socket.CMSG_SPACE(struct.calcsize("iII")))
        pid = None
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and \
                    kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", cdata[:12])[0]
        return Message(data, pid)

    def close(self):
        self.sock.close()


class NotifyCase(DaemonTestCase):

    def notify_socket(self, directory=None):
        n = NotifySocket(directory)
        self.addCleanup(n.close)
        return n

    def start_notified(self, abstract=False, **conf):
        """Start a daemon that notifies a new socket; return both."""
        d = self.own_daemon(start=False, **conf)
        n = self.notify_socket(None if abstract else d.dir)
        self.addCleanup(d.stop)		# before the socket closes
        with environment(NOTIFY_SOCKET=n.address):
            d.start()
        return d, n

    def expect(self, n, d, **fields):
        """Receive one message from d's process with these fields (a
        compiled regex matches a value); return it."""
        msg = n.receive()
        self.assertIsNotNone(msg, "no message with %s; log:\n%s" %
                             (fields, d.tail()))
        for key, want in fields.items():
            got = msg.get(key)
            if isinstance(want, re.Pattern):
                self.assertIsNotNone(got, "%s missing from %r" % (key, msg))
                self.assertRegex(got, want, repr(msg))
            else:
                self.assertEqual(got, want, repr(msg))
        self.assertEqual(msg.pid, d.proc.pid,
                         "sent by another process: %r" % msg)
        return msg

    def expect_quiet(self, n):
        msg = n.receive(QUIET)
        self.assertIsNone(msg, "unexpected message %r" % msg)

    def expect_ready(self, n, d, status=""):
        return self.expect(n, d, READY="1", STATUS=re.compile(
            r"^%slistening on 127\.0\.0\.1:%d \(http\)$" %
            (status, d.port)))

    def hup(self, n, d, status):
        """SIGHUP: RELOADING=1 with a current MONOTONIC_USEC, then
        READY=1 with a STATUS starting with status."""
        before = time.monotonic_ns() // 1000
        d.send_signal(signal.SIGHUP)
        msg = self.expect(n, d, RELOADING="1",
                          MONOTONIC_USEC=re.compile(r"^[0-9]+$"))
        after = time.monotonic_ns() // 1000
        usec = int(msg.get("MONOTONIC_USEC"))
        self.assertTrue(before <= usec <= after,
                        "MONOTONIC_USEC %d not in [%d, %d]" %
                        (usec, before, after))
        self.expect_ready(n, d, status)

    def stop(self, n, d, signum):
        since = d.log_size()
        d.send_signal(signum)
        self.expect(n, d, STOPPING="1", STATUS=re.compile(r"stopping"))
        d.expect_exit()
        self.assertEqual(d.proc.wait(harness.STOP_TIMEOUT), 0,
                         d.log_text(since))


class ReadinessTests(NotifyCase):

    def test_ready_comes_once_the_daemon_serves(self):
        d = self.own_daemon(start=False)
        n = self.notify_socket(d.dir)
        self.addCleanup(d.stop)
        seen = {}

        def on_ready():
            # What systemd's next unit would see the moment READY=1 came.
            msg = seen["msg"] = n.receive(harness.START_TIMEOUT)
            seen["log"] = d.log_text()
            m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+) \(http\)",
                             (msg and msg.get("STATUS")) or "")
            if m:
                seen["port"] = int(m.group(1))
                conn = http.client.HTTPConnection("127.0.0.1",
                                                  seen["port"], timeout=5)
                try:
                    conn.request("GET", "/healthz")
                    seen["healthz"] = conn.getresponse().status
                except (OSError, http.client.HTTPException) as e:
                    seen["healthz"] = repr(e)
                finally:
                    conn.close()

        # The daemon is started from this thread: PR_SET_PDEATHSIG kills
        # it when the thread that forked it ends.
        t = threading.Thread(target=on_ready)
        t.start()
        try:
            with environment(NOTIFY_SOCKET=n.address):
                port = d.start()
        finally:
            t.join(harness.START_TIMEOUT + 10)
        msg = seen.get("msg")
        self.assertIsNotNone(msg, "no READY=1; log:\n" + d.tail())
        self.assertEqual(msg.get("READY"), "1", repr(msg))
        self.assertEqual(seen.get("port"), port, repr(msg))
        self.assertIn("listening on", seen["log"],
                      "READY=1 came before the log said 'listening on'")
        self.assertEqual(seen.get("healthz"), 200)
        self.assertEqual(msg.pid, d.proc.pid)
        self.expect_quiet(n)

    def test_reload_stop_and_service_in_between(self):
        d, n = self.start_notified()
        self.expect_ready(n, d)
        self.hup(n, d, "reloaded; ")
        phone, user = fresh_number(), fresh_user()
        self.assertReserved(d.claim(phone, user), 600)
        self.hup(n, d, "reloaded; ")
        self.expect_quiet(n)
        self.stop(n, d, signal.SIGTERM)

    def test_failed_reload_says_so_and_keeps_serving(self):
        d, n = self.start_notified()
        self.expect_ready(n, d)
        os.chmod(d.api_token_file, 0o644)
        self.hup(n, d, r"reload failed \(see the log\); ")
        self.assertReserved(d.claim(fresh_number(), fresh_user()), 600)
        os.chmod(d.api_token_file, 0o600)
        self.hup(n, d, "reloaded; ")

    def test_sigint_sends_stopping(self):
        d, n = self.start_notified()
        self.expect_ready(n, d)
        self.stop(n, d, signal.SIGINT)

    def test_abstract_socket(self):
        d, n = self.start_notified(abstract=True)
        self.assertTrue(n.address.startswith("@"))
        self.expect_ready(n, d)
        self.hup(n, d, "reloaded; ")
        self.stop(n, d, signal.SIGTERM)

    def test_store_failure_sends_stopping_and_status(self):
        tool = os.environ.get("PANIC_ENV")
        if not tool or not os.access(tool, os.X_OK):
            self.skipTest("PANIC_ENV is not set")
        d, n = self.start_notified()
        self.expect_ready(n, d)
        r = subprocess.run([tool, d.state_dir], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        for _ in range(3):
            try:
                d.claim(fresh_number(), fresh_user())
            except OSError:
                break
        self.expect(n, d, STOPPING="1",
                    STATUS=re.compile(r"the store failed"))
        d.expect_exit()
        self.assertEqual(d.proc.wait(harness.STOP_TIMEOUT), 1, d.tail())

    def test_failed_start_sends_status_and_no_ready(self):
        d = self.new_daemon(start=False)
        n = self.notify_socket(d.dir)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            d.conf["listen"] = "127.0.0.1:%d" % busy.getsockname()[1]
            d.write_conf()
            with environment(NOTIFY_SOCKET=n.address):
                r = d.run("-f", "-c", d.conf_path)
        self.assertEqual(r.returncode, 1, r.stderr)
        msg = n.receive()
        self.assertIsNotNone(msg, r.stderr)
        self.assertNotIn("READY", msg.fields, repr(msg))
        self.assertRegex(msg.get("STATUS") or "",
                         r"^start-up failed: cannot listen on", repr(msg))
        self.expect_quiet(n)

    def test_detached_daemon_notifies_before_its_parent_exits(self):
        d = self.new_daemon(start=False)
        n = self.notify_socket(d.dir)
        with environment(NOTIFY_SOCKET=n.address):
            r = d.run("-c", d.conf_path)
        self.assertEqual(r.returncode, 0, r.stderr)
        msg = n.receive(0)	# sent before the parent was released
        self.assertIsNotNone(msg, "no READY=1 when the parent exited")
        pid = msg.pid
        self.addCleanup(self.kill_quietly, pid)
        self.assertEqual(msg.get("READY"), "1", repr(msg))
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+) \(http\)",
                         msg.get("STATUS") or "")
        self.assertIsNotNone(m, repr(msg))
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)),
                                          timeout=5)
        try:
            conn.request("GET", "/healthz")
            self.assertEqual(conn.getresponse().status, 200)
        finally:
            conn.close()
        os.kill(pid, signal.SIGTERM)
        msg = n.receive()
        self.assertIsNotNone(msg)
        self.assertEqual((msg.get("STOPPING"), msg.pid), ("1", pid))
        deadline = time.monotonic() + harness.STOP_TIMEOUT
        while os.path.exists("/proc/%d" % pid) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(os.path.exists("/proc/%d" % pid),
                         "the detached daemon did not stop")

    @staticmethod
    def kill_quietly(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class BadNotifySocketTests(NotifyCase):
    """A notification socket that cannot be used is no reason to fail."""

    def check_harmless(self, address):
        d = self.own_daemon(start=False)
        with environment(NOTIFY_SOCKET=address):
            d.start()
        self.assertReserved(d.claim(fresh_number(), fresh_user()), 600)
        for _ in range(2):
            since = d.log_size()
            d.send_signal(signal.SIGHUP)
            self.assertIsNotNone(d.wait_for_log(r"reloaded", since), d.tail())
        self.assertReserved(d.claim(fresh_number(), fresh_user()), 600)
        d.expect_exit()
        d.send_signal(signal.SIGTERM)
        self.assertEqual(d.proc.wait(harness.STOP_TIMEOUT), 0, d.tail())
        warnings = re.findall(r"(?m)^.*NOTIFY_SOCKET.*$", d.log_text())
        self.assertEqual(len(warnings), 1, warnings)

    def test_missing_socket(self):
        self.check_harmless(os.path.join(tempfile.gettempdir(),
                                         "pcd-none-" + secrets.token_hex(6)))

    def test_unusable_address(self):
        self.check_harmless("vsock:2:9999")


class WatchdogTests(NotifyCase):
    """systemd's watchdog (issue 22, point 2): with WATCHDOG_USEC (the
    unit's WatchdogSec=), WATCHDOG=1 comes from the event loop each half
    interval, and only while the loop turns and the store answers a read.
    The loop is made to stall by a store that stops answering: panic_env
    -l, in another process, holds the write lock on the record the
    watchdog reads, so the daemon's read waits, and its loop with it."""

    USEC = 400000		# pings every 0.2 s
    SILENCE = 2.0		# seconds without a ping while it stalls

    def start_watched(self, **env):
        d = self.own_daemon(start=False)
        n = self.notify_socket(d.dir)
        self.addCleanup(d.stop)
        with environment(NOTIFY_SOCKET=n.address, **env):
            d.start()
        self.expect_ready(n, d)
        return d, n

    def pings(self, n, d, count):
        """Receive count WATCHDOG=1 messages from d's process."""
        for _ in range(count):
            self.expect(n, d, WATCHDOG="1")

    def drain(self, n):
        while n.receive(0) is not None:
            pass

    def test_pings_while_the_store_answers(self):
        tool = os.environ.get("PANIC_ENV")
        if not tool or not os.access(tool, os.X_OK):
            self.skipTest("PANIC_ENV is not set")
        d, n = self.start_watched(WATCHDOG_USEC=str(self.USEC))
        self.assertIn("systemd watchdog", d.log_text())
        self.pings(n, d, 3)
        # The store stops answering: the pings stop (one may have left
        # as the lock was taken), while the process lives on.
        holder = subprocess.Popen([tool, "-l", d.state_dir],
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.wait, 30)
        self.addCleanup(holder.stdin.close)
        self.addCleanup(holder.stdout.close)
        self.assertEqual(holder.stdout.readline(), "locked\n")
        self.drain(n)
        late = n.receive(self.SILENCE)
        if late is not None:
            self.assertEqual(late.get("WATCHDOG"), "1", repr(late))
            self.assertIsNone(n.receive(self.SILENCE),
                              "WATCHDOG=1 while the store hangs")
        self.assertTrue(d.running())
        # It answers again: so do the pings, and requests.
        holder.stdin.close()
        self.assertEqual(holder.wait(30), 0)
        self.pings(n, d, 2)
        self.assertReserved(d.claim(fresh_number(), fresh_user()), 600)

    def test_no_pings_without_a_watchdog(self):
        d, n = self.start_watched()
        self.assertReserved(d.claim(fresh_number(), fresh_user()), 600)
        self.assertIsNone(n.receive(1.0))
        self.assertNotIn("systemd watchdog", d.log_text())

    def test_no_pings_for_another_process(self):
        d, n = self.start_watched(WATCHDOG_USEC=str(self.USEC),
                                  WATCHDOG_PID="1")
        self.assertIsNone(n.receive(1.0))


# The unit ------------------------------------------------------------------

def builddir():
    path = os.environ.get("TOP_BUILDDIR")
    if not path:
        raise unittest.SkipTest("TOP_BUILDDIR is not set")
    return path


def srcdir():
    path = os.environ.get("TOP_SRCDIR")
    if not path:
        raise unittest.SkipTest("TOP_SRCDIR is not set")
    return path


def unit_settings(text):
    """Return [(key, value)] of a unit file, in order."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.append((key.strip(), value.strip()))
    return out


class UnitTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        path = os.path.join(builddir(), "systemd", UNIT)
        with open(path) as f:
            cls.text = f.read()
        cls.settings = unit_settings(cls.text)

    def values(self, key):
        return [v for k, v in self.settings if k == key]

    def one(self, key):
        values = self.values(key)
        self.assertEqual(len(values), 1, "%s: %s" % (key, values))
        return values[0]

    def test_watchdog(self):
        m = re.fullmatch(r"([0-9]+)s", self.one("WatchdogSec"))
        self.assertIsNotNone(m, self.one("WatchdogSec"))
        self.assertGreaterEqual(int(m.group(1)), 10)

    def test_paths_are_filled_in(self):
        self.assertNotRegex(self.text, r"@[a-z_]+@")
        m = re.fullmatch(r"(/\S+)/phoneclaimd -f -c (/\S+)/phoneclaimd/"
                         r"phoneclaimd\.conf", self.one("ExecStart"))
        self.assertIsNotNone(m, self.one("ExecStart"))
        for cred in self.values("LoadCredential"):
            self.assertTrue(cred.split(":", 1)[1].startswith(
                m.group(2) + "/phoneclaimd/"), cred)

    def test_service_settings(self):
        for key, value in (("Type", "notify"),
                           ("ExecReload", "/bin/kill -HUP $MAINPID"),
                           ("Restart", "on-failure"),
                           ("RestartPreventExitStatus", "2"),
                           ("User", "phoneclaimd"),
                           ("StateDirectory", "phoneclaimd"),
                           ("StateDirectoryMode", "0700"),
                           ("RuntimeDirectory", "phoneclaimd"),
                           ("UMask", "0077"),
                           ("LimitNOFILE", "65536")):
            with self.subTest(key=key):
                self.assertEqual(self.one(key), value)
        self.assertNotIn("yes", self.values("DynamicUser"))

    def test_hardening(self):
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp",
                    "PrivateDevices", "ProtectKernelTunables",
                    "ProtectKernelModules", "ProtectKernelLogs",
                    "ProtectControlGroups", "ProtectClock",
                    "ProtectHostname", "RestrictNamespaces",
                    "RestrictRealtime", "RestrictSUIDSGID",
                    "LockPersonality", "MemoryDenyWriteExecute"):
            with self.subTest(key=key):
                self.assertEqual(self.one(key), "yes")
        self.assertEqual(self.one("ProtectSystem"), "strict")
        self.assertEqual(self.one("CapabilityBoundingSet"), "")
        self.assertEqual(self.values("AmbientCapabilities"), [])
        self.assertEqual(self.one("SystemCallArchitectures"), "native")
        self.assertEqual(self.values("SystemCallFilter"),
                         ["@system-service", "~@privileged @resources"])
        self.assertEqual(self.one("RestrictAddressFamilies").split(),
                         ["AF_UNIX", "AF_INET", "AF_INET6"])

    def test_credentials_match_the_sample_config(self):
        with open(os.path.join(srcdir(), "conf", "phoneclaimd.conf")) as f:
            sample = f.read()
        ids = {c.split(":", 1)[0] for c in self.values("LoadCredential")}
        used = re.findall(r"(?m)^\w+ = /run/credentials/%s/(\S+)$" %
                          re.escape(UNIT), sample)
        self.assertEqual(sorted(used), ["api.token", "log-stream.token"])
        self.assertEqual(sorted(ids), sorted(used))

    def test_runtime_and_state_dirs_match_the_defaults(self):
        with open(os.path.join(srcdir(), "daemon", "conf.c")) as f:
            conf = f.read()
        self.assertRegex(conf, r'"state_dir",[^}]*"/var/lib/%s"' %
                         self.one("StateDirectory"))
        self.assertRegex(conf, r'"status_socket",[^}]*"/run/%s/status\.sock"'
                         % self.one("RuntimeDirectory"))


class AnalyzeTests(unittest.TestCase):
    """systemd-analyze, on a copy of the unit that runs the built daemon."""

    @classmethod
    def setUpClass(cls):
        cls.tool = shutil.which("systemd-analyze")
        if cls.tool is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        cls.dir = tempfile.mkdtemp(prefix="pcd-unit-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        with open(os.path.join(builddir(), "systemd", UNIT)) as f:
            text = f.read()
        text, count = re.subn(r"(?m)^ExecStart=\S+/phoneclaimd ",
                              "ExecStart=%s " % harness.require_daemon(),
                              text)
        if count != 1:
            raise AssertionError("no ExecStart= to rewrite")
        cls.unit = os.path.join(cls.dir, UNIT)
        write_file(cls.unit, text)
        # Documentation= names our pages: let man(1) find them.
        cls.manpath = os.path.join(cls.dir, "man")
        for section in ("5", "8"):
            os.makedirs(os.path.join(cls.manpath, "man" + section))
        for page in ("phoneclaimd.8", "phoneclaimctl.8",
                     "phoneclaimd.conf.5"):
            shutil.copy(os.path.join(srcdir(), "man", page),
                        os.path.join(cls.manpath, "man" + page[-1]))

    def analyze(self, *args, env=None):
        return subprocess.run([self.tool] + list(args), capture_output=True,
                              text=True, timeout=120, env=env,
                              stdin=subprocess.DEVNULL)

    def verify_works_here(self):
        """Return whether verify accepts a trivial unit (some containers
        cannot run it at all)."""
        trivial = os.path.join(self.dir, "pcd-trivial.service")
        write_file(trivial, "[Service]\nType=oneshot\nExecStart=/bin/true\n")
        return self.analyze("verify", "--man=no", trivial).returncode == 0

    def test_verify(self):
        if not self.verify_works_here():
            self.skipTest("systemd-analyze verify does not work here")
        env = dict(os.environ, MANPATH=self.manpath)
        r = self.analyze("verify", self.unit, env=env)
        output = r.stdout + r.stderr
        ours = [line for line in output.splitlines()
                if "phoneclaim" in line]
        self.assertEqual((r.returncode, ours), (0, []), output)

    def test_exposure(self):
        r = self.analyze("security", "--offline=true", self.unit)
        if r.returncode != 0 and "offline" in r.stderr:
            self.skipTest("systemd-analyze security has no --offline")
        m = re.search(r"Overall exposure level for %s: ([0-9.]+)" %
                      re.escape(UNIT), r.stdout)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0, r.stdout)


# The system call filter ----------------------------------------------------

def syscall_group(tool, name, seen=None):
    """Return the system calls of a systemd-analyze group, expanded."""
    seen = set() if seen is None else seen
    r = subprocess.run([tool, "syscall-filter", name], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("systemd-analyze syscall-filter %s: %s" %
                             (name, r.stderr))
    calls = set()
    for line in r.stdout.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                calls |= syscall_group(tool, word, seen)
        else:
            calls.add(word)
    return calls


class SyscallFilterTests(DaemonTestCase):
    """The unit's SystemCallFilter= cannot be tried without systemd, so
    trace the daemon through start, every endpoint, the status socket, a
    reload and a stop, and check each system call against the filter."""

    def filter_sets(self, tool):
        with open(os.path.join(builddir(), "systemd", UNIT)) as f:
            settings = unit_settings(f.read())
        allow, deny = set(), set()
        for key, value in settings:
            if key != "SystemCallFilter":
                continue
            target = deny if value.startswith("~") else allow
            for name in value.lstrip("~").split():
                if name.startswith("@"):
                    target |= syscall_group(tool, name)
                else:
                    target.add(name)
        self.assertTrue(allow and deny, settings)
        return allow, deny

    @staticmethod
    def tracee(tracer):
        """Return the pid of the process strace started."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for tid in os.listdir("/proc/%d/task" % tracer):
                with open("/proc/%d/task/%s/children" % (tracer, tid)) as f:
                    kids = f.read().split()
                if kids:
                    return int(kids[0])
            time.sleep(0.05)
        raise AssertionError("strace started no process")

    def exercise(self, d, pid):
        """Use every part of the daemon once."""
        phone, user = fresh_number(), fresh_user()
        self.assertReserved(d.claim(phone, user), 600)
        self.assertResult(d.claim(phone, user,
                                  "second-factor-authentication"), "owned")
        body = ('[{"log_id":"90020251127000000001","data":{"type":"sdu",'
                '"user_id":"%s","date":"%s"}}]' % (user, harness.auth0_date()))
        reply = d.request("POST", "/v1/log-stream", body.encode(),
                          {"Authorization": d.log_stream_token})
        self.assertEqual(reply.status, 200, str(reply))
        reply = d.request("POST", "/v1/log-stream", b"not json",
                          {"Authorization": d.log_stream_token})
        self.assertEqual(reply.status, 400, str(reply))
        for path in ("/healthz", "/metrics"):
            self.assertEqual(d.request("GET", path).status, 200, path)
        ctl = os.environ.get("PHONECLAIMCTL")
        if ctl and os.access(ctl, os.X_OK):
            sock = d.conf["status_socket"]
            for args in (["status"], ["lookup", phone],
                         ["claim", phone, user], ["release", phone],
                         ["export"], ["conflicts"]):
                r = subprocess.run([ctl, "-s", sock] + args,
                                   capture_output=True, text=True,
                                   timeout=30)
                self.assertEqual(r.returncode, 0, (args, r.stdout,
                                                   r.stderr))
        since = d.log_size()
        os.kill(pid, signal.SIGHUP)
        self.assertIsNotNone(d.wait_for_log(r"reloaded", since), d.tail())
        os.kill(pid, signal.SIGTERM)
        d.expect_exit()
        self.assertEqual(d.proc.wait(harness.STOP_TIMEOUT), 0, d.tail())

    def test_every_system_call_is_allowed(self):
        tool = shutil.which("systemd-analyze")
        strace = shutil.which("strace")
        if tool is None or strace is None:
            self.skipTest("needs strace and systemd-analyze")
        if subprocess.run([strace, "-f", "-qq", "-o", os.devnull, "true"],
                          capture_output=True, timeout=30).returncode != 0:
            self.skipTest("strace cannot trace here (ptrace refused)")
        daemon = harness.require_daemon()
        with open(daemon, "rb") as f:
            if b"__asan_init" in f.read():
                self.skipTest("the sanitizers' runtime makes calls of its "
                              "own (setrlimit)")
        allow, deny = self.filter_sets(tool)
        d = self.own_daemon(start=False)
        trace = d.path("strace.out")
        d.command = lambda *args: [strace, "-f", "-qq", "-o", trace,
                                   daemon] + list(args)
        d.start()
        self.exercise(d, self.tracee(d.proc.pid))
        used = set()
        with open(trace) as f:
            for line in f:
                m = re.match(r"\d+\s+([a-z_0-9]+)\(", line)
                if m:
                    used.add(m.group(1))
        self.assertIn("accept4", used)	# the trace saw the event loop
        self.assertEqual(sorted(used - allow), [],
                         "calls outside SystemCallFilter=@system-service")
        self.assertEqual(sorted(used & deny), [],
                         "calls the unit denies")


# make install ---------------------------------------------------------------

class InstallTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.top = builddir()
        cls.make = shutil.which(os.environ.get("MAKE", "make"))
        if cls.make is None:
            raise unittest.SkipTest("make is not installed")
        cls.env = {k: v for k, v in os.environ.items()
                   if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL",
                                "DESTDIR")}
        r = cls.run_make("-s", "--no-print-directory", "print-installdirs")
        cls.dirs = dict(line.split("=", 1) for line in
                        r.stdout.splitlines() if "=" in line)
        cls.dest = tempfile.mkdtemp(prefix="pcd-install-")
        cls.addClassCleanup(shutil.rmtree, cls.dest, True)

    @classmethod
    def run_make(cls, *args):
        r = subprocess.run([cls.make, "-C", cls.top] + list(args),
                           capture_output=True, text=True, env=cls.env,
                           timeout=600, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise AssertionError("make %s failed:\n%s%s" %
                                 (" ".join(args), r.stdout, r.stderr))
        return r

    def installed(self):
        """Return {path as installed: mode} of the files under DESTDIR."""
        files = {}
        for root, _, names in os.walk(self.dest):
            for name in names:
                path = os.path.join(root, name)
                files["/" + os.path.relpath(path, self.dest)] = \
                    os.stat(path).st_mode & 0o7777
        return files

    def expected(self):
        """Return {installed path: source file or None} that make install
        must produce."""
        d = self.dirs
        src, top = srcdir(), self.top
        want = {
            d["sbindir"] + "/phoneclaimd": None,
            d["sbindir"] + "/phoneclaimctl": None,
            d["sbindir"] + "/phoneclaimd-auth0-setup": None,
            d["man8dir"] + "/phoneclaimd-auth0-setup.8":
                os.path.join(src, "man", "phoneclaimd-auth0-setup.8"),
            d["sysconfdir"] + "/phoneclaimd/phoneclaimd.conf.sample":
                os.path.join(src, "conf", "phoneclaimd.conf"),
            d["man8dir"] + "/phoneclaimd.8":
                os.path.join(src, "man", "phoneclaimd.8"),
            d["man8dir"] + "/phoneclaimctl.8":
                os.path.join(src, "man", "phoneclaimctl.8"),
            d["man5dir"] + "/phoneclaimd.conf.5":
                os.path.join(src, "man", "phoneclaimd.conf.5"),
        }
        for name in ("actions/send-phone-message.js",
                     "actions/custom-phone-provider.js",
                     "prometheus/phoneclaimd.rules.yml",
                     "grafana/phoneclaimd.json"):
            want[d["pkgdatadir"] + "/" + name] = os.path.join(
                src, "conf", name)
        if d.get("systemdsystemunitdir"):
            want[d["systemdsystemunitdir"] + "/" + UNIT] = \
                os.path.join(top, "systemd", UNIT)
        return {os.path.normpath(k): v for k, v in want.items()}

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def test_install_reinstall_and_uninstall(self):
        for key in ("sbindir", "sysconfdir", "man5dir", "man8dir"):
            self.assertTrue(self.dirs.get(key, "").startswith("/"),
                            self.dirs)
        self.run_make("install", "DESTDIR=" + self.dest)
        want = self.expected()
        files = self.installed()
        self.assertEqual(sorted(files), sorted(want))
        for path, source in want.items():
            with self.subTest(path=path):
                mode = files[path]
                if source is None:
                    self.assertEqual(mode & 0o111, 0o111, oct(mode))
                else:
                    self.assertEqual(mode, 0o644, oct(mode))
                    self.assertEqual(self.read(self.dest + path),
                                     self.read(source))

        # The installed programs run, and the unit starts the one installed.
        daemon = self.dest + self.dirs["sbindir"] + "/phoneclaimd"
        r = subprocess.run([daemon, "-V"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.stdout, harness.VERSION_LINE + "\n", r.stderr)
        # The set-up tool looks for the Action files where they went.
        tool = self.dest + self.dirs["sbindir"] + "/phoneclaimd-auth0-setup"
        r = subprocess.run([tool, "--help"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(self.dirs["pkgdatadir"] + "/actions", r.stdout)
        if self.dirs.get("systemdsystemunitdir"):
            unit = self.read(self.dest + self.dirs["systemdsystemunitdir"] +
                             "/" + UNIT).decode()
            self.assertIn("\nExecStart=%s/phoneclaimd -f -c %s/phoneclaimd/"
                          "phoneclaimd.conf\n" % (self.dirs["sbindir"],
                                                  self.dirs["sysconfdir"]),
                          unit)

        # A real configuration is never overwritten.
        conf = os.path.normpath(self.dest + self.dirs["sysconfdir"] +
                                "/phoneclaimd/phoneclaimd.conf")
        write_file(conf, "# the operator's own\n")
        self.run_make("install", "DESTDIR=" + self.dest)
        self.assertEqual(self.read(conf), b"# the operator's own\n")

        # Uninstall removes what install put there, and only that.
        self.run_make("uninstall", "DESTDIR=" + self.dest)
        self.assertEqual(sorted(self.installed()),
                         ["/" + os.path.relpath(conf, self.dest)])


if __name__ == "__main__":
    unittest.main()
