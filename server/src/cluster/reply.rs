//! `CLUSTER ...` and `INFO cluster` as Redis Cluster answers them, with the
//! creditd nodes as the masters, so that stock cluster clients (the redis
//! crate's, redis-py's `RedisCluster`, go-redis) learn the slot map and
//! route by themselves.

use super::view::{ranges_of, NodeEntry};
use super::{Cluster, SlotState};
use crate::resp::encode::{self, Proto};
use creditd_engine::slot::SLOTS;
use metrics::{counter, gauge};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

impl Cluster {
    /// The slots this node announces: served, or being handed over (a
    /// client sent here then gets `-TRYAGAIN` and retries). Loading ones are
    /// announced once loaded, so `cluster_state:ok` means loaded everywhere.
    pub fn announced(&self) -> Vec<u16> {
        (0..SLOTS)
            .filter(|&s| matches!(self.state(s), SlotState::Serving | SlotState::Leaving))
            .collect()
    }

    /// Every live node, this one as it stands now, with the slots clients
    /// are sent to it for: those it holds or announces, and those whose
    /// share it is while nobody announces them (as Redis Cluster keeps a
    /// moving slot listed), so the map always covers every slot a live
    /// node can take.
    fn nodes(&self) -> Vec<NodeEntry> {
        let view = self.view.read();
        let mut nodes: Vec<NodeEntry> = view
            .nodes
            .iter()
            .filter(|n| !n.myself && n.id != self.node.id)
            .cloned()
            .collect();
        nodes.push(NodeEntry {
            id: self.node.id.clone(),
            incarnation: self.incarnation(),
            host: self.announce.0.clone(),
            port: self.announce.1,
            ranges: Vec::new(),
            myself: true,
            leaving: false,
        });
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let mut slots: Vec<Vec<u16>> = vec![Vec::new(); nodes.len()];
        for slot in 0..SLOTS {
            let to = if self.state(slot) != SlotState::NotOwned {
                Some(self.node.id.as_str())
            } else {
                view.route_to(slot)
                    .filter(|n| !n.myself)
                    .map(|n| n.id.as_str())
            };
            if let Some(i) = to.and_then(|id| nodes.iter().position(|n| n.id == id)) {
                slots[i].push(slot);
            }
        }
        for (node, slots) in nodes.iter_mut().zip(slots) {
            node.ranges = ranges_of(&slots);
        }
        nodes
    }

    /// Slots announced by a live node, or held here, each counted once.
    fn slots_announced(&self) -> usize {
        let view = self.view.read();
        (0..SLOTS)
            .filter(|&s| {
                matches!(self.state(s), SlotState::Serving | SlotState::Leaving)
                    || view.owner(s).is_some_and(|n| !n.myself)
            })
            .count()
    }

    fn max_epoch(&self) -> u64 {
        (0..SLOTS).map(|s| self.epoch(s)).max().unwrap_or(0)
    }

    /// `CLUSTER SLOTS`: `[start, end, [host, port, id]]` per range.
    pub fn write_slots(&self, out: &mut Vec<u8>) {
        let nodes = self.nodes();
        let ranges: Vec<(&NodeEntry, (u16, u16))> = nodes
            .iter()
            .flat_map(|n| n.ranges.iter().map(move |&r| (n, r)))
            .collect();
        encode::array_header(out, ranges.len());
        for (node, (lo, hi)) in ranges {
            encode::array_header(out, 3);
            encode::integer(out, i64::from(lo));
            encode::integer(out, i64::from(hi));
            encode::array_header(out, 3);
            encode::bulk_str(out, &node.host);
            encode::integer(out, i64::from(node.port));
            encode::bulk_str(out, &node.id);
        }
    }

    /// `CLUSTER SHARDS`: one shard per node, the node its only master.
    pub fn write_shards(&self, out: &mut Vec<u8>, p: Proto) {
        let nodes = self.nodes();
        encode::array_header(out, nodes.len());
        for node in &nodes {
            encode::map_header(out, p, 2);
            encode::bulk_str(out, "slots");
            encode::array_header(out, node.ranges.len() * 2);
            for &(lo, hi) in &node.ranges {
                encode::integer(out, i64::from(lo));
                encode::integer(out, i64::from(hi));
            }
            encode::bulk_str(out, "nodes");
            encode::array_header(out, 1);
            encode::map_header(out, p, 7);
            for (k, v) in [
                ("id", node.id.as_str()),
                ("ip", &node.host),
                ("endpoint", &node.host),
            ] {
                encode::bulk_str(out, k);
                encode::bulk_str(out, v);
            }
            encode::bulk_str(out, "port");
            encode::integer(out, i64::from(node.port));
            for (k, v) in [("role", "master"), ("health", "online")] {
                encode::bulk_str(out, k);
                encode::bulk_str(out, v);
            }
            encode::bulk_str(out, "replication-offset");
            encode::integer(out, 0);
        }
    }

