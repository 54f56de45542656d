//! `--verify` of the members workload: the server's accounts, members and
//! events against the client's model of every account.
//!
//! 1. Caps: for every member, MEMBERS' `used + held <= limit`, and the
//!    client's sum of what the server acknowledged for it (debits, committed
//!    totals, amounts of holds still open) never went over its cap. Where
//!    the model knows the account, `used` and `held` equal the client's, and
//!    the server refused a charge (LIMITED, INSUFFICIENT) exactly when the
//!    model did.
//! 2. Conservation per account from BALANCE: `granted = available + held +
//!    spent + expired`, and each of them the client's (nothing expires).
//! 3. Events, read with `EVENTS AFTER` in pages from the last number before
//!    the setup: numbers rise by one, none repeats; per account and
//!    threshold, the `low` events are exactly the crossings of the model,
//!    in order, with the same `available` after (so none is missing and none
//!    doubled: the model re-arms a threshold only when `available` is back
//!    at or above it); each member refused LIMITED (each account refused
//!    INSUFFICIENT) has at least one `limited` (`insufficient`) event and no
//!    more than one a minute, and none without a refusal.
//!
//! An account with a request whose reply was lost is checked for
//! conservation and caps only (indeterminate). When the caps' period ended
//! during the run, members' counts are not compared with the client's.

use super::traffic::{MembersLedger, Refusals};
use super::MembersCfg;
use crate::client::{Client, Endpoint};
use crate::ops::{Op, Speller};
use crate::resp::Reply;
use crate::verify::VerifyReport;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Default, Serialize)]
pub struct MembersReport {
    pub members_checked: u64,
    /// MEMBERS showed `used + held` above `limit`, or another limit than set.
    pub cap_violations: u64,
    /// The client's sum of acknowledged charges of a member went over its cap.
    pub client_over_cap: u64,
    /// `used` or `held` unlike the client's.
    pub member_mismatches: u64,
    /// BALANCE's `available` unlike the client's, or credits expired.
    pub available_mismatches: u64,
    /// Charges the server refused (or let pass) against the model: refused
    /// though within pool and cap, or refused with the other code.
    pub wrong_refusals: u64,
    /// Charges acknowledged though the model says they took a member over
    /// its cap.
    pub cap_exceeded: u64,
    /// Charges acknowledged though the pool could not cover them.
    pub pool_overdrawn: u64,
    /// Replies whose number differs from the model's.
    pub reply_mismatches: u64,
    pub limited_refusals: u64,
    pub insufficient_refusals: u64,
    pub top_ups: u64,
    /// Downward crossings of armed thresholds, from the model.
    pub crossings_expected: u64,
    /// `low` events of the run's accounts.
    pub low_events: u64,
    pub low_missing: u64,
    /// `low` events beyond the crossings (doubled, or without a re-arm between).
    pub low_extra: u64,
    /// `low` events whose value or threshold differ from the crossing's.
    pub low_value_mismatches: u64,
    pub limited_events: u64,
    pub insufficient_events: u64,
    /// Refusal events missing, more than one a minute, or without a refusal.
    pub refusal_event_mismatches: u64,
    /// Events read in all (of every account), from `after_seq + 1` on.
    pub events_read: u64,
    pub after_seq: u64,
    /// Event numbers that did not rise by exactly one.
    pub event_seq_errors: u64,
    /// The caps' period ended during the run: members' counts not compared.
    pub period_ended: bool,
}

impl MembersReport {
    pub fn failures(&self) -> u64 {
        self.cap_violations
            + self.client_over_cap
            + self.member_mismatches
            + self.available_mismatches
            + self.wrong_refusals
            + self.cap_exceeded
            + self.pool_overdrawn
            + self.reply_mismatches
            + self.low_missing
            + self.low_extra
            + self.low_value_mismatches
            + self.refusal_event_mismatches
            + self.event_seq_errors
    }
}

/// One event of the run's accounts.
struct Seen {
    kind: String,
    acct: u32,
    member: Vec<u8>,
    value: i64,
    threshold: i64,
}

