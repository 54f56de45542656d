//! Error replies: every `-CODE detail` line the server sends is a [`Failure`],
//! encoded by [`Failure::encode`] alone. The code is a type, so replies and
//! counters never take it back out of the text.

use crate::resp::encode;
use creditd_engine::error::{Code, Detail, EngineError};
use std::borrow::Cow;
use std::fmt;

/// The word that starts an error line: the engine's codes (contract §3) and
/// the ones only the server sends (auth, permissions, protocol, MULTI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// One of the engine's codes (`ERR`, `INSUFFICIENT`, `NOTFOUND`,
    /// `CONFLICT`, `EXPIRED`, `NOTENTITLED`, `BUSY`).
    Engine(Code),
    /// `NOAUTH`: the connection has not authenticated.
    NoAuth,
    /// `WRONGPASS`: no token matched.
    WrongPass,
    /// `NOPERM`: the connection's role may not run the command.
    NoPerm,
    /// `NOPROTO`: HELLO asked for a protocol other than 2 or 3.
    NoProto,
    /// `EXECABORT`: EXEC of a transaction that failed while queueing.
    ExecAbort,
    /// `MOVED <slot> <host:port>`: another cluster node owns the account's slot.
    Moved,
    /// `TRYAGAIN`: the slot is loading or moving between nodes; retry soon.
    TryAgain,
    /// `CLUSTERDOWN`: no node owns the account's slot now.
    ClusterDown,
}

/// The server's own codes, in index order after the engine's.
const SERVER_CODES: [ErrorCode; 8] = [
    ErrorCode::NoAuth,
    ErrorCode::WrongPass,
    ErrorCode::NoPerm,
    ErrorCode::NoProto,
    ErrorCode::ExecAbort,
    ErrorCode::Moved,
    ErrorCode::TryAgain,
    ErrorCode::ClusterDown,
];

impl ErrorCode {
    pub const ERR: ErrorCode = ErrorCode::Engine(Code::Err);
    pub const BUSY: ErrorCode = ErrorCode::Engine(Code::Busy);
    pub const NOT_FOUND: ErrorCode = ErrorCode::Engine(Code::NotFound);

    /// Every code, in index order (`ALL[c.index()] == c`).
    pub const ALL: [ErrorCode; Code::ALL.len() + SERVER_CODES.len()] = {
        let mut all = [ErrorCode::ERR; Code::ALL.len() + SERVER_CODES.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = if i < Code::ALL.len() {
                ErrorCode::Engine(Code::ALL[i])
            } else {
                SERVER_CODES[i - Code::ALL.len()]
            };
            i += 1;
        }
        all
    };

    /// The word on the wire (and the `result` label of the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Engine(code) => code.as_str(),
            ErrorCode::NoAuth => "NOAUTH",
            ErrorCode::WrongPass => "WRONGPASS",
            ErrorCode::NoPerm => "NOPERM",
            ErrorCode::NoProto => "NOPROTO",
            ErrorCode::ExecAbort => "EXECABORT",
            ErrorCode::Moved => "MOVED",
            ErrorCode::TryAgain => "TRYAGAIN",
            ErrorCode::ClusterDown => "CLUSTERDOWN",
        }
    }

    /// Position in [`ErrorCode::ALL`], for counters kept in an array.
    pub fn index(self) -> usize {
        match self {
            ErrorCode::Engine(code) => code.index(),
            ErrorCode::NoAuth => Code::ALL.len(),
            ErrorCode::WrongPass => Code::ALL.len() + 1,
            ErrorCode::NoPerm => Code::ALL.len() + 2,
            ErrorCode::NoProto => Code::ALL.len() + 3,
            ErrorCode::ExecAbort => Code::ALL.len() + 4,
            ErrorCode::Moved => Code::ALL.len() + 5,
            ErrorCode::TryAgain => Code::ALL.len() + 6,
            ErrorCode::ClusterDown => Code::ALL.len() + 7,
        }
    }
}

impl From<Code> for ErrorCode {
    fn from(code: Code) -> Self {
        ErrorCode::Engine(code)
    }
}

/// A refused command, or any other error reply: a code and a detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub detail: Detail,
    /// The journal seq the error reply waits for (a refusal that raised an
    /// event; 0: none).
    pub wait_seq: u64,
}

impl Failure {
    pub fn new(code: ErrorCode, text: impl Into<Cow<'static, str>>) -> Self {
        Failure {
            code,
            detail: Detail::Text(text.into()),
            wait_seq: 0,
        }
    }

    /// `-ERR text`.
    pub fn err(text: impl Into<Cow<'static, str>>) -> Self {
        Failure::new(ErrorCode::ERR, text)
    }

    pub fn syntax() -> Self {
        Failure::err("syntax error")
    }

    /// A bad number, worded as Redis words it but naming the argument.
    pub fn not_integer(what: &str) -> Self {
        Failure::err(format!("{what} is not an integer or out of range"))
    }

    /// The reply to a command before AUTH.
    pub fn no_auth() -> Self {
        Failure::new(ErrorCode::NoAuth, "Authentication required.")
    }

    /// An unknown command, its name cut and made printable.
    pub fn unknown_command(name: &[u8]) -> Self {
        Failure::err(format!("unknown command '{}'", printable(name)))
    }

    /// A command with the wrong number of arguments (`name` as in the table).
    pub fn arity(name: &str) -> Self {
        Failure::err(format!("wrong number of arguments for '{name}' command"))
    }

    /// Appends the reply: `-CODE detail\r\n`. The one place an error line is
    /// written.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode::error(out, self.code.as_str(), &self.detail);
    }
}

impl fmt::Display for Failure {
    /// The error line without its `-` and CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code.as_str(), self.detail)
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure {
            code: e.code.into(),
            detail: e.detail,
            wait_seq: e.wait_seq,
        }
    }
}

/// Longest command name echoed back in an error.
const NAME_ECHO_BYTES: usize = 64;

fn printable(name: &[u8]) -> String {
    let cut = &name[..name.len().min(NAME_ECHO_BYTES)];
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(f: &Failure) -> String {
        let mut out = Vec::new();
        f.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn codes_index_their_table() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        for c in Code::ALL {
            assert_eq!(ErrorCode::from(c).as_str(), c.as_str());
        }
    }

    #[test]
    fn lines_are_code_space_detail() {
        assert_eq!(
            wire(&EngineError::insufficient(5, 3).into()),
            "-INSUFFICIENT need 5 available 3\r\n"
        );
        assert_eq!(
            wire(&Failure::no_auth()),
            "-NOAUTH Authentication required.\r\n"
        );
        assert_eq!(
            wire(&Failure::err("two\r\nlines")),
            "-ERR two  lines\r\n",
            "CR and LF never break the framing"
        );
        assert_eq!(
            wire(&Failure::unknown_command(b"a\x01b")),
            "-ERR unknown command 'a?b'\r\n"
        );
        assert_eq!(
            Failure::arity("ping").to_string(),
            "ERR wrong number of arguments for 'ping' command"
        );
    }
}
