use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::store::segment_path;
use super::*;

/// A unique dir under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "creditd-journal-{name}-{}-{unique}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

type Snapshot = Option<(u64, Vec<u8>)>;
type Records = Vec<(u64, Vec<u8>)>;

fn open_with(
    dir: &Path,
    mode: FsyncMode,
    on_durable: Box<dyn Fn(u64) + Send + Sync>,
) -> Result<(Journal, OpenReport, Snapshot, Records), JournalError> {
    let mut snapshot = None;
    let mut records = Vec::new();
    let (journal, report) = Journal::open(
        dir,
        mode,
        on_durable,
        |seq, body| {
            snapshot = Some((seq, body.to_vec()));
            Ok(())
        },
        |seq, payload| {
            records.push((seq, payload.to_vec()));
            Ok(())
        },
    )?;
    Ok((journal, report, snapshot, records))
}

fn open(dir: &Path) -> Result<(Journal, OpenReport, Snapshot, Records), JournalError> {
    open_with(dir, FsyncMode::No, Box::new(|_| {}))
}

/// Variable-length payload that names its record.
fn payload(i: u64) -> Vec<u8> {
    format!("record {i};")
        .repeat(1 + (i % 5) as usize)
        .into_bytes()
}

fn append(journal: &Journal, bytes: &[u8]) -> u64 {
    journal.append(&mut |buf| buf.extend_from_slice(bytes))
}

