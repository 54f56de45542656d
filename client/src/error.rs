//! Typed errors from creditd's error replies.
//!
//! The first word of an error reply is its code (`INSUFFICIENT need 500
//! available 120`, `CONFLICT hold id was used with other arguments`). A
//! gateway acts on the code, not on the text: `Insufficient` means "ask the
//! user to top up", `Busy` means "try again shortly", `Conflict` means a bug
//! in the caller's id handling. So each code the contract defines has its own
//! variant, and the two with numbers carry them parsed.

use std::fmt;

/// What went wrong with a creditd command.
///
/// A failed command changed nothing on the server (the one exception is
/// `Busy` with "not durable yet" in its message: the change may become
/// durable, and a retry with the same id tells). [`Error::is_retryable`]
/// says which failures the same command may be sent again for.
#[derive(Clone, Debug)]
pub enum Error {
    /// `INSUFFICIENT need <n> available <m>`: the account lacks the credits.
    /// Retrying the same command succeeds only once credits arrive.
    Insufficient { need: u64, available: u64 },
    /// `LIMITED need <n> remaining <m>`: a member's cap would be exceeded.
    Limited { need: u64, remaining: u64 },
    /// `CONFLICT`: the id was used before with other arguments, or the
    /// hold's state forbids this (RELEASE after COMMIT).
    Conflict(String),
    /// `NOTFOUND`: unknown hold, SKU or plan.
    NotFound(String),
    /// `EXPIRED`: the hold expired before this COMMIT, CAPTURE or EXTEND.
    Expired(String),
    /// `NOTENTITLED`: the account's plan does not include the SKU's feature.
    NotEntitled(String),
    /// `BUSY`: persistence is behind or cannot write; retry later.
    Busy(String),
    /// `NOAUTH`, `WRONGPASS` or `NOPERM`: no token, a bad token, or a token
    /// whose role may not run the command. `code` is `AUTH` when the redis
    /// crate refused the handshake itself (a bad password in the URL).
    Auth { code: String, message: String },
    /// Any other error reply: `ERR` (syntax, a bad number, a value out of
    /// range, too many accounts) and codes this client does not know.
    Other { code: String, message: String },
    /// A reply this client cannot read (a field missing, a wrong type).
    Protocol(String),
    /// The connection failed or timed out: the command may or may not have
    /// been applied. Retry it with the same id to find out.
    Io(redis::RedisError),
}

impl Error {
    /// The typed error for an error reply's code and the rest of its line.
    pub fn from_reply(code: &str, message: &str) -> Error {
        let text = || message.to_owned();
        match code {
            "INSUFFICIENT" => match numbers(message, "need", "available") {
                Some((need, available)) => Error::Insufficient { need, available },
                None => Error::other(code, message),
            },
            "LIMITED" => match numbers(message, "need", "remaining") {
                Some((need, remaining)) => Error::Limited { need, remaining },
                None => Error::other(code, message),
            },
            "CONFLICT" => Error::Conflict(text()),
            "NOTFOUND" => Error::NotFound(text()),
            "EXPIRED" => Error::Expired(text()),
            "NOTENTITLED" => Error::NotEntitled(text()),
            "BUSY" => Error::Busy(text()),
            "NOAUTH" | "WRONGPASS" | "NOPERM" => Error::Auth {
                code: code.to_owned(),
                message: text(),
            },
            _ => Error::other(code, message),
        }
    }

    /// The typed error for a whole error line as the server sent it, without
    /// the leading `-`: `INSUFFICIENT need 500 available 120`.
    pub fn from_reply_line(line: &str) -> Error {
        let (code, message) = line.split_once(' ').unwrap_or((line, ""));
        Error::from_reply(code, message)
    }

