//! What each connection sends: the `reserve` workload (one RESERVE per request,
//! each with a fresh hold id) or the `mix` of flows a real gateway produces
//! (reserve then commit part of it; reserve, cumulative captures, commit for
//! video; reserve then release; debits; abandoned holds with a short TTL that
//! must expire; balance reads; idempotent retries of earlier commands). The
//! `members` workload has a module of its own ([`crate::members`]); the
//! generator hands its requests and replies to it.
//!
//! Next to generating requests it keeps the client's ledger
//! ([`crate::ledger`]), which `--verify` compares with the server.

use crate::ledger::{HoldRec, Ledger};
use crate::members::traffic::{MemberTraffic, MembersLedger};
use crate::members::MembersCfg;
use crate::ops::{Op, OpId};
use crate::resp::Reply;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// RESERVE account hold amount, a unique hold id each time.
    Reserve,
    /// The realistic mix of flows.
    Mix,
    /// Members charging pooled accounts under caps (some are refused
    /// LIMITED), the pools run down past ALERT thresholds and topped up again;
    /// --verify also checks the caps and the events (creditd only).
    Members,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Reserve => "reserve",
            WorkloadKind::Mix => "mix",
            WorkloadKind::Members => "members",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    Uniform,
    Zipf,
}

#[derive(Debug, Clone)]
pub struct WorkloadCfg {
    pub kind: WorkloadKind,
    pub accounts: u32,
    pub keys: KeyDist,
    pub zipf_s: f64,
    /// Amount of each RESERVE in the `reserve` workload.
    pub amount: u64,
    /// TTL of each RESERVE in the `reserve` workload (None: the server's default).
    pub reserve_ttl_ms: Option<u64>,
    /// TTL of the abandoned holds of the mix.
    pub abandon_ttl_ms: u64,
    /// The server's default hold TTL (creditd `hold_ttl_ms`; the Lua model uses the same).
    pub default_ttl_ms: u64,
    /// Keep the ledger (touched accounts, spent, open holds) for `--verify`.
    pub verify: bool,
    /// The members workload's setup (`Some` for `--workload members` only).
    pub members: Option<MembersCfg>,
}

/// Percent weights of the mix (new flows; follow-up steps always go first).
pub const MIX: [(Flow, u32); 8] = [
    (Flow::ReserveCommit, 33),
    (Flow::Video, 10),
    (Flow::ReserveRelease, 14),
    (Flow::Debit, 20),
    (Flow::Abandon, 5),
    (Flow::Balance, 5),
    (Flow::Retry, 8),
    (Flow::CommitWhole, 5),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// RESERVE, then COMMIT a part of it.
    ReserveCommit,
    /// RESERVE, then COMMIT without a total (the whole hold).
    CommitWhole,
    /// RESERVE seconds x rate, 1 to 3 cumulative CAPTUREs, COMMIT the final usage
    /// (sometimes above the hold: the excess comes from available).
    Video,
    /// RESERVE, then RELEASE.
    ReserveRelease,
    /// A DEBIT (no hold).
    Debit,
    /// RESERVE with a short TTL, never touched again: must expire.
    Abandon,
    /// BALANCE, checked for conservation on the spot.
    Balance,
    /// Repeat of an earlier successful RESERVE/COMMIT/RELEASE/DEBIT with the same
    /// id: must get the same reply.
    Retry,
}

/// What a request was for, so its reply can be interpreted.
#[derive(Debug, Clone)]
pub enum Tag {
    /// A request of no flow (reserve workload, debit, balance).
    Single,
    /// The current step of flow slot `n`.
    Step(u32),
    /// A retry; the reply must equal this.
    Retry(Reply),
}

/// How the workload judges a reply: what `--max-error-rate` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    Success,
    /// A refusal the workload provokes itself and the ledger accounts for:
    /// `INSUFFICIENT` to a RESERVE, a DEBIT or a COMMIT above its hold once the
    /// credits `--grant` gave an account run out. The server is right to refuse,
    /// and a refusal changes nothing, so `--verify` still holds.
    ExpectedRefusal,
    /// Any other error reply: the run did not measure what it meant to
    /// (`NOAUTH`, `NOPERM`, `BUSY`, `ERR too many open holds`, ...) or the server
    /// is wrong (`CONFLICT` or `NOTFOUND` for ids this client made, an error to a
    /// retry of a command that succeeded).
    UnexpectedError,
}

