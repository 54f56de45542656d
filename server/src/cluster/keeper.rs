//! The keeper thread: how a node joins, holds, takes and gives up slots.
//!
//! Each turn of its loop does what is due:
//! - every third of the lease: renew the node's lease ([`super::membership`]);
//! - every two renewals, or when a write found its fence gone: check the
//!   fences of the slots held;
//! - every view interval (a third of the lease, at most 250 ms): read who is
//!   live, then rebalance: slots this node serves whose share is another
//!   live node's are handed over (served no more, flushed to Redis, their
//!   fences deleted); slots whose share is this node's and that no live
//!   node announces are claimed, then loaded from Redis;
//! - loading claimed slots, a batch at a time, so a long load never delays
//!   a renewal.
//!
//! On stop it hands everything over: its lease first says it is leaving
//! (peers take no share from it), then every slot is flushed and released,
//! then it waits a little for the peers to announce them, so clients still
//! connected are redirected rather than refused.

use super::leases::Shas;
use super::load::load_slots;
use super::redis::RedisNodes;
use super::{keys, Cluster, SlotState};
use crate::redis_reply::{int, text};
use crate::stop::Stop;
use creditd_engine::slot::{slot_of, SLOTS};
use creditd_engine::Engine;
use creditd_journal::Journal;
use redis::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slots loaded per batch (two round trips per Redis master).
const LOAD_BATCH_SLOTS: usize = 1024;
/// The longest a stopping node waits for its changes to reach Redis, and
/// then for its peers to announce the slots it released.
const HAND_OVER_WAIT: Duration = Duration::from_secs(5);

pub struct Keeper {
    pub(super) cluster: Arc<Cluster>,
    pub(super) engine: Arc<Engine>,
    journal: Arc<Journal>,
    pub(super) redis: RedisNodes,
    pub(super) shas: Shas,
    stop: Stop,
    pub(super) renewed_at_ms: Option<u64>,
    pub(super) viewed_at_ms: Option<u64>,
    pub(super) fences_checked_at_ms: Option<u64>,
    /// When this node joined (set its lease): it claims nothing for one
    /// view interval, so nodes starting together see each other first.
    pub(super) joined_at_ms: Option<u64>,
    /// Slots being handed over, with the journal seq that must be in Redis
    /// before the fence is released.
    pub(super) leaving: Vec<(u16, u64)>,
    pub(super) loading: VecDeque<u16>,
    load_started: Option<Instant>,
    pub(super) logged_problem: bool,
    /// Per slot, 1 + the time (ms) from which it may be claimed, if a node
    /// that is gone (died or left) announced it last (0: none did). Taking
    /// one counts as a failover.
    pub(super) orphaned: Vec<u64>,
    /// Each peer's lease expiry (PTTL) at the last view: a lease that
    /// vanishes long before it would expire was deleted (Redis lost data),
    /// not outlived.
    pub(super) last_pttl_ms: HashMap<String, i64>,
    /// Stopping: the lease says so, and this node takes no share.
    pub(super) leaving_all: bool,
}

impl Keeper {
    pub fn new(
        cluster: Arc<Cluster>,
        engine: Arc<Engine>,
        journal: Arc<Journal>,
        redis: RedisNodes,
        stop: Stop,
    ) -> Keeper {
        Keeper {
            cluster,
            engine,
            journal,
            redis,
            shas: Shas::new(),
            stop,
            renewed_at_ms: None,
            viewed_at_ms: None,
            fences_checked_at_ms: None,
            joined_at_ms: None,
            leaving: Vec::new(),
            loading: VecDeque::new(),
            load_started: None,
            logged_problem: false,
            orphaned: vec![0; usize::from(SLOTS)],
            last_pttl_ms: HashMap::new(),
            leaving_all: false,
        }
    }

    pub(super) fn renew_interval_ms(&self) -> u64 {
        self.cluster.lease_ms / 3
    }

    pub(super) fn view_interval_ms(&self) -> u64 {
        (self.cluster.lease_ms / 3).min(250)
    }

    fn due(at: Option<u64>, every_ms: u64, now_ms: u64) -> bool {
        at.is_none_or(|t| now_ms >= t + every_ms)
    }