    fn other(code: &str, message: &str) -> Error {
        Error::Other {
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The reply's code (`INSUFFICIENT`, `ERR`, ...); `None` for I/O and
    /// unreadable replies.
    pub fn code(&self) -> Option<&str> {
        Some(match self {
            Error::Insufficient { .. } => "INSUFFICIENT",
            Error::Limited { .. } => "LIMITED",
            Error::Conflict(_) => "CONFLICT",
            Error::NotFound(_) => "NOTFOUND",
            Error::Expired(_) => "EXPIRED",
            Error::NotEntitled(_) => "NOTENTITLED",
            Error::Busy(_) => "BUSY",
            Error::Auth { code, .. } | Error::Other { code, .. } => code,
            Error::Protocol(_) | Error::Io(_) => return None,
        })
    }

    /// May the same command, with the same id, be sent again?
    ///
    /// Only when the failure says nothing about the command itself: the
    /// connection broke or timed out (the outcome is unknown; the same id
    /// makes a second delivery harmless), or creditd answered `BUSY` (it
    /// could not persist and applied nothing, or applied a change it could
    /// not yet make durable, which the retry with the same id reports). Every
    /// other answer is final for these arguments: sending them again gets
    /// the same answer.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io(_) | Error::Busy(_))
    }

    /// An `Io` error for a command that got no reply within `budget`.
    pub(crate) fn gave_up(budget: std::time::Duration) -> Error {
        Error::Io(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no reply within the retry budget of {budget:?}"),
        )))
    }
}

