//! The engine and the reference model side by side, for `members_model.rs`:
//! a command goes to both and the replies must agree; [`Harness::check`]
//! compares everything a client can read; a restart rebuilds the engine as
//! a restarted server does.

pub mod reference;

use creditd_engine::account::Cap;
use creditd_engine::account::Per;
use creditd_engine::bucket::BucketKind;
use creditd_engine::clock::{Clock, TestClock};
use creditd_engine::config::Config;
use creditd_engine::error::{Code, Detail};
use creditd_engine::events::Event;
use creditd_engine::id::Bytes;
use creditd_engine::{Charge, Engine, EngineError, Expiry, MemoryJournal, Mutation, Usage};
use proptest::prelude::*;
use reference::{Model, RETENTION_MS};
use std::sync::Arc;

/// 2023-11-14T22:13:20Z.
pub const START_MS: u64 = 1_700_000_000_000;

/// The built-in config: its plans, default TTL and event bounds.
fn config() -> Config {
    Config::builtin()
}

pub const ACCOUNTS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];
pub const MEMBERS: [&str; 4] = ["m0", "m1", "m2", "m3"];

// ---------------------------------------------------------------------------
// Commands, replies, events: what the engine and the model are compared on

/// A command to one account, as sent (ids resolved, amounts absolute).
#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    Grant {
        id: String,
        amount: u64,
        ttl: Option<u64>,
    },
    Reserve {
        id: String,
        amount: u64,
        ttl: Option<u64>,
        member: Option<usize>,
    },
    Capture {
        id: String,
        total: u64,
    },
    Commit {
        id: String,
        total: Option<u64>,
    },
    Release {
        id: String,
    },
    Debit {
        id: String,
        amount: u64,
        member: Option<usize>,
    },
    Limit {
        member: usize,
        cap: Option<(u64, Per)>,
    },
    Alert {
        at: u64,
        remove: bool,
    },
    /// `PLAN account name` (a monthly plan: its name and allowance), or `PLAN account NONE`.
    Plan(Option<(&'static str, u64)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MErr {
    Insufficient { need: u64, available: u64 },
    Limited { need: u64, remaining: u64 },
}

/// The reply and whether it changed anything (a repeat does not).
pub type MResult = Result<(u64, bool), MErr>;

/// One event as EVENTS lists it: seq, at, type, account, member ('' if
/// none), value, threshold (0 if none).
pub type Row = (u64, u64, &'static str, String, String, u64, u64);

/// One member as MEMBERS lists it: member, limit, per, used, held, period_end.
pub type MemberRow = (String, Option<u64>, Per, u64, u64, u64);

pub fn mutation(cmd: &Cmd) -> Mutation<'_> {
    let member = |m: Option<usize>| m.map(|m| Bytes(MEMBERS[m].as_bytes()));
    fn id(id: &str) -> Bytes<'_> {
        Bytes(id.as_bytes())
    }
    match cmd {
        Cmd::Grant { id: g, amount, ttl } => Mutation::Grant {
            grant_id: id(g),
            amount: *amount,
            kind: BucketKind::Prepaid,
            expiry: ttl.map_or(Expiry::Never, Expiry::Ttl),
            priority: 50,
        },
        Cmd::Reserve {
            id: h,
            amount,
            ttl,
            member: m,
        } => Mutation::Reserve {
            hold_id: id(h),
            charge: Charge::Amount(*amount),
            ttl_ms: *ttl,
            member: member(*m),
        },
        Cmd::Capture { id: h, total } => Mutation::Capture {
            hold_id: id(h),
            usage: Usage::Total(*total),
        },
        Cmd::Commit { id: h, total } => Mutation::Commit {
            hold_id: id(h),
            usage: total.map(Usage::Total),
        },
        Cmd::Release { id: h } => Mutation::Release { hold_id: id(h) },
        Cmd::Debit {
            id: d,
            amount,
            member: m,
        } => Mutation::Debit {
            debit_id: id(d),
            charge: Charge::Amount(*amount),
            member: member(*m),
        },
        Cmd::Limit { member: m, cap } => Mutation::Limit {
            member: Bytes(MEMBERS[*m].as_bytes()),
            cap: cap.map(|(limit, per)| Cap { limit, per }),
        },
        Cmd::Alert { at, remove } => Mutation::Alert {
            threshold: *at,
            remove: *remove,
        },
        Cmd::Plan(Some((plan, _))) => Mutation::Subscribe {
            plan,
            seats: None,
            anchor_ms: None,
        },
        Cmd::Plan(None) => Mutation::Unsubscribe,
    }
}

