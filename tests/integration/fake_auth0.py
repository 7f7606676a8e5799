"""
A fake Auth0 tenant for the Management API client tests: POST /oauth/token
(client credentials), GET /api/v2/logs (checkpoint mode with from/take
and Link rel="next", and the date search that seeds a first backfill),
and GET / DELETE /api/v2/users/{id}/authentication-methods[/{id}] with
phone numbers in full or obfuscated as the tenant flag
disable_management_api_sms_obfuscation decides (auth0-facts.md 4.4), the
users export job (POST /api/v2/jobs/users-exports, GET /api/v2/jobs/{id},
then its gzipped NDJSON file at the job's location) and the users list
(GET /api/v2/users, paged, 1000 results at most), on 127.0.0.1 in a
thread.  Tests script failures (status codes, rate-limit
headers, slow answers) and read back every request it saw.
"""

import gzip
import http.server
import json
import secrets
import ssl
import threading
import time
import urllib.parse


def later(a, b):
    """True if log id a sorts after b (longer, or same length and later)."""
    return (len(a), a) > (len(b), b)


class FakeAuth0:
    """The tenant's state, the scripted answers and the requests seen."""

    def __init__(self, client_id="test-client", secret=None,
                 expires_in=86400, cert=None):
        self.client_id = client_id
        self.secret = secret or "secret-" + secrets.token_hex(12)
        self.expires_in = expires_in
        self.logs = []			# Management API log objects
        self.tokens = []		# issued, newest last
        self.revoked = set()
        self.script = []		# (path prefix, status, headers, delay)
        self.seen = []			# (method, path, headers, body, time)
        self.rate_headers = {}		# sent on every logs answer
        self.deleted = []		# paths of deleted methods
        self.users = {}			# user id -> [phone methods]
        self.obfuscate = None		# None (full), "digits" or "all"
        self.jobs = {}			# job id -> users export job
        self.exports = {}		# file name -> its bytes
        self.export_polls = 1		# "pending" answers before done
        self.export_refused = None	# a status: no export on this plan
        self.export_gzip = True
        self.ghosts = []		# listed, but gone when read
        self.answered = []		# (path, status, time) of scripted
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        if cert is not None:		# (certfile, keyfile): HTTPS
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*cert)
            self.server.socket = ctx.wrap_socket(self.server.socket,
                                                 server_side=True)
            self.url = "https://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def add(self, *events):
        """Append Management API log objects (each with an _id)."""
        with self.lock:
            self.logs.extend(events)
            self.logs.sort(key=lambda e: (len(e["_id"]), e["_id"]))

    def add_phone(self, user, phone, confirmed=True, device=None,
                  created=None):
        """Give user a phone method (E.164 phone); return its id."""
        mid = "phone|" + (device or "dev_" + secrets.token_hex(8))
        method = {"id": mid, "type": "phone", "confirmed": confirmed,
                  "name": "Phone", "phone_number": phone,
                  "created_at": created or
                  time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                  "preferred_authentication_method": "sms",
                  "authentication_methods": [
                      {"id": "sms|" + mid[6:], "type": "sms"},
                      {"id": "voice|" + mid[6:], "type": "voice"}]}
        with self.lock:
            self.users.setdefault(user, []).append(method)
        return mid

    def add_user(self, user, *others):
        """A user with no phone method (and other methods, if given)."""
        with self.lock:
            self.users.setdefault(user, []).extend(others)

    def methods(self, user):
        """user's methods as the API shows them, or None if no such user."""
        with self.lock:
            if user not in self.users:
                return None
            out = [dict(m) for m in self.users[user]]
        for m in out:
            if m.get("type") != "phone":
                continue
            if self.obfuscate == "digits":
                m["phone_number"] = "XXXXXXXX" + m["phone_number"][-4:]
            elif self.obfuscate == "all":
                m["phone_number"] = "XXXXXXXX****"
        return out

    def delete_method(self, user, mid):
        """Delete user's method mid (any of its ids); False if absent."""
        with self.lock:
            methods = self.users.get(user, [])
            for m in methods:
                ids = [m["id"]] + [a["id"] for a in
                                   m.get("authentication_methods", [])]
                if mid in ids:
                    methods.remove(m)
                    return True
        return False

    def fail_next(self, prefix, status, headers=None, delay=0.0, times=1,
                  after=0):
        """Answer the next requests to prefix with status (and headers),
        once after more requests to prefix have been answered."""
        with self.lock:
            for _ in range(times):
                self.script.append([prefix, status, headers or {}, delay,
                                    after])

    def requests(self, prefix):
        with self.lock:
            return [s for s in self.seen if s[1].startswith(prefix)]

    def scripted(self, path):
        with self.lock:
            for i, entry in enumerate(self.script):
                if path.startswith(entry[0]):
                    if entry[4] > 0:
                        entry[4] -= 1
                        return None
                    return self.script.pop(i)
        return None

    def create_export(self, body):
        """A users export job; its file lists the users when it ends."""
        job = {"type": "users_export", "status": "pending",
               "id": "job_" + secrets.token_hex(8),
               "format": body.get("format", "csv"),
               "fields": body.get("fields", []),
               "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                           time.gmtime()),
               "_polls": self.export_polls}
        with self.lock:
            self.jobs[job["id"]] = job
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def job(self, jid):
        """The job as GET /api/v2/jobs/{id} shows it, or None."""
        with self.lock:
            job = self.jobs.get(jid)
            if job is None:
                return None
            if job["status"] == "pending" and job["_polls"] > 0:
                job["_polls"] -= 1
            elif job["status"] == "pending":
                lines = "".join(json.dumps({"user_id": u}) + "\n"
                                for u in list(self.users) +
                                self.ghosts).encode()
                name = "%s.json%s" % (jid, ".gz" if self.export_gzip
                                      else "")
                self.exports[name] = gzip.compress(lines) \
                    if self.export_gzip else lines
                job["status"] = "completed"
                job["location"] = "%s/exports/%s" % (self.url, name)
            return {k: v for k, v in job.items() if not k.startswith("_")}

    def list_users(self, query):
        """GET /api/v2/users: (status, body)."""
        page = int(query.get("page", ["0"])[0])
        per_page = min(int(query.get("per_page", ["50"])[0]), 100)
        if (page + 1) * per_page > 1000:
            return 400, {"statusCode": 400, "error": "Bad Request",
                         "message": "You can only page through the "
                         "first 1000 records."}
        with self.lock:
            ids = list(self.users) + self.ghosts
        users = [{"user_id": u} for u in
                 ids[page * per_page:(page + 1) * per_page]]
        if query.get("include_totals", ["false"])[0] != "true":
            return 200, users
        return 200, {"start": page * per_page, "limit": per_page,
                     "length": len(users), "users": users,
                     "total": len(ids)}

    def token(self, form):
        """Check client credentials; a new token, or None."""
        if form.get("grant_type") != ["client_credentials"] or \
                form.get("client_id") != [self.client_id] or \
                form.get("client_secret") != [self.secret] or \
                not form.get("audience", [""])[0].endswith("/api/v2/"):
            return None
        tok = "tok-" + secrets.token_hex(16)
        with self.lock:
            self.tokens.append(tok)
        return tok

    def authorised(self, header):
        with self.lock:
            return header is not None and header.startswith("Bearer ") and \
                header[7:] in self.tokens and header[7:] not in self.revoked

    def page(self, query):
        """Logs after from (take at most), or a date search."""
        with self.lock:
            logs = list(self.logs)
        if "q" in query:
            since = query["q"][0].split("[", 1)[1].split(" ", 1)[0]
            n = int(query.get("per_page", ["50"])[0])
            return [e for e in logs if e["date"] >= since][:n], None
        start = query.get("from", [""])[0]
        take = min(int(query.get("take", ["50"])[0]), 100)
        out = [e for e in logs if not start or later(e["_id"], start)]
        out = out[:take]
        nxt = out[-1]["_id"] if out else start
        return out, "%s/api/v2/logs?from=%s&take=%d" % (self.url, nxt, take)


