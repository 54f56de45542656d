//! Fault injection: the real writer thread against a disk that fails.
//!
//! Each seed appends records (and starts new segments now and then) while
//! writes fail with EIO or ENOSPC, store only part of a frame, segment
//! creation fails, and, rarely, an fsync fails (fatal by design). Then the
//! journal is dropped, as a crash or a stop would, and the data dir is
//! recovered on a healthy disk. Whatever the faults, recovery must succeed
//! (a torn tail is cut, nothing is called corrupt) and return every record
//! that was ever reported durable, in order, each with its own payload.
//! Seeds: `CREDITD_FAULT_SEEDS` (default 48).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// xorshift64*: small, seedable, good enough to pick faults.
struct Rng(AtomicU64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1))
    }

    fn next(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

fn payload(seq: u64) -> Vec<u8> {
    format!("record {seq} ")
        .repeat(1 + (seq % 7) as usize)
        .into_bytes()
}

fn faults(rng: Arc<Rng>) -> FaultHook {
    Box::new(move |op| match op {
        DiskOp::Write { bytes } => {
            if rng.chance(40) {
                Some(Fault::Fail(io::ErrorKind::StorageFull))
            } else if rng.chance(40) {
                Some(Fault::Fail(io::ErrorKind::Other))
            } else if rng.chance(40) {
                Some(Fault::Short((rng.next() as usize) % bytes.max(1)))
            } else {
                None
            }
        }
        DiskOp::Create => rng
            .chance(150)
            .then_some(Fault::Fail(io::ErrorKind::StorageFull)),
        DiskOp::Sync => rng.chance(8).then_some(Fault::Fail(io::ErrorKind::Other)),
    })
}

/// One run; returns (records reported durable, records recovered).
fn run(dir: &Path, seed: u64) -> (u64, u64) {
    let rng = Arc::new(Rng::new(seed));
    let mode = match seed % 3 {
        0 => FsyncMode::Always,
        1 => FsyncMode::EverySec,
        _ => FsyncMode::No,
    };
    let durable_seen = Arc::new(AtomicU64::new(0));
    let seen = durable_seen.clone();
    let (journal, report) = Journal::open(
        dir,
        mode,
        Box::new(move |seq| {
            let before = seen.fetch_max(seq, Ordering::Relaxed);
            assert!(seq >= before, "durable seqs never go back");
        }),
        |_, _| Ok(()),
        |_, _| Ok(()),
    )
    .expect("open a fresh journal");
    assert_eq!(report.last_seq, 0);
    journal.inject_faults(faults(rng.clone()));
    // Half the seeds write inline, as the server's connections do: their
    // failed writes go back to the writer thread, which retries them.
    let inline = seed % 2 == 1;
    journal.set_inline_writes(inline);
    let records = 50 + rng.next() % 150;
    for seq in 1..=records {
        let bytes = payload(seq);
        assert_eq!(
            journal.append(&mut |buf| buf.extend_from_slice(&bytes)),
            seq
        );
        if inline && rng.chance(2) && !journal.write_inline(seq) {
            journal.wake_writer();
        }
        if rng.chance(30) {
            // Fails only once the writer has stopped on an fsync error.
            let _ = journal.rotate();
        }
        if rng.chance(100) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Let the writer get through its retries (or stop on a fatal fault).
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal.durable_seq() < records
        && journal
            .write_problem()
            .is_none_or(|p| !p.contains("stopped"))
    {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the writer never caught up"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let durable = journal.durable_seq();
    assert_eq!(durable, durable_seen.load(Ordering::Relaxed));
    let stopped = journal.stats().writer_failed;
    assert!(
        stopped || durable == records,
        "seed {seed}: a healthy writer writes everything"
    );
    drop(journal);

    let mut next = 1;
    let (_journal, report) = Journal::open(
        dir,
        FsyncMode::No,
        Box::new(|_| {}),
        |_, _| Err("no snapshot was written".into()),
        |seq, bytes| {
            if seq != next {
                return Err(format!("seq {seq} where {next} was expected"));
            }
            if bytes != payload(seq) {
                return Err(format!("seq {seq} has another record's bytes"));
            }
            next += 1;
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
    (durable, report.last_seq)
}

#[test]
fn every_record_reported_durable_survives_any_mix_of_disk_faults() {
    let seeds: u64 = std::env::var("CREDITD_FAULT_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    for seed in 0..seeds {
        let dir =
            std::env::temp_dir().join(format!("creditd-faults-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (durable, recovered) = run(&dir, seed);
        assert!(
            recovered >= durable,
            "seed {seed}: {durable} records were reported durable, {recovered} recovered"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
