/**
 * phoneclaimd: Auth0 "Send Phone Message" Action (Classic MFA, phone
 * provider "Custom").
 *
 * Paste this file into an Action bound to the Send Phone Message flow.
 * It asks phoneclaimd (POST /v1/claims) whether the number is free before
 * an enrolment SMS goes out, teaches it numbers on login challenges, and
 * then delivers the message itself (with the "Custom" provider Auth0 sends
 * nothing on its own).  Written for Auth0's Node 22 Actions runtime
 * (runs on Node 18+): fetch, no npm dependencies.
 *
 * Secrets (event.secrets); see docs/auth0-setup.md:
 *   PHONECLAIMD_URL         base URL of the daemon, e.g. https://claims.example.com
 *   PHONECLAIMD_TOKEN       content of the daemon's api_token_file
 *   PHONECLAIMD_TIMEOUT_MS  time allowed for the daemon call (default 3000, 100..5000)
 *   FAIL_OPEN               "true": enrol anyway when the daemon cannot answer
 *                           (default "false": refuse the enrolment)
 *   BLOCKED_MESSAGE         error text when the number is taken
 *   INVALID_NUMBER_MESSAGE  error text when the daemon rejects the number
 *   LIMITED_MESSAGE         error text when the user has asked for too many
 *                           numbers this hour (max_reservations_per_user)
 *   UNAVAILABLE_MESSAGE     error text when the daemon cannot answer (fail closed)
 *   SEND_FAILED_MESSAGE     error text when the SMS provider fails
 *   TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM   the SMS provider
 *   TWILIO_BASE_URL         default https://api.twilio.com (tests use a fake)
 *   SMS_TIMEOUT_MS          time allowed for the provider call (default 8000, 100..12000)
 *
 * Actions must finish within 20 s in all: the two timeouts are capped so
 * that both calls fit.  Phone numbers and tokens are never logged; only the
 * last four digits of a number appear in console.log lines.
 */

'use strict';

const DEFAULTS = {
  timeoutMs: 3000,
  timeoutMaxMs: 5000,
  smsTimeoutMs: 8000,
  smsTimeoutMaxMs: 12000,
  blocked: 'This phone number cannot be used for verification. ' +
    'Please use a different number.',
  invalid: 'This phone number is not valid. Please check it and try again.',
  limited: 'Too many phone numbers were tried for this account. ' +
    'Please try again later.',
  unavailable: 'We cannot verify this phone number right now. ' +
    'Please try again later.',
  sendFailed: 'We could not send the verification code. ' +
    'Please try again later.',
  twilioBaseUrl: 'https://api.twilio.com',
};

/** Return the last four digits of a number, for logs (nothing of a short one). */
function last4(phone) {
  const digits = String(phone || '').replace(/[^0-9]/g, '');
  return digits.length >= 8 ? '...' + digits.slice(-4) : '(short number)';
}

/** Return an integer secret within [min, max], or its default. */
function intSecret(value, dflt, min, max) {
  const n = Number.parseInt(value, 10);
  if (!Number.isFinite(n)) return dflt;
  return Math.min(Math.max(n, min), max);
}

/** Return true for "true", "1", "yes" or "on" (any case). */
function boolSecret(value) {
  return /^(true|1|yes|on)$/i.test(String(value || '').trim());
}

/** Read the secrets once, with defaults. */
function settings(secrets) {
  const s = secrets || {};
  return {
    url: String(s.PHONECLAIMD_URL || '').replace(/\/+$/, ''),
    token: String(s.PHONECLAIMD_TOKEN || ''),
    timeoutMs: intSecret(s.PHONECLAIMD_TIMEOUT_MS, DEFAULTS.timeoutMs, 100,
      DEFAULTS.timeoutMaxMs),
    failOpen: boolSecret(s.FAIL_OPEN),
    blocked: s.BLOCKED_MESSAGE || DEFAULTS.blocked,
    invalid: s.INVALID_NUMBER_MESSAGE || DEFAULTS.invalid,
    limited: s.LIMITED_MESSAGE || DEFAULTS.limited,
    unavailable: s.UNAVAILABLE_MESSAGE || DEFAULTS.unavailable,
    sendFailed: s.SEND_FAILED_MESSAGE || DEFAULTS.sendFailed,
    smsTimeoutMs: intSecret(s.SMS_TIMEOUT_MS, DEFAULTS.smsTimeoutMs, 100,
      DEFAULTS.smsTimeoutMaxMs),
  };
}

/**
 * Ask phoneclaimd about (phone, userId, action).  Returns one of
 *   {verdict: 'allow', result}      200: reserved, owned, exempt, learned,
 *                                   conflict, or taken in monitor mode
 *   {verdict: 'taken'}              409
 *   {verdict: 'limited'}            429: the user asked for too many numbers
 *   {verdict: 'invalid'}            400 invalid_phone_number
 *   {verdict: 'unavailable', why}   timeout, network error, 5xx, any other answer
 * Never throws.
 */
