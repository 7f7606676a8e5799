"""
Hot backup and restore (phoneclaimctl backup DIR), and disk use under
sustained writes.

BackupTests loads a store with bench-load (LOADED claims, so that the copy
takes a noticeable moment), starts the daemon on it, and backs it up while
client threads reserve numbers over HTTP.  Every reservation acknowledged
before the backup command was sent must be in the backup once it is
restored into a new state directory (the holder gets "owned", another user
409); claims go on being answered while the backup runs.  Refusals: a
directory that is not empty, a relative path on the socket, a second
backup while one runs, a peer that is neither root nor the daemon's user.

DiskTests writes claims and releases on a fixed set of numbers with small
log files (log_file_size) and a checkpoint every second
(checkpoint_interval): many log files are written, but checkpoints remove
them, so the number of log files and the size of the state directory stop
growing.
"""

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
import unittest

import harness
from harness import DaemonTestCase, Load, fresh_number, \
    fresh_user, check_reservations

CTL = os.environ.get("PHONECLAIMCTL")
BUILDDIR = os.environ.get("TOP_BUILDDIR")
if not CTL or not BUILDDIR:
    print("PHONECLAIMCTL or TOP_BUILDDIR is not set: skipping (run through "
          "make check)", file=sys.stderr)
    sys.exit(77)
BENCH_LOAD = os.path.join(BUILDDIR, "tests", "bench", "bench-load")

LOADED = 200000		# claims written by bench-load before the start
LOAD_TIMEOUT = 240	# seconds bench-load may take on a busy machine
CTL_TIMEOUT = 180	# seconds a backup may take on a busy machine
LOG_FILE_SIZE = 262144	# bytes, for DiskTests
STATE_FILES = {"numbers.db", "numbers_user.db", "numbers_expiry.db",
               "numbers_enrol.db", "conflicts.db", "seen.db", "seen_date.db",
               "watermarks.db", "verify.db", "limits.db", "meta.db",
               "hash.key"}