impl ReplyClass {
    pub fn of(op: &Op, tag: &Tag, reply: &Reply) -> ReplyClass {
        let Some(code) = reply.error_code() else {
            return ReplyClass::Success;
        };
        let may_run_out = matches!(
            op,
            Op::Reserve { .. } | Op::Debit { .. } | Op::Commit { .. }
        );
        if code == "INSUFFICIENT" && may_run_out && !matches!(tag, Tag::Retry(_)) {
            ReplyClass::ExpectedRefusal
        } else {
            ReplyClass::UnexpectedError
        }
    }
}

/// A flow in progress: its next step is in `next` once the previous reply came.
#[derive(Debug, Clone)]
struct FlowState {
    flow: Flow,
    acct: u32,
    hold: OpId,
    amount: u64,
    captured: u64,
    captures_left: u32,
    next: Option<Op>,
}

enum Keys {
    Uniform(u32),
    Zipf(Zipf<f64>, u32),
}

/// One connection's request generator and ledger.
pub struct Generator {
    cfg: WorkloadCfg,
    conn: u32,
    seq: u64,
    rng: SmallRng,
    keys: Keys,
    flows: Vec<FlowState>,
    free: Vec<u32>,
    ready: VecDeque<u32>,
    /// Recent successful commands that may be retried, with their replies.
    recent: VecDeque<(Op, Reply)>,
    pub ledger: Ledger,
    /// The members workload, which keeps its own model of the accounts.
    members: Option<MemberTraffic>,
}

const RECENT: usize = 256;

