//! The data dir's lock: one creditd process per data dir.
//!
//! Two processes on one dir (a rolling deploy, a manual start beside systemd)
//! would interleave their journal frames and lose acknowledged changes on the
//! next restart. So the first thing a process does is take an exclusive
//! advisory lock (`flock`) on `<data-dir>/creditd.lock`; a second process
//! finds it held and refuses to start, naming the dir and the holder's pid.
//! The kernel drops the lock when the holder exits, `kill -9` included, so a
//! crashed process never leaves a stale lock behind.
//!
//! The lock file also says where the holder listens (`listen=`, `http=`),
//! written once both listeners are bound: operators and tests started with
//! port 0 read the ports the kernel chose from it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data dir.
pub const LOCK_FILE: &str = "creditd.lock";
/// Most bytes read from a lock file held by another process (it is a few lines).
const LOCK_FILE_READ_MAX_BYTES: u64 = 4096;

/// The held lock: kept for the life of the process.
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates the data dir if needed and locks it, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, String> {
        match std::fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(format!(
                    "--data-dir {}: not a directory (the journal and snapshots need a directory of their own)",
                    dir.display()
                ))
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(dir)
                .map_err(|e| format!("--data-dir {}: cannot create it: {e}", dir.display()))?,
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_field(&mut file, "pid").unwrap_or_else(|| "unknown".into());
                return Err(format!(
                    "data dir {} is in use by another creditd process (pid {holder}); one process per data dir: stop that one first, or give this one its own --data-dir",
                    dir.display()
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
        let mut lock = DataDirLock { file, path };
        lock.write(&format!("pid={}\n", std::process::id()))?;
        Ok(lock)
    }

    /// Records where this process listens (after both listeners are bound).
    pub fn record_addresses(&mut self, listen: SocketAddr, http: SocketAddr) -> Result<(), String> {
        self.write(&format!(
            "pid={}\nlisten={listen}\nhttp={http}\n",
            std::process::id()
        ))
    }

    fn write(&mut self, text: &str) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", self.path.display());
        self.file.set_len(0).map_err(fail)?;
        self.file.seek(SeekFrom::Start(0)).map_err(fail)?;
        self.file.write_all(text.as_bytes()).map_err(fail)
    }
}

/// The value of `key=` in a lock file, if it has one.
fn read_field(file: &mut File, key: &str) -> Option<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(LOCK_FILE_READ_MAX_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_dir_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("creditd-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut first = DataDirLock::acquire(&dir).expect("first lock");
        first
            .record_addresses(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            )
            .unwrap();
        let err = DataDirLock::acquire(&dir)
            .err()
            .expect("second lock refused");
        assert!(err.contains("in use by another creditd"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(&dir).expect("free again once dropped");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_is_not_a_data_dir() {
        let file = std::env::temp_dir().join(format!("creditd-notdir-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let err = DataDirLock::acquire(&file).err().expect("refused");
        assert!(err.contains("not a directory"), "{err}");
        let _ = std::fs::remove_file(&file);
    }
}