fn wait_durable(journal: &Journal, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while journal.durable_seq() < seq {
        assert!(Instant::now() < deadline, "seq {seq} never became durable");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Writes records 1..=count into a fresh journal and returns the frame start offsets.
fn write_records(dir: &Path, count: u64) -> Vec<u64> {
    let (journal, ..) = open(dir).unwrap();
    let mut offsets = Vec::new();
    let mut offset = 0;
    for i in 1..=count {
        offsets.push(offset);
        offset += (FRAME_HEADER_BYTES + payload(i).len()) as u64;
        assert_eq!(append(&journal, &payload(i)), i);
    }
    journal.shutdown().unwrap();
    offsets
}

#[test]
fn fsync_mode_parses() {
    for mode in [FsyncMode::Always, FsyncMode::EverySec, FsyncMode::No] {
        assert_eq!(mode.as_str().parse::<FsyncMode>(), Ok(mode));
    }
    assert!("sometimes".parse::<FsyncMode>().is_err());
}

#[test]
fn frame_round_trips_and_rejects_damage() {
    let mut bytes = Vec::new();
    encode_frame(7, b"hello", &mut bytes);
    assert_eq!(
        decode_frame(&bytes),
        Decoded::Frame {
            seq: 7,
            payload: b"hello",
            frame_bytes: bytes.len()
        }
    );
    assert_eq!(decode_frame(&bytes[..bytes.len() - 1]), Decoded::Incomplete);
    bytes[FRAME_HEADER_BYTES] ^= 1;
    assert_eq!(decode_frame(&bytes), Decoded::Bad("checksum mismatch"));
}

#[test]
fn concurrent_appends_replay_in_seq_order() {
    let dir = TempDir::new("concurrent");
    let (journal, ..) = open_with(&dir.0, FsyncMode::EverySec, Box::new(|_| {})).unwrap();
    let written: Vec<(u64, Vec<u8>)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4u64)
            .map(|thread| {
                let journal = &journal;
                scope.spawn(move || {
                    (0..2_500u64)
                        .map(|i| {
                            let bytes = payload(thread * 1_000_000 + i);
                            (append(journal, &bytes), bytes)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect()
    });
    wait_durable(&journal, 10_000);
    assert_eq!(journal.stats().records_written, 10_000);
    journal.shutdown().unwrap();
    drop(journal);
    let expected: HashMap<u64, Vec<u8>> = written.into_iter().collect();
    let (_journal, report, snapshot, records) = open(&dir.0).unwrap();
    assert_eq!(
        (
            report.last_seq,
            report.records_replayed,
            report.torn_tail,
            snapshot
        ),
        (10_000, 10_000, None, None)
    );
    for (index, (seq, bytes)) in records.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1);
        assert_eq!(bytes, &expected[seq]);
    }
}

#[test]
fn torn_tail_at_every_offset_is_cut_back() {
    let dir = TempDir::new("torn");
    let offsets = write_records(&dir.0, 10);
    let path = segment_path(&dir.0, 1);
    let original = fs::read(&path).unwrap();
    for cut in offsets[7]..original.len() as u64 {
        fs::write(&path, &original[..cut as usize]).unwrap();
        // Records whose frame ends at or before the cut survive; the next frame starts at `boundary`.
        let complete = offsets[1..].iter().filter(|&&end| end <= cut).count() as u64;
        let boundary = offsets[complete as usize];
        let (journal, report, _, records) = open(&dir.0).unwrap();
        assert_eq!(report.last_seq, complete, "cut at {cut}");
        assert_eq!(
            records,
            (1..=complete).map(|i| (i, payload(i))).collect::<Vec<_>>()
        );
        let torn = (cut != boundary).then(|| (path.clone(), boundary));
        assert_eq!(report.torn_tail, torn, "cut at {cut}");
        assert_eq!(fs::metadata(&path).unwrap().len(), boundary);
        assert_eq!(append(&journal, b"after"), complete + 1);
        journal.shutdown().unwrap();
        drop(journal);
        let (_journal, report, _, records) = open(&dir.0).unwrap();
        assert_eq!((report.last_seq, report.torn_tail), (complete + 1, None));
        assert_eq!(records.last().unwrap(), &(complete + 1, b"after".to_vec()));
    }
}

/// A frame another build wrote with another layout version: if this build
/// cut it off as a torn tail, acknowledged records would be lost.
#[test]
fn a_last_frame_of_another_layout_version_is_refused_not_cut() {
    let dir = TempDir::new("foreign");
    write_records(&dir.0, 3);
    let path = segment_path(&dir.0, 1);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len();
    let mut foreign = Vec::new();
    encode_frame(4, b"from a newer build", &mut foreign);
    // The same layout with the next version number, checksummed as written.
    foreign[1] = FRAME_VERSION + 1;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&foreign[1..14]),
        &foreign[FRAME_HEADER_BYTES..],
    );
    foreign[14..18].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode_frame(&foreign), Decoded::Foreign(FRAME_VERSION + 1));
    bytes.extend_from_slice(&foreign);
    fs::write(&path, &bytes).unwrap();
    let err = open(&dir.0).err().expect("refused").to_string();
    let named = format!("layout version {}", FRAME_VERSION + 1);
    assert!(err.contains(&named), "{err}");
    assert!(err.contains(&at.to_string()), "{err}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was cut");
}

#[test]
fn corruption_before_valid_frames_is_refused_with_offset() {
    let dir = TempDir::new("corrupt-middle");
    let offsets = write_records(&dir.0, 10);
    let path = segment_path(&dir.0, 1);
    let original = fs::read(&path).unwrap();
    // Every byte of the middle frame: header fields and payload are all covered.
    for at in offsets[4]..offsets[5] {
        let mut damaged = original.clone();
        damaged[at as usize] ^= 0x5A;
        fs::write(&path, &damaged).unwrap();
        let error = open(&dir.0).err().expect("damaged journal must not open");
        assert_eq!(
            (error.kind, &error.file, error.offset),
            (JournalErrorKind::Corrupt, &path, offsets[4])
        );
        assert!(error.to_string().starts_with(&format!(
            "{} at offset {}: ",
            path.display(),
            offsets[4]
        )));
        assert_eq!(
            fs::read(&path).unwrap(),
            damaged,
            "a refused journal is left untouched"
        );
    }
}