/// Reads every event after `after` up to the server's last one now, in pages.
async fn read_events(
    c: &mut Client,
    speller: &Speller,
    after: u64,
    rep: &mut VerifyReport,
    mr: &mut MembersReport,
) -> Result<Vec<Seen>, String> {
    let last = super::setup::last_event_seq(c).await?;
    let prefix = [&speller.prefix[..], b"a"].concat();
    let mut out = Vec::new();
    let mut next = after;
    while next < last {
        let page = c
            .call(&[
                b"EVENTS",
                b"AFTER",
                next.to_string().as_bytes(),
                b"COUNT",
                b"10000",
            ])
            .await?;
        let Reply::Array(items) = page else {
            return Err(format!("EVENTS AFTER {next}: {page}"));
        };
        if items.is_empty() {
            break;
        }
        for e in &items {
            let f = |k: &str| e.field_int(k);
            let bulk = |k: &str| match e.fields()?.into_iter().find(|(n, _)| *n == k)?.1 {
                Reply::Bulk(b) => Some(b.clone()),
                Reply::Simple(s) => Some(s.clone().into_bytes()),
                _ => None,
            };
            let (Some(seq), Some(kind), Some(account), Some(member)) =
                (f("seq"), bulk("type"), bulk("account"), bulk("member"))
            else {
                rep.read_errors += 1;
                note(rep, format!("EVENTS: unexpected entry {e}"));
                continue;
            };
            mr.events_read += 1;
            if seq as u64 != next + 1 {
                mr.event_seq_errors += 1;
                note(
                    rep,
                    format!("EVENTS: event {seq} follows {next} (numbers rise by one)"),
                );
            }
            next = next.max(seq.max(0) as u64);
            let acct = account
                .strip_prefix(&prefix[..])
                .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u32>().ok());
            if let Some(acct) = acct {
                out.push(Seen {
                    kind: String::from_utf8_lossy(&kind).into_owned(),
                    acct,
                    member,
                    value: f("value").unwrap_or(-1),
                    threshold: f("threshold").unwrap_or(-1),
                });
            }
        }
    }
    Ok(out)
}

fn note(rep: &mut VerifyReport, msg: String) {
    if rep.examples.len() < 20 {
        rep.examples.push(msg);
    }
}

/// Refusal events of one account (or member) against its refusals: at
/// least one if refused, at most one a minute (plus one for clocks), none
/// if never refused. Returns a description of the mismatch.
fn refusal_events_wrong(refused: &Refusals, events: u64) -> Option<String> {
    let most = match (refused.first, refused.last) {
        (Some(first), Some(last)) => (last - first).as_secs() / 60 + 2,
        _ => 0,
    };
    let ok = if refused.count == 0 {
        events == 0
    } else {
        (1..=most).contains(&events)
    };
    (!ok).then(|| {
        format!(
            "{events} events for {} refusals (expected {})",
            refused.count,
            if refused.count == 0 {
                "none".to_string()
            } else {
                format!("1 to {most}")
            }
        )
    })
}

/// Reads `cmd account` for every account, in pipelined chunks.
async fn read_all(
    c: &mut Client,
    speller: &Speller,
    accounts: u32,
    cmd: &'static [u8],
) -> Result<Vec<Reply>, String> {
    let mut out = Vec::with_capacity(accounts as usize);
    let all: Vec<u32> = (0..accounts).collect();
    for chunk in all.chunks(1000) {
        for &acct in chunk {
            if cmd == b"BALANCE" {
                speller.encode(&mut c.enc, &Op::Balance { acct });
            } else {
                c.enc.command(&[cmd, &speller.account_name(acct)]);
            }
        }
        out.extend(c.exchange(chunk.len()).await?);
    }
    Ok(out)
}

