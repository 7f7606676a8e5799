// conf/actions/send-phone-message.js under Node, against a real phoneclaimd
// (enforce and monitor mode) and a fake Twilio on loopback.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  loadAction, startDaemon, stopDaemon, startFakeTwilio, startSilentServer,
  refusedUrl, secretsFor, captureLog, claim, freshNumber, freshUser,
  TWILIO_SID, TWILIO_TOKEN, TWILIO_FROM,
} from './helpers.mjs';

const action = loadAction('send-phone-message.js');
const T = { timeout: 15000 };
const BLOCKED = 'This phone number cannot be used for verification. ' +
  'Please use a different number.';

let daemon, monitor, capped, twilio, failed = false;

before(async () => {
  twilio = await startFakeTwilio();
  daemon = await startDaemon();
  monitor = await startDaemon({ mode: 'monitor' });
  capped = await startDaemon({ max_reservations_per_user: 2 });
});

after(async () => {
  await stopDaemon(daemon, { keep: failed });
  await stopDaemon(monitor, { keep: failed });
  await stopDaemon(capped, { keep: failed });
  if (twilio) await twilio.close();
});

/** A Send Phone Message event. */
function event(secrets, recipient, userId, opts = {}) {
  const code = opts.code || String(100000 + Math.floor(Math.random() * 900000));
  return {
    message_options: {
      action: opts.action || 'enrollment',
      code,
      message_type: opts.message_type || 'sms',
      recipient,
      text: opts.text === undefined ? 'Your verification code is ' + code : opts.text,
    },
    user: {
      user_id: userId, app_metadata: {}, user_metadata: {},
      created_at: '2026-01-01T00:00:00.000Z', updated_at: '2026-01-01T00:00:00.000Z',
      email_verified: true,
    },
    client: { client_id: 'client', name: 'Test app', metadata: {} },
    request: { ip: '203.0.113.7', method: 'POST', hostname: 'tenant.example' },
    tenant: { id: 'test-tenant' },
    secrets,
  };
}

const api = { cache: { get() { return undefined; }, set() {}, delete() {} } };

/** Run the Action; returns {error, lines, ms, ev}. */
async function run(ev) {
  const t0 = Date.now();
  const [outcome, lines] = await captureLog(() => action.onExecuteSendPhoneMessage(ev, api));
  const ms = Date.now() - t0;
  // Never a full number or a token in the log.
  const digits = ev.message_options.recipient.replace(/[^0-9]/g, '');
  for (const line of lines) {
    assert.ok(!line.includes(digits), 'full number logged: ' + line);
    assert.ok(line.length <= 256, 'log line over 256 chars: ' + line);
    for (const secret of [ev.secrets.PHONECLAIMD_TOKEN, TWILIO_TOKEN]) {
      if (secret) assert.ok(!line.includes(secret), 'token logged: ' + line);
    }
  }
  return { error: outcome.error, lines, ms, ev };
}

/** Wrap a test body so that a failure keeps the daemons' directories. */
function t(name, fn) {
  test(name, T, async () => {
    try { await fn(); } catch (e) { failed = true; throw e; }
  });
}

t('enrolment of a free number reserves it and sends the SMS', async () => {
  const phone = freshNumber();
  const pretty = phone.replace(/^\+1(\d{3})(\d{3})(\d{4})$/, '+1 ($1) $2-$3');
  const r = await run(event(secretsFor(daemon, twilio), pretty, freshUser()));
  assert.equal(r.error, undefined);
  const sent = twilio.to(phone);
  assert.equal(sent.length, 1, 'one SMS to the E.164 form of the number');
  const req = sent[0];
  assert.equal(req.method, 'POST');
  assert.equal(req.path, '/2010-04-01/Accounts/' + TWILIO_SID + '/Messages.json');
  assert.equal(req.auth, 'Basic ' + Buffer.from(TWILIO_SID + ':' + TWILIO_TOKEN).toString('base64'));
  assert.match(req.contentType, /^application\/x-www-form-urlencoded/);
  assert.equal(req.form.From, TWILIO_FROM);
  assert.ok(req.form.Body.includes(r.ev.message_options.code), 'body has the code');
  assert.ok(r.lines.some((l) => /enrollment \.\.\.\d{4}: reserved/.test(l)), r.lines.join('\n'));
  // The number is now reserved for that user.
  const other = await claim(daemon, phone, freshUser());
  assert.deepEqual([other.status, other.body], [409, { result: 'taken' }]);
});

t('enrolment of the user\'s own number is allowed again (owned)', async () => {
  const phone = freshNumber();
  const user = freshUser();
  assert.equal((await run(event(secretsFor(daemon, twilio), phone, user))).error, undefined);
  const r = await run(event(secretsFor(daemon, twilio), phone, user));
  assert.equal(r.error, undefined);
  assert.equal(twilio.to(phone).length, 2);
  assert.ok(r.lines.some((l) => /: owned$/.test(l)), r.lines.join('\n'));
});

