"""
HTTPS (issue 4, point 4): tls_cert_file and tls_key_file.

The test makes its own CA and server certificates for 127.0.0.1 with the
openssl command, starts the daemon with them and talks to it with Python's
ssl module, verifying against the test CA.  It checks the API and the log
stream over HTTPS, keep-alive, TLS 1.2 and 1.3, the refusal of TLS 1.1 and
of plain HTTP, the request deadline during and after the handshake, the
connection cap, reloading the certificate on SIGHUP, the config errors,
and that many handshakes leave no descriptor behind.
"""

import datetime
import http.client
import json
import os
import re
import secrets
import select
import shutil
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import warnings

import harness
from harness import DaemonTestCase, connect, fresh_number, fresh_user, \
    raw_claim_request, status_of, body_of, wait_closed

harness.require_daemon()

TTL = 600
REQUEST_TIMEOUT = 2
CLOSE_LIMIT = REQUEST_TIMEOUT + 2.0	# a silent client is gone by then
NEVER = 10.0		# a connection still open after this was never cut
HANDSHAKES = 200
FD_SLACK = 2		# descriptors the daemon may open on its own meanwhile

ALERT_PROTOCOL_VERSION = 70


def require_openssl():
    """Return the openssl command; exit 77 (skip) when it is missing."""
    path = shutil.which("openssl")
    if path is None:
        print("the openssl command is missing: skipping the TLS tests "
              "(apt-get install openssl)", file=sys.stderr)
        sys.exit(77)
    return path


OPENSSL = require_openssl()


# Certificates --------------------------------------------------------------

class Pki:
    """A test CA in its own directory, and server certificates it issues.

    Keys are EC P-256 (fast to make), written with umask 077.
    """

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pcd-pki-")
        self.ca_key = self.path("ca.key")
        self.ca_cert = self.path("ca.pem")
        self.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                     "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                     self.ca_key, "-out", self.ca_cert, "-days", "2",
                     "-subj", "/CN=phoneclaimd test CA")
        self.ext = self.path("server.ext")
        with open(self.ext, "w") as f:
            f.write("[server]\n"
                    "subjectAltName = IP:127.0.0.1\n"
                    "basicConstraints = critical, CA:FALSE\n"
                    "keyUsage = critical, digitalSignature\n"
                    "extendedKeyUsage = serverAuth\n")

    def path(self, name):
        return os.path.join(self.dir, name)

    def openssl(self, *args):
        r = subprocess.run([OPENSSL] + list(args), capture_output=True,
                           text=True, stdin=subprocess.DEVNULL,
                           preexec_fn=lambda: os.umask(0o077), timeout=60)
        if r.returncode != 0:
            raise RuntimeError("openssl %s failed: %s" % (args[0], r.stderr))
        return r.stdout

    def new_key(self, name):
        """Make a private key; return its path (mode 0600)."""
        key = self.path(name)
        self.openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
                     "ec_paramgen_curve:P-256", "-out", key)
        os.chmod(key, 0o600)
        return key

    def issue(self, name, serial, key=None):
        """Issue a server certificate for 127.0.0.1 with subject
        CN=<name>, for key (made if None); return (cert, key) paths."""
        key = key or self.new_key(name + ".key")
        csr = self.path(name + ".csr")
        cert = self.path(name + ".pem")
        self.openssl("req", "-new", "-key", key, "-subj", "/CN=" + name,
                     "-out", csr)
        self.openssl("x509", "-req", "-in", csr, "-CA", self.ca_cert,
                     "-CAkey", self.ca_key, "-set_serial", str(serial),
                     "-days", "2", "-extfile", self.ext, "-extensions",
                     "server", "-out", cert)
        return cert, key

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def copy_file(src, dst, mode=0o600):
    """Replace dst by a copy of src atomically, with the given mode."""
    tmp = dst + ".tmp"
    with open(src, "rb") as f:
        data = f.read()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, dst)


# Clients -------------------------------------------------------------------

def client_context(ca, minimum=None, maximum=None):
    """An ssl context that verifies the daemon against the test CA."""
    ctx = ssl.create_default_context(cafile=ca)
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


class TlsClient(harness.Client):
    """A keep-alive HTTPS connection to a daemon."""

    def __init__(self, daemon, context, timeout=harness.HTTP_TIMEOUT):
        self.daemon = daemon
        self.conn = http.client.HTTPSConnection(daemon.host, daemon.port,
                                                timeout=timeout,
                                                context=context)


