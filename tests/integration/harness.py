"""
Shared helpers for the phoneclaimd integration tests.

Each test module starts the real daemon (PHONECLAIMD) in the foreground on
127.0.0.1 port 0, with a private state directory, status socket and token
files under a temporary directory, and talks HTTP to it.  The daemon's
stderr goes to daemon.log in that directory.  Temporary directories are
removed when every test of a class passed, and kept (path and log tail
printed) otherwise.

Standard library only: this runs on Debian 12's /usr/bin/python3.
"""

import atexit
import ctypes
import http.client
import itertools
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

START_TIMEOUT = 15.0	# seconds to wait for "listening on" (ASan is slow)
STOP_TIMEOUT = 10.0	# seconds to wait for a signalled daemon to exit
RUN_TIMEOUT = 15.0	# seconds for -n, -V and failing starts
HTTP_TIMEOUT = 10.0	# socket timeout of every HTTP client

VERSION_LINE = "phoneclaimd 0.1.0"

LISTEN_RE = re.compile(
    r"phoneclaimd: info: listening on (127\.0\.0\.1|\[::1\]):(\d+)")
SANITIZER_RE = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|"
    r"SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)|"
    r"(WARNING|FATAL|ERROR): ThreadSanitizer|ThreadSanitizer: reported")

ABSENT = object()	# a JSON member left out of a request body

_all_daemons = []


# Environment ---------------------------------------------------------------

def _daemon_has(symbol):
    path = os.environ.get("PHONECLAIMD")
    if not path:
        return False
    with open(path, "rb") as f:
        return symbol in f.read()


def sanitized():
    """True when the daemon under test is built with AddressSanitizer
    (configure --enable-asan) or ThreadSanitizer (--enable-tsan), which
    make it several times slower."""
    return _daemon_has(b"__asan_init") or thread_sanitized()


def thread_sanitized():
    """True when the daemon under test is built with ThreadSanitizer."""
    return _daemon_has(b"__tsan_init")


def _tsan_suppressions():
    """Give a ThreadSanitizer daemon tests/tsan.supp and no deadlock
    detection when the test runs outside make check (which sets
    TSAN_OPTIONS itself; Makefile.am says why)."""
    opts = os.environ.get("TSAN_OPTIONS", "")
    top = os.environ.get("TOP_SRCDIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..")
    if "suppressions=" not in opts:
        os.environ["TSAN_OPTIONS"] = (
            "suppressions=%s detect_deadlocks=0 %s" % (
                os.path.join(top, "tests", "tsan.supp"), opts)).strip()


_tsan_suppressions()


def require_daemon():
    """Return the daemon's path; exit 77 (skip) when PHONECLAIMD is unset."""
    path = os.environ.get("PHONECLAIMD")
    if not path:
        print("PHONECLAIMD is not set: skipping the integration tests "
              "(run them through make check)", file=sys.stderr)
        sys.exit(77)
    if not os.access(path, os.X_OK):
        print("PHONECLAIMD=%s is not an executable file" % path,
              file=sys.stderr)
        sys.exit(99)
    return path


def ipv6_loopback_available():
    """Return True if a socket can be bound to ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# Test data -----------------------------------------------------------------

# US area codes for generated numbers.  201 is left out: tests spell fixed
# +1 201 555 01xx numbers by hand.
_US_AREAS = (202, 212, 213, 305, 312, 404, 415, 503, 512, 602, 617, 646,
             702, 713, 718, 786, 801, 808, 860, 917)
_number_lock = threading.Lock()
_us_counter = itertools.count()
_uk_counter = itertools.count(200)


def fresh_number():
    """Return a never used, possible US number: +1 AAA 555 NNNN."""
    with _number_lock:
        i = next(_us_counter)
    area = _US_AREAS[(i // 10000) % len(_US_AREAS)]
    return "+1%d555%04d" % (area, i % 10000)


def fresh_uk_number():
    """Return a never used UK drama number: +44 7700 900NNN (200..998)."""
    with _number_lock:
        i = next(_uk_counter)
    if i > 998:
        raise RuntimeError("out of +447700900NNN numbers")
    return "+447700900%03d" % i


def fresh_user():
    """Return a random user id like Auth0's."""
    return "auth0|" + secrets.token_hex(12)


