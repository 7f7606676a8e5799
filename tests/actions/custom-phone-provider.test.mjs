// conf/actions/custom-phone-provider.js under Node, against a real
// phoneclaimd (enforce and monitor mode) and a fake Twilio on loopback.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  loadAction, startDaemon, stopDaemon, startFakeTwilio, startSilentServer,
  refusedUrl, secretsFor, captureLog, claim, freshNumber, freshUser,
  TWILIO_SID, TWILIO_TOKEN, TWILIO_FROM,
} from './helpers.mjs';

const action = loadAction('custom-phone-provider.js');
const T = { timeout: 15000 };

let daemon, monitor, capped, twilio, failed = false;

before(async () => {
  twilio = await startFakeTwilio();
  daemon = await startDaemon();
  monitor = await startDaemon({ mode: 'monitor' });
  capped = await startDaemon({ max_reservations_per_user: 1 });
});

after(async () => {
  await stopDaemon(daemon, { keep: failed });
  await stopDaemon(monitor, { keep: failed });
  await stopDaemon(capped, { keep: failed });
  if (twilio) await twilio.close();
});

/** A custom-phone-provider event. */
function event(secrets, recipient, userId, opts = {}) {
  const code = opts.code || String(100000 + Math.floor(Math.random() * 900000));
  return {
    notification: {
      message_type: opts.message_type || 'otp_enroll',
      recipient,
      delivery_method: opts.delivery_method || 'text',
      code,
      as_text: 'Your verification code is ' + code,
      as_voice: 'Your verification code is ' + code.split('').join(' '),
      locale: 'en_US',
      from: TWILIO_FROM,
    },
    user: { user_id: userId, app_metadata: {}, user_metadata: {} },
    client: { client_id: 'client', name: 'Test app', metadata: {} },
    connection: opts.connection || {
      id: 'con_db', name: 'Username-Password-Authentication', strategy: 'auth0',
    },
    tenant: { id: 'test-tenant' },
    secrets,
  };
}

/** Secrets with otp_verify learning turned on (LEARN_ON_VERIFY). */
function learning(d, extra = {}) {
  return secretsFor(d, twilio, { LEARN_ON_VERIFY: 'true', ...extra });
}

/** A fake api that records drop() and retry(). */
function fakeApi() {
  const calls = [];
  return {
    calls,
    notification: {
      drop(reason) { calls.push(['drop', reason]); },
      retry(reason) { calls.push(['retry', reason]); },
    },
  };
}

/** Run the Action; returns {error, calls, lines, ms, ev}. */
async function run(ev) {
  const api = fakeApi();
  const t0 = Date.now();
  const [outcome, lines] = await captureLog(() => action.onExecuteCustomPhoneProvider(ev, api));
  const ms = Date.now() - t0;
  const digits = ev.notification.recipient.replace(/[^0-9]/g, '');
  for (const line of lines) {
    assert.ok(!line.includes(digits), 'full number logged: ' + line);
    for (const secret of [ev.secrets.PHONECLAIMD_TOKEN, TWILIO_TOKEN]) {
      if (secret) assert.ok(!line.includes(secret), 'token logged: ' + line);
    }
  }
  return { error: outcome.error, calls: api.calls, lines, ms, ev };
}

function t(name, fn) {
  test(name, T, async () => {
    try { await fn(); } catch (e) { failed = true; throw e; }
  });
}

t('otp_enroll of a free number: reserved, SMS sent, never throws', async () => {
  const phone = freshNumber();
  const r = await run(event(secretsFor(daemon, twilio), phone, freshUser()));
  assert.equal(r.error, undefined);
  assert.deepEqual(r.calls, []);
  const sent = twilio.to(phone);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].path, '/2010-04-01/Accounts/' + TWILIO_SID + '/Messages.json');
  assert.equal(sent[0].form.From, TWILIO_FROM);
  assert.ok(sent[0].form.Body.includes(r.ev.notification.code));
  assert.ok(r.lines.some((l) => /otp_enroll \.\.\.\d{4}: reserved/.test(l)), r.lines.join('\n'));
  assert.equal((await claim(daemon, phone, freshUser())).status, 409);
});

