//! The reference model: members, caps, alerts and events (PROTOCOL.md §9
//! and §10) over a pool of prepaid and plan credits, written from the
//! contract and the members spec, not from the engine.
//!
//! An account keeps its buckets (spent in the contract's order), its holds
//! (with the portions they took, so that credits returned after their
//! bucket ended expire), its members with one counter per period kind, its
//! thresholds and refusal stamps, and a monthly plan. The calendar is its
//! own (days from civil dates), so a wrong month or cycle in the engine
//! shows as a difference.

use super::{Cmd, MErr, MResult, MemberRow, Row, ACCOUNTS, MEMBERS};
use creditd_engine::account::Per;
use creditd_engine::Balance;
use std::collections::BTreeMap;

pub const DAY_MS: u64 = 86_400_000;
/// One `insufficient` per account, one `limited` per account and member, per minute.
pub const REFUSAL_INTERVAL_MS: u64 = 60_000;
/// Events are kept at least this long (the default `event_retention_ms`).
pub const RETENTION_MS: u64 = 7 * DAY_MS;
/// The built-in config's `hold_ttl_ms`.
pub const DEFAULT_TTL_MS: u64 = 900_000;

// ---------------------------------------------------------------------------
// The UTC calendar (proleptic Gregorian, in days since 1970-01-01)

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The first day of the month `k` months after month `m` of year `y`.
fn month_start_day(y: i64, m: i64, k: i64) -> i64 {
    let t = y * 12 + (m - 1) + k;
    days_from_civil(t.div_euclid(12), t.rem_euclid(12) + 1, 1)
}

/// The UTC calendar month around `ms`.
pub fn month_of(ms: u64) -> (u64, u64) {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    let at = |day: i64| day as u64 * DAY_MS;
    (at(month_start_day(y, m, 0)), at(month_start_day(y, m, 1)))
}

/// `anchor` plus `k` calendar months, the day clamped to the month's end.
pub fn add_months(anchor: u64, k: u32) -> u64 {
    let (y, m, d) = civil_from_days((anchor / DAY_MS) as i64);
    let first = month_start_day(y, m, i64::from(k));
    let len = month_start_day(y, m, i64::from(k) + 1) - first;
    (first + d.min(len) - 1) as u64 * DAY_MS + anchor % DAY_MS
}

// ---------------------------------------------------------------------------
// One account

#[derive(Debug, Clone)]
struct Bucket {
    seq: u64,
    remaining: u64,
    expires_at: u64,
    /// A plan's allowance (an upgrade ends it).
    from_plan: bool,
}

#[derive(Debug, Clone)]
pub struct Hold {
    pub amount: u64,
    pub captured: u64,
    /// (bucket seq, credits still held from it), in the order taken.
    portions: Vec<(u64, u64)>,
    expires_at: u64,
    pub member: Option<usize>,
}

impl Hold {
    pub fn held(&self) -> u64 {
        self.portions.iter().map(|p| p.1).sum()
    }
}

#[derive(Debug, Clone, Default)]
struct Member {
    cap: Option<(u64, Per)>,
    /// Per period kind (by `Per as usize`): used in a period, and that period.
    used: [(u64, (u64, u64)); 3],
    held: u64,
    limited_at: Option<u64>,
}

impl Member {
    /// A counter whose period is over starts again from 0.
    fn roll(&mut self, periods: [(u64, u64); 3]) {
        for (u, p) in self.used.iter_mut().zip(periods) {
            if u.1 != p {
                *u = (0, p);
            }
        }
    }

    /// The cap's period kind; `cycle` without a cap.
    fn per(&self) -> Per {
        self.cap.map_or(Per::Cycle, |c| c.1)
    }

    fn used(&self) -> u64 {
        self.used[self.per() as usize].0
    }

    fn remaining(&self) -> Option<u64> {
        let used = self.used() + self.held;
        self.cap.map(|(limit, _)| limit.saturating_sub(used))
    }

    fn add_used(&mut self, n: u64) {
        self.used.iter_mut().for_each(|u| u.0 += n);
    }

