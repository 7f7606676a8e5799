"""
The daemon runs and shuts down clean under valgrind: no invalid reads or
writes, no use of uninitialised memory, and no memory definitely or
indirectly lost at exit.  ("Possibly lost" blocks belong to
libphonenumber's process-wide singleton and are not ours.)

Skipped when valgrind is missing or the daemon was built with
AddressSanitizer (the two do not mix).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import unittest

import harness
from harness import (DaemonTestCase, ValgrindDaemon, fresh_number,
                     fresh_user)


def valgrind_or_skip():
    vg = shutil.which("valgrind")
    if vg is None:
        print("valgrind not found: skipping", file=sys.stderr)
        sys.exit(77)
    daemon = harness.require_daemon()
    ldd = subprocess.run(["ldd", daemon], capture_output=True, text=True)
    if "libasan" in ldd.stdout:
        print("daemon built with AddressSanitizer: skipping valgrind",
              file=sys.stderr)
        sys.exit(77)
    return vg


class ValgrindTests(DaemonTestCase):

    def test_requests_and_clean_shutdown(self):
        d = ValgrindDaemon(pending_ttl=600)
        self._daemons.append(d)
        d.start(timeout=60)
        n, u = fresh_number(), fresh_user()
        self.assertReserved(d.claim(n, u), 600)
        self.assertResult(d.claim(n, u), "owned")
        self.assertTaken(d.claim(n, fresh_user()))
        self.assertResult(d.claim(n, fresh_user(),
                                  "second-factor-authentication"),
                          "conflict")
        self.assertError(d.post_claims(b"[[["), 400, "invalid_json")
        self.assertError(d.claim("not a number", u), 400,
                         "invalid_phone_number")
        d.send_signal(signal.SIGHUP)
        self.assertEqual(d.request("GET", "/healthz").status, 200)
        rc = d.stop(timeout=60)
        self.assertValgrindClean(d, rc)


if __name__ == "__main__":
    valgrind_or_skip()
    unittest.main()
