"""
POST /v1/claims and GET /healthz against DESIGN.md section 4: enrolment
and challenge tables, spellings of one number, error answers that change
nothing, routing, and privacy of the log and the state directory (I5).
"""

import base64
import json
import os
import re
import signal
import stat
import time
import unittest

import harness
from harness import ABSENT, DaemonTestCase, claim_body, fresh_number, \
    fresh_uk_number, fresh_user

harness.require_daemon()

DEFAULT_TTL = 600
EXEMPT_SPELLED = "+1 201 555 0100"	# in the exempt file as written
EXEMPT_E164 = "+12015550100"
EXEMPT_UK = "+447700900999"


class ClaimsCase(DaemonTestCase):
    """One daemon per class; helpers that reserve and probe numbers."""

    conf = {"default_region": "US"}
    ttl = DEFAULT_TTL

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.d = cls.new_daemon(start=False, **cls.conf)
        cls.d.set_exempt([EXEMPT_SPELLED, EXEMPT_UK])
        cls.d.start()

    def setUp(self):
        self.d.ensure_running()

    def reserve(self, phone=None, user=None, action="enrollment"):
        """Reserve phone (fresh by default) for user; return (phone, user)."""
        phone = phone or fresh_number()
        user = user or fresh_user()
        self.assertReserved(self.d.claim(phone, user, action), self.ttl)
        return phone, user

    def assertHeld(self, phone, holder=None):
        """Another user's enrolment on phone answers 409 taken."""
        reply = self.d.claim(phone, fresh_user(), "enrollment")
        self.assertTaken(reply)
        if holder:
            self.assertNotIn(holder.encode(), reply.raw)

    def assertFree(self, phone):
        """Another user can reserve phone (this takes it)."""
        self.reserve(phone)


class EnrollmentTests(ClaimsCase):

    def test_fresh_number_is_reserved_for_pending_ttl(self):
        reply = self.d.claim(fresh_number(), fresh_user(), "enrollment")
        self.assertReserved(reply, DEFAULT_TTL)

    def test_same_user_enrolling_again_owns_it(self):
        phone, user = self.reserve()
        self.assertResult(self.d.claim(phone, user, "enrollment"), "owned")

    def test_other_user_is_refused_without_naming_the_holder(self):
        phone, holder = self.reserve()
        self.assertHeld(phone, holder)

    def test_absent_action_means_enrollment(self):
        phone, user = fresh_number(), fresh_user()
        self.assertReserved(self.d.claim(phone, user), DEFAULT_TTL)
        self.assertTaken(self.d.claim(phone, fresh_user()))
        self.assertResult(self.d.claim(phone, user), "owned")

    def test_otp_enroll_is_enrollment(self):
        phone, user = fresh_number(), fresh_user()
        self.assertReserved(self.d.claim(phone, user, "otp_enroll"),
                            DEFAULT_TTL)
        self.assertTaken(self.d.claim(phone, fresh_user(), "otp_enroll"))
        self.assertResult(self.d.claim(phone, user, "otp_enroll"), "owned")

    def test_new_reservation_releases_the_users_pending_one(self):
        first, user = self.reserve()
        second, _ = self.reserve(user=user)
        self.assertFree(first)
        self.assertHeld(second)

    def test_new_reservation_keeps_the_users_active_claim(self):
        first, user = self.reserve()
        self.assertResult(self.d.claim(first, user,
                                       "second-factor-authentication"),
                          "owned")
        second, _ = self.reserve(user=user)
        self.assertHeld(first)
        self.assertHeld(second)

    def test_refused_enrollment_keeps_the_users_pending_claim(self):
        taken, _ = self.reserve()
        mine, user = self.reserve()
        self.assertTaken(self.d.claim(taken, user, "enrollment"))
        self.assertHeld(mine)
        self.assertResult(self.d.claim(mine, user, "enrollment"), "owned")

    def test_owned_answer_keeps_the_claim(self):
        phone, user = self.reserve()
        self.assertResult(self.d.claim(phone, user, "enrollment"), "owned")
        self.assertHeld(phone)

    def test_exempt_number_is_exempt_for_every_user(self):
        for user in (fresh_user(), fresh_user(), fresh_user()):
            self.assertResult(self.d.claim(EXEMPT_E164, user, "enrollment"),
                              "exempt")
        self.assertResult(self.d.claim(EXEMPT_UK, fresh_user()), "exempt")

    def test_exempt_list_matches_other_spellings(self):
        for spelling in ("(201) 555-0100", "+1-201-555-0100",
                         "001 201 555 0100", "+44 07700 900999"):
            with self.subTest(spelling=spelling):
                self.assertResult(self.d.claim(spelling, fresh_user()),
                                  "exempt")

    def test_exempt_enrollment_keeps_the_users_pending_claim(self):
        mine, user = self.reserve()
        self.assertResult(self.d.claim(EXEMPT_E164, user, "enrollment"),
                          "exempt")
        self.assertHeld(mine)

    def test_uk_numbers_are_claimed_like_others(self):
        phone, user = self.reserve(fresh_uk_number())
        self.assertHeld(phone, user)