t('otp_enroll of the user\'s own number: owned, SMS sent', async () => {
  const phone = freshNumber();
  const user = freshUser();
  await run(event(secretsFor(daemon, twilio), phone, user));
  const r = await run(event(secretsFor(daemon, twilio), phone, user));
  assert.deepEqual(r.calls, []);
  assert.equal(twilio.to(phone).length, 2);
  assert.ok(r.lines.some((l) => /: owned$/.test(l)), r.lines.join('\n'));
});

t('otp_enroll of a taken number: dropped, no SMS, no exception', async () => {
  const phone = freshNumber();
  assert.equal((await claim(daemon, phone, freshUser())).status, 200);
  const r = await run(event(secretsFor(daemon, twilio), phone, freshUser()));
  assert.equal(r.error, undefined);
  assert.equal(r.calls.length, 1);
  assert.equal(r.calls[0][0], 'drop');
  assert.match(r.calls[0][1], /cannot be used/);
  assert.equal(twilio.to(phone).length, 0);
});

t('otp_enroll over max_reservations_per_user: dropped, no SMS', async () => {
  const user = freshUser();
  const secrets = secretsFor(capped, twilio, { FAIL_OPEN: 'true' });
  const first = await run(event(secrets, freshNumber(), user));
  assert.deepEqual(first.calls, []);
  const phone = freshNumber();
  const r = await run(event(secrets, phone, user));
  assert.equal(r.error, undefined);
  assert.equal(r.calls.length, 1);
  assert.equal(r.calls[0][0], 'drop');
  assert.match(r.calls[0][1], /Too many phone numbers/);
  assert.equal(twilio.to(phone).length, 0);
});

t('otp_verify, LEARN_ON_VERIFY=true: teaches the number; another user\'s otp_enroll is then dropped', async () => {
  const phone = freshNumber();
  const r = await run(event(learning(daemon), phone, freshUser(),
    { message_type: 'otp_verify' }));
  assert.deepEqual(r.calls, []);
  assert.ok(r.lines.some((l) => /otp_verify \.\.\.\d{4}: learned/.test(l)), r.lines.join('\n'));
  assert.equal(twilio.to(phone).length, 1);
  const r2 = await run(event(secretsFor(daemon, twilio), phone, freshUser()));
  assert.deepEqual(r2.calls.map((c) => c[0]), ['drop']);
  assert.equal(twilio.to(phone).length, 1);
});

t('otp_verify, LEARN_ON_VERIFY=true: a number someone else holds is delivered (conflict)', async () => {
  const phone = freshNumber();
  assert.equal((await claim(daemon, phone, freshUser())).status, 200);
  const r = await run(event(learning(daemon), phone, freshUser(),
    { message_type: 'otp_verify' }));
  assert.deepEqual(r.calls, []);
  assert.ok(r.lines.some((l) => /: conflict$/.test(l)), r.lines.join('\n'));
  assert.equal(twilio.to(phone).length, 1);
});

t('otp_verify by default: delivered, no claim (it may be a passwordless or phone-identifier code)', async () => {
  for (const value of [undefined, 'false', 'no', '']) {
    const phone = freshNumber();
    const extra = value === undefined ? {} : { LEARN_ON_VERIFY: value };
    const r = await run(event(secretsFor(daemon, twilio, extra), phone, freshUser(),
      { message_type: 'otp_verify' }));
    assert.deepEqual(r.calls, [], String(value));
    assert.equal(twilio.to(phone).length, 1, String(value));
    assert.ok(!r.lines.some((l) => /learned|conflict|owned/.test(l)), r.lines.join('\n'));
    assert.ok(r.lines.some((l) => /not an MFA code for certain, no claim/.test(l)),
      r.lines.join('\n'));
    // The number stayed free: another user can still reserve it.
    const other = await claim(daemon, phone, freshUser());
    assert.equal(other.status, 200, String(value));
    assert.equal(other.body.result, 'reserved', String(value));
  }
});

