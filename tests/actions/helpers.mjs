// Shared helpers for the Action tests: a real phoneclaimd on loopback, a
// fake Twilio, a server that never answers, fake events.  Standard library
// only (Node 18+).

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, chmodSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

export const START_TIMEOUT_MS = 15000;
export const STOP_TIMEOUT_MS = 10000;

/** Load an Action file the way Auth0 runs it: as CommonJS. */
export function loadAction(name) {
  const top = process.env.TOP_SRCDIR || join(here, '..', '..');
  return require(join(top, 'conf', 'actions', name));
}

/** The daemon's path; exit 77 (automake: skipped) when it is not set. */
export function daemonPath() {
  const path = process.env.PHONECLAIMD;
  if (!path) {
    console.error('PHONECLAIMD is not set: skipping (run through make check)');
    process.exit(77);
  }
  return path;
}

let counter = 0;
const area = 200 + (process.pid % 700);
/** A never used possible US number for this test process: +1 415 AAA NNNN. */
export function freshNumber() {
  counter += 1;
  return '+1415' + String(area).padStart(3, '0') + String(counter).padStart(4, '0');
}

/** A random user id like Auth0's. */
export function freshUser() {
  return 'auth0|' + randomBytes(12).toString('hex');
}

const daemons = new Set();
process.on('exit', () => {
  for (const d of daemons) {
    try { d.proc.kill('SIGKILL'); } catch (e) { /* already gone */ }
  }
});

/** Start phoneclaimd -f on 127.0.0.1:0 with a private directory. */
export async function startDaemon(extraConf = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'pcd-action-'));
  const token = 'api-' + randomBytes(16).toString('hex');
  const secret = (name, text) => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode: 0o600 });
    chmodSync(p, 0o600);
    return p;
  };
  const conf = {
    listen: '127.0.0.1:0',
    state_dir: join(dir, 'state'),
    status_socket: join(dir, 'status.sock'),
    api_token_file: secret('api.token', token + '\n'),
    log_stream_token_file: secret('logstream.token',
      'Bearer ls-' + randomBytes(16).toString('hex') + '\n'),
    log_level: 'info',
    ...extraConf,
  };
  mkdirSync(conf.state_dir, { mode: 0o700 });
  const confPath = join(dir, 'phoneclaimd.conf');
  writeFileSync(confPath, Object.entries(conf)
    .map(([k, v]) => k + ' = ' + v).join('\n') + '\n');
  const proc = spawn(daemonPath(), ['-f', '-c', confPath],
    { stdio: ['ignore', 'ignore', 'pipe'], cwd: dir });
  const d = { dir, token, proc, log: '', url: null, exited: false };
  daemons.add(d);
  proc.stderr.setEncoding('utf8');
  proc.on('exit', () => { d.exited = true; });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error('no "listening on" within ' + START_TIMEOUT_MS + ' ms:\n' + d.log));
    }, START_TIMEOUT_MS);
    proc.stderr.on('data', (chunk) => {
      d.log += chunk;
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(d.log);
      if (m && !d.url) {
        d.url = 'http://127.0.0.1:' + m[1];
        clearTimeout(timer);
        resolve();
      }
    });
    proc.on('exit', (code) => {
      if (!d.url) {
        clearTimeout(timer);
        reject(new Error('daemon exited with ' + code + ' before listening:\n' + d.log));
      }
    });
  });
  return d;
}

/** Stop a daemon with SIGTERM (SIGKILL after a while) and remove its files. */
export async function stopDaemon(d, { keep = false } = {}) {
  if (!d) return;
  if (!d.exited) {
    const gone = new Promise((resolve) => d.proc.once('exit', resolve));
    d.proc.kill('SIGTERM');
    const timer = setTimeout(() => d.proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await gone;
    clearTimeout(timer);
  }
  daemons.delete(d);
  if (keep) {
    console.error('keeping ' + d.dir + '; daemon log:\n' + d.log.slice(-3000));
  } else {
    rmSync(d.dir, { recursive: true, force: true });
  }
}

/** Read a request body. */
function readBody(req) {
  return new Promise((resolve) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { body += c; });
    req.on('end', () => resolve(body));
  });
}

