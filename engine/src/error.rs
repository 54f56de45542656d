//! Errors a command can fail with. The first word of the rendered message is
//! the contract's error code (§3), so the server can send it as is.

use std::fmt;

/// Why a command was refused. A refused command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// `ERR`: syntax, range, limits, a state the command cannot start from.
    Invalid(String),
    /// `INSUFFICIENT`: not enough available credits.
    Insufficient { need: u64, available: u64 },
    /// `NOTFOUND`: unknown hold, sku or plan.
    NotFound(String),
    /// `CONFLICT`: id reused with other arguments, or the hold's state forbids it.
    Conflict(String),
    /// `EXPIRED`: the hold expired before this command.
    Expired(String),
    /// `NOTENTITLED`: the account's plan does not include the sku's feature.
    NotEntitled(String),
    /// `BUSY`: persistence is behind its bound; nothing was applied.
    Busy(String),
}

impl EngineError {
    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Invalid(_) => "ERR",
            EngineError::Insufficient { .. } => "INSUFFICIENT",
            EngineError::NotFound(_) => "NOTFOUND",
            EngineError::Conflict(_) => "CONFLICT",
            EngineError::Expired(_) => "EXPIRED",
            EngineError::NotEntitled(_) => "NOTENTITLED",
            EngineError::Busy(_) => "BUSY",
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        EngineError::Invalid(msg.into())
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Insufficient { need, available } => {
                write!(f, "INSUFFICIENT need {need} available {available}")
            }
            EngineError::Invalid(m)
            | EngineError::NotFound(m)
            | EngineError::Conflict(m)
            | EngineError::Expired(m)
            | EngineError::NotEntitled(m)
            | EngineError::Busy(m) => write!(f, "{} {}", self.code(), m),
        }
    }
}

impl std::error::Error for EngineError {}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
