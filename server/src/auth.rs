//! Token checks for AUTH and HELLO ... AUTH.
//!
//! A token is compared through its SHA-256 digest: the configured tokens are
//! digested once when the config is loaded, a given token once per attempt,
//! and the two 32-byte digests are compared in constant time. Comparing the
//! raw bytes, even in constant time, returns at once when the lengths differ,
//! so response times would tell a client how long a valid token is; with
//! digests every comparison costs the same whatever the lengths.

use crate::config::{Role, Token};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured tokens, ready to check against.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

struct Entry {
    digest: [u8; 32],
    role: Role,
    /// As in [`Token::user`]: when set, AUTH must name this user.
    user: Option<String>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Digests the configured tokens (the secrets themselves are not kept).
    pub fn new(tokens: &[Token]) -> Tokens {
        Tokens {
            entries: tokens
                .iter()
                .map(|t| Entry {
                    digest: digest(t.token.as_bytes()),
                    role: t.role,
                    user: t.user.clone(),
                })
                .collect(),
        }
    }

    /// No tokens configured: every connection is admin.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The role of the first entry whose token and user match. Every entry's
    /// digest is compared, whatever matched before, so the time taken does not
    /// depend on which entry (if any) matches.
    pub fn authenticate(&self, user: Option<&[u8]>, token: &[u8]) -> Option<Role> {
        let given = digest(token);
        let mut found = None;
        for e in &self.entries {
            let token_ok: bool = e.digest.ct_eq(&given).into();
            let user_ok = match (&e.user, user) {
                (Some(expected), Some(given)) => expected.as_bytes() == given,
                (Some(_), None) => false,
                (None, _) => true,
            };
            if token_ok && user_ok && found.is_none() {
                found = Some(e.role);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn token(token: &str, role: Role, user: Option<&str>) -> Token {
        Token {
            token: token.into(),
            role,
            user: user.map(Into::into),
        }
    }

    #[test]
    fn roles_users_and_wrong_tokens() {
        let t = Tokens::new(&[
            token("admin-secret", Role::Admin, None),
            token("gw-secret", Role::Gateway, Some("gateway")),
        ]);
        assert_eq!(t.authenticate(None, b"admin-secret"), Some(Role::Admin));
        assert_eq!(
            t.authenticate(Some(b"anyone"), b"admin-secret"),
            Some(Role::Admin)
        );
        assert_eq!(
            t.authenticate(Some(b"gateway"), b"gw-secret"),
            Some(Role::Gateway)
        );
        assert_eq!(t.authenticate(None, b"gw-secret"), None, "user required");
        assert_eq!(t.authenticate(Some(b"other"), b"gw-secret"), None);
        for wrong in [&b""[..], b"admin-secre", b"admin-secret!", b"ADMIN-SECRET"] {
            assert_eq!(t.authenticate(None, wrong), None, "{wrong:?}");
        }
        assert!(Tokens::new(&[]).is_empty());
    }

    /// The fastest of a few runs: the least disturbed by the machine.
    fn fastest(tokens: &Tokens, given: &[u8]) -> Duration {
        (0..7)
            .map(|_| {
                let started = Instant::now();
                assert_eq!(tokens.authenticate(None, given), None);
                started.elapsed()
            })
            .min()
            .expect("runs")
    }

    /// A wrong token of the configured length and one a byte shorter take the
    /// same time. (Comparing raw bytes answered the shorter one at once and
    /// spent a full comparison on the other: a ratio in the thousands with a
    /// token this long. Large tokens make the difference stand far above noise.)
    #[test]
    fn time_does_not_tell_the_token_length() {
        let configured = "a".repeat(256 * 1024);
        let tokens = Tokens::new(&[token(&configured, Role::Admin, None)]);
        let same_length = vec![b'b'; configured.len()];
        let shorter = vec![b'b'; configured.len() - 1];
        let (a, b) = (fastest(&tokens, &same_length), fastest(&tokens, &shorter));
        let ratio = a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        assert!(
            (0.33..3.0).contains(&ratio),
            "same length {a:?}, one byte shorter {b:?}"
        );
    }
}