class ChallengeTests(ClaimsCase):

    def test_challenge_on_free_number_is_learned(self):
        phone, user = fresh_number(), fresh_user()
        self.assertResult(self.d.claim(phone, user,
                                       "second-factor-authentication"),
                          "learned")
        self.assertHeld(phone, user)
        self.assertResult(self.d.claim(phone, user, "enrollment"), "owned")

    def test_challenge_by_the_holder_is_owned(self):
        phone, user = self.reserve()
        self.assertResult(self.d.claim(phone, user,
                                       "second-factor-authentication"),
                          "owned")
        self.assertHeld(phone)

    def test_challenge_on_taken_number_is_a_conflict_not_409(self):
        phone, holder = self.reserve()
        reply = self.d.claim(phone, fresh_user(),
                             "second-factor-authentication")
        self.assertResult(reply, "conflict")
        self.assertNotIn(holder.encode(), reply.raw)

    def test_conflict_leaves_the_holder_in_place(self):
        phone, holder = self.reserve()
        self.assertResult(self.d.claim(phone, fresh_user(),
                                       "second-factor-authentication"),
                          "conflict")
        self.assertResult(self.d.claim(phone, holder, "enrollment"), "owned")
        self.assertHeld(phone)

    def test_otp_verify_is_a_challenge(self):
        phone, user = fresh_number(), fresh_user()
        self.assertResult(self.d.claim(phone, user, "otp_verify"), "learned")
        self.assertResult(self.d.claim(phone, user, "otp_verify"), "owned")
        self.assertResult(self.d.claim(phone, fresh_user(), "otp_verify"),
                          "conflict")

    def test_challenge_on_exempt_number_is_exempt(self):
        for action in ("second-factor-authentication", "otp_verify"):
            self.assertResult(self.d.claim(EXEMPT_E164, fresh_user(),
                                           action), "exempt")

    def test_learned_claim_survives_a_new_reservation(self):
        learned, user = fresh_number(), fresh_user()
        self.assertResult(self.d.claim(learned, user, "otp_verify"),
                          "learned")
        self.reserve(user=user)
        self.assertHeld(learned)


    def test_learning_a_number_keeps_the_users_pending_claim(self):
        pending, user = self.reserve()
        self.assertResult(self.d.claim(fresh_number(), user, "otp_verify"),
                          "learned")
        self.assertHeld(pending)
        self.assertResult(self.d.claim(pending, user), "owned")


