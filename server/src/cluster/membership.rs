//! The keeper's dealings with the node's own lease, the view of who is
//! live, and the fences of the slots it holds.
//!
//! - **Renewal** (every third of the lease): one script call renews the
//!   node's lease with its current announcement. Renewed: everything held
//!   counts as valid until the call's send time plus 90 % of the lease.
//!   Gone while still valid here: Redis lost it (a flush), so the lease is
//!   set again and every fence checked. Gone after it lapsed here (the
//!   process was paused or cut off): every slot is dropped and the node
//!   rejoins as a new incarnation; slots are loaded again from Redis once
//!   claimed again.
//! - **Fence checks** (every two lease renewals, and at once when a write
//!   found its fence missing): every fence held is read back; one that is
//!   gone is set again (Redis lost the slot: every account of it is written
//!   again); one another node holds means the slot is lost here.

use super::keeper::Keeper;
use super::keys;
use super::view::{ranges_of, NodeEntry, View};
use crate::redis_reply::{int, text};
use creditd_engine::slot::slot_of;
use redis::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// The most nodes a view reads (as many as there are blocks of slots).
pub const MAX_NODES: usize = super::view::BLOCKS;

impl Keeper {
    /// The lease value: this run, its address and the slots it announces.
    pub(super) fn heartbeat(&self) -> String {
        let (host, port) = &self.cluster.announce;
        NodeEntry::heartbeat(
            &self.cluster.incarnation(),
            host,
            *port,
            &ranges_of(&self.cluster.announced()),
            self.leaving_all,
        )
    }

