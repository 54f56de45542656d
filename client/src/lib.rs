//! A typed async client for creditd.
//!
//! creditd speaks RESP, so any Redis client can talk to it; this crate adds
//! what a gateway otherwise writes by hand around the `redis` crate:
//!
//! - one method per command, with typed arguments ([`Charge`], [`Usage`],
//!   [`GrantOptions`]) and replies ([`Balance`], [`Account`],
//!   [`HistoryEntry`]), read the same from RESP2 and RESP3;
//! - typed errors from the reply's code ([`Error::Insufficient`] with its
//!   numbers, [`Error::Conflict`], [`Error::Busy`], ...);
//! - ids for retries ([`OpId`]): one per logical operation, reused on every
//!   retry of it;
//! - retries that are safe because every mutation is idempotent by its id
//!   ([`RetryPolicy`]): I/O failures, timeouts and `BUSY` are retried with
//!   bounded backoff, final answers (`INSUFFICIENT`, `CONFLICT`, ...) never;
//! - a connection that comes back by itself after creditd restarts
//!   (`redis::aio::ConnectionManager`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), creditd_client::Error> {
//! use creditd_client::{Charge, Client, OpId, Usage};
//! use std::time::Duration;
//!
//! let client = Client::connect("redis://:gw-secret@127.0.0.1:6479/").await?;
//! let hold = OpId::new();
//! let held = client
//!     .reserve("acme", &hold, Charge::sku("image/flux-2-pro", 4), Some(Duration::from_secs(300)))
//!     .await?;
//! let debited = client.commit("acme", &hold, Some(Usage::Qty(3))).await?;
//! assert!(debited <= held);
//! # Ok(()) }
//! ```
//!
//! Standalone creditd only: cluster mode's `MOVED` replies come back as
//! [`Error::Other`].

mod error;
mod id;
mod reply;
mod retry;

pub use error::Error;
pub use id::OpId;
pub use reply::{Account, Balance, Bucket, Event, HistoryEntry, Hold, Member, Plan};
pub use retry::RetryPolicy;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Value};
use std::time::Duration;
use tokio::time::Instant;

/// What a RESERVE or DEBIT charges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charge {
    /// A plain amount of credits (0 is allowed, for a free model).
    Amount(u64),
    /// `qty` units of a SKU, priced by creditd's rate card. A hold keeps the
    /// price it was made with.
    Sku { sku: String, qty: u64 },
}

impl Charge {
    pub fn amount(credits: u64) -> Charge {
        Charge::Amount(credits)
    }

    pub fn sku(sku: impl Into<String>, qty: u64) -> Charge {
        Charge::Sku {
            sku: sku.into(),
            qty,
        }
    }

    fn write(&self, cmd: &mut Cmd) {
        match self {
            Charge::Amount(n) => cmd.arg(n),
            Charge::Sku { sku, qty } => cmd.arg("SKU").arg(sku).arg("QTY").arg(qty),
        };
    }
}

/// The usage a CAPTURE or COMMIT reports, cumulative since the hold was
/// made (so a repeated or late report is harmless).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Credits used so far.
    Total(u64),
    /// Units of the hold's own SKU used so far, priced as the hold was.
    Qty(u64),
}

impl Usage {
    fn write(&self, cmd: &mut Cmd) {
        match self {
            Usage::Total(n) => cmd.arg(n),
            Usage::Qty(n) => cmd.arg("QTY").arg(n),
        };
    }
}

/// The kinds of credit a GRANT can add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketKind {
    Subscription,
    Addon,
    Rollover,
    Prepaid,
    Promo,
}

impl BucketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketKind::Subscription => "subscription",
            BucketKind::Addon => "addon",
            BucketKind::Rollover => "rollover",
            BucketKind::Prepaid => "prepaid",
            BucketKind::Promo => "promo",
        }
    }
}

/// The options of a GRANT; the default is a `prepaid` bucket that never
/// expires, at priority 50.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantOptions {
    pub kind: Option<BucketKind>,
    pub expiry: Option<Expiry>,
    /// 0 to 100; lower is spent first.
    pub priority: Option<u8>,
}

