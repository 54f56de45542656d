//! Operation ids: what makes a retry safe.

use std::fmt;

/// The id of one logical operation: a hold (its RESERVE and every CAPTURE,
/// COMMIT, RELEASE and EXTEND after it), a debit, or a grant.
///
/// creditd remembers every change by its id: the same command with the same
/// id and arguments applies nothing and returns the first reply again. So
/// make one `OpId` per logical operation (one job, one charge), keep it with
/// the operation, and send it on every retry. A fresh id per attempt would
/// turn the retry of a command whose reply was lost into a second charge.
///
/// [`OpId::new`] draws 128 random bits, so gateway instances need no
/// coordination to make unique ids. An id you already have (a job id from
/// your queue) works too: `OpId::from("job-42")`. creditd accepts 1 to 128
/// bytes per id and answers `ERR` otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(String);

impl OpId {
    /// A new random id: 128 bits from the thread's cryptographically secure
    /// generator, as 32 lowercase hex digits.
    #[allow(clippy::new_without_default)] // a default id would suggest one shared id
    pub fn new() -> OpId {
        OpId(format!("{:032x}", rand::random::<u128>()))
    }

    /// The id as sent to creditd.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for OpId {
    fn from(id: String) -> OpId {
        OpId(id)
    }
}

impl From<&str> for OpId {
    fn from(id: &str) -> OpId {
        OpId(id.to_owned())
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl redis::ToRedisArgs for OpId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.0.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn new_ids_are_32_hex_digits_and_distinct() {
        let ids: HashSet<OpId> = (0..1000).map(|_| OpId::new()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.as_str().len(), 32);
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn an_existing_id_is_kept_as_given() {
        assert_eq!(OpId::from("job-42").as_str(), "job-42");
        assert_eq!(OpId::from(String::from("x")).to_string(), "x");
    }
}
