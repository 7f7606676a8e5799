"""
The process (DESIGN sections 6 and 7): command line, config errors (exit 2
with file:line:), signals (SIGTERM/SIGINT stop cleanly, SIGHUP reloads the
tokens and the exempt list) and the hash key.
"""

import os
import signal
import socket
import stat
import time
import unittest

import harness
from harness import DaemonTestCase, fresh_number, fresh_user, \
    write_file, write_secret

harness.require_daemon()

TTL = 600
STOP_LIMIT = 5.0


class ProcessCase(DaemonTestCase):

    def reserve(self, d, phone=None, user=None):
        phone = phone or fresh_number()
        user = user or fresh_user()
        self.assertReserved(d.claim(phone, user), TTL)
        return phone, user

    def assertHeld(self, d, phone):
        self.assertTaken(d.claim(phone, fresh_user()))

    def assertExits(self, d, signum, limit=STOP_LIMIT):
        """Send signum; assert exit status 0 within limit seconds."""
        start = time.monotonic()
        rc = d.stop(signum, timeout=limit)
        elapsed = time.monotonic() - start
        self.assertEqual(rc, 0, "exit status after signal %d; log:\n%s" %
                         (signum, d.tail()))
        self.assertLess(elapsed, limit)
        return elapsed


class CommandLineTests(ProcessCase):

    def test_version(self):
        r = self.new_daemon(start=False).run("-V")
        self.assertEqual((r.returncode, r.stdout),
                         (0, harness.VERSION_LINE + "\n"), r.stderr)

    def test_check_of_a_good_config_exits_0(self):
        d = self.new_daemon(start=False)
        r = d.run("-n", "-c", d.conf_path)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_check_of_a_full_config_exits_0(self):
        d = self.new_daemon(start=False, mode="monitor", pending_ttl=60,
                            max_users_per_number=2, default_region="GB",
                            max_body_size=4096, dedup_retention=86400,
                            log_level="debug", request_timeout=3600,
                            max_connections=10)
        d.conf["hash_key_file"] = d.path("hash.key")
        d.set_exempt(["+447700900999"])
        r = d.run("-n", "-c", d.conf_path)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_unknown_option_prints_usage_and_exits_2(self):
        r = self.new_daemon(start=False).run("-Z")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("usage", r.stderr.lower())

    def test_option_without_its_argument_exits_2(self):
        r = self.new_daemon(start=False).run("-c")
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_missing_config_file_exits_2(self):
        d = self.new_daemon(start=False)
        missing = d.path("nowhere.conf")
        r = d.run("-n", "-c", missing)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(missing, r.stderr)

    def test_token_file_without_newline_works(self):
        d = self.new_daemon(start=False)
        write_secret(d.api_token_file, d.api_token)
        d.start()
        self.reserve(d)
        self.assertError(d.claim(fresh_number(), fresh_user(),
                                 token=d.api_token[:-1]), 401,
                         "unauthorized")