/// `<a> <n> <b> <m>` (`need 500 available 120`) as `(n, m)`.
fn numbers(message: &str, a: &str, b: &str) -> Option<(u64, u64)> {
    let mut words = message.split_ascii_whitespace();
    if words.next()? != a {
        return None;
    }
    let n = words.next()?.parse().ok()?;
    if words.next()? != b {
        return None;
    }
    let m = words.next()?.parse().ok()?;
    Some((n, m))
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Error {
        if e.is_io_error() {
            return Error::Io(e);
        }
        if e.kind() == redis::ErrorKind::AuthenticationFailed {
            return Error::Auth {
                code: "AUTH".into(),
                message: e.to_string(),
            };
        }
        match e.code() {
            Some(code) => Error::from_reply(code, e.detail().unwrap_or("")),
            None => Error::Protocol(e.to_string()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Insufficient { need, available } => {
                write!(f, "INSUFFICIENT need {need} available {available}")
            }
            Error::Limited { need, remaining } => {
                write!(f, "LIMITED need {need} remaining {remaining}")
            }
            Error::Conflict(m)
            | Error::NotFound(m)
            | Error::Expired(m)
            | Error::NotEntitled(m)
            | Error::Busy(m) => write!(f, "{} {m}", self.code().unwrap_or_default()),
            Error::Auth { code, message } | Error::Other { code, message } => {
                write!(f, "{code} {message}")
            }
            Error::Protocol(m) => write!(f, "unexpected reply from creditd: {m}"),
            Error::Io(e) => write!(f, "connection to creditd failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a real reply line becomes, through the redis crate's own
    /// parser and error type (the path every reply takes).
    fn parsed(line: &str) -> Error {
        let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).expect("parse");
        Error::from(value.extract_error().expect_err("an error reply"))
    }

    #[test]
    fn insufficient_carries_its_numbers() {
        let e = parsed("INSUFFICIENT need 100000 available 1100");
        assert!(matches!(
            e,
            Error::Insufficient {
                need: 100000,
                available: 1100
            }
        ));
        assert_eq!(e.code(), Some("INSUFFICIENT"));
        assert_eq!(e.to_string(), "INSUFFICIENT need 100000 available 1100");
        assert!(!e.is_retryable());
    }

    #[test]
    fn limited_carries_its_numbers() {
        let e = parsed("LIMITED need 50 remaining 20");
        assert!(matches!(
            e,
            Error::Limited {
                need: 50,
                remaining: 20
            }
        ));
        assert_eq!(e.to_string(), "LIMITED need 50 remaining 20");
    }

    #[test]
    fn an_unreadable_number_keeps_the_text() {
        for line in [
            "INSUFFICIENT need lots available 3",
            "INSUFFICIENT need 5",
            "INSUFFICIENT",
            "LIMITED remaining 5 need 3",
        ] {
            let e = parsed(line);
            assert!(matches!(e, Error::Other { .. }), "{line}: {e:?}");
            assert_eq!(e.to_string().trim_end(), line);
        }
    }

    #[test]
    fn each_code_has_its_variant_and_keeps_its_message() {
        type IsExpected = fn(&Error) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            (
                "CONFLICT hold id was used with other arguments",
                |e| matches!(e, Error::Conflict(m) if m == "hold id was used with other arguments"),
            ),
            (
                "NOTFOUND no such sku 'no/such'",
                |e| matches!(e, Error::NotFound(m) if m == "no such sku 'no/such'"),
            ),
            (
                "EXPIRED the hold expired",
                |e| matches!(e, Error::Expired(m) if m == "the hold expired"),
            ),
            (
                "NOTENTITLED the plan does not include 'video'",
                |e| matches!(e, Error::NotEntitled(m) if m == "the plan does not include 'video'"),
            ),
            (
                "BUSY the journal cannot write",
                |e| matches!(e, Error::Busy(m) if m == "the journal cannot write"),
            ),
            (
                "NOAUTH Authentication required.",
                |e| matches!(e, Error::Auth { code, message } if code == "NOAUTH" && message == "Authentication required."),
            ),
            (
                "WRONGPASS invalid username-password pair",
                |e| matches!(e, Error::Auth { code, .. } if code == "WRONGPASS"),
            ),
            (
                "NOPERM this token may not run 'grant'",
                |e| matches!(e, Error::Auth { code, message } if code == "NOPERM" && message == "this token may not run 'grant'"),
            ),
            (
                "ERR unknown command 'frobnicate'",
                |e| matches!(e, Error::Other { code, message } if code == "ERR" && message == "unknown command 'frobnicate'"),
            ),
            (
                "MOVED 3999 127.0.0.1:6381",
                |e| matches!(e, Error::Other { code, message } if code == "MOVED" && message == "3999 127.0.0.1:6381"),
            ),
        ];
        for (line, is_expected) in cases {
            let e = parsed(line);
            assert!(is_expected(&e), "{line}: {e:?}");
            assert_eq!(e.to_string(), *line, "Display gives the line back");
            assert_eq!(Some(line.split(' ').next().unwrap()), e.code());
            assert_eq!(
                e.is_retryable(),
                line.starts_with("BUSY"),
                "{line}: only BUSY of the replies is retryable"
            );
        }
    }

    #[test]
    fn from_reply_line_splits_code_and_message() {
        assert!(matches!(
            Error::from_reply_line("INSUFFICIENT need 7 available 0"),
            Error::Insufficient {
                need: 7,
                available: 0
            }
        ));
        assert!(matches!(
            Error::from_reply_line("CONFLICT"),
            Error::Conflict(m) if m.is_empty()
        ));
    }

    #[test]
    fn io_failures_are_retryable_and_have_no_code() {
        for kind in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::TimedOut,
        ] {
            let e = Error::from(redis::RedisError::from(std::io::Error::from(kind)));
            assert!(matches!(e, Error::Io(_)), "{kind:?}: {e:?}");
            assert!(e.is_retryable());
            assert_eq!(e.code(), None);
        }
        assert!(Error::gave_up(std::time::Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn a_refused_handshake_is_an_auth_error() {
        let e = Error::from(redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        )));
        assert!(
            matches!(&e, Error::Auth { code, .. } if code == "AUTH"),
            "{e:?}"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_client_side_failure_is_a_protocol_error() {
        let e = Error::from(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "not an integer",
        )));
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        assert!(!e.is_retryable());
    }
}
