//! Typed replies of the reads (BALANCE, ACCOUNT, HISTORY) and the integer
//! replies of everything else.
//!
//! creditd sends *fields* replies as flat `field value ...` arrays in RESP2
//! and as maps in RESP3; both read the same here, so a connection URL with
//! `?protocol=resp3` changes nothing for callers. Fields are found by name,
//! and fields this client does not know are skipped: a newer creditd may add
//! some.

use crate::Error;
use redis::Value;

/// An account's five totals. `granted = available + held + spent + expired`
/// at every moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Credits that can be reserved or debited now.
    pub available: u64,
    /// Credits set aside by open holds.
    pub held: u64,
    /// Credits committed, captured or debited.
    pub spent: u64,
    /// Credits whose bucket expired before they were used.
    pub expired: u64,
    /// Every credit ever added.
    pub granted: u64,
}

/// One consistent snapshot of an account (ACCOUNT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub balance: Balance,
    /// The plan, if the account has one.
    pub plan: Option<Plan>,
    /// The live buckets with credits left, in spending order.
    pub buckets: Vec<Bucket>,
    /// The open holds, soonest to expire first.
    pub holds: Vec<Hold>,
}

/// An account's plan and its current cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    /// Seats paid for in the current cycle.
    pub seats: u64,
    /// The current cycle, `[cycle_start, cycle_end)` in Unix ms.
    pub cycle_start: u64,
    pub cycle_end: u64,
}

/// One grant's credits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub id: String,
    /// `subscription`, `addon`, `rollover`, `prepaid` or `promo`.
    pub kind: String,
    pub remaining: u64,
    /// Unix ms; `None` never expires.
    pub expires_at: Option<u64>,
    /// 0 to 100; lower is spent first.
    pub priority: u64,
}

/// An open hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: String,
    /// What RESERVE held.
    pub amount: u64,
    /// What CAPTUREs took so far.
    pub captured: u64,
    /// Unix ms.
    pub expires_at: u64,
}

/// One HISTORY entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// 1, 2, 3... per account.
    pub seq: u64,
    /// When it happened (Unix ms); for expiries and renewals, their due time.
    pub at: u64,
    /// `grant`, `reserve`, `capture`, `commit`, `release`, `expire_hold`,
    /// `debit`, `expire_credits`, `subscribe`, `renew`, `seats`, `addon`,
    /// `unsubscribe`.
    pub op: String,
    /// The grant, hold or debit id, the bucket id, or the plan.
    pub id: String,
    pub amount: u64,
}

/// One member of an account (MEMBERS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub member: String,
    /// The cap per period; `None`: no cap (usage is still counted).
    pub limit: Option<u64>,
    /// `day`, `month` or `cycle`: the cap's period.
    pub per: String,
    /// Credits debited, captured or committed this period.
    pub used: u64,
    /// Credits the member's open holds hold.
    pub held: u64,
    /// The end of the period (Unix ms); `None`: no end.
    pub period_end: Option<u64>,
}

/// One event (EVENTS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// 1, 2, 3...: resume with `EVENTS AFTER <the last seq handled>`.
    pub seq: u64,
    /// Unix ms.
    pub at: u64,
    /// `low`, `insufficient` or `limited`.
    pub kind: String,
    pub account: String,
    /// The member, if the event has one.
    pub member: Option<String>,
    /// `low`: available after the change; otherwise what was needed.
    pub value: u64,
    /// `low`: the threshold crossed.
    pub threshold: Option<u64>,
}

pub(crate) fn members(v: Value) -> Result<Vec<Member>, Error> {
    list(v, "MEMBERS")?
        .into_iter()
        .map(|m| {
            let f = Fields::new(m)?;
            let period_end = f.u64("period_end")?;
            Ok(Member {
                member: f.string("member")?,
                limit: match f.get("limit")? {
                    Value::Int(n) if *n < 0 => None,
                    other => Some(integer(other.clone())?),
                },
                per: f.string("per")?,
                used: f.u64("used")?,
                held: f.u64("held")?,
                period_end: (period_end != 0).then_some(period_end),
            })
        })
        .collect()
}

pub(crate) fn events(v: Value) -> Result<Vec<Event>, Error> {
    list(v, "EVENTS")?
        .into_iter()
        .map(|e| {
            let f = Fields::new(e)?;
            let member = f.string("member")?;
            let threshold = f.u64("threshold")?;
            Ok(Event {
                seq: f.u64("seq")?,
                at: f.u64("at")?,
                kind: f.string("type")?,
                account: f.string("account")?,
                member: (!member.is_empty()).then_some(member),
                value: f.u64("value")?,
                threshold: (threshold != 0).then_some(threshold),
            })
        })
        .collect()
}