def log_plain_user():
    """Return a random user id the daemon's log shows as it is: one with
    no run of seven digits, which the log would mask as a possible phone
    number."""
    while True:
        user = fresh_user()
        if not re.search(r"[0-9]{7}", user):
            return user


def auth0_date(seconds=0.0):
    """The date seconds from now, as Auth0 writes one in a log event
    (2026-11-27T10:30:00.123Z).  Tests date their events from the clock
    of the run, never with a fixed date: the suite must pass on any day
    (make check TEST_CLOCK_OFFSET=N proves it)."""
    when = time.time() + seconds
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + \
        ".%03dZ" % (int(when * 1000) % 1000)


def digits(text):
    """Return the ASCII digits of text."""
    return re.sub(r"[^0-9]", "", text)


def write_secret(path, text, mode=0o600):
    """Write text to path with exactly the given permission bits."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_file(path, text):
    """Write text to path (0644)."""
    with open(path, "w") as f:
        f.write(text)


# HTTP ----------------------------------------------------------------------

class Reply:
    """One HTTP answer: status, headers, raw body and the body as JSON."""

    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.json = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            self.json = None

    def get(self, member):
        """Return a member of a JSON object body, or None."""
        if isinstance(self.json, dict):
            return self.json.get(member)
        return None

    @property
    def content_type(self):
        return self.headers.get("Content-Type", "")

    def __str__(self):
        raw = self.raw if len(self.raw) <= 400 else self.raw[:400] + b"..."
        return "HTTP %d %r" % (self.status, raw)


def claim_body(phone, user, action=ABSENT, **extra):
    """Return the JSON bytes of a claim request; ABSENT leaves a member out."""
    body = {}
    for name, value in (("phone_number", phone), ("user_id", user),
                        ("action", action)):
        if value is not ABSENT:
            body[name] = value
    body.update(extra)
    return json.dumps(body).encode()


class Client:
    """A keep-alive HTTP/1.1 connection to a daemon."""

    def __init__(self, daemon, timeout=HTTP_TIMEOUT):
        self.daemon = daemon
        self.conn = http.client.HTTPConnection(daemon.host, daemon.port,
                                               timeout=timeout)

    def request(self, method, path, body=None, headers=None):
        """Send one request and return its Reply."""
        hdrs = {}
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        self.conn.request(method, path, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        raw = resp.read()
        return Reply(resp.status, resp.headers, raw)

    def claim(self, phone, user, action=ABSENT, token=None):
        """POST /v1/claims with the api token (or token); return the Reply."""
        if isinstance(phone, str):
            self.daemon.sent_numbers.append(phone)
        tok = self.daemon.api_token if token is None else token
        return self.request("POST", "/v1/claims",
                            body=claim_body(phone, user, action),
                            headers={"Authorization": "Bearer " + tok})

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Raw sockets ---------------------------------------------------------------

def connect(daemon, timeout=5.0):
    """Open a raw TCP connection to the daemon."""
    return socket.create_connection((daemon.host, daemon.port),
                                    timeout=timeout)


def send_quietly(sock, data):
    """Send data; False if the daemon has closed or reset the connection."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def wait_closed(sock, timeout):
    """Read until the peer closes or timeout passes.

    Return (seconds until closed or None if still open, bytes received).
    """
    start = time.monotonic()
    deadline = start + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, data
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            return time.monotonic() - start, data
        except socket.timeout:
            continue
        if not chunk:
            return time.monotonic() - start, data
        data += chunk


