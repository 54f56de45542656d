//! Recovery time and journal size: builds a data dir with N accounts, each
//! granted credits and holding one open hold (through the real journal),
//! then measures a cold restart from the journal alone, and from a snapshot.
//!
//! `cargo run --release -p creditd-bench --bin recovery -- [accounts] [dir]`

use creditd::persist::{self, JournalSlot};
use creditd_bench::id_into;
use creditd_engine::clock::SystemClock;
use creditd_engine::command::{Charge, Expiry, Mutation};
use creditd_engine::config::Config;
use creditd_engine::id::Bytes;
use creditd_engine::Engine;
use creditd_journal::FsyncMode;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn new_engine() -> (Arc<Engine>, Arc<JournalSlot>) {
    let slot = Arc::new(JournalSlot::default());
    let engine = Arc::new(Engine::new(
        Config::builtin(),
        Arc::new(SystemClock),
        slot.clone(),
    ));
    (engine, slot)
}

fn dir_bytes(dir: &PathBuf) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn main() {
    let accounts: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(
        std::env::args()
            .nth(2)
            .unwrap_or_else(|| "/tmp/creditd-recovery-bench".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let (tx, _rx) = tokio::sync::watch::channel(0u64);

    // Build: GRANT + RESERVE (TTL 24 h, so holds stay open) per account.
    let (engine, slot) = new_engine();
    let r = persist::recover(&engine, &dir, FsyncMode::No, tx.clone(), None).unwrap();
    slot.set(r.journal.clone());
    let started = Instant::now();
    let mut a = [0u8; 32];
    for n in 0..accounts {
        let account = id_into(&mut a, b"acct:", n);
        let grant = Mutation::Grant {
            grant_id: Bytes(b"pack-1"),
            amount: 1_000,
            kind: creditd_engine::bucket::BucketKind::Prepaid,
            expiry: Expiry::Never,
            priority: 50,
        };
        engine.execute(account, &grant).unwrap();
        let reserve = Mutation::Reserve {
            hold_id: Bytes(b"job-1"),
            charge: Charge::Amount(100),
            ttl_ms: Some(86_400_000),
            member: None,
        };
        engine.execute(account, &reserve).unwrap();
    }
    let build_s = started.elapsed().as_secs_f64();
    r.journal.shutdown().unwrap();
    let stats = r.journal.stats();
    println!(
        "built {accounts} accounts with an open hold: {} records in {build_s:.1} s, journal {} bytes = {:.1} bytes/record",
        stats.records_written,
        stats.bytes_written,
        stats.bytes_written as f64 / stats.records_written as f64
    );
    drop(engine);

    // Cold restart from the journal alone.
    let (engine, _slot) = new_engine();
    let started = Instant::now();
    let r = persist::recover(&engine, &dir, FsyncMode::No, tx.clone(), None).unwrap();
    let journal_s = started.elapsed().as_secs_f64();
    let es = engine.stats();
    assert_eq!(es.accounts, accounts);
    assert_eq!(es.open_holds, accounts);
    println!(
        "recovery from the journal: {journal_s:.2} s ({} records replayed; {} accounts, {} open holds, all checked)",
        r.report.records_replayed, es.accounts, es.open_holds
    );

    // Snapshot, then cold restart from the snapshot.
    let started = Instant::now();
    let (_, snapshot_bytes) = persist::take_snapshot(&engine, &r.journal).unwrap();
    let snapshot_s = started.elapsed().as_secs_f64();
    r.journal.shutdown().unwrap();
    drop(engine);
    println!(
        "snapshot: {snapshot_bytes} bytes ({:.0} bytes/account) written in {snapshot_s:.2} s; data dir now {} bytes",
        snapshot_bytes as f64 / accounts as f64,
        dir_bytes(&dir)
    );
    let (engine, _slot) = new_engine();
    let started = Instant::now();
    let r = persist::recover(&engine, &dir, FsyncMode::No, tx, None).unwrap();
    let snap_s = started.elapsed().as_secs_f64();
    assert_eq!(engine.stats().open_holds, accounts);
    println!(
        "recovery from the snapshot: {snap_s:.2} s ({} accounts restored, {} records replayed)",
        r.snapshot_accounts, r.report.records_replayed
    );
    let _ = std::fs::remove_dir_all(&dir);
}