/// A non-negative integer reply.
pub(crate) fn integer(v: Value) -> Result<u64, Error> {
    match v {
        Value::Int(n) if n >= 0 => Ok(n as u64),
        other => Err(unexpected("a non-negative integer", &other)),
    }
}

/// A `+OK` reply.
pub(crate) fn ok(v: Value) -> Result<(), Error> {
    match v {
        Value::Okay => Ok(()),
        Value::SimpleString(s) if s == "OK" => Ok(()),
        other => Err(unexpected("OK", &other)),
    }
}

pub(crate) fn balance(v: Value) -> Result<Balance, Error> {
    Fields::new(v)?.balance()
}

pub(crate) fn account(v: Value) -> Result<Account, Error> {
    let f = Fields::new(v)?;
    let name = f.string("plan")?;
    let plan = (!name.is_empty())
        .then(|| {
            Ok::<_, Error>(Plan {
                name,
                seats: f.u64("seats")?,
                cycle_start: f.u64("cycle_start")?,
                cycle_end: f.u64("cycle_end")?,
            })
        })
        .transpose()?;
    let buckets = f
        .list("buckets")?
        .into_iter()
        .map(|b| {
            let b = Fields::new(b)?;
            let expires_at = b.u64("expires_at")?;
            Ok(Bucket {
                id: b.string("id")?,
                kind: b.string("kind")?,
                remaining: b.u64("remaining")?,
                expires_at: (expires_at != 0).then_some(expires_at),
                priority: b.u64("priority")?,
            })
        })
        .collect::<Result<_, Error>>()?;
    let holds = f
        .list("holds")?
        .into_iter()
        .map(|h| {
            let h = Fields::new(h)?;
            Ok(Hold {
                id: h.string("id")?,
                amount: h.u64("amount")?,
                captured: h.u64("captured")?,
                expires_at: h.u64("expires_at")?,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Account {
        balance: f.balance()?,
        plan,
        buckets,
        holds,
    })
}

pub(crate) fn history(v: Value) -> Result<Vec<HistoryEntry>, Error> {
    list(v, "HISTORY")?
        .into_iter()
        .map(|e| {
            let e = Fields::new(e)?;
            Ok(HistoryEntry {
                seq: e.u64("seq")?,
                at: e.u64("at")?,
                op: e.string("op")?,
                id: e.string("id")?,
                amount: e.u64("amount")?,
            })
        })
        .collect()
}

/// A *fields* reply: flat pairs (RESP2) or a map (RESP3).
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn new(v: Value) -> Result<Fields, Error> {
        let pairs = match v {
            Value::Map(pairs) => pairs,
            Value::Array(items) if items.len() % 2 == 0 => {
                let mut items = items.into_iter();
                let mut pairs = Vec::with_capacity(items.len() / 2);
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            other => return Err(unexpected("field/value pairs", &other)),
        };
        pairs
            .into_iter()
            .map(|(k, v)| Ok((text(k)?, v)))
            .collect::<Result<_, Error>>()
            .map(Fields)
    }

    fn get(&self, name: &str) -> Result<&Value, Error> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::Protocol(format!("field '{name}' missing")))
    }

    fn u64(&self, name: &str) -> Result<u64, Error> {
        integer(self.get(name)?.clone())
            .map_err(|e| Error::Protocol(format!("field '{name}': {e}")))
    }

    fn string(&self, name: &str) -> Result<String, Error> {
        text(self.get(name)?.clone())
    }

    fn list(&self, name: &str) -> Result<Vec<Value>, Error> {
        list(self.get(name)?.clone(), name)
    }

    fn balance(&self) -> Result<Balance, Error> {
        Ok(Balance {
            available: self.u64("available")?,
            held: self.u64("held")?,
            spent: self.u64("spent")?,
            expired: self.u64("expired")?,
            granted: self.u64("granted")?,
        })
    }
}

fn list(v: Value, what: &str) -> Result<Vec<Value>, Error> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(unexpected(&format!("an array for {what}"), &other)),
    }
}

/// A bulk or simple string. Ids are binary safe; bytes that are not UTF-8
/// are shown as U+FFFD.
fn text(v: Value) -> Result<String, Error> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8(b)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        Value::SimpleString(s) => Ok(s),
        Value::VerbatimString { text, .. } => Ok(text),
        other => Err(unexpected("a string", &other)),
    }
}

