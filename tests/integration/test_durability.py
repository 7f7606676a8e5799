"""
I2 durability: a 2xx answer is sent only after the change is on disk, so
kill -9 at any moment loses no acknowledged reservation.

Eight client threads reserve fresh numbers for fresh users on keep-alive
connections; the daemon is killed with SIGKILL in the middle of the stream
(after about 1 s, then at random moments), restarted on the same state
directory, and every acknowledged reservation must still hold: another
user's enrolment answers 409 taken, the holder's answers owned.

The same runs with threads = 1 (every claim on the event loop) and
threads = 4 (claims committed on worker threads, issue 19) with sixteen
clients; and with threads = 4, many connections ask for the same numbers
at once as different users (I1: one holder each, before and after a
kill -9).
"""

import http.client
import random
import sys
import threading
import unittest

import harness
from harness import (DaemonTestCase, Load, check_reservations, claim_body,
                     fresh_number, fresh_user)

harness.require_daemon()

TTL = 3600
THREADS = 8


class KillNineTests(DaemonTestCase):

    def report(self, text):
        print("durability: " + text, file=sys.stderr, flush=True)

    def kill_round(self, d, number, delay, clients=THREADS):
        """One load run killed after delay s; return what was acknowledged."""
        load = Load(d, clients)
        acked = load.run(delay, d.kill)
        self.assertEqual(load.unexpected[:5], [],
                         "fresh numbers not answered reserved")
        self.assertGreaterEqual(len(acked), clients,
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

    def kill_rounds(self, threads, clients):
        d = self.own_daemon(pending_ttl=TTL, threads=threads)
        everything = []
        for number, delay in enumerate((1.0, random.uniform(0.3, 1.5),
                                        random.uniform(0.3, 1.5)), 1):
            everything += self.kill_round(d, number, delay, clients)
        failures = check_reservations(d, everything, check_owner=False)
        self.report("all rounds: %d reservations still taken at the end" %
                    (len(everything) - len(failures)))
        self.assertEqual(failures[:10], [], "%d earlier reservations lost" %
                         len(failures))

    def test_acknowledged_reservations_survive_kill_9(self):
        self.kill_rounds(1, THREADS)

    def test_acknowledged_reservations_survive_kill_9_threads_4(self):
        self.kill_rounds(4, 2 * THREADS)


class SameNumberTests(DaemonTestCase):
    """I1 with claims committed on several threads: sixteen connections
    ask for the same numbers at once, each request as a user of its own,
    interleaved with fresh numbers; one user wins each number."""

    CLIENTS = 16
    NUMBERS = 25

    def hammer(self, d, numbers):
        """Every client asks for every number (shuffled) as a new user,
        plus a fresh number each time; return {phone: [(user, reply)]}
        and the fresh (phone, user) pairs acknowledged."""
        answers = {phone: [] for phone in numbers}
        fresh, errors, lock = [], [], threading.Lock()
        start = threading.Barrier(self.CLIENTS)

        def client():
            order = list(numbers)
            random.shuffle(order)
            conn = http.client.HTTPConnection(d.host, d.port, timeout=30)
            headers = {"Authorization": "Bearer " + d.api_token,
                       "Content-Type": "application/json"}
            try:
                start.wait(30)
                for phone in order:
                    for p in (phone, fresh_number()):
                        user = fresh_user()
                        conn.request("POST", "/v1/claims",
                                     claim_body(p, user, "enrollment"),
                                     headers)
                        resp = conn.getresponse()
                        reply = harness.Reply(resp.status, resp.headers,
                                              resp.read())
                        with lock:
                            if p in answers:
                                answers[p].append((user, reply))
                            elif reply.status == 200 and \
                                    reply.get("result") == "reserved":
                                fresh.append((p, user))
                            else:
                                errors.append((p, str(reply)))
            except Exception as e:	# reported below
                with lock:
                    errors.append(("-", repr(e)))
            finally:
                conn.close()

        ts = [threading.Thread(target=client, daemon=True)
              for _ in range(self.CLIENTS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in ts), "clients hung")
        self.assertEqual(errors[:5], [], "%d unexpected answers" %
                         len(errors))
        return answers, fresh

    def winners(self, answers):
        """Check one reserved and only taken besides, for each number."""
        won = []
        for phone, replies in answers.items():
            self.assertEqual(len(replies), self.CLIENTS)
            reserved = [u for u, r in replies if r.status == 200 and
                        r.json == {"result": "reserved",
                                   "expires_in": TTL}]
            others = [str(r) for u, r in replies if r.status != 409 or
                      r.json != {"result": "taken"}]
            self.assertEqual(len(reserved), 1, "%s: %d reserved" %
                             (phone, len(reserved)))
            self.assertEqual(len(others), 1, others[:3])
            won.append((phone, reserved[0]))
        return won

    def test_one_holder_per_number_threads_4(self):
        d = self.own_daemon(pending_ttl=TTL, threads=4)
        numbers = [fresh_number() for _ in range(self.NUMBERS)]
        answers, fresh = self.hammer(d, numbers)
        won = self.winners(answers)
        self.assertEqual(len(fresh), self.CLIENTS * self.NUMBERS)
        d.kill()
        d.start()
        failures = check_reservations(d, won + fresh)
        self.assertEqual(failures[:10], [], "%d of %d acknowledged "
                         "reservations lost or doubled after kill -9" %
                         (len(failures), len(won) + len(fresh)))


if __name__ == "__main__":
    unittest.main()