class ConfigErrorTests(ProcessCase):
    """Each bad config exits 2 under -n and under -f, naming the place."""

    def assertRefused(self, d, *expected, modes=("-n", "-f")):
        """-n and -f both exit 2 with every expected string in stderr."""
        for mode in modes:
            with self.subTest(mode=mode):
                r = d.run(mode, "-c", d.conf_path)
                self.assertEqual(r.returncode, 2, r.stderr)
                for text in expected:
                    self.assertIn(text, r.stderr)

    def assertBadLine(self, key, value):
        """Config with key = value as its last line: refused at that line."""
        d = self.new_daemon(start=False)
        d.conf.pop(key, None)
        lines = d.conf_lines() + ["%s = %s" % (key, value)]
        d.write_conf(lines)
        self.assertRefused(d, "%s:%d:" % (d.conf_path, len(lines)))

    def test_unknown_key(self):
        self.assertBadLine("colour", "blue")

    def test_bad_numbers(self):
        for key, value in (("pending_ttl", "ten"), ("pending_ttl", "10s"),
                           ("max_body_size", "1e6"),
                           ("max_users_per_number", ""),
                           ("request_timeout", "2.5")):
            with self.subTest(line="%s = %s" % (key, value)):
                self.assertBadLine(key, value)

    def test_bad_enums(self):
        for key, value in (("mode", "strict"), ("mode", "ENFORCE"),
                           ("log_level", "verbose")):
            with self.subTest(line="%s = %s" % (key, value)):
                self.assertBadLine(key, value)

    def test_out_of_range_numbers(self):
        for key, value in (("request_timeout", "0"),
                           ("request_timeout", "3601"),
                           ("request_timeout", "-1"),
                           ("pending_ttl", "-5"),
                           ("max_body_size", "99999999999999999999999")):
            with self.subTest(line="%s = %s" % (key, value)):
                self.assertBadLine(key, value)

    def test_line_without_equals(self):
        d = self.new_daemon(start=False)
        lines = d.conf_lines() + ["pending_ttl 600"]
        d.write_conf(lines)
        self.assertRefused(d, "%s:%d:" % (d.conf_path, len(lines)))

    def test_unknown_default_region(self):
        self.assertBadLine("default_region", "XQ")

    def test_missing_required_keys(self):
        for key in ("api_token_file", "log_stream_token_file"):
            with self.subTest(key=key):
                d = self.new_daemon(start=False)
                del d.conf[key]
                d.write_conf()
                self.assertRefused(d, key)

    def test_token_files_readable_by_others(self):
        for key in ("api_token_file", "log_stream_token_file"):
            with self.subTest(key=key):
                d = self.new_daemon(start=False)
                os.chmod(d.conf[key], 0o644)
                self.assertRefused(d, d.conf[key])

    def test_token_file_readable_by_group(self):
        d = self.new_daemon(start=False)
        os.chmod(d.api_token_file, 0o640)
        self.assertRefused(d, d.api_token_file)

    def test_nonexistent_token_file(self):
        d = self.new_daemon(start=False)
        d.conf["api_token_file"] = d.path("no-such.token")
        d.write_conf()
        self.assertRefused(d, d.path("no-such.token"))

    def test_hash_key_readable_by_others(self):
        d = self.new_daemon(start=False)
        key = os.path.join(d.state_dir, "hash.key")
        write_secret(key, "k" * 32, 0o644)
        # -n need not read the hash key; starting must refuse it.
        self.assertRefused(d, key, modes=("-f",))

    def test_exempt_file_with_an_invalid_number(self):
        d = self.new_daemon(start=False)
        path = d.path("exempt.txt")
        write_file(path, "# test numbers\n+447700900999\nnot-a-number\n")
        d.conf["exempt_numbers_file"] = path
        d.write_conf()
        self.assertRefused(d, "%s:3:" % path)

    def test_nonexistent_exempt_file(self):
        d = self.new_daemon(start=False)
        d.conf["exempt_numbers_file"] = d.path("no-such-exempt.txt")
        d.write_conf()
        self.assertRefused(d, d.path("no-such-exempt.txt"))


class StopTests(ProcessCase):

    def test_sigterm_exits_0_and_keeps_reservations(self):
        d = self.own_daemon()
        phone, user = self.reserve(d)
        self.assertExits(d, signal.SIGTERM)
        d.start()
        self.assertHeld(d, phone)
        self.assertResult(d.claim(phone, user), "owned")

    def test_sigint_exits_0(self):
        d = self.own_daemon()
        phone, _ = self.reserve(d)
        self.assertExits(d, signal.SIGINT)
        d.start()
        self.assertHeld(d, phone)

    def test_sigterm_with_an_idle_client_connected(self):
        d = self.own_daemon()
        with d.client() as c:
            self.reserve(d)
            self.assertJsonReply(c.request("GET", "/healthz"), 200,
                                 {"status": "ok"})
            raw = harness.connect(d)
            try:
                self.assertExits(d, signal.SIGTERM)
            finally:
                raw.close()

    def test_sigterm_under_load_loses_no_answered_reservation(self):
        d = self.own_daemon()
        load = harness.Load(d, threads=4)
        acked = load.run(0.7, lambda: self.assertExits(d, signal.SIGTERM))
        self.assertEqual(load.unexpected[:5], [])
        self.assertGreater(len(acked), 0)
        d.start()
        self.assertEqual(harness.check_reservations(d, acked)[:10], [])

    def test_restart_after_many_reservations(self):
        d = self.own_daemon()
        held = [self.reserve(d)[0] for _ in range(50)]
        self.assertExits(d, signal.SIGTERM)
        d.start()
        with d.client() as c:
            for phone in held:
                self.assertTaken(c.claim(phone, fresh_user()))


