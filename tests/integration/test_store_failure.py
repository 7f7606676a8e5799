"""
When the Berkeley DB environment fails (DB_RUNRECOVERY / panic), the
daemon stops answering 2xx, exits with status 1 so that its supervisor
restarts it, and the restart recovers every acknowledged claim.

The panic is caused from outside by tests/tools/panic_env (PANIC_ENV),
which joins the environment and marks it panicked.
"""

import os
import subprocess
import sys
import time
import unittest

import harness
from harness import DaemonTestCase, fresh_number, fresh_user


def panic_tool():
    path = os.environ.get("PANIC_ENV")
    if not path or not os.access(path, os.X_OK):
        print("PANIC_ENV is not set: skipping", file=sys.stderr)
        sys.exit(77)
    return path


class StoreFailureTests(DaemonTestCase):

    def test_panic_means_no_2xx_exit_1_and_recovery(self):
        tool = panic_tool()
        d = self.own_daemon(pending_ttl=3600)
        held = []
        for _ in range(5):
            n, u = fresh_number(), fresh_user()
            self.assertReserved(d.claim(n, u), 3600)
            held.append((n, u))
        r = subprocess.run([tool, d.state_dir], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)

        # The next request that touches the store must not succeed.
        statuses = []
        for _ in range(3):
            try:
                reply = d.claim(fresh_number(), fresh_user())
                statuses.append(reply.status)
            except OSError:
                statuses.append(None)
        self.assertNotIn(200, statuses, statuses)
        self.assertIn(503, statuses, statuses)

        d.expect_exit()
        try:
            rc = d.proc.wait(harness.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("daemon still running after the store failed")
        self.assertEqual(rc, 1, d.tail())
        self.assertIn("the store failed", d.log_text())

        # Restart: recovery runs and every acknowledged claim is held.
        d.start()
        for n, u in held:
            self.assertTaken(d.claim(n, fresh_user()))
            self.assertResult(d.claim(n, u), "owned")


if __name__ == "__main__":
    unittest.main()