class ExpiryTests(ClaimsCase):
    """pending_ttl = 1: expiry is seen after sleeping a little over 2 s."""

    conf = {"default_region": "US", "pending_ttl": 1}
    ttl = 1

    def sleep_past_ttl(self):
        time.sleep(2.2)

    def test_expired_pending_claim_is_free(self):
        phone, _ = self.reserve()
        self.sleep_past_ttl()
        self.assertFree(phone)

    def test_challenge_makes_a_pending_claim_permanent(self):
        phone, user = self.reserve()
        self.assertResult(self.d.claim(phone, user, "otp_verify"), "owned")
        self.sleep_past_ttl()
        self.assertHeld(phone)

    def test_learned_claim_does_not_expire(self):
        phone, user = fresh_number(), fresh_user()
        self.assertResult(self.d.claim(phone, user, "otp_verify"), "learned")
        self.sleep_past_ttl()
        self.assertHeld(phone)


class MonitorModeTests(ClaimsCase):

    conf = {"default_region": "US", "mode": "monitor"}

    def test_taken_is_answered_200_not_enforced(self):
        phone, holder = self.reserve()
        reply = self.d.claim(phone, fresh_user(), "enrollment")
        self.assertJsonReply(reply, 200,
                             {"result": "taken", "enforced": False})
        self.assertNotIn(holder.encode(), reply.raw)

    def test_refused_enrollment_stores_nothing(self):
        phone, holder = self.reserve()
        other = fresh_user()
        self.d.claim(phone, other, "enrollment")
        self.assertResult(self.d.claim(phone, holder, "enrollment"), "owned")
        self.assertJsonReply(self.d.claim(phone, other, "enrollment"), 200,
                             {"result": "taken", "enforced": False})

    def test_challenge_is_still_a_conflict(self):
        phone, _ = self.reserve()
        self.assertResult(self.d.claim(phone, fresh_user(), "otp_verify"),
                          "conflict")


class ReservationCapTests(ClaimsCase):
    """max_reservations_per_user = 3: new numbers one user may ask for."""

    conf = {"default_region": "US", "max_reservations_per_user": 3}

    def assertLimited(self, reply):
        self.assertEqual(reply.status, 429, str(reply))
        self.assertJsonType(reply)
        self.assertEqual(sorted(reply.json), ["result", "retry_after"],
                         str(reply))
        self.assertEqual(reply.json["result"], "limited", str(reply))
        wait = reply.json["retry_after"]
        self.assertTrue(3590 <= wait <= 3600, str(reply))
        self.assertEqual(reply.headers.get("Retry-After"), str(wait))

    def test_fourth_new_number_is_refused_and_left_free(self):
        user = fresh_user()
        for _ in range(3):
            self.reserve(user=user)
        phone = fresh_number()
        self.assertLimited(self.d.claim(phone, user, "enrollment"))
        self.assertFree(phone)

    def test_numbers_refused_as_taken_count_too(self):
        held, _ = self.reserve()
        user = fresh_user()
        for _ in range(3):
            self.assertTaken(self.d.claim(held, user, "enrollment"))
        # Asking again for a number already refused counts again: the
        # answer tells whether it is taken, so each one is a probe.
        self.assertLimited(self.d.claim(held, user, "enrollment"))
        self.assertLimited(self.d.claim(fresh_number(), user, "enrollment"))

    def test_numbers_the_user_holds_do_not_count(self):
        phone, user = self.reserve()
        for _ in range(5):
            self.assertResult(self.d.claim(phone, user, "enrollment"),
                              "owned")
        self.reserve(user=user)
        self.reserve(user=user)
        self.assertLimited(self.d.claim(fresh_number(), user))

    def test_a_limited_user_still_owns_its_numbers(self):
        user = fresh_user()
        for _ in range(3):
            phone, _ = self.reserve(user=user)
        self.assertLimited(self.d.claim(fresh_number(), user))
        self.assertResult(self.d.claim(phone, user, "enrollment"), "owned")
        self.assertHeld(phone, user)

    def test_challenges_are_never_limited(self):
        user = fresh_user()
        for _ in range(3):
            self.reserve(user=user)
        self.assertResult(self.d.claim(fresh_number(), user, "otp_verify"),
                          "learned")

    def test_other_users_are_not_affected(self):
        user = fresh_user()
        for _ in range(3):
            self.reserve(user=user)
        self.assertLimited(self.d.claim(fresh_number(), user))
        self.reserve()

    def test_the_count_survives_a_restart(self):
        user = fresh_user()
        for _ in range(3):
            self.reserve(user=user)
        self.d.stop()
        self.d.start()
        self.assertLimited(self.d.claim(fresh_number(), user))
        self.d.kill()
        self.d.start()
        self.assertLimited(self.d.claim(fresh_number(), user))

    def test_refusals_are_in_the_metrics(self):
        user = fresh_user()
        for _ in range(3):
            self.reserve(user=user)
        self.assertLimited(self.d.claim(fresh_number(), user))
        text = self.d.request("GET", "/metrics").raw.decode()
        self.assertRegex(text, r'phoneclaimd_requests_total\{endpoint='
                         r'"claims",code="429"\} [1-9]')