fn unexpected(wanted: &str, got: &Value) -> Error {
    Error::Protocol(format!("expected {wanted}, got {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(resp: &str) -> Value {
        redis::parse_redis_value(resp.replace('\n', "\r\n").as_bytes()).expect("parse")
    }

    const BALANCE_RESP2: &str = "*10\n$9\navailable\n:1562\n$4\nheld\n:0\n$5\nspent\n:2038\n\
                                 $7\nexpired\n:0\n$7\ngranted\n:3600\n";
    const BALANCE_RESP3: &str = "%5\n$9\navailable\n:1562\n$4\nheld\n:0\n$5\nspent\n:2038\n\
                                 $7\nexpired\n:0\n$7\ngranted\n:3600\n";

    #[test]
    fn balance_reads_the_same_from_resp2_and_resp3() {
        let want = Balance {
            available: 1562,
            held: 0,
            spent: 2038,
            expired: 0,
            granted: 3600,
        };
        assert_eq!(balance(parse(BALANCE_RESP2)).unwrap(), want);
        assert_eq!(balance(parse(BALANCE_RESP3)).unwrap(), want);
    }

    #[test]
    fn unknown_fields_are_skipped_and_missing_ones_named() {
        let extra = "*12\n$5\nfresh\n:7\n$9\navailable\n:1\n$4\nheld\n:2\n$5\nspent\n:3\n\
                     $7\nexpired\n:4\n$7\ngranted\n:10\n";
        assert_eq!(balance(parse(extra)).unwrap().granted, 10);
        let short = "*2\n$9\navailable\n:1\n";
        let e = balance(parse(short)).unwrap_err();
        assert!(
            matches!(&e, Error::Protocol(m) if m.contains("'held'")),
            "{e:?}"
        );
    }

    #[test]
    fn account_with_plan_buckets_and_holds() {
        let resp = "%9\n$9\navailable\n:100\n$4\nheld\n:50\n$5\nspent\n:0\n$7\nexpired\n:0\n\
                    $7\ngranted\n:150\n$4\nplan\n$3\npro\n$5\nseats\n:3\n\
                    $11\ncycle_start\n:1000\n$9\ncycle_end\n:2000\n";
        // Too short on purpose: buckets and holds missing.
        assert!(account(parse(resp)).is_err());

        let resp = "*22\n$9\navailable\n:100\n$4\nheld\n:50\n$5\nspent\n:0\n$7\nexpired\n:0\n\
                    $7\ngranted\n:150\n$4\nplan\n$3\npro\n$5\nseats\n:3\n\
                    $11\ncycle_start\n:1000\n$9\ncycle_end\n:2000\n\
                    $7\nbuckets\n*1\n*10\n$2\nid\n$7\nwelcome\n$4\nkind\n$5\npromo\n\
                    $9\nremaining\n:100\n$10\nexpires_at\n:0\n$8\npriority\n:10\n\
                    $5\nholds\n*1\n*8\n$2\nid\n$5\njob-1\n$6\namount\n:50\n\
                    $8\ncaptured\n:0\n$10\nexpires_at\n:1500\n";
        let a = account(parse(resp)).unwrap();
        assert_eq!(a.balance.held, 50);
        assert_eq!(
            a.plan,
            Some(Plan {
                name: "pro".into(),
                seats: 3,
                cycle_start: 1000,
                cycle_end: 2000
            })
        );
        assert_eq!(
            a.buckets,
            vec![Bucket {
                id: "welcome".into(),
                kind: "promo".into(),
                remaining: 100,
                expires_at: None,
                priority: 10
            }]
        );
        assert_eq!(
            a.holds,
            vec![Hold {
                id: "job-1".into(),
                amount: 50,
                captured: 0,
                expires_at: 1500
            }]
        );
    }

    #[test]
    fn an_account_without_plan_has_none() {
        let resp = "*22\n$9\navailable\n:0\n$4\nheld\n:0\n$5\nspent\n:0\n$7\nexpired\n:0\n\
                    $7\ngranted\n:0\n$4\nplan\n$0\n\n$5\nseats\n:0\n\
                    $11\ncycle_start\n:0\n$9\ncycle_end\n:0\n$7\nbuckets\n*0\n$5\nholds\n*0\n";
        let a = account(parse(resp)).unwrap();
        assert_eq!(a.plan, None);
        assert!(a.buckets.is_empty() && a.holds.is_empty());
    }

    #[test]
    fn history_entries() {
        let resp = "*1\n%5\n$3\nseq\n:18\n$2\nat\n:1806537600000\n$2\nop\n$5\nrenew\n\
                    $2\nid\n$3\npro\n$6\namount\n:1500\n";
        assert_eq!(
            history(parse(resp)).unwrap(),
            vec![HistoryEntry {
                seq: 18,
                at: 1806537600000,
                op: "renew".into(),
                id: "pro".into(),
                amount: 1500
            }]
        );
    }

    #[test]
    fn integers_and_ok() {
        assert_eq!(integer(Value::Int(5)).unwrap(), 5);
        assert!(matches!(integer(Value::Int(-1)), Err(Error::Protocol(_))));
        assert!(matches!(integer(Value::Okay), Err(Error::Protocol(_))));
        assert!(ok(Value::Okay).is_ok());
        assert!(ok(Value::SimpleString("OK".into())).is_ok());
        assert!(ok(Value::Int(1)).is_err());
    }
}
