"""
Faults from outside the daemon (issue 8): a full state directory, store
files that are unreadable or corrupt, and a wall clock that jumps.

- Disk full: the state directory is a small tmpfs the test mounts (root
  only: skipped otherwise) and fills with a file of its own while the
  daemon serves.  Requests get 503 {"error":"unavailable"} (never a 2xx
  for what is not on disk), the daemon keeps running, and service resumes
  when the filler is deleted, without a restart.  What a 503 request did is
  all or nothing: a commit whose log flush failed stays in the log buffer
  and becomes durable with the next flush that succeeds, so a 503 means
  "outcome unknown" (as a lost answer would), never half a change.
- Store files: each damage gives a fatal message naming the file and exit
  status 1, never a fresh store over existing data.
- Clock: FAKECLOCK (tests/tools/fakeclock.so) moves the daemon's wall
  clock by the seconds in a file; see docs/operations.md, "Operating it", for the rules
  these tests hold the daemon to.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import harness
from harness import DaemonTestCase, fresh_number, fresh_user, write_secret

FULL_REQUESTS = 40		# claims sent while the disk is full
TTL = 600


def status_of_lookup(d, phone):
    """The (user_id, state) pairs the status socket shows for phone."""
    answer = d.ask("lookup " + phone)
    return sorted((c["user_id"], c["state"]) for c in answer["claims"])


def enrolment_event(log_id, user, phone):
    """A gd_enrollment_complete log-stream item for user's phone."""
    return {"log_id": log_id, "data": {
        "log_id": log_id, "type": "gd_enrollment_complete",
        "date": harness.auth0_date(),
        "description": "Guardian - Enrollment complete (sms)",
        "user_id": user,
        "details": {"authenticator": {"type": "phone",
                                      "phone_number": phone}}}}


def post_log_stream(d, items):
    return d.request("POST", "/v1/log-stream", json.dumps(items).encode(),
                     {"Authorization": d.log_stream_token,
                      "Content-Type": "application/json"})


