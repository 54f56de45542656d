//! Model-based test: random operation sequences run against the engine and
//! against a small, obviously-correct reference model of PROTOCOL.md §1, §3,
//! §4 and §5 (credits and holds; plans are covered by `scenarios.rs`).
//!
//! After every step the reply (or error code, and for INSUFFICIENT the exact
//! numbers) must match the model, and so must the touched account's BALANCE,
//! its live buckets (in spending order) and its open holds. Conservation is
//! checked on every observed balance. At the end, the journal is replayed into
//! a fresh engine, a snapshot is restored into another, and a mid-run fuzzy
//! snapshot plus the whole journal into a third: all must agree with the
//! original engine account by account (ACCOUNT, BALANCE and HISTORY).

use creditd_engine::bucket::BucketKind;
use creditd_engine::clock::{Clock, TestClock};
use creditd_engine::config::Config;
use creditd_engine::error::Code;
use creditd_engine::id::Bytes;
use creditd_engine::{
    Balance, Charge, Engine, EngineError, Expiry, MemoryJournal, Mutation, Usage,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const NEVER: u64 = u64::MAX;
const START_MS: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 60_000;
const DEFAULT_TTL_MS: u64 = 20_000;
const MAX_AMOUNT: u64 = 1_000_000_000_000_000;

const ACCOUNTS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];
const HOLD_IDS: [&str; 4] = ["h0", "h1", "h2", "h3"];
const GRANT_IDS: [&str; 4] = ["g0", "g1", "g2", "g3"];
const DEBIT_IDS: [&str; 3] = ["d0", "d1", "d2"];

fn config() -> Config {
    Config::parse(
        &format!("hold_ttl_ms = {DEFAULT_TTL_MS}\nidempotency_window_ms = {WINDOW_MS}\n"),
        "model.toml",
    )
    .expect("test config parses")
}

// ---------------------------------------------------------------------------
// Concrete commands (what is sent, retries included)

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmd {
    Grant {
        acct: usize,
        id: usize,
        amount: u64,
        kind: BucketKind,
        expiry: Expiry,
        priority: u8,
    },
    Reserve {
        acct: usize,
        id: usize,
        amount: u64,
        ttl: Option<u64>,
    },
    Capture {
        acct: usize,
        id: usize,
        total: u64,
    },
    Commit {
        acct: usize,
        id: usize,
        total: Option<u64>,
    },
    Release {
        acct: usize,
        id: usize,
    },
    Extend {
        acct: usize,
        id: usize,
        ttl: u64,
    },
    Debit {
        acct: usize,
        id: usize,
        amount: u64,
    },
}

impl Cmd {
    fn acct(&self) -> usize {
        match *self {
            Cmd::Grant { acct, .. }
            | Cmd::Reserve { acct, .. }
            | Cmd::Capture { acct, .. }
            | Cmd::Commit { acct, .. }
            | Cmd::Release { acct, .. }
            | Cmd::Extend { acct, .. }
            | Cmd::Debit { acct, .. } => acct,
        }
    }

    fn mutation(&self) -> Mutation<'static> {
        match *self {
            Cmd::Grant {
                id,
                amount,
                kind,
                expiry,
                priority,
                ..
            } => Mutation::Grant {
                grant_id: Bytes(GRANT_IDS[id].as_bytes()),
                amount,
                kind,
                expiry,
                priority,
            },
            Cmd::Reserve {
                id, amount, ttl, ..
            } => Mutation::Reserve {
                hold_id: Bytes(HOLD_IDS[id].as_bytes()),
                charge: Charge::Amount(amount),
                ttl_ms: ttl,
                member: None,
            },
            Cmd::Capture { id, total, .. } => Mutation::Capture {
                hold_id: Bytes(HOLD_IDS[id].as_bytes()),
                usage: Usage::Total(total),
            },
            Cmd::Commit { id, total, .. } => Mutation::Commit {
                hold_id: Bytes(HOLD_IDS[id].as_bytes()),
                usage: total.map(Usage::Total),
            },
            Cmd::Release { id, .. } => Mutation::Release {
                hold_id: Bytes(HOLD_IDS[id].as_bytes()),
            },
            Cmd::Extend { id, ttl, .. } => Mutation::Extend {
                hold_id: Bytes(HOLD_IDS[id].as_bytes()),
                ttl_ms: ttl,
            },
            Cmd::Debit { id, amount, .. } => Mutation::Debit {
                debit_id: Bytes(DEBIT_IDS[id].as_bytes()),
                charge: Charge::Amount(amount),
                member: None,
            },
        }
    }

    /// The same command with the same id but other arguments.
    fn mutated(&self) -> Cmd {
        let mut c = *self;
        match &mut c {
            Cmd::Grant { amount, .. } | Cmd::Reserve { amount, .. } | Cmd::Debit { amount, .. } => {
                *amount += 1
            }
            Cmd::Capture { total, .. } => *total += 7,
            Cmd::Commit { total, .. } => *total = Some(total.map_or(1, |t| t + 1)),
            Cmd::Extend { ttl, .. } => *ttl += 1_000,
            Cmd::Release { .. } => {}
        }
        c
    }
}