class _Handler(http.server.BaseHTTPRequestHandler):
    fake = None
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and the
    # client's delayed ACK hold each answer back by some 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def record(self, body=b""):
        with self.fake.lock:
            self.fake.seen.append((self.command, self.path,
                                   dict(self.headers), body, time.time()))

    def run_script(self):
        entry = self.fake.scripted(self.path)
        if entry is None:
            return False
        _, status, headers, delay, _ = entry
        if delay:
            time.sleep(delay)
        if status is None:
            return False
        with self.fake.lock:
            self.fake.answered.append((self.path, status, time.time()))
        self.answer(status, {"statusCode": status, "error": "scripted"},
                    headers)
        return True

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.record(body)
        if self.run_script():
            return
        if self.path == "/api/v2/jobs/users-exports":
            self.post_export(body)
            return
        if self.path != "/oauth/token":
            self.answer(404, {"error": "not_found"})
            return
        tok = self.fake.token(urllib.parse.parse_qs(body.decode()))
        if tok is None:
            self.answer(401, {"error": "access_denied"})
            return
        self.answer(200, {"access_token": tok, "token_type": "Bearer",
                          "expires_in": self.fake.expires_in,
                          "scope": "read:logs"})

    def post_export(self, body):
        if not self.fake.authorised(self.headers.get("Authorization")):
            self.answer(401, {"statusCode": 401, "error": "Unauthorized"})
            return
        if self.fake.export_refused is not None:
            status = self.fake.export_refused
            self.answer(status, {"statusCode": status, "error": "Forbidden",
                                 "message": "Not available on this plan"})
            return
        self.answer(201, self.fake.create_export(json.loads(body)),
                    self.fake.rate_headers)

    def get_other(self, url, path):
        """The jobs, their files and the users list; False if none."""
        if path.startswith("/exports/"):
            with self.fake.lock:
                data = self.fake.exports.get(path[9:])
            if data is None:
                self.answer(404, {"error": "not_found"})
                return True
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        if not path.startswith("/api/v2/jobs/") and path != "/api/v2/users":
            return False
        if not self.fake.authorised(self.headers.get("Authorization")):
            self.answer(401, {"statusCode": 401, "error": "Unauthorized"})
            return True
        if path == "/api/v2/users":
            status, body = self.fake.list_users(
                urllib.parse.parse_qs(url.query))
            self.answer(status, body, self.fake.rate_headers)
            return True
        job = self.fake.job(path[13:])
        if job is None:
            self.answer(404, {"statusCode": 404, "error": "Not Found",
                              "message": "The job does not exist."})
        else:
            self.answer(200, job, self.fake.rate_headers)
        return True

    def do_DELETE(self):
        self.record()
        if self.run_script():
            return
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if not path.startswith("/api/v2/users/") or \
                "/authentication-methods/" not in path:
            self.answer(404, {"error": "not_found"})
            return
        if not self.fake.authorised(self.headers.get("Authorization")):
            self.answer(401, {"statusCode": 401, "error": "Unauthorized"})
            return
        with self.fake.lock:
            self.fake.deleted.append(path)
        parts = path.split("/")
        if len(parts) == 7 and self.fake.users and \
                not self.fake.delete_method(parts[4], parts[6]):
            self.answer(404, {"statusCode": 404, "error": "Not Found",
                              "message": "Authentication method not found"})
            return
        self.answer(204, None)

    def do_GET(self):
        self.record()
        if self.run_script():
            return
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        parts = path.split("/")
        methods = len(parts) == 6 and path.startswith("/api/v2/users/") \
            and parts[5] == "authentication-methods"
        if not methods and self.get_other(url, path):
            return
        if url.path != "/api/v2/logs" and not methods:
            self.answer(404, {"error": "not_found"})
            return
        if not self.fake.authorised(self.headers.get("Authorization")):
            self.answer(401, {"statusCode": 401, "error": "Unauthorized"})
            return
        if methods:
            found = self.fake.methods(parts[4])
            if found is None:
                self.answer(404, {"statusCode": 404, "error": "Not Found",
                                  "message": "The user does not exist.",
                                  "errorCode": "inexistent_user"},
                            self.fake.rate_headers)
            else:
                self.answer(200, found, self.fake.rate_headers)
            return
        logs, nxt = self.fake.page(urllib.parse.parse_qs(url.query))
        headers = dict(self.fake.rate_headers)
        if nxt is not None:
            headers["Link"] = '<%s>; rel="next"' % nxt
        self.answer(200, logs, headers)