class ReservationCapMonitorTests(ClaimsCase):

    conf = {"default_region": "US", "max_reservations_per_user": 2,
            "mode": "monitor"}

    def test_over_the_cap_is_answered_200_and_stores_nothing(self):
        user = fresh_user()
        self.reserve(user=user)
        self.reserve(user=user)
        phone = fresh_number()
        self.assertJsonReply(self.d.claim(phone, user, "enrollment"), 200,
                             {"result": "limited", "enforced": False})
        self.assertFree(phone)


class NoReservationCapTests(ClaimsCase):

    conf = {"default_region": "US", "max_reservations_per_user": 0}

    def test_zero_means_no_cap(self):
        user = fresh_user()
        for _ in range(15):
            self.reserve(user=user)


class TwoUsersPerNumberTests(ClaimsCase):

    conf = {"default_region": "US", "max_users_per_number": 2}

    def test_third_user_is_refused(self):
        phone, first = self.reserve()
        _, second = self.reserve(phone)
        reply = self.d.claim(phone, fresh_user(), "enrollment")
        self.assertTaken(reply)
        self.assertNotIn(first.encode(), reply.raw)
        self.assertNotIn(second.encode(), reply.raw)

    def test_both_holders_own_it(self):
        phone, first = self.reserve()
        _, second = self.reserve(phone)
        self.assertResult(self.d.claim(phone, first), "owned")
        self.assertResult(self.d.claim(phone, second), "owned")

    def test_third_challenger_is_a_conflict(self):
        phone, _ = self.reserve()
        self.reserve(phone)
        self.assertResult(self.d.claim(phone, fresh_user(), "otp_verify"),
                          "conflict")

    def test_second_challenger_is_learned(self):
        phone, _ = self.reserve()
        self.assertResult(self.d.claim(phone, fresh_user(), "otp_verify"),
                          "learned")
        self.assertHeld(phone)


class SpellingTests(ClaimsCase):
    """Equivalent spellings of one number are one number (DESIGN section 3)."""

    def assertSameNumber(self, spellings):
        holder = fresh_user()
        self.assertReserved(self.d.claim(spellings[0], holder), DEFAULT_TTL)
        for spelling in spellings[1:]:
            with self.subTest(spelling=spelling):
                self.assertTaken(self.d.claim(spelling, fresh_user()))
                self.assertResult(self.d.claim(spelling, holder), "owned")

    def test_uk_trunk_zero_after_country_code(self):
        self.assertSameNumber(["+44 07700 900123", "+447700900123",
                               "+44 (0)7700 900123", "0044 7700 900123"])

    def test_german_trunk_zero_in_parentheses(self):
        self.assertSameNumber(["+49 (0)30 1234567", "+49301234567",
                               "0049 30 1234567", "+49 30 123 4567"])

    def test_italian_leading_zero_is_part_of_the_number(self):
        self.assertSameNumber(["+39 06 1234 5678", "+390612345678"])
        self.reserve("+39612345678")
        self.assertResult(self.d.claim("+39 6 1234 5678", fresh_user()),
                          "taken", 409)

    def test_national_format_uses_default_region(self):
        self.assertSameNumber(["(201) 555-0123", "+12015550123",
                               "201-555-0123", "1 201 555 0123",
                               "001 201 555 0123"])

    def test_punctuation_does_not_matter(self):
        phone = fresh_number()
        body = phone[2:]
        self.assertSameNumber([
            phone,
            "+1 (%s) %s-%s" % (body[:3], body[3:6], body[6:]),
            "+1.%s.%s.%s" % (body[:3], body[3:6], body[6:]),
            "+1/%s/%s" % (body[:3], body[3:]),
            "  +1 %s %s %s" % (body[:3], body[3:6], body[6:]),
        ])


