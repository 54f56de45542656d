//! Reading a pipeline's accounts ahead of its commands.
//!
//! When a read brings several commands, their accounts are looked up and
//! read together first ([`Engine::prefetch`]), so their cache misses overlap
//! instead of coming one command after another; the commands then run one
//! by one as always. The connection calls this with its first request of a
//! batch already parsed, and only when more bytes follow it: a lone request
//! (pipeline 1) is parsed once, as before. Only multibulk account commands
//! are looked at, in a scratch frame of their own (the connection's frame
//! keeps its state), and at most [`MAX_PREFETCH`] of them.

use crate::resp::parse::{parse, Frame, Limits, Parsed};
use creditd_engine::engine::MAX_PREFETCH;
use creditd_engine::Engine;
use smallvec::SmallVec;

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

/// The account a request names, if it is an account command.
fn account_of<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    match args {
        [name, account, ..] if names_account(name) => Some(account),
        _ => None,
    }
}

/// Prefetches the account `first` names (the request about to run, already
/// parsed) and those of the complete requests at the start of `rest`, the
/// bytes after it; nothing for fewer than two accounts.
pub fn prefetch_accounts(
    engine: &Engine,
    first: &[&[u8]],
    rest: &[u8],
    limits: &Limits,
    scan: &mut Frame,
) {
    let keys = accounts_ahead(first, rest, limits, scan);
    if keys.len() >= 2 {
        engine.prefetch(&keys);
    }
}

/// The accounts of `first` and of the multibulk account commands complete
/// at the start of `rest`, in order, at most [`MAX_PREFETCH`]. Parses
/// `rest` into `scan`, never the caller's frame.
fn accounts_ahead<'a>(
    first: &[&'a [u8]],
    rest: &'a [u8],
    limits: &Limits,
    scan: &mut Frame,
) -> SmallVec<[&'a [u8]; MAX_PREFETCH]> {
    let mut keys: SmallVec<[&[u8]; MAX_PREFETCH]> = account_of(first).into_iter().collect();
    let mut at = 0;
    // Bounded: each round consumes a request or stops.
    while keys.len() < MAX_PREFETCH && at < rest.len() {
        match parse(&rest[at..], limits, scan) {
            Ok(Parsed::Complete { consumed }) => {
                if let (Some(name), Some(key)) = (scan.arg_range(0), scan.arg_range(1)) {
                    if names_account(&rest[at + name.start..at + name.end]) {
                        keys.push(&rest[at + key.start..at + key.end]);
                    }
                }
                at += consumed;
            }
            Ok(Parsed::Empty { consumed }) => at += consumed,
            Ok(Parsed::Incomplete) | Err(_) => break,
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditd_engine::clock::SystemClock;
    use creditd_engine::config::Config;
    use std::sync::Arc;

    fn request(args: &[&str]) -> String {
        let mut r = format!("*{}\r\n", args.len());
        for a in args {
            r.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        r
    }

    fn ahead<'a>(first: &[&'a [u8]], rest: &'a str) -> Vec<&'a [u8]> {
        accounts_ahead(
            first,
            rest.as_bytes(),
            &Limits::AUTHENTICATED,
            &mut Frame::new(),
        )
        .to_vec()
    }

    #[test]
    fn reads_ahead_the_accounts_of_account_commands_only() {
        let mut rest = String::new();
        for args in [
            &["balance", "b"][..],
            &["PING"],
            &["CONFIG", "GET", "x"],
            &["DEBIT", "d", "1"],
        ] {
            rest.push_str(&request(args));
        }
        // An inline request (its arguments are copies: skipped), one
        // complete request after it, then an incomplete one, where the scan
        // stops.
        rest.push_str("GRANT x 1\r\n");
        rest.push_str(&request(&["COMMIT", "e", "h"]));
        rest.push_str("*2\r\n$7\r\nRESERVE\r\n$5\r\nsho");
        let first: [&[u8]; 3] = [b"RESERVE", b"a", b"h"];
        assert_eq!(ahead(&first, &rest), [&b"a"[..], b"b", b"d", b"e"]);
        // A first request that names no account adds none.
        let ping: [&[u8]; 1] = [b"PING"];
        assert_eq!(ahead(&ping, &rest), [&b"b"[..], b"d", b"e"]);
    }

    #[test]
    fn reads_at_most_the_bound() {
        let rest = request(&["RESERVE", "k", "h", "1"]).repeat(MAX_PREFETCH * 2);
        let first: [&[u8]; 2] = [b"DEBIT", b"a"];
        let keys = ahead(&first, &rest);
        assert_eq!(keys.len(), MAX_PREFETCH);
        assert_eq!(keys[0], b"a");
    }

    #[test]
    fn a_prefetch_changes_nothing() {
        let engine = Engine::new(
            Config::builtin(),
            Arc::new(SystemClock),
            Arc::new(creditd_engine::MemoryJournal::discarding()),
        );
        let rest = request(&["RESERVE", "b", "h", "1"]) + &request(&["BALANCE", "c"]);
        let first: [&[u8]; 2] = [b"BALANCE", b"a"];
        let before = engine.stats();
        let limits = &Limits::AUTHENTICATED;
        prefetch_accounts(&engine, &first, rest.as_bytes(), limits, &mut Frame::new());
        assert_eq!(engine.stats(), before, "a prefetch creates nothing");
    }
}