def tls_connect(daemon, context, timeout=5.0):
    """Open a TLS connection (handshake done) to the daemon."""
    sock = connect(daemon, timeout)
    try:
        return context.wrap_socket(sock, server_hostname=daemon.host)
    except BaseException:
        sock.close()
        raise


class MemoryTls:
    """TLS over a raw socket through memory BIOs: the test decides when
    each encrypted byte leaves, which ssl.SSLSocket cannot do."""

    def __init__(self, daemon, context):
        self.sock = connect(daemon)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname=daemon.host)

    def flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def receive(self, timeout):
        """Feed what arrives within timeout to the TLS object; return False
        if nothing came, raise ConnectionError if the daemon closed."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return False
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the daemon")
        self.incoming.write(chunk)
        return True

    def handshake(self, timeout=5.0):
        """Go on with the handshake; raise TimeoutError if the daemon says
        nothing for timeout seconds (the state is kept: call again)."""
        while True:
            try:
                self.tls.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                if not self.receive(timeout):
                    raise TimeoutError("no answer to the handshake")

    def request(self, raw, timeout=5.0):
        """Send raw HTTP bytes, return one response (Content-Length)."""
        self.tls.write(raw)
        self.flush()
        deadline = time.monotonic() + timeout
        data = b""
        while time.monotonic() < deadline:
            head, sep, rest = data.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if sep and m and len(rest) >= int(m.group(1)):
                break
            try:
                data += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            if not self.receive(max(0.0, deadline - time.monotonic())):
                break
        return data

    def encrypt(self, raw):
        """Return the TLS records of raw without sending them."""
        self.tls.write(raw)
        return self.outgoing.read()

    def close(self):
        self.sock.close()


def client_hello(version):
    """A TLS ClientHello record offering only protocol version (0x0302 is
    TLS 1.1, 0x0303 TLS 1.2), with the usual ECDHE suites."""
    suites = (0xc02b, 0xc02f, 0xc009, 0xc013, 0xc00a, 0xc014, 0x002f,
              0x0035)
    groups = struct.pack("!HHH", 4, 29, 23)		# x25519, P-256
    formats = b"\x01\x00"				# uncompressed
    sigalgs = struct.pack("!HHHH", 6, 0x0403, 0x0804, 0x0401)
    ext = (struct.pack("!HH", 10, len(groups)) + groups +
           struct.pack("!HH", 11, len(formats)) + formats +
           struct.pack("!HH", 13, len(sigalgs)) + sigalgs)
    body = (struct.pack("!H", version) + os.urandom(32) + b"\x00" +
            struct.pack("!H", 2 * len(suites)) +
            b"".join(struct.pack("!H", s) for s in suites) + b"\x01\x00" +
            struct.pack("!H", len(ext)) + ext)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def open_fds(pid):
    """Return the number of descriptors the process has open."""
    return len(os.listdir("/proc/%d/fd" % pid))


# Test cases ----------------------------------------------------------------

class TlsCase(DaemonTestCase):
    """A CA for the class; self.d: a shared HTTPS daemon unless shared is
    False; self.ctx: a client context that trusts the CA."""

    conf = {}
    shared = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pki = Pki()
        cls.addClassCleanup(cls.pki.remove)
        cls.cert, cls.key = cls.pki.issue("phoneclaimd test server one", 1)
        cls.ctx = client_context(cls.pki.ca_cert)
        if cls.shared:
            cls.d = cls.tls_daemon(**cls.conf)

    @classmethod
    def tls_daemon(cls, start=True, **conf):
        """A daemon serving HTTPS with copies of the class's cert and key
        in its own directory (so that a test may replace them)."""
        d = cls.new_daemon(start=False, **conf)
        d.conf["tls_cert_file"] = d.path("server.pem")
        d.conf["tls_key_file"] = d.path("server.key")
        copy_file(cls.cert, d.conf["tls_cert_file"], 0o644)
        copy_file(cls.key, d.conf["tls_key_file"])
        d.write_conf()
        if start:
            d.start()
        return d

    def setUp(self):
        if self.shared:
            self.d.ensure_running()

    def client(self, d=None, context=None):
        return TlsClient(d or self.d, context or self.ctx)

    def claim(self, phone, user, d=None, token=None):
        with self.client(d) as c:
            return c.claim(phone, user, "enrollment", token)

    def assertServes(self, d=None):
        self.assertReserved(self.claim(fresh_number(), fresh_user(), d),
                            TTL)

    def assertFree(self, phone, d=None):
        self.assertReserved(self.claim(phone, fresh_user(), d), TTL)

    def assertClosedInTime(self, elapsed, what):
        self.assertIsNotNone(elapsed, "%s: still open after %.0f s" %
                             (what, NEVER))
        self.assertLess(elapsed, CLOSE_LIMIT, "%s: closed only after "
                        "%.1f s (request_timeout = %d)" %
                        (what, elapsed, REQUEST_TIMEOUT))

    def peer_certificate(self, d=None):
        """The certificate a new connection gets, as getpeercert()."""
        with tls_connect(d or self.d, self.ctx) as s:
            return s.getpeercert()

    def common_name(self, cert):
        for rdn in cert["subject"]:
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None


class HttpsTests(TlsCase):
    """The API over HTTPS, with request_timeout = 2."""

    conf = {"request_timeout": REQUEST_TIMEOUT}

    def test_start_is_logged_without_secrets(self):
        log = self.d.log_text()
        self.assertRegex(log, r"info: listening on 127\.0\.0\.1:\d+ "
                         r"\(https\)")
        self.assertRegex(log, r"info: TLS certificate: subject "
                         r"CN=phoneclaimd test server one, expires "
                         r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
        with open(self.d.conf["tls_key_file"]) as f:
            key = f.read()
        body = "".join(key.splitlines()[1:-1])
        self.assertNotIn("PRIVATE KEY", log)
        self.assertNotIn(body[:40], log)

    def test_claims_reserve_taken_and_401(self):
        phone, user = fresh_number(), fresh_user()
        with self.client() as c:
            self.assertReserved(c.claim(phone, user, "enrollment"), TTL)
            self.assertIn(c.conn.sock.version(), ("TLSv1.2", "TLSv1.3"))
            self.assertResult(c.claim(phone, user, "enrollment"), "owned")
            self.assertTaken(c.claim(phone, fresh_user(), "enrollment"))
            self.assertError(c.claim(fresh_number(), fresh_user(),
                                     "enrollment", token="wrong"),
                             401, "unauthorized")

    def test_log_stream(self):
        phone, user = fresh_number(), fresh_user()
        self.assertReserved(self.claim(phone, user), TTL)
        lid = "90020261127%045d" % secrets.randbelow(10 ** 40)
        now = datetime.datetime.now(datetime.timezone.utc)
        item = {"log_id": lid, "data": {
            "date": now.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "type": "gd_enrollment_complete",
            "description": "Guardian - Enrollment complete (sms)",
            "user_id": user, "log_id": lid,
            "details": {"authenticator": {"id": "phone|dev_tls",
                                          "type": "phone",
                                          "phone_number": phone}}}}
        body = json.dumps([item]).encode()
        with self.client() as c:
            reply = c.request("POST", "/v1/log-stream", body,
                              {"Authorization": self.d.log_stream_token})
            self.assertJsonReply(reply, 200, {
                "received": 1, "applied": 1, "duplicates": 0,
                "ignored": 0, "rejected": 0})
            reply = c.request("POST", "/v1/log-stream", body,
                              {"Authorization": self.d.log_stream_token})
            self.assertEqual(reply.get("duplicates"), 1, str(reply))
            self.assertError(c.request("POST", "/v1/log-stream", body,
                                       {"Authorization": "Bearer no"}),
                             401, "unauthorized")
        self.assertTaken(self.claim(phone, fresh_user()))

    def test_keep_alive(self):
        with self.client() as c:
            self.assertReserved(c.claim(fresh_number(), fresh_user(),
                                        "enrollment"), TTL)
            sock = c.conn.sock
            self.assertIsNotNone(sock, "HTTPS connection not kept alive")
            for _ in range(3):
                self.assertReserved(c.claim(fresh_number(), fresh_user(),
                                            "enrollment"), TTL)
                self.assertIs(c.conn.sock, sock, "the daemon closed a "
                              "keep-alive HTTPS connection")
            self.assertJsonReply(c.request("GET", "/healthz"), 200,
                                 {"status": "ok"})
            self.assertIs(c.conn.sock, sock)

    def test_tls_1_2_and_1_3(self):
        for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                              (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            with self.subTest(version=name):
                ctx = client_context(self.pki.ca_cert, version, version)
                with self.client(context=ctx) as c:
                    self.assertReserved(c.claim(fresh_number(),
                                                fresh_user(),
                                                "enrollment"), TTL)
                    self.assertEqual(c.conn.sock.version(), name)

    def raw_hello_answer(self, version):
        """Send a hand-made ClientHello; return the first bytes of the
        answer (at least 7, unless the daemon closed before)."""
        data = b""
        with connect(self.d) as s:
            s.sendall(client_hello(version))
            deadline = time.monotonic() + 5.0
            while len(data) < 7 and time.monotonic() < deadline:
                readable, _, _ = select.select(
                    [s], [], [], max(0.0, deadline - time.monotonic()))
                if not readable:
                    break
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
        return data

    def test_tls_1_1_is_refused(self):
        # The same hand-made hello offering TLS 1.2 gets a ServerHello ...
        answer = self.raw_hello_answer(0x0303)
        self.assertTrue(answer[:1] == b"\x16" and answer[5:6] == b"\x02",
                        "no ServerHello for a TLS 1.2 hello: %r" %
                        answer[:16])
        # ... and offering TLS 1.1 a protocol_version alert.
        answer = self.raw_hello_answer(0x0302)
        self.assertEqual(answer[:1], b"\x15", "TLS 1.1 hello not refused "
                         "with an alert: %r" % answer[:16])
        self.assertEqual(answer[6], ALERT_PROTOCOL_VERSION, answer[:16])
        # A real client limited to TLS 1.1 fails too.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = client_context(self.pki.ca_cert, ssl.TLSVersion.TLSv1_1,
                                 ssl.TLSVersion.TLSv1_1)
        try:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        with self.assertRaises(ssl.SSLError):
            tls_connect(self.d, ctx).close()
        self.assertServes()

    def test_plain_http_gets_no_http_answer(self):
        phone = fresh_number()
        with connect(self.d) as s:
            s.sendall(raw_claim_request(self.d, phone, fresh_user()))
            closed, data = wait_closed(s, NEVER)
        self.assertIsNone(status_of(data), "plain HTTP answered: %r" %
                          data[:80])
        self.assertFalse(data.startswith(b"HTTP/"), data[:80])
        self.assertIsNotNone(closed, "plain HTTP connection left open")
        self.assertFree(phone)

    def test_client_that_never_says_hello_is_closed(self):
        with connect(self.d) as s:
            elapsed, data = wait_closed(s, NEVER)
        self.assertClosedInTime(elapsed, "silent client")
        self.assertEqual(data, b"")
        self.assertServes()

    def test_half_a_client_hello_is_closed(self):
        with connect(self.d) as s:
            s.sendall(client_hello(0x0303)[:20])
            elapsed, _ = wait_closed(s, NEVER)
        self.assertClosedInTime(elapsed, "half a ClientHello")

    def test_hello_sent_a_byte_at_a_time_is_cut_off(self):
        hello = client_hello(0x0303)
        with connect(self.d) as s:
            start = time.monotonic()
            elapsed = None
            for byte in hello:
                if time.monotonic() - start > NEVER:
                    break
                try:
                    s.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    elapsed = time.monotonic() - start
                    break
                closed, _ = wait_closed(s, 0.3)
                if closed is not None:
                    elapsed = time.monotonic() - start
                    break
        self.assertClosedInTime(elapsed, "trickled ClientHello")

    def test_record_sent_a_byte_at_a_time_is_cut_off(self):
        """After a first answer the connection is idle: a request whose
        one TLS record trickles in must still end within request_timeout
        of its first byte, although nothing is decrypted before its end."""
        conn = MemoryTls(self.d, self.ctx)
        try:
            conn.handshake()
            data = conn.request(raw_claim_request(self.d, fresh_number(),
                                                  fresh_user(),
                                                  connection=b"keep-alive"))
            self.assertEqual(status_of(data), 200, data)
            record = conn.encrypt(raw_claim_request(self.d, fresh_number(),
                                                    fresh_user()))
            start = time.monotonic()
            elapsed = None
            for byte in record:
                if time.monotonic() - start > NEVER:
                    break
                try:
                    conn.sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    elapsed = time.monotonic() - start
                    break
                closed, _ = wait_closed(conn.sock, 0.25)
                if closed is not None:
                    elapsed = time.monotonic() - start
                    break
        finally:
            conn.close()
        self.assertClosedInTime(elapsed, "trickled TLS record")

    def test_request_in_several_records_within_the_timeout(self):
        conn = MemoryTls(self.d, self.ctx)
        try:
            conn.handshake()
            request = raw_claim_request(self.d, fresh_number(), fresh_user())
            third = len(request) // 3
            for piece in (request[:third], request[third:2 * third]):
                conn.sock.sendall(conn.encrypt(piece))
                time.sleep(0.4)
            data = conn.request(request[2 * third:])
        finally:
            conn.close()
        self.assertEqual(status_of(data), 200, data)
        self.assertEqual(body_of(data).get("result"), "reserved", data)

    def test_idle_keep_alive_connection_is_closed(self):
        with self.client() as c:
            self.assertReserved(c.claim(fresh_number(), fresh_user(),
                                        "enrollment"), TTL)
            elapsed, _ = wait_closed(c.conn.sock, NEVER)
        self.assertClosedInTime(elapsed, "idle keep-alive connection")

    def test_clients_that_leave_in_the_middle(self):
        for _ in range(10):
            with connect(self.d) as s:
                s.sendall(client_hello(0x0303))
        for _ in range(10):
            with tls_connect(self.d, self.ctx) as s:
                s.sendall(raw_claim_request(self.d, fresh_number(),
                                            fresh_user()))
        self.assertServes()


class ConnectionCapTests(TlsCase):
    """max_connections = 2 holds for TLS connections too: a third closes
    the one idle longest."""

    conf = {"max_connections": 2}

    def test_third_connection_closes_the_longest_idle_one(self):
        first = tls_connect(self.d, self.ctx)
        time.sleep(0.3)
        idle = [first, tls_connect(self.d, self.ctx)]
        third = None
        try:
            time.sleep(0.3)
            third = MemoryTls(self.d, self.ctx)
            third.handshake(timeout=5.0)
            data = third.request(raw_claim_request(self.d, fresh_number(),
                                                   fresh_user()))
            self.assertEqual(status_of(data), 200, data)
            elapsed, _ = wait_closed(first, 2.0)
            self.assertIsNotNone(elapsed, "the idle one was not closed")
        finally:
            for s in idle:
                s.close()
            if third is not None:
                third.close()


class ReloadTests(TlsCase):
    """SIGHUP loads the certificate again; a bad one keeps the old."""

    shared = False

    def hup(self, d, expect):
        since = d.log_size()
        d.send_signal(signal.SIGHUP)
        m = d.wait_for_log(expect, since, timeout=5.0)
        self.assertIsNotNone(m, "no %r in the log after SIGHUP:\n%s" %
                             (expect, d.log_text(since)))
        return d.log_text(since)

    def own_tls_daemon(self):
        d = self.tls_daemon()
        self.addCleanup(d.stop)
        return d

    def assertServesCertificate(self, d, name, serial):
        cert = self.peer_certificate(d)
        self.assertEqual(self.common_name(cert), name)
        self.assertEqual(int(cert["serialNumber"], 16), serial)

    def test_new_certificate_is_used_after_sighup(self):
        d = self.own_tls_daemon()
        self.assertServesCertificate(d, "phoneclaimd test server one", 1)
        cert, key = self.pki.issue("phoneclaimd test server two", 2)
        with self.client(d) as before:
            self.assertReserved(before.claim(fresh_number(), fresh_user(),
                                             "enrollment"), TTL)
            copy_file(cert, d.conf["tls_cert_file"], 0o644)
            copy_file(key, d.conf["tls_key_file"])
            self.hup(d, r"info: reloaded the TLS certificate: subject "
                     r"CN=phoneclaimd test server two, expires ")
            self.assertServesCertificate(d, "phoneclaimd test server two",
                                         2)
            # A connection made before the reload goes on with the old.
            self.assertReserved(before.claim(fresh_number(), fresh_user(),
                                             "enrollment"), TTL)
            old = before.conn.sock.getpeercert()
            self.assertEqual(self.common_name(old),
                             "phoneclaimd test server one")
        self.assertServes(d)

    def test_key_that_does_not_match_keeps_the_old_certificate(self):
        d = self.own_tls_daemon()
        # A certificate for another key, with the old key file.
        cert, _ = self.pki.issue("phoneclaimd test server three", 3)
        copy_file(cert, d.conf["tls_cert_file"], 0o644)
        text = self.hup(d, r"warning: reload: .*keeping the old "
                        r"certificate")
        self.assertIn(d.conf["tls_key_file"], text)
        self.assertIn("does not match", text)
        self.assertServesCertificate(d, "phoneclaimd test server one", 1)
        self.assertServes(d)

    def test_unusable_files_keep_the_old_certificate(self):
        d = self.own_tls_daemon()
        key = d.conf["tls_key_file"]
        cert = d.conf["tls_cert_file"]
        saved = d.path("saved.pem")
        shutil.copy(cert, saved)
        for what, spoil, repair in (
                ("key readable by group", lambda: os.chmod(key, 0o640),
                 lambda: os.chmod(key, 0o600)),
                ("no key file", lambda: os.rename(key, key + ".away"),
                 lambda: os.rename(key + ".away", key)),
                ("certificate not PEM",
                 lambda: harness.write_file(cert, "not a certificate\n"),
                 lambda: copy_file(saved, cert, 0o644))):
            with self.subTest(what=what):
                spoil()
                try:
                    self.hup(d, r"warning: reload: .*keeping the old "
                             r"certificate")
                    self.assertServesCertificate(
                        d, "phoneclaimd test server one", 1)
                    self.assertServes(d)
                finally:
                    repair()
        self.hup(d, r"info: reloaded the TLS certificate")


class ConfigErrorTests(TlsCase):
    """Bad TLS settings exit 2, under -n and at start."""

    shared = False

    def assertRefused(self, d, *expected):
        for mode in ("-n", "-f"):
            with self.subTest(mode=mode):
                r = d.run(mode, "-c", d.conf_path)
                self.assertEqual(r.returncode, 2, r.stderr)
                for text in expected:
                    self.assertIn(text, r.stderr)

    def line_of(self, d, key):
        """The config file's line number of key."""
        lines = d.conf_lines()
        for i, line in enumerate(lines):
            if line.startswith(key + " = "):
                return i + 1
        raise AssertionError("%s is not in the config" % key)

    def test_good_tls_config_checks(self):
        d = self.tls_daemon(start=False)
        r = d.run("-n", "-c", d.conf_path)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_missing_key_file(self):
        d = self.tls_daemon(start=False)
        os.unlink(d.conf["tls_key_file"])
        self.assertRefused(d, "%s:%d:" % (d.conf_path,
                                          self.line_of(d, "tls_key_file")),
                           d.conf["tls_key_file"])

    def test_key_readable_by_group(self):
        d = self.tls_daemon(start=False)
        os.chmod(d.conf["tls_key_file"], 0o640)
        self.assertRefused(d, "%s:%d:" % (d.conf_path,
                                          self.line_of(d, "tls_key_file")),
                           d.conf["tls_key_file"])

    def test_cert_without_key(self):
        d = self.tls_daemon(start=False)
        del d.conf["tls_key_file"]
        d.write_conf()
        self.assertRefused(d, "%s:%d:" % (d.conf_path,
                                          self.line_of(d, "tls_cert_file")),
                           "tls_key_file")

    def test_key_without_cert(self):
        d = self.tls_daemon(start=False)
        del d.conf["tls_cert_file"]
        d.write_conf()
        self.assertRefused(d, "%s:%d:" % (d.conf_path,
                                          self.line_of(d, "tls_key_file")),
                           "tls_cert_file")

    def test_relative_paths(self):
        for key in ("tls_cert_file", "tls_key_file"):
            with self.subTest(key=key):
                d = self.tls_daemon(start=False)
                d.conf[key] = os.path.basename(d.conf[key])
                d.write_conf()
                self.assertRefused(d, "%s:%d:" % (d.conf_path,
                                                  self.line_of(d, key)),
                                   "absolute")

    def test_key_that_does_not_match(self):
        d = self.tls_daemon(start=False)
        other = self.pki.new_key("other.key")
        copy_file(other, d.conf["tls_key_file"])
        self.assertRefused(d, d.conf["tls_key_file"],
                           d.conf["tls_cert_file"], "does not match")

    def test_missing_or_bad_certificate(self):
        d = self.tls_daemon(start=False)
        harness.write_file(d.conf["tls_cert_file"], "not a certificate\n")
        self.assertRefused(d, d.conf["tls_cert_file"])
        os.unlink(d.conf["tls_cert_file"])
        self.assertRefused(d, d.conf["tls_cert_file"])