t('otp_verify by default does not call the daemon at all', async () => {
  const phone = freshNumber();
  const secrets = secretsFor(null, twilio,
    { PHONECLAIMD_URL: await refusedUrl(), PHONECLAIMD_TOKEN: 'x' });
  const r = await run(event(secrets, phone, freshUser(), { message_type: 'otp_verify' }));
  assert.deepEqual(r.calls, []);
  assert.equal(twilio.to(phone).length, 1);
  assert.ok(!r.lines.some((l) => /unavailable/.test(l)), r.lines.join('\n'));
});

t('otp_verify, LEARN_ON_VERIFY=true: a passwordless SMS login is still never claimed', async () => {
  const cases = [
    { user: 'sms|' + freshUser().slice(6), connection: undefined },
    { user: freshUser(), connection: { id: 'con_sms', name: 'sms', strategy: 'sms' } },
  ];
  for (const c of cases) {
    const phone = freshNumber();
    const r = await run(event(learning(daemon), phone, c.user,
      { message_type: 'otp_verify', connection: c.connection }));
    assert.deepEqual(r.calls, []);
    assert.equal(twilio.to(phone).length, 1);
    assert.ok(r.lines.some((l) => /passwordless SMS login, no claim/.test(l)),
      r.lines.join('\n'));
    const other = await claim(daemon, phone, freshUser());
    assert.equal(other.body.result, 'reserved', JSON.stringify(c));
  }
});

t('other message types are delivered without asking the daemon', async () => {
  for (const type of ['blocked_account', 'change_password', 'password_breach']) {
    const phone = freshNumber();
    // A taken number and a daemon that cannot be reached: neither matters.
    const secrets = secretsFor(null, twilio,
      { PHONECLAIMD_URL: await refusedUrl(), PHONECLAIMD_TOKEN: 'x' });
    const r = await run(event(secrets, phone, freshUser(), { message_type: type }));
    assert.deepEqual(r.calls, [], type);
    assert.equal(twilio.to(phone).length, 1, type);
    assert.ok(!r.lines.some((l) => /unavailable/.test(l)), r.lines.join('\n'));
  }
});

t('daemon down, FAIL_OPEN=false: otp_enroll dropped, no SMS', async () => {
  const phone = freshNumber();
  const secrets = secretsFor(null, twilio,
    { PHONECLAIMD_URL: await refusedUrl(), PHONECLAIMD_TOKEN: 'x', FAIL_OPEN: 'false' });
  const r = await run(event(secrets, phone, freshUser()));
  assert.deepEqual(r.calls.map((c) => c[0]), ['drop']);
  assert.equal(twilio.to(phone).length, 0);
});

t('daemon down, FAIL_OPEN=true: otp_enroll delivered', async () => {
  const phone = freshNumber();
  const secrets = secretsFor(null, twilio,
    { PHONECLAIMD_URL: await refusedUrl(), PHONECLAIMD_TOKEN: 'x', FAIL_OPEN: 'true' });
  const r = await run(event(secrets, phone, freshUser()));
  assert.deepEqual(r.calls, []);
  assert.equal(twilio.to(phone).length, 1);
});

t('daemon down: otp_verify always delivered', async () => {
  const phone = freshNumber();
  const secrets = learning(null,
    { PHONECLAIMD_URL: await refusedUrl(), PHONECLAIMD_TOKEN: 'x', FAIL_OPEN: 'false' });
  const r = await run(event(secrets, phone, freshUser(), { message_type: 'otp_verify' }));
  assert.deepEqual(r.calls, []);
  assert.equal(twilio.to(phone).length, 1);
});

