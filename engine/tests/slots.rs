//! Accounts grouped by Redis Cluster hash slot: every account of one slot
//! can be listed, dropped and loaded again together, and the rest stay.

use creditd_engine::bucket::BucketKind;
use creditd_engine::clock::{Clock, TestClock};
use creditd_engine::config::Config;
use creditd_engine::id::Bytes;
use creditd_engine::slot::slot_of;
use creditd_engine::{Charge, Engine, Expiry, MemoryJournal, Mutation};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn engine(clock: &Arc<TestClock>) -> Engine {
    let journal = Arc::new(MemoryJournal::discarding());
    Engine::new(Config::builtin(), clock.clone() as Arc<dyn Clock>, journal)
}

fn fund(e: &Engine, account: &str) {
    let grant = Mutation::Grant {
        grant_id: Bytes(b"g"),
        amount: 100,
        kind: BucketKind::Prepaid,
        expiry: Expiry::Never,
        priority: 50,
    };
    e.execute(account.as_bytes(), &grant).unwrap();
    let hold = Mutation::Reserve {
        hold_id: Bytes(b"h"),
        charge: Charge::Amount(30),
        ttl_ms: Some(60_000),
        member: None,
    };
    e.execute(account.as_bytes(), &hold).unwrap();
}

#[test]
fn a_slot_is_listed_dropped_and_loaded_together() {
    let clock = Arc::new(TestClock::new(1_700_000_000_000));
    let e = engine(&clock);
    // Accounts spread over many slots, plus three that share one by a tag.
    let mut names: Vec<String> = (0..2_000).map(|n| format!("acct:{n}")).collect();
    names.extend(["{team}:a", "{team}:b", "team"].map(String::from));
    let mut by_slot: BTreeMap<u16, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for name in &names {
        fund(&e, name);
        by_slot
            .entry(slot_of(name.as_bytes()))
            .or_default()
            .insert(name.as_bytes().to_vec());
    }
    assert_eq!(slot_of(b"{team}:a"), slot_of(b"team"));
    let team = slot_of(b"team");
    for (slot, expected) in [(team, &by_slot[&team])]
        .into_iter()
        .chain(by_slot.iter().map(|(s, e)| (*s, e)).take(50))
    {
        let listed: BTreeSet<Vec<u8>> =
            e.slot_accounts(slot).iter().map(|id| id.to_vec()).collect();
        assert_eq!(&listed, expected, "slot {slot}");
    }
    assert!(e.slot_accounts(team).len() >= 3);

    // Keep the team slot's state, drop it, check the rest is untouched.
    let kept: Vec<_> = by_slot[&team]
        .iter()
        .map(|id| (id.clone(), e.account(id), e.read(id, |a| a.clone()).0))
        .collect();
    let before = e.stats();
    let dropped = e.drop_slot(team);
    assert_eq!(dropped, by_slot[&team].len());
    let after = e.stats();
    assert_eq!(after.accounts, before.accounts - dropped as u64);
    assert_eq!(after.open_holds, before.open_holds - dropped as u64);
    assert!(e.slot_accounts(team).is_empty());
    assert_eq!(e.balance(b"team").granted, 0, "gone from memory");
    assert_eq!(e.balance(b"acct:1").available, 70, "other slots stay");
    e.check_all().unwrap();

    // Load it again: the same state, holds still counted and expiring.
    for (id, _, state) in &kept {
        e.restore_account(id, state.clone()).unwrap();
    }
    assert_eq!(e.stats(), before);
    for (id, view, _) in &kept {
        assert_eq!(&e.account(id), view);
    }
    clock.advance(60_000);
    assert!(e.sweep(usize::MAX) >= names.len());
    assert_eq!(e.stats().open_holds, 0, "restored holds expire too");
    assert_eq!(e.balance(b"{team}:a").available, 100);

    // Many slots at once, each shard visited once: exactly their accounts go.
    let some: Vec<u16> = by_slot.keys().copied().take(3).collect();
    let expected: usize = some.iter().map(|s| by_slot[s].len()).sum();
    let before = e.stats().accounts;
    assert_eq!(e.drop_slots(&some), expected);
    assert_eq!(e.stats().accounts, before - expected as u64);
    for (slot, ids) in &by_slot {
        let left = e.slot_accounts(*slot).len();
        assert_eq!(
            left,
            if some.contains(slot) { 0 } else { ids.len() },
            "slot {slot}"
        );
    }
    e.check_all().unwrap();
}