class PlainHttpTests(DaemonTestCase):
    """Without the TLS keys the daemon serves plain HTTP, and says so."""

    def test_plain_http_is_logged(self):
        d = self.new_daemon()
        self.assertRegex(d.log_text(), r"info: listening on "
                         r"127\.0\.0\.1:\d+ \(http\)")
        self.assertNotIn("TLS certificate", d.log_text())


class LeakTests(TlsCase):
    """Many TLS connections, complete or not, leave nothing open."""

    conf = {"request_timeout": REQUEST_TIMEOUT}

    def settled_fds(self, limit, timeout=5.0):
        """Wait until the daemon has at most limit descriptors open."""
        deadline = time.monotonic() + timeout
        n = open_fds(self.d.proc.pid)
        while n > limit and time.monotonic() < deadline:
            time.sleep(0.1)
            n = open_fds(self.d.proc.pid)
        return n

    def test_many_handshakes_leak_no_descriptor(self):
        self.assertServes()
        time.sleep(0.3)
        start = open_fds(self.d.proc.pid)
        for i in range(HANDSHAKES):
            kind = i % 4
            if kind == 0:	# a request, then the daemon closes
                with self.client() as c:
                    reply = c.request("GET", "/healthz", headers={
                        "Connection": "close"})
                    self.assertEqual(reply.status, 200, str(reply))
            elif kind == 1:	# a handshake, then the client leaves
                tls_connect(self.d, self.ctx).close()
            elif kind == 2:	# a clean TLS close (close_notify)
                s = tls_connect(self.d, self.ctx)
                try:
                    s.unwrap()
                except (OSError, ssl.SSLError):
                    pass
                s.close()
            else:		# half a handshake
                with connect(self.d) as s:
                    s.sendall(client_hello(0x0303)[:40])
        end = self.settled_fds(start + FD_SLACK)
        self.assertLessEqual(end, start + FD_SLACK, "%d descriptors open "
                             "before %d TLS connections, %d after" %
                             (start, HANDSHAKES, end))
        self.assertServes()


