"""
Alerting rules and dashboard (issue 20, point 4):
conf/prometheus/phoneclaimd.rules.yml and conf/grafana/phoneclaimd.json.

promtool (Debian's prometheus package) checks the rules and runs the unit
tests in tests/prometheus/phoneclaimd.test.yml, where every alert fires on
the series that should raise it and a healthy daemon raises none; without
promtool those two tests are skipped with a message.  The other tests need
nothing: every series the rules and the dashboard use is one the daemon
exports (daemon/metrics.c), every alert has a summary and a runbook
section in docs/alerts.md and a unit test, and the rules cover what the
issue names.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import unittest

TOP = os.environ.get("TOP_SRCDIR")
if not TOP:
    print("TOP_SRCDIR is not set: skipping (run through make check)",
          file=sys.stderr)
    sys.exit(77)

RULES = os.path.join(TOP, "conf/prometheus/phoneclaimd.rules.yml")
RULE_TESTS = os.path.join(TOP, "tests/prometheus/phoneclaimd.test.yml")
DASHBOARD = os.path.join(TOP, "conf/grafana/phoneclaimd.json")
RUNBOOK = os.path.join(TOP, "docs/alerts.md")
METRICS_C = os.path.join(TOP, "daemon/metrics.c")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def families():
    """The metric families the daemon exports, with their prefix."""
    names = re.findall(r'metrics_(?:family|one)\(\s*\w+\s*,\s*"(\w+)"',
                       read(METRICS_C))
    return {"phoneclaimd_" + n for n in names}


def series_in(text):
    """phoneclaimd_* names in text, histogram suffixes removed."""
    out = set()
    for name in re.findall(r"\bphoneclaimd_[a-z0-9_]+", text):
        out.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return out


def alerts():
    """[(name, block of text)] for each alert of the rules file."""
    text = read(RULES)
    parts = re.split(r"(?m)^\s*- alert: ", text)[1:]
    return [(p.split("\n", 1)[0].strip(), p) for p in parts]


class RuleTests(unittest.TestCase):

    def promtool(self, *args):
        tool = shutil.which("promtool")
        if tool is None:
            self.skipTest("promtool not found (Debian package prometheus): "
                          "the rules are not checked")
        r = subprocess.run([tool] + list(args), capture_output=True,
                           text=True, timeout=120,
                           cwd=os.path.dirname(RULE_TESTS))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def test_promtool_check_rules(self):
        out = self.promtool("check", "rules", RULES)
        self.assertIn("SUCCESS: %d rules found" % len(alerts()), out)

    def test_promtool_test_rules(self):
        self.assertIn("SUCCESS", self.promtool("test", "rules", RULE_TESTS))

    def test_every_series_is_exported(self):
        known = families()
        self.assertIn("phoneclaimd_store_ok", known)
        used = series_in(read(RULES))
        self.assertEqual(sorted(used - known), [],
                         "the rules use series the daemon does not export")

    def test_every_alert_has_a_summary_a_runbook_and_a_test(self):
        runbook = read(RUNBOOK)
        tests = read(RULE_TESTS)
        names = [n for n, _ in alerts()]
        self.assertEqual(len(names), len(set(names)))
        for name, block in alerts():
            with self.subTest(alert=name):
                self.assertRegex(block, r"\n\s+summary: \S")
                self.assertRegex(block, r"\n\s+description: \S")
                self.assertRegex(block, r"\n\s+severity: (critical|warning)")
                self.assertIn('runbook: "docs/alerts.md#%s"' % name.lower(),
                              block)
                self.assertRegex(runbook, r"(?m)^### %s$" % name)
                # A test where it fires (exp_alerts with labels).
                self.assertRegex(tests, r"alertname: %s\n\s+exp_alerts:\n"
                                        r"\s+- exp_labels" % name)

    def test_the_rules_cover_what_an_operator_must_act_on(self):
        exprs = "\n".join(block.split("labels:")[0] for _, block in alerts())
        for needed in ("phoneclaimd_store_ok == 0",
                       "phoneclaimd_last_event_age_seconds",
                       'endpoint="claims"',
                       "phoneclaimd_backfill_state == 3",
                       "phoneclaimd_conflicts",
                       "phoneclaimd_verify_failures_total",
                       "phoneclaimd_reconcile_failures_total",
                       "phoneclaimd_repl_master",
                       "phoneclaimd_repl_lag_records",
                       'code="429"',
                       'code=~"5.."'):
            self.assertIn(needed, exprs)


class DashboardTests(unittest.TestCase):

    def test_dashboard(self):
        d = json.loads(read(DASHBOARD))
        self.assertEqual(d["uid"], "phoneclaimd")
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
        self.assertGreaterEqual(len(d["panels"]), 10)
        self.assertTrue(all(exprs))
        used = series_in("\n".join(exprs))
        self.assertEqual(sorted(used - families()), [],
                         "the dashboard uses series the daemon does not "
                         "export")
        for needed in ("phoneclaimd_requests_total",
                       "phoneclaimd_request_duration_seconds",
                       "phoneclaimd_claims", "phoneclaimd_conflicts",
                       "phoneclaimd_events_total",
                       "phoneclaimd_last_event_age_seconds",
                       "phoneclaimd_repl_role"):
            self.assertIn(needed, used)
        names = [v["name"] for v in d["templating"]["list"]]
        self.assertEqual(names, ["datasource", "job", "instance"])


if __name__ == "__main__":
    unittest.main()
