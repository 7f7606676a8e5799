"""
Crash suite (issue 8): many rounds of kill -9 at random moments under mixed
load, and after every restart a check of the invariants of DESIGN.md
section 2 against a model built from acknowledged operations only.

Load, on keep-alive connections, while the daemon is killed:
  * racers: RACERS users, one thread each, enrol on numbers drawn from a
    small shared pool, so that they race for the same numbers (reserved,
    owned, taken; a user's new reservation releases its previous pending
    one, DESIGN section 4);
  * the log stream: one thread posts batches of gd_enrollment_complete,
    gd_unenroll and sdu events (tests/fixtures/logstream shapes) for users
    of their own, shuffled, dated out of order, with items repeated inside
    a batch and items of earlier acknowledged batches delivered again;
  * out of order (issue 21): releases dated before the enrolment they
    follow (in the same batch or a later one), which must leave the claim
    alone, and renewals: a user of the stream's own reserves a number,
    asks again ("owned"), and a gd_send_sms_failure dated between the two
    arrives late, which must leave the renewed reservation alone.

The model: a racer's claims change only through its own requests, which
are sent one at a time, so each racer holds what its last acknowledged
answer says, or what its one unanswered request (cut by the kill) may have
done.  A log-stream batch that was not answered is delivered again after
the restart, as Auth0 would, before anything is checked; it must have been
applied whole or not at all.

After every restart (anomalies are collected, the test fails on any):
  * the store opens (the daemon starts, `status` says the store is ok);
  * I2: every acknowledged reservation is held by its user (status socket
    `lookup`), another user's enrolment answers 409 and the holder's owned;
    every acknowledged batch's claims are there or released as its events
    say, and acknowledged batches delivered again answer all duplicates;
  * I1: no number of the pool has two holders; no conflict is recorded
    (none of this load may make one);
  * I3: a delivered-again batch applies nothing, and its old enrolments do
    not come back after their release (the lookups run after it);
  * I4 and I1 across out-of-order events: a released claim never comes
    back, and an older release or a late failure never frees a number
    that its holder still has (the lookups give the holder).
In one round of five the restarted daemon is killed again within 150 ms,
mostly while it recovers the store.  At the end the daemon stops cleanly
and db5.3_verify checks every database.

CRASH_ROUNDS (default 40) sets the number of rounds, CRASH_SEED the random
seed (printed; the schedule, the numbers and the batches follow it, the
moments the threads reach do not), CRASH_THREADS the daemon's threads key
(issue 19; by default the daemon's own, the cores online).  make
check-faults runs many rounds.
"""

import http.client
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest

import harness
from harness import DaemonTestCase, fresh_user

harness.require_daemon()

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "40"))
# The daemon's threads key (issue 19); unset: its default, the cores.
THREADS = os.environ.get("CRASH_THREADS") or None
SEED = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(
    1, 2 ** 31))
TTL = 86400		# no reservation expires during the test
RACERS = 6
POOL = 10		# numbers the racers race for
MAX_DELAY = 1.2		# seconds of load before the kill, at most
OLD_SAMPLE = 150	# earlier log-stream claims checked each round
FINAL_SAMPLE = 20000	# and at the end, at most
KEEP_BATCHES = 500	# acknowledged batches kept for redelivery
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        os.pardir, "fixtures", "logstream")
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


# Numbers of our own: harness.fresh_number() has 200,000 and starts again
# after them, which some hundred rounds use up.  +1 AAA EEE NNNN with
# exchanges 201 to 550 (fresh_number uses 555): 70 million.
_AREAS = (202, 212, 213, 305, 312, 404, 415, 503, 512, 602, 617, 646, 702,
          713, 718, 786, 801, 808, 860, 917)
_numbers = itertools.count()


