//! This process's identity as an owner of state in Redis: a node id made once
//! and kept in the data dir, plus the process id and host name, so that a
//! lease held in Redis says who holds it, and a process restarted on the same
//! data dir (after `kill -9`) is recognized as the same owner.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The file in the data dir that keeps the node id.
pub const NODE_ID_FILE: &str = "node-id";
/// Node ids are 40 lowercase hex digits, as Redis Cluster's.
const NODE_ID_LEN: usize = 40;

/// Who this process is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    pub id: String,
    pub pid: u32,
    /// The host name, without whitespace (it is stored space-separated).
    pub host: String,
}

impl NodeIdentity {
    /// Reads the node id kept in `data_dir`, or makes one and keeps it
    /// (written to a temporary file, synced, renamed, directory synced: a
    /// crash leaves either no id or the whole one).
    pub fn load_or_create(data_dir: &Path) -> Result<NodeIdentity, String> {
        let path = data_dir.join(NODE_ID_FILE);
        let id = match fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim().to_string();
                if !is_node_id(&id) {
                    return Err(format!(
                        "{}: not a node id (expected {NODE_ID_LEN} hex digits); remove the file to make a new one",
                        path.display()
                    ));
                }
                id
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = new_node_id();
                write_durably(data_dir, NODE_ID_FILE, format!("{id}\n").as_bytes())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                id
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(NodeIdentity {
            id,
            pid: std::process::id(),
            host: host_name(),
        })
    }
}

fn is_node_id(id: &str) -> bool {
    id.len() == NODE_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 160 random bits as hex.
fn new_node_id() -> String {
    let mut id = String::with_capacity(NODE_ID_LEN + 16);
    for part in 0u8..3 {
        id.push_str(&format!("{:016x}", random_u64(part)));
    }
    id.truncate(NODE_ID_LEN);
    id
}

/// 64 random bits: `RandomState` keys come from the OS's random source;
/// hashing the time, the pid and `salt` on top makes values of clones (and
/// of several calls in one process) differ too.
pub fn random_u64(salt: u8) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.write_u8(salt);
    h.finish()
}

/// The host name (Linux: the kernel's; else `HOSTNAME`), `unknown` if none.
fn host_name() -> String {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .take(255)
        .collect();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

/// Writes `dir/name` so that a crash leaves the old file or the whole new
/// one: a temporary file, fsync, rename, fsync of the directory.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes a directory's entries (a rename, a removal) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_id_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("creditd-node-id-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = NodeIdentity::load_or_create(&dir).unwrap();
        assert!(is_node_id(&first.id), "{}", first.id);
        assert!(!first.host.contains(char::is_whitespace));
        let again = NodeIdentity::load_or_create(&dir).unwrap();
        assert_eq!(again.id, first.id);
        fs::write(dir.join(NODE_ID_FILE), "nonsense\n").unwrap();
        let err = NodeIdentity::load_or_create(&dir).unwrap_err();
        assert!(err.contains("not a node id"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
        assert_ne!(new_node_id(), new_node_id());
    }
}