def ctl(d, *args, cwd=None, preexec_fn=None):
    """Run phoneclaimctl -s socket args; return CompletedProcess."""
    return subprocess.run([CTL, "-s", d.conf["status_socket"]] + list(args),
                          capture_output=True, text=True, errors="replace",
                          timeout=CTL_TIMEOUT, cwd=cwd or d.dir,
                          stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


def ask_raw(d, line):
    """Open a status socket connection and send one line (no answer read)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CTL_TIMEOUT)
    s.connect(d.conf["status_socket"])
    s.sendall((line + "\n").encode())
    return s


def answer(s):
    """Read one answer line from a socket of ask_raw and close it."""
    buf = b""
    try:
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return json.loads(buf.decode())


def log_files(state_dir):
    """The numbers of the log.NNNNNNNNNN files in state_dir, sorted."""
    return sorted(int(n[4:]) for n in os.listdir(state_dir)
                  if n.startswith("log.") and n[4:].isdigit())


def dir_bytes(path):
    """Bytes of the regular files in path."""
    total = 0
    for n in os.listdir(path):
        st = os.lstat(os.path.join(path, n))
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


class BackupTests(DaemonTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not os.access(BENCH_LOAD, os.X_OK):
            raise unittest.SkipTest("%s is not built" % BENCH_LOAD)
        cls.d = cls.new_daemon(start=False)
        key = os.path.join(cls.d.state_dir, "hash.key")
        r = subprocess.run([BENCH_LOAD, cls.d.state_dir, key, str(LOADED)],
                           capture_output=True, text=True,
                           timeout=LOAD_TIMEOUT, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise AssertionError("bench-load failed: " + r.stderr)
        cls.d.start(timeout=60)

    def setUp(self):
        self.d.ensure_running()

    def backup_dir(self, name):
        return os.path.join(self.d.dir, name)

    def test_backup_under_load_restores_every_acknowledged_claim(self):
        d = self.d
        target = self.backup_dir("bk-load")
        load = Load(d, threads=6, timeout=30, timed=True)
        load.start()
        try:
            load.wait_for(100)
            t_cmd = time.monotonic()
            r = ctl(d, "backup", target)
            t_end = time.monotonic()
            load.wait_for(len(load.acked) + 50, timeout=10)
        finally:
            load.finish()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        res = json.loads(r.stdout)
        self.assertEqual(res["result"], "done", res)
        self.assertEqual(sorted(res), ["bytes", "files", "result", "seconds"])
        self.assertEqual(res["files"], len(os.listdir(target)))
        self.assertEqual(res["bytes"], dir_bytes(target))
        self.assertEqual((load.unexpected, load.errors), ([], []))
        # The loop served claims while the backup ran: some were both
        # sent and answered in the second half of it.
        half = t_cmd + (t_end - t_cmd) / 2
        during = [a for a in load.acked if a[2] >= half and a[3] <= t_end]
        self.assertGreater(len(during), 0, "no claim was answered during "
                           "the backup (%.3f s)" % (t_end - t_cmd))
        before = [(p, u) for p, u, _, done in load.acked if done < t_cmd]
        sent_before_end = sum(1 for a in load.acked if a[2] < t_end)
        self.assertGreater(len(before), 0)
        self.check_backup_files(target, d)

        # Restore: a new state directory holding a copy of the backup.
        r2 = self.new_daemon(start=False)
        shutil.rmtree(r2.state_dir)
        shutil.copytree(target, r2.state_dir)
        r2.start(timeout=60)
        status = r2.ask("status")
        total = status["claims"]["active"] + status["claims"]["pending"]
        self.assertGreaterEqual(total, LOADED + len(before))
        self.assertLessEqual(total, LOADED + sent_before_end)
        self.assertEqual(check_reservations(r2, before), [])
        r2.stop()
        self.assertTrue(d.wait_for_log(r"backup to %s: \d+ file\(s\)" %
                                       target, 0))

    def check_backup_files(self, target, d):
        """The backup is private, complete and holds the daemon's key."""
        st = os.stat(target)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
        names = set(os.listdir(target))
        self.assertLessEqual(STATE_FILES, names)
        others = names - STATE_FILES
        self.assertTrue(others and all(n.startswith("log.") for n in others),
                        sorted(names))
        for n in names:
            st = os.lstat(os.path.join(target, n))
            self.assertTrue(stat.S_ISREG(st.st_mode), n)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, n)
        with open(os.path.join(target, "hash.key"), "rb") as a, \
                open(os.path.join(d.state_dir, "hash.key"), "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_relative_directory_is_resolved_by_phoneclaimctl(self):
        d = self.d
        r = ctl(d, "backup", "bk-relative", cwd=d.dir)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(json.loads(r.stdout)["result"], "done")
        self.check_backup_files(self.backup_dir("bk-relative"), d)

    def test_an_empty_directory_is_used(self):
        target = self.backup_dir("bk-empty")
        os.mkdir(target, 0o755)
        r = ctl(self.d, "backup", target)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.check_backup_files(target, self.d)

    def test_non_empty_directory_is_refused(self):
        target = self.backup_dir("bk-full")
        os.mkdir(target, 0o700)
        with open(os.path.join(target, "keep"), "w") as f:
            f.write("mine\n")
        r = ctl(self.d, "backup", target)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        res = json.loads(r.stdout)
        self.assertEqual(res["error"], "backup_failed")
        self.assertIn("not empty", res["cause"])
        self.assertEqual(os.listdir(target), ["keep"])
        # A file in the way is refused too.
        r = ctl(self.d, "backup", os.path.join(target, "keep"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(json.loads(r.stdout)["error"], "backup_failed")

    def test_a_directory_others_control_is_refused(self):
        """Issue 18, point 7: an empty directory owned by another user, or
        one that group or others may write, is refused with the reason;
        nothing lands in it."""
        if os.geteuid() != 0:
            self.skipTest("needs root to give a directory away")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody")
        cases = (("nobody's, 0777", nobody.pw_uid, 0o777, "owned by uid"),
                 ("nobody's, 0700", nobody.pw_uid, 0o700, "owned by uid"),
                 ("root's, 0777", 0, 0o777, "writable by group or others"),
                 ("root's, 0720", 0, 0o720, "writable by group or others"),
                 ("root's, 1777", 0, 0o1777, "writable by group or others"))
        for i, (name, uid, mode, why) in enumerate(cases):
            with self.subTest(target=name):
                target = self.backup_dir("bk-theirs-%d" % i)
                os.mkdir(target)
                os.chown(target, uid, -1)
                os.chmod(target, mode)
                r = ctl(self.d, "backup", target)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                res = json.loads(r.stdout)
                self.assertEqual(res["error"], "backup_failed")
                self.assertIn(why, res["cause"])
                self.assertEqual(os.listdir(target), [])
                st = os.stat(target)
                self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)),
                                 (uid, mode))

    def test_relative_path_on_the_socket_is_invalid(self):
        self.assertEqual(answer(ask_raw(self.d, "backup some/dir")),
                         {"error": "invalid_directory"})
        self.assertEqual(answer(ask_raw(self.d, "backup")),
                         {"error": "missing_argument"})
        self.assertFalse(os.path.exists(os.path.join(self.d.dir, "some")))

    def test_one_backup_at_a_time(self):
        a = self.backup_dir("bk-first")
        b = self.backup_dir("bk-second")
        s1 = ask_raw(self.d, "backup " + a)
        s2 = ask_raw(self.d, "backup " + b)
        answers = [answer(s1), answer(s2)]
        self.assertEqual(sorted(x.get("result", x.get("error"))
                                for x in answers), ["busy", "done"], answers)
        busy = b if answers[1] == {"error": "busy"} else a
        self.assertFalse(os.path.exists(busy))
        # Free again afterwards.
        r = ctl(self.d, "backup", self.backup_dir("bk-third"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_other_users_are_forbidden(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to run phoneclaimctl as nobody")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody")
        os.chmod(self.d.dir, 0o711)
        os.chown(self.d.conf["status_socket"], -1, nobody.pw_gid)

        def drop():
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
        target = "/tmp/pcd-nobody-backup-%d" % os.getpid()
        r = ctl(self.d, "backup", target, cwd="/", preexec_fn=drop)
        if r.returncode == 2:
            self.skipTest("nobody cannot reach the socket: " + r.stderr)
        self.assertEqual((r.returncode, json.loads(r.stdout)),
                         (1, {"error": "forbidden"}))
        self.assertFalse(os.path.exists(target))

    def test_usage(self):
        r = ctl(self.d, "backup")
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage", r.stderr)


class DiskTests(DaemonTestCase):
    """Checkpoints remove log files: disk use stays bounded."""

    PAIRS = 400		# numbers claimed and released in each round
    FILES_PER_PHASE = 12	# log files written in each phase, at least

    def round(self, sock, pairs):
        """Claim then release every pair, pipelined on one connection."""
        lines = []
        for phone, user in pairs:
            lines.append("claim %s %s" % (phone, user))
            lines.append("release %s %s" % (phone, user))
        sock.sendall(("\n".join(lines) + "\n").encode())
        buf = b""
        while buf.count(b"\n") < len(lines):
            chunk = sock.recv(65536)
            self.assertTrue(chunk, "the daemon closed the connection")
            buf += chunk
        answers = [json.loads(x) for x in buf.decode().splitlines()]
        self.assertEqual(answers[0], {"result": "active"})
        self.assertEqual(answers[1], {"released": 1})
        self.assertEqual(len(set(map(json.dumps, answers))), 2, answers[:4])

    def settle(self, d):
        """Wait for a checkpoint after the writes to remove the old log
        files; return (log file numbers, state directory bytes)."""
        deadline = time.monotonic() + 15
        while True:
            logs = log_files(d.state_dir)
            if len(logs) <= 3 or time.monotonic() >= deadline:
                return logs, dir_bytes(d.state_dir)
            time.sleep(0.2)

    def test_log_files_and_state_size_stop_growing(self):
        d = self.own_daemon(log_file_size=LOG_FILE_SIZE,
                            checkpoint_interval=1)
        pairs = [(fresh_number(), fresh_user()) for _ in range(self.PAIRS)]
        first = log_files(d.state_dir)[-1]
        results = []
        rounds = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(d.conf["status_socket"])
            # Phase 1 sets the pace: rounds until FILES_PER_PHASE log
            # files were written; phases 2 and 3 write as much again.
            deadline = time.monotonic() + 40
            while log_files(d.state_dir)[-1] - first < self.FILES_PER_PHASE:
                self.assertLess(time.monotonic(), deadline,
                                "too few log files written in 40 s")
                self.round(s, pairs)
                rounds += 1
            results.append(self.settle(d))
            for _ in range(2):
                for _ in range(rounds):
                    self.round(s, pairs)
                results.append(self.settle(d))
        written = results[-1][0][-1] - first
        print("\n%d rounds a phase; %d log files of %d bytes written; after "
              "each phase: log files %s, state bytes %s" %
              (rounds, written, LOG_FILE_SIZE, [r[0] for r in results],
               [r[1] for r in results]), file=sys.stderr)
        self.assertGreaterEqual(written, 3 * self.FILES_PER_PHASE - 2)
        for logs, size in results:
            self.assertLessEqual(len(logs), 3, "log files left after a "
                                 "checkpoint: %s" % logs)
        # The files of the first phase are gone, and the state directory
        # (databases, regions, logs) did not grow with the log written.
        self.assertGreater(results[2][0][0], results[0][0][-1])
        self.assertLessEqual(results[2][1], results[0][1] + 2 * LOG_FILE_SIZE,
                             [r[1] for r in results])


if __name__ == "__main__":
    unittest.main(verbosity=2)
