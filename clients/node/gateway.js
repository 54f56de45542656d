// A gateway's side of creditd with ioredis: price a job, hold its credits,
// keep the hold alive while the job runs, charge what was used, give back
// the rest, and retry safely when a reply is lost.
//
// Run it against a creditd started with clients/creditd.toml:
//   node gateway.js --port 6479 --gateway-token matrix-gateway --admin-token matrix-admin
'use strict';

const crypto = require('node:crypto');
const { isDeepStrictEqual } = require('node:util');
const Redis = require('ioredis');

const VIDEO = 'video/kling-2.6-pro/1080/audio'; // 250 credits a second
const INSUFFICIENT = /^INSUFFICIENT need (\d+) available (\d+)$/;
const ATTEMPTS = 3;

class NotEnoughCredits extends Error {
  constructor(need, available) {
    super(`need ${need} credits, ${available} available`);
    this.need = need;
    this.available = available;
  }
}

function connect(port, token) {
  return new Redis({
    port,
    password: token,
    enableReadyCheck: false, // its INFO is refused to a gateway token (NOPERM)
    commandTimeout: 5000, // a reply later than this counts as lost
    maxRetriesPerRequest: 1,
  });
}

/** creditd for one gateway. Every command that changes credits carries an id
 * (the job id), so sending it again is safe: creditd applies it once and
 * repeats its first reply. */
class Credits {
  constructor(redis) {
    this.redis = redis;
  }

  async call(...args) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.redis.call(...args.map(String));
      } catch (e) {
        const insufficient = INSUFFICIENT.exec(e.message);
        if (insufficient) throw new NotEnoughCredits(Number(insufficient[1]), Number(insufficient[2]));
        // A server error other than BUSY (nothing applied) will not change:
        // NOTFOUND, CONFLICT, EXPIRED, NOTENTITLED, NOPERM, ERR.
        if (e instanceof Redis.ReplyError && !e.message.startsWith('BUSY ')) throw e;
        // A timeout, a dropped connection or BUSY: the same command again.
        if (attempt === ATTEMPTS) throw e;
      }
      await new Promise((resolve) => setTimeout(resolve, 50 * 2 ** attempt));
    }
  }
}

/** Renders up to `seconds` seconds of `sku`, one second at a time, and charges
 * the seconds actually made. Resolves to the credits charged. */
async function runJob(credits, account, jobId, sku, seconds, renderSecond, ttlMs = 60000) {
  await credits.call('RESERVE', account, jobId, 'SKU', sku, 'QTY', seconds, 'TTL', ttlMs);
  let done = 0;
  try {
    for (let second = 0; second < seconds; second++) {
      if (!(await renderSecond(second))) break; // the model finished early
      done++;
      await credits.call('EXTEND', account, jobId, ttlMs); // heartbeat: still running
      await credits.call('CAPTURE', account, jobId, 'QTY', done); // usage so far
    }
  } catch (e) {
    await credits.call('RELEASE', account, jobId); // the job failed: give it all back
    throw e;
  }
  return credits.call('COMMIT', account, jobId, 'QTY', done);
}

/** Stands in for a network that loses one reply: the command reaches creditd
 * and is applied, but its reply never comes back. */
class LoseFirstReply {
  constructor(redis) {
    this.redis = redis;
    this.lost = false;
  }

  async call(...args) {
    const reply = await this.redis.call(...args);
    if (!this.lost) {
      this.lost = true;
      throw new Error('Command timed out');
    }
    return reply;
  }
}

async function balance(redis, account) {
  const reply = await redis.call('BALANCE', account); // a flat array: ioredis speaks RESP2
  const out = {};
  for (let i = 0; i < reply.length; i += 2) out[reply[i]] = reply[i + 1];
  return out;
}

async function main() {
  const arg = (name) => process.argv[process.argv.indexOf(`--${name}`) + 1];
  const port = Number(arg('port') || 6479);
  const gateway = connect(port, arg('gateway-token'));
  const billing = connect(port, arg('admin-token'));
  const credits = new Credits(gateway);
  const account = `demo-${crypto.randomBytes(4).toString('hex')}`;
  await billing.call('GRANT', account, 'pack-1', '1000');
  const problems = [];
  const expect = (what, got, want) => {
    console.log(`${what}: ${JSON.stringify(got)}`);
    if (!isDeepStrictEqual(got, want)) problems.push(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  };

  expect('price of 3 s of video', await credits.call('QUOTE', VIDEO, 3), 750);
  // A 3-second clip that came out 2 seconds long: 2 seconds are charged.
  expect('charged', await runJob(credits, account, 'clip-1', VIDEO, 3, async (s) => s < 2), 500);
  const crash = async () => {
    throw new Error('the model crashed');
  };
  await runJob(credits, account, 'clip-2', VIDEO, 2, crash).then(
    () => problems.push('the crashed job succeeded'),
    (e) => expect('failed job', e.message, 'the model crashed'),
  );
  expect('after the failed job', (await balance(gateway, account)).available, 500);
  await runJob(credits, account, 'clip-3', VIDEO, 10, async () => true).then(
    () => problems.push('a 10 s clip was reserved with 500 credits'),
    (e) => expect('refused', e instanceof NotEnoughCredits && [e.need, e.available], [2500, 500]),
  );
  // The first RESERVE's reply is lost; the retry (same id) is not applied again.
  const lossy = new Credits(new LoseFirstReply(gateway));
  expect('held after a lost reply', await lossy.call('RESERVE', account, 'clip-4', 'SKU', VIDEO, 'QTY', 1), 250);
  expect('held once', (await balance(gateway, account)).held, 250);
  expect('released', await credits.call('RELEASE', account, 'clip-4'), 250);
  expect('at the end', await balance(gateway, account), { available: 500, held: 0, spent: 500, expired: 0, granted: 1000 });
  gateway.disconnect();
  billing.disconnect();
  for (const problem of problems) console.log('FAIL', problem);
  return problems.length ? 1 : 0;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (e) => {
      console.log('FAIL', e);
      process.exit(1);
    },
  );
}

module.exports = { Credits, NotEnoughCredits, runJob };
