//! Whether a data dir holds the whole state on its own, or depends on Redis.
//!
//! With `--redis`, state loaded from Redis and the local journal combine.
//! When Redis held state the data dir does not have (an empty or older data
//! dir: the journal continues after a `gap-<seq>.mark`; or Redis held another
//! data dir's accounts), the journal alone is only part of the state: started
//! without `--redis` it would serve accounts without their holds and
//! idempotency records, and apply retried commands again. So that moment is
//! recorded durably in the data dir ([`DEPENDENCY_FILE`], saying which Redis
//! and from which journal seq), and a start without `--redis` is refused
//! while the record, or a gap marker after the latest snapshot, is there.
//! A snapshot taken while running with `--redis` holds the whole state (it is
//! made from memory), so it ends the dependency and removes the record.
//!
//! Starting with `--redis` again always works, provided Redis still holds at
//! least the state the data dir depends on; if Redis lost it since, the start
//! is refused (serving partial state is what the record exists to prevent).

use crate::node::{sync_dir, write_durably};
use creditd_engine::clock::wall_clock_ms;
use std::fs;
use std::path::Path;

/// The record in the data dir.
pub const DEPENDENCY_FILE: &str = "redis-dependency";

/// What the record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    /// The Redis URL (without its password).
    pub redis: String,
    /// Redis must hold state up to this journal seq for the data dir to be whole with it.
    pub needs_seq: u64,
    /// The first journal seq written on top of the state loaded from Redis.
    pub since_seq: u64,
    pub recorded_at_ms: u64,
}

impl Dependency {
    fn encode(&self) -> String {
        format!(
            "# This data dir holds only part of creditd's state: the rest was loaded from\n\
             # Redis. creditd refuses to start on it without --redis. Written and removed\n\
             # by creditd (removed once a snapshot holds the whole state).\n\
             redis={}\nneeds_seq={}\nsince_seq={}\nrecorded_at_ms={}\n",
            self.redis, self.needs_seq, self.since_seq, self.recorded_at_ms
        )
    }

    fn decode(text: &str) -> Option<Dependency> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(Dependency {
            redis: field("redis")?.to_string(),
            needs_seq: field("needs_seq")?.parse().ok()?,
            since_seq: field("since_seq")?.parse().ok()?,
            recorded_at_ms: field("recorded_at_ms")?.parse().ok()?,
        })
    }
}

