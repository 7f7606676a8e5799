"""
The documentation matches the code (issue 4, points 6 and 7).

- Every key of the parser's table (daemon/conf.c) is in phoneclaimd.conf(5)
  with its default and range, in conf/phoneclaimd.conf and in
  docs/operations.md;
  the conf page documents no key that the parser lacks.
- The sample configuration, with every key uncommented, passes
  "phoneclaimd -n".
- Every option in the usage of phoneclaimd and phoneclaimctl is in their
  pages, and the pages document no option the programs lack.
- Every status-socket command (DESIGN section 5) and import/export are in
  phoneclaimctl(8); every /metrics series of daemon/metrics.c is in
  phoneclaimd(8).
- Each page renders with man(1) without a warning.
- Every row of docs/security.md's table of attacks tried names a test,
  and every test it names exists (issue 18): its file, and its class and
  method (Python) or its function (C).
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import harness
from harness import write_file, write_secret

# DESIGN section 5, plus the two commands phoneclaimctl adds itself; the
# tests add those of the shared command table (daemon/commands.c) and of
# phoneclaimctl's usage.
SOCKET_COMMANDS = ("status", "lookup", "user", "conflicts", "release",
                   "claim", "help")
CTL_COMMANDS = ("import", "export")
# One entry of command_table[]: { "name", "args", min, max, ...
COMMAND_RE = re.compile(r'\{\s*"([a-z_]+)"\s*,\s*"[^"]*"\s*,\s*\d')
PAGES = ("man/phoneclaimd.8", "man/phoneclaimd.conf.5", "man/phoneclaimctl.8",
         "man/phoneclaimd-auth0-setup.8")

# One entry of conf_keys[]: { "name", CONF_TYPE, offsetof(struct conf, x),
# min, max, default or NULL, required }.
ENTRY_RE = re.compile(
    r'\{\s*"([a-z_0-9]+)"\s*,\s*(CONF_[A-Z_]+)\s*,\s*'
    r'offsetof\s*\(\s*struct\s+conf\s*,\s*\w+\s*\)\s*,\s*'
    r'(-?\d+)\s*,\s*(-?\d+)\s*,\s*(NULL|"[^"]*")\s*,\s*([01])\s*\}')
ENTRY_START_RE = re.compile(r'\{\s*"([a-z_0-9]+)"\s*,\s*CONF_')


# A test named in docs/security.md's table of attacks tried:
# `tests/dir/file.py::Class::method` or `tests/dir/file.c::function`.
TEST_REF_RE = re.compile(r"`(tests/[\w./-]+)::(\w+)(?:::(\w+))?`")


def srcdir():
    path = os.environ.get("TOP_SRCDIR")
    if not path:
        print("TOP_SRCDIR is not set: skipping (run through make check)",
              file=sys.stderr)
        sys.exit(77)
    return path


def read_src(name):
    with open(os.path.join(srcdir(), name), encoding="utf-8") as f:
        return f.read()


class Key:
    """One row of the parser's table."""

    def __init__(self, match):
        (self.name, self.type, lo, hi, dflt, req) = match.groups()
        self.min, self.max = int(lo), int(hi)
        self.default = None if dflt == "NULL" else dflt.strip('"')
        self.required = req == "1"


def conf_keys():
    """Parse conf_keys[] of daemon/conf.c into a list of Key."""
    text = read_src("daemon/conf.c")
    m = re.search(r"conf_keys\[\]\s*=\s*\{(.*?)\n\};", text, re.S)
    if m is None:
        raise AssertionError("no conf_keys[] table in daemon/conf.c")
    table = m.group(1)
    keys = [Key(e) for e in ENTRY_RE.finditer(table)]
    names = ENTRY_START_RE.findall(table)
    if [k.name for k in keys] != names:
        raise AssertionError("cannot parse every entry of conf_keys[]: "
                             "parsed %s, found %s" %
                             ([k.name for k in keys], names))
    if len(keys) < 10:
        raise AssertionError("only %d keys in conf_keys[]" % len(keys))
    return keys