/// A reply as the model states it: a refusal it knows, or anything else as text.
pub type Reply = Result<(u64, bool), Result<MErr, String>>;

fn refusal(e: &EngineError) -> Result<MErr, String> {
    match (e.code, &e.detail) {
        (Code::Insufficient, &Detail::Shortfall { need, available }) => {
            Ok(MErr::Insufficient { need, available })
        }
        (Code::Limited, &Detail::OverCap { need, remaining })
            if e.to_string() == format!("LIMITED need {need} remaining {remaining}") =>
        {
            Ok(MErr::Limited { need, remaining })
        }
        _ => Err(e.to_string()),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("the test's ids are text")
}

fn row(e: &Event) -> Row {
    let member = e.member.as_deref().map_or(String::new(), text);
    let (kind, account) = (e.kind.as_str(), text(&e.account));
    (e.seq, e.at_ms, kind, account, member, e.value, e.threshold)
}

struct Snapshot {
    /// The last journal record the snapshot reflects.
    seq: u64,
    shards: Vec<Vec<u8>>,
    events: Vec<u8>,
}

pub struct Harness {
    pub clock: Arc<TestClock>,
    pub engine: Engine,
    journal: Arc<MemoryJournal>,
    pub model: Model,
    snapshot: Option<Snapshot>,
    next_id: u64,
    /// What happened, printed when a case fails.
    pub log: Vec<String>,
}

impl Harness {
    pub fn new(start_ms: u64) -> Harness {
        let clock = Arc::new(TestClock::new(start_ms));
        let journal = Arc::new(MemoryJournal::keeping());
        Harness {
            engine: Engine::new(config(), clock.clone() as Arc<dyn Clock>, journal.clone()),
            clock,
            journal,
            model: Model::default(),
            snapshot: None,
            next_id: 0,
            log: vec![],
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A new grant, hold or debit id.
    pub fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    /// `PLAN account name`, with the plan's allowance for the model.
    pub fn plan(name: &'static str) -> Cmd {
        let cfg = config();
        let terms = cfg.plan(name).expect("a plan of the built-in config");
        assert!(
            !terms.upgrade_rollover,
            "the model expires old plan credits"
        );
        Cmd::Plan(Some((name, terms.credits_per_seat)))
    }

    /// The member a command charges (asked before the model applies it).
    fn charged(&self, a: usize, cmd: &Cmd) -> Option<usize> {
        match cmd {
            Cmd::Reserve { member, .. } | Cmd::Debit { member, .. } => *member,
            Cmd::Capture { id, .. } | Cmd::Commit { id, .. } => {
                self.model.accounts[a].holds.get(id)?.member
            }
            _ => None,
        }
    }

    /// A member's limit and used + held, as the engine shows them.
    fn usage(&self, a: usize, m: usize) -> (Option<u64>, u64) {
        let (rows, _) = self.engine.members(ACCOUNTS[a].as_bytes());
        let row = rows.iter().find(|r| &*r.member == MEMBERS[m].as_bytes());
        row.map_or((None, 0), |r| (r.limit, r.used + r.held))
    }

    /// Sends one command to account `a` of both; the replies must agree.
    pub fn send(&mut self, a: usize, cmd: Cmd) -> Result<Reply, TestCaseError> {
        let now = self.now();
        self.model.advance(now);
        let member = self.charged(a, &cmd);
        let before = member.map(|m| self.usage(a, m).1);
        let expected: Reply = self.model.apply(a, &cmd, now).map_err(Ok);
        let got: Reply = self
            .engine
            .execute(ACCOUNTS[a].as_bytes(), &mutation(&cmd))
            .map(|o| (o.reply, o.changed))
            .map_err(|e| refusal(&e));
        let at = now - START_MS;
        self.log
            .push(format!("@{at} {} {cmd:?} -> {got:?}", ACCOUNTS[a]));
        prop_assert_eq!(&got, &expected, "reply of {:?} to {}", cmd, ACCOUNTS[a]);
        // Whatever the model says: an accepted charge never takes a member
        // past its cap (unless it was past it already and did not grow).
        if let (Ok(_), Some(m), Some(before)) = (&got, member, before) {
            if let (Some(limit), after) = self.usage(a, m) {
                let most = limit.max(before);
                prop_assert!(after <= most, "{:?}: {} over {}", cmd, after, limit);
            }
        }
        Ok(got)
    }

    /// Sends a command (scenarios), then checks everything.
    pub fn run(&mut self, a: usize, cmd: Cmd) -> Reply {
        let reply = self.send(a, cmd).unwrap();
        self.check().unwrap();
        reply
    }

    pub fn members(&self, a: usize) -> Vec<MemberRow> {
        let (rows, _) = self.engine.members(ACCOUNTS[a].as_bytes());
        let shown = |r: &creditd_engine::account::MemberView| {
            let id = text(&r.member);
            (id, r.limit, r.per, r.used, r.held, r.period_end_ms)
        };
        rows.iter().map(shown).collect()
    }

    pub fn events(&self) -> Vec<Row> {
        let (events, _) = self.engine.events_after(0, 10_000);
        events.iter().map(row).collect()
    }

    /// Everything a client can read agrees with the model.
    pub fn check(&mut self) -> Result<(), TestCaseError> {
        let now = self.now();
        self.model.advance(now);
        for (a, name) in ACCOUNTS.iter().enumerate() {
            let bal = self.engine.balance(name.as_bytes());
            let sum = bal.available + bal.held + bal.spent + bal.expired;
            prop_assert_eq!(bal.granted, sum, "conservation on {}", name);
            prop_assert_eq!(bal, self.model.accounts[a].bal, "BALANCE {}", name);
            let want = self.model.members_view(a, now);
            prop_assert_eq!(self.members(a), want, "MEMBERS {}", name);
        }
        // The log keeps a tail of the model's: at least every event younger
        // than the retention.
        let (got, want) = (self.events(), &self.model.events);
        let young = want.iter().filter(|e| e.1 + RETENTION_MS > now).count();
        let kept = young <= got.len() && got.len() <= want.len();
        prop_assert!(kept, "EVENTS {:?}, the model's {:?}", got, want);
        prop_assert_eq!(&got[..], &want[want.len() - got.len()..], "EVENTS");
        let next_seq = self.engine.event_stats().1;
        prop_assert_eq!(next_seq, self.model.next_event_seq(), "next event number");
        Ok(())
    }

    pub fn take_snapshot(&mut self) {
        let seq = self.journal.records().last().map_or(0, |r| r.0);
        let shards = (0..self.engine.shard_count())
            .map(|i| {
                let mut part = vec![];
                self.engine.snapshot_shard(i, &mut part);
                part
            })
            .collect();
        // After every shard, as the server does.
        let mut events = vec![];
        self.engine.snapshot_events(&mut events);
        self.snapshot = Some(Snapshot {
            seq,
            shards,
            events,
        });
    }

    /// A fresh engine recovers from the journal, or from the snapshot plus
    /// the records after it (or all of them: those it reflects are skipped).
    pub fn restart(&mut self, from_snapshot: bool, replay_all: bool) -> Result<(), TestCaseError> {
        let records = self.journal.records();
        let journal = Arc::new(MemoryJournal::continuing(records.clone()));
        let clock = self.clock.clone() as Arc<dyn Clock>;
        let engine = Engine::new(config(), clock, journal.clone());
        let fail = |e: String| TestCaseError::fail(format!("recovery refused: {e}"));
        let mut after = 0;
        if let (true, Some(s)) = (from_snapshot, &self.snapshot) {
            for part in &s.shards {
                engine.restore_shard(part).map_err(fail)?;
            }
            engine.restore_events(&s.events).map_err(fail)?;
            after = if replay_all { 0 } else { s.seq };
        }
        for (seq, payload) in records.iter().filter(|r| r.0 > after) {
            engine.replay(*seq, payload).map_err(fail)?;
        }
        engine.check_all().map_err(fail)?;
        self.engine = engine;
        self.journal = journal;
        Ok(())
    }
}
