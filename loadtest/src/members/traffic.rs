//! What one connection of the members workload sends, and the client's model
//! of each account it drives.
//!
//! The model advances on acknowledged replies only, in the order the
//! server applied them (one connection per account), so after each reply
//! it is the account as the server has it: `available`, `held`, `spent`,
//! `granted`, each member's `used` and `held`, and which thresholds are
//! armed. Before applying a reply it predicts it: a charge the pool cannot
//! cover is INSUFFICIENT, then one over the member's cap is LIMITED, else it
//! passes. A reply that contradicts the prediction is counted, with an
//! example, for `--verify`.

use super::MembersCfg;
use crate::ops::{Op, OpId};
use crate::resp::Reply;
use crate::workload::{KeyDist, ReplyClass};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// TTL of every hold: far beyond any run, so no hold expires and the
/// client's model of `available` stays exact.
pub const HOLD_TTL_MS: u64 = 3_600_000;

/// Percent of new charges made by the heavy member `m0`, large enough to
/// reach its cap within a few dozen charges.
const HEAVY_PERCENT: u32 = 20;
/// Percent of new charges that are holds (the rest are debits).
const RESERVE_PERCENT: u32 = 60;
/// Percent of holds released rather than committed.
const RELEASE_PERCENT: u32 = 30;

/// Refusals of one kind, and when the first and last came back (the server
/// raises at most one event per minute for them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Refusals {
    pub count: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl Refusals {
    fn add(&mut self, now: Instant) {
        self.count += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }
}

/// One member as the client knows it.
#[derive(Debug, Clone)]
pub struct MemberModel {
    pub cap: u64,
    pub used: u64,
    pub held: u64,
    /// The most `used + held` ever was after an acknowledged charge.
    pub peak: u64,
    pub limited: Refusals,
}

/// One account as the client knows it.
#[derive(Debug, Clone)]
pub struct AccountModel {
    pub available: u64,
    pub held: u64,
    pub spent: u64,
    pub granted: u64,
    /// Per threshold (in [`MembersCfg::thresholds`] order): armed now.
    armed: Vec<bool>,
    /// Per threshold: `available` after each downward crossing of an armed
    /// threshold, in order: the `low` events the server must have raised.
    pub crossings: Vec<Vec<u64>>,
    pub members: Vec<MemberModel>,
    pub insufficient: Refusals,
    pub open_holds: u64,
    /// A request's reply was lost: the model no longer knows the account.
    pub lost: bool,
    topup_pending: bool,
}

impl AccountModel {
    /// The account right after setup: the pool granted, every threshold at
    /// or below it (so armed), every member capped and unused.
    pub fn new(cfg: &MembersCfg) -> Self {
        AccountModel {
            available: cfg.pool,
            held: 0,
            spent: 0,
            granted: cfg.pool,
            armed: cfg.thresholds.iter().map(|&t| cfg.pool >= t).collect(),
            crossings: vec![Vec::new(); cfg.thresholds.len()],
            members: (0..cfg.members)
                .map(|_| MemberModel {
                    cap: cfg.cap,
                    used: 0,
                    held: 0,
                    peak: 0,
                    limited: Refusals::default(),
                })
                .collect(),
            insufficient: Refusals::default(),
            open_holds: 0,
            lost: false,
            topup_pending: false,
        }
    }

    /// Looks at every threshold after a change, as the server does: arms
    /// those `available` is at or above, fires (counts) armed ones it fell below.
    fn after_change(&mut self, thresholds: &[u64]) {
        for (i, &t) in thresholds.iter().enumerate() {
            if self.available >= t {
                self.armed[i] = true;
            } else if self.armed[i] {
                self.armed[i] = false;
                self.crossings[i].push(self.available);
            }
        }
    }
}

/// A hold the server acknowledged and the client has not closed yet.
#[derive(Debug, Clone, Copy)]
struct OpenHold {
    member: u32,
    amount: u64,
}

/// What the model says a charge gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Pass,
    Insufficient,
    Limited,
}

/// How a reply to a charge turned out.
enum Outcome {
    Applied,
    Refused,
    Failed,
}

/// Counts over the run, for `--verify` and the report.
#[derive(Debug, Default)]
pub struct TrafficCounts {
    pub limited_refusals: u64,
    pub insufficient_refusals: u64,
    pub top_ups: u64,
    /// Refusals the model did not predict (the charge fitted the pool and
    /// the cap), or with the other code.
    pub wrong_refusals: u64,
    /// Acknowledged charges that took a member's `used + held` over its cap.
    pub cap_exceeded: u64,
    /// Acknowledged charges the pool could not cover.
    pub pool_overdrawn: u64,
    /// Replies with another number than the model's (credits held, debited,
    /// committed, returned, or available after a top-up).
    pub reply_mismatches: u64,
    pub examples: Vec<String>,
}

