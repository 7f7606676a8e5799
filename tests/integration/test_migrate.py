"""
A state directory of schema 3 (claims.db and its indexes, 32-byte number
keys) migrated to schema 4 (numbers.db, one record per number, 16-byte
keys, hashed user and enrolment indexes) at the first start.

The old store is tests/fixtures/store-schema3/, made by the release before
with tests/tools/make-store-schema3.py and kept as db_dump text, with its
hash key in hex (test-hash-key.hex, a key made for the fixture only); its
expected.json says what it holds.  Each test loads it into a new state
directory with db5.3_load and starts the daemon on it, with the wall clock
moved back to the day the fixture was made (tests/tools/fakeclock.so), so
that its pending reservation is still pending on whatever day the suite
runs (the replication group's members too, all on one moved clock).

What must survive the migration, observed only through the daemon's own
interfaces:
  * every claim, with its state, since, expiry and source (status lookup),
    and the claim API's answers for the holder and for another user;
  * the user index (status `user`, and the one pending reservation per
    user rule), the enrolment index (a gd_unenroll that names only the
    enrolment id), the expiry index (the pending claim lapses when the
    clock passes its expiry);
  * the conflict (status `conflicts`, with its number's last 4 digits);
  * the release watermarks (I4): a late enrolment event, dated before an
    unenrolment or a user deletion of the old store, stays stale;
  * the counts, and nothing left of the old files.

And the key: the indexes of schema 4 are keyed by a hash whose key comes
from hash.key, so a wrong or missing hash.key must stop the start before
the migration writes anything (it would build every index under the wrong
key).
"""

import datetime
import json
import os
import secrets
import shutil
import subprocess
import time
import unittest

import harness
from harness import DaemonTestCase, fresh_user
import repl_group
import test_logstream as ls

harness.require_daemon()

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       os.pardir, "fixtures", "store-schema3")
OLD_FILES = ("claims.db", "claims_user.db", "claims_expiry.db",
             "claims_enrol.db")
NEW_FILES = ("numbers.db", "numbers_user.db", "numbers_expiry.db",
             "numbers_enrol.db")


