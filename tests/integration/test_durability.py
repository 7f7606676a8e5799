"""
I2 durability: a 2xx answer is sent only after the change is on disk, so
kill -9 at any moment loses no acknowledged reservation.

Eight client threads reserve fresh numbers for fresh users on keep-alive
connections; the daemon is killed with SIGKILL in the middle of the stream
(after about 1 s, then at random moments), restarted on the same state
directory, and every acknowledged reservation must still hold: another
user's enrolment answers 409 taken, the holder's answers owned.
"""

import random
import sys
import unittest

import harness
from harness import DaemonTestCase, Load, check_reservations

harness.require_daemon()

TTL = 3600
THREADS = 8


class KillNineTests(DaemonTestCase):

    def report(self, text):
        print("durability: " + text, file=sys.stderr, flush=True)

    def kill_round(self, d, number, delay):
        """One load run killed after delay s; return what was acknowledged."""
        load = Load(d, THREADS)
        acked = load.run(delay, d.kill)
        self.assertEqual(load.unexpected[:5], [],
                         "fresh numbers not answered reserved")
        self.assertGreaterEqual(len(acked), THREADS,
                                "too few reservations before the kill")
        d.start()
        failures = check_reservations(d, acked)
        self.report("round %d: kill -9 after %.2f s, %d acknowledged "
                    "reservations checked, %d lost" %
                    (number, delay, len(acked), len(failures)))
        self.assertEqual(failures[:10], [], "%d of %d acknowledged "
                         "reservations lost after kill -9" %
                         (len(failures), len(acked)))
        return acked

    def test_acknowledged_reservations_survive_kill_9(self):
        d = self.own_daemon(pending_ttl=TTL)
        everything = []
        for number, delay in enumerate((1.0, random.uniform(0.3, 1.5),
                                        random.uniform(0.3, 1.5)), 1):
            everything += self.kill_round(d, number, delay)
        failures = check_reservations(d, everything, check_owner=False)
        self.report("all rounds: %d reservations still taken at the end" %
                    (len(everything) - len(failures)))
        self.assertEqual(failures[:10], [], "%d earlier reservations lost" %
                         len(failures))


if __name__ == "__main__":
    unittest.main()