/** Start an HTTP server on loopback; returns {server, url, close()}. */
async function listen(server) {
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    server,
    url: 'http://127.0.0.1:' + port,
    close: () => new Promise((resolve) => {
      if (server.closeAllConnections) server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

/**
 * A fake Twilio: records every request ({method, path, auth, form}) and
 * answers according to its `mode`: 'ok' (201), 'fail' (500), 'reject'
 * (400 code 21211).
 */
export async function startFakeTwilio() {
  const fake = { requests: [], mode: 'ok' };
  const server = createServer(async (req, res) => {
    const body = await readBody(req);
    fake.requests.push({
      method: req.method,
      path: req.url,
      auth: req.headers.authorization,
      contentType: req.headers['content-type'],
      form: Object.fromEntries(new URLSearchParams(body)),
    });
    res.setHeader('Content-Type', 'application/json');
    if (fake.mode === 'fail') {
      res.statusCode = 500;
      res.end(JSON.stringify({ code: 20500, message: 'Internal Server Error' }));
    } else if (fake.mode === 'reject') {
      res.statusCode = 400;
      res.end(JSON.stringify({ code: 21211, message: "The 'To' number is not valid." }));
    } else {
      res.statusCode = 201;
      res.end(JSON.stringify({ sid: 'SM' + randomBytes(16).toString('hex') }));
    }
  });
  Object.assign(fake, await listen(server));
  /** The requests sent to `to` (any path). */
  fake.to = (to) => fake.requests.filter((r) => r.form.To === to);
  return fake;
}

/** A server that accepts connections and never answers. */
export async function startSilentServer() {
  const sockets = new Set();
  const server = createTcpServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
    sock.on('close', () => sockets.delete(sock));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: 'http://127.0.0.1:' + port,
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

/** A loopback URL where nothing listens (a port just released). */
export async function refusedUrl() {
  const server = createTcpServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return 'http://127.0.0.1:' + port;
}

export const TWILIO_SID = 'AC' + 'a1'.repeat(16);
export const TWILIO_TOKEN = 'twilio-' + randomBytes(8).toString('hex');
export const TWILIO_FROM = '+15005550006';

/** Secrets for a daemon and a fake Twilio, plus overrides. */
export function secretsFor(daemon, twilio, extra = {}) {
  return {
    PHONECLAIMD_URL: daemon ? daemon.url : '',
    PHONECLAIMD_TOKEN: daemon ? daemon.token : '',
    PHONECLAIMD_TIMEOUT_MS: '2000',
    FAIL_OPEN: 'false',
    TWILIO_ACCOUNT_SID: TWILIO_SID,
    TWILIO_AUTH_TOKEN: TWILIO_TOKEN,
    TWILIO_FROM,
    TWILIO_BASE_URL: twilio.url,
    SMS_TIMEOUT_MS: '3000',
    ...extra,
  };
}

/** Capture console.log during fn; returns [result or error, lines]. */
export async function captureLog(fn) {
  const lines = [];
  const orig = console.log;
  console.log = (...args) => { lines.push(args.join(' ')); };
  try {
    return [await fn().then((v) => ({ value: v }), (e) => ({ error: e })), lines];
  } finally {
    console.log = orig;
  }
}

/** POST /v1/claims directly (to check the daemon's state). */
export async function claim(daemon, phone, user, action = 'enrollment') {
  const res = await fetch(daemon.url + '/v1/claims', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + daemon.token, 'Content-Type': 'application/json' },
    body: JSON.stringify({ phone_number: phone, user_id: user, action }),
  });
  return { status: res.status, body: await res.json() };
}

