//! The keeper thread: how a node joins, holds, takes and gives up slots.
//!
//! Each turn of its loop does what is due:
//! - every third of the lease: one renewal round, one pipeline per Redis
//!   master: the node's heartbeat key and every slot lease it holds. When the
//!   whole round succeeds, the leases count as valid here until the round's
//!   send time plus 90 % of the lease. A slot whose lease another node holds
//!   now is lost: dropped at once. A slot taken back after Redis lost it is
//!   written again whole.
//! - every view interval: read who is live (the member set and each
//!   member's heartbeat), then rebalance: slots this node holds whose share
//!   is another live node's are handed over (served no more, flushed to
//!   Redis, released); slots whose share is this node's and that no live
//!   node announces are claimed, then loaded from Redis.
//! - loading claimed slots, a batch at a time, so a long load never delays
//!   a renewal.
//!
//! On stop it hands everything over: its heartbeat goes first (peers stop
//! counting on it), then every slot is flushed and released, then it waits
//! a little for the peers to announce them, so clients still connected are
//! redirected rather than refused.

use super::leases::Shas;
use super::load::load_slots;
use super::redis::RedisNodes;
use super::view::{ranges_of, NodeEntry, View};
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
    cluster: Arc<Cluster>,
    engine: Arc<Engine>,
    journal: Arc<Journal>,
    redis: RedisNodes,
    shas: Shas,
    stop: Stop,
    renewed_at_ms: Option<u64>,
    viewed_at_ms: Option<u64>,
    /// When this node first heartbeat: it claims nothing for one view
    /// interval, so nodes starting together see each other first.
    joined_at_ms: Option<u64>,
    /// Slots being handed over, with the journal seq that must be in Redis
    /// before the lease is released.
    leaving: Vec<(u16, u64)>,
    loading: VecDeque<u16>,
    load_started: Option<Instant>,
    logged_problem: bool,
    /// Per slot, 1 + the time (ms) from which it may be claimed, if a node
    /// that is gone (died or left) announced it last (0: none did). Taking
    /// one counts as a failover.
    orphaned: Vec<u64>,
    /// Each peer's heartbeat expiry (PTTL) at the last view: a heartbeat
    /// that vanishes long before it would expire was deleted (Redis lost
    /// data), not outlived.
    last_pttl_ms: HashMap<String, i64>,
    /// Stopping: the heartbeat says so, and this node takes no share.
    leaving_all: bool,
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

    fn renew_interval_ms(&self) -> u64 {
        self.cluster.lease_ms / 3
    }

    fn view_interval_ms(&self) -> u64 {
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
                self.renew_round();
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

    /// The heartbeat value: this node's address and the slots it holds.
    fn heartbeat(&self) -> String {
        let (host, port) = &self.cluster.announce;
        NodeEntry::heartbeat(
            host,
            *port,
            &ranges_of(&self.cluster.announced()),
            self.leaving_all,
        )
    }

    /// Writes the heartbeat now (what this node announces changed).
    fn announce(&mut self) {
        let key = keys::node_key(&self.cluster.node.id);
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(self.heartbeat())
            .arg("PX")
            .arg(self.cluster.lease_ms);
        let _ = self.redis.run_one(slot_of(key.as_bytes()), set);
    }

    /// One renewal round (see the module doc).
    fn renew_round(&mut self) {
        let sent = self.cluster.now_ms();
        let ttl = self.cluster.lease_ms;
        let node_key = keys::node_key(&self.cluster.node.id);
        let mut commands = Vec::new();
        let mut set = redis::cmd("SET");
        set.arg(&node_key).arg(self.heartbeat()).arg("PX").arg(ttl);
        commands.push((slot_of(node_key.as_bytes()), set));
        let mut add = redis::cmd("SADD");
        add.arg(keys::MEMBERS_KEY).arg(&self.cluster.node.id);
        commands.push((slot_of(keys::MEMBERS_KEY.as_bytes()), add));
        let held = self.cluster.owned();
        for &slot in &held {
            let epoch = self.cluster.epoch(slot);
            let value = self.cluster.lease_value(epoch);
            commands.push((slot, self.shas.renew(slot, &value, epoch, ttl)));
        }
        let replies = self.redis.run(commands);
        let mut failure: Option<String> = None;
        let (mut lost, mut retaken) = (0, 0);
        for r in &replies[..2] {
            if let Err(e) = r {
                failure = Some(e.to_string());
            }
        }
        for (&slot, reply) in held.iter().zip(&replies[2..]) {
            match reply {
                Ok(Value::Int(1 | 3)) => {}
                Ok(Value::Int(2)) => {
                    for id in self.engine.slot_accounts(slot) {
                        self.engine.mark_dirty(&id);
                    }
                    retaken += 1;
                }
                Ok(_) => {
                    self.cluster.lose_slot(&self.engine, slot);
                    lost += 1;
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        if retaken > 0 {
            tracing::warn!(slots = retaken, "Redis lost these slots' leases and epochs (a flush, or a failover to a stale replica): taken back, and every account of them is written again");
            self.cluster.wake_writer();
        }
        if lost > 0 {
            tracing::error!(slots = lost, "lost slot leases to another node (this process was paused or cut off past its lease): those slots are dropped here; changes of them not yet in Redis were never acknowledged");
        }
        if self.joined_at_ms.is_none() && failure.is_none() {
            self.joined_at_ms = Some(sent);
        }
        match failure {
            None => {
                self.cluster.extend_validity(sent + ttl - ttl / 10);
                self.cluster
                    .stats
                    .lease_renewals
                    .fetch_add(held.len() as u64, Ordering::Relaxed);
                self.renewed_at_ms = Some(sent);
                if self.logged_problem {
                    tracing::info!(redis = %self.redis.url, "slot leases renewed again");
                    self.logged_problem = false;
                }
            }
            Some(e) => {
                if !self.logged_problem {
                    tracing::warn!(redis = %self.redis.url, "cannot renew the slot leases ({e}); retrying");
                    self.logged_problem = true;
                }
                // Sooner again: a cut connection must not cost the leases.
                self.renewed_at_ms = Some(sent.saturating_sub(self.renew_interval_ms()) + 100);
            }
        }
    }

    /// Reads the member set and each member's heartbeat; forgets members
    /// whose heartbeat is gone (a live one adds itself again).
    fn read_view(&mut self) {
        let members_slot = slot_of(keys::MEMBERS_KEY.as_bytes());
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(keys::MEMBERS_KEY);
        let ids: Vec<String> = match self.redis.run_one(members_slot, smembers) {
            Ok(Value::Array(m)) | Ok(Value::Set(m)) => m.iter().map(text).collect(),
            _ => return,
        };
        let me = &self.cluster.node.id;
        let others: Vec<&String> = ids.iter().filter(|id| *id != me).collect();
        let mut commands = Vec::with_capacity(others.len() * 2);
        for id in &others {
            let key = keys::node_key(id);
            let slot = slot_of(key.as_bytes());
            let mut get = redis::cmd("GET");
            get.arg(&key);
            let mut pttl = redis::cmd("PTTL");
            pttl.arg(&key);
            commands.push((slot, get));
            commands.push((slot, pttl));
        }
        let replies = self.redis.run(commands);
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        let mut pttls = HashMap::new();
        for (id, pair) in others.iter().zip(replies.chunks(2)) {
            match (&pair[0], &pair[1]) {
                (Ok(Value::Nil), _) => gone.push((*id).clone()),
                (Ok(v), Ok(pttl)) => {
                    nodes.extend(NodeEntry::parse(id, &text(v)));
                    pttls.insert((*id).clone(), int(pttl));
                }
                _ => return,
            }
        }
        if !gone.is_empty() {
            let mut srem = redis::cmd("SREM");
            srem.arg(keys::MEMBERS_KEY).arg(&gone);
            let _ = self.redis.run_one(members_slot, srem);
        }
        if self.joined_at_ms.is_some() {
            let (host, port) = self.cluster.announce.clone();
            nodes.push(NodeEntry {
                id: me.clone(),
                host,
                port,
                ranges: ranges_of(&self.cluster.announced()),
                myself: true,
                leaving: self.leaving_all,
            });
        }
        let now = self.cluster.now_ms();
        self.viewed_at_ms = Some(now);
        let view = View::new(nodes);
        let mut current = self.cluster.view.write();
        for node in current
            .nodes
            .iter()
            .filter(|n| !n.myself && !view.is_live(&n.id))
        {
            // A heartbeat that vanished with most of its lease left was
            // deleted: Redis lost data (a flush), and the node is probably
            // alive, about to take its slots back. Its slots wait half a
            // lease before anyone claims them, so they are not taken (and
            // loaded empty) from under their owner.
            let left_ms = self.last_pttl_ms.get(&node.id).copied().unwrap_or(0);
            let abrupt = left_ms > 2 * self.view_interval_ms() as i64 + 100;
            let wait = if abrupt { self.cluster.lease_ms / 2 } else { 0 };
            tracing::warn!(node = %node.id, address = %node.address(), slots = node.slot_count(), abrupt, "a node left or died: its slots are taken over once its leases lapse");
            for &(lo, hi) in &node.ranges {
                for s in lo..=hi {
                    self.orphaned[usize::from(s)] = 1 + now + wait;
                }
            }
        }
        *current = view;
        self.last_pttl_ms = pttls;
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

    /// Releases the leases of `slots` (Leaving, flushed) and forgets them.
    fn release(&mut self, slots: &[u16]) {
        let commands = slots
            .iter()
            .map(|&slot| {
                let value = self.cluster.lease_value(self.cluster.epoch(slot));
                (slot, self.shas.release(slot, &value))
            })
            .collect();
        let replies = self.redis.run(commands);
        for (&slot, reply) in slots.iter().zip(replies) {
            if let Err(e) = reply {
                tracing::warn!(
                    slot,
                    "could not release the slot lease ({e}); it lapses after cluster_lease_ms"
                );
            }
            self.cluster.set_state(slot, SlotState::NotOwned);
            self.cluster.set_epoch(slot, 0);
            self.engine.drop_slot(slot);
        }
        self.cluster
            .stats
            .slots_handed_over
            .fetch_add(slots.len() as u64, Ordering::Relaxed);
        // Announce at once that they are gone, so their new owner claims them.
        self.announce();
    }

    /// Tries to take `slots`' leases; taken ones start loading.
    fn claim(&mut self, slots: &[u16]) {
        let node = &self.cluster.node;
        let ttl = self.cluster.lease_ms;
        let commands = slots
            .iter()
            .map(|&s| (s, self.shas.acquire(s, &node.id, node.pid, &node.host, ttl)))
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
                "took slot leases; loading their accounts from Redis"
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
                self.announce();
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
        self.announce();
        let serving: Vec<u16> = (0..SLOTS)
            .filter(|&s| self.cluster.state(s) == SlotState::Serving)
            .collect();
        for &slot in &serving {
            self.cluster.set_state(slot, SlotState::Leaving);
        }
        let seq = self.journal.stats().last_seq;
        let deadline = Instant::now() + HAND_OVER_WAIT;
        self.cluster.wake_writer();
        while self.cluster.watermark.load(Ordering::Acquire) < seq && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.cluster.watermark.load(Ordering::Acquire) < seq {
            tracing::warn!("stopping with changes not yet in Redis (it is unreachable); their replies were not sent as success");
        }
        let held = self.cluster.owned();
        if !held.is_empty() {
            self.release(&held);
            self.wait_for_new_owners(&held);
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
            "released every slot lease; waiting for peers to take them"
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
