//! Who is live in the cluster and which slots each announces: what MOVED,
//! `CLUSTER SLOTS` and the share of slots each node should own come from.
//!
//! Every node keeps its lease in Redis, `creditd:node:<id>` =
//! `<incarnation> <host> <port> <slot ranges> [leaving]`, expiring after one
//! lease length; a node whose lease is gone is dead (it stopped serving
//! before its lease lapsed). The announced ranges are what the node owns as
//! it last said; the slots' fences in Redis stay the authority, so a stale
//! view costs a redirect or a failed claim, never a second writer.

use creditd_engine::slot::SLOTS;

const NONE: u16 = u16::MAX;

/// Slots move between nodes in blocks of this many: 1024 blocks, so shares
/// are even within a few percent and a node's slots form a few hundred
/// ranges at most.
pub const BLOCK_SLOTS: usize = 16;
pub const BLOCKS: usize = SLOTS as usize / BLOCK_SLOTS;

/// Rendezvous hashing: each block goes to the live node with the highest
/// weight for it. When a node dies only its blocks move, spread evenly over
/// the survivors, and it gets the same ones back when it rejoins; a node
/// that joins takes an even part from each. Every node computes the same
/// weights (FNV-1a of the id, mixed with the block by SplitMix64).
fn weight(node_id: &str, block: usize) -> u64 {
    let id = node_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut z = id ^ (block as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One live node as the view knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: String,
    /// This process's run of the node (new at every start and rejoin).
    pub incarnation: String,
    pub host: String,
    pub port: u16,
    /// Owned slots as inclusive ranges, ascending.
    pub ranges: Vec<(u16, u16)>,
    pub myself: bool,
    /// Stopping (SIGTERM): it hands its slots over and takes no share.
    pub leaving: bool,
}

impl NodeEntry {
    /// The lease value: `<incarnation> <host> <port> <ranges>`, then
    /// `leaving` while the node hands everything over.
    pub fn heartbeat(
        incarnation: &str,
        host: &str,
        port: u16,
        ranges: &[(u16, u16)],
        leaving: bool,
    ) -> String {
        let flag = if leaving { " leaving" } else { "" };
        format!("{incarnation} {host} {port} {}{flag}", ranges_text(ranges))
    }

    /// Reads a heartbeat value (None: not one).
    pub fn parse(id: &str, value: &str) -> Option<NodeEntry> {
        let mut parts = value.split(' ');
        let incarnation = parts.next()?.to_string();
        let host = parts.next()?.to_string();
        let port = parts.next()?.parse().ok()?;
        let ranges = parse_ranges(parts.next().unwrap_or(""))?;
        let leaving = parts.next() == Some("leaving");
        Some(NodeEntry {
            id: id.to_string(),
            incarnation,
            host,
            port,
            ranges,
            myself: false,
            leaving,
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn slot_count(&self) -> usize {
        self.ranges
            .iter()
            .map(|(lo, hi)| usize::from(hi - lo) + 1)
            .sum()
    }
}

/// Live nodes (sorted by id) and the announced owner of each slot.
#[derive(Clone, Debug)]
pub struct View {
    pub nodes: Vec<NodeEntry>,
    owner: Vec<u16>,
    /// Per block of [`BLOCK_SLOTS`] slots, the index of the node whose
    /// share it is ([`NONE`]: no node takes a share).
    share: Vec<u16>,
}

impl Default for View {
    fn default() -> View {
        View {
            nodes: Vec::new(),
            owner: vec![NONE; usize::from(SLOTS)],
            share: vec![NONE; BLOCKS],
        }
    }
}

impl View {
    /// A view of `nodes`; where two announce one slot (one of them is
    /// behind), the first in id order is named until they agree.
    pub fn new(mut nodes: Vec<NodeEntry>) -> View {
        assert!(
            nodes.len() < usize::from(NONE),
            "node indices fit below NONE"
        );
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        let mut owner = vec![NONE; usize::from(SLOTS)];
        for (i, node) in nodes.iter().enumerate() {
            for &(lo, hi) in &node.ranges {
                for s in lo..=hi.min(SLOTS - 1) {
                    if owner[usize::from(s)] == NONE {
                        owner[usize::from(s)] = i as u16;
                    }
                }
            }
        }
        let share = (0..BLOCKS)
            .map(|block| {
                nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| !n.leaving)
                    .max_by_key(|(_, n)| weight(&n.id, block))
                    .map_or(NONE, |(i, _)| i as u16)
            })
            .collect();
        View {
            nodes,
            owner,
            share,
        }
    }

    /// The node announcing `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&NodeEntry> {
        match self.owner[usize::from(slot)] {
            NONE => None,
            i => self.nodes.get(usize::from(i)),
        }
    }

    pub fn owner_address(&self, slot: u16) -> Option<String> {
        self.owner(slot).map(NodeEntry::address)
    }

    /// Where a client is sent for `slot`: the node announcing it, else the
    /// node whose share it is (it is taking the slot over and answers
    /// `-TRYAGAIN` until it serves it), as Redis Cluster keeps a moving slot
    /// listed.
    pub fn route_to(&self, slot: u16) -> Option<&NodeEntry> {
        self.owner(slot).or_else(|| self.share_of(slot))
    }

    /// The live node (not leaving) that should own `slot`.
    pub fn share_of(&self, slot: u16) -> Option<&NodeEntry> {
        match self.share[usize::from(slot) / BLOCK_SLOTS] {
            NONE => None,
            i => self.nodes.get(usize::from(i)),
        }
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.nodes.iter().any(|n| n.id == id)
    }

    /// The incarnations of the live nodes: a slot fenced by one of them
    /// may not be claimed.
    pub fn live_incarnations(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.incarnation.clone()).collect()
    }
}

/// Ascending slots as inclusive ranges.
pub fn ranges_of(slots: &[u16]) -> Vec<(u16, u16)> {
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for &s in slots {
        match ranges.last_mut() {
            Some((_, hi)) if *hi + 1 == s => *hi = s,
            _ => ranges.push((s, s)),
        }
    }
    ranges
}

/// `0-5460,5462` (empty: `-`).
pub fn ranges_text(ranges: &[(u16, u16)]) -> String {
    if ranges.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    parts.join(",")
}

fn parse_ranges(text: &str) -> Option<Vec<(u16, u16)>> {
    if text == "-" || text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi): (u16, u16) = (lo.parse().ok()?, hi.parse().ok()?);
            (lo <= hi && hi < SLOTS).then_some((lo, hi))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_round_trip_and_shares_are_even() {
        let ranges = ranges_of(&[0, 1, 2, 7, 9, 10]);
        assert_eq!(ranges, vec![(0, 2), (7, 7), (9, 10)]);
        let value = NodeEntry::heartbeat("9f", "127.0.0.1", 7001, &ranges, false);
        assert_eq!(value, "9f 127.0.0.1 7001 0-2,7,9-10");
        let node = NodeEntry::parse("b", &value).unwrap();
        assert_eq!((node.ranges.clone(), node.slot_count()), (ranges, 6));
        assert_eq!(node.incarnation, "9f");
        assert!(NodeEntry::parse("x", "1 h 1 5-3").is_none());
        let empty = NodeEntry::parse("c", "2 h 2 -").unwrap();
        let leaving = NodeEntry::parse("d", &NodeEntry::heartbeat("3", "h", 3, &[], true)).unwrap();
        assert!(leaving.leaving && !empty.leaving);
        let view = View::new(vec![node, empty, leaving]);
        assert_eq!(view.owner_address(9).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(view.owner(3), None);
        assert!((0..SLOTS).all(|s| view.share_of(s).is_some_and(|n| n.id != "d")));
    }

    fn entry(id: &str) -> NodeEntry {
        NodeEntry::parse(id, "1 h 1 -").unwrap()
    }

    fn shares(view: &View) -> Vec<String> {
        (0..SLOTS)
            .map(|s| view.share_of(s).unwrap().id.clone())
            .collect()
    }

    #[test]
    fn shares_are_even_and_only_a_dead_nodes_slots_move() {
        let ids = ["7f3a", "0b21", "c9d4"];
        let three = shares(&View::new(ids.iter().map(|i| entry(i)).collect()));
        for id in ids {
            let n = three.iter().filter(|s| *s == id).count();
            assert!((5000..5900).contains(&n), "{id}: {n} slots");
        }
        let two = shares(&View::new(vec![entry(ids[0]), entry(ids[2])]));
        for (before, after) in three.iter().zip(&two) {
            if before != ids[1] {
                assert_eq!(before, after, "a survivor's slot moved");
            }
        }
        let moved_to_first = (0..usize::from(SLOTS))
            .filter(|&s| three[s] == ids[1] && two[s] == ids[0])
            .count();
        let dead = three.iter().filter(|s| *s == ids[1]).count();
        assert!(
            moved_to_first * 3 > dead && moved_to_first * 3 < dead * 2,
            "{moved_to_first} of {dead}"
        );
    }
}
