//! Reading a pipeline's accounts ahead of its commands.
//!
//! When a read brings several commands, their accounts are looked up and
//! read together first ([`Engine::prefetch`]), so their cache misses overlap
//! instead of coming one command after another; the commands then run one
//! by one as always. Only multibulk account commands are looked at, in
//! their own scratch frame (the connection's frame keeps its state), and at
//! most [`MAX_PREFETCH`] of them.

use crate::resp::parse::{parse, Frame, Limits, Parsed};
use creditd_engine::engine::MAX_PREFETCH;
use creditd_engine::Engine;
use smallvec::SmallVec;
use std::ops::Range;

/// Commands whose first argument is the account they touch (the ones a
/// gateway pipelines).
const ACCOUNT_COMMANDS: [&[u8]; 7] = [
    b"RESERVE", b"COMMIT", b"CAPTURE", b"RELEASE", b"DEBIT", b"GRANT", b"BALANCE",
];

fn names_account(command: &[u8]) -> bool {
    ACCOUNT_COMMANDS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(command))
}

/// Prefetches the accounts of the complete requests at the start of `buf`
/// (nothing for fewer than two). Parses into `scan`, never the caller's frame.
pub fn prefetch_accounts(engine: &Engine, buf: &[u8], limits: &Limits, scan: &mut Frame) {
    let mut keys: SmallVec<[Range<usize>; MAX_PREFETCH]> = SmallVec::new();
    let mut at = 0;
    // Bounded: each round consumes a request or stops.
    while keys.len() < MAX_PREFETCH && at < buf.len() {
        match parse(&buf[at..], limits, scan) {
            Ok(Parsed::Complete { consumed }) => {
                if let (Some(name), Some(key)) = (scan.arg_range(0), scan.arg_range(1)) {
                    if names_account(&buf[at + name.start..at + name.end]) {
                        keys.push(at + key.start..at + key.end);
                    }
                }
                at += consumed;
            }
            Ok(Parsed::Empty { consumed }) => at += consumed,
            Ok(Parsed::Incomplete) | Err(_) => break,
        }
    }
    if keys.len() >= 2 {
        let keys: SmallVec<[&[u8]; MAX_PREFETCH]> = keys.iter().map(|r| &buf[r.clone()]).collect();
        engine.prefetch(&keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditd_engine::clock::SystemClock;
    use creditd_engine::config::Config;
    use std::sync::Arc;

    #[test]
    fn reads_the_accounts_of_account_commands_and_changes_nothing() {
        let engine = Engine::new(
            Config::builtin(),
            Arc::new(SystemClock),
            Arc::new(creditd_engine::MemoryJournal::discarding()),
        );
        let mut buf = Vec::new();
        for (cmd, key) in [
            ("RESERVE", "a"),
            ("balance", "b"),
            ("PING", "c"),
            ("DEBIT", "d"),
        ] {
            buf.extend(
                format!(
                    "*2\r\n${}\r\n{cmd}\r\n${}\r\n{key}\r\n",
                    cmd.len(),
                    key.len()
                )
                .bytes(),
            );
        }
        // An incomplete request at the end, and an inline one before it.
        buf.extend(b"GRANT x\r\n*2\r\n$7\r\nRESERVE\r\n$5\r\nsho");
        let mut scan = Frame::new();
        let mut names = Vec::new();
        let mut at = 0;
        while let Ok(Parsed::Complete { consumed }) =
            parse(&buf[at..], &Limits::AUTHENTICATED, &mut scan)
        {
            if let (Some(n), Some(k)) = (scan.arg_range(0), scan.arg_range(1)) {
                if names_account(&buf[at + n.start..at + n.end]) {
                    names.push(String::from_utf8_lossy(&buf[at + k.start..at + k.end]).to_string());
                }
            }
            at += consumed;
        }
        assert_eq!(
            names,
            ["a", "b", "d"],
            "account commands only; inline ones skipped"
        );
        let before = engine.stats();
        prefetch_accounts(&engine, &buf, &Limits::AUTHENTICATED, &mut scan);
        assert_eq!(engine.stats(), before, "a prefetch creates nothing");
    }
}