t('enrolment of a taken number throws for the user and sends nothing', async () => {
  const phone = freshNumber();
  assert.equal((await claim(daemon, phone, freshUser())).status, 200);
  const r = await run(event(secretsFor(daemon, twilio), phone, freshUser()));
  assert.ok(r.error instanceof Error);
  assert.equal(r.error.message, BLOCKED);
  assert.equal(twilio.to(phone).length, 0, 'no SMS for a taken number');
  assert.ok(!r.lines.join('\n').includes(phone));
});

t('the refusal text comes from the BLOCKED_MESSAGE secret', async () => {
  const phone = freshNumber();
  assert.equal((await claim(daemon, phone, freshUser())).status, 200);
  const text = 'Ce numéro est déjà utilisé.';
  const r = await run(event(secretsFor(daemon, twilio, { BLOCKED_MESSAGE: text }),
    phone, freshUser()));
  assert.equal(r.error && r.error.message, text);
  assert.equal(twilio.to(phone).length, 0);
});

t('a user over max_reservations_per_user is refused, even failing open', async () => {
  const user = freshUser();
  const secrets = secretsFor(capped, twilio, { FAIL_OPEN: 'true' });
  for (let i = 0; i < 2; i++) {
    assert.equal((await run(event(secrets, freshNumber(), user))).error, undefined);
  }
  const phone = freshNumber();
  const r = await run(event(secrets, phone, user));
  assert.ok(r.error instanceof Error);
  assert.equal(r.error.message, 'Too many phone numbers were tried for this ' +
    'account. Please try again later.');
  assert.equal(twilio.to(phone).length, 0, 'no SMS over the cap');
  assert.ok(r.lines.some((l) => /too many numbers asked for, enrolment refused/.test(l)),
    r.lines.join('\n'));
  const text = 'Trop de numéros essayés.';
  const again = await run(event({ ...secrets, LIMITED_MESSAGE: text }, freshNumber(), user));
  assert.equal(again.error && again.error.message, text);
});

t('a challenge teaches the daemon the number; another user cannot enrol it', async () => {
  const phone = freshNumber();
  const holder = freshUser();
  const r = await run(event(secretsFor(daemon, twilio), phone, holder,
    { action: 'second-factor-authentication' }));
  assert.equal(r.error, undefined);
  assert.ok(r.lines.some((l) => /second-factor-authentication \.\.\.\d{4}: learned/.test(l)),
    r.lines.join('\n'));
  assert.equal(twilio.to(phone).length, 1);
  assert.ok(twilio.to(phone)[0].form.Body.includes(r.ev.message_options.code));
  const r2 = await run(event(secretsFor(daemon, twilio), phone, freshUser()));
  assert.equal(r2.error && r2.error.message, BLOCKED);
  assert.equal(twilio.to(phone).length, 1, 'no SMS for the second user');
  // The holder may still enrol it.
  assert.equal((await run(event(secretsFor(daemon, twilio), phone, holder))).error, undefined);
});

t('a challenge on a number someone else holds is never blocked (conflict)', async () => {
  const phone = freshNumber();
  assert.equal((await claim(daemon, phone, freshUser())).status, 200);
  const r = await run(event(secretsFor(daemon, twilio), phone, freshUser(),
    { action: 'second-factor-authentication' }));
  assert.equal(r.error, undefined);
  assert.ok(r.lines.some((l) => /: conflict$/.test(l)), r.lines.join('\n'));
  assert.equal(twilio.to(phone).length, 1);
});

t('daemon down, FAIL_OPEN=false: enrolment refused, no SMS', async () => {
  const phone = freshNumber();
  const secrets = secretsFor(null, twilio,
    { PHONECLAIMD_URL: await refusedUrl(), PHONECLAIMD_TOKEN: 'x', FAIL_OPEN: 'false' });
  const r = await run(event(secrets, phone, freshUser()));
  assert.ok(r.error instanceof Error);
  assert.match(r.error.message, /try again later/i);
  assert.equal(twilio.to(phone).length, 0);
  assert.ok(r.lines.some((l) => /unavailable .*failing closed/.test(l)), r.lines.join('\n'));
});

t('daemon down, FAIL_OPEN=true: enrolment goes through', async () => {
  const phone = freshNumber();
  const secrets = secretsFor(null, twilio,
    { PHONECLAIMD_URL: await refusedUrl(), PHONECLAIMD_TOKEN: 'x', FAIL_OPEN: 'true' });
  const r = await run(event(secrets, phone, freshUser()));
  assert.equal(r.error, undefined);
  assert.equal(twilio.to(phone).length, 1);
  assert.ok(r.lines.some((l) => /failing open/.test(l)), r.lines.join('\n'));
});