class ValgrindTests(TlsCase):
    """No SSL, context or socket is lost, whichever way connections end."""

    shared = False

    def setUp(self):
        if shutil.which("valgrind") is None:
            self.skipTest("valgrind not found")
        ldd = subprocess.run(["ldd", harness.require_daemon()],
                             capture_output=True, text=True)
        if "libasan" in ldd.stdout:
            self.skipTest("built with AddressSanitizer")
        if "libtsan" in ldd.stdout:
            self.skipTest("built with ThreadSanitizer")

    def test_tls_connections_and_reloads_under_valgrind(self):
        d = harness.ValgrindDaemon(request_timeout=REQUEST_TIMEOUT)
        self._daemons.append(d)
        d.conf["tls_cert_file"] = d.path("server.pem")
        d.conf["tls_key_file"] = d.path("server.key")
        copy_file(self.cert, d.conf["tls_cert_file"], 0o644)
        copy_file(self.key, d.conf["tls_key_file"])
        d.write_conf()
        d.start(timeout=60)
        self.assertServes(d)
        tls_connect(d, self.ctx).close()
        with connect(d) as s:
            s.sendall(client_hello(0x0303)[:40])
        with connect(d) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            wait_closed(s, 5.0)
        with connect(d) as s:		# cut off by request_timeout
            wait_closed(s, 10.0)
        cert, key = self.pki.issue("phoneclaimd test server four", 4)
        copy_file(cert, d.conf["tls_cert_file"], 0o644)
        copy_file(key, d.conf["tls_key_file"])
        since = d.log_size()
        with self.client(d) as c:
            self.assertReserved(c.claim(fresh_number(), fresh_user(),
                                        "enrollment"), TTL)
            d.send_signal(signal.SIGHUP)
            self.assertIsNotNone(d.wait_for_log(
                r"reloaded the TLS certificate", since, timeout=20.0))
            self.assertReserved(c.claim(fresh_number(), fresh_user(),
                                        "enrollment"), TTL)
        copy_file(self.cert, d.conf["tls_cert_file"], 0o644)
        since = d.log_size()
        d.send_signal(signal.SIGHUP)
        self.assertIsNotNone(d.wait_for_log(r"keeping the old certificate",
                                            since, timeout=20.0))
        self.assertServes(d)
        idle = tls_connect(d, self.ctx)	# still open at the stop
        try:
            rc = d.stop(timeout=60)
        finally:
            idle.close()
        self.assertValgrindClean(d, rc)


if __name__ == "__main__":
    unittest.main()