    /// Sets the lease outright (joining, or after Redis lost it) and adds
    /// the node to the member set.
    fn join(&mut self) -> Result<(), String> {
        let key = keys::node_key(&self.cluster.node.id);
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(self.heartbeat())
            .arg("PX")
            .arg(self.cluster.lease_ms);
        let mut add = redis::cmd("SADD");
        add.arg(keys::MEMBERS_KEY).arg(&self.cluster.node.id);
        let replies = self.redis.run(vec![
            (slot_of(key.as_bytes()), set),
            (slot_of(keys::MEMBERS_KEY.as_bytes()), add),
        ]);
        for r in replies {
            r.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Renews the lease now (what it announces changed, or it is due).
    pub(super) fn renew(&mut self) {
        let sent = self.cluster.now_ms();
        let ttl = self.cluster.lease_ms;
        let id = self.cluster.node.id.clone();
        let incarnation = self.cluster.incarnation();
        let result = if self.joined_at_ms.is_none() {
            self.join().map(|()| 1)
        } else {
            // The member set too, every time: a peer that saw this node
            // gone may remove it from the set just after it joined again.
            let cmd = self
                .shas
                .heartbeat(&id, &self.heartbeat(), ttl, &incarnation);
            let mut add = redis::cmd("SADD");
            add.arg(keys::MEMBERS_KEY).arg(&id);
            let mut replies = self.redis.run(vec![
                (slot_of(keys::node_key(&id).as_bytes()), cmd),
                (slot_of(keys::MEMBERS_KEY.as_bytes()), add),
            ]);
            let added = replies.pop().expect("two replies");
            let renewed = replies.pop().expect("two replies");
            added
                .and(renewed)
                .map(|v| int(&v))
                .map_err(|e| e.to_string())
        };
        let outcome = match result {
            Ok(1) => Ok(()),
            Ok(0) if self.cluster.leases_valid() => {
                tracing::warn!("this node's lease vanished from Redis before it could lapse (a flush, or a failover to a stale replica): set again, and every fence checked");
                self.cluster.check_fences.store(true, Ordering::Release);
                self.join()
            }
            Ok(code) => {
                let why = if code == 0 {
                    "this node's lease lapsed (the process was paused or cut off from Redis past cluster_lease_ms)"
                } else {
                    "another process holds this node id's lease (two processes with one --node-id?)"
                };
                self.rejoin(why);
                self.join()
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                self.cluster.extend_validity(sent + ttl - ttl / 10);
                self.cluster
                    .stats
                    .lease_renewals
                    .fetch_add(1, Ordering::Relaxed);
                self.renewed_at_ms = Some(sent);
                self.joined_at_ms.get_or_insert(sent);
                if self.logged_problem {
                    tracing::info!(redis = %self.redis.url, "lease renewed again");
                    self.logged_problem = false;
                }
            }
            Err(e) => {
                if !self.logged_problem {
                    tracing::warn!(redis = %self.redis.url, "cannot renew this node's lease ({e}); retrying");
                    self.logged_problem = true;
                }
                // Sooner again: a cut connection must not cost the lease.
                self.renewed_at_ms = Some(sent.saturating_sub(self.renew_interval_ms()) + 100);
            }
        }
    }

    /// The lease lapsed: everything held is dropped (others may own it
    /// now), and the node starts over as a new incarnation.
    fn rejoin(&mut self, why: &str) {
        let held = self.cluster.owned();
        self.cluster.lose_slots(&self.engine, &held);
        self.leaving.clear();
        self.loading.clear();
        self.cluster.new_incarnation();
        self.joined_at_ms = None;
        tracing::error!(slots = held.len(), "{why}: every slot is dropped here (changes of them not yet in Redis were never acknowledged); rejoining");
    }

    /// Reads every fence held; sets again those Redis lost, drops those
    /// another node holds.
    pub(super) fn check_fences(&mut self) {
        self.fences_checked_at_ms = Some(self.cluster.now_ms());
        let held = self.cluster.owned();
        let commands = held
            .iter()
            .map(|&s| {
                let mut get = redis::cmd("GET");
                get.arg(keys::fence_key(s));
                (s, get)
            })
            .collect();
        let mut missing = Vec::new();
        for (&slot, reply) in held.iter().zip(self.redis.run(commands)) {
            let Ok(v) = reply else { return };
            if text(&v) != self.cluster.fence_value(self.cluster.epoch(slot)) {
                missing.push(slot);
            }
        }
        if missing.is_empty() {
            return;
        }
        let commands = missing
            .iter()
            .map(|&s| {
                let epoch = self.cluster.epoch(s);
                (
                    s,
                    self.shas
                        .refence(s, &self.cluster.fence_value(epoch), epoch),
                )
            })
            .collect();
        let (mut retaken, mut lost) = (0, 0);
        for (&slot, reply) in missing.iter().zip(self.redis.run(commands)) {
            match reply {
                Ok(Value::Int(1)) => {}
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
                Err(_) => self.cluster.check_fences.store(true, Ordering::Release),
            }
        }
        if retaken > 0 {
            tracing::warn!(slots = retaken, "Redis lost these slots (a flush, or a failover to a stale replica): their fences are set again and every account of them is written again");
            self.cluster.wake_writer();
        }
        if lost > 0 {
            tracing::error!(slots = lost, "other nodes hold these slots' fences: dropped here; changes of them not yet in Redis were never acknowledged");
        }
    }

    /// Reads the member set and each member's lease; forgets members whose
    /// lease is gone (a live one adds itself again).
    pub(super) fn read_view(&mut self) {
        let members_slot = slot_of(keys::MEMBERS_KEY.as_bytes());
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(keys::MEMBERS_KEY);
        let mut ids: Vec<String> = match self.redis.run_one(members_slot, smembers) {
            Ok(Value::Array(m)) | Ok(Value::Set(m)) => m.iter().map(text).collect(),
            _ => return,
        };
        if ids.len() > MAX_NODES {
            // More nodes than blocks of slots could never all take a share;
            // the view reads a bounded number of leases per interval.
            tracing::warn!(
                members = ids.len(),
                max = MAX_NODES,
                "more cluster members than a view reads; the rest are ignored"
            );
            ids.sort();
            ids.truncate(MAX_NODES);
        }
        let me = self.cluster.node.id.clone();
        let others: Vec<&String> = ids.iter().filter(|id| **id != me).collect();
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
                id: me,
                incarnation: self.cluster.incarnation(),
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
            // A lease that vanished with most of its length left was
            // deleted: Redis lost data (a flush), and the node is probably
            // alive, about to set it again. Its slots wait half a lease
            // before anyone claims them, so they are not taken (and loaded
            // empty) from under their owner.
            let left_ms = self.last_pttl_ms.get(&node.id).copied().unwrap_or(0);
            let abrupt = left_ms > 2 * self.view_interval_ms() as i64 + 100;
            let wait = if abrupt { self.cluster.lease_ms / 2 } else { 0 };
            tracing::warn!(node = %node.id, address = %node.address(), slots = node.slot_count(), abrupt, "a node left or died: its slots are taken over");
            for &(lo, hi) in &node.ranges {
                for s in lo..=hi {
                    self.orphaned[usize::from(s)] = 1 + now + wait;
                }
            }
        }
        *current = view;
        self.last_pttl_ms = pttls;
    }
}