/// Reads the record, if any. An unreadable one counts as a dependency on an
/// unknown Redis (refusing is the safe reading).
pub fn read(dir: &Path) -> Result<Option<Dependency>, String> {
    let path = dir.join(DEPENDENCY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(Dependency::decode(&text).unwrap_or(Dependency {
            redis: "(unreadable record)".into(),
            needs_seq: 0,
            since_seq: 0,
            recorded_at_ms: 0,
        }))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Gap markers after the latest snapshot (a snapshot covers every jump
/// before it). Gap markers are the journal's `gap-<seq>.mark` files.
fn live_gaps(dir: &Path) -> Result<Vec<u64>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let (mut gaps, mut snapshot) = (Vec::new(), 0);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let seq = |prefix: &str, suffix: &str| -> Option<u64> {
            name.strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse()
                .ok()
        };
        if let Some(seq) = seq("gap-", ".mark") {
            gaps.push(seq);
        } else if let Some(seq) = seq("snapshot-", ".snap") {
            snapshot = snapshot.max(seq);
        }
    }
    gaps.retain(|&g| g > snapshot);
    gaps.sort_unstable();
    Ok(gaps)
}

/// Start without `--redis`: refused if the data dir depends on Redis.
pub fn check_without_redis(dir: &Path) -> Result<(), String> {
    let what_to_do = "The journal alone would serve part of the state (accounts without their holds and idempotency records; retried commands applied again)";
    if let Some(dep) = read(dir)? {
        return Err(format!(
            "the data dir {} depends on Redis at {}: its state was loaded from there and its journal continues it from seq {}. {what_to_do}. Start creditd with --redis {}; the dependency ends once a snapshot is taken while running with --redis (every snapshot_every_records records), and creditd logs that the data dir no longer depends on Redis",
            dir.display(),
            dep.redis,
            dep.since_seq,
            dep.redis,
        ));
    }
    if let Some(gap) = live_gaps(dir)?.first() {
        return Err(format!(
            "the data dir {} depends on Redis: its journal continues after gap-{gap:020}.mark, a jump over state that was loaded from Redis. {what_to_do}. Start creditd with --redis and the Redis it was restored from",
            dir.display()
        ));
    }
    Ok(())
}

/// Start with `--redis`, before the journal is opened: if the data dir
/// depends on Redis, Redis must still hold what it depends on
/// (`redis_seq`: the highest seq Redis holds state of).
pub fn check_with_redis(dir: &Path, url: &str, redis_seq: u64) -> Result<(), String> {
    let needs = match read(dir)? {
        Some(dep) => dep.needs_seq,
        None => live_gaps(dir)?.first().map_or(0, |g| g - 1),
    };
    if redis_seq < needs {
        return Err(format!(
            "the data dir {} depends on state from Redis up to journal seq {needs}, but Redis at {url} holds state only up to seq {redis_seq}: Redis lost data since (flushed, restarted without persistence, failed over to a stale replica, or it is another Redis). Starting would serve part of the state. Restore Redis's creditd:* keys, or point --redis at the Redis this data dir was restored from",
            dir.display()
        ));
    }
    Ok(())
}

/// After recovery with `--redis`: records the dependency if it arose now (the
/// journal jumped over state from Redis, or Redis held another node's
/// state) and none is recorded yet. `next_seq` is the first seq this process
/// appends.
pub fn record_if_arisen(
    dir: &Path,
    url: &str,
    redis_seq: u64,
    next_seq: u64,
    other_nodes_state: bool,
) -> Result<(), String> {
    if read(dir)?.is_some() {
        return Ok(());
    }
    let gaps = live_gaps(dir)?;
    if gaps.is_empty() && !other_nodes_state {
        return Ok(());
    }
    let dep = Dependency {
        redis: url.to_string(),
        needs_seq: redis_seq,
        since_seq: gaps.first().copied().unwrap_or(next_seq),
        recorded_at_ms: wall_clock_ms(),
    };
    write_durably(dir, DEPENDENCY_FILE, dep.encode().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", dir.join(DEPENDENCY_FILE).display()))?;
    tracing::warn!(
        redis = %url,
        since_seq = dep.since_seq,
        "this data dir now depends on Redis: its state came partly from Redis, so creditd will not start on it without --redis until a snapshot holds the whole state"
    );
    Ok(())
}

/// A snapshot was written while running with `--redis`: it holds the whole
/// state, so the data dir no longer depends on Redis.
pub fn snapshot_taken(dir: &Path, first_seq: u64) {
    if !matches!(read(dir), Ok(Some(_))) {
        return;
    }
    let removed = fs::remove_file(dir.join(DEPENDENCY_FILE)).and_then(|()| sync_dir(dir));
    match removed {
        Ok(()) => tracing::info!(
            first_seq,
            "the data dir no longer depends on Redis: the snapshot holds the whole state"
        ),
        Err(e) => {
            tracing::warn!("cannot remove {DEPENDENCY_FILE}: {e}; it stays until the next snapshot")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("creditd-dep-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn records_round_trip() {
        let dep = Dependency {
            redis: "redis://h:1/0".into(),
            needs_seq: 9,
            since_seq: 10,
            recorded_at_ms: 5,
        };
        assert_eq!(Dependency::decode(&dep.encode()), Some(dep));
    }

    #[test]
    fn a_gap_after_the_latest_snapshot_is_a_dependency() {
        let dir = temp("gaps");
        assert!(check_without_redis(&dir).is_ok());
        fs::write(dir.join(format!("gap-{:020}.mark", 10)), b"").unwrap();
        assert!(check_without_redis(&dir).unwrap_err().contains("gap-"));
        assert!(check_with_redis(&dir, "r", 8).is_err());
        assert!(check_with_redis(&dir, "r", 9).is_ok());
        fs::write(dir.join(format!("snapshot-{:020}.snap", 10)), b"").unwrap();
        assert!(check_without_redis(&dir).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_is_kept_until_a_snapshot() {
        let dir = temp("record");
        record_if_arisen(&dir, "redis://r", 3, 4, false).unwrap();
        assert!(read(&dir).unwrap().is_none(), "nothing arose");
        record_if_arisen(&dir, "redis://r", 3, 4, true).unwrap();
        let err = check_without_redis(&dir).unwrap_err();
        assert!(err.contains("depends on Redis at redis://r"), "{err}");
        assert!(check_with_redis(&dir, "redis://r", 2).is_err());
        snapshot_taken(&dir, 7);
        assert!(check_without_redis(&dir).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
