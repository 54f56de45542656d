//! Files of the data dir: segment and snapshot names, snapshots, and the recovery scan.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::frame::{decode_frame, find_valid_frame, Decoded, FRAME_VERSION};
use super::{JournalError, OpenReport};

const SNAPSHOT_MAGIC: [u8; 4] = *b"CDSN";
/// Version of the snapshot file's envelope (this header; the body inside is the caller's own
/// format). A file of another version is skipped with a warning, as a damaged one is.
pub const SNAPSHOT_FILE_VERSION: u32 = 1;
/// magic (4) + version (4) + first_seq (8) + body_len (8) + crc32c (4).
const SNAPSHOT_HEADER_BYTES: usize = 28;

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("journal-{first_seq:020}.log"))
}

pub(crate) fn snapshot_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("snapshot-{first_seq:020}.snap"))
}

/// A gap marker: the segment starting at `first_seq` may follow a jump in the numbering
/// (`Journal::open_with` with a `min_next_seq` beyond the recovered records).
pub(crate) fn gap_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("gap-{first_seq:020}.mark"))
}

/// Writes a gap marker durably (file and directory entry) before the segment it allows.
pub(crate) fn write_gap_marker(dir: &Path, first_seq: u64) -> io::Result<()> {
    let mut file = File::create(gap_path(dir, first_seq))?;
    file.write_all(format!("{first_seq}\n").as_bytes())?;
    file.sync_all()?;
    sync_dir(dir)
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// First seqs of the segments, of the snapshots and of the gap markers, each sorted ascending.
pub(crate) fn list_all(dir: &Path) -> io::Result<(Vec<u64>, Vec<u64>, Vec<u64>)> {
    let (mut segments, mut snapshots, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = parse_name(&name, "journal-", ".log") {
            segments.push(seq);
        } else if let Some(seq) = parse_name(&name, "snapshot-", ".snap") {
            snapshots.push(seq);
        } else if let Some(seq) = parse_name(&name, "gap-", ".mark") {
            gaps.push(seq);
        }
    }
    segments.sort_unstable();
    snapshots.sort_unstable();
    gaps.sort_unstable();
    Ok((segments, snapshots, gaps))
}

/// Makes a create, rename or delete in `dir` durable (a new file is lost on power failure
/// until its directory entry is fsynced).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn snapshot_crc(header: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[4..24]), body)
}

/// Writes the snapshot atomically: a reader sees the old state or the whole new file, never half.
pub(crate) fn write_snapshot_file(dir: &Path, first_seq: u64, body: &[u8]) -> io::Result<()> {
    let path = snapshot_path(dir, first_seq);
    let tmp = path.with_extension("snap.tmp");
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[0..4].copy_from_slice(&SNAPSHOT_MAGIC);
    header[4..8].copy_from_slice(&SNAPSHOT_FILE_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&first_seq.to_le_bytes());
    header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let crc = snapshot_crc(&header, body);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    let mut file = File::create(&tmp)?;
    file.write_all(&header)?;
    file.write_all(body)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    sync_dir(dir)
}

