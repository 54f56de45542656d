//! The members traffic against a small in-memory server with the contract's
//! rules (pool first, then the cap; thresholds looked at after each change).

use super::traffic::MemberTraffic;
use super::{CapPer, MembersCfg};
use crate::ops::{Op, OpId};
use crate::resp::Reply;
use crate::workload::{KeyDist, ReplyClass};
use std::collections::HashMap;
use std::time::Instant;

fn cfg() -> MembersCfg {
    MembersCfg {
        members: 4,
        cap: 20_000,
        per: CapPer::Day,
        pool: 10_000,
        thresholds: MembersCfg::default_thresholds(10_000),
        accounts: 6,
        connections: 3,
        keys: KeyDist::Uniform,
        zipf_s: 0.99,
        period_ends: None,
    }
}

/// One account of the fake server.
struct Acct {
    available: u64,
    used: HashMap<u32, u64>,
    held: HashMap<u32, u64>,
    armed: Vec<bool>,
    low: Vec<Vec<u64>>,
}

struct Fake {
    cfg: MembersCfg,
    accts: HashMap<u32, Acct>,
    holds: HashMap<OpId, (u32, u64)>,
    /// When set, the server lets one over-cap charge pass (a broken server).
    leak_cap: bool,
}

impl Fake {
    fn new(cfg: MembersCfg) -> Self {
        let accts = (0..cfg.accounts)
            .map(|a| {
                let acct = Acct {
                    available: cfg.pool,
                    used: HashMap::new(),
                    held: HashMap::new(),
                    armed: vec![true; cfg.thresholds.len()],
                    low: vec![Vec::new(); cfg.thresholds.len()],
                };
                (a, acct)
            })
            .collect();
        Fake {
            cfg,
            accts,
            holds: HashMap::new(),
            leak_cap: false,
        }
    }

    fn charge(&mut self, acct: u32, m: u32, n: u64) -> Result<(), Reply> {
        let cap = self.cfg.cap;
        let a = self.accts.get_mut(&acct).unwrap();
        if n > a.available {
            return Err(Reply::Error(format!(
                "INSUFFICIENT need {n} available {}",
                a.available
            )));
        }
        let (u, h) = (
            a.used.get(&m).copied().unwrap_or(0),
            a.held.get(&m).copied().unwrap_or(0),
        );
        if u + h + n > cap && !std::mem::take(&mut self.leak_cap) {
            return Err(Reply::Error(format!(
                "LIMITED need {n} remaining {}",
                cap.saturating_sub(u + h)
            )));
        }
        Ok(())
    }