impl TrafficCounts {
    fn note(&mut self, msg: String) {
        if self.examples.len() < 10 {
            self.examples.push(msg);
        }
    }

    fn merge(&mut self, o: TrafficCounts) {
        self.limited_refusals += o.limited_refusals;
        self.insufficient_refusals += o.insufficient_refusals;
        self.top_ups += o.top_ups;
        self.wrong_refusals += o.wrong_refusals;
        self.cap_exceeded += o.cap_exceeded;
        self.pool_overdrawn += o.pool_overdrawn;
        self.reply_mismatches += o.reply_mismatches;
        for e in o.examples {
            self.note(e);
        }
    }
}

/// The models of every account of a run, merged from the connections.
#[derive(Debug, Default)]
pub struct MembersLedger {
    pub accounts: HashMap<u32, AccountModel>,
    pub counts: TrafficCounts,
    /// The caps' period ended during the run: per-member counts are not
    /// comparable any more.
    pub period_ended: bool,
}

impl MembersLedger {
    pub fn merge(&mut self, other: MembersLedger) {
        self.accounts.extend(other.accounts);
        self.counts.merge(other.counts);
        self.period_ended |= other.period_ended;
    }
}

/// One connection's traffic: its accounts are `conn`, `conn + connections`, ...
pub struct MemberTraffic {
    cfg: MembersCfg,
    conn: u32,
    seq: u64,
    rng: SmallRng,
    zipf: Option<Zipf<f64>>,
    models: Vec<AccountModel>,
    /// Follow-ups (COMMIT or RELEASE of an acknowledged hold) and top-ups,
    /// sent before any new charge.
    ready: VecDeque<Op>,
    open: HashMap<OpId, OpenHold>,
    counts: TrafficCounts,
    period_ended: bool,
}

impl MemberTraffic {
    pub fn new(cfg: MembersCfg, conn: u32, seed: u64) -> Self {
        let n = cfg.connections.max(1);
        let local = cfg.accounts.saturating_sub(conn).div_ceil(n).max(1);
        let zipf = match cfg.keys {
            KeyDist::Uniform => None,
            KeyDist::Zipf => Some(Zipf::new(local as f64, cfg.zipf_s).expect("valid zipf")),
        };
        let models = (0..local).map(|_| AccountModel::new(&cfg)).collect();
        MemberTraffic {
            conn,
            seq: 0,
            rng: SmallRng::seed_from_u64(
                seed ^ (conn as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93),
            ),
            zipf,
            models,
            ready: VecDeque::new(),
            open: HashMap::new(),
            counts: TrafficCounts::default(),
            period_ended: false,
            cfg,
        }
    }

    fn model(&mut self, acct: u32) -> &mut AccountModel {
        let i = (acct - self.conn) / self.cfg.connections.max(1);
        &mut self.models[i as usize]
    }

    fn account(&mut self) -> u32 {
        let local = self.models.len() as u32;
        let k = match &self.zipf {
            None => self.rng.random_range(0..local),
            Some(z) => (z.sample(&mut self.rng) as u32).clamp(1, local) - 1,
        };
        self.conn + k * self.cfg.connections.max(1)
    }

    fn next_id(&mut self) -> OpId {
        self.seq += 1;
        OpId {
            conn: self.conn,
            seq: self.seq,
        }
    }

    /// The next request: a follow-up or top-up if one is due, else a new
    /// charge of a member.
    pub fn next_op(&mut self) -> Op {
        if let Some(op) = self.ready.pop_front() {
            return op;
        }
        let acct = self.account();
        let pool = self.cfg.pool;
        let heavy = self.rng.random_range(0..100) < HEAVY_PERCENT;
        let (member, amount) = if heavy {
            let lo = (pool / 20).max(1);
            (0, self.rng.random_range(lo..=(pool / 4).max(lo)))
        } else {
            let member = match self.cfg.members {
                1 => 0,
                n => self.rng.random_range(1..n),
            };
            (member, self.rng.random_range(1..=(pool / 100).max(1)))
        };
        let id = self.next_id();
        if self.rng.random_range(0..100) < RESERVE_PERCENT {
            Op::Reserve {
                acct,
                hold: id,
                amount,
                ttl_ms: Some(HOLD_TTL_MS),
                member: Some(member),
            }
        } else {
            Op::Debit {
                acct,
                id,
                amount,
                member: Some(member),
            }
        }
    }

