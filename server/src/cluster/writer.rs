//! The cluster writer: the durability point in cluster mode. A reply to a
//! change goes out only once the change is in Redis.
//!
//! A pass reads the journal's last seq S, takes every changed account of a
//! slot this node holds (each shard emptied under its lock, so every change
//! up to S is among them), and writes them with the fenced write script: one
//! call per slot (up to [`SCRIPT_ACCOUNTS`] accounts each), one pipeline per
//! Redis master. When every call succeeded, everything up to S is in Redis:
//! S becomes the watermark that replies wait for. Changes made during a
//! pass are the next pass's: that is the group commit, with as many clients
//! per round trip as arrived meanwhile. A connection with a reply waiting
//! wakes the writer, so an idle node answers in about one round trip.
//!
//! A call refused by the fence means another node took the slot: the slot
//! is dropped here and the watermark moves on; replies of its unwritten
//! changes see the slot's new generation and are refused (`-TRYAGAIN`), so
//! nothing unwritten is acknowledged. Any other failure writes the accounts
//! again on the next pass, and the watermark waits (replies answer `-BUSY`
//! after their bound, as when the journal cannot write).

use super::events;
use super::leases::{Shas, ACCOUNT_ARGS};
use super::redis::RedisNodes;
use super::{keys, Cluster, SlotState};
use crate::persist::account_version;
use crate::stop::Stop;
use creditd_engine::events::Event;
use creditd_engine::id::Id;
use creditd_engine::slot::slot_of;
use creditd_engine::Engine;
use creditd_journal::Journal;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Accounts per write call.
const SCRIPT_ACCOUNTS: usize = 64;
/// Accounts per pass; more wait for the next one.
const PASS_ACCOUNTS: usize = 65_536;
/// How long an idle writer sleeps unless woken.
const IDLE_WAIT: Duration = Duration::from_millis(20);
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(500);
/// How long a stopping writer keeps trying to write what is left.
const FLUSH_AT_STOP: Duration = Duration::from_secs(5);

/// One account's state to write.
struct Item {
    id: Id,
    version: u64,
    history_seq: u64,
    state: Vec<u8>,
    balance: creditd_engine::Balance,
    plan: Option<Id>,
    seats: u32,
}

pub struct Writer {
    cluster: Arc<Cluster>,
    engine: Arc<Engine>,
    journal: Arc<Journal>,
    durable: watch::Sender<u64>,
    redis: RedisNodes,
    shas: Shas,
    stop: Stop,
    /// The last event number this node appended to the stream (`None`: ask Redis).
    events_streamed: Option<u64>,
    /// The last failure to append events, logged when it changes.
    events_problem: Option<String>,
}

/// How a pass ended.
enum PassEnd {
    /// Everything taken is in Redis (or was dropped with a lost slot).
    Complete,
    /// Some writes failed: their accounts are dirty again.
    Incomplete(String),
}

impl Writer {
    pub fn new(
        cluster: Arc<Cluster>,
        engine: Arc<Engine>,
        journal: Arc<Journal>,
        durable: watch::Sender<u64>,
        redis: RedisNodes,
        stop: Stop,
    ) -> Writer {
        Writer {
            cluster,
            engine,
            journal,
            durable,
            redis,
            shas: Shas::new(),
            stop,
            events_streamed: None,
            events_problem: None,
        }
    }