// ---------------------------------------------------------------------------
// The reference model

#[derive(Debug, Clone, PartialEq, Eq)]
enum MErr {
    Err,
    Insufficient { need: u64, available: u64 },
    NotFound,
    Conflict,
    Expired,
}

type MResult = Result<(u64, bool), MErr>;

#[derive(Debug, Clone)]
struct MBucket {
    id: &'static str,
    seq: u64,
    kind: BucketKind,
    remaining: u64,
    expires_at: u64,
    priority: u8,
}

#[derive(Debug, Clone)]
struct MHold {
    amount: u64,
    /// As the client gave it (retries compare this, not the default).
    ttl: Option<u64>,
    captured: u64,
    /// (bucket seq, credits still held from it), in the order taken.
    portions: Vec<(u64, u64)>,
    expires_at: u64,
}

impl MHold {
    fn held(&self) -> u64 {
        self.portions.iter().map(|p| p.1).sum()
    }
}

#[derive(Debug, Clone, Copy)]
enum MOutcome {
    Committed { usage: Option<u64>, total: u64 },
    Released { returned: u64 },
    Expired,
}

#[derive(Debug, Clone)]
enum MDone {
    Grant {
        args: (u64, BucketKind, Expiry, u8),
        reply: u64,
    },
    Debit {
        amount: u64,
    },
    Hold {
        amount: u64,
        ttl: Option<u64>,
        outcome: MOutcome,
    },
}

#[derive(Debug, Clone, Default)]
struct MAccount {
    exists: bool,
    buckets: Vec<MBucket>,
    holds: BTreeMap<&'static str, MHold>,
    /// (namespace, id) -> (record, finished at)
    done: HashMap<(char, &'static str), (MDone, u64)>,
    bal: Balance,
    next_seq: u64,
    hold_expiries: u64,
}

impl MAccount {
    fn lookup(&self, ns: char, id: &'static str, now: u64) -> Option<&MDone> {
        self.done
            .get(&(ns, id))
            .filter(|(_, finished)| finished + WINDOW_MS > now)
            .map(|(d, _)| d)
    }

    fn remember(&mut self, ns: char, id: &'static str, d: MDone, at: u64) {
        self.done.insert((ns, id), (d, at));
    }

    fn bucket(&mut self, seq: u64) -> &mut MBucket {
        self.buckets.iter_mut().find(|b| b.seq == seq).unwrap()
    }

    /// Indices of the buckets in spending order.
    fn order(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.buckets.len()).collect();
        idx.sort_by_key(|&i| {
            let b = &self.buckets[i];
            (b.priority, b.expires_at, b.seq)
        });
        idx
    }

    /// Takes `amount` available credits in spending order; returns the portions.
    fn take(&mut self, amount: u64) -> Vec<(u64, u64)> {
        let mut need = amount;
        let mut portions = vec![];
        for i in self.order() {
            let b = &mut self.buckets[i];
            let t = need.min(b.remaining);
            if t > 0 {
                b.remaining -= t;
                need -= t;
                portions.push((b.seq, t));
            }
        }
        assert_eq!(need, 0);
        self.bal.available -= amount;
        portions
    }

    /// Returns held portions at `at`: to live buckets, else to expired.
    fn give_back(&mut self, portions: &[(u64, u64)], at: u64) -> u64 {
        let mut returned = 0;
        for &(seq, amt) in portions {
            self.bal.held -= amt;
            let b = self.bucket(seq);
            if at < b.expires_at {
                b.remaining += amt;
                self.bal.available += amt;
                returned += amt;
            } else {
                self.bal.expired += amt;
            }
        }
        returned
    }