def fresh_number():
    i = next(_numbers)
    rest = i // 10000
    if rest >= len(_AREAS) * 350:
        raise RuntimeError("out of test numbers")
    return "+1%d%03d%04d" % (_AREAS[rest % len(_AREAS)],
                             201 + rest // len(_AREAS), i % 10000)


def report(text):
    print("crash: " + text, file=sys.stderr, flush=True)


def load_fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


TEMPLATES = {name: load_fixture(name + ".json")
             for name in ("gd_enrollment_complete", "gd_unenroll", "sdu",
                          "gd_send_sms_failure")}


def make_item(name, values):
    """One item from a fixture, its ${...} placeholders filled (strings)."""
    text = PLACEHOLDER.sub(lambda m: json.dumps(values[m.group(1)])[1:-1],
                           TEMPLATES[name])
    item = json.loads(text)
    del item["_synthetic"]
    return item


def iso(epoch):
    """Format epoch seconds as Auth0 does: 2026-11-27T10:30:00.000Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(epoch))) + \
        ".%03dZ" % (int(epoch * 1000) % 1000)


def masked(phone):
    """+1******0123, as Auth0 shows a number."""
    return phone[:2] + "*" * (len(phone) - 6) + phone[-4:]


class Scenario:
    """Log-stream users and a number whose end state the model knows.

    kind "enrol": user enrols phone; later maybe released ("unenroll" or
    "sdu", dated after the enrolment).  kind "resurrect": the user is
    deleted and an enrolment dated before the deletion arrives too, in
    either order: the number must end free (I4).  kind "old release": a
    release dated before the enrolment, in the same batch or a later one:
    the number must stay held.  kind "renewal": a reservation through the
    claim API, renewed, and a late SMS failure dated between the two: the
    number must stay pending for the user.
    """

    def __init__(self, kind, user, phone, device):
        self.kind = kind
        self.user = user
        self.phone = phone
        self.device = device
        self.held = False	# what the acknowledged batches say
        self.state = "active"	# of the claim when held
        self.released = False
        self.date = 0.0


class Batch:
    def __init__(self, items, expect_dups, effects, scenarios):
        self.items = items
        self.scenarios = scenarios	# whose state it changes
        self.body = json.dumps(items).encode()
        self.expect_dups = expect_dups	# duplicates on its first delivery
        self.effects = effects		# callables run when it is acked
        self.acked = False


class Crash:
    """The load of one round, the model, and the checks after a restart."""

    def __init__(self, test, daemon, rng):
        self.t = test
        self.d = daemon
        self.rng = rng
        self.anomalies = []
        self.lock = threading.Lock()
        self.pool = [fresh_number() for _ in range(POOL)]
        self.racers = [fresh_user() for _ in range(RACERS)]
        self.holds = {u: None for u in self.racers}	# acked model
        self.inflight = {}	# user -> number of the unanswered request
        self.scenarios = []
        self.touched = set()	# scenarios changed since the last check
        self.batches = []	# acknowledged batches (a sample of them)
        self.releasable = []	# acked enrolments not yet released
        self.unacked = None	# the batch cut by the kill, if any
        self.late = []		# older releases for a later batch
        self.log_ids = itertools.count(1)
        self.log_prefix = "9003%08d" % (SEED % 10 ** 8)
        self.stop = threading.Event()
        self.counts = {"claims": 0, "batches": 0, "redelivered": 0,
                       "lookups": 0, "start kills": 0}

    def anomaly(self, text):
        with self.lock:
            self.anomalies.append(text)
        report("ANOMALY: " + text)

    # Racers.

    def racer(self, user, rng):
        d = self.d
        conn = http.client.HTTPConnection(d.host, d.port, timeout=10)
        headers = {"Authorization": "Bearer " + d.api_token,
                   "Content-Type": "application/json"}
        try:
            while not self.stop.is_set():
                phone = rng.choice(self.pool)
                body = json.dumps({"phone_number": phone, "user_id": user,
                                   "action": "enrollment"}).encode()
                with self.lock:
                    self.inflight[user] = phone
                try:
                    conn.request("POST", "/v1/claims", body, headers)
                    resp = conn.getresponse()
                    raw = resp.read()
                except (OSError, http.client.HTTPException):
                    return	# killed: the request stays in flight
                self.racer_answer(user, phone, resp.status, raw)
        finally:
            conn.close()

    def racer_answer(self, user, phone, status, raw):
        try:
            result = json.loads(raw.decode()).get("result")
        except (ValueError, UnicodeDecodeError, AttributeError):
            result = None
        with self.lock:
            del self.inflight[user]
            self.counts["claims"] += 1
            held = self.holds[user]
            if status == 200 and result == "reserved":
                self.holds[user] = phone
                return
            if status == 200 and result == "owned" and held == phone:
                return
            if status == 409 and result == "taken" and held != phone:
                return
        self.anomaly("racer %s on pool number %d (model: %s): HTTP %d %r" %
                     (user, self.pool.index(phone), self.pool_index(held),
                      status, raw[:200]))

    def pool_index(self, phone):
        return None if phone is None else self.pool.index(phone)

    # The log stream.

    def next_log_id(self):
        return "%s%030d" % (self.log_prefix, next(self.log_ids))

    def enrol_item(self, s, date):
        return make_item("gd_enrollment_complete", {
            "LOG_ID": self.next_log_id(), "DATE": iso(date), "USER": s.user,
            "PHONE": s.phone, "DEVICE": s.device})

    def release_item(self, s, date):
        """A gd_unenroll (by enrolment id) or an sdu of s, dated date."""
        values = {"LOG_ID": self.next_log_id(), "DATE": iso(date),
                  "USER": s.user, "DEVICE": s.device,
                  "PHONE_MASKED": masked(s.phone)}
        return make_item("gd_unenroll" if self.rng.random() < 0.5 else
                         "sdu", values)

    def old_release(self, now, items, effects, mine):
        """Issue 21: an enrolment, and a release dated before it, in this
        batch (either order) or a later one: the claim stays."""
        rng = self.rng
        s = Scenario("old release", fresh_user(), fresh_number(),
                     "dev_%016x" % rng.getrandbits(64))
        s.date = now - rng.uniform(0, 3600)
        items.append(self.enrol_item(s, s.date))
        release = self.release_item(s, s.date - rng.uniform(0.001, 600))
        if rng.random() < 0.5:
            items.append(release)
        else:
            self.late.append((s, release))
        self.scenarios.append(s)
        mine.append(s)
        effects.append(lambda s=s: setattr(s, "held", True))

    def claim(self, conn, s):
        """s's user asks for s's number: the result, None if the daemon
        died."""
        body = json.dumps({"phone_number": s.phone, "user_id": s.user,
                           "action": "enrollment"}).encode()
        try:
            conn.request("POST", "/v1/claims", body,
                         {"Authorization": "Bearer " + self.d.api_token,
                          "Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            return None
        try:
            return json.loads(raw.decode()).get("result")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return repr(raw[:200])

    def renewal(self, conn):
        """Issue 21, point 1: a reservation renewed through the claim API;
        return a gd_send_sms_failure dated between the reservation and
        the renewal (it must not free the renewed reservation), or None
        if the daemon died on the way (the scenario is then not kept)."""
        s = Scenario("renewal", fresh_user(), fresh_number(), "dev_0")
        for want in ("reserved", "owned"):
            if want == "owned":
                reserved = time.time()
                time.sleep(0.01)
                renewed = time.time()
            got = self.claim(conn, s)
            if got is None:
                return None
            if got != want:
                self.anomaly("renewal scenario: %s answered %r" % (want, got))
                return None
        s.held, s.state = True, "pending"
        s.date = (reserved + renewed) / 2
        self.scenarios.append(s)
        return s, make_item("gd_send_sms_failure", {
            "LOG_ID": self.next_log_id(), "DATE": iso(s.date),
            "USER": s.user, "DEVICE": s.device})

    def make_batch(self, renewal=None):
        """A new batch: fresh enrolments, releases of acknowledged ones,
        resurrection attempts, older releases, a late failure of a
        renewal, repeats and old items, shuffled."""
        rng = self.rng
        now = time.time()
        items, effects, dups, mine = [], [], 0, []
        if renewal is not None:
            mine.append(renewal[0])
            items.append(renewal[1])
        if rng.random() < 0.3:
            self.old_release(now, items, effects, mine)
        while self.late and rng.random() < 0.7:
            s, release = self.late.pop()
            mine.append(s)
            items.append(release)
        for _ in range(rng.randint(1, 4)):
            s = Scenario("enrol", fresh_user(), fresh_number(),
                         "dev_%016x" % rng.getrandbits(64))
            # Out of date order: up to an hour in the past.
            s.date = now - rng.uniform(0, 3600)
            items.append(self.enrol_item(s, s.date))
            self.scenarios.append(s)
            mine.append(s)
            effects.append(lambda s=s: self.enrolled(s))
        for _ in range(min(len(self.releasable), rng.randint(0, 2))):
            i = rng.randrange(len(self.releasable))
            self.releasable[i] = self.releasable[-1]
            s = self.releasable.pop()
            items.append(self.release_item(s, s.date + rng.uniform(1, 600)))
            s.released = True	# no second release is generated
            mine.append(s)
            effects.append(lambda s=s: setattr(s, "held", False))
        if rng.random() < 0.5:
            s = Scenario("resurrect", fresh_user(), fresh_number(),
                         "dev_%016x" % rng.getrandbits(64))
            s.date = now - rng.uniform(0, 3600)
            pair = [self.enrol_item(s, s.date - rng.uniform(1, 600)),
                    make_item("sdu", {"LOG_ID": self.next_log_id(),
                                      "DATE": iso(s.date), "USER": s.user})]
            rng.shuffle(pair)
            items += pair
            s.released = True
            self.scenarios.append(s)
            mine.append(s)
        # The same item twice in one request, and items already acked.
        for item in rng.sample(items, min(len(items), rng.randint(0, 2))):
            items.append(item)
            dups += 1
        if self.batches:
            for old in rng.sample(self.batches, min(len(self.batches), 2)):
                items.append(rng.choice(old.items))
                dups += 1
        rng.shuffle(items)
        return Batch(items, dups, effects, mine)

    def enrolled(self, s):
        s.held = True
        self.releasable.append(s)

    def post_batch(self, conn, batch):
        """Send a batch; return the counts, or None if the daemon died."""
        try:
            conn.request("POST", "/v1/log-stream", batch.body,
                         {"Authorization": self.d.log_stream_token,
                          "Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            return None
        try:
            counts = json.loads(raw.decode())
        except (ValueError, UnicodeDecodeError):
            counts = None
        if resp.status != 200 or not isinstance(counts, dict) or \
                counts.get("received") != len(batch.items) or \
                counts.get("rejected") != 0:
            self.anomaly("log-stream batch of %d items: HTTP %d %r" %
                         (len(batch.items), resp.status, raw[:200]))
            return {}
        return counts

    def acked(self, batch):
        batch.acked = True
        for effect in batch.effects:
            effect()
        self.touched.update(batch.scenarios)
        with self.lock:
            if len(self.batches) < KEEP_BATCHES:
                self.batches.append(batch)
            else:
                self.batches[self.rng.randrange(KEEP_BATCHES)] = batch
            self.counts["batches"] += 1

    def streamer(self):
        conn = http.client.HTTPConnection(self.d.host, self.d.port,
                                          timeout=10)
        claims = http.client.HTTPConnection(self.d.host, self.d.port,
                                            timeout=10)
        try:
            while not self.stop.is_set():
                renewal = None
                if self.rng.random() < 0.2:
                    renewal = self.renewal(claims)
                    if renewal is None and self.stop.is_set():
                        return
                batch = self.make_batch(renewal)
                self.unacked = batch
                counts = self.post_batch(conn, batch)
                if counts is None:
                    return
                self.unacked = None
                if counts and counts["duplicates"] != batch.expect_dups:
                    self.anomaly("batch with %d repeated or old items "
                                 "answered %r" % (batch.expect_dups, counts))
                self.acked(batch)
        finally:
            conn.close()
            claims.close()

    # One round.

    def load(self, delay):
        """Run the load, kill -9 the daemon after delay seconds."""
        self.stop.clear()
        threads = [threading.Thread(target=self.racer,
                                    args=(u, random.Random(self.rng.random())),
                                    daemon=True) for u in self.racers]
        threads.append(threading.Thread(target=self.streamer, daemon=True))
        for t in threads:
            t.start()
        time.sleep(delay)
        self.d.kill()
        self.stop.set()
        for t in threads:
            t.join(20)
        if any(t.is_alive() for t in threads):
            raise AssertionError("load threads still running after the kill")

    def redeliver_unacked(self):
        """Deliver the batch the kill cut again: it was applied whole or
        not at all."""
        batch, self.unacked = self.unacked, None
        if batch is None:
            return
        with self.d.client() as c:
            counts = self.post_batch(c.conn, batch)
        if counts is None:
            self.anomaly("the daemon died on a redelivered batch")
            return
        if counts and counts["duplicates"] not in (batch.expect_dups,
                                                   len(batch.items)):
            self.anomaly("a batch cut by the kill was applied in part: "
                         "%d repeated or old items of %d, answered %r" %
                         (batch.expect_dups, len(batch.items), counts))
        self.acked(batch)

    def redeliver_acked(self):
        """I2, I3: acknowledged batches delivered again are all duplicates."""
        if not self.batches:
            return
        with self.d.client() as c:
            for batch in self.rng.sample(self.batches,
                                         min(2, len(self.batches))):
                counts = self.post_batch(c.conn, batch)
                self.counts["redelivered"] += 1
                if counts is None:
                    self.anomaly("the daemon died on a redelivered batch")
                    return
                if counts and (counts["duplicates"] != len(batch.items) or
                               counts["applied"] != 0):
                    self.anomaly("an acknowledged batch of %d items "
                                 "delivered again answered %r" %
                                 (len(batch.items), counts))

    def lookup(self, phone):
        self.counts["lookups"] += 1
        answer = self.d.ask("lookup " + phone)
        claims = answer.get("claims")
        if not isinstance(claims, list):
            self.anomaly("lookup answered %r" % answer)
            return []
        return claims

    def check_log_stream(self, final=False):
        """Each scenario's number is held (active) by its user or free, as
        the acknowledged batches say."""
        old = self.rng.sample(self.scenarios, min(
            FINAL_SAMPLE if final else OLD_SAMPLE, len(self.scenarios)))
        old = [s for s in old if s not in self.touched]
        for s in list(self.touched) + old:
            claims = self.lookup(s.phone)
            got = [(c.get("user_id"), c.get("state")) for c in claims]
            want = [(s.user, s.state)] if s.held else []
            if got != want:
                self.anomaly("log-stream %s scenario (%s, released %s): "
                             "lookup gives %r, acked batches say %r" %
                             (s.kind, "held" if s.held else "free",
                              s.released, got, want))
        self.touched = set()

    def check_racers(self):
        """I1 on the pool; I2 for each racer's acknowledged reservation,
        allowing for its one unanswered request; then take what the daemon
        holds as the model."""
        actual = {u: [] for u in self.racers}
        for i, phone in enumerate(self.pool):
            claims = self.lookup(phone)
            users = [c.get("user_id") for c in claims]
            if len(users) > 1:
                self.anomaly("I1: pool number %d has %d holders" %
                             (i, len(users)))
            for c in claims:
                u = c.get("user_id")
                if u not in actual or c.get("state") != "pending":
                    self.anomaly("pool number %d held by %r (%s)" %
                                 (i, u, c.get("state")))
                    continue
                actual[u].append(phone)
        for u in self.racers:
            want = [self.holds[u]] if self.holds[u] else []
            allowed = [want]
            if u in self.inflight:
                allowed.append([self.inflight[u]])
            if actual[u] not in allowed:
                self.anomaly("I2: racer %s holds pool numbers %r; "
                             "acknowledged: %r, unanswered request: %r" %
                             (u, [self.pool.index(p) for p in actual[u]],
                              self.pool_index(self.holds[u]),
                              self.pool_index(self.inflight.get(u))))
            self.holds[u] = actual[u][0] if actual[u] else None
        self.inflight = {}
        # Over HTTP too: another user is refused, the holder owns it.
        with self.d.client() as c:
            for u, phone in self.holds.items():
                if phone is None:
                    continue
                reply = c.claim(phone, fresh_user(), "enrollment")
                if reply.status != 409 or reply.get("result") != "taken":
                    self.anomaly("I2: another user on a held pool number: "
                                 "%s" % reply)
                reply = c.claim(phone, u, "enrollment")
                if reply.status != 200 or reply.get("result") != "owned":
                    self.anomaly("I2: the holder on its pool number: %s" %
                                 reply)

    def check(self, final=False):
        status = self.d.ask("status")
        if not status.get("store", {}).get("ok"):
            self.anomaly("status after restart: %r" % status)
        reply = self.d.request("GET", "/healthz")
        if reply.status != 200:
            self.anomaly("healthz after restart: %s" % reply)
        self.redeliver_unacked()
        self.redeliver_acked()
        self.check_log_stream(final)
        self.check_racers()
        conflicts = self.d.ask("conflicts").get("conflicts")
        if conflicts != []:
            self.anomaly("I1: conflicts recorded: %r" % conflicts)


class CrashTests(DaemonTestCase):

    def test_kill_9_under_mixed_load(self):
        report("seed %d (CRASH_SEED=%d replays it), %d rounds "
               "(CRASH_ROUNDS), threads %s (CRASH_THREADS)" %
               (SEED, SEED, ROUNDS, THREADS or "default"))
        rng = random.Random(SEED)
        # The racers ask for far more than max_reservations_per_user
        # numbers an hour; the cap has its tests in test_claims_api.py.
        d = self.own_daemon(pending_ttl=TTL, max_reservations_per_user=0,
                            threads=THREADS)
        crash = Crash(self, d, rng)
        started = time.monotonic()
        for n in range(1, ROUNDS + 1):
            # Now and then right after the start, else anywhere in the load.
            if rng.random() < 0.15:
                delay = rng.uniform(0.0, 0.05)
            else:
                delay = rng.uniform(0.05, MAX_DELAY)
            before = dict(crash.counts)
            crash.load(delay)
            if rng.random() < 0.2:
                # Killed again while it recovers and opens the store.
                self.kill_during_start(d, rng.uniform(0.0, 0.15))
                crash.counts["start kills"] += 1
            d.start()
            crash.check()
            report("round %d: kill -9 after %.2f s; %d claims and %d batches "
                   "acknowledged; %d anomalies so far" %
                   (n, delay, crash.counts["claims"] - before["claims"],
                    crash.counts["batches"] - before["batches"],
                    len(crash.anomalies)))
        crash.check(final=True)
        rc = d.stop()
        self.assertEqual(rc, 0, "the daemon did not stop cleanly")
        self.verify_store(d, crash)
        report("%d rounds in %.0f s: %d claims, %d batches acknowledged, "
               "%d batches delivered again, %d kills during start-up, %d "
               "lookups, %d log-stream scenarios; %d anomalies (seed %d)" %
               (ROUNDS, time.monotonic() - started, crash.counts["claims"],
                crash.counts["batches"], crash.counts["redelivered"],
                crash.counts["start kills"],
                crash.counts["lookups"], len(crash.scenarios),
                len(crash.anomalies), SEED))
        self.assertEqual(crash.anomalies[:20], [], "%d anomalies (seed %d)" %
                         (len(crash.anomalies), SEED))

    def kill_during_start(self, d, delay):
        """Start the daemon and kill -9 it after delay seconds, most often
        before it listens: while Berkeley DB recovers the store."""
        with open(d.log_path, "ab") as log:
            proc = subprocess.Popen(d.command("-f", "-c", d.conf_path),
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, cwd=d.dir)
        time.sleep(delay)
        proc.kill()
        proc.wait(10)

    def verify_store(self, d, crash):
        """db5.3_verify every database of the stopped daemon's store."""
        verify = shutil.which("db5.3_verify") or shutil.which("db_verify")
        if verify is None:
            report("no db5.3_verify: the store's databases are not verified")
            return
        files = sorted(f for f in os.listdir(d.state_dir)
                       if f.endswith(".db"))
        self.assertTrue(files, "no .db file in " + d.state_dir)
        for name in files:
            proc = subprocess.run([verify, "-h", d.state_dir, name],
                                  capture_output=True, text=True,
                                  cwd=d.state_dir, timeout=120)
            if proc.returncode != 0:
                crash.anomaly("db5.3_verify %s: %s" %
                              (name, (proc.stdout + proc.stderr)[-500:]))


if __name__ == "__main__":
    unittest.main()