/// When granted credits expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// At this Unix ms instant (in the future).
    At(u64),
    /// This long after the grant.
    After(Duration),
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct Options {
    /// When to retry a failed command, and for how long.
    pub retry: RetryPolicy,
    /// How long one attempt may wait for its reply. Longer than the 5 s
    /// within which creditd answers `BUSY` when it cannot persist, so that a
    /// stalled server gets to say so before the client gives up on it.
    pub response_timeout: Duration,
    /// How long one connection attempt may take.
    pub connection_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retry: RetryPolicy::default(),
            response_timeout: Duration::from_secs(6),
            connection_timeout: Duration::from_secs(2),
        }
    }
}

/// A creditd connection. Cheap to clone: clones share one multiplexed
/// connection, which reconnects by itself after a failure.
#[derive(Clone, Debug)]
pub struct Client {
    conn: ConnectionManager,
    retry: RetryPolicy,
}

impl Client {
    /// Connects with the default [`Options`]. The URL is a Redis URL:
    /// `redis://[user]:token@host:port/`, with `?protocol=resp3` for RESP3
    /// (the replies read the same either way).
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Client::connect_with(url, Options::default()).await
    }

    /// Connects; the first connection is retried under `options.retry`, as
    /// commands are, so a gateway may start before creditd is ready.
    pub async fn connect_with(url: &str, options: Options) -> Result<Client, Error> {
        let client = redis::Client::open(url)?;
        // The manager makes one quick reconnection attempt of its own per
        // failure; the retry policy above it decides how long to keep going.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.connection_timeout));
        let conn = with_retries(&options.retry, || {
            ConnectionManager::new_with_config(client.clone(), config.clone())
        })
        .await?;
        Ok(Client {
            conn,
            retry: options.retry,
        })
    }

    /// Sends `cmd` under the retry policy and reads its reply with `read`.
    async fn run<T>(&self, cmd: Cmd, read: fn(Value) -> Result<T, Error>) -> Result<T, Error> {
        let value = with_retries(&self.retry, || {
            let mut conn = self.conn.clone();
            let cmd = &cmd;
            async move { cmd.query_async::<Value>(&mut conn).await }
        })
        .await?;
        read(value)
    }

    /// `RESERVE`: sets credits aside for a job until COMMIT, RELEASE or the
    /// TTL (default: the server's `hold_ttl_ms`). Returns the credits held.
    pub async fn reserve(
        &self,
        account: &str,
        hold: &OpId,
        charge: Charge,
        ttl: Option<Duration>,
    ) -> Result<u64, Error> {
        self.run(reserve_cmd(account, hold, charge, ttl), reply::integer)
            .await
    }

    /// `CAPTURE`: reports usage so far (cumulative) and spends it at once.
    /// Returns the total captured on the hold.
    pub async fn capture(&self, account: &str, hold: &OpId, usage: Usage) -> Result<u64, Error> {
        let mut cmd = redis::cmd("CAPTURE");
        cmd.arg(account).arg(hold);
        usage.write(&mut cmd);
        self.run(cmd, reply::integer).await
    }

    /// `COMMIT`: closes the hold with its final usage (`None`: the whole
    /// held amount), returning the rest. Returns the final total debited.
    /// A retry must send the same `usage`: another one is `CONFLICT`.
    pub async fn commit(
        &self,
        account: &str,
        hold: &OpId,
        usage: Option<Usage>,
    ) -> Result<u64, Error> {
        let mut cmd = redis::cmd("COMMIT");
        cmd.arg(account).arg(hold);
        if let Some(usage) = usage {
            usage.write(&mut cmd);
        }
        self.run(cmd, reply::integer).await
    }

    /// `RELEASE`: gives the hold's credits back (the job failed). Returns
    /// the credits returned; 0 if the hold had expired.
    pub async fn release(&self, account: &str, hold: &OpId) -> Result<u64, Error> {
        let mut cmd = redis::cmd("RELEASE");
        cmd.arg(account).arg(hold);
        self.run(cmd, reply::integer).await
    }

    /// `EXTEND`: keeps a long job's hold alive until now + `ttl`; call it as
    /// a heartbeat. Returns the new `expires_at` (Unix ms).
    pub async fn extend(&self, account: &str, hold: &OpId, ttl: Duration) -> Result<u64, Error> {
        let mut cmd = redis::cmd("EXTEND");
        cmd.arg(account).arg(hold).arg(millis(ttl));
        self.run(cmd, reply::integer).await
    }

    /// `DEBIT`: spends credits at once, without a hold. Returns the credits
    /// debited.
    pub async fn debit(&self, account: &str, debit: &OpId, charge: Charge) -> Result<u64, Error> {
        self.run(debit_cmd(account, debit, charge), reply::integer)
            .await
    }

    /// `QUOTE`: what `qty` units of `sku` cost now.
    pub async fn quote(&self, sku: &str, qty: u64) -> Result<u64, Error> {
        let mut cmd = redis::cmd("QUOTE");
        cmd.arg(sku).arg(qty);
        self.run(cmd, reply::integer).await
    }

    /// `BALANCE`: the account's five totals.
    pub async fn balance(&self, account: &str) -> Result<Balance, Error> {
        let mut cmd = redis::cmd("BALANCE");
        cmd.arg(account);
        self.run(cmd, reply::balance).await
    }

    /// `ACCOUNT`: totals, plan, buckets and open holds, as one snapshot.
    pub async fn account(&self, account: &str) -> Result<Account, Error> {
        let mut cmd = redis::cmd("ACCOUNT");
        cmd.arg(account);
        self.run(cmd, reply::account).await
    }

    /// `HISTORY`: the newest `count` entries (server default 100), newest
    /// first.
    pub async fn history(
        &self,
        account: &str,
        count: Option<u32>,
    ) -> Result<Vec<HistoryEntry>, Error> {
        let mut cmd = redis::cmd("HISTORY");
        cmd.arg(account);
        if let Some(n) = count {
            cmd.arg("COUNT").arg(n);
        }
        self.run(cmd, reply::history).await
    }

    /// `GRANT` (admin): adds credits as a new bucket. Returns `available`
    /// after the grant.
    pub async fn grant(
        &self,
        account: &str,
        grant: &OpId,
        amount: u64,
        options: &GrantOptions,
    ) -> Result<u64, Error> {
        let mut cmd = redis::cmd("GRANT");
        cmd.arg(account).arg(grant).arg(amount);
        if let Some(kind) = options.kind {
            cmd.arg("KIND").arg(kind.as_str());
        }
        match options.expiry {
            Some(Expiry::At(at_ms)) => cmd.arg("EXPIRES").arg(at_ms),
            Some(Expiry::After(ttl)) => cmd.arg("TTL").arg(millis(ttl)),
            None => &mut cmd,
        };
        if let Some(p) = options.priority {
            cmd.arg("PRIORITY").arg(p);
        }
        self.run(cmd, reply::integer).await
    }

    /// `PLAN account plan [SEATS n] [ANCHOR at_ms]` (admin): subscribes the
    /// account, changes its plan, or sets its seats. Returns `available`.
    pub async fn plan(
        &self,
        account: &str,
        plan: &str,
        seats: Option<u32>,
        anchor_ms: Option<u64>,
    ) -> Result<u64, Error> {
        let mut cmd = redis::cmd("PLAN");
        cmd.arg(account).arg(plan);
        if let Some(n) = seats {
            cmd.arg("SEATS").arg(n);
        }
        if let Some(at) = anchor_ms {
            cmd.arg("ANCHOR").arg(at);
        }
        self.run(cmd, reply::integer).await
    }

    /// `PLAN account NONE` (admin): no further cycles; granted credits stay
    /// until they expire.
    pub async fn plan_none(&self, account: &str) -> Result<(), Error> {
        let mut cmd = redis::cmd("PLAN");
        cmd.arg(account).arg("NONE");
        self.run(cmd, reply::ok).await
    }

    /// `SEATS` (admin): the seat count. Returns `available`.
    pub async fn seats(&self, account: &str, seats: u32) -> Result<u64, Error> {
        let mut cmd = redis::cmd("SEATS");
        cmd.arg(account).arg(seats);
        self.run(cmd, reply::integer).await
    }

    /// `ADDON` (admin): the recurring add-on units. Returns `available`.
    pub async fn addon(&self, account: &str, units: u32) -> Result<u64, Error> {
        let mut cmd = redis::cmd("ADDON");
        cmd.arg(account).arg(units);
        self.run(cmd, reply::integer).await
    }

    /// `RESERVE ... MEMBER m`: as [`Client::reserve`], charged to member
    /// `member` as well; past the member's cap, [`Error::Limited`].
    pub async fn reserve_for(
        &self,
        account: &str,
        hold: &OpId,
        charge: Charge,
        ttl: Option<Duration>,
        member: &str,
    ) -> Result<u64, Error> {
        let mut cmd = reserve_cmd(account, hold, charge, ttl);
        cmd.arg("MEMBER").arg(member);
        self.run(cmd, reply::integer).await
    }

    /// `DEBIT ... MEMBER m`: as [`Client::debit`], charged to member `member`.
    pub async fn debit_for(
        &self,
        account: &str,
        debit: &OpId,
        charge: Charge,
        member: &str,
    ) -> Result<u64, Error> {
        let mut cmd = debit_cmd(account, debit, charge);
        cmd.arg("MEMBER").arg(member);
        self.run(cmd, reply::integer).await
    }

    /// `LIMIT` (admin): caps `member` at `cap` = (credits, `day` | `month` |
    /// `cycle`) per period, or removes its cap (`None`). Returns what the
    /// member may still use this period (0 without a cap).
    pub async fn limit(
        &self,
        account: &str,
        member: &str,
        cap: Option<(u64, &str)>,
    ) -> Result<u64, Error> {
        let mut cmd = redis::cmd("LIMIT");
        cmd.arg(account).arg(member);
        match cap {
            Some((amount, per)) => cmd.arg(amount).arg("PER").arg(per),
            None => cmd.arg("NONE"),
        };
        self.run(cmd, reply::integer).await
    }

    /// `MEMBERS`: members with a cap, usage or holds this period, by id.
    pub async fn members(&self, account: &str) -> Result<Vec<Member>, Error> {
        let mut cmd = redis::cmd("MEMBERS");
        cmd.arg(account);
        self.run(cmd, reply::members).await
    }

    /// `ALERT` (admin): adds a low-balance threshold (`remove` false) or
    /// deletes one. Returns how many the account has.
    pub async fn alert(&self, account: &str, threshold: u64, remove: bool) -> Result<u64, Error> {
        let mut cmd = redis::cmd("ALERT");
        cmd.arg(account).arg(threshold);
        if remove {
            cmd.arg("DEL");
        }
        self.run(cmd, reply::integer).await
    }

    /// `EVENTS AFTER after COUNT count`: the next events, oldest first.
    pub async fn events(&self, after: u64, count: u32) -> Result<Vec<Event>, Error> {
        let mut cmd = redis::cmd("EVENTS");
        cmd.arg("AFTER").arg(after).arg("COUNT").arg(count);
        self.run(cmd, reply::events).await
    }

    /// `PING`: is creditd there (and this connection authenticated, if it
    /// needs to be)?
    pub async fn ping(&self) -> Result<(), Error> {
        self.run(redis::cmd("PING"), |v| match v {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            other => Err(Error::Protocol(format!("expected PONG, got {other:?}"))),
        })
        .await
    }
}

