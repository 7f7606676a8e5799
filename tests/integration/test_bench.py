"""
The benchmark program (issue 7, point 1) works: a --quick run with
--baseline starts its own daemon and baseline server, exits 0 and ends with
one JSON line holding every figure; --target runs against a daemon started
here; answers that do not match the request mix and targets other than
loopback make it fail; --scale loads a store with bench-load and reports
its disk, start-up, memory and latency figures.  The figures themselves are
not judged here, beyond being sane: make bench and make bench-scale
measure, make check only proves that the program runs.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

import harness
from harness import DaemonTestCase, check_reservations, write_secret

harness.require_daemon()

BENCH = os.environ.get("BENCH")
if not BENCH:
    print("BENCH is not set: skipping (run the tests through make check)",
          file=sys.stderr)
    sys.exit(77)

LEVELS = ("keepalive_1", "keepalive_8", "keepalive_32", "keepalive_128",
          "new_conn_32")
FIGURES = ("requests", "seconds", "rps", "p50_ms", "p99_ms", "p999_ms",
           "client_cpu_pct")
RUN_TIMEOUT = 180	# seconds; a quick run takes a few


class BenchTests(DaemonTestCase):

    def bench(self, *args, tmpdir=None):
        """Run the bench; return (exit status, stdout, stderr)."""
        env = dict(os.environ)
        if tmpdir is not None:
            env["TMPDIR"] = tmpdir
        try:
            out = subprocess.run([BENCH] + list(args),
                                 stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True,
                                 errors="replace", timeout=RUN_TIMEOUT,
                                 env=env)
        except subprocess.TimeoutExpired:
            self.fail("bench did not finish within %d s" % RUN_TIMEOUT)
        return out.returncode, out.stdout, out.stderr

    def last_json(self, stdout):
        """Parse the final line of the output as a JSON object."""
        lines = stdout.rstrip("\n").split("\n")
        try:
            result = json.loads(lines[-1])
        except ValueError:
            self.fail("the last line is not JSON:\n" + stdout[-2000:])
        self.assertIsInstance(result, dict)
        return result

    def assertLevels(self, section, what):
        self.assertEqual(sorted(section), sorted(LEVELS), what)
        for level in LEVELS:
            fig = section[level]
            self.assertEqual(sorted(fig), sorted(FIGURES),
                             "%s %s" % (what, level))
            self.assertGreater(fig["rps"], 0, "%s %s" % (what, level))
            self.assertGreater(fig["requests"], 0, "%s %s" % (what, level))
            self.assertTrue(0 < fig["p50_ms"] <= fig["p99_ms"] <=
                            fig["p999_ms"], "%s %s: %r" % (what, level, fig))

    def assertLogStream(self, result, batches):
        ls = result["log_stream"]
        self.assertGreater(ls["events_per_s"], 0)
        self.assertEqual(ls["batches"], batches)
        self.assertEqual(ls["batch_size"], 1000)
        self.assertEqual(ls["received"], batches * 1000)
        self.assertEqual(ls["rejected"], 0)
        self.assertGreater(ls["applied"], 0)
        self.assertGreater(ls["duplicates"], 0)
        self.assertGreater(ls["ignored"], 0)

    def test_quick_with_baseline(self):
        with tempfile.TemporaryDirectory(prefix="pcd-bench-") as tmp:
            rc, out, err = self.bench("--daemon", harness.require_daemon(),
                                      "--quick", "--baseline", tmpdir=tmp)
            self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s" %
                             (out[-3000:], err[-3000:]))
            # The daemon's directory is removed without --keep.
            self.assertEqual(os.listdir(tmp), [])
        result = self.last_json(out)
        self.assertEqual(sorted(result), ["baseline", "claims", "duration_s",
                                          "log_stream", "mismatches", "ok",
                                          "quick", "ratio"])
        self.assertIs(result["ok"], True)
        self.assertIs(result["quick"], True)
        self.assertEqual(result["mismatches"], 0)
        self.assertLevels(result["claims"], "claims")
        self.assertLevels(result["baseline"], "baseline")
        self.assertEqual(sorted(result["ratio"]), sorted(LEVELS))
        for level in LEVELS:
            self.assertGreater(result["ratio"][level], 0, level)
        self.assertLogStream(result, 2)

    def test_scale(self):
        """--scale loads claims with bench-load and measures the store."""
        with tempfile.TemporaryDirectory(prefix="pcd-bench-") as tmp:
            rc, out, err = self.bench("--daemon", harness.require_daemon(),
                                      "--scale", "20000", "--quick",
                                      tmpdir=tmp)
            self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s" %
                             (out[-3000:], err[-3000:]))
            self.assertEqual(os.listdir(tmp), [])
        result = self.last_json(out)
        self.assertEqual(sorted(result), ["duration_s", "mismatches", "ok",
                                          "quick", "scale"])
        self.assertIs(result["ok"], True)
        self.assertEqual(result["mismatches"], 0)
        self.assertEqual(sorted(result["scale"]), ["20000"])
        sc = result["scale"]["20000"]
        self.assertEqual(sc["claims"], 20000)
        for key in ("db_bytes_per_claim", "db_alloc_bytes_per_claim"):
            self.assertTrue(50 <= sc[key] <= 2000, "%s %r" % (key, sc))
        self.assertGreater(sc["log_bytes"], 0)
        self.assertGreater(sc["dir_bytes"], sc["db_bytes"])
        self.assertIn("numbers.db", sc["files"])
        self.assertEqual(sum(sc["files"].values()), sc["db_bytes"])
        for key in ("start_s", "restart_s", "load_s", "load_per_s",
                    "rss_kb_start", "rss_kb_after", "hwm_kb"):
            self.assertGreater(sc[key], 0, "%s %r" % (key, sc))
        self.assertGreaterEqual(sc["hwm_kb"], sc["rss_kb_after"])
        for level in ("keepalive_1", "keepalive_32"):
            fig = sc[level]
            self.assertEqual(sorted(fig), sorted(FIGURES), level)
            self.assertGreater(fig["rps"], 0, level)
            self.assertTrue(0 < fig["p50_ms"] <= fig["p99_ms"] <=
                            fig["p999_ms"], "%s: %r" % (level, fig))

    def test_scale_bad_sizes(self):
        for arg in ("0", "10,", "x", "-5", "200000000"):
            rc, out, err = self.bench("--daemon", harness.require_daemon(),
                                      "--scale", arg)
            self.assertEqual(rc, 1, arg)
            self.assertIn("--scale", err, arg)

    def test_target_running_daemon(self):
        d = self.own_daemon()
        rc, out, err = self.bench("--target", "127.0.0.1:%d" % d.port,
                                  "--token-file", d.api_token_file,
                                  "--log-token-file",
                                  d.log_stream_token_file,
                                  "--quick", "--batches", "3")
        self.assertEqual(rc, 0, "stdout:\n%s\nstderr:\n%s" %
                         (out[-3000:], err[-3000:]))
        result = self.last_json(out)
        self.assertNotIn("baseline", result)
        self.assertLevels(result["claims"], "claims")
        self.assertLogStream(result, 3)

    def test_kill_9_under_bench_load_loses_nothing(self):
        """I2 under the benchmark's own load: kill -9 the daemon while
        the keep-alive levels run; every reservation the bench saw
        acknowledged is held after a restart."""
        d = self.own_daemon(pending_ttl=3600)
        record = d.path("acked.csv")
        with open(d.path("bench.out"), "w") as out:
            proc = subprocess.Popen(
                [BENCH, "--target", "127.0.0.1:%d" % d.port,
                 "--token-file", d.api_token_file,
                 "--log-token-file", d.log_stream_token_file,
                 "--duration", "2", "--pool", "500", "--record", record],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            try:
                # Into the keep-alive levels: the pool is filled by then.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and (
                        not os.path.exists(record) or
                        os.path.getsize(record) == 0 or
                        "keepalive_1" not in open(d.path("bench.out")).read()):
                    time.sleep(0.1)
                time.sleep(1.5)
                d.kill()
                self.assertEqual(proc.wait(timeout=120), 1)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        d.start()
        with open(record) as f:
            acked = [tuple(line.rstrip("\n").split(",")) for line in f]
        self.assertGreater(len(acked), 500)
        self.assertEqual(check_reservations(d, acked)[:10], [])

    def test_wrong_answers_fail(self):
        d = self.own_daemon()
        wrong = d.path("wrong.token")
        write_secret(wrong, "not-the-token\n")
        rc, out, err = self.bench("--target", "127.0.0.1:%d" % d.port,
                                  "--token-file", wrong,
                                  "--log-token-file",
                                  d.log_stream_token_file, "--quick")
        self.assertEqual(rc, 1, out[-2000:])
        self.assertIn("expected 200 reserved, got 401", err)
        result = self.last_json(out)
        self.assertIs(result["ok"], False)
        self.assertGreater(result["mismatches"], 0)

    def test_only_loopback(self):
        with tempfile.TemporaryDirectory(prefix="pcd-bench-") as tmp:
            tok = os.path.join(tmp, "t")
            write_secret(tok, "x\n")
            for host in ("192.0.2.1:8080", "example.com:80", "0.0.0.0:80"):
                rc, out, err = self.bench("--target", host, "--token-file",
                                          tok, "--log-token-file", tok)
                self.assertEqual(rc, 1, host)
                self.assertIn("only 127.0.0.1, ::1 and localhost", err,
                              host)


if __name__ == "__main__":
    unittest.main()
