//! Reading values out of Redis replies, for the lease and the write-behind.

use redis::Value;

/// A reply value as text: strings and numbers as they read, nil as empty,
/// anything else as its debug form (for messages).
pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        Value::Nil => String::new(),
        other => format!("{other:?}"),
    }
}

/// A reply value as an integer (0 unless it is one).
pub fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        _ => 0,
    }
}
