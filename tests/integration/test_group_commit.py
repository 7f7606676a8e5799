"""
Durability before the answer (I2), observed through Berkeley DB's own
counters: every answered request was preceded by a log flush of its
batch, and a batch never flushes more than once per request.  Also the
expiry timer: lapsed reservations are deleted without any request.

The flush counter is read with db5.3_stat (Debian's db5.3-util), which
joins the daemon's environment read-only; skipped when it is missing.
"""

import re
import shutil
import subprocess
import sys
import threading
import unittest

from harness import DaemonTestCase, fresh_number, fresh_user

DB_STAT = shutil.which("db5.3_stat") or shutil.which("db_stat")


def log_flushes(state_dir):
    """Return Berkeley DB's count of log flushes (fsyncs) in state_dir."""
    out = subprocess.run([DB_STAT, "-l", "-h", state_dir],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError("db_stat failed: " + out.stderr)
    m = re.search(r"^(\d+)\s+Total log file flushes$", out.stdout, re.M)
    if m is None:
        raise AssertionError("no flush count in:\n" + out.stdout)
    return int(m.group(1))


class GroupCommitTests(DaemonTestCase):

    def setUp(self):
        if DB_STAT is None:
            self.skipTest("db5.3_stat not installed (db5.3-util)")

    def test_cache_size_is_the_environment_cache(self):
        for size in (4194304, 33554432):
            d = self.own_daemon(cache_size=size)
            out = subprocess.run([DB_STAT, "-m", "-h", d.state_dir],
                                 capture_output=True, text=True,
                                 check=True).stdout
            m = re.search(r"(?m)^(\d+)MB (\d+)KB(?: (\d+)B)?\s+Total cache "
                          r"size", out)
            self.assertIsNotNone(m, out)
            got = (int(m.group(1)) << 20) + (int(m.group(2)) << 10) + \
                int(m.group(3) or 0)
            # Berkeley DB adds a quarter to caches under 500 MB.
            self.assertTrue(size <= got <= size * 1.3, (size, got))
            d.stop()

    def test_each_answer_waits_for_a_flush(self):
        # threads = 4: the claims commit on worker threads (issue 19).
        for threads in (1, 4):
            with self.subTest(threads=threads):
                self.each_answer_waits_for_a_flush(threads)

    def each_answer_waits_for_a_flush(self, threads):
        d = self.own_daemon(pending_ttl=3600, threads=threads)
        with d.client() as c:
            # The first request opens the connection; count after it.
            self.assertReserved(c.claim(fresh_number(), fresh_user()), 3600)
            before = log_flushes(d.state_dir)
            n = 25
            for _ in range(n):
                self.assertReserved(c.claim(fresh_number(), fresh_user()),
                                    3600)
            after = log_flushes(d.state_dir)
        # One request at a time: each answer needs its own flush.  The
        # expiry timer or a checkpoint may add a few more.
        self.assertGreaterEqual(after - before, n)
        self.assertLessEqual(after - before, n + 5)
        d.stop()

    def test_concurrent_requests_share_flushes(self):
        for threads in (1, 4):
            with self.subTest(threads=threads):
                self.concurrent_requests_share_flushes(threads)

    def concurrent_requests_share_flushes(self, threads):
        d = self.own_daemon(pending_ttl=3600, threads=threads)
        before = log_flushes(d.state_dir)
        clients, per_client, errors = 16, 20, []

        def worker():
            try:
                with d.client() as c:
                    for _ in range(per_client):
                        r = c.claim(fresh_number(), fresh_user())
                        if r.status != 200:
                            errors.append(str(r))
            except Exception as e:	# reported below
                errors.append(repr(e))

        ts = [threading.Thread(target=worker) for _ in range(clients)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        self.assertEqual(errors, [])
        flushes = log_flushes(d.state_dir) - before
        total = clients * per_client
        # Never more than one flush per answer (plus timers); how many
        # answers share one depends on timing, so it is only reported.
        self.assertLessEqual(flushes, total + 5)
        print("\nthreads = %d: %d answers, %d log flushes (%.1f answers "
              "per flush)" % (threads, total, flushes,
                              total / max(flushes, 1)), file=sys.stderr)
        d.stop()


class ExpiryTimerTests(DaemonTestCase):

    def test_timer_deletes_lapsed_reservations(self):
        d = self.own_daemon(pending_ttl=1, log_level="debug")
        since = d.log_size()
        for _ in range(3):
            self.assertReserved(d.claim(fresh_number(), fresh_user()), 1)
        # The timer runs every 5 s; the reservations lapse after 1 s.
        m = d.wait_for_log(r"released (\d+) lapsed reservation", since,
                           timeout=12)
        self.assertIsNotNone(m, d.tail())
        self.assertEqual(int(m.group(1)), 3, d.tail())


if __name__ == "__main__":
    unittest.main()