def read_response(sock, timeout):
    """Read one HTTP response (Content-Length framed) or until close.

    Return the bytes received (possibly incomplete or empty).
    """
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if m and len(rest) >= int(m.group(1)):
                return data
        readable, _, _ = select.select([sock], [], [],
                                       max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError,
                socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data


def status_of(data):
    """Return the status code of raw response bytes, or None."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


def body_of(data):
    """Return the body of raw response bytes parsed as JSON, or None."""
    _, _, body = data.partition(b"\r\n\r\n")
    try:
        return json.loads(body.decode())
    except (ValueError, UnicodeDecodeError):
        return None


def raw_claim_request(daemon, phone, user, extra_headers=b"",
                      connection=b"close"):
    """Return the bytes of a complete claim request."""
    body = claim_body(phone, user, "enrollment")
    daemon.sent_numbers.append(phone)
    return (b"POST /v1/claims HTTP/1.1\r\n"
            b"Host: localhost\r\n"
            b"Authorization: Bearer " + daemon.api_token.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: " + connection + b"\r\n" + extra_headers +
            b"\r\n" + body)


# Load ------------------------------------------------------------------

class Load:
    """Client threads reserving fresh numbers until stopped (or until the
    daemon stops).  With timed, each acknowledged pair also notes when it
    was sent and answered (time.monotonic())."""

    MAX_PER_THREAD = 20000	# bounds memory if the daemon is very fast

    def __init__(self, daemon, threads=8, timeout=10, timed=False):
        self.daemon = daemon
        self.timeout = timeout
        self.timed = timed
        self.lock = threading.Lock()
        self.acked = []		# (phone, user[, sent, answered]) "reserved"
        self.unexpected = []	# answers other than "reserved"
        self.errors = []	# connections that failed (daemon stopped?)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.worker, daemon=True)
                        for _ in range(threads)]

    def worker(self):
        d = self.daemon
        conn = http.client.HTTPConnection(d.host, d.port,
                                          timeout=self.timeout)
        headers = {"Authorization": "Bearer " + d.api_token,
                   "Content-Type": "application/json"}
        try:
            for _ in range(self.MAX_PER_THREAD):
                if self.stop.is_set():
                    return
                phone, user = fresh_number(), fresh_user()
                sent = time.monotonic()
                try:
                    conn.request("POST", "/v1/claims",
                                 claim_body(phone, user, "enrollment"),
                                 headers)
                    resp = conn.getresponse()
                    reply = Reply(resp.status, resp.headers, resp.read())
                except (OSError, http.client.HTTPException) as e:
                    with self.lock:
                        self.errors.append((phone, repr(e)))
                    return
                done = time.monotonic()
                with self.lock:
                    if reply.status == 200 and \
                            reply.get("result") == "reserved":
                        self.acked.append((phone, user, sent, done)
                                          if self.timed else (phone, user))
                    else:
                        self.unexpected.append((phone, str(reply)))
        finally:
            conn.close()

    def start(self):
        for t in self.threads:
            t.start()

    def wait_for(self, n, timeout=30):
        """Wait until n requests were acknowledged, or timeout seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.acked) >= n:
                    return
            time.sleep(0.05)

    def finish(self, timeout=15):
        """Stop the threads and wait for them."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        alive = [t for t in self.threads if t.is_alive()]
        if alive:
            raise AssertionError("%d client threads still running" %
                                 len(alive))

    def run(self, delay, stop_daemon):
        """Start the threads, call stop_daemon() after delay seconds, wait
        for the threads and return the acknowledged (phone, user) pairs."""
        self.start()
        time.sleep(delay)
        stop_daemon()
        self.finish()
        return self.acked


def check_reservations(daemon, claims, check_owner=True, threads=8):
    """Probe every (phone, holder) with several connections: another user
    gets 409 taken and, if check_owner, the holder gets owned.

    Return a list of failures (phone, what was expected, the reply).
    """
    failures = []
    lock = threading.Lock()
    slices = [claims[i::threads] for i in range(threads)]

    def probe(part):
        try:
            with daemon.client() as c:
                for phone, holder in part:
                    reply = c.claim(phone, fresh_user(), "enrollment")
                    if reply.status != 409 or reply.json != {"result":
                                                             "taken"}:
                        with lock:
                            failures.append((phone, "taken", str(reply)))
                    if not check_owner:
                        continue
                    reply = c.claim(phone, holder, "enrollment")
                    if reply.status != 200 or reply.json != {"result":
                                                             "owned"}:
                        with lock:
                            failures.append((phone, "owned", str(reply)))
        except (OSError, http.client.HTTPException) as e:
            with lock:
                failures.append(("-", "a connection", repr(e)))

    workers = [threading.Thread(target=probe, args=(part,), daemon=True)
               for part in slices]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    if any(t.is_alive() for t in workers):
        failures.append(("-", "probes to finish", "still running after 60 s"))
    return failures


# The daemon ----------------------------------------------------------------

def _die_with_parent():
    """In the child: SIGKILL when the test process dies (PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def fakeclock_shim():
    """The path of tests/tools/fakeclock.so (FAKECLOCK), or None."""
    shim = os.environ.get("FAKECLOCK")
    return shim if shim and os.path.exists(shim) else None


def preload(daemon, shim, **env):
    """Run daemon under the LD_PRELOAD shim from its next start, with env
    added to its environment.  Shims add up: a daemon may be under
    fakeclock.so and netcut.so at once, and both stay under the
    suite-wide fakeclock.so of "make check TEST_CLOCK_OFFSET=N"."""
    shims = getattr(daemon, "preloads", [])
    if not shims:
        real = daemon.command

        def command(*args):
            libs = daemon.preloads + \
                [p for p in os.environ.get("LD_PRELOAD", "").split(":")
                 if p and p not in daemon.preloads]
            pairs = dict(daemon.preload_env, LD_PRELOAD=":".join(libs),
                         # An ASan daemon: the shims come before its
                         # runtime.
                         ASAN_OPTIONS="verify_asan_link_order=0:" +
                         os.environ.get("ASAN_OPTIONS", ""))
            return ["env"] + ["%s=%s" % kv for kv in pairs.items()] + \
                real(*args)
        daemon.command = command
        daemon.preloads = []
        daemon.preload_env = {}
    if shim not in daemon.preloads:
        daemon.preloads.append(shim)
    daemon.preload_env.update(env)


def use_fakeclock(daemon, offset_file, seconds=0):
    """Run daemon under fakeclock.so from its next start: its wall clock
    is moved by the number of seconds in offset_file, written here first
    and by set_fakeclock later (the monotonic clocks are left alone)."""
    set_fakeclock(offset_file, seconds)
    preload(daemon, fakeclock_shim(), FAKECLOCK_FILE=offset_file)


def set_fakeclock(offset_file, seconds):
    """Move the clock of a daemon under fakeclock.so, at once."""
    tmp = offset_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % seconds)
    os.rename(tmp, offset_file)