t('daemon down: challenges always go through, even with FAIL_OPEN=false', async () => {
  const phone = freshNumber();
  const secrets = secretsFor(null, twilio,
    { PHONECLAIMD_URL: await refusedUrl(), PHONECLAIMD_TOKEN: 'x', FAIL_OPEN: 'false' });
  const r = await run(event(secrets, phone, freshUser(),
    { action: 'second-factor-authentication' }));
  assert.equal(r.error, undefined);
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
      assert.ok(r.lines.some((l) => /timeout after 500 ms/.test(l)), r.lines.join('\n'));
      if (failOpen === 'true') {
        assert.equal(r.error, undefined);
        assert.equal(twilio.to(phone).length, 1);
      } else {
        assert.match(r.error && r.error.message, /try again later/i);
        assert.equal(twilio.to(phone).length, 0);
      }
    }
  } finally {
    await silent.close();
  }
});

t('an absurd timeout secret is capped well below the 20 s Actions limit', async () => {
  const silent = await startSilentServer();
  try {
    const phone = freshNumber();
    const secrets = secretsFor(null, twilio, {
      PHONECLAIMD_URL: silent.url, PHONECLAIMD_TOKEN: 'x',
      PHONECLAIMD_TIMEOUT_MS: '600000', FAIL_OPEN: 'false',
    });
    const r = await run(event(secrets, phone, freshUser()));
    assert.ok(r.ms < 6500, 'took ' + r.ms + ' ms');
    assert.ok(r.lines.some((l) => /timeout after 5000 ms/.test(l)), r.lines.join('\n'));
    assert.ok(r.error instanceof Error);
  } finally {
    await silent.close();
  }
});

t('an invalid number is refused with a user-suitable message, no SMS', async () => {
  const phone = '+1 2';
  const r = await run(event(secretsFor(daemon, twilio), phone, freshUser()));
  assert.ok(r.error instanceof Error);
  assert.match(r.error.message, /not valid/);
  assert.equal(twilio.requests.filter((q) => q.form.To === '+12').length, 0);
});

t('a wrong API token fails closed (daemon answers 401)', async () => {
  const phone = freshNumber();
  const r = await run(event(secretsFor(daemon, twilio, { PHONECLAIMD_TOKEN: 'wrong' }),
    phone, freshUser()));
  assert.match(r.error && r.error.message, /try again later/i);
  assert.ok(r.lines.some((l) => /HTTP 401 unauthorized/.test(l)), r.lines.join('\n'));
  assert.equal(twilio.to(phone).length, 0);
});

t('monitor mode: a taken number is reported but the SMS is sent', async () => {
  const phone = freshNumber();
  assert.equal((await claim(monitor, phone, freshUser())).status, 200);
  const r = await run(event(secretsFor(monitor, twilio), phone, freshUser()));
  assert.equal(r.error, undefined);
  assert.equal(twilio.to(phone).length, 1);
  assert.ok(r.lines.some((l) => /taken \(monitor mode, not enforced\)/.test(l)), r.lines.join('\n'));
});

t('voice: a Twilio call reads the code with TwiML <Say>', async () => {
  const phone = freshNumber();
  const r = await run(event(secretsFor(daemon, twilio), phone, freshUser(),
    { message_type: 'voice', text: 'Your code is 1 2 3 4 5 6 & <bye>', code: '123456' }));
  assert.equal(r.error, undefined);
  const sent = twilio.to(phone);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].path, '/2010-04-01/Accounts/' + TWILIO_SID + '/Calls.json');
  assert.equal(sent[0].form.Body, undefined);
  assert.match(sent[0].form.Twiml,
    /^<Response><Say>Your code is 1 2 3 4 5 6 &amp; &lt;bye&gt;<\/Say>.*<\/Response>$/);
});

t('no text from Auth0: the message is built from the code', async () => {
  const phone = freshNumber();
  const r = await run(event(secretsFor(daemon, twilio), phone, freshUser(),
    { text: '', code: '424242' }));
  assert.equal(r.error, undefined);
  assert.match(twilio.to(phone)[0].form.Body, /424242/);
});

t('the SMS provider fails: the Action throws', async () => {
  const phone = freshNumber();
  twilio.mode = 'fail';
  try {
    const r = await run(event(secretsFor(daemon, twilio), phone, freshUser()));
    assert.match(r.error && r.error.message, /could not send/i);
    assert.ok(r.lines.some((l) => /provider HTTP 500/.test(l)), r.lines.join('\n'));
  } finally {
    twilio.mode = 'ok';
  }
});
