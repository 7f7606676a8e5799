"""
The rule of time and order, to the millisecond (issue 21), against the
real daemon: each test is one of the reproduced defects, and failed on
525bdb8.

A release takes a claim only if it is dated after the claim's date (the
event or request that last made or confirmed it); a creation or an
activation happens only if it is dated after every watermark that
applies.  Times are taken from the clock of the run; where a case needs
a date inside the same second as a claim or a release, the test first
waits for the second's later half (a wait, never a timed assertion).
"""

import datetime
import threading
import time
import unittest

import harness
from harness import fresh_user
from test_logstream import (LogStreamCase, at, deleted, enrolled, failed,
                            iso, new_device, number, sapi, unenrolled,
                            user_path, utc_now)
from test_mgmt import VerifyCase, WAIT


def ms_now():
    """The clock of the run, in milliseconds."""
    return int(time.time() * 1000)


def iso_ms(ms):
    """An Auth0 date for ms milliseconds since 1970."""
    return iso(datetime.datetime.fromtimestamp(ms / 1000.0,
                                               datetime.timezone.utc))


def late_in_second():
    """Wait until the clock is in the second half of a second, and at
    least 300 ms from its end."""
    while not 500 <= ms_now() % 1000 < 700:
        time.sleep(0.01)


class OrderingTests(LogStreamCase):

    def metric(self, name):
        reply = self.d.request("GET", "/metrics")
        for line in reply.raw.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        self.fail("no %s in /metrics" % name)

    def test_1_renewal_dates_the_reservation(self):
        """A late SMS failure older than the renewal keeps it."""
        phone, user = self.reserve()
        between = at()			# after the reservation
        time.sleep(0.01)		# the renewal comes after it
        self.assertResult(self.d.claim(phone, user, "enrollment"), "owned")
        self.deliver([failed("gd_send_sms_failure", user, between)],
                     ignored=1)
        self.assertHeld(phone, user)

    def test_2_failure_before_the_reservation_in_its_second(self):
        """A failure dated before the reservation, in the same second."""
        late_in_second()
        before = ms_now() - 1
        phone, user = self.reserve()
        self.deliver([failed("gd_send_sms_failure", user, iso_ms(before))],
                     ignored=1)
        self.assertHeld(phone, user)

    def test_3_older_release_in_one_batch(self):
        """An enrolment at T and an MFA reset at T - 30 s, in one batch
        with the reset delivered after it: the claim stays."""
        phone, user = number(), fresh_user()
        now = utc_now()
        self.deliver([enrolled(user, phone, date=at(0, now)),
                      sapi("DELETE", user_path(user, "/authenticators"),
                           date=at(-30, now))],
                     applied=1, ignored=1)
        self.assertActive(phone, user)
        self.assertHeld(phone, user)

    def test_3_older_release_in_separate_batches(self):
        """du, sdu and an unenrolment without an id, older than the
        enrolment, each in a batch of its own: the claim stays."""
        for kind in ("du", "sdu", "unenrol"):
            with self.subTest(release=kind):
                phone, user = number(), fresh_user()
                now = utc_now()
                self.deliver([enrolled(user, phone, date=at(0, now))],
                             applied=1)
                if kind == "unenrol":
                    item = unenrolled(user, None, date=at(-30, now))
                else:
                    item = deleted(user, kind, at(-30, now))
                self.deliver([item], ignored=1)
                self.assertHeld(phone, user)

    def test_5_admin_release_watermark_to_the_millisecond(self):
        """An enrolment dated before an administrator's release, in the
        same second, does not bring the claim back."""
        phone, user = self.learn()
        late_in_second()
        before = ms_now()
        time.sleep(0.005)
        self.assertEqual(self.d.ask("release %s %s" % (phone, user)),
                         {"released": 1})
        self.deliver([enrolled(user, phone, date=iso_ms(before))],
                     ignored=1)
        self.assertFree(phone)

    def test_6_dates_with_offsets_and_undated_events(self):
        """An enrolment from 2020 with an offset, or without a date, does
        not pass a release made today; the undated one is counted."""
        phone, user = self.learn()
        self.deliver([deleted(user, "du")], applied=1)
        undated = self.metric("phoneclaimd_undated_events_total")
        old = enrolled(user, phone, date="2020-01-01T00:00:00.000+01:00")
        self.deliver([old], ignored=1)
        none = enrolled(user, phone)
        del none["data"]["date"]
        self.deliver([none], ignored=1)
        bad = enrolled(user, phone, date="yesterday")
        self.deliver([bad], ignored=1)
        self.assertFree(phone)
        self.assertEqual(self.metric("phoneclaimd_undated_events_total"),
                         undated + 2)
        self.assertIn("no date that can be read", self.d.log_text())

    def test_6_offset_and_precision_are_read(self):
        """A date with an offset and six fraction digits, after the
        release, is read as such: the enrolment applies."""
        phone, user = self.learn()
        self.deliver([deleted(user, "du")], applied=1)
        later = utc_now() + datetime.timedelta(seconds=5)
        text = later.astimezone(datetime.timezone(
            datetime.timedelta(hours=-5))).strftime(
                "%Y-%m-%dT%H:%M:%S.%f-05:00")
        self.deliver([enrolled(user, phone, date=text)], applied=1)
        self.assertActive(phone, user)

    def test_one_user_racing_itself_keeps_one_reservation(self):
        """Two enrolments of one user for two numbers at once (issue 21,
        also-look-at): whichever lands last holds the one pending
        reservation, and the other number is free again."""
        for _ in range(20):
            user, phones = fresh_user(), [number(), number()]
            barrier = threading.Barrier(2)
            results = [None, None]

            def enrol(i):
                with self.d.client() as c:
                    barrier.wait()
                    results[i] = c.claim(phones[i], user, "enrollment")

            threads = [threading.Thread(target=enrol, args=(i,))
                       for i in (0, 1)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            for r in results:
                self.assertReserved(r, self.ttl)
            other = fresh_user()
            taken = [self.d.claim(p, other, "enrollment").status == 409
                     for p in phones]
            self.assertEqual(sum(taken), 1, taken)
            self.assertResult(self.d.claim(phones[taken.index(True)], user,
                                           "enrollment"), "owned")

    def test_7_untyped_method_id_is_not_a_phone(self):
        """DELETE .../authentication-methods/dev_totp77 keeps the user's
        phone claim when no claim carries that id."""
        phone, user = self.learn()
        self.deliver([sapi("DELETE", user_path(
            user, "/authentication-methods/dev_totp77"))], ignored=1)
        self.assertHeld(phone, user)
        # The id of a claim's own enrolment still releases it.
        phone, user, dev = number(), fresh_user(), "dev_" + "ab12" * 3
        now = utc_now()
        self.deliver([enrolled(user, phone, device=dev, date=at(0, now))],
                     applied=1)
        self.deliver([sapi("DELETE", user_path(
            user, "/authentication-methods/" + dev), date=at(1, now))],
                     applied=1)
        self.assertFree(phone)


class VerifyOrderingTests(VerifyCase):

    def test_4_late_answer_loses_to_a_release_after_it(self):
        """The verification GET is answered 3 s late; a du meanwhile
        releases the user: the answer, dated when it was asked for, does
        not bring the claim back."""
        d = self.mgmt_daemon()
        user, phone, dev = fresh_user(), number(), new_device()
        self.fake.add_phone(user, phone, device=dev)
        self.fake.fail_next("/api/v2/users/", None, delay=3.0)
        r = self.stream(d, enrolled(user, None, device=dev))
        self.assertEqual(r.get("ignored"), 1, str(r))
        deadline = time.monotonic() + WAIT
        while not self.method_requests(user):
            self.assertLess(time.monotonic(), deadline, d.tail())
            time.sleep(0.02)
        self.stream(d, deleted(user, "du"))
        v = self.wait_verified(d)
        self.assertEqual(v["claimed"], 0, v)
        self.assertEqual(self.claims_of(d, user), {})
        self.free(d, phone)


if __name__ == "__main__":
    unittest.main()