class DaemonError(Exception):
    """The daemon failed to start."""


class Daemon:
    """One daemon: its directory, config, token files, process and log."""

    def __init__(self, workdir=None, **conf):
        self.dir = workdir or tempfile.mkdtemp(prefix="pcd-")
        self.state_dir = os.path.join(self.dir, "state")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.conf_path = os.path.join(self.dir, "phoneclaimd.conf")
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.api_token_file = os.path.join(self.dir, "api.token")
        self.log_stream_token_file = os.path.join(self.dir, "logstream.token")
        self.api_token = "api-" + secrets.token_hex(16)
        self.log_stream_token = "Bearer ls-" + secrets.token_hex(16)
        write_secret(self.api_token_file, self.api_token + "\n")
        write_secret(self.log_stream_token_file, self.log_stream_token + "\n")
        self.conf = {
            "listen": "127.0.0.1:0",
            "state_dir": self.state_dir,
            "status_socket": os.path.join(self.dir, "status.sock"),
            "api_token_file": self.api_token_file,
            "log_stream_token_file": self.log_stream_token_file,
            "log_level": "info",
        }
        self.conf.update(conf)
        self.write_conf()
        self.proc = None
        self.host = None
        self.port = None
        self.sent_numbers = []
        self.problems = []
        self._expect_exit = False
        self._log_start = 0
        _all_daemons.append(self)

    # Files.

    def path(self, name):
        """Return the path of a file in the daemon's directory."""
        return os.path.join(self.dir, name)

    def conf_lines(self):
        """Return the config file's lines, in the order they are written."""
        return ["# phoneclaimd integration test"] + [
            "%s = %s" % (k, v) for k, v in self.conf.items() if v is not None]

    def write_conf(self, lines=None):
        """Write the config file (from self.conf, or the given lines)."""
        if lines is None:
            lines = self.conf_lines()
        write_file(self.conf_path, "\n".join(lines) + "\n")

    def set_exempt(self, numbers, name="exempt.txt"):
        """Write an exempt list and name it in the config."""
        path = self.path(name)
        write_file(path, "# exempt test numbers\n\n" +
                   "".join(n + "\n" for n in numbers))
        self.conf["exempt_numbers_file"] = path
        self.write_conf()
        return path

    # Process.

    def command(self, *args):
        return [require_daemon()] + list(args)

    def run(self, *args, timeout=RUN_TIMEOUT):
        """Run the daemon binary to completion; return CompletedProcess."""
        try:
            return subprocess.run(self.command(*args),
                                  stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True,
                                  errors="replace", timeout=timeout,
                                  cwd=self.dir, preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("%s did not exit within %.0f s" %
                                 (" ".join(e.cmd), timeout))

    def start(self, timeout=START_TIMEOUT):
        """Start -f -c conf and wait for "listening on"; return the port."""
        if self.running():
            raise DaemonError("already running")
        self._log_start = self.log_size()
        self._expect_exit = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command("-f", "-c", self.conf_path),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.dir, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTEN_RE.search(self.log_text(self._log_start))
            if m:
                self.host = m.group(1).strip("[]")
                self.port = int(m.group(2))
                return self.port
            if self.proc.poll() is not None:
                self._expect_exit = True
                raise DaemonError("daemon exited with status %d before "
                                  "listening; log:\n%s" %
                                  (self.proc.returncode, self.tail()))
            time.sleep(0.05)
        self.kill()
        raise DaemonError("no 'listening on' line within %.0f s; log:\n%s" %
                          (timeout, self.tail()))

    def ensure_running(self):
        """Restart the daemon if it died on its own (recorded as a problem),
        so that one crash does not fail every later test of a class."""
        if self.proc is not None and self.proc.poll() is not None and \
                not self._expect_exit:
            self.problems.append("daemon in %s exited by itself with status "
                                 "%d" % (self.dir, self.proc.returncode))
            self.check_log()
            self.start()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, signum):
        """Send a signal to the running daemon."""
        if not self.running():
            raise AssertionError("daemon is not running; log:\n" + self.tail())
        self.proc.send_signal(signum)

    def stop(self, signum=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Stop the daemon with signum; return its exit status (or None)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            if not self._expect_exit:
                self.problems.append("daemon in %s exited by itself with "
                                     "status %d" % (self.dir,
                                                    self.proc.returncode))
            self._expect_exit = True
            return self.proc.returncode
        self._expect_exit = True
        self.proc.send_signal(signum)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.problems.append("daemon in %s ignored signal %d for %.0f s" %
                                 (self.dir, signum, timeout))
            self.kill()
            return None
        if rc != 0:
            self.problems.append("daemon in %s exited with status %d after "
                                 "signal %d" % (self.dir, rc, signum))
        return rc

    def kill(self):
        """kill -9 the daemon and reap it."""
        if self.proc is None:
            return
        self._expect_exit = True
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass

    def expect_exit(self):
        """Tell stop() that the daemon is meant to have exited already."""
        self._expect_exit = True

    # Log.

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_text(self, since=0):
        """Return the log from byte offset since."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern, since, timeout=5.0):
        """Wait for regex pattern in the log after since; return the match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text(since))
            if m or time.monotonic() >= deadline:
                return m
            time.sleep(0.05)

    def tail(self, lines=30):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def check_log(self):
        """Record sanitizer reports found in the log as problems."""
        for line in self.log_text().splitlines():
            if SANITIZER_RE.search(line) and line not in self.problems:
                self.problems.append(line)

    # HTTP.

    def ask(self, command, timeout=30.0):
        """Send one command line to the status socket; its JSON answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.conf["status_socket"])
            s.sendall((command + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf.decode())

    def client(self, timeout=HTTP_TIMEOUT):
        return Client(self, timeout)

    def request(self, method, path, body=None, headers=None):
        """One request on a new connection."""
        with self.client() as c:
            return c.request(method, path, body, headers)

    def claim(self, phone, user, action=ABSENT, token=None):
        """POST /v1/claims on a new connection."""
        with self.client() as c:
            return c.claim(phone, user, action, token)

    def post_claims(self, body, headers=None, token=None):
        """POST raw body bytes to /v1/claims with the api token."""
        hdrs = {"Authorization": "Bearer " +
                (self.api_token if token is None else token)}
        hdrs.update(headers or {})
        return self.request("POST", "/v1/claims", body, hdrs)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class ValgrindDaemon(Daemon):
    """A daemon started under valgrind memcheck; its report goes to
    valgrind.log in the daemon's directory."""

    def command(self, *args):
        return [shutil.which("valgrind") or "valgrind", "--leak-check=full",
                "--errors-for-leak-kinds=definite,indirect",
                "--suppressions=" + os.path.join(
                    os.path.dirname(os.path.abspath(__file__)),
                    "valgrind.supp"),
                "--error-exitcode=99", "--child-silent-after-fork=yes",
                "--log-file=" + self.path("valgrind.log"),
                require_daemon()] + list(args)