pub async fn verify(
    cfg: &MembersCfg,
    endpoint: &Endpoint,
    speller: &Speller,
    ledger: MembersLedger,
    after_seq: u64,
    timeout: Duration,
) -> Result<VerifyReport, String> {
    let counts = &ledger.counts;
    let mut rep = VerifyReport::default();
    let mut mr = MembersReport {
        wrong_refusals: counts.wrong_refusals,
        cap_exceeded: counts.cap_exceeded,
        pool_overdrawn: counts.pool_overdrawn,
        reply_mismatches: counts.reply_mismatches,
        limited_refusals: counts.limited_refusals,
        insufficient_refusals: counts.insufficient_refusals,
        top_ups: counts.top_ups,
        after_seq,
        period_ended: ledger.period_ended,
        ..Default::default()
    };
    for e in &counts.examples {
        note(&mut rep, e.clone());
    }
    let mut c = endpoint.connect(timeout).await?;
    let models = &ledger.accounts;
    let name = |acct: u32| String::from_utf8_lossy(&speller.account_name(acct)).into_owned();

    // 2. Conservation, and the balances the model predicts.
    let balances = read_all(&mut c, speller, cfg.accounts, b"BALANCE").await?;
    for (acct, reply) in (0..cfg.accounts).zip(&balances) {
        rep.accounts_checked += 1;
        let Some([a, h, s, e, g]) = reply.balance() else {
            rep.read_errors += 1;
            note(&mut rep, format!("BALANCE {}: {reply}", name(acct)));
            continue;
        };
        if a + h + s + e != g {
            rep.conservation_failures += 1;
            note(
                &mut rep,
                format!(
                    "{}: granted {g} != available {a} + held {h} + spent {s} + expired {e}",
                    name(acct)
                ),
            );
        }
        let Some(m) = models.get(&acct).filter(|m| !m.lost) else {
            rep.indeterminate += 1;
            continue;
        };
        rep.expected_spent_total += m.spent;
        rep.holds_expected_open += m.open_holds;
        let checks = [
            ("granted", g, m.granted),
            ("spent", s, m.spent),
            ("held", h, m.held),
            ("available", a, m.available),
            ("expired", e, 0),
        ];
        for (what, got, want) in checks {
            if got == want as i64 {
                continue;
            }
            match what {
                "granted" => rep.granted_mismatches += 1,
                "spent" => rep.spent_mismatches += 1,
                "held" => rep.held_mismatches += 1,
                _ => mr.available_mismatches += 1,
            }
            let msg = format!("{}: {what} {got}, the client expected {want}", name(acct));
            note(&mut rep, msg);
        }
    }

    // 1. Caps.
    let lists = read_all(&mut c, speller, cfg.accounts, b"MEMBERS").await?;
    for (acct, reply) in (0..cfg.accounts).zip(&lists) {
        let Reply::Array(list) = reply else {
            rep.read_errors += 1;
            note(&mut rep, format!("MEMBERS {}: {reply}", name(acct)));
            continue;
        };
        let model = models.get(&acct);
        let known = model.filter(|m| !m.lost && !ledger.period_ended);
        let mut seen = 0;
        for entry in list {
            mr.members_checked += 1;
            let f = |k| entry.field_int(k);
            let member = entry
                .fields()
                .and_then(|fs| fs.into_iter().find(|(k, _)| *k == "member"))
                .and_then(|(_, v)| v.as_str().map(str::to_string));
            let (Some(member), Some(limit), Some(used), Some(held)) =
                (member, f("limit"), f("used"), f("held"))
            else {
                rep.read_errors += 1;
                note(&mut rep, format!("MEMBERS {}: entry {entry}", name(acct)));
                continue;
            };
            let index = member
                .strip_prefix('m')
                .and_then(|d| d.parse::<u32>().ok())
                .filter(|&i| i < cfg.members);
            if limit != cfg.cap as i64 || used + held > limit || index.is_none() {
                mr.cap_violations += 1;
                note(
                    &mut rep,
                    format!(
                        "{} member {member}: used {used} + held {held}, limit {limit} (set {} per {})",
                        name(acct),
                        cfg.cap,
                        cfg.per.word()
                    ),
                );
            }
            seen += 1;
            let (Some(i), Some(model)) = (index, known) else {
                continue;
            };
            let mm = &model.members[i as usize];
            if used != mm.used as i64 || held != mm.held as i64 {
                mr.member_mismatches += 1;
                note(
                    &mut rep,
                    format!(
                        "{} member {member}: used {used} held {held}, the client expected used {} held {}",
                        name(acct),
                        mm.used,
                        mm.held
                    ),
                );
            }
        }
        if seen != cfg.members {
            mr.cap_violations += 1;
            note(
                &mut rep,
                format!(
                    "{}: MEMBERS lists {seen} capped members of {}",
                    name(acct),
                    cfg.members
                ),
            );
        }
        // The client's own sums, whatever MEMBERS says.
        if let Some(model) = model.filter(|_| !ledger.period_ended) {
            for (i, mm) in model.members.iter().enumerate() {
                if mm.peak > mm.cap || mm.used + mm.held > mm.cap {
                    mr.client_over_cap += 1;
                    note(
                        &mut rep,
                        format!(
                            "{} member m{i}: the server acknowledged up to {} credits of charges, over its cap {}",
                            name(acct),
                            mm.peak.max(mm.used + mm.held),
                            mm.cap
                        ),
                    );
                }
            }
        }
    }

    // 3. Events.
    let events = read_events(&mut c, speller, after_seq, &mut rep, &mut mr).await?;
    let mut low: HashMap<(u32, i64), Vec<i64>> = HashMap::new();
    let mut limited: HashMap<(u32, Vec<u8>), u64> = HashMap::new();
    let mut insufficient: HashMap<u32, u64> = HashMap::new();
    for e in events {
        match e.kind.as_str() {
            "low" => {
                mr.low_events += 1;
                if !e.member.is_empty() {
                    mr.low_value_mismatches += 1;
                    note(
                        &mut rep,
                        format!("{}: a low event names a member", name(e.acct)),
                    );
                }
                low.entry((e.acct, e.threshold)).or_default().push(e.value);
            }
            "limited" => {
                mr.limited_events += 1;
                *limited.entry((e.acct, e.member)).or_default() += 1;
            }
            "insufficient" => {
                mr.insufficient_events += 1;
                *insufficient.entry(e.acct).or_default() += 1;
            }
            other => {
                rep.read_errors += 1;
                note(
                    &mut rep,
                    format!("{}: event of type {other:?}", name(e.acct)),
                );
            }
        }
    }
    let mut accounts: Vec<u32> = models.keys().copied().collect();
    accounts.sort_unstable();
    for acct in accounts {
        let model = &models[&acct];
        for (i, &t) in cfg.thresholds.iter().enumerate() {
            let want = &model.crossings[i];
            mr.crossings_expected += want.len() as u64;
            let got = low.remove(&(acct, t as i64)).unwrap_or_default();
            if model.lost {
                continue;
            }
            if got.len() < want.len() {
                mr.low_missing += (want.len() - got.len()) as u64;
            } else {
                mr.low_extra += (got.len() - want.len()) as u64;
            }
            let values = got.iter().zip(want).filter(|(g, w)| **g != **w as i64);
            mr.low_value_mismatches += values.count() as u64;
            if got.len() != want.len() || got.iter().zip(want).any(|(g, w)| *g != *w as i64) {
                note(
                    &mut rep,
                    format!(
                        "{} threshold {t}: low events with available {got:?}, the client counted crossings to {want:?}",
                        name(acct)
                    ),
                );
            }
        }
        if model.lost {
            continue;
        }
        let got = insufficient.get(&acct).copied().unwrap_or(0);
        if let Some(why) = refusal_events_wrong(&model.insufficient, got) {
            mr.refusal_event_mismatches += 1;
            note(&mut rep, format!("{}: insufficient: {why}", name(acct)));
        }
        for (i, mm) in model.members.iter().enumerate() {
            let key = (acct, MembersCfg::member_name(i as u32).into_bytes());
            let got = limited.remove(&key).unwrap_or(0);
            if let Some(why) = refusal_events_wrong(&mm.limited, got) {
                mr.refusal_event_mismatches += 1;
                note(
                    &mut rep,
                    format!("{} member m{i}: limited: {why}", name(acct)),
                );
            }
        }
    }
    // Low events for thresholds the run never set.
    for ((acct, t), got) in low {
        mr.low_extra += got.len() as u64;
        note(
            &mut rep,
            format!(
                "{}: {} low events for threshold {t}, never set",
                name(acct),
                got.len()
            ),
        );
    }

    rep.mismatches = rep.conservation_failures
        + rep.granted_mismatches
        + rep.spent_mismatches
        + rep.held_mismatches
        + rep.read_errors
        + mr.failures();
    rep.members = Some(mr);
    Ok(rep)
}