    /// What the model says a charge of `charge` by `member` gets: the pool
    /// first, then the cap.
    fn expect(&mut self, acct: u32, member: u32, charge: u64) -> Expect {
        let a = self.model(acct);
        let m = &a.members[member as usize];
        if charge > a.available {
            Expect::Insufficient
        } else if m.used + m.held + charge > m.cap {
            Expect::Limited
        } else {
            Expect::Pass
        }
    }

    /// Holds a reply to a charge against the prediction and counts refusals.
    fn judge(
        &mut self,
        op: &Op,
        member: u32,
        expect: Expect,
        reply: &Reply,
        now: Instant,
    ) -> Outcome {
        let acct = op.acct();
        let got = match reply.error_code() {
            None => Expect::Pass,
            Some("INSUFFICIENT") => Expect::Insufficient,
            Some("LIMITED") => Expect::Limited,
            Some(_) => return Outcome::Failed,
        };
        match got {
            Expect::Insufficient => {
                self.counts.insufficient_refusals += 1;
                self.model(acct).insufficient.add(now);
            }
            Expect::Limited => {
                self.counts.limited_refusals += 1;
                self.model(acct).members[member as usize].limited.add(now);
            }
            Expect::Pass => {}
        }
        // After the period ended the server counts `used` from 0 again: it
        // may pass what the model would refuse, never the other way round.
        let excused = got == Expect::Pass && expect == Expect::Limited && self.period_ended;
        if got != expect && !excused {
            let (a, m) = {
                let a = self.model(acct);
                let m = &a.members[member as usize];
                (a.available, (m.used, m.held, m.cap))
            };
            let what = format!(
                "{op} replied {reply}; the client expected {} (available {a}, m{member} used {} held {} cap {})",
                match expect {
                    Expect::Pass => "it to pass",
                    Expect::Insufficient => "INSUFFICIENT",
                    Expect::Limited => "LIMITED",
                },
                m.0,
                m.1,
                m.2
            );
            match (got, expect) {
                (Expect::Pass, Expect::Insufficient) => self.counts.pool_overdrawn += 1,
                (Expect::Pass, _) => self.counts.cap_exceeded += 1,
                _ => self.counts.wrong_refusals += 1,
            }
            self.counts.note(what);
        }
        match got {
            Expect::Pass => Outcome::Applied,
            _ => Outcome::Refused,
        }
    }

    /// Counts a mismatch between a reply's number and the model's.
    fn check_number(&mut self, op: &Op, reply: &Reply, want: u64) -> u64 {
        let got = reply.as_int().unwrap_or(-1);
        if got != want as i64 {
            self.counts.reply_mismatches += 1;
            self.counts
                .note(format!("{op} replied {reply}, the client expected {want}"));
        }
        got.max(0) as u64
    }

    /// After a change: the thresholds, the member's peak, and a top-up
    /// when `available` fell below the lowest threshold.
    fn changed(&mut self, acct: u32, member: Option<u32>) {
        let thresholds = std::mem::take(&mut self.cfg.thresholds);
        let lowest = thresholds.first().copied().unwrap_or(0);
        let a = self.model(acct);
        a.after_change(&thresholds);
        if let Some(m) = member {
            let m = &mut a.members[m as usize];
            m.peak = m.peak.max(m.used + m.held);
        }
        let top_up = a.available < lowest && !a.topup_pending;
        a.topup_pending |= top_up;
        self.cfg.thresholds = thresholds;
        if top_up {
            let id = self.next_id();
            let amount = self.cfg.pool;
            self.ready.push_back(Op::TopUp { acct, id, amount });
        }
    }

