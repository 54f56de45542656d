//! MULTI/EXEC/DISCARD storage: the commands a transaction queued, kept in one
//! bounded byte buffer, and the cursor EXEC runs them with.
//!
//! The queue is bounded in commands and in bytes. Past either bound the
//! transaction fails as on any queueing error (EXEC answers EXECABORT) and its
//! memory is freed at once; as in Redis, nothing more is stored once EXEC is
//! bound to abort. EXEC does not run the whole queue in one go: the connection
//! takes one command at a time from an [`Exec`] and flushes replies at its
//! usual bound, so a transaction of many large reads never holds all its
//! replies in memory.

use crate::conn::reserve_within;
use crate::error::Failure;
use smallvec::SmallVec;

/// Most commands one MULTI may queue.
pub const MULTI_MAX_COMMANDS: usize = 10_000;
/// Most bytes one MULTI may queue: argument bytes plus a 4-byte length per
/// argument and per command. The queue's buffer never grows past it.
pub const MULTI_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of each length prefix in the queue.
const PREFIX_BYTES: usize = 4;

/// The commands queued since MULTI.
#[derive(Debug, Default)]
pub struct Multi {
    /// Each command as its argument count, then each argument as its length
    /// and its bytes; the lengths are little-endian `u32`.
    queued: Vec<u8>,
    commands: usize,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    failed: bool,
}

impl Multi {
    /// Queues a command that passed the checks made at queueing time (name,
    /// arity). Past a bound the transaction fails and the refusal is
    /// returned; after a failure nothing is stored.
    pub fn push(&mut self, args: &[&[u8]]) -> Result<(), Failure> {
        if self.failed {
            return Ok(());
        }
        if self.commands >= MULTI_MAX_COMMANDS {
            self.fail();
            return Err(Failure::err(
                "too many commands in MULTI (limit 10000); EXEC will discard the transaction",
            ));
        }
        let bytes = PREFIX_BYTES + args.iter().map(|a| PREFIX_BYTES + a.len()).sum::<usize>();
        if self.queued.len() + bytes > MULTI_MAX_BYTES {
            self.fail();
            return Err(Failure::err(
                "too many bytes in MULTI (limit 16 MiB); EXEC will discard the transaction",
            ));
        }
        reserve_within(&mut self.queued, bytes, MULTI_MAX_BYTES);
        // Both fit in u32: the whole queue is at most MULTI_MAX_BYTES.
        self.queued
            .extend_from_slice(&(args.len() as u32).to_le_bytes());
        for a in args {
            self.queued
                .extend_from_slice(&(a.len() as u32).to_le_bytes());
            self.queued.extend_from_slice(a);
        }
        self.commands += 1;
        Ok(())
    }

    /// Marks the transaction failed and frees what it queued.
    pub fn fail(&mut self) {
        self.failed = true;
        self.queued = Vec::new();
        self.commands = 0;
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Number of commands queued.
    pub fn len(&self) -> usize {
        self.commands
    }

    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    /// Starts EXEC over the queued commands.
    pub fn into_exec(self) -> Exec {
        Exec {
            queued: self.queued,
            at: 0,
        }
    }
}

/// A running EXEC: the queued commands not yet run, in order.
#[derive(Debug)]
pub struct Exec {
    queued: Vec<u8>,
    at: usize,
}

impl Exec {
    fn read_len(&mut self) -> usize {
        let bytes = &self.queued[self.at..self.at + PREFIX_BYTES];
        self.at += PREFIX_BYTES;
        u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize
    }

    /// The next command's arguments, or None once every command ran.
    pub fn next_command(&mut self) -> Option<SmallVec<[&[u8]; 16]>> {
        if self.at == self.queued.len() {
            return None;
        }
        let argc = self.read_len();
        let mut ranges: SmallVec<[(usize, usize); 16]> = SmallVec::with_capacity(argc);
        for _ in 0..argc {
            let len = self.read_len();
            ranges.push((self.at, self.at + len));
            self.at += len;
        }
        Some(ranges.iter().map(|&(s, e)| &self.queued[s..e]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_commands_come_back_in_order() {
        let mut m = Multi::default();
        m.push(&[b"RESERVE", b"a", b"h1", b"5"]).unwrap();
        m.push(&[b"PING"]).unwrap();
        m.push(&[b"ECHO", b""]).unwrap();
        assert_eq!((m.len(), m.failed()), (3, false));
        let mut exec = m.into_exec();
        let all: Vec<Vec<Vec<u8>>> = std::iter::from_fn(|| {
            exec.next_command()
                .map(|c| c.iter().map(|a| a.to_vec()).collect())
        })
        .collect();
        assert_eq!(
            all,
            vec![
                vec![
                    b"RESERVE".to_vec(),
                    b"a".to_vec(),
                    b"h1".to_vec(),
                    b"5".to_vec()
                ],
                vec![b"PING".to_vec()],
                vec![b"ECHO".to_vec(), vec![]],
            ]
        );
    }

    #[test]
    fn bytes_bound_fails_the_transaction_and_frees_the_queue() {
        let mut m = Multi::default();
        let big = vec![7u8; 1024 * 1024];
        let mut refused = None;
        for _ in 0..20 {
            if let Err(e) = m.push(&[b"ECHO", &big]) {
                refused = Some(e);
                break;
            }
            assert!(m.queued.capacity() <= MULTI_MAX_BYTES);
        }
        assert!(refused
            .unwrap()
            .to_string()
            .contains("too many bytes in MULTI"));
        assert!(m.failed() && m.is_empty());
        assert_eq!(m.queued.capacity(), 0, "freed");
        // Nothing more is stored once failed.
        m.push(&[b"PING"]).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn count_bound() {
        let mut m = Multi::default();
        for _ in 0..MULTI_MAX_COMMANDS {
            m.push(&[b"PING"]).unwrap();
        }
        assert!(m
            .push(&[b"PING"])
            .unwrap_err()
            .to_string()
            .contains("too many commands"));
        assert!(m.failed());
    }
}
