//! Who is live in the cluster and which slots each announces: what MOVED,
//! `CLUSTER SLOTS` and the share of slots each node should own come from.
//!
//! Every node keeps a heartbeat key in Redis, `creditd:node:<id>` =
//! `<host> <port> <slot ranges>`, expiring after one lease length; a node
//! whose key is gone is dead (its slot leases lapse at the same time). The
//! announced ranges are what the node owns as it last said; the leases in
//! Redis stay the authority, so a stale view costs a redirect, never a
//! second owner.

use creditd_engine::slot::SLOTS;

const NONE: u16 = u16::MAX;

/// One live node as the view knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: String,
    pub host: String,
    pub port: u16,
    /// Owned slots as inclusive ranges, ascending.
    pub ranges: Vec<(u16, u16)>,
    pub myself: bool,
}

impl NodeEntry {
    /// The heartbeat value: `<host> <port> <ranges>`.
    pub fn heartbeat(host: &str, port: u16, ranges: &[(u16, u16)]) -> String {
        format!("{host} {port} {}", ranges_text(ranges))
    }

    /// Reads a heartbeat value (None: not one).
    pub fn parse(id: &str, value: &str) -> Option<NodeEntry> {
        let mut parts = value.split(' ');
        let host = parts.next()?.to_string();
        let port = parts.next()?.parse().ok()?;
        let ranges = parse_ranges(parts.next().unwrap_or(""))?;
        Some(NodeEntry {
            id: id.to_string(),
            host,
            port,
            ranges,
            myself: false,
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
}

impl Default for View {
    fn default() -> View {
        View {
            nodes: Vec::new(),
            owner: vec![NONE; usize::from(SLOTS)],
        }
    }
}

impl View {
    /// A view of `nodes`; where two announce one slot (one of them is
    /// behind), the first in id order is named until they agree.
    pub fn new(mut nodes: Vec<NodeEntry>) -> View {
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
        View { nodes, owner }
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

    /// The live node that should own `slot`: the 16384 slots split into
    /// as many contiguous, even ranges as there are live nodes, in id order.
    pub fn share_of(&self, slot: u16) -> Option<&NodeEntry> {
        if self.nodes.is_empty() {
            return None;
        }
        let n = self.nodes.len();
        self.nodes.get(usize::from(slot) * n / usize::from(SLOTS))
    }

    /// Every slot is announced by a live node.
    pub fn covers_all(&self) -> bool {
        self.owner.iter().all(|&o| o != NONE)
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.nodes.iter().any(|n| n.id == id)
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
        let value = NodeEntry::heartbeat("127.0.0.1", 7001, &ranges);
        assert_eq!(value, "127.0.0.1 7001 0-2,7,9-10");
        let node = NodeEntry::parse("b", &value).unwrap();
        assert_eq!((node.ranges.clone(), node.slot_count()), (ranges, 6));
        assert!(NodeEntry::parse("x", "h 1 5-3").is_none());
        let empty = NodeEntry::parse("c", "h 2 -").unwrap();
        let view = View::new(vec![node, empty]);
        assert_eq!(view.owner_address(9).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(view.owner(3), None);
        assert_eq!(view.share_of(0).unwrap().id, "b");
        assert_eq!(view.share_of(8191).unwrap().id, "b");
        assert_eq!(view.share_of(8192).unwrap().id, "c");
        assert_eq!(view.share_of(SLOTS - 1).unwrap().id, "c");
    }
}