class ReloadTests(ProcessCase):
    """SIGHUP reloads the token files and the exempt list."""

    def hup(self, d, expect=r"reloaded"):
        """Send SIGHUP and wait for a log line matching expect."""
        since = d.log_size()
        d.send_signal(signal.SIGHUP)
        m = d.wait_for_log(expect, since, timeout=5.0)
        self.assertIsNotNone(m, "no %r in the log after SIGHUP:\n%s" %
                             (expect, d.log_text(since)))

    def test_new_api_token_replaces_the_old(self):
        d = self.own_daemon()
        old = d.api_token
        new = "api-new-" + fresh_user()[6:]
        write_secret(d.api_token_file, new + "\n")
        self.reserve(d)		# not reloaded yet
        self.hup(d)
        self.assertError(d.claim(fresh_number(), fresh_user(), token=old),
                         401, "unauthorized")
        self.assertReserved(d.claim(fresh_number(), fresh_user(), token=new),
                            TTL)

    def test_token_file_readable_by_others_is_not_loaded(self):
        d = self.own_daemon()
        write_secret(d.api_token_file, "api-leaked\n", 0o644)
        self.hup(d, r"phoneclaimd: warning:")
        self.reserve(d)
        self.assertError(d.claim(fresh_number(), fresh_user(),
                                 token="api-leaked"), 401, "unauthorized")

    def test_missing_token_file_keeps_the_old_token(self):
        d = self.own_daemon()
        os.unlink(d.api_token_file)
        self.hup(d, r"phoneclaimd: warning:")
        self.reserve(d)
        self.assertJsonReply(d.request("GET", "/healthz"), 200,
                             {"status": "ok"})

    def test_exempt_list_is_reloaded(self):
        d = self.own_daemon(start=False)
        d.set_exempt(["+447700900999"])
        d.start()
        phone, holder = self.reserve(d)
        d.set_exempt(["+447700900999", phone])
        self.hup(d)
        self.assertResult(d.claim(phone, fresh_user()), "exempt")
        self.assertResult(d.claim("+447700900999", fresh_user()), "exempt")

    def test_bad_exempt_list_keeps_the_old_one(self):
        d = self.own_daemon(start=False)
        d.set_exempt(["+447700900999"])
        d.start()
        phone = fresh_number()
        d.set_exempt(["+447700900999", phone, "not-a-number"])
        self.hup(d, r"phoneclaimd: warning:")
        self.assertResult(d.claim("+447700900999", fresh_user()), "exempt")
        self.reserve(d, phone)

    def test_daemon_keeps_serving_across_reloads(self):
        d = self.own_daemon()
        with d.client() as c:
            for _ in range(3):
                self.hup(d)
                self.assertReserved(c.claim(fresh_number(), fresh_user()),
                                    TTL)


class HashKeyTests(ProcessCase):

    def test_hash_key_is_created_private_and_reused(self):
        d = self.own_daemon()
        path = os.path.join(d.state_dir, "hash.key")
        st = os.stat(path)
        self.assertEqual((st.st_size, stat.S_IMODE(st.st_mode)),
                         (32, 0o600), path)
        with open(path, "rb") as f:
            key = f.read()
        phone, _ = self.reserve(d)
        self.assertExits(d, signal.SIGTERM)
        d.start()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), key, "hash key changed on restart")
        self.assertHeld(d, phone)

    def test_hash_key_file_option(self):
        d = self.own_daemon(start=False)
        path = d.path("custom.key")
        d.conf["hash_key_file"] = path
        d.write_conf()
        d.start()
        st = os.stat(path)
        self.assertEqual((st.st_size, stat.S_IMODE(st.st_mode)),
                         (32, 0o600), path)
        self.assertFalse(os.path.exists(os.path.join(d.state_dir,
                                                     "hash.key")))
        self.reserve(d)

    def test_two_state_dirs_have_different_keys(self):
        keys = []
        for _ in range(2):
            d = self.own_daemon()
            with open(os.path.join(d.state_dir, "hash.key"), "rb") as f:
                keys.append(f.read())
        self.assertNotEqual(keys[0], keys[1])


class ListenTests(ProcessCase):

    def test_ipv6_loopback(self):
        if not harness.ipv6_loopback_available():
            self.skipTest("no ::1 on this machine")
        d = self.own_daemon(listen="[::1]:0")
        self.assertEqual(d.host, "::1")
        self.reserve(d)

    def test_busy_port_fails_at_start(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            d = self.new_daemon(start=False,
                                listen="127.0.0.1:%d" % busy.getsockname()[1])
            r = d.run("-f", "-c", d.conf_path)
        self.assertNotEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
