//! Errors a command can fail with: a code from the contract's list (§3) and a
//! detail for people. The code is a type, not the first word of a string, so
//! the server encodes it once and counts errors by code without parsing.

use std::borrow::Cow;
use std::fmt;

/// The contract's error codes that the engine can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// `ERR`: syntax, range, limits, a state the command cannot start from.
    Err,
    /// `INSUFFICIENT`: not enough available credits.
    Insufficient,
    /// `NOTFOUND`: unknown hold, sku or plan.
    NotFound,
    /// `CONFLICT`: id reused with other arguments, or the hold's state forbids it.
    Conflict,
    /// `EXPIRED`: the hold expired before this command.
    Expired,
    /// `NOTENTITLED`: the account's plan does not include the sku's feature.
    NotEntitled,
    /// `BUSY`: persistence is behind its bound; nothing was applied.
    Busy,
    /// `LIMITED`: a member's cap would be exceeded.
    Limited,
}

impl Code {
    /// Every code, in declaration order (`ALL[c.index()] == c`).
    pub const ALL: [Code; 8] = [
        Code::Err,
        Code::Insufficient,
        Code::NotFound,
        Code::Conflict,
        Code::Expired,
        Code::NotEntitled,
        Code::Busy,
        Code::Limited,
    ];

    /// The word that starts the error line on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Err => "ERR",
            Code::Insufficient => "INSUFFICIENT",
            Code::NotFound => "NOTFOUND",
            Code::Conflict => "CONFLICT",
            Code::Expired => "EXPIRED",
            Code::NotEntitled => "NOTENTITLED",
            Code::Busy => "BUSY",
            Code::Limited => "LIMITED",
        }
    }

    /// Position in [`Code::ALL`], for counters kept in an array.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What went wrong beyond the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    /// A sentence for people.
    Text(Cow<'static, str>),
    /// INSUFFICIENT's numbers: `need N available M` (clients parse them).
    Shortfall { need: u64, available: u64 },
    /// LIMITED's numbers: `need N remaining M`.
    OverCap { need: u64, remaining: u64 },
}

/// Why a command was refused. A refused command changed nothing but,
/// perhaps, the event it raised (`insufficient`, `limited`): then its reply
/// waits for that event's journal record, `wait_seq`, like a change's.
#[derive(Debug, Clone)]
pub struct EngineError {
    pub code: Code,
    pub detail: Detail,
    /// The journal seq of the refusal's event record (0: none).
    pub wait_seq: u64,
}

/// Errors are equal by what they say; `wait_seq` is bookkeeping.
impl PartialEq for EngineError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.detail == other.detail
    }
}

impl Eq for EngineError {}

/// Which command's id an idempotency conflict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOf {
    Grant,
    Debit,
    Hold,
}

impl EngineError {
    pub fn new(code: Code, text: impl Into<Cow<'static, str>>) -> Self {
        EngineError {
            code,
            detail: Detail::Text(text.into()),
            wait_seq: 0,
        }
    }

    pub fn invalid(text: impl Into<Cow<'static, str>>) -> Self {
        EngineError::new(Code::Err, text)
    }

    pub fn not_found(text: impl Into<Cow<'static, str>>) -> Self {
        EngineError::new(Code::NotFound, text)
    }

    pub fn conflict(text: impl Into<Cow<'static, str>>) -> Self {
        EngineError::new(Code::Conflict, text)
    }

    pub fn busy(text: impl Into<Cow<'static, str>>) -> Self {
        EngineError::new(Code::Busy, text)
    }

    pub fn insufficient(need: u64, available: u64) -> Self {
        EngineError {
            code: Code::Insufficient,
            detail: Detail::Shortfall { need, available },
            wait_seq: 0,
        }
    }

    pub fn limited(need: u64, remaining: u64) -> Self {
        EngineError {
            code: Code::Limited,
            detail: Detail::OverCap { need, remaining },
            wait_seq: 0,
        }
    }

    /// An id sent again with arguments other than its first use: the one
    /// wording of this CONFLICT for every command.
    pub fn id_reused(of: IdOf) -> Self {
        EngineError::conflict(match of {
            IdOf::Grant => "grant id was used with other arguments",
            IdOf::Debit => "debit id was used with other arguments",
            IdOf::Hold => "hold id was used with other arguments",
        })
    }

    /// INSUFFICIENT's numbers, if this is one.
    pub fn shortfall(&self) -> Option<(u64, u64)> {
        match self.detail {
            Detail::Shortfall { need, available } => Some((need, available)),
            _ => None,
        }
    }

    /// What the refused command needed, for INSUFFICIENT and LIMITED.
    pub fn need(&self) -> Option<u64> {
        match self.detail {
            Detail::Shortfall { need, .. } | Detail::OverCap { need, .. } => Some(need),
            Detail::Text(_) => None,
        }
    }
}

impl fmt::Display for Detail {
    /// The error line after its code: the one wording of each detail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::Text(text) => f.write_str(text),
            Detail::Shortfall { need, available } => {
                write!(f, "need {need} available {available}")
            }
            Detail::OverCap { need, remaining } => {
                write!(f, "need {need} remaining {remaining}")
            }
        }
    }
}

impl fmt::Display for EngineError {
    /// The error line as sent: code, space, detail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for EngineError {}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_index_their_table() {
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    #[test]
    fn lines_start_with_the_code() {
        assert_eq!(
            EngineError::insufficient(5, 3).to_string(),
            "INSUFFICIENT need 5 available 3"
        );
        assert_eq!(
            EngineError::id_reused(IdOf::Debit).to_string(),
            "CONFLICT debit id was used with other arguments"
        );
        assert_eq!(
            EngineError::limited(5, 2).to_string(),
            "LIMITED need 5 remaining 2"
        );
    }
}