t('daemon slow: the timeout is honoured, then FAIL_OPEN decides', async () => {
  const silent = await startSilentServer();
  try {
    for (const failOpen of ['false', 'true']) {
      const phone = freshNumber();
      const secrets = secretsFor(null, twilio, {
        PHONECLAIMD_URL: silent.url, PHONECLAIMD_TOKEN: 'x',
        PHONECLAIMD_TIMEOUT_MS: '500', FAIL_OPEN: failOpen,
      });
      const r = await run(event(secrets, phone, freshUser()));
      assert.ok(r.ms >= 450 && r.ms < 1500, 'took ' + r.ms + ' ms for a 500 ms timeout');
      if (failOpen === 'true') {
        assert.deepEqual(r.calls, []);
        assert.equal(twilio.to(phone).length, 1);
      } else {
        assert.deepEqual(r.calls.map((c) => c[0]), ['drop']);
        assert.equal(twilio.to(phone).length, 0);
      }
    }
  } finally {
    await silent.close();
  }
});

t('an invalid number: dropped, no SMS', async () => {
  const r = await run(event(secretsFor(daemon, twilio), '+1 2', freshUser()));
  assert.equal(r.calls.length, 1);
  assert.equal(r.calls[0][0], 'drop');
  assert.match(r.calls[0][1], /not valid/);
  assert.equal(twilio.requests.filter((q) => q.form.To === '+12').length, 0);
});

t('monitor mode: a taken number is delivered', async () => {
  const phone = freshNumber();
  assert.equal((await claim(monitor, phone, freshUser())).status, 200);
  const r = await run(event(secretsFor(monitor, twilio), phone, freshUser()));
  assert.deepEqual(r.calls, []);
  assert.equal(twilio.to(phone).length, 1);
  assert.ok(r.lines.some((l) => /monitor mode/.test(l)), r.lines.join('\n'));
});

t('voice delivery: a Twilio call says as_voice', async () => {
  const phone = freshNumber();
  const r = await run(event(secretsFor(daemon, twilio), phone, freshUser(),
    { delivery_method: 'voice', code: '987654' }));
  assert.deepEqual(r.calls, []);
  const sent = twilio.to(phone);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].path, '/2010-04-01/Accounts/' + TWILIO_SID + '/Calls.json');
  assert.match(sent[0].form.Twiml, /<Say>Your verification code is 9 8 7 6 5 4<\/Say>/);
});

t('provider failure (HTTP 500): retry, with the reservation kept', async () => {
  const phone = freshNumber();
  const user = freshUser();
  twilio.mode = 'fail';
  try {
    const r = await run(event(secretsFor(daemon, twilio), phone, user));
    assert.equal(r.error, undefined);
    assert.deepEqual(r.calls.map((c) => c[0]), ['retry']);
    assert.match(r.calls[0][1], /provider HTTP 500/);
  } finally {
    twilio.mode = 'ok';
  }
  // Auth0's retry runs the Action again: the user still owns the number.
  const r2 = await run(event(secretsFor(daemon, twilio), phone, user));
  assert.deepEqual(r2.calls, []);
  assert.ok(r2.lines.some((l) => /: owned$/.test(l)), r2.lines.join('\n'));
});

t('provider unreachable: retry', async () => {
  const phone = freshNumber();
  const r = await run(event(secretsFor(daemon, twilio, { TWILIO_BASE_URL: await refusedUrl() }),
    phone, freshUser()));
  assert.deepEqual(r.calls.map((c) => c[0]), ['retry']);
});

t('provider refuses the number (HTTP 400, 21211): dropped, not retried', async () => {
  const phone = freshNumber();
  twilio.mode = 'reject';
  try {
    const r = await run(event(secretsFor(daemon, twilio), phone, freshUser()));
    assert.deepEqual(r.calls.map((c) => c[0]), ['drop']);
    assert.match(r.calls[0][1], /provider HTTP 400 code 21211/);
  } finally {
    twilio.mode = 'ok';
  }
});