class NoDefaultRegionTests(ClaimsCase):

    conf = {}

    def test_national_number_is_invalid_without_default_region(self):
        phone = fresh_number()
        self.assertError(self.d.claim(phone[2:], fresh_user()), 400,
                         "invalid_phone_number")
        self.assertFree(phone)

    def test_international_numbers_need_no_region(self):
        phone, user = self.reserve()
        self.assertTaken(self.d.claim("00" + phone[1:], fresh_user()))


class ErrorTests(ClaimsCase):
    """Each bad request gets its error and changes nothing (I6)."""

    def assertChangesNothing(self, send_bad):
        """Run send_bad(user, phone) between probes of the user's claims.

        The user holds a pending claim before; afterwards it is still held,
        and phone (a fresh number the bad request names) is still free.
        Return the bad request's reply.
        """
        self.d.ensure_running()
        held, user = self.reserve()
        phone = fresh_number()
        reply = send_bad(user, phone)
        self.assertHeld(held)
        self.assertFree(phone)
        return reply

    def assertBadBodies(self, make_body, status, code):
        """Bodies from make_body(user, phone) answer status {error: code}."""
        def send(user, phone):
            return self.d.post_claims(make_body(user, phone))
        reply = self.assertChangesNothing(send)
        self.assertError(reply, status, code)

    # invalid_json

    def test_bodies_that_are_not_one_json_object(self):
        def ok(user, phone):
            return claim_body(phone, user, "enrollment")
        cases = {
            "empty": lambda u, p: b"",
            "form encoded": lambda u, p: ("phone_number=%s&user_id=%s" %
                                          (p, u)).encode(),
            "truncated": lambda u, p: ok(u, p)[:-1],
            "trailing garbage": lambda u, p: ok(u, p) + b" x",
            "two objects": lambda u, p: ok(u, p) + ok(u, p),
            "array": lambda u, p: b"[" + ok(u, p) + b"]",
            "string": lambda u, p: json.dumps(ok(u, p).decode()).encode(),
            "number": lambda u, p: p[1:].encode(),
            "null": lambda u, p: b"null",
            "true": lambda u, p: b"true",
            "single quotes": lambda u, p: ok(u, p).replace(b'"', b"'"),
            "trailing comma": lambda u, p: ok(u, p)[:-1] + b",}",
            "unquoted keys": lambda u, p: ("{phone_number: \"%s\", "
                                           "user_id: \"%s\"}" %
                                           (p, u)).encode(),
            "nested 40 deep": lambda u, p: (ok(u, p)[:-1] + b', "x": ' +
                                            b"[" * 40 + b"]" * 40 + b"}"),
        }
        for name, make in cases.items():
            with self.subTest(body=name):
                self.assertBadBodies(make, 400, "invalid_json")

    def test_trailing_whitespace_is_not_garbage(self):
        phone, user = fresh_number(), fresh_user()
        reply = self.d.post_claims(claim_body(phone, user) + b" \r\n\t\n")
        self.assertReserved(reply, DEFAULT_TTL)

    def test_invalid_utf8_is_refused(self):
        def body(user, phone):
            return claim_body(phone, "@", "enrollment").replace(
                b'"@"', b'"' + user.encode() + b'\xff\xfe"')
        reply = self.assertChangesNothing(
            lambda u, p: self.d.post_claims(body(u, p)))
        self.assertEqual(reply.status, 400, str(reply))
        self.assertIn(reply.get("error"), ("invalid_json", "invalid_user_id"),
                      str(reply))

    # invalid_phone_number

    def test_phone_numbers_that_are_refused(self):
        cases = {
            "missing": lambda p: ABSENT,
            "null": lambda p: None,
            "JSON number": lambda p: int(p[1:]),
            "array": lambda p: [p],
            "object": lambda p: {"number": p},
            "boolean": lambda p: True,
            "empty": lambda p: "",
            "spaces": lambda p: "   ",
            "plus only": lambda p: "+",
            "letters": lambda p: "abc",
            "vanity letters": lambda p: p[:-4] + "CALL",
            "extension": lambda p: p + " ext 7",
            "tel URI": lambda p: "tel:" + p,
            "too many digits": lambda p: p + "12345678",
            "too long for its country": lambda p: p + "123",
            "very long": lambda p: "+" + "1" * 70,
            "too short": lambda p: "+1 2",
            "too short UK": lambda p: "+44 1",
            "truncated": lambda p: p[:-2],
            "unknown country code": lambda p: "+999 12345678",
            "country code zero": lambda p: "+0" + p[2:],
            "plus inside": lambda p: p[:5] + "+" + p[5:],
            "two plus signs": lambda p: "+" + p,
            "newline": lambda p: p[:5] + "\n" + p[5:],
            "tab": lambda p: p[:5] + "\t" + p[5:],
            "escape": lambda p: p + "\x1b",
            "DEL": lambda p: p[:5] + "\x7f" + p[5:],
            "non-ASCII": lambda p: p + "\u00e9",
        }
        for name, make in cases.items():
            with self.subTest(phone_number=name):
                reply = self.assertChangesNothing(
                    lambda u, p: self.d.claim(make(p), u, "enrollment"))
                self.assertError(reply, 400, "invalid_phone_number")

    # invalid_user_id

    def test_user_ids_that_are_refused(self):
        cases = {
            "missing": ABSENT,
            "null": None,
            "number": 42,
            "array": ["auth0|abc"],
            "object": {"id": "auth0|abc"},
            "boolean": False,
            "empty": "",
            "513 bytes": "a" * 513,
            "514 bytes of two-byte characters": "\u00e9" * 257,
            "SOH": "auth0|\x01abc",
            "newline": "auth0|abc\n",
            "carriage return": "auth0|a\rb",
            "tab": "auth0|a\tb",
            "unit separator": "auth0|abc\x1f",
        }
        for name, bad_user in cases.items():
            with self.subTest(user_id=name):
                reply = self.assertChangesNothing(
                    lambda u, p: self.d.claim(p, bad_user, "enrollment"))
                self.assertError(reply, 400, "invalid_user_id")

    def test_nul_characters_are_refused(self):
        # "\u0000" is valid JSON; the daemon may refuse it while parsing
        # (its JSON tree keeps strings NUL-terminated) or as a bad field.
        cases = (("phone_number", "invalid_phone_number",
                  lambda u, p: self.d.claim(p[:5] + "\x00" + p[5:], u)),
                 ("user_id", "invalid_user_id",
                  lambda u, p: self.d.claim(p, "auth0|a\x00b")),
                 ("action", "invalid_action",
                  lambda u, p: self.d.claim(p, u, "enrollment\x00")))
        for member, code, send in cases:
            with self.subTest(member=member):
                reply = self.assertChangesNothing(send)
                self.assertEqual(reply.status, 400, str(reply))
                self.assertJsonType(reply)
                self.assertIn(reply.json, ({"error": code},
                                           {"error": "invalid_json"}),
                              str(reply))

    def test_user_ids_up_to_512_bytes_of_utf8_are_accepted(self):
        for user in ("a" * 512, "\u00e9" * 256, "auth0|\u540d\u524d-\u00fc",
                     "google-oauth2|1234567890", "x"):
            with self.subTest(user_id=user[:20]):
                phone = fresh_number()
                self.assertReserved(self.d.claim(phone, user), DEFAULT_TTL)
                self.assertResult(self.d.claim(phone, user), "owned")

    # invalid_action

    def test_actions_that_are_refused(self):
        cases = ["enroll", "ENROLLMENT", "Enrollment", "", " enrollment",
                 "second_factor_authentication", "login", "otp", 1, True,
                 None, ["enrollment"], {"type": "enrollment"}]
        for bad_action in cases:
            with self.subTest(action=bad_action):
                reply = self.assertChangesNothing(
                    lambda u, p: self.d.claim(p, u, bad_action))
                self.assertError(reply, 400, "invalid_action")

    # unauthorized

    def test_wrong_authorization_is_401(self):
        token = self.d.api_token
        basic = base64.b64encode((":" + token).encode()).decode()
        cases = {
            "missing": None,
            "wrong token": "Bearer wrong-" + token[6:],
            "upper case": "Bearer " + token.upper(),
            "two spaces": "Bearer  " + token,
            "shorter": "Bearer " + token[:-1],
            "longer": "Bearer " + token + "x",
            "token twice": "Bearer " + token + " " + token,
            "basic": "Basic " + basic,
            "basic with token": "Basic " + token,
            "no scheme": token,
            "scheme only": "Bearer",
            "log stream token": self.d.log_stream_token,
        }
        for name, value in cases.items():
            with self.subTest(authorization=name):
                def send(user, phone):
                    headers = {} if value is None else {"Authorization":
                                                        value}
                    return self.d.request("POST", "/v1/claims",
                                          claim_body(phone, user), headers)
                reply = self.assertChangesNothing(send)
                self.assertError(reply, 401, "unauthorized")

    def test_token_is_checked_before_the_body(self):
        for body in (b"not json", b"", b"[]",
                     claim_body("abc", fresh_user()),
                     claim_body(fresh_number(), "")):
            with self.subTest(body=body[:30]):
                self.assertError(self.d.post_claims(body, token="wrong"), 401,
                                 "unauthorized")

    def test_errors_answer_json_on_a_kept_alive_connection(self):
        with self.d.client() as c:
            self.assertError(c.claim("abc", fresh_user()), 400,
                             "invalid_phone_number")
            self.assertError(c.claim(fresh_number(), fresh_user(),
                                     token="wrong"), 401, "unauthorized")
            self.assertReserved(c.claim(fresh_number(), fresh_user()),
                                DEFAULT_TTL)