class DiskFullTests(DaemonTestCase):
    """The state directory runs out of space while the daemon serves."""

    def mount_small_fs(self):
        """Mount a tmpfs of 192 MiB (the regions reserve ~120 MiB of it
        with cache_size at its minimum); unmounted at cleanup."""
        if os.geteuid() != 0:
            self.skipTest("mounting a file system needs root")
        mnt = tempfile.mkdtemp(prefix="pcd-fs-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            "size=192m,mode=0700", "tmpfs", mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            os.rmdir(mnt)
            self.skipTest("cannot mount a tmpfs: " + r.stderr.strip())

        def unmount():
            subprocess.run(["umount", mnt], capture_output=True)
            os.rmdir(mnt)
        self.addCleanup(unmount)
        return mnt

    def fill(self, path):
        """Write zeros to path until the file system is full."""
        chunk = b"\0" * (1 << 20)
        with open(path, "wb", buffering=0) as f:
            while True:
                try:
                    f.write(chunk)
                except OSError:
                    break
            small = b"\0" * 512
            while True:
                try:
                    f.write(small)
                except OSError:
                    break
        st = os.statvfs(os.path.dirname(path))
        self.assertEqual(st.f_bavail, 0, "the file system is not full")

    def assertHeldBy(self, d, phone, user, when):
        """phone is held by user alone (pending), and no one else."""
        self.assertEqual(status_of_lookup(d, phone), [(user, "pending")],
                         "%s: %s" % (when, phone))
        self.assertTaken(d.claim(phone, fresh_user()))

    def test_full_state_dir_503_then_resumes(self):
        mnt = self.mount_small_fs()
        d = self.own_daemon(start=False, state_dir=os.path.join(mnt, "st"),
                            cache_size=1048576, pending_ttl=TTL)
        d.start()
        acked = []
        for _ in range(5):
            n, u = fresh_number(), fresh_user()
            self.assertReserved(d.claim(n, u), TTL)
            acked.append((n, u))
        # A reservation whose enrolment event arrives while the disk is full.
        ev_n, ev_u = fresh_number(), fresh_user()
        self.assertReserved(d.claim(ev_n, ev_u), TTL)
        item = enrolment_event("full-" + fresh_user(), ev_u, ev_n)

        filler = os.path.join(mnt, "filler")
        self.fill(filler)
        failed, statuses = [], []
        with d.client() as c:
            for _ in range(FULL_REQUESTS):
                n, u = fresh_number(), fresh_user()
                reply = c.claim(n, u)
                statuses.append(reply.status)
                if reply.status == 200:
                    # The log file's last page had room: really on disk.
                    self.assertReserved(reply, TTL)
                    acked.append((n, u))
                else:
                    self.assertError(reply, 503, "unavailable")
                    failed.append((n, u))
            health = c.request("GET", "/healthz")
            stream = post_log_stream(d, [item])
        self.assertGreater(len(failed), FULL_REQUESTS // 2, statuses)
        self.assertError(health, 503, "unavailable")
        self.assertError(stream, 503, "unavailable")
        self.assertTrue(d.running(), "the daemon died on a full disk:\n" +
                        d.tail())
        self.assertIn("No space left on device", d.log_text())

        # Space returns: service resumes without a restart.
        os.unlink(filler)
        self.assertJsonReply(d.request("GET", "/healthz"), 200,
                             {"status": "ok"})
        for _ in range(3):
            n, u = fresh_number(), fresh_user()
            self.assertReserved(d.claim(n, u), TTL)
            acked.append((n, u))

        def check(when):
            for n, u in acked:
                self.assertHeldBy(d, n, u, when)
            # A 503 request is all or nothing; with the log buffer kept,
            # it is all: held by its own user, with its user index.
            for n, u in failed:
                self.assertHeldBy(d, n, u, when)
                self.assertEqual([c["state"] for c in
                                  d.ask("user " + u)["claims"]],
                                 ["pending"], when)

            # The enrolment of the 503 log-stream request: applied whole,
            # and its redelivery (Auth0 retries a 503) is a duplicate.
            self.assertEqual(status_of_lookup(d, ev_n), [(ev_u, "active")],
                             when)
            again = post_log_stream(d, [item])
            self.assertEqual((again.status, again.get("applied"),
                              again.get("duplicates")), (200, 0, 1),
                             "%s: %s" % (when, again))

        check("after space returned")

        # Full again: a stop still exits 0 (the final checkpoint fails and
        # says so), a start fails at once with 1, and starts once space
        # returns (systemd restarts it until then).
        self.fill(filler)
        self.assertEqual(d.stop(), 0, d.tail())
        r = d.run("-f", "-c", d.conf_path, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("No space left on device", r.stderr)
        os.unlink(filler)
        d.start()
        check("after a restart")

    def test_start_on_a_full_disk_fails_cleanly(self):
        mnt = self.mount_small_fs()
        d = self.own_daemon(start=False, state_dir=os.path.join(mnt, "st"),
                            cache_size=1048576)
        self.fill(os.path.join(mnt, "filler"))
        r = d.run("-f", "-c", d.conf_path, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("No space left on device", r.stderr)
        self.assertNotIn("listening on", r.stderr)


class StoreFileTests(DaemonTestCase):
    """Damaged store files: fatal, named, exit 1, never a fresh start."""

    def make_store(self):
        """A daemon whose store holds a few claims; stopped."""
        d = self.own_daemon(pending_ttl=TTL)
        held = []
        for _ in range(3):
            n, u = fresh_number(), fresh_user()
            self.assertReserved(d.claim(n, u), TTL)
            held.append((n, u))
        self.assertEqual(d.stop(), 0, d.tail())
        return d, held

    def assertFatal(self, d, *names):
        """Starting exits 1 with a message naming every one of names."""
        r = d.run("-f", "-c", d.conf_path, timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertNotIn("listening on", r.stderr)
        for name in names:
            self.assertIn(name, r.stderr)
        return r.stderr

    def assertIntact(self, d, held):
        d.start()
        for n, u in held:
            self.assertResult(d.claim(n, u), "owned")

    def test_claims_db_unreadable(self):
        # Root reads any file: a directory in its place cannot be read.
        d, held = self.make_store()
        path = os.path.join(d.state_dir, "numbers.db")
        os.rename(path, path + ".saved")
        os.mkdir(path)
        self.assertFatal(d, "numbers.db")
        self.assertEqual(os.listdir(path), [], "something wrote in it")
        os.rmdir(path)
        os.rename(path + ".saved", path)
        self.assertIntact(d, held)

    def test_claims_db_unreadable_without_root_powers(self):
        # Mode 000 on numbers.db, the daemon started without the
        # capabilities that let root ignore file modes.
        setpriv = shutil.which("setpriv")
        if os.geteuid() != 0 or setpriv is None:
            self.skipTest("needs root and setpriv")
        d, held = self.make_store()
        path = os.path.join(d.state_dir, "numbers.db")
        os.chmod(path, 0)
        real = d.command

        def command(*args):
            return [setpriv, "--inh-caps=-all",
                    "--bounding-set=-dac_override,-dac_read_search"] + \
                real(*args)
        d.command = command
        stderr = self.assertFatal(d, "numbers.db")
        self.assertIn("Permission denied", stderr)
        os.chmod(path, 0o600)
        d.command = real
        self.assertIntact(d, held)

    def test_claims_db_garbage(self):
        d, _ = self.make_store()
        path = os.path.join(d.state_dir, "numbers.db")
        with open(path, "r+b") as f:
            f.write(os.urandom(4096))
        self.assertFatal(d, "numbers.db")

    def test_claims_db_truncated(self):
        d, _ = self.make_store()
        path = os.path.join(d.state_dir, "numbers.db")
        os.truncate(path, 100)
        self.assertFatal(d, "numbers.db")

    def test_log_file_garbage(self):
        d, _ = self.make_store()
        logs = sorted(f for f in os.listdir(d.state_dir)
                      if f.startswith("log."))
        self.assertTrue(logs)
        path = os.path.join(d.state_dir, logs[-1])
        with open(path, "r+b") as f:
            f.write(os.urandom(65536))
        stderr = self.assertFatal(d, logs[-1], "recovery of the store in " +
                                  d.state_dir + " failed")
        self.assertNotIn("a restart will run recovery", stderr)

    def test_missing_hash_key_with_claims(self):
        d, held = self.make_store()
        path = os.path.join(d.state_dir, "hash.key")
        with open(path, "rb") as f:
            key = f.read()
        os.unlink(path)
        self.assertFatal(d, path, "missing")
        self.assertFalse(os.path.exists(path), "a new key was created")
        write_secret(path, "")
        with open(path, "wb") as f:
            f.write(key)
        self.assertIntact(d, held)

    def test_missing_hash_key_with_an_empty_store(self):
        # The store remembers its key from the first start: even with no
        # claim left, a new key is refused.
        d = self.own_daemon()
        self.assertEqual(d.stop(), 0)
        path = os.path.join(d.state_dir, "hash.key")
        os.unlink(path)
        self.assertFatal(d, path, "missing")
        self.assertFalse(os.path.exists(path))

    def test_other_hash_key(self):
        d, held = self.make_store()
        path = os.path.join(d.state_dir, "hash.key")
        with open(path, "rb") as f:
            key = f.read()
        write_secret(path, "k" * 32)
        self.assertFatal(d, path, "not the key")
        with open(path, "wb") as f:
            f.write(key)
        self.assertIntact(d, held)


class ClockTests(DaemonTestCase):
    """The wall clock jumps under a running daemon (fakeclock.so)."""

    def setUp(self):
        if harness.fakeclock_shim() is None:
            self.skipTest("FAKECLOCK is not set (run through make check)")

    def clock_daemon(self, **conf):
        d = self.own_daemon(start=False, **conf)
        self.offset_file = d.path("clock-offset")
        harness.use_fakeclock(d, self.offset_file)
        d.start()
        return d

    def set_offset(self, seconds):
        harness.set_fakeclock(self.offset_file, seconds)

    def test_the_shim_moves_the_clock(self):
        d = self.clock_daemon(pending_ttl=TTL)
        self.set_offset(86400 * 365)
        n, u = fresh_number(), fresh_user()
        self.assertReserved(d.claim(n, u), TTL)
        since = d.ask("lookup " + n)["claims"][0]["since"]
        self.assertTrue(since.startswith(time.strftime(
            "%Y", time.gmtime(time.time() + 86400 * 365))), since)

    def test_forward_jump_past_ttl_frees_reservations(self):
        d = self.clock_daemon(pending_ttl=TTL)
        n, u = fresh_number(), fresh_user()
        self.assertReserved(d.claim(n, u), TTL)
        self.set_offset(TTL + 5)
        other = fresh_user()
        self.assertReserved(d.claim(n, other), TTL)
        self.assertEqual(status_of_lookup(d, n), [(other, "pending")])

    def test_backward_jump_does_not_revive_or_lengthen(self):
        d = self.clock_daemon(pending_ttl=TTL)
        n, u = fresh_number(), fresh_user()
        self.assertReserved(d.claim(n, u), TTL)
        # Forward past the ttl: the claim lapses at once (lookups and
        # claims ignore it), and the expiry timer deletes it within 5 s.
        self.set_offset(TTL + 5)
        self.assertEqual(d.ask("lookup " + n)["claims"], [])
        deadline = time.monotonic() + 20
        while d.ask("status")["claims"]["pending"] > 0 and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(d.ask("status")["claims"]["pending"], 0,
                         "the expiry timer did not release it")
        # Back by a day: what was released stays released ...
        self.set_offset(-86400)
        self.assertEqual(d.ask("lookup " + n)["claims"], [])
        other = fresh_user()
        # ... and a new reservation lives pending_ttl, not a day more.
        self.assertReserved(d.claim(n, other), TTL)
        m, v = fresh_number(), fresh_user()
        self.assertReserved(d.claim(m, v), TTL)
        # Its expiry is pending_ttl after the (jumped) now.
        exp = d.ask("lookup " + m)["claims"][0]["expires"]
        since = d.ask("lookup " + m)["claims"][0]["since"]
        t_exp = time.mktime(time.strptime(exp[:19], "%Y-%m-%dT%H:%M:%S"))
        t_since = time.mktime(time.strptime(since[:19],
                                            "%Y-%m-%dT%H:%M:%S"))
        self.assertEqual(t_exp - t_since, TTL, (since, exp))
        # Back to the true time: the clock is back where the reservation
        # was made a day "ago", so it has expired.
        self.set_offset(0)
        self.assertReserved(d.claim(m, fresh_user()), TTL)
        self.assertJsonReply(d.request("GET", "/healthz"), 200,
                             {"status": "ok"})

    def test_dedup_survives_jumps(self):
        retention = 3600
        d = self.clock_daemon(dedup_retention=retention, pending_ttl=TTL)
        n, u = fresh_number(), fresh_user()
        self.assertReserved(d.claim(n, u), TTL)
        item = enrolment_event("jump-" + fresh_user(), u, n)
        first = post_log_stream(d, [item])
        self.assertEqual((first.status, first.get("applied")), (200, 1),
                         str(first))
        for offset in (retention // 2, -86400, 0):
            self.set_offset(offset)
            again = post_log_stream(d, [item])
            self.assertEqual((again.status, again.get("duplicates"),
                              again.get("applied")), (200, 1, 0),
                             "offset %d: %s" % (offset, again))
        self.assertEqual(status_of_lookup(d, n), [(u, "active")])
        self.assertEqual(d.stop(), 0, d.tail())

    def test_dedup_pruning_follows_the_clock(self):
        """With the prune running every second: a jump of half the
        retention forward, or of a day back, forgets nothing; a jump past
        the retention forgets the id (Auth0 keeps logs no longer)."""
        retention = 3600
        d = self.clock_daemon(dedup_retention=retention, pending_ttl=TTL,
                              checkpoint_interval=1)
        n, u = fresh_number(), fresh_user()
        self.assertReserved(d.claim(n, u), TTL)
        item = enrolment_event("prune-" + fresh_user(), u, n)
        first = post_log_stream(d, [item])
        self.assertEqual((first.status, first.get("applied")), (200, 1),
                         str(first))
        for offset in (retention // 2, -86400):
            self.set_offset(offset)
            time.sleep(3.0)		# three prune runs
            again = post_log_stream(d, [item])
            self.assertEqual((again.status, again.get("duplicates")),
                             (200, 1), "offset %d: %s" % (offset, again))
        self.set_offset(retention + 60)
        time.sleep(3.0)
        late = post_log_stream(d, [item])
        self.assertEqual((late.status, late.get("duplicates")), (200, 0),
                         str(late))
        self.assertEqual(status_of_lookup(d, n), [(u, "active")])
        self.assertEqual(d.stop(), 0, d.tail())


if __name__ == "__main__":
    unittest.main()