    pub fn run(mut self) {
        let _ = self.cluster.keeper.set(std::thread::current());
        while !self.stop.requested() {
            let now = self.cluster.now_ms();
            if Self::due(self.renewed_at_ms, self.renew_interval_ms(), now) {
                self.renew();
            }
            let fence_check_due = self.joined_at_ms.is_some()
                && Self::due(self.fences_checked_at_ms, 2 * self.renew_interval_ms(), now);
            if fence_check_due || self.cluster.check_fences.swap(false, Ordering::AcqRel) {
                self.check_fences();
            }
            if Self::due(self.viewed_at_ms, self.view_interval_ms(), now) {
                self.read_view();
                self.rebalance();
            }
            self.release_flushed();
            if !self.loading.is_empty() {
                self.load_batch();
                continue;
            }
            let wait = if self.leaving.is_empty() { 50 } else { 5 };
            self.stop.sleep(Duration::from_millis(wait));
        }
        self.hand_over_all();
    }

    /// Hands over what is another live node's share; claims this node's
    /// share that nobody announces.
    fn rebalance(&mut self) {
        let Some(joined) = self.joined_at_ms else {
            return;
        };
        if self.cluster.now_ms() < joined + self.view_interval_ms() {
            return;
        }
        let view = self.cluster.view.read().clone();
        let me = self.cluster.node.id.as_str();
        let now = self.cluster.now_ms();
        let mut claims = Vec::new();
        let mut hand_over = Vec::new();
        for slot in 0..SLOTS {
            let Some(share) = view.share_of(slot) else {
                continue;
            };
            let state = self.cluster.state(slot);
            if state == SlotState::Serving && share.id != me {
                hand_over.push(slot);
            } else if state == SlotState::NotOwned && share.id == me {
                let announced_by_other = view.owner(slot).is_some_and(|o| !o.myself);
                let orphaned = self.orphaned[usize::from(slot)];
                let waiting = orphaned > 0 && now + 1 < orphaned;
                if !announced_by_other && !waiting {
                    claims.push(slot);
                }
            }
        }
        if !hand_over.is_empty() {
            self.begin_hand_over(&hand_over);
        }
        if !claims.is_empty() {
            self.claim(&claims);
        }
    }

    /// Stops serving `slots`: they are released once their changes are in Redis.
    fn begin_hand_over(&mut self, slots: &[u16]) {
        for &slot in slots {
            self.cluster.set_state(slot, SlotState::Leaving);
        }
        // Every change that passed the slot check before is at or below
        // this seq, or its reply sees the new generation.
        let seq = self.journal.stats().last_seq;
        self.leaving.extend(slots.iter().map(|&s| (s, seq)));
        tracing::info!(
            slots = slots.len(),
            "handing slots over to their new owners"
        );
        self.cluster.wake_writer();
    }

    /// Releases the leaving slots whose changes are all in Redis.
    fn release_flushed(&mut self) {
        if self.leaving.is_empty() {
            return;
        }
        let watermark = self.cluster.watermark.load(Ordering::Acquire);
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.leaving.iter().partition(|(_, seq)| *seq <= watermark);
        if ready.is_empty() {
            return;
        }
        self.leaving = waiting;
        let slots: Vec<u16> = ready.iter().map(|(s, _)| *s).collect();
        self.release(&slots);
    }

    /// Deletes the fences of `slots` (Leaving, flushed) and forgets them.
    fn release(&mut self, slots: &[u16]) {
        let commands = slots
            .iter()
            .map(|&slot| {
                let value = self.cluster.fence_value(self.cluster.epoch(slot));
                (slot, self.shas.release(slot, &value))
            })
            .collect();
        let replies = self.redis.run(commands);
        for (&slot, reply) in slots.iter().zip(replies) {
            if let Err(e) = reply {
                tracing::warn!(
                    slot,
                    "could not delete the slot's fence ({e}); its next owner takes it once this node's lease lapses"
                );
            }
            self.cluster.set_state(slot, SlotState::NotOwned);
            self.cluster.set_epoch(slot, 0);
        }
        self.engine.drop_slots(slots);
        self.cluster
            .stats
            .slots_handed_over
            .fetch_add(slots.len() as u64, Ordering::Relaxed);
        // Announce at once that they are gone, so their new owner claims them.
        self.renew();
    }