impl Generator {
    pub fn new(cfg: WorkloadCfg, conn: u32, seed: u64) -> Self {
        let keys = match cfg.keys {
            KeyDist::Uniform => Keys::Uniform(cfg.accounts),
            KeyDist::Zipf => Keys::Zipf(
                Zipf::new(cfg.accounts as f64, cfg.zipf_s).expect("valid zipf parameters"),
                cfg.accounts,
            ),
        };
        let members = cfg
            .members
            .clone()
            .map(|m| MemberTraffic::new(m, conn, seed));
        Generator {
            cfg,
            conn,
            seq: 0,
            rng: SmallRng::seed_from_u64(
                seed ^ (conn as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            keys,
            flows: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            recent: VecDeque::with_capacity(RECENT),
            ledger: Ledger::default(),
            members,
        }
    }

    /// The members workload's model of its accounts, at the end of the run.
    pub fn take_members(&mut self) -> Option<MembersLedger> {
        self.members.take().map(MemberTraffic::into_ledger)
    }

    fn account(&mut self) -> u32 {
        match &self.keys {
            Keys::Uniform(n) => self.rng.random_range(0..*n),
            Keys::Zipf(z, n) => {
                let k = z.sample(&mut self.rng) as u32;
                k.clamp(1, *n) - 1
            }
        }
    }

    fn next_id(&mut self) -> OpId {
        self.seq += 1;
        OpId {
            conn: self.conn,
            seq: self.seq,
        }
    }

    /// The next request to send.
    pub fn next_op(&mut self) -> (Op, Tag) {
        let (op, tag) = self.pick();
        if self.cfg.verify {
            self.ledger.touched.insert(op.acct());
        }
        (op, tag)
    }

    fn pick(&mut self) -> (Op, Tag) {
        if let Some(m) = self.members.as_mut() {
            return (m.next_op(), Tag::Single);
        }
        if let Some(slot) = self.ready.pop_front() {
            let op = self.flows[slot as usize]
                .next
                .take()
                .expect("a ready flow has a next step");
            return (op, Tag::Step(slot));
        }
        if self.cfg.kind == WorkloadKind::Reserve {
            let acct = self.account();
            let hold = self.next_id();
            let op = Op::Reserve {
                acct,
                hold,
                amount: self.cfg.amount,
                ttl_ms: self.cfg.reserve_ttl_ms,
                member: None,
            };
            return (op, Tag::Single);
        }
        let mut roll = self.rng.random_range(0..100u32);
        let mut flow = Flow::Debit;
        for (f, w) in MIX {
            if roll < w {
                flow = f;
                break;
            }
            roll -= w;
        }
        if flow == Flow::Retry && self.recent.is_empty() {
            flow = Flow::Debit;
        }
        let acct = self.account();
        match flow {
            Flow::Retry => {
                let i = self.rng.random_range(0..self.recent.len());
                let (op, reply) = self.recent[i].clone();
                (op, Tag::Retry(reply))
            }
            Flow::Debit => {
                let id = self.next_id();
                let amount = self.rng.random_range(1..=50);
                let op = Op::Debit {
                    acct,
                    id,
                    amount,
                    member: None,
                };
                (op, Tag::Single)
            }
            Flow::Balance => (Op::Balance { acct }, Tag::Single),
            _ => {
                let hold = self.next_id();
                let (amount, ttl_ms, captures_left) = match flow {
                    Flow::Video => (
                        250 * self.rng.random_range(2..=10u64),
                        None,
                        self.rng.random_range(1..=3),
                    ),
                    Flow::Abandon => (
                        self.rng.random_range(1..=100),
                        Some(self.cfg.abandon_ttl_ms),
                        0,
                    ),
                    _ => (self.rng.random_range(1..=1000), None, 0),
                };
                let op = Op::Reserve {
                    acct,
                    hold,
                    amount,
                    ttl_ms,
                    member: None,
                };
                let state = FlowState {
                    flow,
                    acct,
                    hold,
                    amount,
                    captured: 0,
                    captures_left,
                    next: None,
                };
                let slot = match self.free.pop() {
                    Some(s) => {
                        self.flows[s as usize] = state;
                        s
                    }
                    None => {
                        self.flows.push(state);
                        (self.flows.len() - 1) as u32
                    }
                };
                (op, Tag::Step(slot))
            }
        }
    }

    fn spend(&mut self, acct: u32, n: u64) {
        if self.cfg.verify {
            self.ledger.add_spent(acct, n);
        }
    }

    fn remember(&mut self, op: Op, reply: &Reply) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((op, reply.clone()));
    }

    /// Books a reply: the ledger, the flow's next step, retry checks. Returns
    /// how the workload judges it.
    pub fn on_reply(
        &mut self,
        op: &Op,
        tag: Tag,
        reply: &Reply,
        sent: Instant,
        now: Instant,
    ) -> ReplyClass {
        if let Some(m) = self.members.as_mut() {
            return m.on_reply(op, reply, now);
        }
        let class = ReplyClass::of(op, &tag, reply);
        if let Tag::Retry(expected) = tag {
            self.ledger.retries_checked += 1;
            if *reply != expected {
                self.ledger.retry_mismatches += 1;
                self.ledger.note(format!(
                    "retry of {op} replied {reply}, the first reply was {expected}"
                ));
            }
            return class;
        }
        let ok = !matches!(reply, Reply::Error(_));
        if ok {
            // The flow's captured: the last acknowledged cumulative total.
            let before = match tag {
                Tag::Step(slot) => self.flows[slot as usize].captured,
                _ => 0,
            };
            self.book(op, reply, before, sent, now);
        }
        if let Tag::Step(slot) = tag {
            self.advance(slot, op, reply, ok);
        }
        class
    }

    /// Updates the ledger for a successful reply.
    fn book(&mut self, op: &Op, reply: &Reply, before: u64, sent: Instant, now: Instant) {
        let n = reply.as_int().unwrap_or(0).max(0) as u64;
        match *op {
            Op::Grant { .. } | Op::TopUp { .. } => {}
            Op::Reserve {
                acct, hold, ttl_ms, ..
            } => {
                if self.cfg.verify {
                    self.ledger.holds.insert(
                        hold,
                        HoldRec {
                            acct,
                            amount: n,
                            captured: 0,
                            sent,
                            acked: now,
                            ttl_ms: ttl_ms.unwrap_or(self.cfg.default_ttl_ms),
                        },
                    );
                }
                if self.cfg.kind == WorkloadKind::Mix {
                    self.remember(*op, reply);
                }
            }
            Op::Capture { acct, hold, .. } => {
                self.spend(acct, n.saturating_sub(before));
                if let Some(h) = self.ledger.holds.get_mut(&hold) {
                    h.captured = h.captured.max(n);
                }
            }
            Op::Commit { acct, hold, .. } => {
                self.spend(acct, n.saturating_sub(before));
                self.ledger.holds.remove(&hold);
                self.remember(*op, reply);
            }
            Op::Release { hold, .. } => {
                self.ledger.holds.remove(&hold);
                self.remember(*op, reply);
            }
            Op::Debit { acct, .. } => {
                self.spend(acct, n);
                self.remember(*op, reply);
            }
            Op::Balance { acct } => {
                self.ledger.balance_checks += 1;
                let conserved = reply.balance().is_some_and(|[a, h, s, e, g]| {
                    a.min(h).min(s).min(e).min(g) >= 0 && a + h + s + e == g
                });
                if !conserved {
                    self.ledger.balance_failures += 1;
                    self.ledger.note(format!(
                        "BALANCE of account {acct} during the run broke conservation: {reply}"
                    ));
                }
            }
        }
    }

    /// Moves a flow to its next step, or ends it.
    fn advance(&mut self, slot: u32, op: &Op, reply: &Reply, ok: bool) {
        let n = reply.as_int().unwrap_or(0).max(0) as u64;
        let f = &mut self.flows[slot as usize];
        let mut next = None;
        if ok {
            match *op {
                Op::Reserve { .. } => {
                    f.amount = n;
                    next = match f.flow {
                        Flow::ReserveCommit => {
                            let pct = self.rng.random_range(20..=100u64);
                            Some(Op::Commit {
                                acct: f.acct,
                                hold: f.hold,
                                total: Some(f.amount * pct / 100),
                            })
                        }
                        Flow::CommitWhole => Some(Op::Commit {
                            acct: f.acct,
                            hold: f.hold,
                            total: None,
                        }),
                        Flow::ReserveRelease => Some(Op::Release {
                            acct: f.acct,
                            hold: f.hold,
                        }),
                        Flow::Video => Some(Op::Capture {
                            acct: f.acct,
                            hold: f.hold,
                            total: f.amount / (f.captures_left as u64 + 1),
                        }),
                        _ => None,
                    };
                }
                Op::Capture { total, .. } => {
                    f.captured = f.captured.max(n);
                    f.captures_left = f.captures_left.saturating_sub(1);
                    let step = f.amount / 4;
                    next = if f.captures_left > 0 {
                        Some(Op::Capture {
                            acct: f.acct,
                            hold: f.hold,
                            total: total + step,
                        })
                    } else {
                        // The final usage: usually within the hold, one in ten over it.
                        let extra = if self.rng.random_range(0..10) == 0 {
                            f.amount / 2
                        } else {
                            self.rng.random_range(0..=step)
                        };
                        Some(Op::Commit {
                            acct: f.acct,
                            hold: f.hold,
                            total: Some(f.captured + extra),
                        })
                    };
                }
                _ => {}
            }
        }
        match next {
            Some(op) => {
                f.next = Some(op);
                self.ready.push_back(slot);
            }
            None => {
                f.hold = OpId {
                    conn: u32::MAX,
                    seq: 0,
                };
                self.free.push(slot);
            }
        }
    }

    /// A request whose reply will never come: its account can't be checked exactly.
    pub fn on_lost(&mut self, op: &Op) {
        if let Some(m) = self.members.as_mut() {
            m.on_lost(op);
        }
        self.ledger.indeterminate.insert(op.acct());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn cfg(kind: WorkloadKind) -> WorkloadCfg {
        WorkloadCfg {
            kind,
            accounts: 10,
            keys: KeyDist::Zipf,
            zipf_s: 0.99,
            amount: 1,
            reserve_ttl_ms: None,
            abandon_ttl_ms: 100,
            default_ttl_ms: 900_000,
            verify: true,
            members: None,
        }
    }

    /// Drives the generator against a perfect in-memory server that never fails.
    #[test]
    fn video_flow_books_spent_once() {
        let mut g = Generator::new(cfg(WorkloadKind::Mix), 0, 1);
        let now = Instant::now();
        let mut captured: HashMap<OpId, u64> = HashMap::new();
        for _ in 0..10_000 {
            let (op, tag) = g.next_op();
            let reply = match op {
                Op::Reserve { amount, .. } => Reply::Int(amount as i64),
                Op::Capture { hold, total, .. } => {
                    let c = captured.entry(hold).or_default();
                    *c = (*c).max(total);
                    Reply::Int(*c as i64)
                }
                Op::Commit { hold, total, .. } => {
                    let c = captured.get(&hold).copied().unwrap_or(0);
                    Reply::Int(total.unwrap_or(0).max(c) as i64)
                }
                Op::Release { .. } => Reply::Int(0),
                Op::Debit { amount, .. } => Reply::Int(amount as i64),
                Op::Balance { .. } => Reply::Array(vec![]),
                Op::Grant { .. } | Op::TopUp { .. } => Reply::Int(0),
            };
            let reply = match &tag {
                Tag::Retry(r) => r.clone(),
                _ => reply,
            };
            g.on_reply(&op, tag, &reply, now, now);
        }
        assert_eq!(g.ledger.retry_mismatches, 0);
        assert!(g.ledger.retries_checked > 0);
        assert!(g.ledger.spent.values().sum::<u64>() > 0);
        // Flows never pile up: each has at most one step outstanding.
        assert!(g.flows.len() < 4, "{} flow slots", g.flows.len());
    }

    #[test]
    fn only_running_out_of_credits_is_an_expected_refusal() {
        let hold = OpId { conn: 0, seq: 1 };
        let reserve = Op::Reserve {
            acct: 1,
            hold,
            amount: 5,
            ttl_ms: None,
            member: None,
        };
        let capture = Op::Capture {
            acct: 1,
            hold,
            total: 2,
        };
        let err = |m: &str| Reply::Error(m.to_string());
        let insufficient = err("INSUFFICIENT need 5 available 2");
        assert_eq!(
            ReplyClass::of(&reserve, &Tag::Single, &Reply::Int(5)),
            ReplyClass::Success
        );
        assert_eq!(
            ReplyClass::of(&reserve, &Tag::Step(0), &insufficient),
            ReplyClass::ExpectedRefusal
        );
        // A retry must repeat the first (successful) reply.
        assert_eq!(
            ReplyClass::of(&reserve, &Tag::Retry(Reply::Int(5)), &insufficient),
            ReplyClass::UnexpectedError
        );
        // Captures stay within the hold: nothing to run out of.
        assert_eq!(
            ReplyClass::of(&capture, &Tag::Step(0), &insufficient),
            ReplyClass::UnexpectedError
        );
        for message in [
            "ERR too many open holds on this account (limit 5)",
            "NOPERM this user has no permissions to run the 'reserve' command",
            "BUSY persistence is behind",
            "CONFLICT hold id was used with other arguments",
        ] {
            assert_eq!(
                ReplyClass::of(&reserve, &Tag::Single, &err(message)),
                ReplyClass::UnexpectedError,
                "{message}"
            );
        }
    }

    #[test]
    fn reserve_workload_uses_fresh_ids() {
        let mut g = Generator::new(cfg(WorkloadKind::Reserve), 3, 1);
        let mut ids = HashSet::new();
        for _ in 0..1000 {
            match g.next_op().0 {
                Op::Reserve { hold, amount, .. } => {
                    assert_eq!(amount, 1);
                    assert!(ids.insert(hold));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
