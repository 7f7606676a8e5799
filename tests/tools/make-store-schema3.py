#!/usr/bin/env python3
"""
Write tests/fixtures/store-schema3/: a state directory of schema 3 (the
layout before issue 7's leaner one), as db_dump text, for the migration
test (tests/integration/test_migrate.py).

It was run once, with the daemon of commit 9865f8a (the last release of
schema 3):

    PHONECLAIMD=build/daemon/phoneclaimd \\
        tests/tools/make-store-schema3.py tests/fixtures/store-schema3

It starts that daemon on a new state directory, makes every kind of record
through the daemon's own interfaces (reservations, log events, admin
claims, a conflict, watermarks, a reservation window), stops it cleanly,
and dumps each database with db5.3_dump.  expected.json says what the test
must find after the migration.  test-hash-key.hex is the hash key in hex,
made for this fixture only; it protects nothing.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir, "integration"))

import harness  # noqa: E402
import test_logstream as ls  # noqa: E402

TTL = 86400


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    d = harness.Daemon(pending_ttl=str(TTL), max_users_per_number="2",
                       max_reservations_per_user="0")
    d.start()
    started = int(time.time())
    exp = {"generated": started, "pending_ttl": TTL, "numbers": {},
           "users": {}}

    def note(phone, holders):
        exp["numbers"][phone] = sorted(holders)

    # 1. A reservation that stays pending.
    p1, u1 = "+14155550101", "auth0|5f0c1a2b3c4d5e6f7a8b9c01"
    assert d.claim(p1, u1).status == 200
    note(p1, [[u1, "pending"]])

    # 2. A reservation completed by its enrolment event (active, with an
    # enrolment id), then a second number of the same user by an admin.
    p2, u2 = "+14155550102", "auth0|5f0c1a2b3c4d5e6f7a8b9c02"
    dev2 = "dev_0a1b2c3d4e5f6071"
    assert d.claim(p2, u2).status == 200
    r = d.request(
        "POST", "/v1/log-stream",
        json.dumps([ls.enrolled(u2, p2, device=dev2)]).encode(),
        {"Authorization": d.log_stream_token,
         "Content-Type": "application/json"})
    assert r.status == 200, r
    note(p2, [[u2, "active"]])
    p3 = "+442079460103"
    assert "result" in d.ask("claim %s %s" % (p3, u2))
    note(p3, [[u2, "active"]])
    exp["users"][u2] = sorted([p2, p3])
    exp["enrolment"] = {"user": u2, "number": p2, "enrol_id": dev2}

    # 3. Two users on one number (max_users_per_number = 2), by log events.
    p4 = "+14155550104"
    u4a, u4b = "auth0|5f0c1a2b3c4d5e6f7a8b9c4a", "auth0|5f0c1a2b3c4d5e6f7a8b9c4b"
    items = [ls.enrolled(u4a, p4), ls.enrolled(u4b, p4)]
    # 4. A third enrolment on it: a conflict.
    u4c = "auth0|5f0c1a2b3c4d5e6f7a8b9c4c"
    items.append(ls.enrolled(u4c, p4))
    # 5. A number enrolled and unenrolled (a per-number watermark), and a
    # deleted user (a user-wide watermark).
    p5, u5 = "+14155550105", "auth0|5f0c1a2b3c4d5e6f7a8b9c05"
    dev5 = "dev_1a1b2c3d4e5f6071"
    items.append(ls.enrolled(u5, p5, device=dev5))
    u6 = "auth0|5f0c1a2b3c4d5e6f7a8b9c06"
    p6 = "+14155550106"
    items.append(ls.enrolled(u6, p6))
    r = d.request("POST", "/v1/log-stream", json.dumps(items).encode(),
                  {"Authorization": d.log_stream_token,
                   "Content-Type": "application/json"})
    assert r.status == 200, r
    later = [ls.unenrolled(u5, p5, auth_id="phone|" + dev5, enrol_id=dev5),
             ls.deleted(u6)]
    r = d.request("POST", "/v1/log-stream", json.dumps(later).encode(),
                  {"Authorization": d.log_stream_token,
                   "Content-Type": "application/json"})
    assert r.status == 200, r
    note(p4, [[u4a, "active"], [u4b, "active"]])
    note(p5, [])
    note(p6, [])
    exp["conflict"] = {"number": p4, "user": u4c}
    exp["released"] = {"unenrolled": [u5, p5], "deleted": [u6, p6]}

    # Check what the daemon holds before the dump.
    for phone, holders in exp["numbers"].items():
        got = sorted([c["user_id"], c["state"]]
                     for c in d.ask("lookup " + phone)["claims"])
        assert got == holders, (phone, got, holders)
    d.stop()

    for name in sorted(os.listdir(d.state_dir)):
        if not name.endswith(".db"):
            continue
        with open(os.path.join(out, name[:-3] + ".dump"), "w") as f:
            subprocess.run(["db5.3_dump", "-h", d.state_dir, name],
                           stdout=f, check=True)
    with open(os.path.join(d.state_dir, "hash.key"), "rb") as f:
        key = f.read()
    # As hex: *.key files are never committed (.gitignore).
    with open(os.path.join(out, "test-hash-key.hex"), "w") as f:
        f.write(key.hex() + "\n")
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(exp, f, indent=1, sort_keys=True)
        f.write("\n")
    d.remove()


if __name__ == "__main__":
    main()