/// `RESERVE account hold charge [TTL ms]`.
fn reserve_cmd(account: &str, hold: &OpId, charge: Charge, ttl: Option<Duration>) -> Cmd {
    let mut cmd = redis::cmd("RESERVE");
    cmd.arg(account).arg(hold);
    charge.write(&mut cmd);
    if let Some(ttl) = ttl {
        cmd.arg("TTL").arg(millis(ttl));
    }
    cmd
}

/// `DEBIT account debit charge`.
fn debit_cmd(account: &str, debit: &OpId, charge: Charge) -> Cmd {
    let mut cmd = redis::cmd("DEBIT");
    cmd.arg(account).arg(debit);
    charge.write(&mut cmd);
    cmd
}

/// Runs `attempt` until it succeeds, fails for good, or the policy's
/// attempts or time run out; returns the last outcome.
async fn with_retries<T, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let deadline = Instant::now() + policy.max_elapsed;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(outcome) => outcome.map_err(Error::from),
            Err(_) => return Err(Error::gave_up(policy.max_elapsed)),
        };
        match outcome {
            Err(e) if e.is_retryable() && attempts < policy.max_attempts.max(1) => {
                let wait = policy.backoff(attempts);
                if Instant::now() + wait >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
            }
            outcome => return outcome,
        }
    }
}

/// A duration as whole milliseconds, as creditd takes TTLs.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