def _kill_leftovers():
    for d in _all_daemons:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()


atexit.register(_kill_leftovers)
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))


# Test case base ------------------------------------------------------------

class DaemonTestCase(unittest.TestCase):
    """Tests that run daemons; class-level cleanup and failure reports."""

    @classmethod
    def setUpClass(cls):
        cls._daemons = []
        cls._failed = False
        cls.addClassCleanup(cls._finish_class)

    @classmethod
    def new_daemon(cls, start=True, **conf):
        """Make a daemon that lives until the end of the class."""
        d = Daemon(**conf)
        cls._daemons.append(d)
        if start:
            d.start()
        return d

    def own_daemon(self, start=True, **conf):
        """Make a daemon that is stopped at the end of this test."""
        d = self.new_daemon(start=False, **conf)
        self.addCleanup(d.stop)
        if start:
            d.start()
        return d

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        try:
            return super().run(result)
        finally:
            if len(result.failures) + len(result.errors) > before:
                type(self)._failed = True

    @classmethod
    def _finish_class(cls):
        problems = []
        for d in cls._daemons:
            d.stop()
            d.check_log()
            problems += d.problems
        keep = (cls._failed or problems or
                getattr(cls, "_classSetupFailed", False))
        for d in cls._daemons:
            if keep and d.log_size() == 0:
                print("\n[%s] keeping %s" % (cls.__name__, d.dir),
                      file=sys.stderr)
            elif keep:
                print("\n[%s] keeping %s; daemon log tail:\n%s\n" %
                      (cls.__name__, d.dir, d.tail()), file=sys.stderr)
            else:
                d.remove()
        if problems:
            raise AssertionError("; ".join(problems))

    # Assertions.

    def assertJsonReply(self, reply, status, body):
        """Assert status, a JSON Content-Type and exactly this JSON body."""
        self.assertEqual((reply.status, reply.json), (status, body),
                         "expected HTTP %d %s, got %s" %
                         (status, json.dumps(body), reply))
        self.assertJsonType(reply)

    def assertJsonType(self, reply):
        ctype = reply.content_type.split(";")[0].strip().lower()
        self.assertEqual(ctype, "application/json",
                         "Content-Type %r on %s" % (reply.content_type, reply))

    def assertValgrindClean(self, d, rc):
        """Assert a ValgrindDaemon exited 0 with no errors or leaks."""
        with open(d.path("valgrind.log")) as f:
            report = f.read()
        self.assertEqual(rc, 0, report[-3000:])
        self.assertRegex(report, r"ERROR SUMMARY: 0 errors", report[-3000:])
        self.assertRegex(report, r"definitely lost: 0 bytes|no leaks are "
                         r"possible", report[-3000:])

    def assertError(self, reply, status, code):
        self.assertJsonReply(reply, status, {"error": code})

    def assertReserved(self, reply, ttl):
        """Assert 200 reserved with expires_in close to ttl."""
        self.assertEqual(reply.status, 200, "expected reserved, got %s" %
                         reply)
        self.assertJsonType(reply)
        self.assertIsInstance(reply.json, dict, str(reply))
        self.assertEqual(sorted(reply.json), ["expires_in", "result"],
                         str(reply))
        self.assertEqual(reply.json["result"], "reserved", str(reply))
        s = reply.json["expires_in"]
        self.assertTrue(isinstance(s, int) and not isinstance(s, bool) and
                        ttl - 1 <= s <= ttl,
                        "expires_in should be about %d: %s" % (ttl, reply))

    def assertResult(self, reply, result, status=200):
        self.assertJsonReply(reply, status, {"result": result})

    def assertTaken(self, reply):
        self.assertResult(reply, "taken", 409)