    /// `CLUSTER NODES`: Redis's line format, one master per node.
    pub fn nodes_text(&self) -> String {
        let mut text = String::new();
        for node in self.nodes() {
            let flags = if node.myself {
                "myself,master"
            } else {
                "master"
            };
            let _ = write!(
                text,
                "{} {}@0 {flags} - 0 0 0 connected",
                node.id,
                node.address()
            );
            for &(lo, hi) in &node.ranges {
                if lo == hi {
                    let _ = write!(text, " {lo}");
                } else {
                    let _ = write!(text, " {lo}-{hi}");
                }
            }
            text.push('\n');
        }
        text
    }

    /// `CLUSTER INFO`: `cluster_state:ok` once every slot is announced
    /// (owned and loaded) by a live node.
    pub fn info_text(&self) -> String {
        let nodes = self.nodes();
        let assigned = self.slots_announced();
        let state = if assigned == usize::from(SLOTS) {
            "ok"
        } else {
            "fail"
        };
        let size = nodes.iter().filter(|n| !n.ranges.is_empty()).count();
        let epoch = self.max_epoch();
        format!(
            "cluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\ncluster_size:{size}\r\ncluster_current_epoch:{epoch}\r\ncluster_my_epoch:{epoch}\r\ncluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n",
            nodes.len()
        )
    }

    /// The `INFO cluster` lines (after `cluster_enabled:1`).
    pub fn write_info(&self, s: &mut String) {
        let (serving, loading, leaving) = self.counts();
        let _ = write!(
            s,
            "cluster_node_id:{}\r\ncluster_announce:{}:{}\r\ncluster_known_nodes:{}\r\ncluster_slots_owned:{}\r\ncluster_slots_serving:{serving}\r\ncluster_slots_loading:{loading}\r\ncluster_slots_leaving:{leaving}\r\ncluster_my_epoch:{}\r\ncluster_leases_valid:{}\r\ncluster_lease_ms:{}\r\ncluster_redis_watermark:{}\r\n",
            self.node.id,
            self.announce.0,
            self.announce.1,
            self.known_nodes(),
            serving + loading + leaving,
            self.max_epoch(),
            u8::from(self.leases_valid()),
            self.lease_ms,
            self.watermark.load(Ordering::Relaxed),
        );
        for (name, n) in self.stats.counters() {
            let _ = write!(s, "cluster_{name}:{n}\r\n");
        }
        let last_load_ms = self.stats.last_load_ms.load(Ordering::Relaxed);
        let _ = write!(s, "cluster_last_load_ms:{last_load_ms}\r\n");
    }

    /// Live nodes, this one included.
    fn known_nodes(&self) -> usize {
        let view = self.view.read();
        1 + view
            .nodes
            .iter()
            .filter(|n| !n.myself && n.id != self.node.id)
            .count()
    }

    /// Sets the cluster gauges and counters (before `/metrics` renders).
    pub fn export_metrics(&self) {
        let (serving, loading, leaving) = self.counts();
        gauge!("creditd_cluster_slots_owned").set((serving + loading + leaving) as f64);
        gauge!("creditd_cluster_slots_loading").set(loading as f64);
        gauge!("creditd_cluster_slots_leaving").set(leaving as f64);
        gauge!("creditd_cluster_leases_valid").set(u8::from(self.leases_valid()) as f64);
        gauge!("creditd_cluster_known_nodes").set(self.known_nodes() as f64);
        for (name, n) in self.stats.counters() {
            counter!(format!("creditd_cluster_{name}_total")).absolute(n);
        }
        let last_load_ms = self.stats.last_load_ms.load(Ordering::Relaxed);
        gauge!("creditd_cluster_last_load_seconds").set(last_load_ms as f64 / 1e3);
    }
}
