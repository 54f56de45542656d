//! Where cluster mode keeps things in Redis.
//!
//! Every key of a hash slot carries that slot's hash tag, a short string
//! whose own Redis slot is the slot: `creditd:{<tag>}:lease`, `...:epoch`,
//! `...:ids` and `...:acct:<account id>`. So an account's state, its slot's
//! lease and epoch, and the slot's index of accounts all live on one Redis
//! Cluster node, in one Redis slot, where one script can check the lease and
//! write the account atomically. The account's own `{tags}` do not matter:
//! the key's first `{...}` is ours.
//!
//! Node keys (`creditd:node:<node id>`) and the member set (`creditd:nodes`)
//! carry no tag: they live wherever Redis hashes them.

use creditd_engine::slot::{slot_of, SLOTS};
use std::sync::OnceLock;

/// The set of every node id that ever joined.
pub const MEMBERS_KEY: &str = "creditd:nodes";

/// A node's heartbeat key: `<announce> <slot ranges>`, expiring after the lease.
pub fn node_key(node_id: &str) -> String {
    format!("creditd:node:{node_id}")
}

/// The hash tag of each slot: the shortest decimal string of the first
/// ones tried (0, 1, 2, ...) whose Redis slot it is. Found once (about
/// 100k CRC16s) and kept.
pub fn tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags: Vec<Option<String>> = vec![None; usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        let mut n: u64 = 0;
        while missing > 0 {
            let text = n.to_string();
            let s = usize::from(slot_of(text.as_bytes()));
            if tags[s].is_none() {
                tags[s] = Some(text);
                missing -= 1;
            }
            n += 1;
        }
        tags.into_iter()
            .map(|t| t.expect("every slot found"))
            .collect()
    });
    &tags[usize::from(slot)]
}

fn slot_key(slot: u16, what: &str) -> String {
    format!("creditd:{{{}}}:{what}", tag(slot))
}

/// The slot's lease: `<node id> <epoch> <pid> <host>`.
pub fn lease_key(slot: u16) -> String {
    slot_key(slot, "lease")
}

/// The slot's epoch counter: every acquisition takes the next epoch.
pub fn epoch_key(slot: u16) -> String {
    slot_key(slot, "epoch")
}

/// The set of account ids with state in the slot (what loading reads).
pub fn index_key(slot: u16) -> String {
    slot_key(slot, "ids")
}

/// An account's hash.
pub fn account_key(slot: u16, account: &[u8]) -> Vec<u8> {
    let mut key = format!("creditd:{{{}}}:acct:", tag(slot)).into_bytes();
    key.extend_from_slice(account);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_slot_hashes_to_the_slot() {
        for slot in [0, 1, 866, 5461, 12182, SLOTS - 1] {
            assert_eq!(slot_of(lease_key(slot).as_bytes()), slot);
            assert_eq!(slot_of(epoch_key(slot).as_bytes()), slot);
            assert_eq!(slot_of(index_key(slot).as_bytes()), slot);
            assert_eq!(slot_of(&account_key(slot, b"x{y}z")), slot);
        }
        assert!((0..SLOTS).all(|s| slot_of(tag(s).as_bytes()) == s));
        assert!((0..SLOTS).all(|s| tag(s).len() <= 6));
    }
}