# Health probes -------------------------------------------------------------

# The probe loop, run in a process of its own (python3 -c) so that the
# attack's threads in the test process do not hold it back on the GIL: it
# measures the daemon, not the test.  Arguments: host port interval timeout.
# It prints "<seconds> ok" or "<seconds> FAIL <what>" per probe, and stops
# when its standard input closes.
_PROBE_CODE = r"""
import select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
interval, timeout = float(sys.argv[3]), float(sys.argv[4])
while True:
    start = time.monotonic()
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
                      b"Connection: close\r\n\r\n")
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        data += repr(e).encode()
    elapsed = time.monotonic() - start
    if data.startswith(b"HTTP/1.1 200 ") and \
            data.endswith(b'\r\n\r\n{"status":"ok"}\n'):
        print("%.6f ok" % elapsed, flush=True)
    else:
        print("%.6f FAIL %r" % (elapsed, data[:200]), flush=True)
    readable, _, _ = select.select([sys.stdin], [], [], interval)
    if readable:
        break
"""


class HealthProbe:
    """GET /healthz on a new connection every interval seconds, from a
    process of its own, until the with block ends; each answer is timed
    from connect() to the last byte.  A probe that fails or is not 200
    {"status":"ok"} is recorded in failures (its time counts too)."""

    def __init__(self, daemon, interval=0.025, timeout=5.0):
        self.daemon = daemon
        self.interval = interval
        self.timeout = timeout
        self.times = []
        self.failures = []
        self.proc = None
        self.reader = threading.Thread(target=self.read, daemon=True)

    def read(self):
        for line in self.proc.stdout:
            elapsed, _, rest = line.strip().partition(" ")
            self.times.append(float(elapsed))
            if rest != "ok":
                self.failures.append(rest)

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE_CODE, self.daemon.host,
             str(self.daemon.port), str(self.interval), str(self.timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=_die_with_parent)
        self.reader.start()
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        try:
            self.proc.wait(self.timeout + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        self.proc.stdout.close()

    @property
    def worst(self):
        return max(self.times) if self.times else None

    def summary(self):
        t = sorted(self.times)
        if not t:
            return "no probes"
        return "%d probes, median %.1f ms, p99 %.1f ms, max %.1f ms" % (
            len(t), 1000 * t[len(t) // 2],
            1000 * t[min(len(t) - 1, int(len(t) * 0.99))], 1000 * t[-1])