class RoutingTests(ClaimsCase):

    def auth(self):
        return {"Authorization": "Bearer " + self.d.api_token}

    def test_healthz(self):
        self.assertJsonReply(self.d.request("GET", "/healthz"), 200,
                             {"status": "ok"})

    def test_post_healthz_is_405(self):
        self.assertError(self.d.request("POST", "/healthz", b"{}",
                                        self.auth()),
                         405, "method_not_allowed")

    def test_other_methods_on_claims_are_405(self):
        for method in ("GET", "PUT", "DELETE"):
            with self.subTest(method=method):
                phone = fresh_number()
                body = None if method == "GET" else claim_body(phone,
                                                               fresh_user())
                self.assertError(self.d.request(method, "/v1/claims", body,
                                                self.auth()),
                                 405, "method_not_allowed")
                self.assertFree(phone)

    def test_unknown_paths_are_404(self):
        for method, path in (("GET", "/"), ("POST", "/v1/claim"),
                             ("POST", "/v1/claims/extra"),
                             ("POST", "/v2/claims"), ("GET", "/healthz/x"),
                             ("GET", "/nope")):
            with self.subTest(path=path):
                phone = fresh_number()
                body = claim_body(phone, fresh_user()) \
                    if method == "POST" else None
                self.assertError(self.d.request(method, path, body,
                                                self.auth()),
                                 404, "not_found")
                self.assertFree(phone)

    def test_many_requests_on_one_connection(self):
        with self.d.client() as c:
            for _ in range(20):
                self.assertReserved(c.claim(fresh_number(), fresh_user()),
                                    DEFAULT_TTL)
            self.assertJsonReply(c.request("GET", "/healthz"), 200,
                                 {"status": "ok"})


