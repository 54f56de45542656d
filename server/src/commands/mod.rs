//! Commands: one file per family. A command is looked up by name
//! (case-insensitive), checked for arity and permission, parsed into engine
//! calls, and its reply encoded straight into the connection's output buffer.

mod admin;
mod cluster;
mod connection;
mod credits;
mod describe;
mod holds;
mod members;
mod plans;
mod reads;

use crate::app::App;
use crate::config::Role;
use crate::error::ErrorCode;
pub use crate::error::Failure;
use crate::multi::{Exec, Multi};
use crate::resp::encode::{self, Proto};
use creditd_engine::Outcome;

/// Per-connection state the commands see and change.
pub struct Session {
    pub id: u64,
    pub proto: Proto,
    /// The role this connection acts as (None: not authenticated yet).
    pub role: Option<Role>,
    pub name: Option<Vec<u8>>,
    pub lib_name: Option<Vec<u8>>,
    pub lib_ver: Option<Vec<u8>>,
    /// Set by QUIT: close after sending the reply.
    pub closing: bool,
    /// Commands queued after MULTI (None: not in a transaction).
    pub multi: Option<Multi>,
    /// The commands of an EXEC not yet run (None: no EXEC running).
    pub exec: Option<Exec>,
    /// Cluster mode: the slot and generation of the keyed command just run,
    /// for its reply to check once its change is in Redis.
    pub routed: Option<(u16, u64)>,
}

impl Session {
    /// A new connection's session: RESP2, acting as `role` (None: it must
    /// authenticate first).
    pub fn new(id: u64, role: Option<Role>) -> Session {
        Session {
            id,
            proto: Proto::Resp2,
            role,
            name: None,
            lib_name: None,
            lib_ver: None,
            closing: false,
            multi: None,
            exec: None,
            routed: None,
        }
    }
}

/// Who may run a command (contract §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Before authentication: PING HELLO AUTH QUIT.
    Open,
    /// Connection housekeeping any authenticated role may do (ECHO, SELECT, CLIENT, COMMAND).
    Session,
    /// Holds, debits, quotes and reads: gateway and admin.
    Gateway,
    /// INFO: probe and admin.
    Probe,
    /// Grants, plans, config, clock: admin only.
    Admin,
}

impl Access {
    pub fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Access::Open | Access::Session, _)
                | (Access::Gateway, Role::Gateway)
                | (Access::Probe, Role::Probe)
        )
    }
}

/// What the connection must do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The reply may go out at once.
    Done,
    /// The reply may go out once the journal is durable up to this seq.
    Wait(u64),
}

pub type Handler = fn(&App, &mut Session, &[&[u8]], &mut Vec<u8>) -> Result<Flow, Failure>;

/// One command's entry in the table.
pub struct Spec {
    pub name: &'static str,
    /// Redis-style arity: n > 0 exactly n arguments (with the name), n < 0 at least -n.
    pub arity: i32,
    pub access: Access,
    pub handler: Handler,
    /// Changes state (journaled; counted as a write).
    pub write: bool,
    /// The first argument is an account: key position 1 in COMMAND, so a
    /// cluster-aware client routes the command by the account's hash slot.
    pub keyed: bool,
    /// One line for COMMAND DOCS.
    pub summary: &'static str,
}

macro_rules! spec {
    ($name:expr, $arity:expr, $access:ident, $handler:path, $write:expr, $keyed:expr, $summary:expr) => {
        Spec {
            name: $name,
            arity: $arity,
            access: Access::$access,
            handler: $handler,
            write: $write,
            keyed: $keyed,
            summary: $summary,
        }
    };
}

