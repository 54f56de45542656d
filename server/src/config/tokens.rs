//! Access tokens (`[[tokens]]`, PROTOCOL.md §6): who may do what.

use creditd_engine::config::read::{
    bad, check_keys, check_name, describe, join, kind, quote, string, table, Bad, R,
};
use toml::Value;

const TOKEN_KEYS: [&str; 3] = ["token", "role", "user"];

/// What a token may do (PROTOCOL.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// The job path and reads: what an API gateway in front of the models needs.
    Gateway,
    /// PING and INFO: for monitoring.
    Probe,
}

impl Role {
    /// The config-file spelling (`admin`, `gateway`, `probe`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Gateway => "gateway",
            Role::Probe => "probe",
        }
    }

    /// Parses the config-file spelling, exactly.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "gateway" => Some(Role::Gateway),
            "probe" => Some(Role::Probe),
            _ => None,
        }
    }
}

/// One `[[tokens]]` entry.
///
/// `Debug` does not print the secret, so a config can be logged.
#[derive(Clone)]
pub struct Token {
    pub token: String,
    pub role: Role,
    /// When set, `AUTH user token` must name this user; when unset any user
    /// name (and the one-argument `AUTH token`) is accepted.
    pub user: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .field("user", &self.user)
            .finish()
    }
}

/// The `tokens` array of tables.
pub(super) fn tokens(v: &Value) -> R<Vec<Token>> {
    let Value::Array(items) = v else {
        return bad(
            "tokens",
            format!(
                "expected an array of tables ([[tokens]]), found {}",
                describe(v)
            ),
        );
    };
    let mut out: Vec<Token> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = format!("tokens[{i}]");
        let t = table(item, &key)?;
        check_keys(t, &key, &TOKEN_KEYS)?;
        let tkey = join(&key, "token");
        let token = match t.get("token") {
            None => return bad(&tkey, "missing"),
            // Never echo a secret into an error message or a log.
            Some(Value::String(s)) => s.clone(),
            Some(other) => return bad(&tkey, format!("expected a string, found {}", kind(other))),
        };
        if token.is_empty() {
            return bad(&tkey, "is empty; a token must be at least one byte");
        }
        if let Some(j) = out.iter().position(|o| o.token == token) {
            return bad(&tkey, format!("the same token as tokens[{j}]"));
        }
        let rkey = join(&key, "role");
        let role = match t.get("role") {
            None => return bad(&rkey, "missing (expected admin, gateway or probe)"),
            Some(v) => {
                let s = string(v, &rkey)?;
                Role::parse(s).ok_or_else(|| Bad {
                    key: rkey.clone(),
                    message: format!(
                        "{} is not a role (expected admin, gateway or probe)",
                        quote(s)
                    ),
                })?
            }
        };
        let user = match t.get("user") {
            None => None,
            Some(v) => {
                let ukey = join(&key, "user");
                let u = string(v, &ukey)?;
                check_name(u, &ukey, "user")?;
                Some(u.to_string())
            }
        };
        out.push(Token { token, role, user });
    }
    Ok(out)
}