    fn changed(&mut self, acct: u32) {
        let a = self.accts.get_mut(&acct).unwrap();
        for (i, &t) in self.cfg.thresholds.iter().enumerate() {
            if a.available >= t {
                a.armed[i] = true;
            } else if a.armed[i] {
                a.armed[i] = false;
                a.low[i].push(a.available);
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Reply {
        let reply = match *op {
            Op::Reserve {
                acct,
                hold,
                amount,
                member,
                ..
            } => {
                let m = member.unwrap();
                if let Err(e) = self.charge(acct, m, amount) {
                    return e;
                }
                let a = self.accts.get_mut(&acct).unwrap();
                a.available -= amount;
                *a.held.entry(m).or_default() += amount;
                self.holds.insert(hold, (m, amount));
                Reply::Int(amount as i64)
            }
            Op::Debit {
                acct,
                amount,
                member,
                ..
            } => {
                let m = member.unwrap();
                if let Err(e) = self.charge(acct, m, amount) {
                    return e;
                }
                let a = self.accts.get_mut(&acct).unwrap();
                a.available -= amount;
                *a.used.entry(m).or_default() += amount;
                Reply::Int(amount as i64)
            }
            Op::Commit { acct, hold, total } => {
                let (m, amount) = self.holds[&hold];
                let total = total.unwrap_or(amount);
                let excess = total.saturating_sub(amount);
                if excess > 0 {
                    if let Err(e) = self.charge(acct, m, excess) {
                        return e;
                    }
                }
                self.holds.remove(&hold);
                let a = self.accts.get_mut(&acct).unwrap();
                a.available = a.available + amount - total;
                *a.held.get_mut(&m).unwrap() -= amount;
                *a.used.entry(m).or_default() += total;
                Reply::Int(total as i64)
            }
            Op::Release { acct, hold } => {
                let (m, amount) = self.holds.remove(&hold).unwrap();
                let a = self.accts.get_mut(&acct).unwrap();
                a.available += amount;
                *a.held.get_mut(&m).unwrap() -= amount;
                Reply::Int(amount as i64)
            }
            Op::TopUp { acct, amount, .. } => {
                let a = self.accts.get_mut(&acct).unwrap();
                a.available += amount;
                Reply::Int(a.available as i64)
            }
            ref other => panic!("the members workload does not send {other}"),
        };
        self.changed(op.acct());
        reply
    }
}

/// Runs every connection's traffic for `steps` requests each, pipelined
/// `depth` deep, against `fake`.
fn drive(fake: &mut Fake, steps: usize, depth: usize) -> super::traffic::MembersLedger {
    let now = Instant::now();
    let mut ledger = super::traffic::MembersLedger::default();
    for conn in 0..fake.cfg.connections {
        let mut t = MemberTraffic::new(fake.cfg.clone(), conn, 7);
        for _ in 0..steps / depth {
            let ops: Vec<Op> = (0..depth).map(|_| t.next_op()).collect();
            for op in &ops {
                assert_eq!(op.acct() % fake.cfg.connections, conn, "{op}");
                let reply = fake.apply(op);
                let class = t.on_reply(op, &reply, now);
                assert_ne!(class, ReplyClass::UnexpectedError, "{op}: {reply}");
            }
        }
        ledger.merge(t.into_ledger());
    }
    ledger
}

#[test]
fn the_model_follows_a_correct_server() {
    for depth in [1, 16] {
        let mut fake = Fake::new(cfg());
        let ledger = drive(&mut fake, 20_000, depth);
        let c = &ledger.counts;
        assert_eq!(
            (
                c.wrong_refusals,
                c.cap_exceeded,
                c.pool_overdrawn,
                c.reply_mismatches
            ),
            (0, 0, 0, 0),
            "{:?}",
            c.examples
        );
        assert!(c.limited_refusals > 0 && c.top_ups > 0, "{c:?}");
        assert_eq!(ledger.accounts.len(), 6);
        let mut crossings = 0;
        for (acct, model) in &ledger.accounts {
            let server = &fake.accts[acct];
            assert_eq!(model.available, server.available);
            assert_eq!(model.crossings, server.low, "account {acct}");
            crossings += model.crossings.iter().map(Vec::len).sum::<usize>();
            for (i, m) in model.members.iter().enumerate() {
                let i = i as u32;
                assert_eq!(m.used, server.used.get(&i).copied().unwrap_or(0));
                assert_eq!(m.held, server.held.get(&i).copied().unwrap_or(0));
                assert!(m.peak <= m.cap);
            }
            // The heavy member met its cap.
            assert!(model.members[0].limited.count > 0, "account {acct}");
        }
        assert!(crossings > 100, "{crossings} crossings");
    }
}

#[test]
fn a_charge_past_the_cap_is_caught() {
    let now = Instant::now();
    let mut fake = Fake::new(cfg());
    let mut t = MemberTraffic::new(fake.cfg.clone(), 0, 7);
    for i in 0..20_000 {
        let op = t.next_op();
        if i == 5_000 {
            // From here the server lets the next over-cap charge pass.
            fake.leak_cap = true;
        }
        let reply = fake.apply(&op);
        t.on_reply(&op, &reply, now);
    }
    assert!(!fake.leak_cap, "no charge went over a cap");
    let ledger = t.into_ledger();
    assert_eq!(
        ledger.counts.cap_exceeded, 1,
        "{:?}",
        ledger.counts.examples
    );
    let over = ledger
        .accounts
        .values()
        .flat_map(|a| &a.members)
        .filter(|m| m.peak > m.cap)
        .count();
    assert_eq!(over, 1);
}

#[test]
fn default_thresholds_are_distinct_and_ascending() {
    assert_eq!(
        MembersCfg::default_thresholds(10_000),
        vec![1_000, 2_500, 5_000]
    );
    assert_eq!(MembersCfg::default_thresholds(3), vec![1]);
}