#[test]
fn corruption_in_a_non_last_segment_is_refused() {
    let dir = TempDir::new("corrupt-older");
    let (journal, ..) = open(&dir.0).unwrap();
    (1..=5).for_each(|i| assert_eq!(append(&journal, &payload(i)), i));
    assert_eq!(journal.rotate().unwrap(), 6);
    (6..=10).for_each(|i| assert_eq!(append(&journal, &payload(i)), i));
    journal.shutdown().unwrap();
    drop(journal);
    let older = segment_path(&dir.0, 1);
    let original = fs::read(&older).unwrap();
    let mut damaged = original.clone();
    *damaged.last_mut().unwrap() ^= 1; // The last frame: nothing valid follows in this file.
    fs::write(&older, &damaged).unwrap();
    let error = open(&dir.0)
        .err()
        .expect("damaged older segment must not open");
    assert_eq!(
        (error.kind, &error.file),
        (JournalErrorKind::Corrupt, &older)
    );
    fs::write(&older, &original[..original.len() - 1]).unwrap();
    assert_eq!(open(&dir.0).err().expect("torn older segment").file, older);
    fs::write(&older, &original).unwrap();
    assert_eq!(open(&dir.0).unwrap().1.last_seq, 10);
}

#[test]
fn snapshot_deletes_older_segments_and_replays_first() {
    let dir = TempDir::new("snapshot");
    let (journal, ..) = open(&dir.0).unwrap();
    (1..=5).for_each(|i| assert_eq!(append(&journal, &payload(i)), i));
    assert_eq!(journal.rotate().unwrap(), 6);
    assert_eq!(
        journal.rotate().unwrap(),
        6,
        "rotating an empty segment is a no-op"
    );
    (6..=8).for_each(|i| assert_eq!(append(&journal, &payload(i)), i));
    assert!(
        journal.write_snapshot(7, b"bad").is_err(),
        "7 does not start a segment"
    );
    journal.write_snapshot(6, b"state before 6").unwrap();
    assert!(!segment_path(&dir.0, 1).exists());
    assert!(segment_path(&dir.0, 6).exists());
    assert_eq!(journal.stats().segment_count, 1);
    (9..=10).for_each(|i| assert_eq!(append(&journal, &payload(i)), i));
    journal.shutdown().unwrap();
    drop(journal);
    let (journal, report, snapshot, records) = open(&dir.0).unwrap();
    assert_eq!(snapshot, Some((6, b"state before 6".to_vec())));
    assert_eq!(
        records,
        (6..=10).map(|i| (i, payload(i))).collect::<Vec<_>>()
    );
    assert_eq!((report.snapshot_seq, report.last_seq), (Some(6), 10));
    assert_eq!(journal.rotate().unwrap(), 11);
    journal.write_snapshot(11, b"state before 11").unwrap();
    journal.shutdown().unwrap();
    drop(journal);
    assert!(!store::snapshot_path(&dir.0, 6).exists());
    let (journal, report, snapshot, records) = open(&dir.0).unwrap();
    assert_eq!(
        (snapshot, records.len(), report.last_seq),
        (Some((11, b"state before 11".to_vec())), 0, 10)
    );
    assert_eq!(append(&journal, b"x"), 11);
    journal.shutdown().unwrap();
    drop(journal);
    // A damaged snapshot is skipped with a warning; without it records 1..10 are missing.
    let snapshot_file = store::snapshot_path(&dir.0, 11);
    let mut bytes = fs::read(&snapshot_file).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&snapshot_file, &bytes).unwrap();
    let error = open(&dir.0)
        .err()
        .expect("records before the segment are gone");
    assert!(error.message.contains("missing"), "{error}");
}

#[test]
fn on_durable_sees_increasing_seqs_up_to_the_last() {
    let dir = TempDir::new("durable");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let (journal, ..) = open_with(
        &dir.0,
        FsyncMode::EverySec,
        Box::new(move |seq| sink.lock().push(seq)),
    )
    .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| (0..500).for_each(|i| _ = append(&journal, &payload(i))));
        }
    });
    wait_durable(&journal, 1_000);
    let seen = seen.lock().clone();
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&1_000));
    assert!(journal.has_capacity());
    assert_eq!(journal.stats().pending_bytes, 0);
}