    /// Books a reply (in the order the server applied the requests) and
    /// says how the workload judges it.
    pub fn on_reply(&mut self, op: &Op, reply: &Reply, now: Instant) -> ReplyClass {
        if self.cfg.period_ends.is_some_and(|end| now >= end) {
            self.period_ended = true;
        }
        let class = match reply.error_code() {
            None => ReplyClass::Success,
            Some("INSUFFICIENT" | "LIMITED") => ReplyClass::ExpectedRefusal,
            Some(_) => ReplyClass::UnexpectedError,
        };
        match *op {
            Op::Reserve {
                acct,
                hold,
                amount,
                member,
                ..
            } => {
                let m = member.unwrap_or(0);
                let expect = self.expect(acct, m, amount);
                if let Outcome::Applied = self.judge(op, m, expect, reply, now) {
                    let n = self.check_number(op, reply, amount);
                    let a = self.model(acct);
                    a.available = a.available.saturating_sub(n);
                    a.held += n;
                    a.open_holds += 1;
                    a.members[m as usize].held += n;
                    self.changed(acct, Some(m));
                    let open = OpenHold {
                        member: m,
                        amount: n,
                    };
                    self.open.insert(hold, open);
                    self.follow_up(acct, hold, n);
                }
            }
            Op::Debit {
                acct,
                amount,
                member,
                ..
            } => {
                let m = member.unwrap_or(0);
                let expect = self.expect(acct, m, amount);
                if let Outcome::Applied = self.judge(op, m, expect, reply, now) {
                    let n = self.check_number(op, reply, amount);
                    let a = self.model(acct);
                    a.available = a.available.saturating_sub(n);
                    a.spent += n;
                    a.members[m as usize].used += n;
                    self.changed(acct, Some(m));
                }
            }
            Op::Commit { acct, hold, total } => {
                let Some(h) = self.open.get(&hold).copied() else {
                    return class;
                };
                let total = total.unwrap_or(h.amount);
                let excess = total.saturating_sub(h.amount);
                let expect = match excess {
                    0 => Expect::Pass,
                    _ => self.expect(acct, h.member, excess),
                };
                match self.judge(op, h.member, expect, reply, now) {
                    Outcome::Applied => {
                        let n = self.check_number(op, reply, total);
                        self.open.remove(&hold);
                        let a = self.model(acct);
                        a.available = (a.available + h.amount).saturating_sub(n);
                        a.held -= h.amount;
                        a.spent += n;
                        a.open_holds -= 1;
                        let m = &mut a.members[h.member as usize];
                        m.held -= h.amount;
                        m.used += n;
                        self.changed(acct, Some(h.member));
                    }
                    // The hold stays open: give it back.
                    Outcome::Refused => self.ready.push_back(Op::Release { acct, hold }),
                    Outcome::Failed => {}
                }
            }
            Op::Release { acct, hold } => {
                let Some(h) = self.open.get(&hold).copied() else {
                    return class;
                };
                if reply.error_code().is_none() {
                    let n = self.check_number(op, reply, h.amount);
                    self.open.remove(&hold);
                    let a = self.model(acct);
                    a.available += n;
                    a.held -= h.amount;
                    a.open_holds -= 1;
                    a.members[h.member as usize].held -= h.amount;
                    self.changed(acct, None);
                }
            }
            Op::TopUp { acct, amount, .. } => {
                if reply.error_code().is_none() {
                    self.counts.top_ups += 1;
                    let want = self.model(acct).available + amount;
                    let n = self.check_number(op, reply, want);
                    let a = self.model(acct);
                    a.topup_pending = false;
                    a.available = n;
                    a.granted += amount;
                    self.changed(acct, None);
                } else {
                    self.model(acct).topup_pending = false;
                }
            }
            Op::Grant { .. } | Op::Capture { .. } | Op::Balance { .. } => {}
        }
        class
    }

    /// The next step of an acknowledged hold: RELEASE it, or COMMIT below
    /// it, all of it (no total), or above it (the excess from the pool,
    /// within the cap).
    fn follow_up(&mut self, acct: u32, hold: OpId, amount: u64) {
        let op = if self.rng.random_range(0..100) < RELEASE_PERCENT {
            Op::Release { acct, hold }
        } else {
            let total = match self.rng.random_range(0..4) {
                0 | 1 => Some(amount * self.rng.random_range(20..=100u64) / 100),
                2 => None,
                _ => Some(amount + (amount * self.rng.random_range(1..=50u64) / 100).max(1)),
            };
            Op::Commit { acct, hold, total }
        };
        self.ready.push_back(op);
    }

    /// A request whose reply will never come: its account is unknown from now on.
    pub fn on_lost(&mut self, op: &Op) {
        self.model(op.acct()).lost = true;
    }

    pub fn into_ledger(self) -> MembersLedger {
        let (conn, n) = (self.conn, self.cfg.connections.max(1));
        MembersLedger {
            accounts: self
                .models
                .into_iter()
                .enumerate()
                .map(|(i, m)| (conn + i as u32 * n, m))
                .filter(|(acct, _)| *acct < self.cfg.accounts)
                .collect(),
            counts: self.counts,
            period_ended: self.period_ended,
        }
    }
}
