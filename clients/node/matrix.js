#!/usr/bin/env node
// ioredis and node-redis against a running creditd: every command of the
// protocol, every error code, through each library's generic command call,
// its pipelines and MULTI/EXEC, and many commands in flight at once.
//
// creditd must run with --test-clock and clients/creditd.toml (its tokens,
// skus and plans are what this script expects). server/tests/clients.rs
// starts it and runs this script; by hand (after `npm ci` here):
//
//   node matrix.js --port 6479 --admin-token matrix-admin \
//       --gateway-token matrix-gateway --probe-token matrix-probe [--busy-port P]
//
// --busy-port names a second creditd whose persistence is past its bound, so
// that its writes answer BUSY. Each error a client raises is compared with
// the error line the server sends for the same command on a plain socket.
// Prints every mismatch and exits 1 if there was any.
'use strict';

const assert = require('node:assert');
const crypto = require('node:crypto');
const net = require('node:net');
const { spawnSync } = require('node:child_process');
const Redis = require('ioredis');
const { createClient, createClientPool, ErrorReply, MultiErrorReply, RESP_TYPES } = require('redis');

const SKU_VIDEO = 'video/kling-2.6-pro/1080/audio'; // 250 a second
const SKU_IMAGE = 'image/flux-2-pro'; // 80 an image, 10% off from 4
const SKU_VOICE = 'voiceover/standard'; // feature voiceover: not in plan "images"
const TIMEOUT_MS = 10000;

// ---------------------------------------------------------------------------
// Checks: each mismatch is printed; the exit code says if any failed.

const checks = { count: 0, failed: 0, sent: new Set() };

function fail(where, what) {
  checks.count++;
  checks.failed++;
  console.log(`FAIL [${where}] ${what}`);
}

function eq(where, got, want) {
  try {
    assert.deepStrictEqual(got, want);
    checks.count++;
  } catch {
    fail(where, `got ${show(got)}, want ${show(want)}`);
  }
}

function truthy(where, cond, what) {
  if (cond) checks.count++;
  else fail(where, what);
}