    /// Nothing to remember: no cap, nothing held or used, and no `limited`
    /// stamp still silencing the next one.
    fn idle(&self, now: u64) -> bool {
        let stamp_over = self
            .limited_at
            .is_none_or(|at| now >= at + REFUSAL_INTERVAL_MS);
        self.cap.is_none() && self.held == 0 && self.used.iter().all(|u| u.0 == 0) && stamp_over
    }
}

/// A monthly plan, in its `k`-th cycle from its anchor.
#[derive(Debug, Clone)]
struct Sub {
    plan: &'static str,
    credits: u64,
    anchor: u64,
    k: u32,
    cancelled: bool,
}

impl Sub {
    fn start(&self) -> u64 {
        add_months(self.anchor, self.k)
    }

    fn end(&self) -> u64 {
        add_months(self.anchor, self.k + 1)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Account {
    buckets: Vec<Bucket>,
    pub holds: BTreeMap<String, Hold>,
    pub bal: Balance,
    members: BTreeMap<usize, Member>,
    /// Threshold -> armed.
    thresholds: BTreeMap<u64, bool>,
    insufficient_at: Option<u64>,
    sub: Option<Sub>,
    /// Something that leaves history happened (GRANT, RESERVE, PLAN, ...).
    history: bool,
    next_bucket: u64,
}

impl Account {
    /// The account holds some state: a refusal on it raises its event.
    fn exists(&self) -> bool {
        let alerts = !self.thresholds.is_empty() || self.insufficient_at.is_some();
        self.history || !self.members.is_empty() || alerts
    }

    /// The day, the month and the cycle around `now` (in `Per` order): the
    /// plan's cycle if one covers now, else the month.
    fn periods(&self, now: u64) -> [(u64, u64); 3] {
        let day = now - now % DAY_MS;
        let month = month_of(now);
        let cycle = match &self.sub {
            Some(s) if s.start() <= now && now < s.end() => (s.start(), s.end()),
            _ => month,
        };
        [(day, day + DAY_MS), month, cycle]
    }

    fn member(&mut self, m: usize, now: u64) -> Option<&mut Member> {
        let periods = self.periods(now);
        let entry = self.members.get_mut(&m)?;
        entry.roll(periods);
        Some(entry)
    }

    fn member_or_new(&mut self, m: usize, now: u64) -> &mut Member {
        self.members.entry(m).or_default();
        self.member(m, now).unwrap()
    }

    /// The pool first: INSUFFICIENT wins.
    fn check_pool(&self, need: u64) -> Result<(), MErr> {
        let available = self.bal.available;
        match need > available {
            true => Err(MErr::Insufficient { need, available }),
            false => Ok(()),
        }
    }

    fn check_member(&mut self, m: usize, need: u64, now: u64) -> Result<(), MErr> {
        match self.member(m, now).and_then(|e| e.remaining()) {
            Some(remaining) if need > remaining => Err(MErr::Limited { need, remaining }),
            _ => Ok(()),
        }
    }

    fn add_bucket(&mut self, amount: u64, expires_at: u64, from_plan: bool) {
        self.next_bucket += 1;
        let seq = self.next_bucket;
        self.buckets.push(Bucket {
            seq,
            remaining: amount,
            expires_at,
            from_plan,
        });
        self.bal.available += amount;
        self.bal.granted += amount;
    }

    /// Takes `amount` of available credits in spending order (every bucket
    /// has the default priority: soonest expiry, then oldest).
    fn take(&mut self, amount: u64) -> Vec<(u64, u64)> {
        self.buckets.sort_by_key(|b| (b.expires_at, b.seq));
        let mut need = amount;
        let mut portions = vec![];
        for b in self.buckets.iter_mut().filter(|b| b.remaining > 0) {
            let t = need.min(b.remaining);
            b.remaining -= t;
            need -= t;
            portions.push((b.seq, t));
        }
        assert_eq!(need, 0, "the model checked available");
        self.bal.available -= amount;
        portions.retain(|p| p.1 > 0);
        portions
    }

    /// Returns held portions at `at`: to live buckets, else to expired.
    fn give_back(&mut self, portions: &[(u64, u64)], at: u64) -> u64 {
        let mut returned = 0;
        for &(seq, n) in portions {
            self.bal.held -= n;
            let b = self.buckets.iter_mut().find(|b| b.seq == seq).unwrap();
            if at < b.expires_at {
                b.remaining += n;
                self.bal.available += n;
                returned += n;
            } else {
                self.bal.expired += n;
            }
        }
        returned
    }

    /// Applies every time-driven event up to `now`, in time order: holds
    /// expire before buckets and renewals of the same instant.
    fn advance(&mut self, now: u64) {
        loop {
            let hold = self
                .holds
                .iter()
                .map(|(id, h)| (h.expires_at, id.clone()))
                .min();
            let t_hold = hold.as_ref().map_or(u64::MAX, |h| h.0);
            let live = self.buckets.iter().filter(|b| b.remaining > 0);
            let t_bucket = live.map(|b| b.expires_at).min().unwrap_or(u64::MAX);
            let t_other = t_bucket.min(self.sub.as_ref().map_or(u64::MAX, Sub::end));
            let t = t_hold.min(t_other);
            if t > now {
                return;
            }
            if t_hold <= t_other {
                let h = self.holds.remove(&hold.unwrap().1).unwrap();
                if let Some(m) = h.member {
                    self.member(m, t).unwrap().held -= h.held();
                }
                self.give_back(&h.portions, t);
                continue;
            }
            for b in self.buckets.iter_mut().filter(|b| b.expires_at <= t) {
                self.bal.available -= b.remaining;
                self.bal.expired += b.remaining;
                b.remaining = 0;
            }
            let Some(s) = self.sub.as_mut().filter(|s| s.end() <= t) else {
                continue;
            };
            if s.cancelled {
                self.sub = None;
            } else {
                s.k += 1;
                let (credits, end) = (s.credits, s.end());
                self.add_bucket(credits, end, true);
            }
        }
    }

    /// Settles `delta` more credits of a hold: from the hold, the excess
    /// from available within the pool, then within the member's cap.
    /// Returns what it took from the hold.
    fn settle(&mut self, h: &mut Hold, delta: u64, now: u64) -> Result<u64, MErr> {
        let from_hold = delta.min(h.held());
        let excess = delta - from_hold;
        self.check_pool(excess)?;
        if let (Some(m), true) = (h.member, excess > 0) {
            self.check_member(m, excess, now)?;
        }
        let mut need = from_hold;
        for p in h.portions.iter_mut() {
            let t = need.min(p.1);
            p.1 -= t;
            need -= t;
        }
        h.portions.retain(|p| p.1 > 0);
        self.bal.held -= from_hold;
        self.take(excess);
        self.bal.spent += delta;
        Ok(from_hold)
    }

    fn subscribe(&mut self, plan: &'static str, credits: u64, now: u64) -> MResult {
        if let Some(s) = self.sub.as_mut() {
            match (s.cancelled, s.plan == plan) {
                (true, true) => {
                    s.cancelled = false;
                    return Ok((self.bal.available, true));
                }
                (true, false) => self.sub = None,
                (false, true) => return Ok((self.bal.available, false)),
                // An upgrade: the old plan's allowance ends now (the
                // built-in plans used here do not roll over).
                (false, false) => {
                    for b in self
                        .buckets
                        .iter_mut()
                        .filter(|b| b.from_plan && now < b.expires_at)
                    {
                        self.bal.available -= b.remaining;
                        self.bal.expired += b.remaining;
                        b.remaining = 0;
                        b.expires_at = now;
                    }
                }
            }
        }
        let (anchor, k, cancelled) = (now, 0, false);
        self.sub = Some(Sub {
            plan,
            credits,
            anchor,
            k,
            cancelled,
        });
        let end = add_months(now, 1);
        self.add_bucket(credits, end, true);
        Ok((self.bal.available, true))
    }

    fn apply(&mut self, cmd: &Cmd, now: u64) -> MResult {
        let done = match cmd {
            Cmd::Grant { amount, ttl, .. } => {
                self.add_bucket(*amount, ttl.map_or(u64::MAX, |t| now + t), false);
                self.bal.available
            }
            &Cmd::Reserve {
                ref id,
                amount,
                ttl,
                member,
            } => {
                self.check_pool(amount)?;
                if let Some(m) = member {
                    self.check_member(m, amount, now)?;
                    self.member_or_new(m, now).held += amount;
                }
                let portions = self.take(amount);
                self.bal.held += amount;
                let expires_at = now + ttl.unwrap_or(DEFAULT_TTL_MS);
                let hold = Hold {
                    amount,
                    captured: 0,
                    portions,
                    expires_at,
                    member,
                };
                self.holds.insert(id.clone(), hold);
                amount
            }
            &Cmd::Capture { ref id, total } => {
                let mut h = self.holds.remove(id).expect("an open hold");
                let delta = total.saturating_sub(h.captured);
                let settled = match delta {
                    0 => Ok(0),
                    _ => self.settle(&mut h, delta, now),
                };
                if let Ok(from_hold) = settled {
                    if let Some(m) = h.member {
                        let e = self.member(m, now).unwrap();
                        e.add_used(delta);
                        e.held -= from_hold;
                    }
                    h.captured += delta;
                }
                let captured = h.captured;
                self.holds.insert(id.clone(), h);
                settled?;
                if delta == 0 {
                    return Ok((captured, false));
                }
                captured
            }
            &Cmd::Commit { ref id, total } => {
                let mut h = self.holds.remove(id).expect("an open hold");
                let final_total = total.unwrap_or(h.amount).max(h.captured);
                let delta = final_total - h.captured;
                let held = h.held();
                if let Err(e) = self.settle(&mut h, delta, now) {
                    self.holds.insert(id.clone(), h);
                    return Err(e);
                }
                if let Some(m) = h.member {
                    let e = self.member(m, now).unwrap();
                    e.add_used(delta);
                    e.held -= held;
                }
                self.give_back(&h.portions, now);
                final_total
            }
            Cmd::Release { id } => {
                let h = self.holds.remove(id).expect("an open hold");
                if let Some(m) = h.member {
                    self.member(m, now).unwrap().held -= h.held();
                }
                self.give_back(&h.portions, now)
            }
            &Cmd::Debit { amount, member, .. } => {
                self.check_pool(amount)?;
                if let Some(m) = member {
                    self.check_member(m, amount, now)?;
                    self.member_or_new(m, now).add_used(amount);
                }
                self.take(amount);
                self.bal.spent += amount;
                amount
            }
            &Cmd::Limit { member, cap } => {
                if cap.is_none() && !self.members.contains_key(&member) {
                    // No cap to remove: a no-op, like a repeat.
                    return Ok((0, false));
                }
                let e = self.member_or_new(member, now);
                e.cap = cap;
                let remaining = e.remaining().unwrap_or(0);
                if e.idle(now) {
                    // Idle members are forgotten, but not one an open hold names.
                    let periods = self.periods(now);
                    let named: Vec<usize> = self.holds.values().filter_map(|h| h.member).collect();
                    self.members.retain(|id, m| {
                        m.roll(periods);
                        !m.idle(now) || named.contains(id)
                    });
                }
                return Ok((remaining, true));
            }
            &Cmd::Alert { at, remove } => {
                let changed = self.thresholds.contains_key(&at) == remove;
                if changed && remove {
                    self.thresholds.remove(&at);
                } else if changed {
                    self.thresholds.insert(at, self.bal.available >= at);
                }
                return Ok((self.thresholds.len() as u64, changed));
            }
            &Cmd::Plan(Some((plan, credits))) => match self.subscribe(plan, credits, now) {
                Ok((available, true)) => available,
                repeated => return repeated,
            },
            Cmd::Plan(None) => match self.sub.as_mut() {
                Some(s) if !s.cancelled => {
                    s.cancelled = true;
                    0
                }
                _ => return Ok((0, false)),
            },
        };
        self.history = true;
        Ok((done, true))
    }

    /// After a change: the armed thresholds `available` is below fire
    /// (once), those it is at or above arm. Returns those that fired.
    fn lows(&mut self) -> Vec<u64> {
        let available = self.bal.available;
        let mut fired = vec![];
        for (&t, armed) in self.thresholds.iter_mut() {
            if available < t && *armed {
                fired.push(t);
            }
            *armed = available >= t;
        }
        fired
    }
}

// ---------------------------------------------------------------------------
// The whole model: accounts and the event log

pub struct Model {
    pub accounts: Vec<Account>,
    /// Every event ever raised, oldest first (the engine may have dropped
    /// those past the retention).
    pub events: Vec<Row>,
}

impl Default for Model {
    fn default() -> Model {
        let accounts = vec![Account::default(); ACCOUNTS.len()];
        Model {
            accounts,
            events: vec![],
        }
    }
}

impl Model {
    pub fn advance(&mut self, now: u64) {
        self.accounts.iter_mut().for_each(|a| a.advance(now));
    }

    pub fn next_event_seq(&self) -> u64 {
        self.events.len() as u64 + 1
    }

    /// Applies a command to account `a` at `now`, with the events it raises.
    pub fn apply(&mut self, a: usize, cmd: &Cmd, now: u64) -> MResult {
        self.advance(now);
        let existed = self.accounts[a].exists();
        // The member a refusal names: the command's, or its hold's.
        let member = match cmd {
            Cmd::Reserve { member, .. } | Cmd::Debit { member, .. } => *member,
            Cmd::Capture { id, .. } | Cmd::Commit { id, .. } => {
                self.accounts[a].holds.get(id).and_then(|h| h.member)
            }
            _ => None,
        };
        let r = self.accounts[a].apply(cmd, now);
        let acct = &mut self.accounts[a];
        let due = |stamp: &mut Option<u64>| {
            let due = stamp.is_none_or(|at| now >= at + REFUSAL_INTERVAL_MS);
            if due {
                *stamp = Some(now);
            }
            due
        };
        // (type, member, value, threshold)
        let raised = match r {
            Ok((_, true)) => {
                let available = acct.bal.available;
                let lows = acct.lows().into_iter();
                lows.map(|t| ("low", None, available, t)).collect()
            }
            Err(MErr::Insufficient { need, .. }) if existed && due(&mut acct.insufficient_at) => {
                vec![("insufficient", member, need, 0)]
            }
            Err(MErr::Limited { need, .. }) => {
                let m = member.expect("only a member is limited");
                let e = acct.member(m, now).expect("a capped member has an entry");
                match due(&mut e.limited_at) {
                    true => vec![("limited", member, need, 0)],
                    false => vec![],
                }
            }
            _ => vec![],
        };
        for (kind, m, value, threshold) in raised {
            let (seq, account) = (self.next_event_seq(), ACCOUNTS[a].to_string());
            let member = m.map_or(String::new(), |m| MEMBERS[m].to_string());
            self.events
                .push((seq, now, kind, account, member, value, threshold));
        }
        r
    }

    /// MEMBERS of account `a` at `now`.
    pub fn members_view(&mut self, a: usize, now: u64) -> Vec<MemberRow> {
        self.advance(now);
        let acct = &mut self.accounts[a];
        let periods = acct.periods(now);
        let mut rows = vec![];
        for (&m, e) in acct.members.iter_mut() {
            e.roll(periods);
            if e.cap.is_some() || e.used() > 0 || e.held > 0 {
                let (limit, per) = (e.cap.map(|c| c.0), e.per());
                let end = periods[per as usize].1;
                rows.push((MEMBERS[m].to_string(), limit, per, e.used(), e.held, end));
            }
        }
        rows
    }

    /// What member `m` of account `a` may still charge (`None`: no cap).
    pub fn remaining(&mut self, a: usize, m: usize, now: u64) -> Option<u64> {
        self.advance(now);
        self.accounts[a].member(m, now).and_then(|e| e.remaining())
    }
}