async function checkClaim(conf, phone, userId, action) {
  if (!conf.url || !conf.token) {
    return { verdict: 'unavailable', why: 'PHONECLAIMD_URL or PHONECLAIMD_TOKEN not set' };
  }
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), conf.timeoutMs);
  try {
    const res = await fetch(conf.url + '/v1/claims', {
      method: 'POST',
      headers: {
        'Authorization': 'Bearer ' + conf.token,
        'Content-Type': 'application/json',
      },
      body: JSON.stringify({ phone_number: phone, user_id: userId, action }),
      signal: ctrl.signal,
    });
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      if (ctrl.signal.aborted) throw e;
      body = null;
    }
    const result = body && typeof body === 'object' ? body.result : undefined;
    if (res.status === 200 && typeof result === 'string') {
      return { verdict: 'allow', result, enforced: body.enforced !== false };
    }
    if (res.status === 409) return { verdict: 'taken' };
    if (res.status === 429 && result === 'limited') return { verdict: 'limited' };
    if (res.status === 400 && body && body.error === 'invalid_phone_number') {
      return { verdict: 'invalid' };
    }
    const code = body && body.error ? ' ' + body.error : '';
    return { verdict: 'unavailable', why: 'HTTP ' + res.status + code };
  } catch (e) {
    const why = ctrl.signal.aborted ? 'timeout after ' + conf.timeoutMs + ' ms'
      : (e && e.cause && e.cause.code) || (e && e.message) || 'network error';
    return { verdict: 'unavailable', why };
  } finally {
    clearTimeout(timer);
  }
}

/** Escape text for an XML (TwiML) element. */
function xmlEscape(text) {
  return String(text).replace(/[<>&'"]/g, (c) => ({
    '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;',
  })[c]);
}

/**
 * Deliver one message through the tenant's provider: the only function to
 * change for another provider.  This one uses Twilio's REST API (an SMS via
 * Messages.json, a voice call reading the text via Calls.json with TwiML
 * <Say>).  Returns {ok: true, id} or {ok: false, retryable, why}; never
 * throws.
 */
async function sendSms(secrets, { to, text, voice, timeoutMs }) {
  const s = secrets || {};
  const sid = s.TWILIO_ACCOUNT_SID;
  if (!sid || !s.TWILIO_AUTH_TOKEN || !s.TWILIO_FROM) {
    return { ok: false, retryable: false, why: 'Twilio secrets not set' };
  }
  const base = String(s.TWILIO_BASE_URL || DEFAULTS.twilioBaseUrl).replace(/\/+$/, '');
  const form = new URLSearchParams({ To: to, From: s.TWILIO_FROM });
  let path = 'Messages.json';
  if (voice) {
    path = 'Calls.json';
    const say = '<Say>' + xmlEscape(text) + '</Say>';
    form.set('Twiml', '<Response>' + say + '<Pause length="1"/>' + say + '</Response>');
  } else {
    form.set('Body', text);
  }
  const url = base + '/2010-04-01/Accounts/' + encodeURIComponent(sid) + '/' + path;
  const auth = Buffer.from(sid + ':' + s.TWILIO_AUTH_TOKEN).toString('base64');
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: {
        'Authorization': 'Basic ' + auth,
        'Content-Type': 'application/x-www-form-urlencoded',
      },
      body: form.toString(),
      signal: ctrl.signal,
    });
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (res.status >= 200 && res.status < 300) {
      return { ok: true, id: body && body.sid };
    }
    const code = body && body.code ? ' code ' + body.code : '';
    return {
      ok: false,
      retryable: res.status === 429 || res.status >= 500,
      why: 'provider HTTP ' + res.status + code,
    };
  } catch (e) {
    const why = ctrl.signal.aborted ? 'provider timeout after ' + timeoutMs + ' ms'
      : (e && e.cause && e.cause.code) || (e && e.message) || 'network error';
    return { ok: false, retryable: true, why };
  } finally {
    clearTimeout(timer);
  }
}

/** Return the number in the form the provider wants: no spaces or punctuation. */
function dialable(recipient) {
  let n = String(recipient || '').replace(/[\s\-().\/]/g, '');
  if (n.startsWith('00')) n = '+' + n.slice(2);
  return n;
}

/** Return the message text, built from the code if Auth0 gave none. */
function messageText(opts) {
  if (opts.text) return String(opts.text);
  return 'Your verification code is: ' + String(opts.code || '');
}

exports.onExecuteSendPhoneMessage = async (event, api) => {
  const opts = event.message_options || {};
  const conf = settings(event.secrets);
  const recipient = String(opts.recipient || '');
  const userId = event.user && event.user.user_id;
  const action = opts.action === 'enrollment' ? 'enrollment'
    : 'second-factor-authentication';
  const tag = 'phoneclaimd: ' + action + ' ' + last4(recipient);

  const claim = await checkClaim(conf, recipient, userId, action);
  if (action === 'enrollment') {
    if (claim.verdict === 'taken') {
      console.log(tag + ': taken, enrolment refused');
      throw new Error(conf.blocked);
    }
    if (claim.verdict === 'limited') {
      console.log(tag + ': too many numbers asked for, enrolment refused');
      throw new Error(conf.limited);
    }
    if (claim.verdict === 'invalid') {
      console.log(tag + ': invalid number, enrolment refused');
      throw new Error(conf.invalid);
    }
    if (claim.verdict === 'unavailable') {
      if (!conf.failOpen) {
        console.log(tag + ': daemon unavailable (' + claim.why + '), failing closed');
        throw new Error(conf.unavailable);
      }
      console.log(tag + ': daemon unavailable (' + claim.why + '), failing open');
    } else {
      console.log(tag + ': ' + claim.result +
        (claim.enforced ? '' : ' (monitor mode, not enforced)'));
    }
  } else if (claim.verdict === 'allow') {
    console.log(tag + ': ' + claim.result);
  } else {
    // Challenges are never blocked: the user already has this factor.
    console.log(tag + ': ' + claim.verdict +
      (claim.why ? ' (' + claim.why + ')' : '') + ', sending anyway');
  }

  const sent = await sendSms(event.secrets, {
    to: dialable(recipient),
    text: messageText(opts),
    voice: opts.message_type === 'voice',
    timeoutMs: conf.smsTimeoutMs,
  });
  if (!sent.ok) {
    console.log(tag + ': message not sent (' + sent.why + ')');
    throw new Error(conf.sendFailed);
  }
  console.log(tag + ': message sent');
};