function show(v) {
  if (v instanceof Error) return `${v.constructor.name}(${JSON.stringify(v.message)})`;
  try {
    return JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n` : x));
  } catch {
    return String(v);
  }
}

function record(args) {
  const words = args.map((a) => String(a).toUpperCase());
  let name = words[0];
  if (['CLIENT', 'COMMAND', 'CLOCK', 'CONFIG'].includes(name) && words.length > 1) name += ` ${words[1]}`;
  if (name === 'PLAN' && words.length === 3 && words[2] === 'NONE') name = 'PLAN NONE';
  checks.sent.add(name);
}

// ---------------------------------------------------------------------------
// The server's own words: a plain socket speaking RESP2.

/** Parses one RESP2 reply at `at`; null while incomplete. Errors as {error: line}. */
function parseReply(buf, at) {
  const end = buf.indexOf('\r\n', at);
  if (end < 0) return null;
  const kind = String.fromCharCode(buf[at]);
  const line = buf.toString('utf8', at + 1, end);
  const next = end + 2;
  if (kind === '+') return { value: line, next };
  if (kind === '-') return { value: { error: line }, next };
  if (kind === ':') return { value: Number(line), next };
  if (kind === '$') {
    const n = Number(line);
    if (n < 0) return { value: null, next };
    if (buf.length < next + n + 2) return null;
    return { value: buf.toString('utf8', next, next + n), next: next + n + 2 };
  }
  if (kind === '*') {
    const items = [];
    let pos = next;
    for (let i = 0; i < Number(line); i++) {
      const item = parseReply(buf, pos);
      if (!item) return null;
      items.push(item.value);
      pos = item.next;
    }
    return { value: items, next: pos };
  }
  throw new Error(`unexpected reply ${JSON.stringify(buf.toString('utf8', at, end))}`);
}

function encode(args) {
  const parts = [`*${args.length}\r\n`];
  for (const a of args) {
    const b = Buffer.from(String(a));
    parts.push(`$${b.length}\r\n`, b, '\r\n');
  }
  return Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p))));
}

/** The replies to `commands`, sent on one fresh connection. */
function rawReplies(port, commands) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('raw connection timed out'));
    }, TIMEOUT_MS);
    sock.on('error', reject);
    sock.on('data', (data) => {
      buf = Buffer.concat([buf, data]);
      const replies = [];
      let pos = 0;
      while (replies.length < commands.length) {
        const r = parseReply(buf, pos);
        if (!r) return;
        replies.push(r.value);
        pos = r.next;
      }
      clearTimeout(timer);
      sock.destroy();
      resolve(replies);
    });
    sock.write(Buffer.concat(commands.map(encode)));
  });
}

/** The error line the server sends for `args` on a connection authenticated
 * with `token` (null: not authenticated). */
async function rawError(port, token, args) {
  const commands = token === null ? [args] : [['AUTH', token], args];
  const replies = await rawReplies(port, commands);
  const last = replies[replies.length - 1];
  return last && last.error !== undefined ? last.error : null;
}

// ---------------------------------------------------------------------------
// One scenario for every client: an adapter per library.

/** ioredis: `call` (strings), `callBuffer` (Buffers), pipeline, multi. RESP2 only. */
class Ioredis {
  constructor(port, password, extra = {}) {
    this.name = 'ioredis';
    this.proto = 2;
    this.r = new Redis({
      host: '127.0.0.1',
      port,
      password,
      lazyConnect: true,
      retryStrategy: () => null, // report a refused connection, do not retry
      maxRetriesPerRequest: 0,
      commandTimeout: TIMEOUT_MS,
      ...extra,
    });
    // ioredis reports a refused AUTH only as an 'error' event; connect()
    // then rejects with "Connection is closed.".
    this.lastError = null;
    this.r.on('error', (e) => {
      this.lastError = e;
    });
  }
  async connect() {
    try {
      await this.r.connect();
    } catch (e) {
      throw this.lastError instanceof Redis.ReplyError ? this.lastError : e;
    }
  }
  call(...args) {
    record(args);
    return this.r.call(...args.map(String));
  }
  callBuffer(...args) {
    record(args);
    return this.r.callBuffer(...args.map(String));
  }
  /** [err, reply] pairs from exec, as reply-or-error. */
  async batch(commands, transaction) {
    let p = transaction ? this.r.multi() : this.r.pipeline();
    for (const args of commands) {
      record(args);
      p = p.call(...args.map(String));
    }
    const out = await p.exec();
    return out.map(([err, reply]) => err || reply);
  }
  async close() {
    this.r.disconnect();
  }
}

/** node-redis: `sendCommand` (strings; Buffers with a type mapping), MULTI, pipelining by concurrency. */
class NodeRedis {
  constructor(port, password, proto, extra = {}) {
    this.name = `node-redis resp${proto}`;
    this.proto = proto;
    this.options = {
      socket: { host: '127.0.0.1', port, reconnectStrategy: false, connectTimeout: TIMEOUT_MS },
      password,
      ...(proto === 3 ? { RESP: 3 } : {}),
      ...extra,
    };
    this.r = createClient(this.options);
    this.r.on('error', () => {}); // connect errors are seen by connect()
  }
  async connect() {
    await this.r.connect();
  }
  call(...args) {
    record(args);
    // node-redis does not know that QUIT sent this way ends the connection:
    // quit() would then wait forever, so close() destroys it instead.
    if (String(args[0]).toUpperCase() === 'QUIT') this.quitSent = true;
    return this.r.sendCommand(args.map(String));
  }
  callBuffer(...args) {
    record(args);
    return this.r.sendCommand(args.map(String), { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } });
  }
  /** A pipeline is commands sent without waiting (node-redis writes them
   * together); MULTI/EXEC rejects with MultiErrorReply whose `replies` hold
   * every reply, errors in place. */
  async batch(commands, transaction) {
    commands.forEach(record);
    if (!transaction) {
      return Promise.all(commands.map((args) => this.r.sendCommand(args.map(String)).catch((e) => e)));
    }
    const m = this.r.multi();
    for (const args of commands) m.addCommand(args.map(String));
    try {
      return await m.exec();
    } catch (e) {
      if (e instanceof MultiErrorReply) return e.replies;
      throw e;
    }
  }
  async close() {
    if (this.quitSent) {
      if (this.r.isOpen) this.r.destroy();
    } else if (this.r.isOpen) {
      await this.r.close();
    }
  }
}

function errorLine(e) {
  // Both libraries keep the whole line, code first, in `message`.
  return e.message;
}

function isServerError(e) {
  return e instanceof Redis.ReplyError || e instanceof ErrorReply;
}

class Variant {
  constructor(lib, proto, port, run) {
    this.lib = lib;
    this.proto = proto;
    this.port = port;
    this.name = lib === 'ioredis' ? 'ioredis' : `node-redis resp${proto}`;
    // Accounts of this run only: the script may run again on the same server.
    this.ns = `js-${run}-${lib}-r${proto}`;
  }
  client(password, extra) {
    return this.lib === 'ioredis' ? new Ioredis(this.port, password, extra) : new NodeRedis(this.port, password, this.proto, extra);
  }
  async connected(password, extra) {
    const c = this.client(password, extra);
    await c.connect();
    return c;
  }
  /** A *fields* reply: a flat array in RESP2, an object in RESP3 (node-redis
   * makes maps plain objects with a null prototype). */
  fields(where, reply, names) {
    let pairs;
    if (this.proto === 2) {
      if (!Array.isArray(reply) || reply.length % 2) {
        fail(where, `RESP2 fields should be a flat array, got ${show(reply)}`);
        return {};
      }
      pairs = [];
      for (let i = 0; i < reply.length; i += 2) pairs.push([String(reply[i]), reply[i + 1]]);
    } else {
      if (reply === null || typeof reply !== 'object' || Array.isArray(reply)) {
        fail(where, `RESP3 fields should be an object, got ${show(reply)}`);
        return {};
      }
      pairs = Object.entries(reply);
    }
    const out = Object.fromEntries(pairs);
    eq(`${where}: field names`, pairs.map(([k]) => k), names);
    return out;
  }
}

const BALANCE_FIELDS = ['available', 'held', 'spent', 'expired', 'granted'];
const ACCOUNT_FIELDS = [...BALANCE_FIELDS, 'plan', 'seats', 'cycle_start', 'cycle_end', 'buckets', 'holds'];
const BUCKET_FIELDS = ['id', 'kind', 'remaining', 'expires_at', 'priority'];
const HOLD_FIELDS = ['id', 'amount', 'captured', 'expires_at'];
const HISTORY_FIELDS = ['seq', 'at', 'op', 'id', 'amount'];
const HELLO_FIELDS = ['server', 'version', 'proto', 'id', 'mode', 'role', 'modules'];
const MUST_SEND = [
  'GRANT', 'RESERVE', 'CAPTURE', 'COMMIT', 'RELEASE', 'EXTEND', 'DEBIT', 'QUOTE', 'BALANCE',
  'ACCOUNT', 'HISTORY', 'PLAN', 'PLAN NONE', 'SEATS', 'ADDON', 'PING', 'ECHO', 'AUTH', 'HELLO',
  'QUIT', 'SELECT', 'CLIENT SETNAME', 'CLIENT GETNAME', 'CLIENT ID', 'INFO', 'CONFIG GET',
  'CONFIG RELOAD', 'COMMAND', 'COMMAND COUNT', 'COMMAND DOCS', 'COMMAND GETKEYS', 'CLOCK GET', 'CLOCK SET', 'CLOCK ADVANCE',
];
const CONTRACT_COMMANDS = [
  'grant', 'reserve', 'capture', 'commit', 'release', 'extend', 'debit', 'quote', 'balance',
  'account', 'history', 'subscribe', 'seats', 'addon', 'unsubscribe', 'plan', 'ping', 'echo',
  'auth', 'hello', 'quit', 'select', 'client', 'command', 'info', 'config', 'clock',
];

/** `call` must fail with the server's error for `args`: code `code`, message
 * matching `message`, and the very line the server sends on a raw socket. */
async function expectError(v, where, call, code, message, token, args) {
  let got;
  try {
    got = await call();
  } catch (e) {
    if (!isServerError(e)) {
      fail(where, `expected a ${code} reply error, got ${show(e)}`);
      return;
    }
    const line = errorLine(e);
    const space = line.indexOf(' ');
    eq(`${where}: code`, line.slice(0, space), code);
    truthy(`${where}: message`, message.test(line.slice(space + 1)), `${JSON.stringify(line)} does not match ${code} ${message}`);
    if (args) eq(`${where}: as the server sent it`, line, await rawError(v.port, token, args));
    return;
  }
  fail(where, `expected ${code}, got the reply ${show(got)}`);
}

async function connectionCommands(v, r, tokens) {
  const w = v.name;
  eq(`${w} PING`, await r.call('PING'), 'PONG');
  eq(`${w} PING msg`, await r.call('PING', 'yo'), 'yo');
  eq(`${w} ECHO`, await r.call('ECHO', 'hi'), 'hi');
  eq(`${w} ECHO as a Buffer`, await r.callBuffer('ECHO', 'hi'), Buffer.from('hi'));
  eq(`${w} CLIENT SETNAME`, await r.call('CLIENT', 'SETNAME', v.ns), 'OK');
  eq(`${w} CLIENT GETNAME`, await r.call('CLIENT', 'GETNAME'), v.ns);
  truthy(`${w} CLIENT ID`, Number.isInteger(await r.call('CLIENT', 'ID')), 'not an integer');
  eq(`${w} SELECT 0`, await r.call('SELECT', 0), 'OK');
  const hello = v.fields(`${w} HELLO`, await r.call('HELLO', v.proto, 'AUTH', 'default', tokens.admin), HELLO_FIELDS);
  eq(`${w} HELLO`, [hello.server, hello.proto], ['creditd', v.proto]);
  const info = await r.call('INFO');
  truthy(`${w} INFO`, typeof info === 'string' && info.includes('creditd_version:'), show(info));
  const persistence = await r.call('INFO', 'persistence');
  truthy(`${w} INFO persistence`, /journal_fsync:everysec\r\n/.test(persistence) && /redis_connected:0\r\n/.test(persistence), show(persistence));
  eq(`${w} CONFIG GET`, await r.call('CONFIG', 'GET', '*'), v.proto === 2 ? [] : Object.create(null));
  eq(`${w} CONFIG RELOAD`, await r.call('CONFIG', 'RELOAD'), 'OK');
  const table = await r.call('COMMAND');
  const names = Array.isArray(table) ? table.map((entry) => entry[0]) : [];
  truthy(`${w} COMMAND`, CONTRACT_COMMANDS.every((n) => names.includes(n)), show(names));
  truthy(`${w} COMMAND entries`, Array.isArray(table) && table.every((e) => e.length === 10), 'entries of 10 elements, as Redis 7');
  eq(`${w} COMMAND COUNT`, await r.call('COMMAND', 'COUNT'), names.length);
  // DOCS: name -> {summary, since, group}; a flat list in RESP2.
  const docs = await r.call('COMMAND', 'DOCS', 'reserve');
  const flat = Array.isArray(docs) ? docs : Object.entries(docs).flat();
  const entry = Array.isArray(flat[1]) ? flat[1] : Object.entries(flat[1] || {}).flat();
  truthy(`${w} COMMAND DOCS`, flat[0] === 'reserve' && entry[0] === 'summary' && entry[2] === 'since' && entry[4] === 'group' && entry[5] === 'creditd', show(docs));
  // GETKEYS: the account, as a cluster client asks it.
  eq(`${w} COMMAND GETKEYS`, await r.call('COMMAND', 'GETKEYS', 'RESERVE', '{team}:a', 'h1', '10'), ['{team}:a']);
  const now = await r.call('CLOCK', 'GET');
  truthy(`${w} CLOCK GET`, Number.isInteger(now) && now > 1.6e12, show(now));
  eq(`${w} CLOCK SET`, await r.call('CLOCK', 'SET', now + 1000), now + 1000);
  eq(`${w} CLOCK ADVANCE`, await r.call('CLOCK', 'ADVANCE', 500), now + 1500);
}

async function creditCommands(v, r) {
  const w = v.name;
  const a = `${v.ns}-acme`;
  const now = await r.call('CLOCK', 'GET');
  eq(`${w} GRANT`, await r.call('GRANT', a, 'pack', 5000), 5000);
  eq(`${w} GRANT retry`, await r.call('GRANT', a, 'pack', 5000), 5000);
  eq(`${w} GRANT KIND TTL PRIORITY`, await r.call('GRANT', a, 'promo', 100, 'KIND', 'promo', 'TTL', 604800000, 'PRIORITY', 10), 5100);
  eq(`${w} GRANT EXPIRES`, await r.call('GRANT', a, 'late', 50, 'KIND', 'addon', 'EXPIRES', now + 3600000), 5150);
  eq(`${w} PLAN SEATS`, await r.call('PLAN', a, 'pro', 'SEATS', 2), 6150);
  eq(`${w} SEATS`, await r.call('SEATS', a, 3), 6650);
  eq(`${w} ADDON`, await r.call('ADDON', a, 2), 6770);
  eq(`${w} QUOTE`, await r.call('QUOTE', SKU_IMAGE, 4), 288);
  eq(`${w} RESERVE SKU TTL`, await r.call('RESERVE', a, 'job-1', 'SKU', SKU_VIDEO, 'QTY', 10, 'TTL', 60000), 2500);
  eq(`${w} EXTEND`, await r.call('EXTEND', a, 'job-1', 120000), now + 120000);
  eq(`${w} CAPTURE QTY`, await r.call('CAPTURE', a, 'job-1', 'QTY', 3), 750);
  eq(`${w} CAPTURE lower total`, await r.call('CAPTURE', a, 'job-1', 500), 750);
  eq(`${w} COMMIT QTY`, await r.call('COMMIT', a, 'job-1', 'QTY', 7), 1750);
  eq(`${w} COMMIT retry`, await r.call('COMMIT', a, 'job-1', 'QTY', 7), 1750);
  eq(`${w} RESERVE amount`, await r.call('RESERVE', a, 'job-2', 300), 300);
  eq(`${w} COMMIT whole hold`, await r.call('COMMIT', a, 'job-2'), 300);
  eq(`${w} RESERVE TTL`, await r.call('RESERVE', a, 'job-3', 400, 'TTL', 60000), 400);
  eq(`${w} COMMIT total`, await r.call('COMMIT', a, 'job-3', 250), 250);
  eq(`${w} RESERVE`, await r.call('RESERVE', a, 'job-4', 200), 200);
  eq(`${w} RELEASE`, await r.call('RELEASE', a, 'job-4'), 200);
  eq(`${w} RELEASE retry`, await r.call('RELEASE', a, 'job-4'), 200);
  eq(`${w} DEBIT SKU`, await r.call('DEBIT', a, 'gen-1', 'SKU', SKU_IMAGE, 'QTY', 4), 288);
  eq(`${w} DEBIT amount`, await r.call('DEBIT', a, 'gen-2', 10), 10);
  eq(`${w} RESERVE open`, await r.call('RESERVE', a, 'open-1', 100, 'TTL', 600000), 100);

  const spent = 1750 + 300 + 250 + 288 + 10;
  const b = v.fields(`${w} BALANCE`, await r.call('BALANCE', a), BALANCE_FIELDS);
  eq(`${w} BALANCE`, { ...b }, { available: 6770 - spent - 100, held: 100, spent, expired: 0, granted: 6770 });
  const raw = await r.callBuffer('BALANCE', a);
  const first = v.proto === 2 ? raw[0] : Object.keys(raw)[0];
  truthy(`${w} BALANCE with Buffers`, v.proto === 2 ? Buffer.isBuffer(first) : first === 'available', `first key ${show(first)}`);

  const acct = v.fields(`${w} ACCOUNT`, await r.call('ACCOUNT', a), ACCOUNT_FIELDS);
  eq(`${w} ACCOUNT totals`, Object.fromEntries(BALANCE_FIELDS.map((k) => [k, acct[k]])), { ...b });
  eq(`${w} ACCOUNT plan`, [acct.plan, acct.seats, acct.cycle_start], ['pro', 3, now]);
  truthy(`${w} ACCOUNT cycle_end`, Number.isInteger(acct.cycle_end) && acct.cycle_end > now, show(acct.cycle_end));
  // Spending order took the promo (priority 10), then the soonest to expire
  // (late, then the plan's), then the pack that never expires.
  const buckets = (acct.buckets || []).map((x) => ({ ...v.fields(`${w} ACCOUNT bucket`, x, BUCKET_FIELDS) }));
  eq(`${w} ACCOUNT buckets`, buckets, [{ id: 'pack', kind: 'prepaid', remaining: b.available, expires_at: 0, priority: 50 }]);
  const holds = (acct.holds || []).map((x) => ({ ...v.fields(`${w} ACCOUNT hold`, x, HOLD_FIELDS) }));
  eq(`${w} ACCOUNT holds`, holds, [{ id: 'open-1', amount: 100, captured: 0, expires_at: now + 600000 }]);

  const history = await r.call('HISTORY', a, 'COUNT', 3);
  truthy(`${w} HISTORY`, Array.isArray(history) && history.length === 3, show(history));
  const entries = (history || []).map((x) => v.fields(`${w} HISTORY entry`, x, HISTORY_FIELDS));
  eq(`${w} HISTORY newest first`, entries.map((e) => [e.op, e.id, e.amount]), [['reserve', 'open-1', 100], ['debit', 'gen-2', 10], ['debit', 'gen-1', 288]]);
  const seqs = entries.map((e) => e.seq);
  truthy(`${w} HISTORY seq`, seqs[0] > seqs[1] && seqs[1] > seqs[2], show(seqs));

  eq(`${w} PLAN NONE`, await r.call('PLAN', a, 'NONE'), 'OK');
  const after = v.fields(`${w} ACCOUNT after PLAN NONE`, await r.call('ACCOUNT', a), ACCOUNT_FIELDS);
  eq(`${w} ACCOUNT after PLAN NONE`, [after.plan, after.seats], ['', 0]);
}

async function errorCodes(v, r, tokens) {
  const w = v.name;
  const a = `${v.ns}-err`;
  const img = `${v.ns}-img`;
  const admin = tokens.admin;
  const now = await r.call('CLOCK', 'GET');
  eq(`${w} GRANT`, await r.call('GRANT', a, 'g1', 1000), 1000);
  eq(`${w} PLAN ANCHOR`, await r.call('PLAN', img, 'images', 'ANCHOR', now - 86400000), 100);
  eq(`${w} RESERVE h1`, await r.call('RESERVE', a, 'h1', 10), 10);
  eq(`${w} COMMIT h1`, await r.call('COMMIT', a, 'h1'), 10);
  const cases = [
    ['ERR bad number', ['RESERVE', a, 'e1', '-1'], 'ERR', /^amount is not an integer or out of range$/],
    ['ERR unknown command', ['NOSUCH', a], 'ERR', /^unknown command 'NOSUCH'/],
    ['ERR SELECT 1', ['SELECT', 1], 'ERR', /^DB index is out of range$/],
    ['INSUFFICIENT', ['RESERVE', a, 'big', 1e12], 'INSUFFICIENT', /^need 1000000000000 available 990$/],
    ['INSUFFICIENT DEBIT', ['DEBIT', a, 'big', 991], 'INSUFFICIENT', /^need 991 available 990$/],
    ['NOTFOUND sku', ['QUOTE', 'no/such', 1], 'NOTFOUND', /no\/such/],
    ['NOTFOUND hold', ['COMMIT', a, 'nohold'], 'NOTFOUND', /./],
    ['NOTFOUND plan', ['PLAN', a, 'nosuchplan'], 'NOTFOUND', /nosuchplan/],
    ['CONFLICT grant', ['GRANT', a, 'g1', 999], 'CONFLICT', /./],
    ['CONFLICT release after commit', ['RELEASE', a, 'h1'], 'CONFLICT', /./],
    ['NOTENTITLED', ['DEBIT', img, 'v1', 'SKU', SKU_VOICE, 'QTY', 1], 'NOTENTITLED', /voiceover/],
  ];
  for (const [label, args, code, message] of cases) {
    await expectError(v, `${w} ${label}`, () => r.call(...args), code, message, admin, args);
  }
  eq(`${w} RESERVE short`, await r.call('RESERVE', a, 'short', 5, 'TTL', 1000), 5);
  eq(`${w} CLOCK ADVANCE`, await r.call('CLOCK', 'ADVANCE', 1000), now + 1000);
  for (const args of [['COMMIT', a, 'short'], ['CAPTURE', a, 'short', 1], ['EXTEND', a, 'short', 1000]]) {
    await expectError(v, `${w} EXPIRED ${args[0]}`, () => r.call(...args), 'EXPIRED', /./, admin, args);
  }
  eq(`${w} RELEASE expired`, await r.call('RELEASE', a, 'short'), 0);
}

/** NOAUTH, WRONGPASS and NOPERM as errors; AUTH and HELLO AUTH. */
async function authAndRoles(v, tokens) {
  const w = v.name;
  const a = `${v.ns}-auth`;
  if (v.lib === 'ioredis') {
    // ioredis connects without AUTH when given no password; its ready check
    // (INFO) would fail on NOAUTH, so it is off here.
    const r = await v.connected(undefined, { enableReadyCheck: false });
    await expectError(v, `${w} NOAUTH`, () => r.call('BALANCE', a), 'NOAUTH', /^Authentication required\.$/, null, ['BALANCE', a]);
    eq(`${w} AUTH`, await r.call('AUTH', tokens.gateway), 'OK');
    eq(`${w} BALANCE after AUTH`, v.fields(`${w} BALANCE`, await r.call('BALANCE', a), BALANCE_FIELDS).available, 0);
    await r.close();
  } else {
    // node-redis sends HELLO 3 when RESP is 3: the server refuses HELLO
    // before authentication. In RESP2 it connects, and commands get NOAUTH.
    const r = v.client(undefined);
    const first = v.proto === 3 ? ['HELLO', '3'] : ['BALANCE', a];
    await expectError(v, `${w} NOAUTH`, async () => {
      await r.connect();
      return r.call('BALANCE', a);
    }, 'NOAUTH', v.proto === 3 ? /^HELLO must be called with the client already authenticated/ : /^Authentication required\.$/, null, first);
    if (v.proto === 2) {
      eq(`${w} AUTH`, await r.call('AUTH', tokens.gateway), 'OK');
      eq(`${w} BALANCE after AUTH`, v.fields(`${w} BALANCE`, await r.call('BALANCE', a), BALANCE_FIELDS).available, 0);
    }
    await r.close();
  }

  const bad = v.client('not-a-token');
  await expectError(v, `${w} WRONGPASS`, async () => {
    await bad.connect();
    return bad.call('QUOTE', SKU_IMAGE, 1);
  }, 'WRONGPASS', /^invalid username-password pair or user is disabled\.$/, null, ['AUTH', 'not-a-token']);
  await bad.close().catch(() => {});

  // A probe may not read balances; AUTH with another token changes the role.
  const r = await v.connected(tokens.probe);
  truthy(`${w} probe INFO`, (await r.call('INFO')).includes('creditd_version:'), 'INFO without creditd_version');
  await expectError(v, `${w} NOPERM probe BALANCE`, () => r.call('BALANCE', a), 'NOPERM',
    /^this user has no permissions to run the 'balance' command$/, tokens.probe, ['BALANCE', a]);
  eq(`${w} AUTH gateway`, await r.call('AUTH', tokens.gateway), 'OK');
  eq(`${w} gateway QUOTE`, await r.call('QUOTE', SKU_IMAGE, 3), 240);
  await expectError(v, `${w} NOPERM gateway GRANT`, () => r.call('GRANT', a, 'g', 1), 'NOPERM',
    /^this user has no permissions to run the 'grant' command$/, tokens.gateway, ['GRANT', a, 'g', 1]);
  eq(`${w} AUTH user token`, await r.call('AUTH', 'any-user', tokens.admin), 'OK');
  eq(`${w} QUIT`, await r.call('QUIT'), 'OK');
  await r.close().catch(() => {});
}

async function pipelines(v, r, tokens) {
  const w = v.name;
  const a = `${v.ns}-pipe`;
  eq(`${w} GRANT`, await r.call('GRANT', a, 'g', 1000), 1000);
  const commands = [];
  const want = [];
  for (let i = 0; i < 20; i++) {
    commands.push(['RESERVE', a, `p${i}`, 5], ['COMMIT', a, `p${i}`, 3]);
    want.push(5, 3);
  }
  commands.push(['RESERVE', a, 'too-big', 1000000], ['BALANCE', a]);
  let got = await r.batch(commands, false);
  eq(`${w} pipeline replies`, got.slice(0, 40), want);
  truthy(`${w} pipeline error in place`, isServerError(got[40]) && errorLine(got[40]) === 'INSUFFICIENT need 1000000 available 940', show(got[40]));
  let b = v.fields(`${w} pipeline BALANCE`, got[41], BALANCE_FIELDS);
  eq(`${w} pipeline BALANCE`, [b.available, b.spent], [940, 60]);

  got = await r.batch([['RESERVE', a, 't1', 50], ['RESERVE', a, 't2', 1000000], ['COMMIT', a, 't1', 40], ['BALANCE', a]], true);
  eq(`${w} MULTI/EXEC replies`, [got[0], got[2]], [50, 40]);
  truthy(`${w} MULTI/EXEC error in place`, isServerError(got[1]) && errorLine(got[1]) === 'INSUFFICIENT need 1000000 available 890', show(got[1]));
  b = v.fields(`${w} MULTI/EXEC BALANCE`, got[3], BALANCE_FIELDS);
  eq(`${w} MULTI/EXEC BALANCE`, [b.available, b.spent], [900, 100]);

  if (v.lib === 'node-redis') {
    // execAsPipeline: replies in order; one error rejects the whole batch
    // (the other commands ran all the same).
    const p = r.r.multi().addCommand(['QUOTE', SKU_IMAGE, '4']).addCommand(['QUOTE', SKU_IMAGE, '3']);
    eq(`${w} execAsPipeline`, await p.execAsPipeline(), [288, 240]);
    const q = r.r.multi().addCommand(['DEBIT', a, 'ap1', '1']).addCommand(['QUOTE', 'no/such', '1']);
    await expectError(v, `${w} execAsPipeline error`, () => q.execAsPipeline(), 'NOTFOUND', /no\/such/, tokens.admin, ['QUOTE', 'no/such', '1']);
    eq(`${w} execAsPipeline ran the rest`, v.fields(`${w} BALANCE`, await r.call('BALANCE', a), BALANCE_FIELDS).spent, 101);
  }
}

const WORKERS = 8;
const PER_WORKER = 25;

/** Many commands in flight: on one connection (ioredis, node-redis) and
 * through node-redis's pool of 4. Every DEBIT is also retried with its id,
 * which must not spend twice. */
async function concurrency(v, r, tokens) {
  const w = v.name;
  const work = async (call, tag) => {
    const a = `${v.ns}-${tag}`;
    eq(`${w} ${tag} GRANT`, await call('GRANT', a, 'g', 1000), 1000);
    const jobs = [];
    for (let t = 0; t < WORKERS; t++) {
      jobs.push((async () => {
        const out = [];
        for (let i = 0; i < PER_WORKER; i++) {
          out.push(await call('DEBIT', a, `t${t}-${i}`, 1));
          out.push(await call('DEBIT', a, `t${t}-${i}`, 1));
        }
        return out;
      })());
    }
    const replies = (await Promise.all(jobs)).flat();
    eq(`${w} ${tag} replies`, replies, new Array(WORKERS * PER_WORKER * 2).fill(1));
    const b = v.fields(`${w} ${tag} BALANCE`, await call('BALANCE', a), BALANCE_FIELDS);
    eq(`${w} ${tag} BALANCE`, [b.available, b.spent], [1000 - WORKERS * PER_WORKER, WORKERS * PER_WORKER]);
  };
  await work((...args) => r.call(...args), 'one-connection');
  if (v.lib === 'node-redis') {
    const pool = createClientPool(r.options, { minimum: 1, maximum: 4, acquireTimeout: TIMEOUT_MS });
    pool.on('error', () => {});
    await pool.connect();
    await work((...args) => pool.sendCommand(args.map(String)), 'pool');
    truthy(`${w} pool size`, pool.totalClients <= 4, `${pool.totalClients} clients`);
    // node-redis 5.9 leaves the pool's idle-client cleanup timer running
    // after close(); when it fires it throws ClientClosedError and the
    // process dies.
    clearTimeout(pool.cleanupTimeout);
    await pool.close();
  }
}

/** ioredis treats SUBSCRIBE as Pub/Sub: the integer reply crashes the
 * process. PLAN, the same command under another name, works. */
async function planNotSubscribe(v, r, tokens) {
  const w = v.name;
  const a = `${v.ns}-plan`;
  const script = `
    const Redis = require('ioredis');
    const r = new Redis({ host: '127.0.0.1', port: ${v.port}, password: ${JSON.stringify(tokens.admin)} });
    r.call('SUBSCRIBE', ${JSON.stringify(`${a}-sub`)}, 'pro').then(() => process.exit(0), () => process.exit(0));`;
  const child = spawnSync(process.execPath, ['-e', script], { cwd: __dirname, timeout: 20000, encoding: 'utf8' });
  truthy(`${w} SUBSCRIBE breaks ioredis`, child.status !== 0 && /TypeError/.test(child.stderr),
    `SUBSCRIBE no longer crashes ioredis ${require('ioredis/package.json').version} (status ${child.status}): update docs/PROTOCOL.md; stderr: ${child.stderr}`);
  eq(`${w} PLAN`, await r.call('PLAN', a, 'pro'), 500);
  eq(`${w} still a command connection`, await r.call('QUOTE', SKU_IMAGE, 1), 80);
  eq(`${w} PLAN NONE`, await r.call('PLAN', a, 'NONE'), 'OK');
  const acct = v.fields(`${w} ACCOUNT`, await r.call('ACCOUNT', a), ACCOUNT_FIELDS);
  eq(`${w} ACCOUNT after PLAN NONE`, [acct.plan, acct.available], ['', 500]);
}

async function busy(v, busyPort, tokens) {
  const w = v.name;
  const bv = new Variant(v.lib, v.proto, busyPort, v.ns);
  const r = await bv.connected(tokens.admin);
  try {
    for (let i = 0; i < 10; i++) {
      const args = ['GRANT', `${v.ns}-busy`, `g${i}`, 1];
      try {
        await r.call(...args);
      } catch (e) {
        const line = errorLine(e);
        truthy(`${w} BUSY code`, isServerError(e) && line.startsWith('BUSY ') && line.includes('retry later'), show(e));
        eq(`${w} BUSY as the server sent it`, line, await rawError(busyPort, tokens.admin, args));
        return;
      }
    }
    fail(`${w} BUSY`, '10 writes accepted by a server past its bound');
  } finally {
    await r.close();
  }
}

async function runVariant(v, tokens, busyPort) {
  const r = await v.connected(tokens.admin);
  try {
    await connectionCommands(v, r, tokens);
    await creditCommands(v, r);
    await errorCodes(v, r, tokens);
    await pipelines(v, r, tokens);
    await concurrency(v, r, tokens);
    if (v.lib === 'ioredis') await planNotSubscribe(v, r, tokens);
  } finally {
    await r.close();
  }
  await authAndRoles(v, tokens);
  if (busyPort) await busy(v, busyPort, tokens);
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (argv[i + 1] === undefined) throw new Error(`${argv[i]} needs a value`);
    out[key] = argv[i + 1];
  }
  for (const need of ['port', 'admin-token', 'gateway-token', 'probe-token']) {
    if (!out[need]) throw new Error(`usage: matrix.js --port P --admin-token A --gateway-token G --probe-token R [--busy-port B] (missing --${need})`);
  }
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const port = Number(args.port);
  const busyPort = args['busy-port'] ? Number(args['busy-port']) : null;
  const tokens = { admin: args['admin-token'], gateway: args['gateway-token'], probe: args['probe-token'] };
  console.log(`ioredis ${require('ioredis/package.json').version}, node-redis ${require('redis/package.json').version}, node ${process.version}`);
  if (!busyPort) console.log('BUSY not checked: no --busy-port');
  const run = crypto.randomBytes(3).toString('hex');
  for (const [lib, proto] of [['ioredis', 2], ['node-redis', 2], ['node-redis', 3]]) {
    const v = new Variant(lib, proto, port, run);
    const before = checks.failed;
    try {
      await runVariant(v, tokens, busyPort);
    } catch (e) {
      fail(v.name, `threw: ${e && e.stack ? e.stack : show(e)}`);
    }
    console.log(`${v.name}: ${checks.failed === before ? 'ok' : 'FAILED'}`);
  }
  const missing = MUST_SEND.filter((n) => !checks.sent.has(n));
  truthy('coverage', missing.length === 0, `never sent: ${missing.join(', ')}`);
  console.log(`node matrix: ${checks.count} checks, ${checks.failed} failed`);
  return checks.failed ? 1 : 0;
}

// A promise that never settles lets the event loop drain and node exit 0
// with the matrix unfinished: that is a failure too.
let finished = false;
process.on('exit', (code) => {
  if (!finished && code === 0) {
    console.log('FAIL the matrix stopped before it finished (a promise never settled)');
    process.exitCode = 1;
  }
});

main().then(
  (code) => {
    finished = true;
    process.exit(code);
  },
  (e) => {
    console.log(`FAIL ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