class PrivacyTests(ClaimsCase):
    """I5: no phone number or token in the debug log or the state files."""

    conf = {"default_region": "US", "log_level": "debug"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.workload()

    @classmethod
    def workload(cls):
        """Exercise every answer, with several spellings."""
        d = cls.d
        users = [fresh_user() for _ in range(4)]
        for _ in range(5):
            phone = fresh_number()
            d.claim(phone, users[0])
            d.claim(phone, users[0])
            d.claim(phone, users[1])
            d.claim(phone, users[1], "otp_verify")
            d.claim(phone, users[0], "second-factor-authentication")
        for phone in (fresh_number(), fresh_uk_number()):
            d.claim(phone, users[2], "otp_verify")
        spelled = fresh_number()
        d.claim("(%s) %s-%s" % (spelled[2:5], spelled[5:8], spelled[8:]),
                users[3])
        d.claim("+44 07700 900123", fresh_user())
        d.claim(EXEMPT_SPELLED, fresh_user())
        for bad in (fresh_number() + "99999", fresh_number() + " ext 12",
                    "+999 87654321", fresh_number()[:-1] + "\n"):
            d.claim(bad, fresh_user())
        d.claim(fresh_number(), "", "enrollment")
        d.claim(fresh_number(), fresh_user(), "bogus")
        d.claim(fresh_number(), fresh_user(), token=d.api_token + "x")
        d.request("GET", "/healthz")
        cls.d.send_signal(signal.SIGHUP)
        d.wait_for_log(r"reloaded", 0, timeout=5)

    def leaks(self, text):
        """Return the phone numbers and tokens found in text."""
        found = []
        runs = re.findall(r"[0-9]{8,}", text)
        for sent in set(self.d.sent_numbers):
            dig = harness.digits(sent)
            if len(dig) < 8:
                continue
            if sent in text or any(dig[-8:] in run for run in runs):
                found.append(sent)
        for token in (self.d.api_token, self.d.log_stream_token,
                      self.d.log_stream_token.split()[-1]):
            if token in text:
                found.append("token " + token[:8] + "...")
        return found

    def test_workload_was_logged_at_debug_level(self):
        self.assertIn("phoneclaimd: debug:", self.d.log_text(),
                      "no debug lines: the privacy check proves little")

    def test_log_has_no_phone_numbers_or_tokens(self):
        self.assertGreater(len(self.d.sent_numbers), 20)
        leaked = self.leaks(self.d.log_text())
        self.assertEqual(leaked, [], "found in %s" % self.d.log_path)

    def test_state_files_have_no_phone_numbers(self):
        checked = 0
        for top, _, files in os.walk(self.d.state_dir):
            for name in files:
                path = os.path.join(top, name)
                with open(path, "rb") as f:
                    text = f.read().decode("latin-1")
                checked += 1
                self.assertEqual(self.leaks(text), [], "found in " + path)
        self.assertGreater(checked, 0, "state_dir is empty")

    def test_hash_key_is_32_private_bytes(self):
        path = os.path.join(self.d.state_dir, "hash.key")
        st = os.stat(path)
        self.assertEqual(st.st_size, 32, path)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, path)


if __name__ == "__main__":
    unittest.main()