def write_key(path, key):
    """Write a 32-byte hash key, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)


def load_fixture(state_dir):
    """Write the schema-3 store into state_dir (empty) with db5.3_load."""
    for name in sorted(os.listdir(FIXTURE)):
        if not name.endswith(".dump"):
            continue
        subprocess.run(["db5.3_load", "-h", state_dir, "-f",
                        os.path.join(FIXTURE, name), name[:-5] + ".db"],
                       check=True)
    # The fixture's key is kept as hex: *.key files are never committed.
    with open(os.path.join(FIXTURE, "test-hash-key.hex")) as f:
        write_key(os.path.join(state_dir, "hash.key"),
                  bytes.fromhex(f.read().strip()))


def fresh_id(item):
    """The item with a log id the fixture's seen ids cannot hold (the
    helpers of test_logstream count from the same start as the run that
    made the fixture)."""
    lid = "9m" + secrets.token_hex(27)
    item["log_id"] = lid
    item["data"]["log_id"] = lid
    return item


class MigrationTests(DaemonTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if shutil.which("db5.3_load") is None:
            raise unittest.SkipTest("db5.3_load is not installed "
                                    "(package db5.3-util)")
        with open(os.path.join(FIXTURE, "expected.json")) as f:
            cls.exp = json.load(f)

    def setUp(self):
        if harness.fakeclock_shim() is None:
            self.skipTest("FAKECLOCK is not set (run through make check)")

    def old_daemon(self, start=True, **conf):
        """A daemon on a copy of the old store, its clock a minute after
        the fixture was made."""
        conf.setdefault("pending_ttl", str(self.exp["pending_ttl"]))
        conf.setdefault("max_users_per_number", "2")
        d = self.own_daemon(start=False, **conf)
        load_fixture(d.state_dir)
        self.offset_file = d.path("clock-offset")
        harness.use_fakeclock(d, self.offset_file)
        self.set_clock(self.exp["generated"] + 60)
        if start:
            d.start()
        return d

    def set_clock(self, when):
        """Make the daemon's wall clock read 'when' (seconds)."""
        harness.set_fakeclock(self.offset_file, when - int(time.time()))

    def holders(self, d, phone):
        return sorted([c["user_id"], c["state"]]
                      for c in d.ask("lookup " + phone)["claims"])

    def post(self, d, items):
        r = d.request("POST", "/v1/log-stream", json.dumps(items).encode(),
                      {"Authorization": d.log_stream_token,
                       "Content-Type": "application/json"})
        self.assertEqual(r.status, 200, r)
        return json.loads(r.raw)

    def test_claims_and_files(self):
        d = self.old_daemon()
        log = d.log_text()
        self.assertIn("migrating", log)
        self.assertIn("migrated to schema version 5", log)
        self.assertIn("5 claim(s), 2 watermark(s), 1 conflict(s)", log)
        for phone, holders in self.exp["numbers"].items():
            self.assertEqual(self.holders(d, phone), holders, phone)
        # since, expires and source came across unchanged.
        pend = d.ask("lookup +14155550101")["claims"][0]
        gen = datetime.datetime.fromtimestamp(
            self.exp["generated"], datetime.timezone.utc)
        since = datetime.datetime.strptime(
            pend["since"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc)
        expires = datetime.datetime.strptime(
            pend["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc)
        self.assertLessEqual(abs((since - gen).total_seconds()), 5)
        self.assertEqual((expires - since).total_seconds(),
                         self.exp["pending_ttl"])
        self.assertEqual(pend["source"], "enrollment")
        admin = d.ask("lookup +442079460103")["claims"][0]
        self.assertEqual(admin["source"], "admin")
        status = d.ask("status")
        self.assertEqual(status["claims"], {"active": 4, "pending": 1})
        self.assertEqual(status["conflicts"], 1)
        names = set(os.listdir(d.state_dir))
        for name in OLD_FILES:
            self.assertNotIn(name, names)
        for name in NEW_FILES:
            self.assertIn(name, names)
        # The claim API: holders own, others are refused.
        u2 = self.exp["enrolment"]["user"]
        self.assertEqual(d.claim("+14155550102", u2).get("result"), "owned")
        # With max_users_per_number = 2, 0104 is full and 0102 takes one
        # more, beside its migrated claim.
        r = d.claim("+14155550104", fresh_user())
        self.assertEqual((r.status, r.get("result")), (409, "taken"))
        second = fresh_user()
        r = d.claim("+14155550102", second)
        self.assertEqual((r.status, r.get("result")), (200, "reserved"))
        self.assertEqual(self.holders(d, "+14155550102"),
                         sorted([[u2, "active"], [second, "pending"]]))
        d.ask("release +14155550102 " + second)
        # A restart finds the new schema and migrates nothing.
        since = d.log_size()
        d.stop()
        d.start()
        self.assertNotIn("migrat", d.log_text(since))
        self.assertEqual(d.ask("status")["claims"],
                         {"active": 4, "pending": 1})
        for phone, holders in self.exp["numbers"].items():
            self.assertEqual(self.holders(d, phone), holders, phone)

    def assertRefused(self, d, *words):
        """Starting exits 1, naming words, and the old store is untouched."""
        r = d.run("-f", "-c", d.conf_path, timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        for w in words:
            self.assertIn(w, r.stderr)
        self.assertNotIn("migrating", r.stderr)
        names = set(os.listdir(d.state_dir))
        for name in OLD_FILES:
            self.assertIn(name, names)

    def test_wrong_or_missing_key_refused_before_migrating(self):
        d = self.old_daemon(start=False)
        key = os.path.join(d.state_dir, "hash.key")
        with open(key, "rb") as f:
            right = f.read()
        write_key(key, secrets.token_bytes(32))
        self.assertRefused(d, key, "not the key")
        os.unlink(key)
        self.assertRefused(d, key, "missing")
        write_key(key, right)
        d.start()
        self.assertIn("migrated to schema version 5", d.log_text())
        for phone, holders in self.exp["numbers"].items():
            self.assertEqual(self.holders(d, phone), holders, phone)

    def test_indexes(self):
        d = self.old_daemon()
        # User index.
        u2 = self.exp["enrolment"]["user"]
        got = sorted(c["number"] for c in d.ask("user " + u2)["claims"])
        self.assertEqual(got, sorted("…" + p[-4:]
                                     for p in self.exp["users"][u2]))
        # One pending reservation per user: u1's new reservation frees
        # the old one, which the user index must find.
        u1 = self.exp["numbers"]["+14155550101"][0][0]
        self.assertEqual(d.claim("+14155550199", u1).get("result"),
                         "reserved")
        self.assertEqual(self.holders(d, "+14155550101"), [])
        # Enrolment index: an unenrolment naming only the enrolment id.
        dev = self.exp["enrolment"]["enrol_id"]
        item = ls.unenrolled(u2, None, auth_id=None, enrol_id=dev)
        counts = self.post(d, [fresh_id(item)])
        self.assertEqual(counts["applied"], 1, counts)
        self.assertEqual(self.holders(d, "+14155550102"), [])
        self.assertEqual(self.holders(d, "+442079460103"),
                         [[u2, "active"]])

    def test_expiry_index(self):
        d = self.old_daemon()
        self.assertEqual(self.holders(d, "+14155550101"),
                         [[self.exp["numbers"]["+14155550101"][0][0],
                           "pending"]])
        self.set_clock(self.exp["generated"] + self.exp["pending_ttl"] + 60)
        # A lapsed reservation is hidden at once, and deleted by the next
        # expiry run (every 5 s), which finds it through the index.
        self.assertEqual(self.holders(d, "+14155550101"), [])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and \
                d.ask("status")["claims"]["pending"] > 0:
            time.sleep(0.2)
        self.assertEqual(d.ask("status")["claims"],
                         {"active": 4, "pending": 0})

    def test_conflict_and_watermarks(self):
        d = self.old_daemon()
        cf = d.ask("conflicts")["conflicts"]
        self.assertEqual(len(cf), 1)
        self.assertEqual(cf[0]["number"],
                         "…" + self.exp["conflict"]["number"][-4:])
        self.assertIn(self.exp["conflict"]["user"], cf[0]["user_ids"])
        # Enrolments dated before the old store's releases stay stale.
        gen = datetime.datetime.fromtimestamp(
            self.exp["generated"] - 3600, datetime.timezone.utc)
        old = ls.iso(gen)
        u5, p5 = self.exp["released"]["unenrolled"]
        u6, p6 = self.exp["released"]["deleted"]
        counts = self.post(d, [fresh_id(ls.enrolled(u5, p5, date=old)),
                               fresh_id(ls.enrolled(u6, p6, date=old))])
        self.assertEqual((counts["applied"], counts["ignored"]), (0, 2),
                         counts)
        self.assertEqual(self.holders(d, p5), [])
        self.assertEqual(self.holders(d, p6), [])
        # A later one applies.
        counts = self.post(d, [fresh_id(ls.enrolled(u5, p5))])
        self.assertEqual(counts["applied"], 1, counts)
        self.assertEqual(self.holders(d, p5), [[u5, "active"]])


class GroupMigrationTests(repl_group.GroupTestCase):
    """A single daemon's store of schema 3 becomes a replication group:
    its member is elected (its log is the most recent), migrates, and the
    two new, empty members are copied from it (docs/ha.md)."""

    def setUp(self):
        if shutil.which("db5.3_load") is None:
            self.skipTest("db5.3_load is not installed")
        if harness.fakeclock_shim() is None:
            self.skipTest("FAKECLOCK is not set (run through make check)")
        with open(os.path.join(FIXTURE, "expected.json")) as f:
            self.exp = json.load(f)
        with open(os.path.join(FIXTURE, "test-hash-key.hex")) as f:
            key = bytes.fromhex(f.read().strip())
        # Not GroupTestCase's setUp: the group starts in the test.
        self.group = repl_group.Group(
            3, pending_ttl=str(self.exp["pending_ttl"]),
            max_users_per_number="2")
        self.addCleanup(self.finish_group)
        # Every member's clock reads a minute after the fixture was made,
        # so that its pending reservation is still pending on any date.
        offset_file = self.group.nodes[0].path("clock-offset")
        for d in self.group.nodes:
            write_key(d.conf["hash_key_file"], key)
            harness.use_fakeclock(d, offset_file)
        harness.set_fakeclock(offset_file,
                              self.exp["generated"] + 60 - int(time.time()))
        load_fixture(self.group.nodes[0].state_dir)
        os.unlink(os.path.join(self.group.nodes[0].state_dir, "hash.key"))

    def test_old_single_store_becomes_the_group(self):
        g = self.group
        # The single daemon has served for a while (its log is long, as a
        # real one's is): run it alone on the old store first, with the
        # group's keys left out.
        first = g.nodes[0]
        g.configure_alone(first)
        first.start()
        self.assertIn("migrated to schema version 5", first.log_text())
        served = [(harness.fresh_number(), fresh_user()) for _ in range(200)]
        for phone, user in served:
            self.assertEqual(first.claim(phone, user).status, 200)
        first.stop()
        g.configure_member(first)
        g.start()
        master = g.wait_master()
        self.assertIs(master, g.nodes[0],
                      "the member with the data must win the election")
        for d in g.nodes:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = sorted([c["user_id"], c["state"]] for c in
                             d.ask("lookup +14155550104")["claims"])
                if got == self.exp["numbers"]["+14155550104"]:
                    break
                time.sleep(0.2)
            for phone, holders in self.exp["numbers"].items():
                got = sorted([c["user_id"], c["state"]]
                             for c in d.ask("lookup " + phone)["claims"])
                self.assertEqual(got, holders, (d.dir, phone))
            self.assertNotIn("claims.db", os.listdir(d.state_dir))
            phone, user = served[-1]
            got = [c["user_id"] for c in d.ask("lookup " + phone)["claims"]]
            self.assertEqual(got, [user], d.dir)
        # A write through a replica reaches the migrated store.
        replica = g.replicas(master)[0]
        r = replica.claim("+14155550104", fresh_user())
        self.assertEqual((r.status, r.get("result")), (409, "taken"))


if __name__ == "__main__":
    unittest.main()