    /// Applies every time-driven event up to `now`.
    fn advance(&mut self, now: u64) {
        let due: Vec<(u64, &'static str)> = self
            .holds
            .iter()
            .filter(|(_, h)| h.expires_at <= now)
            .map(|(id, h)| (h.expires_at, *id))
            .collect();
        for (t, id) in due {
            let h = self.holds.remove(id).unwrap();
            self.give_back(&h.portions, t);
            self.hold_expiries += 1;
            let d = MDone::Hold {
                amount: h.amount,
                ttl: h.ttl,
                outcome: MOutcome::Expired,
            };
            self.remember('h', id, d, t);
        }
        for b in self.buckets.iter_mut() {
            if b.remaining > 0 && b.expires_at <= now {
                self.bal.available -= b.remaining;
                self.bal.expired += b.remaining;
                b.remaining = 0;
            }
        }
    }

    fn closed_error(&self, id: &'static str, now: u64) -> MErr {
        match self.lookup('h', id, now) {
            Some(MDone::Hold {
                outcome: MOutcome::Expired,
                ..
            }) => MErr::Expired,
            Some(MDone::Hold { .. }) => MErr::Conflict,
            _ => MErr::NotFound,
        }
    }

    /// Settles `delta` more credits of an open hold: from the hold first
    /// (its portions in order), the excess from available.
    fn settle(&mut self, h: &mut MHold, delta: u64) -> Result<(), MErr> {
        let from_hold = delta.min(h.held());
        let excess = delta - from_hold;
        if excess > self.bal.available {
            return Err(MErr::Insufficient {
                need: excess,
                available: self.bal.available,
            });
        }
        let mut need = from_hold;
        for p in h.portions.iter_mut() {
            let t = need.min(p.1);
            p.1 -= t;
            need -= t;
        }
        h.portions.retain(|p| p.1 > 0);
        self.bal.held -= from_hold;
        self.bal.spent += from_hold;
        self.take(excess);
        self.bal.spent += excess;
        Ok(())
    }

    fn apply(&mut self, cmd: &Cmd, now: u64) -> MResult {
        match *cmd {
            Cmd::Grant {
                id,
                amount,
                kind,
                expiry,
                priority,
                ..
            } => {
                if amount > MAX_AMOUNT || priority > 100 {
                    return Err(MErr::Err);
                }
                let gid = GRANT_IDS[id];
                let args = (amount, kind, expiry, priority);
                if let Some(d) = self.lookup('g', gid, now) {
                    return match d {
                        MDone::Grant { args: a, reply } if *a == args => Ok((*reply, false)),
                        _ => Err(MErr::Conflict),
                    };
                }
                let expires_at = match expiry {
                    Expiry::Never => NEVER,
                    Expiry::At(at) => at,
                    Expiry::Ttl(ttl) => now + ttl,
                };
                if expires_at <= now {
                    return Err(MErr::Err);
                }
                self.next_seq += 1;
                if amount > 0 {
                    self.buckets.push(MBucket {
                        id: gid,
                        seq: self.next_seq,
                        kind,
                        remaining: amount,
                        expires_at,
                        priority,
                    });
                }
                self.bal.available += amount;
                self.bal.granted += amount;
                let reply = self.bal.available;
                self.remember('g', gid, MDone::Grant { args, reply }, now);
                Ok((reply, true))
            }
            Cmd::Reserve {
                id, amount, ttl, ..
            } => {
                if amount > MAX_AMOUNT || ttl.is_some_and(|t| !(1..=86_400_000).contains(&t)) {
                    return Err(MErr::Err);
                }
                // Retries compare the TTL as given, not the resolved default.
                let ttl_given = ttl;
                let same_ttl = |t: Option<u64>| t == ttl_given;
                let ttl = ttl.unwrap_or(DEFAULT_TTL_MS);
                let hid = HOLD_IDS[id];
                if let Some(h) = self.holds.get(hid) {
                    return if h.amount == amount && same_ttl(h.ttl) {
                        Ok((h.amount, false))
                    } else {
                        Err(MErr::Conflict)
                    };
                }
                if let Some(d) = self.lookup('h', hid, now) {
                    return match d {
                        MDone::Hold {
                            amount: a, ttl: t, ..
                        } if *a == amount && same_ttl(*t) => Ok((amount, false)),
                        _ => Err(MErr::Conflict),
                    };
                }
                if amount > self.bal.available {
                    return Err(MErr::Insufficient {
                        need: amount,
                        available: self.bal.available,
                    });
                }
                let portions = self.take(amount);
                self.bal.held += amount;
                self.holds.insert(
                    hid,
                    MHold {
                        amount,
                        ttl: ttl_given,
                        captured: 0,
                        portions,
                        expires_at: now + ttl,
                    },
                );
                Ok((amount, true))
            }
            Cmd::Capture { id, total, .. } => {
                let hid = HOLD_IDS[id];
                let Some(mut h) = self.holds.remove(hid) else {
                    return Err(self.closed_error(hid, now));
                };
                let r = if total <= h.captured {
                    Ok((h.captured, false))
                } else {
                    let delta = total - h.captured;
                    self.settle(&mut h, delta).map(|()| {
                        h.captured = total;
                        (total, true)
                    })
                };
                self.holds.insert(hid, h);
                r
            }
            Cmd::Commit { id, total, .. } => {
                let hid = HOLD_IDS[id];
                let Some(mut h) = self.holds.remove(hid) else {
                    if let Some(MDone::Hold {
                        outcome: MOutcome::Committed { usage, total: t },
                        ..
                    }) = self.lookup('h', hid, now)
                    {
                        return if *usage == total {
                            Ok((*t, false))
                        } else {
                            Err(MErr::Conflict)
                        };
                    }
                    return Err(self.closed_error(hid, now));
                };
                let final_total = total.unwrap_or(h.amount).max(h.captured);
                let delta = final_total - h.captured;
                if let Err(e) = self.settle(&mut h, delta) {
                    self.holds.insert(hid, h);
                    return Err(e);
                }
                self.give_back(&h.portions, now);
                let outcome = MOutcome::Committed {
                    usage: total,
                    total: final_total,
                };
                let d = MDone::Hold {
                    amount: h.amount,
                    ttl: h.ttl,
                    outcome,
                };
                self.remember('h', hid, d, now);
                Ok((final_total, true))
            }
            Cmd::Release { id, .. } => {
                let hid = HOLD_IDS[id];
                let Some(h) = self.holds.remove(hid) else {
                    return match self.lookup('h', hid, now) {
                        Some(MDone::Hold { outcome, .. }) => match *outcome {
                            MOutcome::Released { returned } => Ok((returned, false)),
                            MOutcome::Expired => Ok((0, false)),
                            MOutcome::Committed { .. } => Err(MErr::Conflict),
                        },
                        _ => Err(MErr::NotFound),
                    };
                };
                let returned = self.give_back(&h.portions, now);
                let d = MDone::Hold {
                    amount: h.amount,
                    ttl: h.ttl,
                    outcome: MOutcome::Released { returned },
                };
                self.remember('h', hid, d, now);
                Ok((returned, true))
            }
            Cmd::Extend { id, ttl, .. } => {
                if !(1..=86_400_000).contains(&ttl) {
                    return Err(MErr::Err);
                }
                let hid = HOLD_IDS[id];
                match self.holds.get_mut(hid) {
                    Some(h) => {
                        h.expires_at = now + ttl;
                        Ok((h.expires_at, true))
                    }
                    None => Err(self.closed_error(hid, now)),
                }
            }
            Cmd::Debit { id, amount, .. } => {
                if amount > MAX_AMOUNT {
                    return Err(MErr::Err);
                }
                let did = DEBIT_IDS[id];
                if let Some(d) = self.lookup('d', did, now) {
                    return match d {
                        MDone::Debit { amount: a } if *a == amount => Ok((amount, false)),
                        _ => Err(MErr::Conflict),
                    };
                }
                if amount > self.bal.available {
                    return Err(MErr::Insufficient {
                        need: amount,
                        available: self.bal.available,
                    });
                }
                self.take(amount);
                self.bal.spent += amount;
                self.remember('d', did, MDone::Debit { amount }, now);
                Ok((amount, true))
            }
        }
    }

    /// Live buckets with credits left, in spending order: (id, kind, remaining, expires_at shown, priority).
    fn view_buckets(&self) -> Vec<(Vec<u8>, BucketKind, u64, u64, u8)> {
        self.order()
            .into_iter()
            .map(|i| &self.buckets[i])
            .filter(|b| b.remaining > 0)
            .map(|b| {
                let shown = if b.expires_at == NEVER {
                    0
                } else {
                    b.expires_at
                };
                (
                    b.id.as_bytes().to_vec(),
                    b.kind,
                    b.remaining,
                    shown,
                    b.priority,
                )
            })
            .collect()
    }

    /// Open holds sorted by (expires_at, id): (id, amount, captured, expires_at).
    fn view_holds(&self) -> Vec<(Vec<u8>, u64, u64, u64)> {
        let mut v: Vec<_> = self
            .holds
            .iter()
            .map(|(id, h)| (id.as_bytes().to_vec(), h.amount, h.captured, h.expires_at))
            .collect();
        v.sort_by(|a, b| (a.3, &a.0).cmp(&(b.3, &b.0)));
        v
    }

    /// Instants at which something happens next (for clock jumps onto boundaries).
    fn event_times(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.holds.values().map(|h| h.expires_at).collect();
        v.extend(
            self.buckets
                .iter()
                .filter(|b| b.remaining > 0 && b.expires_at != NEVER)
                .map(|b| b.expires_at),
        );
        v.extend(self.done.values().map(|(_, f)| f + WINDOW_MS));
        v
    }
}

// ---------------------------------------------------------------------------
// Generated operations (resolved against the model when run)

#[derive(Debug, Clone)]
enum GenExpiry {
    Never,
    Ttl(u64),
    /// now + n, as an absolute EXPIRES
    AtAhead(u64),
    /// an absolute instant that is usually in the past (ERR)
    AtPast(u64),
}

/// Which hold a CAPTURE, COMMIT, RELEASE or EXTEND names.
#[derive(Debug, Clone, Copy)]
enum HoldPick {
    /// The n-th open hold of the account (any id if none is open).
    Open(usize),
    /// Any id of the pool (often closed, expired or unknown).
    Any(usize),
}

#[derive(Debug, Clone)]
enum GenAmount {
    Abs(u64),
    /// quarters of the account's available credits: 1/4 .. 5/4 (over: INSUFFICIENT)
    Available(u64),
}

#[derive(Debug, Clone)]
enum GenTotal {
    Abs(u64),
    /// quarters of the hold's amount: 0, 1/4, ..., 6/4 (over the hold)
    Quarters(u64),
    /// what is captured so far plus n
    CapturedPlus(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Grant {
        acct: usize,
        id: usize,
        amount: u64,
        kind: BucketKind,
        expiry: GenExpiry,
        priority: u8,
    },
    Reserve {
        acct: usize,
        id: usize,
        amount: GenAmount,
        ttl: Option<u64>,
    },
    Capture {
        acct: usize,
        id: HoldPick,
        total: GenTotal,
    },
    Commit {
        acct: usize,
        id: HoldPick,
        total: Option<GenTotal>,
    },
    Release {
        acct: usize,
        id: HoldPick,
    },
    Extend {
        acct: usize,
        id: HoldPick,
        ttl: u64,
    },
    Debit {
        acct: usize,
        id: usize,
        amount: GenAmount,
    },
    /// Re-send an earlier command (index modulo how many were sent), same or other args.
    Retry {
        index: usize,
        mutate: bool,
    },
    Jump(u64),
    /// Jump onto (or one ms before) an upcoming event instant.
    JumpToEvent {
        pick: usize,
        before: bool,
    },
    Sweep,
    Check {
        acct: usize,
    },
}

fn kind() -> impl Strategy<Value = BucketKind> {
    prop_oneof![
        Just(BucketKind::Prepaid),
        Just(BucketKind::Promo),
        Just(BucketKind::Subscription),
        Just(BucketKind::Addon),
        Just(BucketKind::Rollover),
    ]
}

fn priority() -> impl Strategy<Value = u8> {
    prop_oneof![
        12 => prop_oneof![Just(0u8), Just(10), Just(50), Just(90), Just(100)],
        6 => 0u8..=100,
        1 => Just(101u8),
    ]
}

fn expiry() -> impl Strategy<Value = GenExpiry> {
    prop_oneof![
        6 => Just(GenExpiry::Never),
        6 => prop_oneof![Just(1u64), Just(1_000), Just(10_000), Just(30_000), 1u64..200_000]
            .prop_map(GenExpiry::Ttl),
        3 => prop_oneof![1 => Just(0u64), 1 => Just(1), 4 => 1u64..100_000].prop_map(GenExpiry::AtAhead),
        1 => (0u64..2).prop_map(|d| GenExpiry::AtPast(START_MS - d)),
    ]
}

fn amount(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        20 => 0u64..=max,
        2 => Just(0u64),
        1 => Just(MAX_AMOUNT + 1),
    ]
}

fn spend(max: u64) -> impl Strategy<Value = GenAmount> {
    prop_oneof![
        3 => amount(max).prop_map(GenAmount::Abs),
        3 => prop_oneof![Just(4u64), 1u64..=5].prop_map(GenAmount::Available),
    ]
}

/// Mostly the first account, so that one account sees long sequences.
fn account() -> impl Strategy<Value = usize> {
    prop_oneof![5 => Just(0usize), 2 => Just(1), 1 => Just(2)]
}

fn hold_ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        4 => Just(None),
        12 => prop_oneof![Just(1u64), Just(500), Just(5_000), Just(30_000), 1u64..100_000].prop_map(Some),
        1 => prop_oneof![Just(0u64), Just(86_400_001)].prop_map(Some),
    ]
}