/// Every command creditd knows, in the order of [`Spec`] indices.
#[rustfmt::skip]
pub static COMMANDS: &[Spec] = &[
    // name, arity, access, handler, write, keyed (first argument is an account), summary
    spec!("reserve", -4, Gateway, holds::reserve, true, true, "Holds credits of an account for a job"),
    spec!("capture", -4, Gateway, holds::capture, true, true, "Spends part of a hold and keeps it open"),
    spec!("commit", -3, Gateway, holds::commit, true, true, "Spends what a job used of its hold and closes it"),
    spec!("release", 3, Gateway, holds::release, true, true, "Gives a hold's credits back"),
    spec!("extend", 4, Gateway, holds::extend, true, true, "Moves a hold's expiry"),
    spec!("debit", -4, Gateway, credits::debit, true, true, "Spends available credits at once"),
    spec!("grant", -4, Admin, credits::grant, true, true, "Adds a bucket of credits to an account"),
    spec!("quote", 3, Gateway, credits::quote, false, false, "Prices a quantity of a sku"),
    spec!("balance", 2, Gateway, reads::balance, false, true, "An account's five totals"),
    spec!("account", 2, Gateway, reads::account, false, true, "An account's plan, buckets and open holds"),
    spec!("history", -2, Gateway, reads::history, false, true, "An account's newest history entries"),
    spec!("subscribe", -3, Admin, plans::subscribe, true, true, "Puts an account on a plan"),
    spec!("seats", 3, Admin, plans::seats, true, true, "Sets the seats of an account's plan"),
    spec!("addon", 3, Admin, plans::addon, true, true, "Sets the add-on units of an account's plan"),
    spec!("unsubscribe", 2, Admin, plans::unsubscribe, true, true, "Ends an account's plan at its cycle's end"),
    spec!("plan", -3, Admin, plans::plan, true, true, "Puts an account on a plan, or cancels it with NONE"),
    spec!("limit", -4, Admin, members::limit, true, true, "Sets or removes a member's cap per day, month or cycle"),
    spec!("members", 2, Gateway, members::members, false, true, "An account's members: caps, used and held this period"),
    spec!("alert", -3, Admin, members::alert, true, true, "Adds or deletes a low-balance threshold"),
    spec!("events", -1, Gateway, members::events, false, false, "Events after a sequence number: low, insufficient, limited"),
    spec!("ping", -1, Open, connection::ping, false, false, "Answers PONG"),
    spec!("echo", 2, Session, connection::echo, false, false, "Answers its argument"),
    spec!("auth", -2, Open, connection::auth, false, false, "Authenticates the connection"),
    spec!("hello", -1, Open, connection::hello, false, false, "Chooses the protocol and authenticates"),
    spec!("quit", -1, Open, connection::quit, false, false, "Closes the connection"),
    spec!("select", 2, Session, connection::select, false, false, "Accepts database 0 only"),
    spec!("client", -2, Session, connection::client, false, false, "Names the connection and reads its id"),
    spec!("command", -1, Session, describe::command, false, false, "Describes the commands"),
    spec!("cluster", -2, Session, cluster::cluster, false, false, "Cluster state: slots, nodes, this node's id"),
    spec!("asking", 1, Session, cluster::asking, false, false, "Accepted (a slot moving between nodes answers TRYAGAIN)"),
    spec!("readonly", 1, Session, cluster::read_mode, false, false, "Accepted (every node is a master)"),
    spec!("readwrite", 1, Session, cluster::read_mode, false, false, "Accepted (every node is a master)"),
    spec!("info", -1, Probe, admin::info, false, false, "Server information and statistics"),
    spec!("config", -2, Admin, admin::config, false, false, "Reads or reloads the configuration"),
    spec!("clock", -2, Admin, admin::clock, false, false, "Reads or moves the test clock"),
];

/// Finds a command by name, case-insensitively, without allocating.
pub fn lookup(name: &[u8]) -> Option<usize> {
    if name.len() > 16 {
        return None;
    }
    COMMANDS
        .iter()
        .position(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

// ----- argument parsing helpers shared by the families -----

/// The largest integer a client may send: Redis reads integers as signed 64-bit
/// (`string2ll`), so anything above `i64::MAX` is out of range rather than wrapped.
pub const MAX_INTEGER: u64 = i64::MAX as u64;

/// A strict non-negative integer, as Redis's `string2ll` reads one without the sign the
/// contract forbids: ASCII digits only, no leading zero (`0` alone is fine), at most
/// [`MAX_INTEGER`]. `what` names the argument in the error, e.g.
/// `-ERR QTY is not an integer or out of range`.
pub fn parse_u64(arg: &[u8], what: &str) -> Result<u64, Failure> {
    let not_integer = || Failure::not_integer(what);
    match arg {
        [] => return Err(not_integer()),
        [b'0'] => return Ok(0),
        [b'0', ..] => return Err(not_integer()),
        _ => {}
    }
    let mut n: u64 = 0;
    for &c in arg {
        if !c.is_ascii_digit() {
            return Err(not_integer());
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((c - b'0') as u64))
            .filter(|&n| n <= MAX_INTEGER)
            .ok_or_else(not_integer)?;
    }
    Ok(n)
}

/// A credit amount or quantity: 0 to 10^15.
pub fn parse_amount(arg: &[u8], what: &str) -> Result<u64, Failure> {
    let n = parse_u64(arg, what)?;
    if n > creditd_engine::MAX_AMOUNT {
        return Err(Failure::err(format!("{what} out of range (0 to 10^15)")));
    }
    Ok(n)
}

/// A u32 count (seats, units).
pub fn parse_u32(arg: &[u8], what: &str) -> Result<u32, Failure> {
    u32::try_from(parse_u64(arg, what)?).map_err(|_| Failure::not_integer(what))
}

/// A hold TTL: 1 to 86,400,000 ms.
pub fn parse_ttl(arg: &[u8], what: &str) -> Result<u64, Failure> {
    let n = parse_u64(arg, what)?;
    if !(1..=creditd_engine::engine::MAX_HOLD_TTL_MS).contains(&n) {
        return Err(Failure::err(format!(
            "{what} out of range (1 to 86400000 ms)"
        )));
    }
    Ok(n)
}

/// An id: 1 to 128 bytes.
pub fn id(arg: &[u8]) -> Result<&[u8], Failure> {
    if creditd_engine::id::valid_id(arg) {
        Ok(arg)
    } else {
        Err(Failure::err("ids must be 1 to 128 bytes"))
    }
}

/// A keyword comparison, case-insensitive.
#[inline]
pub fn is(arg: &[u8], keyword: &str) -> bool {
    arg.eq_ignore_ascii_case(keyword.as_bytes())
}

/// A sku or plan name as UTF-8 (names in the config are UTF-8; anything else is unknown).
pub fn name<'a>(arg: &'a [u8], what: &str) -> Result<&'a str, Failure> {
    std::str::from_utf8(arg)
        .map_err(|_| Failure::new(ErrorCode::NOT_FOUND, format!("no such {what}")))
}