#[test]
fn always_mode_fsyncs_every_group() {
    let dir = TempDir::new("always");
    let (journal, ..) = open_with(&dir.0, FsyncMode::Always, Box::new(|_| {})).unwrap();
    for i in 1..=50 {
        append(&journal, &payload(i));
    }
    wait_durable(&journal, 50);
    let stats = journal.stats();
    // One fsync per group, and every group was fsynced before it was reported durable.
    assert!(stats.groups_written >= 1, "{stats:?}");
    assert_eq!(stats.fsyncs, stats.groups_written, "{stats:?}");
    assert_eq!(
        (stats.records_written, stats.fsync_mode, stats.writer_failed),
        (50, FsyncMode::Always, false)
    );
    let no_dir = TempDir::new("no-fsync");
    let (journal_no, ..) = open(&no_dir.0).unwrap();
    append(&journal_no, b"x");
    wait_durable(&journal_no, 1);
    assert_eq!(
        journal_no.stats().fsyncs,
        0,
        "mode no never fsyncs before shutdown"
    );
}

#[test]
fn segments_rotate_at_the_size_bound() {
    let dir = TempDir::new("size");
    let (journal, ..) = open(&dir.0).unwrap();
    let record = vec![7u8; 1 << 20];
    let count = SEGMENT_MAX_BYTES / (1 << 20) + 2;
    for _ in 0..count {
        append(&journal, &record);
    }
    wait_durable(&journal, count);
    assert_eq!(journal.stats().segment_count, 2);
    journal.shutdown().unwrap();
    drop(journal);
    let (_journal, report, _, records) = open(&dir.0).unwrap();
    assert_eq!((report.last_seq, records.len() as u64), (count, count));
    assert!(records.iter().all(|(_, bytes)| bytes == &record));
}

#[test]
fn journal_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Journal>();
}

fn open_min(dir: &Path, min_next_seq: u64) -> (Journal, OpenReport, Records) {
    let mut records = Vec::new();
    let (journal, report) = Journal::open_with(
        dir,
        FsyncMode::No,
        min_next_seq,
        Box::new(|_| {}),
        |_, _| Ok(()),
        |seq, payload| {
            records.push((seq, payload.to_vec()));
            Ok(())
        },
    )
    .unwrap();
    (journal, report, records)
}

#[test]
fn min_next_seq_continues_numbering_after_state_restored_elsewhere() {
    // An empty data dir: the first segment starts at min_next_seq, behind a gap marker.
    let dir = TempDir::new("min-next-seq");
    let (journal, report, records) = open_min(&dir.0, 100);
    assert_eq!((report.last_seq, records.len()), (99, 0));
    assert_eq!(
        journal.durable_seq(),
        99,
        "nothing below 100 waits for the disk"
    );
    assert_eq!(append(&journal, b"a"), 100);
    assert_eq!(append(&journal, b"b"), 101);
    journal.shutdown().unwrap();
    drop(journal);
    assert!(store::gap_path(&dir.0, 100).exists());
    let (journal, report, _, records) = open(&dir.0).unwrap();
    assert_eq!(report.last_seq, 101);
    assert_eq!(records, vec![(100, b"a".to_vec()), (101, b"b".to_vec())]);
    journal.shutdown().unwrap();
    drop(journal);

    // Records on disk, a lower or equal min_next_seq: no jump.
    let (journal, report, _) = open_min(&dir.0, 102);
    assert_eq!(report.last_seq, 101);
    assert_eq!(append(&journal, b"c"), 102);
    journal.shutdown().unwrap();
    drop(journal);

    // Records on disk that end before min_next_seq (a lost tail), with a torn last write: the
    // torn bytes are cut from the old segment and a new one starts after the jump.
    let old_segment = segment_path(&dir.0, 100);
    let mut torn = fs::read(&old_segment).unwrap();
    torn.extend_from_slice(&[1, 2, 3]);
    fs::write(&old_segment, &torn).unwrap();
    let (journal, report, records) = open_min(&dir.0, 500);
    assert_eq!((report.last_seq, records.len()), (499, 3));
    assert_eq!(append(&journal, b"d"), 500);
    journal.shutdown().unwrap();
    drop(journal);
    let (journal, report, _, records) = open(&dir.0).unwrap();
    assert_eq!(report.last_seq, 500);
    let seqs: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, vec![100, 101, 102, 500]);

    // A snapshot after the jump drops the segments and markers it covers.
    assert_eq!(journal.rotate().unwrap(), 501);
    journal.write_snapshot(501, b"state before 501").unwrap();
    assert!(!store::gap_path(&dir.0, 100).exists());
    assert!(!store::gap_path(&dir.0, 500).exists());
    assert_eq!(append(&journal, b"e"), 501);
    journal.shutdown().unwrap();
    drop(journal);
    let (journal, report, snapshot, records) = open(&dir.0).unwrap();
    assert_eq!(snapshot.map(|(seq, _)| seq), Some(501));
    assert_eq!((report.last_seq, records.len()), (501, 1));
    journal.shutdown().unwrap();
}