fn read_snapshot(path: &Path, first_seq: u64) -> Result<Vec<u8>, String> {
    let mut bytes = fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < SNAPSHOT_HEADER_BYTES || bytes[0..4] != SNAPSHOT_MAGIC {
        return Err("not a snapshot (bad magic or short header)".into());
    }
    let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != SNAPSHOT_FILE_VERSION {
        return Err(format!("unknown snapshot version {version}"));
    }
    if field(8) != first_seq {
        return Err(format!(
            "header says seq {} but the name says {first_seq}",
            field(8)
        ));
    }
    if field(16) != (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64 {
        return Err("body length does not match the file size".into());
    }
    let crc_stored = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    if snapshot_crc(&bytes, &bytes[SNAPSHOT_HEADER_BYTES..]) != crc_stored {
        return Err("checksum mismatch".into());
    }
    bytes.drain(..SNAPSHOT_HEADER_BYTES);
    Ok(bytes)
}

/// Deletes segments and snapshots wholly before `first_seq`. A segment with a smaller first seq
/// ends before `first_seq` because `first_seq` itself starts a segment. Returns the number of
/// segments deleted.
pub(crate) fn remove_before(dir: &Path, first_seq: u64) -> io::Result<u64> {
    let (segments, snapshots, gaps) = list_all(dir)?;
    let mut removed_segments = 0;
    for &seq in segments.iter().filter(|&&seq| seq < first_seq) {
        fs::remove_file(segment_path(dir, seq))?;
        removed_segments += 1;
    }
    for &seq in snapshots.iter().filter(|&&seq| seq < first_seq) {
        fs::remove_file(snapshot_path(dir, seq))?;
    }
    for &seq in gaps.iter().filter(|&&seq| seq < first_seq) {
        fs::remove_file(gap_path(dir, seq))?;
    }
    sync_dir(dir)?;
    Ok(removed_segments)
}

/// What recovery found, beyond the report: where appends continue.
pub(crate) struct Recovery {
    pub report: OpenReport,
    /// The last live segment: first seq, path, bytes of valid frames (where a torn tail is cut).
    pub last_segment: Option<(u64, PathBuf, u64)>,
    pub segment_count: u64,
}

/// Reads the latest valid snapshot and every later segment, handing them to the callbacks in
/// order, and checks that seqs are contiguous (a segment with a gap marker may start later than
/// the seq expected: the numbering jumped there on purpose). Changes nothing on disk.
///
/// Torn tail vs corruption: a crash can only tear the last write, so a bad or incomplete frame
/// with nothing valid after it, in the last segment, is an unacknowledged write and is dropped.
/// A bad frame followed by valid data, or anywhere in an older segment, means acknowledged
/// records were damaged: dropping them silently would lose credit changes, so recovery refuses
/// and names the file and offset for an operator.
pub(crate) fn recover(
    dir: &Path,
    replay_snapshot: impl FnOnce(u64, &[u8]) -> Result<(), String>,
    mut replay: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<Recovery, JournalError> {
    let (segments, snapshots, gaps) = list_all(dir).map_err(|e| JournalError::io(dir, e))?;
    let mut warnings = Vec::new();
    let mut snapshot = None;
    for &seq in snapshots.iter().rev() {
        let path = snapshot_path(dir, seq);
        match read_snapshot(&path, seq) {
            Ok(body) => {
                snapshot = Some((seq, path, body));
                break;
            }
            Err(message) => {
                let warning = format!("{}: {message}; ignoring this snapshot", path.display());
                eprintln!("creditd journal: warning: {warning}");
                warnings.push(warning);
            }
        }
    }
    let mut seq_expected = 1;
    let mut snapshot_seq = None;
    if let Some((seq, path, body)) = snapshot {
        replay_snapshot(seq, &body)
            .map_err(|m| JournalError::replay(&path, 0, format!("snapshot replay failed: {m}")))?;
        (seq_expected, snapshot_seq) = (seq, Some(seq));
    }
    let live: Vec<u64> = segments
        .into_iter()
        .filter(|&seq| seq >= seq_expected)
        .collect();
    let mut bytes = Vec::new();
    let mut records_replayed = 0;
    let mut torn_tail = None;
    let mut last_segment = None;
    for (index, &first_seq) in live.iter().enumerate() {
        let path = segment_path(dir, first_seq);
        let is_last = index + 1 == live.len();
        if first_seq > seq_expected && gaps.binary_search(&first_seq).is_ok() {
            seq_expected = first_seq;
        }
        if first_seq != seq_expected {
            let message = format!("segment starts at seq {first_seq} but seq {seq_expected} is next: records are missing");
            return Err(JournalError::corrupt(&path, 0, message));
        }
        bytes.clear();
        let read = File::open(&path).and_then(|mut file| file.read_to_end(&mut bytes));
        read.map_err(|e| JournalError::io(&path, e))?;
        let segment = replay_segment(&path, &bytes, is_last, seq_expected, &mut replay)?;
        records_replayed += segment.next_seq - seq_expected;
        seq_expected = segment.next_seq;
        if segment.torn {
            torn_tail = Some((path.clone(), segment.end as u64));
        }
        if is_last {
            last_segment = Some((first_seq, path, segment.end as u64));
        }
    }
    let report = OpenReport {
        snapshot_seq,
        records_replayed,
        torn_tail,
        last_seq: seq_expected - 1,
        warnings,
    };
    Ok(Recovery {
        report,
        last_segment,
        segment_count: live.len() as u64,
    })
}

/// Where one segment's valid frames ended.
struct SegmentEnd {
    /// The seq after the segment's last valid frame.
    next_seq: u64,
    /// Offset just past the last valid frame.
    end: usize,
    /// Something followed it that is dropped as an unacknowledged write.
    torn: bool,
}

/// Replays one segment's frames from `seq_expected` on (see [`recover`] for
/// what is a torn tail and what is refused).
fn replay_segment(
    path: &Path,
    bytes: &[u8],
    is_last: bool,
    mut seq_expected: u64,
    replay: &mut impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<SegmentEnd, JournalError> {
    let mut offset = 0;
    // Bounded: every iteration advances `offset` by a whole frame or leaves the loop.
    while offset < bytes.len() {
        let reason = match decode_frame(&bytes[offset..]) {
            Decoded::Frame {
                seq,
                payload,
                frame_bytes,
            } => {
                if seq != seq_expected {
                    let message = format!("frame has seq {seq}, expected {seq_expected}");
                    return Err(JournalError::corrupt(path, offset as u64, message));
                }
                replay(seq, payload).map_err(|m| {
                    JournalError::replay(
                        path,
                        offset as u64,
                        format!("replay of seq {seq} failed: {m}"),
                    )
                })?;
                seq_expected += 1;
                offset += frame_bytes;
                continue;
            }
            Decoded::Incomplete => "incomplete frame",
            Decoded::Bad(reason) => reason,
            Decoded::Foreign(version) => {
                let message = format!(
                    "frame of layout version {version} (this build reads {FRAME_VERSION}): written by another creditd build; start that build, or restore a data dir this build wrote"
                );
                return Err(JournalError::corrupt(path, offset as u64, message));
            }
        };
        if let Some(next) = find_valid_frame(&bytes[offset + 1..]) {
            let message = format!(
                "{reason}, with a valid frame after it at offset {}",
                offset + 1 + next
            );
            return Err(JournalError::corrupt(path, offset as u64, message));
        }
        if !is_last {
            let message = format!("{reason} at the end of a segment that is not the last");
            return Err(JournalError::corrupt(path, offset as u64, message));
        }
        return Ok(SegmentEnd {
            next_seq: seq_expected,
            end: offset,
            torn: true,
        });
    }
    Ok(SegmentEnd {
        next_seq: seq_expected,
        end: offset,
        torn: false,
    })
}