def mdoc_entries(page, macro):
    """Return {name: source text} of the ".It <macro> name" items."""
    entries = {}
    lines = page.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\.It %s ([A-Za-z_0-9-]+)" % macro, line)
        if not m:
            continue
        body = []
        for nxt in lines[i + 1:]:
            if nxt.startswith(".It ") or nxt.startswith(".El"):
                break
            body.append(nxt)
        entries[m.group(1)] = line + "\n" + "\n".join(body)
    return entries


def plain(source):
    """Roughly the text of some mdoc: macros dropped, lines joined."""
    out = []
    for line in source.splitlines():
        if line.startswith("."):
            words = line[1:].split()[1:]
            words = [w for w in words
                     if not re.fullmatch(r"[A-Z][a-z][a-z]?", w)]
            line = " ".join(words)
        out.append(line)
    text = " ".join(out)
    text = re.sub(r"\s+([.,;:)])(?=\s|$)", r"\1", text)
    return re.sub(r"\s+", " ", text)


def usage_options(prog, *args):
    """Run prog with args; return the option letters of its usage."""
    r = subprocess.run([prog] + list(args), capture_output=True, text=True,
                       timeout=harness.RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    text = r.stdout + r.stderr
    if "usage" not in text:
        raise AssertionError("no usage from %s %s: %r" %
                             (prog, " ".join(args), text))
    letters = set()
    for group in re.findall(r"\[-([A-Za-z]+)", text):
        letters.update(group)
    for letter in re.findall(r"^\s+-([A-Za-z])\b", text, re.M):
        letters.add(letter)
    return letters


def usage_long_options(prog):
    """The --long options that prog -h lists."""
    r = subprocess.run([prog, "-h"], capture_output=True, text=True,
                       timeout=harness.RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    return set(re.findall(r"--([a-z][a-z-]*)", r.stdout))


def page_long_options(page):
    """The long options a page documents (Fl \\-name)."""
    return set(re.findall(r"Fl \\-([a-z][a-z-]*)", page))


def page_options(page):
    """Return the option letters a page documents under .It Fl."""
    return set(re.findall(r"^\.It Fl ([A-Za-z])\b", page, re.M))


class ConfKeyTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.keys = conf_keys()
        cls.page = read_src("man/phoneclaimd.conf.5")
        cls.entries = mdoc_entries(cls.page, "Cm")

    def test_every_key_is_in_the_conf_page(self):
        missing = [k.name for k in self.keys if k.name not in self.entries]
        self.assertEqual(missing, [], "keys missing from phoneclaimd.conf.5")

    def test_conf_page_documents_only_real_keys(self):
        keys = self.page.split(".Sh KEYS", 1)[1].split(".Sh ", 1)[0]
        documented = re.findall(r"^\.It Cm ([a-z_0-9]+)", keys, re.M)
        names = {k.name for k in self.keys}
        self.assertEqual([d for d in documented if d not in names], [])

    def test_defaults_ranges_and_kinds_match_the_parser(self):
        for k in self.keys:
            if k.name not in self.entries:
                continue
            text = plain(self.entries[k.name])
            with self.subTest(key=k.name):
                if k.default is not None:
                    self.assertRegex(text, r"Default: ‘?%s’?(?![\w/])" %
                                     re.escape(k.default))
                elif k.required:
                    self.assertIn("Required", text)
                else:
                    self.assertRegex(text, r"Default: ")
                if k.type == "CONF_NUMBER":
                    self.assertIn("%d to %d" % (k.min, k.max), text)
                if k.type == "CONF_SECRET_PATH":
                    self.assertIn("secret file", text)

    def test_every_key_is_in_the_operations_guide(self):
        guide = read_src("docs/operations.md")
        missing = [k.name for k in self.keys
                   if "`%s`" % k.name not in guide]
        self.assertEqual(missing, [], "keys missing from docs/operations.md")

    def test_readme_fits_a_screen_or_two(self):
        """The README is an introduction: reference material lives in the
        man pages and docs/, and every doc it points at exists."""
        readme = read_src("README.md")
        self.assertLess(len(readme.encode()), 8192)
        for link in re.findall(r"\]\((docs/[a-z0-9-]+\.md)\)", readme):
            self.assertTrue(os.path.exists(os.path.join(srcdir(), link)),
                            link)
        for page in ("phoneclaimd(8)", "phoneclaimd.conf(5)",
                     "phoneclaimctl(8)"):
            self.assertIn(page, readme)

    def test_every_key_is_in_the_sample_with_its_default(self):
        sample = read_src("conf/phoneclaimd.conf")
        for k in self.keys:
            with self.subTest(key=k.name):
                lines = re.findall(r"^#?%s = (.*)$" % re.escape(k.name),
                                   sample, re.M)
                self.assertEqual(len(lines), 1,
                                 "%s: want one line in the sample" % k.name)
                if k.default is not None:
                    self.assertEqual(lines[0], k.default)
                    self.assertRegex(sample, r"(?m)^#%s = " % k.name,
                                     "a key with a default is commented")


class SampleConfigTests(unittest.TestCase):
    """conf/phoneclaimd.conf, with every key set, passes phoneclaimd -n."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pcd-docs-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def local_values(self):
        """Values that exist here for every path key of the sample."""
        os.mkdir(self.path("state"), 0o700)
        write_secret(self.path("api.token"), "a" * 32 + "\n")
        write_secret(self.path("log-stream.token"), "Bearer " + "b" * 32)
        write_file(self.path("exempt"), "# none\n+447700900999\n")
        values = {
            "state_dir": self.path("state"),
            "status_socket": self.path("status.sock"),
            "api_token_file": self.path("api.token"),
            "log_stream_token_file": self.path("log-stream.token"),
            "hash_key_file": self.path("state/hash.key"),
            "exempt_numbers_file": self.path("exempt"),
            "auth0_client_secret_file": self.path("auth0.secret"),
        }
        write_secret(self.path("auth0.secret"), "s" * 32 + "\n")
        openssl = shutil.which("openssl")
        if openssl:
            r = subprocess.run(
                [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-keyout", self.path("key.pem"), "-out",
                 self.path("cert.pem"), "-days", "2", "-subj",
                 "/CN=localhost"], capture_output=True, timeout=60)
            if r.returncode == 0:
                os.chmod(self.path("key.pem"), 0o600)
                values["tls_cert_file"] = self.path("cert.pem")
                values["tls_key_file"] = self.path("key.pem")
        return values

    def test_sample_with_every_key_set_passes_the_check(self):
        daemon = harness.require_daemon()
        names = {k.name for k in conf_keys()}
        values = self.local_values()
        out, seen = [], set()
        for line in read_src("conf/phoneclaimd.conf").splitlines():
            m = re.match(r"^#?([a-z_0-9]+) = (.*)$", line)
            if m and m.group(1) in names:
                key = m.group(1)
                if key.startswith("tls_") and key not in values:
                    out.append(line)	# no openssl here: leave it out
                    continue
                line = "%s = %s" % (key, values.get(key, m.group(2)))
                seen.add(key)
            out.append(line)
        write_file(self.path("sample.conf"), "\n".join(out) + "\n")
        r = subprocess.run([daemon, "-n", "-c", self.path("sample.conf")],
                           capture_output=True, text=True,
                           timeout=harness.RUN_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertGreaterEqual(len(seen), len(names) - 2)


class PageTests(unittest.TestCase):

    def test_phoneclaimd_options(self):
        page = read_src("man/phoneclaimd.8")
        usage = usage_options(harness.require_daemon(), "-h")
        self.assertTrue({"c", "f", "n", "v", "V"} <= usage, usage)
        self.assertEqual(sorted(usage - page_options(page)), [],
                         "options missing from phoneclaimd.8")
        self.assertEqual(sorted(page_options(page) - usage), [],
                         "phoneclaimd.8 documents options phoneclaimd lacks")
        longs = usage_long_options(harness.require_daemon())
        self.assertTrue({"help", "version", "config"} <= longs, longs)
        self.assertEqual(longs, page_long_options(page))

    def test_phoneclaimctl_options(self):
        ctl = os.environ.get("PHONECLAIMCTL")
        if not ctl or not os.access(ctl, os.X_OK):
            self.skipTest("PHONECLAIMCTL is not set")
        page = read_src("man/phoneclaimctl.8")
        usage = usage_options(ctl, "-h")
        self.assertIn("s", usage)
        page_opts = page_options(page)
        usage.discard("h")
        page_opts.discard("h")
        self.assertEqual(sorted(usage - page_opts), [],
                         "options missing from phoneclaimctl.8")
        self.assertEqual(sorted(page_opts - usage), [],
                         "phoneclaimctl.8 documents options it lacks")
        longs = usage_long_options(ctl)
        self.assertTrue({"help", "version", "json", "socket"} <= longs,
                        longs)
        self.assertEqual(longs, page_long_options(page))

    def test_auth0_setup_options(self):
        tool = os.environ.get("AUTH0_SETUP")
        if not tool or not os.access(tool, os.X_OK):
            self.skipTest("AUTH0_SETUP is not set")
        page = read_src("man/phoneclaimd-auth0-setup.8")
        usage = usage_options(tool, "-h")
        self.assertTrue({"a", "c", "f", "n", "u", "h", "V"} <= usage, usage)
        self.assertEqual(sorted(usage - page_options(page)), [],
                         "options missing from phoneclaimd-auth0-setup.8")
        self.assertEqual(sorted(page_options(page) - usage), [],
                         "phoneclaimd-auth0-setup.8 documents options the "
                         "tool lacks")
        longs = usage_long_options(tool)
        self.assertTrue({"help", "version", "check", "dry-run"} <= longs,
                        longs)
        self.assertEqual(longs, page_long_options(page))

    def test_every_command_is_in_phoneclaimctl_page(self):
        commands = set(SOCKET_COMMANDS + CTL_COMMANDS)
        table = COMMAND_RE.findall(read_src("daemon/commands.c"))
        self.assertIn("backup", table)
        commands.update(table)
        ctl = os.environ.get("PHONECLAIMCTL")
        if ctl and os.access(ctl, os.X_OK):
            r = subprocess.run([ctl, "-h"], capture_output=True, text=True,
                               timeout=harness.RUN_TIMEOUT)
            _, _, listing = r.stdout.partition("commands:")
            commands.update(re.findall(r"(?m)^  ([a-z]+)\b", listing))
        entries = mdoc_entries(read_src("man/phoneclaimctl.8"), "Cm")
        missing = sorted(c for c in commands if c not in entries)
        self.assertEqual(missing, [], "commands missing from phoneclaimctl.8")

    def test_phoneclaimctl_page_names_privileged_commands(self):
        page = plain(read_src("man/phoneclaimctl.8"))
        self.assertIn("forbidden", page)
        self.assertRegex(page, r"release, claim, import")

    def test_every_metric_is_in_phoneclaimd_page(self):
        metrics = read_src("daemon/metrics.c")
        families = re.findall(r'metrics_(?:family|one)\(\s*\w+\s*,\s*"(\w+)"',
                              metrics)
        if not families:
            self.skipTest("no metrics_family() calls in daemon/metrics.c")
        entries = mdoc_entries(read_src("man/phoneclaimd.8"), "Li")
        missing = [f for f in families if "phoneclaimd_" + f not in entries]
        self.assertEqual(missing, [], "series missing from phoneclaimd.8")

    def test_pages_render_without_warnings(self):
        man = shutil.which("man")
        if man is None:
            self.skipTest("man is not installed")
        env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
        env.pop("MANPAGER", None)
        env.pop("PAGER", None)
        for name in PAGES:
            with self.subTest(page=name):
                r = subprocess.run(
                    [man, "--warnings", "-l",
                     os.path.join(srcdir(), name)],
                    capture_output=True, text=True, env=env, timeout=60,
                    stdin=subprocess.DEVNULL)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stderr, "")
                self.assertIn("NAME", r.stdout)
                self.assertGreater(len(r.stdout.splitlines()), 20)


def attack_rows():
    """The rows of docs/security.md's "Attacks tried" table, as lists of
    cells (the header and the rule left out)."""
    text = read_src("docs/security.md")
    _, sep, section = text.partition("\n## Attacks tried\n")
    if not sep:
        return []
    section = section.split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] != "Attack":
            rows.append(cells)
    return rows


def missing_test(path, name, method):
    """Why the test path::name[::method] does not exist, or None."""
    full = os.path.join(srcdir(), path)
    if not os.path.isfile(full):
        return "no file %s" % path
    with open(full, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".py"):
        classes = {n.name: n for n in ast.parse(text).body
                   if isinstance(n, ast.ClassDef)}
        if name not in classes:
            return "no class %s in %s" % (name, path)
        if method is None:
            return "no test method named after %s in %s" % (name, path)
        if not any(isinstance(n, ast.FunctionDef) and n.name == method
                   for n in classes[name].body):
            return "no method %s.%s in %s" % (name, method, path)
        return None
    if method is not None:
        return "%s::%s::%s: a C file has functions, not classes" % (
            path, name, method)
    if not re.search(r"(?m)^%s\(" % re.escape(name), text):
        return "no function %s in %s" % (name, path)
    return None


class SecurityTableTests(unittest.TestCase):
    """docs/security.md's table of attacks tried stays backed by tests."""

    def test_every_row_names_a_test(self):
        rows = attack_rows()
        self.assertGreater(len(rows), 10, "no table of attacks tried")
        for cells in rows:
            with self.subTest(attack=cells[0]):
                self.assertEqual(len(cells), 3, cells)
                self.assertTrue(TEST_REF_RE.search(cells[2]),
                                "a row that names no test: %s" % cells)

    def test_every_test_named_exists(self):
        problems = []
        for cells in attack_rows():
            for m in TEST_REF_RE.finditer(cells[-1]):
                why = missing_test(*m.groups())
                if why is not None:
                    problems.append(why)
        self.assertEqual(problems, [])

    def test_a_missing_test_is_caught(self):
        here = "tests/integration/test_docs.py"
        self.assertIsNone(missing_test(here, "SecurityTableTests",
                                       "test_a_missing_test_is_caught"))
        self.assertIsNotNone(missing_test(here, "SecurityTableTests",
                                          "test_gone"))
        self.assertIsNotNone(missing_test(here, "NoSuchTests", "test_x"))
        self.assertIsNotNone(missing_test("tests/no_such.py", "A", "b"))
        self.assertIsNone(missing_test("tests/unit/test_frame.c",
                                       "test_split", None))
        self.assertIsNotNone(missing_test("tests/unit/test_frame.c",
                                          "test_gone", None))


class DistTests(unittest.TestCase):
    """Every fixture the tests read is in the release tarball (distcheck
    runs the suite from it)."""

    def test_every_fixture_is_distributed(self):
        listed = set(re.findall(r"tests/fixtures/[\w./-]+",
                                read_src("Makefile.am")))
        top = srcdir()
        for d, _, files in os.walk(os.path.join(top, "tests", "fixtures")):
            for name in files:
                rel = os.path.relpath(os.path.join(d, name), top)
                # The file, or a folder that holds it, is in EXTRA_DIST.
                parts = rel.split(os.sep)
                ways = {"/".join(parts[:i]) for i in range(3, len(parts) + 1)}
                with self.subTest(fixture=rel):
                    self.assertTrue(ways & listed, rel)


if __name__ == "__main__":
    unittest.main()