    /// Tries to take `slots`' fences; taken ones start loading.
    fn claim(&mut self, slots: &[u16]) {
        let node = &self.cluster.node;
        let incarnation = self.cluster.incarnation();
        let live = self.cluster.view.read().live_incarnations();
        let commands = slots
            .iter()
            .map(|&s| (s, self.shas.claim(s, node, &incarnation, &live)))
            .collect();
        let replies = self.redis.run(commands);
        let mut taken = 0;
        for (&slot, reply) in slots.iter().zip(replies) {
            let Ok(Value::Array(fields)) = reply else {
                continue;
            };
            if fields.first().map(int) != Some(1) {
                continue;
            }
            let value = fields.get(1).map(text).unwrap_or_default();
            let epoch = value
                .split(' ')
                .nth(1)
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            self.cluster.set_epoch(slot, epoch);
            self.cluster.set_state(slot, SlotState::Loading);
            if std::mem::take(&mut self.orphaned[usize::from(slot)]) > 0 {
                self.cluster.stats.failovers.fetch_add(1, Ordering::Relaxed);
            }
            self.loading.push_back(slot);
            taken += 1;
        }
        if taken > 0 {
            tracing::info!(
                slots = taken,
                "took slots; loading their accounts from Redis"
            );
            self.cluster
                .stats
                .slots_taken
                .fetch_add(taken, Ordering::Relaxed);
            self.load_started.get_or_insert_with(Instant::now);
        }
    }

    /// Loads the next batch of claimed slots and serves them.
    fn load_batch(&mut self) {
        let n = self.loading.len().min(LOAD_BATCH_SLOTS);
        let batch: Vec<u16> = self
            .loading
            .drain(..n)
            .filter(|&s| self.cluster.state(s) == SlotState::Loading)
            .collect();
        match load_slots(&mut self.redis, &self.engine, &batch) {
            Ok(accounts) => {
                for &slot in &batch {
                    if self.cluster.state(slot) == SlotState::Loading {
                        self.cluster.set_state(slot, SlotState::Serving);
                    }
                }
                self.cluster
                    .stats
                    .accounts_loaded
                    .fetch_add(accounts as u64, Ordering::Relaxed);
                if self.loading.is_empty() {
                    if let Some(started) = self.load_started.take() {
                        let ms = started.elapsed().as_millis() as u64;
                        self.cluster.stats.last_load_ms.store(ms, Ordering::Relaxed);
                        tracing::info!(load_ms = ms, "slots loaded and served");
                    }
                }
                // Announce them at once.
                self.renew();
            }
            Err(e) => {
                tracing::warn!(redis = %self.redis.url, "loading slots failed ({e}); retrying");
                for slot in batch.into_iter().rev() {
                    self.loading.push_front(slot);
                }
                self.stop.sleep(Duration::from_millis(100));
            }
        }
    }

    /// On stop: leave the cluster without losing a change (module doc).
    fn hand_over_all(&mut self) {
        self.leaving_all = true;
        self.renew();
        let serving: Vec<u16> = (0..SLOTS)
            .filter(|&s| self.cluster.state(s) == SlotState::Serving)
            .collect();
        self.begin_hand_over(&serving);
        let deadline = Instant::now() + HAND_OVER_WAIT;
        while !self.leaving.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            self.release_flushed();
        }
        if !self.leaving.is_empty() {
            tracing::warn!("stopping with changes not yet in Redis (it is unreachable); their replies were not sent as success");
            self.leaving.clear();
        }
        // Slots still loading, and leaving ones Redis did not take in time.
        let held = self.cluster.owned();
        if !held.is_empty() {
            self.release(&held);
        }
        let released: Vec<u16> = serving.into_iter().chain(held).collect();
        if !released.is_empty() {
            self.wait_for_new_owners(&released);
        }
        let key = keys::node_key(&self.cluster.node.id);
        let mut del = redis::cmd("DEL");
        del.arg(&key);
        let _ = self.redis.run_one(slot_of(key.as_bytes()), del);
    }

    /// Waits (bounded) until live peers announce `held`, so clients still
    /// connected here are sent on with `-MOVED` rather than refused.
    fn wait_for_new_owners(&mut self, held: &[u16]) {
        tracing::info!(
            slots = held.len(),
            "released every slot; waiting for peers to take them"
        );
        let deadline = Instant::now() + HAND_OVER_WAIT;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            self.read_view();
            let view = self.cluster.view.read();
            if held
                .iter()
                .all(|&s| view.owner(s).is_some_and(|o| !o.myself))
            {
                break;
            }
        }
    }
}
