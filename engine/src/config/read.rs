//! Reading a parsed TOML table with errors that name the full key path
//! (`skus."video/x".unit`) and say what was expected. The engine reads its
//! part of the config file with these, and the server its own part, so that
//! every message in the file has the same form.

use toml::{Table, Value};

use super::MAX_NAME_LEN;

/// A config mistake: which file, which key (`skus."video/x".unit`; empty for
/// a TOML syntax error, whose message gives line and column) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A mistake before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub key: String,
    pub message: String,
}

impl Bad {
    /// The error as reported: `file` only names the source.
    pub fn in_file(self, file: &str) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            key: self.key,
            message: self.message,
        }
    }
}

pub type R<T> = Result<T, Bad>;

pub fn bad<T>(key: &str, message: impl Into<String>) -> R<T> {
    Err(Bad {
        key: key.to_string(),
        message: message.into(),
    })
}

/// Parses the text of a config file into a table; a syntax error names line
/// and column.
pub fn parse_table(text: &str) -> R<Table> {
    text.parse().map_err(|e| syntax_error(text, &e))
}

/// Maps a TOML syntax error to "line L, column C: what" (1-based, columns in
/// characters), the form editors jump to.
fn syntax_error(text: &str, e: &toml::de::Error) -> Bad {
    let what = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let message = match e.span() {
        Some(span) => {
            let start = floor_char_boundary(text, span.start.min(text.len()));
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |p| p + 1);
            let column = before[line_start..].chars().count() + 1;
            format!("TOML syntax error at line {line}, column {column}: {what}")
        }
        None => format!("TOML syntax error: {what}"),
    };
    Bad {
        key: String::new(),
        message,
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A key path segment as TOML would write it: bare when it can be, else quoted.
pub fn segment(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        k.to_string()
    } else {
        quote(k)
    }
}

/// A TOML basic string literal of `s`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn join(parent: &str, k: &str) -> String {
    if parent.is_empty() {
        segment(k)
    } else {
        format!("{parent}.{}", segment(k))
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The kind of a value, with the value itself when it is short and scalar.
pub fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() <= 40 => format!("the string {}", quote(s)),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the float {f}"),
        Value::Boolean(b) => format!("the boolean {b}"),
        other => kind(other).to_string(),
    }
}

pub fn table<'a>(v: &'a Value, key: &str) -> R<&'a Table> {
    match v {
        Value::Table(t) => Ok(t),
        other => bad(key, format!("expected a table, found {}", describe(other))),
    }
}

pub fn string<'a>(v: &'a Value, key: &str) -> R<&'a str> {
    match v {
        Value::String(s) => Ok(s),
        other => bad(key, format!("expected a string, found {}", describe(other))),
    }
}

pub fn boolean(v: &Value, key: &str) -> R<bool> {
    match v {
        Value::Boolean(b) => Ok(*b),
        other => bad(
            key,
            format!("expected true or false, found {}", describe(other)),
        ),
    }
}

/// An integer in `min..=max`. `noun` ("amount ") makes the bound readable.
pub fn int_in(v: &Value, key: &str, min: u64, max: u64, noun: &str) -> R<u64> {
    let i = match v {
        Value::Integer(i) => *i,
        other => {
            return bad(
                key,
                format!("expected an integer, found {}", describe(other)),
            )
        }
    };
    match u64::try_from(i) {
        Ok(n) if n > max => bad(key, format!("{n} is more than the maximum {noun}{max}")),
        Ok(n) if n < min => bad(key, format!("{n} is less than the minimum {min}")),
        Ok(n) => Ok(n),
        Err(_) => bad(key, format!("{i} is negative (expected {min} to {max})")),
    }
}

/// Sku, plan, feature and user names: 1 to 128 bytes (the protocol's id
/// limit), without whitespace or control characters, which an inline command
/// (`QUOTE image/x 4` typed into `nc`) could not carry.
pub fn check_name(name: &str, key: &str, what: &str) -> R<()> {
    if name.is_empty() {
        return bad(key, format!("a {what} name cannot be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return bad(
            key,
            format!(
                "the {what} name is {} bytes long; at most {MAX_NAME_LEN}",
                name.len()
            ),
        );
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(
            key,
            format!(
                "the {what} name {} contains whitespace or a control character",
                quote(name)
            ),
        );
    }
    Ok(())
}

/// Rejects keys not in `allowed`, suggesting the closest one: a typo such as
/// `credit = 80` must not silently leave a sku without its price.
pub fn check_keys(t: &Table, path: &str, allowed: &[&str]) -> R<()> {
    for k in t.keys() {
        if allowed.contains(&k.as_str()) {
            continue;
        }
        let hint = allowed
            .iter()
            .map(|a| (edit_distance(k, a), *a))
            .filter(|(d, a)| *d <= 2 || (k.len() >= 4 && a.starts_with(k.as_str())))
            .min()
            .map(|(_, a)| format!(" (did you mean {a}?)"))
            .unwrap_or_default();
        return bad(
            &join(path, k),
            format!("unknown key{hint}; expected one of: {}", allowed.join(", ")),
        );
    }
    Ok(())
}

pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