fn total() -> impl Strategy<Value = GenTotal> {
    prop_oneof![
        4 => (0u64..=6).prop_map(GenTotal::Quarters),
        2 => (0u64..150).prop_map(GenTotal::Abs),
        2 => (0u64..40).prop_map(GenTotal::CapturedPlus),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let a = || account();
    let h = 0..HOLD_IDS.len();
    let pick = || {
        prop_oneof![
            5 => any::<usize>().prop_map(HoldPick::Open),
            1 => (0..HOLD_IDS.len()).prop_map(HoldPick::Any),
        ]
    };
    prop_oneof![
        6 => (a(), 0..GRANT_IDS.len(), amount(300), kind(), expiry(), priority()).prop_map(
            |(acct, id, amount, kind, expiry, priority)| Op::Grant { acct, id, amount, kind, expiry, priority }
        ),
        7 => (a(), h, spend(150), hold_ttl())
            .prop_map(|(acct, id, amount, ttl)| Op::Reserve { acct, id, amount, ttl }),
        4 => (a(), pick(), total()).prop_map(|(acct, id, total)| Op::Capture { acct, id, total }),
        5 => (a(), pick(), proptest::option::weighted(0.7, total()))
            .prop_map(|(acct, id, total)| Op::Commit { acct, id, total }),
        3 => (a(), pick()).prop_map(|(acct, id)| Op::Release { acct, id }),
        2 => (a(), pick(), prop_oneof![1 => Just(0u64), 2 => Just(1), 8 => 1u64..60_000, 1 => Just(86_400_001)])
            .prop_map(|(acct, id, ttl)| Op::Extend { acct, id, ttl }),
        4 => (a(), 0..DEBIT_IDS.len(), spend(120))
            .prop_map(|(acct, id, amount)| Op::Debit { acct, id, amount }),
        5 => (any::<usize>(), any::<bool>()).prop_map(|(index, mutate)| Op::Retry { index, mutate }),
        5 => prop_oneof![
            6 => 1u64..1_000,
            3 => 1_000u64..30_000,
            1 => 50_000u64..400_000,
        ]
        .prop_map(Op::Jump),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, before)| Op::JumpToEvent { pick, before }),
        1 => Just(Op::Sweep),
        2 => a().prop_map(|acct| Op::Check { acct }),
    ]
}