#[test]
fn a_jump_without_its_gap_marker_is_refused() {
    let dir = TempDir::new("gap-missing");
    let (journal, ..) = open_min(&dir.0, 10);
    assert_eq!(append(&journal, b"a"), 10);
    journal.shutdown().unwrap();
    drop(journal);
    fs::remove_file(store::gap_path(&dir.0, 10)).unwrap();
    let error = open(&dir.0).err().expect("records 1..9 are missing");
    assert!(error.message.contains("missing"), "{error}");
}

#[test]
fn a_slow_disk_turns_new_work_away_past_the_buffer_bound() {
    let dir = TempDir::new("slow");
    let (journal, ..) = open(&dir.0).unwrap();
    // The first write takes a while: appends pile up meanwhile.
    let first = std::sync::atomic::AtomicBool::new(true);
    journal.inject_faults(Box::new(move |op| {
        if matches!(op, DiskOp::Write { .. }) && first.swap(false, Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    }));
    let chunk = vec![7u8; 1 << 20];
    let mut seq = 0;
    while journal.has_capacity() {
        seq = append(&journal, &chunk);
        assert!(seq <= 80, "64 MiB waiting for the disk must turn work away");
    }
    assert!(journal.stats().pending_bytes >= BUFFER_MAX_BYTES);
    wait_durable(&journal, seq);
    assert!(journal.has_capacity());
}

#[test]
fn inline_writes_from_many_threads_keep_every_record_in_order() {
    let dir = TempDir::new("inline");
    let durable_seen = Arc::new(AtomicU64::new(0));
    let seen = durable_seen.clone();
    let (journal, ..) = open_with(
        &dir.0,
        FsyncMode::EverySec,
        Box::new(move |seq| {
            let before = seen.fetch_max(seq, Ordering::Relaxed);
            assert!(seq >= before, "durable seqs never go back");
        }),
    )
    .unwrap();
    journal.set_inline_writes(true);
    let journal = Arc::new(journal);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for i in 0..2_000u64 {
                    let bytes = payload(t * 10_000 + i);
                    let seq = journal.append(&mut |buf| buf.extend_from_slice(&bytes));
                    if i % 7 == 0 {
                        // Several records per write now and then, as a batch.
                        continue;
                    }
                    if !journal.write_inline(seq) {
                        journal.wake_writer();
                    }
                    wait_durable(&journal, seq);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_durable(&journal, 8_000);
    assert_eq!(durable_seen.load(Ordering::Relaxed), 8_000);
    let writes = journal.stats().groups_written;
    assert!(
        writes < 8_000,
        "some writes carried several records: {writes}"
    );
    journal.shutdown().unwrap();
    drop(journal);
    let (_, report, _, records) = open(&dir.0).unwrap();
    assert_eq!(report.last_seq, 8_000);
    let seqs: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=8_000).collect::<Vec<_>>());
}
