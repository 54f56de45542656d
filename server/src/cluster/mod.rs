//! Cluster mode: creditd nodes share the 16384 hash slots of a Redis
//! deployment (a Redis Cluster or one Redis), each slot owned by one node at
//! a time through a lease with a fencing epoch in Redis.
//!
//! - [`keys`]: where everything lives in Redis (a slot's keys share its tag).
//! - [`redis`]: one pipeline per Redis master for whatever a pass sends.
//! - [`leases`]: the node's lease, the slots' fences and the fenced write.
//! - [`keeper`] (and [`membership`]): the thread that renews this node's
//!   lease, reads who is live, checks the fences, claims, loads and hands
//!   over slots.
//! - [`writer`]: the thread that writes changed accounts to Redis and only
//!   then lets their replies go (the durability point in cluster mode).
//! - [`reply`]: `CLUSTER ...` and `INFO cluster` as Redis Cluster answers them.
//!
//! This module holds what connections read on every keyed command: the
//! state of each slot here ([`SlotState`], with a generation that moves
//! whenever the slot stops being served) and whether the leases are still
//! valid, both as atomics. The design is in docs/CLUSTER.md.

mod events;
pub mod keeper;
pub mod keys;
pub mod leases;
mod load;
mod membership;
pub mod redis;
pub mod reply;
pub mod start;
pub mod view;
pub mod writer;

use crate::node::NodeIdentity;
use crate::stop::Worker;
use creditd_engine::slot::{slot_of, SLOTS};
use creditd_engine::Engine;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;
use view::View;

/// How this node stands with one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Another node owns it, or nobody does.
    NotOwned = 0,
    /// Leased, its accounts being read from Redis: `-TRYAGAIN`.
    Loading = 1,
    /// Leased and loaded: served here.
    Serving = 2,
    /// Being handed over: its changes are flushed, then the lease is
    /// released: `-TRYAGAIN`.
    Leaving = 3,
}

impl SlotState {
    fn from_bits(bits: u64) -> SlotState {
        match bits & 3 {
            0 => SlotState::NotOwned,
            1 => SlotState::Loading,
            2 => SlotState::Serving,
            _ => SlotState::Leaving,
        }
    }
}

/// Where a keyed command goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Served here; the reply stands only if the slot's generation is still
    /// this one once the change is in Redis.
    Here { slot: u16, generation: u64 },
    /// `-MOVED <slot> <host:port>`.
    Moved { slot: u16, to: String },
    /// `-TRYAGAIN`: the slot is loading or moving, or the leases are not
    /// renewed (Redis unreachable, or this process was paused).
    TryAgain(&'static str),
    /// `-CLUSTERDOWN`: nobody owns the slot.
    Down,
}

/// Counters for INFO and `/metrics`.
#[derive(Default)]
pub struct ClusterStats {
    pub moved_replies: AtomicU64,
    pub lease_renewals: AtomicU64,
    /// Slot leases taken (claims that won).
    pub slots_taken: AtomicU64,
    /// Of those, slots a node that died or left had announced.
    pub failovers: AtomicU64,
    pub slots_handed_over: AtomicU64,
    pub slots_lost: AtomicU64,
    pub accounts_loaded: AtomicU64,
    /// How long the last batch of slots took to load, in ms.
    pub last_load_ms: AtomicU64,
}

impl ClusterStats {
    /// The counters by name: `cluster_<name>` in INFO,
    /// `creditd_cluster_<name>_total` in `/metrics` (one list for both).
    pub fn counters(&self) -> [(&'static str, u64); 7] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("moved_replies", n(&self.moved_replies)),
            ("lease_renewals", n(&self.lease_renewals)),
            ("slots_taken", n(&self.slots_taken)),
            ("failovers", n(&self.failovers)),
            ("slots_handed_over", n(&self.slots_handed_over)),
            ("slots_lost", n(&self.slots_lost)),
            ("accounts_loaded", n(&self.accounts_loaded)),
        ]
    }
}