// ---------------------------------------------------------------------------
// The harness

struct Harness {
    engine: Engine,
    clock: Arc<TestClock>,
    journal: Arc<MemoryJournal>,
    model: Vec<MAccount>,
    sent: Vec<Cmd>,
    log: Vec<String>,
}

fn code(e: &EngineError) -> MErr {
    match e {
        _ if e.code == Code::Err => MErr::Err,
        _ if e.code == Code::Insufficient => {
            let (need, available) = e.shortfall().expect("INSUFFICIENT has its numbers");
            MErr::Insufficient { need, available }
        }
        _ if e.code == Code::NotFound => MErr::NotFound,
        _ if e.code == Code::Conflict => MErr::Conflict,
        _ if e.code == Code::Expired => MErr::Expired,
        other => panic!("unexpected error {other}"),
    }
}

fn new_engine(clock: &Arc<TestClock>, journal: Arc<MemoryJournal>) -> Engine {
    Engine::new(config(), clock.clone() as Arc<dyn Clock>, journal)
}

impl Harness {
    fn new() -> Self {
        let clock = Arc::new(TestClock::new(START_MS));
        let journal = Arc::new(MemoryJournal::keeping());
        Harness {
            engine: new_engine(&clock, journal.clone()),
            clock,
            journal,
            model: vec![MAccount::default(); ACCOUNTS.len()],
            sent: vec![],
            log: vec![],
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The model is brought up to now before anything is resolved against it.
    fn resolve_hold(&self, acct: usize, pick: HoldPick) -> usize {
        let open = &self.model[acct].holds;
        let name = match pick {
            HoldPick::Open(n) if !open.is_empty() => *open.keys().nth(n % open.len()).unwrap(),
            HoldPick::Open(n) | HoldPick::Any(n) => HOLD_IDS[n % HOLD_IDS.len()],
        };
        HOLD_IDS.iter().position(|h| *h == name).unwrap()
    }

    fn resolve_total(&self, acct: usize, id: usize, t: &GenTotal) -> u64 {
        let hold = self.model[acct].holds.get(HOLD_IDS[id]);
        match *t {
            GenTotal::Abs(n) => n,
            GenTotal::Quarters(q) => hold.map_or(q * 20, |h| h.amount * q / 4),
            GenTotal::CapturedPlus(n) => hold.map_or(n, |h| h.captured + n),
        }
    }

    fn resolve_amount(&self, acct: usize, a: &GenAmount) -> u64 {
        match *a {
            GenAmount::Abs(n) => n,
            GenAmount::Available(q) => (self.model[acct].bal.available * q).div_ceil(4),
        }
    }

    fn resolve(&self, op: &Op) -> Option<Cmd> {
        let now = self.now();
        Some(match op {
            Op::Grant {
                acct,
                id,
                amount,
                kind,
                expiry,
                priority,
            } => Cmd::Grant {
                acct: *acct,
                id: *id,
                amount: *amount,
                kind: *kind,
                expiry: match *expiry {
                    GenExpiry::Never => Expiry::Never,
                    GenExpiry::Ttl(t) => Expiry::Ttl(t),
                    GenExpiry::AtAhead(d) => Expiry::At(now + d),
                    GenExpiry::AtPast(at) => Expiry::At(at),
                },
                priority: *priority,
            },
            Op::Reserve {
                acct,
                id,
                amount,
                ttl,
            } => Cmd::Reserve {
                acct: *acct,
                id: *id,
                amount: self.resolve_amount(*acct, amount),
                ttl: *ttl,
            },
            Op::Capture { acct, id, total } => {
                let id = self.resolve_hold(*acct, *id);
                Cmd::Capture {
                    acct: *acct,
                    id,
                    total: self.resolve_total(*acct, id, total),
                }
            }
            Op::Commit { acct, id, total } => {
                let id = self.resolve_hold(*acct, *id);
                Cmd::Commit {
                    acct: *acct,
                    id,
                    total: total.as_ref().map(|t| self.resolve_total(*acct, id, t)),
                }
            }
            Op::Release { acct, id } => Cmd::Release {
                acct: *acct,
                id: self.resolve_hold(*acct, *id),
            },
            Op::Extend { acct, id, ttl } => Cmd::Extend {
                acct: *acct,
                id: self.resolve_hold(*acct, *id),
                ttl: *ttl,
            },
            Op::Debit { acct, id, amount } => Cmd::Debit {
                acct: *acct,
                id: *id,
                amount: self.resolve_amount(*acct, amount),
            },
            Op::Retry { index, mutate } => {
                if self.sent.is_empty() {
                    return None;
                }
                let c = self.sent[index % self.sent.len()];
                if *mutate {
                    c.mutated()
                } else {
                    c
                }
            }
            _ => return None,
        })
    }

    fn advance_model(&mut self) {
        let now = self.now();
        for m in self.model.iter_mut() {
            m.advance(now);
        }
    }

    fn send(&mut self, cmd: Cmd) -> Result<(), TestCaseError> {
        let now = self.now();
        let a = cmd.acct();
        self.model[a].advance(now);
        let expected = self.model[a].apply(&cmd, now);
        if matches!(expected, Ok((_, true))) {
            self.model[a].exists = true;
        }
        let got = self
            .engine
            .execute(ACCOUNTS[a].as_bytes(), &cmd.mutation())
            .map(|o| (o.reply, o.changed))
            .map_err(|e| {
                if let Some((need, available)) = e.shortfall() {
                    assert_eq!(
                        e.to_string(),
                        format!("INSUFFICIENT need {need} available {available}")
                    );
                }
                code(&e)
            });
        self.log
            .push(format!("@{} {cmd:?} -> {got:?}", now - START_MS));
        prop_assert_eq!(&got, &expected, "reply of {:?} at +{}", cmd, now - START_MS);
        self.sent.push(cmd);
        self.check_account(a)
    }

    fn check_account(&mut self, a: usize) -> Result<(), TestCaseError> {
        let now = self.now();
        self.model[a].advance(now);
        let m = &self.model[a];
        let bal = self.engine.balance(ACCOUNTS[a].as_bytes());
        prop_assert_eq!(
            bal.granted,
            bal.available + bal.held + bal.spent + bal.expired,
            "conservation on {}",
            ACCOUNTS[a]
        );
        prop_assert_eq!(bal, m.bal, "BALANCE of {}", ACCOUNTS[a]);
        let view = self.engine.account(ACCOUNTS[a].as_bytes());
        prop_assert_eq!(view.balance, bal);
        let buckets: Vec<_> = view
            .buckets
            .iter()
            .map(|b| {
                (
                    b.id.to_vec(),
                    b.kind,
                    b.remaining,
                    b.shown_expires_at(),
                    b.priority,
                )
            })
            .collect();
        prop_assert_eq!(buckets, m.view_buckets(), "buckets of {}", ACCOUNTS[a]);
        let holds: Vec<_> = view
            .holds
            .iter()
            .map(|h| (h.id.to_vec(), h.amount, h.captured, h.expires_at_ms))
            .collect();
        prop_assert_eq!(holds, m.view_holds(), "holds of {}", ACCOUNTS[a]);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if !matches!(op, Op::Check { .. }) {
            self.log.push(format!("@{} {op:?}", self.now() - START_MS));
        }
        match op {
            Op::Jump(ms) => {
                self.clock.advance(*ms);
            }
            Op::JumpToEvent { pick, before } => {
                let now = self.now();
                let mut times: Vec<u64> = self
                    .model
                    .iter()
                    .flat_map(|m| m.event_times())
                    .filter(|&t| t > now + u64::from(*before))
                    .collect();
                times.sort_unstable();
                times.dedup();
                if !times.is_empty() {
                    // One of the next few events (far ones, like id pruning, come up too).
                    let t = times[pick % times.len().min(4)] - u64::from(*before);
                    self.clock.set(t).expect("forward");
                }
            }
            Op::Sweep => {
                self.engine.sweep(usize::MAX);
                // Every account is now brought up to date by the sweeper alone.
                self.advance_model();
                let stats = self.engine.stats();
                let open: usize = self.model.iter().map(|m| m.holds.len()).sum();
                let expiries: u64 = self.model.iter().map(|m| m.hold_expiries).sum();
                prop_assert_eq!(stats.open_holds, open as u64, "open holds after sweep");
                prop_assert_eq!(stats.hold_expiries, expiries, "hold expiries after sweep");
            }
            Op::Check { acct } => self.check_account(*acct)?,
            _ => {
                // Resolving looks at the model's state now (advancing is idempotent).
                self.advance_model();
                if let Some(cmd) = self.resolve(op) {
                    self.send(cmd)?;
                }
            }
        }
        let exists = self.model.iter().filter(|m| m.exists).count() as u64;
        prop_assert_eq!(self.engine.stats().accounts, exists, "accounts");
        Ok(())
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        (0..self.engine.shard_count())
            .map(|i| {
                let mut buf = vec![];
                self.engine.snapshot_shard(i, &mut buf);
                buf
            })
            .collect()
    }

    /// The recovered engine must show exactly what the original shows.
    fn same_as(&self, other: &Engine, what: &str) -> Result<(), TestCaseError> {
        prop_assert_eq!(other.check_all(), Ok(()));
        prop_assert_eq!(
            other.stats().accounts,
            self.engine.stats().accounts,
            "{}: accounts",
            what
        );
        for acct in ACCOUNTS {
            let id = acct.as_bytes();
            prop_assert_eq!(
                other.balance(id),
                self.engine.balance(id),
                "{}: BALANCE {}",
                what,
                acct
            );
            prop_assert_eq!(
                other.account(id),
                self.engine.account(id),
                "{}: ACCOUNT {}",
                what,
                acct
            );
            prop_assert_eq!(
                other.history(id, 10_000),
                self.engine.history(id, 10_000),
                "{}: HISTORY {}",
                what,
                acct
            );
        }
        Ok(())
    }

    fn recovery(&self, mid_snapshot: &[Vec<u8>]) -> Result<(), TestCaseError> {
        let records = self.journal.records();
        let fresh = || {
            let clock = Arc::new(TestClock::new(self.now()));
            Engine::new(
                config(),
                clock as Arc<dyn Clock>,
                Arc::new(MemoryJournal::discarding()),
            )
        };

        // 1. The journal alone.
        let replayed = fresh();
        for (seq, payload) in &records {
            prop_assert!(
                replayed.replay(*seq, payload).is_ok(),
                "replay of record {}",
                seq
            );
        }
        self.same_as(&replayed, "journal replay")?;

        // 2. A snapshot of the final state.
        let restored = fresh();
        for part in self.snapshot() {
            prop_assert!(restored.restore_shard(&part).is_ok());
        }
        self.same_as(&restored, "snapshot")?;

        // 3. A fuzzy mid-run snapshot, then the whole journal (records the
        //    snapshot already reflects are skipped).
        let combined = fresh();
        for part in mid_snapshot {
            prop_assert!(combined.restore_shard(part).is_ok());
        }
        for (seq, payload) in &records {
            let r = combined.replay(*seq, payload);
            prop_assert!(
                r.is_ok(),
                "replay after snapshot of record {}: {:?}",
                seq,
                r
            );
        }
        self.same_as(&combined, "snapshot + journal")?;
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    let mut mid = vec![];
    for (i, op) in ops.iter().enumerate() {
        if i == ops.len() / 2 {
            mid = h.snapshot();
        }
        let r = h.step(op);
        if r.is_err() {
            eprintln!("--- trace ---");
            for l in &h.log {
                eprintln!("{l}");
            }
            eprintln!("failed at step {i}: {op:?}");
        }
        r?;
    }
    h.clock.advance(1);
    for a in 0..ACCOUNTS.len() {
        h.check_account(a)?;
    }
    h.recovery(&mid)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1_000,
        max_shrink_iters: 4_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops)?;
    }
}