/// Encodes an engine mutation outcome as an integer reply.
pub fn reply_outcome(out: &mut Vec<u8>, outcome: Outcome) -> Flow {
    encode::integer(out, outcome.reply as i64);
    Flow::Wait(outcome.wait_seq)
}

/// Writes a `field value ...` reply: a map in RESP3, a flat array in RESP2.
pub fn fields(out: &mut Vec<u8>, proto: Proto, pairs: &[(&str, u64)]) {
    encode::map_header(out, proto, pairs.len());
    for (k, v) in pairs {
        encode::bulk_str(out, k);
        encode::integer(out, *v as i64);
    }
}

/// Parses `amount | SKU sku QTY n` starting at `a[i]`; returns the charge and the next index.
pub fn parse_charge<'a>(
    a: &[&'a [u8]],
    i: usize,
) -> Result<(creditd_engine::Charge<'a>, usize), Failure> {
    use creditd_engine::Charge;
    let first = a.get(i).ok_or_else(Failure::syntax)?;
    if is(first, "SKU") {
        let (Some(sku), Some(qty_kw), Some(qty)) = (a.get(i + 1), a.get(i + 2), a.get(i + 3))
        else {
            return Err(Failure::syntax());
        };
        if !is(qty_kw, "QTY") {
            return Err(Failure::syntax());
        }
        let sku = name(sku, "sku")?;
        Ok((
            Charge::Sku {
                sku,
                qty: parse_amount(qty, "QTY")?,
            },
            i + 4,
        ))
    } else {
        Ok((Charge::Amount(parse_amount(first, "amount")?), i + 1))
    }
}

/// Parses `total | QTY n` starting at `a[i]`; returns the usage and the next index.
pub fn parse_usage(a: &[&[u8]], i: usize) -> Result<(creditd_engine::Usage, usize), Failure> {
    use creditd_engine::Usage;
    let first = a.get(i).ok_or_else(Failure::syntax)?;
    if is(first, "QTY") {
        let qty = a.get(i + 1).ok_or_else(Failure::syntax)?;
        Ok((Usage::Qty(parse_amount(qty, "QTY")?), i + 2))
    } else {
        Ok((Usage::Total(parse_amount(first, "total")?), i + 1))
    }
}

/// Refuses trailing arguments.
pub fn end(a: &[&[u8]], i: usize) -> Result<(), Failure> {
    if i == a.len() {
        Ok(())
    } else {
        Err(Failure::syntax())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<u64, Failure>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn integers_are_strict_as_redis_reads_them() {
        for (text, n) in [
            ("0", 0),
            ("7", 7),
            ("10", 10),
            ("1000000000000000", 1_000_000_000_000_000),
            ("9223372036854775807", i64::MAX as u64),
        ] {
            assert_eq!(parse_u64(text.as_bytes(), "n"), Ok(n), "{text}");
        }
        for bad in [
            "",
            "00",
            "05",
            "007",
            "-5",
            "+5",
            "-0",
            " 5",
            "5 ",
            "5x",
            "0x10",
            "1e3",
            "1.0",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            assert_eq!(
                message(parse_u64(bad.as_bytes(), "QTY")),
                "ERR QTY is not an integer or out of range",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ranges_name_the_argument() {
        assert_eq!(
            parse_amount(b"1000000000000000", "amount"),
            Ok(creditd_engine::MAX_AMOUNT)
        );
        assert_eq!(
            message(parse_amount(b"1000000000000001", "QTY")),
            "ERR QTY out of range (0 to 10^15)"
        );
        assert_eq!(
            message(parse_amount(b"01", "amount")),
            "ERR amount is not an integer or out of range"
        );
        assert_eq!(parse_u32(b"4294967295", "SEATS"), Ok(u32::MAX));
        assert_eq!(
            parse_u32(b"4294967296", "SEATS").unwrap_err().to_string(),
            "ERR SEATS is not an integer or out of range"
        );
        assert_eq!(parse_ttl(b"1", "TTL"), Ok(1));
        assert_eq!(
            message(parse_ttl(b"0", "TTL")),
            "ERR TTL out of range (1 to 86400000 ms)"
        );
        assert_eq!(
            message(parse_ttl(b"09", "ttl_ms")),
            "ERR ttl_ms is not an integer or out of range"
        );
    }
}