/// What every connection shares of cluster mode.
pub struct Cluster {
    pub node: NodeIdentity,
    /// What MOVED and CLUSTER SLOTS name for this node.
    pub announce: (String, u16),
    pub lease_ms: u64,
    /// Per slot: state in the low 2 bits, generation above.
    slots: Vec<AtomicU64>,
    /// The epoch of this node's fence on each slot (0: none).
    epochs: Vec<AtomicU64>,
    /// This run of the node in Redis: new at start and at every rejoin
    /// after its lease lapsed (a pause), so fences of a run that stopped
    /// serving can be told from the live one's.
    incarnation: AtomicU64,
    /// The writer found a fence missing: the keeper checks them all now.
    pub(crate) check_fences: std::sync::atomic::AtomicBool,
    origin: Instant,
    /// Leases count as valid here until this many ms after `origin`.
    valid_until_ms: AtomicU64,
    /// Every change up to this journal seq is in Redis (or was dropped
    /// with a slot this node lost; those replies see a new generation).
    pub watermark: AtomicU64,
    /// Who else is live and which slots they announce.
    pub view: RwLock<View>,
    pub stats: ClusterStats,
    /// Why writes do not reach Redis now, if they do not.
    pub problem: Mutex<Option<String>>,
    /// The writer's and the keeper's threads, woken when there is work.
    pub(crate) writer: OnceLock<std::thread::Thread>,
    pub(crate) keeper: OnceLock<std::thread::Thread>,
}

