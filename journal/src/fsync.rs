//! When the journal fsyncs: the one definition of the `--fsync` words (the server's command line
//! parses them with [`FsyncMode::from_str`](std::str::FromStr) and lists [`FsyncMode::ALL`]).

use std::fmt;

/// When the journal fsyncs, as Redis AOF `appendfsync` means these words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncMode {
    /// fsync every group before it counts as durable: survives losing the machine.
    Always,
    /// fsync at most once a second; durable means written: survives `kill -9`.
    EverySec,
    /// Leave flushing to the OS; durable means written: survives `kill -9`.
    No,
}

impl FsyncMode {
    /// Every mode, in the order help texts list them.
    pub const ALL: [FsyncMode; 3] = [FsyncMode::Always, FsyncMode::EverySec, FsyncMode::No];

    /// The word that names the mode (`always`, `everysec`, `no`).
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::EverySec => "everysec",
            FsyncMode::No => "no",
        }
    }
}

impl fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FsyncMode {
    type Err = String;
    fn from_str(text: &str) -> Result<FsyncMode, String> {
        FsyncMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| format!("unknown fsync mode {text:?}: expected always, everysec or no"))
    }
}
