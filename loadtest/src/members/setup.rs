//! The members workload's setup: every account gets its pool (GRANT), its
//! thresholds (ALERT) and its members' caps (LIMIT), pipelined over a few
//! connections; and the event number the run's events will follow.

use super::MembersCfg;
use crate::client::{Client, Endpoint};
use crate::ops::{Op, Speller};
use crate::resp::Reply;
use crate::setup_hint;
use std::time::Duration;

/// What the run needs to know from before it started.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// The server's last event number before the setup: the run's events
    /// are all after it.
    pub after_seq: u64,
    /// When the caps' period ends (Unix ms; 0: it does not).
    pub period_end_ms: u64,
}

/// `events_last_seq` from `INFO accounts`.
pub async fn last_event_seq(c: &mut Client) -> Result<u64, String> {
    let info = c.call(&[b"INFO", b"accounts"]).await?;
    let text = match &info {
        Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        other => return Err(format!("INFO accounts: {other}{}", setup_hint(other))),
    };
    text.lines()
        .find_map(|l| l.strip_prefix("events_last_seq:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            "INFO accounts has no events_last_seq: the members workload needs a creditd \
             with members and events"
                .to_string()
        })
}

/// The commands that set up one account, in order, with what each must reply.
fn account_commands(cfg: &MembersCfg, speller: &Speller, c: &mut Client, acct: u32) -> Vec<i64> {
    let name = speller.account_name(acct);
    let mut want = Vec::new();
    speller.encode(
        &mut c.enc,
        &Op::Grant {
            acct,
            amount: cfg.pool,
        },
    );
    want.push(cfg.pool as i64);
    for (i, t) in cfg.thresholds.iter().enumerate() {
        c.enc.command(&[b"ALERT", &name, t.to_string().as_bytes()]);
        want.push(i as i64 + 1);
    }
    let cap = cfg.cap.to_string();
    for m in 0..cfg.members {
        let member = MembersCfg::member_name(m);
        c.enc.command(&[
            b"LIMIT",
            &name,
            member.as_bytes(),
            cap.as_bytes(),
            b"PER",
            cfg.per.word().as_bytes(),
        ]);
        want.push(cfg.cap as i64);
    }
    want
}

/// Sets up every account; fails on the first reply that is not what a
/// fresh account answers.
pub async fn setup(
    cfg: &MembersCfg,
    endpoint: &Endpoint,
    speller: &Speller,
    timeout: Duration,
) -> Result<Setup, String> {
    const CONNS: u32 = 4;
    const CHUNK: u32 = 200;
    let mut first = endpoint.connect(timeout).await?;
    let after_seq = last_event_seq(&mut first).await?;
    let mut tasks = Vec::new();
    for k in 0..CONNS {
        let endpoint = endpoint.clone();
        let speller = speller.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = endpoint.connect(timeout).await?;
            let mut from = k * CHUNK;
            while from < cfg.accounts {
                let to = (from + CHUNK).min(cfg.accounts);
                let mut want = Vec::new();
                for acct in from..to {
                    for w in account_commands(&cfg, &speller, &mut c, acct) {
                        want.push((acct, w));
                    }
                }
                let replies = c.exchange(want.len()).await?;
                for ((acct, w), r) in want.iter().zip(&replies) {
                    if r.error_code().is_some() {
                        return Err(format!("setting up account {acct}: {r}{}", setup_hint(r)));
                    }
                    if r.as_int() != Some(*w) {
                        return Err(format!(
                            "setting up account {acct}: replied {r} where a fresh account \
                             replies {w} (ids left from another run? give a new --run-prefix)"
                        ));
                    }
                }
                from += CHUNK * CONNS;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("setup task: {e}"))??;
    }
    let members = first.call(&[b"MEMBERS", &speller.account_name(0)]).await?;
    let period_end_ms = match &members {
        Reply::Array(list) => list.first().and_then(|m| m.field_int("period_end")),
        _ => None,
    }
    .ok_or_else(|| format!("MEMBERS after the setup: {members}{}", setup_hint(&members)))?;
    Ok(Setup {
        after_seq,
        period_end_ms: period_end_ms.max(0) as u64,
    })
}