impl Cluster {
    pub fn new(node: NodeIdentity, announce: (String, u16), lease_ms: u64) -> Cluster {
        assert!(lease_ms >= 100, "a lease of at least 100 ms");
        Cluster {
            node,
            announce,
            lease_ms,
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epochs: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            incarnation: AtomicU64::new(new_incarnation()),
            check_fences: std::sync::atomic::AtomicBool::new(false),
            origin: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
            watermark: AtomicU64::new(0),
            view: RwLock::new(View::default()),
            stats: ClusterStats::default(),
            problem: Mutex::new(None),
            writer: OnceLock::new(),
            keeper: OnceLock::new(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn state(&self, slot: u16) -> SlotState {
        SlotState::from_bits(self.slots[usize::from(slot)].load(Ordering::Acquire))
    }

    pub fn generation(&self, slot: u16) -> u64 {
        self.slots[usize::from(slot)].load(Ordering::Acquire) >> 2
    }

    /// Moves a slot to `state`; leaving `Serving` starts a new generation,
    /// so replies of changes made in the old one are not sent as success.
    pub(crate) fn set_state(&self, slot: u16, state: SlotState) {
        let cell = &self.slots[usize::from(slot)];
        let old = cell.load(Ordering::Acquire);
        let mut generation = old >> 2;
        if SlotState::from_bits(old) == SlotState::Serving && state != SlotState::Serving {
            generation += 1;
        }
        cell.store((generation << 2) | state as u64, Ordering::Release);
    }

    pub fn epoch(&self, slot: u16) -> u64 {
        self.epochs[usize::from(slot)].load(Ordering::Acquire)
    }

    pub(crate) fn set_epoch(&self, slot: u16, epoch: u64) {
        self.epochs[usize::from(slot)].store(epoch, Ordering::Release);
    }

    /// This run's incarnation, as written in its lease and fences.
    pub fn incarnation(&self) -> String {
        format!("{:016x}", self.incarnation.load(Ordering::Acquire))
    }

    /// A new run (after the lease lapsed): fences of the old one are free.
    pub(crate) fn new_incarnation(&self) {
        self.incarnation.store(new_incarnation(), Ordering::Release);
    }

    /// This node's fence value on a slot at `epoch` (what a write compares).
    pub fn fence_value(&self, epoch: u64) -> String {
        format!(
            "{} {epoch} {} {} {}",
            self.node.id,
            self.incarnation(),
            self.node.pid,
            self.node.host
        )
    }

    /// The leases count as valid here until `until_ms` (after `origin`).
    pub(crate) fn extend_validity(&self, until_ms: u64) {
        self.valid_until_ms.fetch_max(until_ms, Ordering::AcqRel);
    }

    pub fn leases_valid(&self) -> bool {
        self.now_ms() < self.valid_until_ms.load(Ordering::Acquire)
    }

    /// Slots in each state here: (serving, loading, leaving).
    pub fn counts(&self) -> (usize, usize, usize) {
        let (mut serving, mut loading, mut leaving) = (0, 0, 0);
        for s in 0..SLOTS {
            match self.state(s) {
                SlotState::Serving => serving += 1,
                SlotState::Loading => loading += 1,
                SlotState::Leaving => leaving += 1,
                SlotState::NotOwned => {}
            }
        }
        (serving, loading, leaving)
    }

    /// The slots this node owns (in any state but not owned), ascending.
    pub fn owned(&self) -> Vec<u16> {
        (0..SLOTS)
            .filter(|&s| self.state(s) != SlotState::NotOwned)
            .collect()
    }

    /// Where a command on `account` goes (one atomic read when served here).
    pub fn route(&self, account: &[u8]) -> Route {
        let slot = slot_of(account);
        let bits = self.slots[usize::from(slot)].load(Ordering::Acquire);
        match SlotState::from_bits(bits) {
            SlotState::Serving if self.leases_valid() => Route::Here {
                slot,
                generation: bits >> 2,
            },
            SlotState::Serving => Route::TryAgain("this node's lease is not renewed in time (Redis unreachable, or the process was paused)"),
            SlotState::Loading => Route::TryAgain("the slot is loading from Redis"),
            SlotState::Leaving => Route::TryAgain("the slot is being handed over to another node"),
            SlotState::NotOwned => match self.view.read().route_to(slot) {
                Some(node) if node.myself => Route::TryAgain("the slot is being taken over by this node"),
                Some(node) => {
                    self.stats.moved_replies.fetch_add(1, Ordering::Relaxed);
                    Route::Moved {
                        slot,
                        to: node.address(),
                    }
                }
                None => Route::Down,
            },
        }
    }

    /// Why `/readyz` is 503, if it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        let (serving, loading, leaving) = self.counts();
        if loading > 0 {
            return Some(format!("{loading} slots loading from Redis"));
        }
        if serving + leaving == 0 {
            return Some("this node owns no slots yet".into());
        }
        if !self.leases_valid() {
            return Some("this node's lease is not renewed in time".into());
        }
        self.problem.lock().clone()
    }

    /// Forgets a slot another node holds now: not served, its accounts
    /// dropped. Changes of it not yet in Redis go with it; their replies see
    /// the new generation and are not sent as success.
    pub(crate) fn lose_slot(&self, engine: &Engine, slot: u16) {
        self.lose_slots(engine, &[slot]);
    }

    /// [`Cluster::lose_slot`] for many (each engine shard visited once).
    pub(crate) fn lose_slots(&self, engine: &Engine, slots: &[u16]) {
        let held: Vec<u16> = slots
            .iter()
            .copied()
            .filter(|&s| self.state(s) != SlotState::NotOwned)
            .collect();
        for &slot in &held {
            self.set_state(slot, SlotState::NotOwned);
            self.set_epoch(slot, 0);
        }
        engine.drop_slots(&held);
        self.stats
            .slots_lost
            .fetch_add(held.len() as u64, Ordering::Relaxed);
    }

    /// Wakes the writer: a reply waits for its change to reach Redis.
    pub fn wake_writer(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    pub fn wake_keeper(&self) {
        if let Some(t) = self.keeper.get() {
            t.unpark();
        }
    }
}

/// A new incarnation: 64 random bits, never 0.
fn new_incarnation() -> u64 {
    crate::node::random_u64(0).max(1)
}

/// The running cluster threads.
pub struct Running {
    pub keeper: Worker,
    pub writer: Worker,
}

impl Running {
    /// Hands every slot over (the keeper's stop), then stops the writer
    /// once what is left is written.
    pub async fn shutdown(self) {
        self.keeper.shutdown().await;
        self.writer.shutdown().await;
    }
}