    pub fn run(mut self) {
        let _ = self.cluster.writer.set(std::thread::current());
        let mut retry = RETRY_MIN;
        let mut stopping_since: Option<Instant> = None;
        loop {
            if self.stop.requested() && stopping_since.is_none() {
                stopping_since = Some(Instant::now());
            }
            let seq = self.journal.stats().last_seq;
            let (items, more) = self.take();
            if items.is_empty() && !more {
                self.advance(seq);
                self.stream_events();
                if stopping_since.is_some() {
                    return;
                }
                self.stop.sleep(IDLE_WAIT);
                continue;
            }
            match self.write(items) {
                PassEnd::Complete => {
                    if !more {
                        self.advance(seq);
                    }
                    self.stream_events();
                    retry = RETRY_MIN;
                    *self.cluster.problem.lock() = None;
                }
                PassEnd::Incomplete(why) => {
                    let first = self.cluster.problem.lock().replace(why.clone()).is_none();
                    if first {
                        tracing::warn!(redis = %self.redis.url, "cannot write changes to Redis ({why}); retrying, replies wait");
                    }
                    if stopping_since.is_some_and(|t| t.elapsed() > FLUSH_AT_STOP) {
                        tracing::error!("stopping with changes not in Redis: their replies were not sent as success");
                        return;
                    }
                    self.stop.sleep(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Every change up to `seq` is in Redis: let the replies go.
    fn advance(&self, seq: u64) {
        self.cluster.watermark.fetch_max(seq, Ordering::AcqRel);
        self.durable.send_if_modified(|d| {
            let moved = seq > *d;
            *d = (*d).max(seq);
            moved
        });
    }

    /// Appends this node's events whose change is in Redis (see
    /// [`events`]); a failure is retried after the next pass.
    fn stream_events(&mut self) {
        let watermark = self.cluster.watermark.load(Ordering::Acquire);
        let Some(streamed) = self.events_streamed.or_else(|| self.events_call(&[])) else {
            return;
        };
        let (after, _) = self.engine.events_after(streamed, events::EVENTS_PER_CALL);
        let ready: Vec<Event> = after
            .into_iter()
            .take_while(|e| e.journal_seq <= watermark)
            .collect();
        if !ready.is_empty() {
            self.events_call(&ready);
        }
    }

    /// One call of the events script; the node's last appended number.
    fn events_call(&mut self, batch: &[Event]) -> Option<u64> {
        let cmd = events::call(&self.shas.events, &self.cluster.node.id, batch);
        let problem = match self.redis.run_one(events::slot(), cmd) {
            Ok(redis::Value::Int(n)) if n >= 0 => {
                self.events_streamed = Some(n as u64);
                self.events_problem = None;
                return Some(n as u64);
            }
            Ok(other) => format!("unexpected reply {other:?}"),
            Err(e) => e.to_string(),
        };
        if self.events_problem.as_ref() != Some(&problem) {
            tracing::warn!(redis = %self.redis.url, "cannot append events to creditd:events ({problem}); retrying");
            self.events_problem = Some(problem);
        }
        None
    }

    /// Takes the changed accounts of slots held here (up to the pass bound;
    /// `true` if more wait). Accounts of slots not held (dropped, or a
    /// change that raced a hand-over) are not written.
    fn take(&self) -> (Vec<(u16, Item)>, bool) {
        let mut items = Vec::new();
        let mut deferred = Vec::new();
        self.engine.take_dirty(usize::MAX, |id, acct| {
            let slot = slot_of(id);
            if !matches!(
                self.cluster.state(slot),
                SlotState::Serving | SlotState::Leaving
            ) {
                return;
            }
            if items.len() >= PASS_ACCOUNTS {
                deferred.push(id.clone());
                return;
            }
            let (version, history_seq) = account_version(acct);
            let view = acct.view();
            items.push((
                slot,
                Item {
                    id: id.clone(),
                    version,
                    history_seq,
                    state: postcard::to_allocvec(acct).expect("an account encodes"),
                    balance: view.balance,
                    plan: view.plan,
                    seats: view.seats,
                },
            ));
        });
        let more = !deferred.is_empty();
        for id in deferred {
            self.engine.mark_dirty(&id);
        }
        (items, more)
    }

    /// Writes `items`: one call per slot chunk, one pipeline per master.
    fn write(&mut self, items: Vec<(u16, Item)>) -> PassEnd {
        let mut by_slot: BTreeMap<u16, Vec<Item>> = BTreeMap::new();
        for (slot, item) in items {
            by_slot.entry(slot).or_default().push(item);
        }
        let mut calls: Vec<(u16, u64, Vec<Item>)> = Vec::new();
        for (slot, mut list) in by_slot {
            let epoch = self.cluster.epoch(slot);
            while !list.is_empty() {
                let rest = list.split_off(list.len().min(SCRIPT_ACCOUNTS));
                calls.push((slot, epoch, list));
                list = rest;
            }
        }
        let commands = calls
            .iter()
            .map(|(slot, epoch, list)| (*slot, self.call(*slot, *epoch, list)))
            .collect();
        let replies = self.redis.run(commands);
        let mut problem: Option<String> = None;
        let mut lost = 0;
        for ((slot, epoch, list), reply) in calls.into_iter().zip(replies) {
            let Err(e) = reply else { continue };
            let same_lease = self.cluster.epoch(slot) == epoch
                && self.cluster.state(slot) != SlotState::NotOwned;
            match e.code() {
                // Not ours any more: what was not written goes with the slot.
                _ if !same_lease => {}
                Some("FENCED") => {
                    self.cluster.lose_slot(&self.engine, slot);
                    lost += 1;
                }
                code => {
                    if code == Some("NOLEASE") {
                        // The fence is gone (Redis lost it): the keeper sets
                        // it again, unless another node holds the slot now.
                        self.cluster.check_fences.store(true, Ordering::Release);
                        self.cluster.wake_keeper();
                    }
                    for item in &list {
                        self.engine.mark_dirty(&item.id);
                    }
                    problem.get_or_insert_with(|| e.to_string());
                }
            }
        }
        if lost > 0 {
            tracing::error!(slots = lost, "writes were fenced: another node holds these slots now; dropped here, their unwritten changes never acknowledged");
        }
        match problem {
            None => PassEnd::Complete,
            Some(why) => PassEnd::Incomplete(why),
        }
    }

    /// One `EVALSHA` of the write script for `list` (all of `slot`).
    fn call(&self, slot: u16, epoch: u64, list: &[Item]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.shas.write)
            .arg(2 + list.len())
            .arg(keys::fence_key(slot))
            .arg(keys::index_key(slot));
        for item in list {
            cmd.arg(keys::account_key(slot, &item.id));
        }
        cmd.arg(self.cluster.fence_value(epoch)).arg(epoch);
        let before = cmd.args_iter().count();
        for item in list {
            let b = &item.balance;
            cmd.arg(&item.id[..])
                .arg(item.version)
                .arg(item.history_seq)
                .arg(&item.state[..])
                .arg(b.available)
                .arg(b.held)
                .arg(b.spent)
                .arg(b.expired)
                .arg(b.granted)
                .arg(item.plan.as_deref().unwrap_or(b""))
                .arg(item.seats);
        }
        debug_assert_eq!(cmd.args_iter().count() - before, ACCOUNT_ARGS * list.len());
        cmd
    }
}
