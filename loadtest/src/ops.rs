//! The logical operations of a workload and how each target spells them:
//! creditd's own commands, or EVALSHA of the equivalent Lua script on Redis.

use crate::resp::{Encoder, Part};

/// A hold or debit id: unique per run (the run prefix), connection and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId {
    pub conn: u32,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Grant {
        acct: u32,
        amount: u64,
    },
    Reserve {
        acct: u32,
        hold: OpId,
        amount: u64,
        ttl_ms: Option<u64>,
        /// `MEMBER m<k>`: the member the hold charges (creditd only).
        member: Option<u32>,
    },
    Capture {
        acct: u32,
        hold: OpId,
        total: u64,
    },
    Commit {
        acct: u32,
        hold: OpId,
        total: Option<u64>,
    },
    Release {
        acct: u32,
        hold: OpId,
    },
    Debit {
        acct: u32,
        id: OpId,
        amount: u64,
        /// `MEMBER m<k>`: the member the debit charges (creditd only).
        member: Option<u32>,
    },
    Balance {
        acct: u32,
    },
    /// A GRANT with an id of its own: the members workload tops pools up
    /// during the run (the setup's [`Op::Grant`] has one id per account).
    TopUp {
        acct: u32,
        id: OpId,
        amount: u64,
    },
}

/// Command kinds, for per-command statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grant,
    Reserve,
    Capture,
    Commit,
    Release,
    Debit,
    Balance,
    /// A repeat of an earlier successful command with the same id.
    Retry,
}

pub const KINDS: [Kind; 8] = [
    Kind::Grant,
    Kind::Reserve,
    Kind::Capture,
    Kind::Commit,
    Kind::Release,
    Kind::Debit,
    Kind::Balance,
    Kind::Retry,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Reserve => "reserve",
            Kind::Capture => "capture",
            Kind::Commit => "commit",
            Kind::Release => "release",
            Kind::Debit => "debit",
            Kind::Balance => "balance",
            Kind::Retry => "retry",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Op::Grant { .. } | Op::TopUp { .. } => Kind::Grant,
            Op::Reserve { .. } => Kind::Reserve,
            Op::Capture { .. } => Kind::Capture,
            Op::Commit { .. } => Kind::Commit,
            Op::Release { .. } => Kind::Release,
            Op::Debit { .. } => Kind::Debit,
            Op::Balance { .. } => Kind::Balance,
        }
    }

    pub fn acct(&self) -> u32 {
        match *self {
            Op::Grant { acct, .. }
            | Op::Reserve { acct, .. }
            | Op::Capture { acct, .. }
            | Op::Commit { acct, .. }
            | Op::Release { acct, .. }
            | Op::Debit { acct, .. }
            | Op::Balance { acct }
            | Op::TopUp { acct, .. } => acct,
        }
    }
}

/// The command as creditd spells it, ids without the run prefix
/// (`RESERVE a7 h2.15 3 TTL 250`), for messages.
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = |tag: char, i: OpId| format!("{tag}{}.{}", i.conn, i.seq);
        let member = |f: &mut std::fmt::Formatter<'_>, m: Option<u32>| match m {
            Some(m) => write!(f, " MEMBER m{m}"),
            None => Ok(()),
        };
        match *self {
            Op::Grant { acct, amount } => write!(f, "GRANT a{acct} g{acct} {amount}"),
            Op::TopUp {
                acct,
                id: g,
                amount,
            } => {
                write!(f, "GRANT a{acct} {} {amount}", id('g', g))
            }
            Op::Reserve {
                acct,
                hold,
                amount,
                ttl_ms,
                member: m,
            } => {
                write!(f, "RESERVE a{acct} {} {amount}", id('h', hold))?;
                if let Some(ttl) = ttl_ms {
                    write!(f, " TTL {ttl}")?;
                }
                member(f, m)
            }
            Op::Capture { acct, hold, total } => {
                write!(f, "CAPTURE a{acct} {} {total}", id('h', hold))
            }
            Op::Commit { acct, hold, total } => {
                write!(f, "COMMIT a{acct} {}", id('h', hold))?;
                match total {
                    Some(total) => write!(f, " {total}"),
                    None => Ok(()),
                }
            }
            Op::Release { acct, hold } => write!(f, "RELEASE a{acct} {}", id('h', hold)),
            Op::Debit {
                acct,
                id: debit,
                amount,
                member: m,
            } => {
                write!(f, "DEBIT a{acct} {} {amount}", id('d', debit))?;
                member(f, m)
            }
            Op::Balance { acct } => write!(f, "BALANCE a{acct}"),
        }
    }
}

/// Which server the run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Creditd,
    RedisLua,
}

/// The Lua scripts (each prefixed with `common.lua` when loaded).
pub mod lua {
    pub const COMMON: &str = include_str!("lua/common.lua");
    pub const GRANT: &str = include_str!("lua/grant.lua");
    pub const RESERVE: &str = include_str!("lua/reserve.lua");
    pub const CAPTURE: &str = include_str!("lua/capture.lua");
    pub const COMMIT: &str = include_str!("lua/commit.lua");
    pub const RELEASE: &str = include_str!("lua/release.lua");
    pub const DEBIT: &str = include_str!("lua/debit.lua");
    pub const BALANCE: &str = include_str!("lua/balance.lua");

    /// (name, body) in the order of [`super::Shas`] fields.
    pub const SCRIPTS: [(&str, &str); 7] = [
        ("grant", GRANT),
        ("reserve", RESERVE),
        ("capture", CAPTURE),
        ("commit", COMMIT),
        ("release", RELEASE),
        ("debit", DEBIT),
        ("balance", BALANCE),
    ];

    pub fn source(body: &str) -> String {
        format!("{COMMON}\n{body}")
    }
}

/// SHA1s of the loaded scripts, in [`lua::SCRIPTS`] order.
#[derive(Debug, Clone, Default)]
pub struct Shas(pub Vec<String>);

/// Spells operations for one target. Cheap to clone; one per connection.
#[derive(Debug, Clone)]
pub struct Speller {
    pub target: TargetKind,
    /// Prepended to every account, hold, grant and debit id of this run.
    pub prefix: Vec<u8>,
    pub shas: Shas,
}

impl Speller {
    /// The account id as the server sees it.
    pub fn account_name(&self, acct: u32) -> Vec<u8> {
        let mut v = self.prefix.clone();
        v.push(b'a');
        v.extend_from_slice(acct.to_string().as_bytes());
        v
    }

    /// Appends `op` to `enc` as one command.
    pub fn encode(&self, enc: &mut Encoder, op: &Op) {
        match self.target {
            TargetKind::Creditd => self.encode_creditd(enc, op),
            TargetKind::RedisLua => self.encode_lua(enc, op),
        }
    }

    fn encode_creditd(&self, e: &mut Encoder, op: &Op) {
        let p = &self.prefix[..];
        let acct = |a: u32| [Part::Bytes(p), Part::Bytes(b"a"), Part::Num(a as u64)];
        let id = |tag: &'static [u8], i: OpId| {
            [
                Part::Bytes(p),
                Part::Bytes(tag),
                Part::Num(i.conn as u64),
                Part::Bytes(b"."),
                Part::Num(i.seq),
            ]
        };
        match *op {
            Op::Grant { acct: a, amount } => {
                e.array(4);
                e.bulk(b"GRANT");
                e.bulk_parts(&acct(a));
                e.bulk_parts(&[Part::Bytes(p), Part::Bytes(b"g"), Part::Num(a as u64)]);
                e.bulk_u64(amount);
            }
            Op::TopUp {
                acct: a,
                id: g,
                amount,
            } => {
                e.array(4);
                e.bulk(b"GRANT");
                e.bulk_parts(&acct(a));
                e.bulk_parts(&id(b"g", g));
                e.bulk_u64(amount);
            }
            Op::Reserve {
                acct: a,
                hold,
                amount,
                ttl_ms,
                member,
            } => {
                let options = 2 * (usize::from(ttl_ms.is_some()) + usize::from(member.is_some()));
                e.array(4 + options);
                e.bulk(b"RESERVE");
                e.bulk_parts(&acct(a));
                e.bulk_parts(&id(b"h", hold));
                e.bulk_u64(amount);
                if let Some(ttl) = ttl_ms {
                    e.bulk(b"TTL");
                    e.bulk_u64(ttl);
                }
                if let Some(m) = member {
                    e.bulk(b"MEMBER");
                    e.bulk_parts(&[Part::Bytes(b"m"), Part::Num(m as u64)]);
                }
            }
            Op::Capture {
                acct: a,
                hold,
                total,
            } => {
                e.array(4);
                e.bulk(b"CAPTURE");
                e.bulk_parts(&acct(a));
                e.bulk_parts(&id(b"h", hold));
                e.bulk_u64(total);
            }
            Op::Commit {
                acct: a,
                hold,
                total,
            } => {
                e.array(if total.is_some() { 4 } else { 3 });
                e.bulk(b"COMMIT");
                e.bulk_parts(&acct(a));
                e.bulk_parts(&id(b"h", hold));
                if let Some(t) = total {
                    e.bulk_u64(t);
                }
            }
            Op::Release { acct: a, hold } => {
                e.array(3);
                e.bulk(b"RELEASE");
                e.bulk_parts(&acct(a));
                e.bulk_parts(&id(b"h", hold));
            }
            Op::Debit {
                acct: a,
                id: d,
                amount,
                member,
            } => {
                e.array(if member.is_some() { 6 } else { 4 });
                e.bulk(b"DEBIT");
                e.bulk_parts(&acct(a));
                e.bulk_parts(&id(b"d", d));
                e.bulk_u64(amount);
                if let Some(m) = member {
                    e.bulk(b"MEMBER");
                    e.bulk_parts(&[Part::Bytes(b"m"), Part::Num(m as u64)]);
                }
            }
            Op::Balance { acct: a } => {
                e.array(2);
                e.bulk(b"BALANCE");
                e.bulk_parts(&acct(a));
            }
        }
    }

    /// `EVALSHA sha nkeys cd:{acct} cd:{acct}:<h|d|g>:<id> cd:{acct}:hz args...`
    /// (the account in a hash tag, so every key of an account shares a slot).
    /// The Lua model has no members: the members workload runs against
    /// creditd only (the command line refuses it with `--target redis-lua`).
    fn encode_lua(&self, e: &mut Encoder, op: &Op) {
        let p = &self.prefix[..];
        let sha = |i: usize| self.shas.0[i].as_bytes();
        let key = |a: u32, suffix: &'static [u8]| {
            [
                Part::Bytes(b"cd:{"),
                Part::Bytes(p),
                Part::Bytes(b"a"),
                Part::Num(a as u64),
                Part::Bytes(b"}"),
                Part::Bytes(suffix),
            ]
        };
        let sub = |a: u32, tag: &'static [u8], i: OpId| {
            [
                Part::Bytes(b"cd:{"),
                Part::Bytes(p),
                Part::Bytes(b"a"),
                Part::Num(a as u64),
                Part::Bytes(b"}:"),
                Part::Bytes(tag),
                Part::Bytes(b":"),
                Part::Bytes(p),
                Part::Bytes(tag),
                Part::Num(i.conn as u64),
                Part::Bytes(b"."),
                Part::Num(i.seq),
            ]
        };
        let hid = |i: OpId| {
            [
                Part::Bytes(p),
                Part::Bytes(b"h"),
                Part::Num(i.conn as u64),
                Part::Bytes(b"."),
                Part::Num(i.seq),
            ]
        };
        // Every script but BALANCE: KEYS = account, item, open-hold zset.
        let head = |e: &mut Encoder, script: usize, nargs: usize, a: u32, item: &[Part<'_>]| {
            e.array(6 + nargs);
            e.bulk(b"EVALSHA");
            e.bulk(sha(script));
            e.bulk(b"3");
            e.bulk_parts(&key(a, b""));
            e.bulk_parts(item);
            e.bulk_parts(&key(a, b":hz"));
        };
        match *op {
            Op::Grant { acct: a, amount } => {
                let g = [
                    Part::Bytes(b"cd:{"),
                    Part::Bytes(p),
                    Part::Bytes(b"a"),
                    Part::Num(a as u64),
                    Part::Bytes(b"}:g:"),
                    Part::Bytes(p),
                    Part::Bytes(b"g"),
                    Part::Num(a as u64),
                ];
                head(e, 0, 1, a, &g);
                e.bulk_u64(amount);
            }
            Op::Reserve {
                acct: a,
                hold,
                amount,
                ttl_ms,
                ..
            } => {
                head(e, 1, 3, a, &sub(a, b"h", hold));
                e.bulk_u64(amount);
                match ttl_ms {
                    Some(t) => e.bulk_u64(t),
                    None => e.bulk(b""),
                }
                e.bulk_parts(&hid(hold));
            }
            Op::Capture {
                acct: a,
                hold,
                total,
            } => {
                head(e, 2, 2, a, &sub(a, b"h", hold));
                e.bulk_u64(total);
                e.bulk_parts(&hid(hold));
            }
            Op::Commit {
                acct: a,
                hold,
                total,
            } => {
                head(e, 3, 2, a, &sub(a, b"h", hold));
                match total {
                    Some(t) => e.bulk_u64(t),
                    None => e.bulk(b""),
                }
                e.bulk_parts(&hid(hold));
            }
            Op::Release { acct: a, hold } => {
                head(e, 4, 1, a, &sub(a, b"h", hold));
                e.bulk_parts(&hid(hold));
            }
            Op::Debit {
                acct: a,
                id: d,
                amount,
                ..
            } => {
                head(e, 5, 1, a, &sub(a, b"d", d));
                e.bulk_u64(amount);
            }
            Op::TopUp {
                acct: a,
                id: g,
                amount,
            } => {
                head(e, 0, 1, a, &sub(a, b"g", g));
                e.bulk_u64(amount);
            }
            Op::Balance { acct: a } => {
                e.array(5);
                e.bulk(b"EVALSHA");
                e.bulk(sha(6));
                e.bulk(b"2");
                e.bulk_parts(&key(a, b""));
                e.bulk_parts(&key(a, b":hz"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spell(target: TargetKind, op: Op) -> String {
        let s = Speller {
            target,
            prefix: b"r1:".to_vec(),
            shas: Shas((0..7).map(|i| format!("sha{i}")).collect()),
        };
        let mut e = Encoder::default();
        s.encode(&mut e, &op);
        String::from_utf8(e.buf).unwrap()
    }

    #[test]
    fn creditd_reserve() {
        let op = Op::Reserve {
            acct: 7,
            hold: OpId { conn: 2, seq: 15 },
            amount: 3,
            ttl_ms: Some(250),
            member: None,
        };
        assert_eq!(
            spell(TargetKind::Creditd, op),
            "*6\r\n$7\r\nRESERVE\r\n$5\r\nr1:a7\r\n$8\r\nr1:h2.15\r\n$1\r\n3\r\n$3\r\nTTL\r\n$3\r\n250\r\n"
        );
    }

    #[test]
    fn display_reads_like_the_command() {
        let op = Op::Reserve {
            acct: 7,
            hold: OpId { conn: 2, seq: 15 },
            amount: 3,
            ttl_ms: Some(250),
            member: None,
        };
        assert_eq!(op.to_string(), "RESERVE a7 h2.15 3 TTL 250");
        let op = Op::Commit {
            acct: 7,
            hold: OpId { conn: 2, seq: 15 },
            total: None,
        };
        assert_eq!(op.to_string(), "COMMIT a7 h2.15");
    }

    #[test]
    fn creditd_member_charges() {
        let hold = OpId { conn: 2, seq: 15 };
        let op = Op::Reserve {
            acct: 7,
            hold,
            amount: 3,
            ttl_ms: Some(250),
            member: Some(4),
        };
        assert_eq!(op.to_string(), "RESERVE a7 h2.15 3 TTL 250 MEMBER m4");
        assert_eq!(
            spell(TargetKind::Creditd, op),
            "*8\r\n$7\r\nRESERVE\r\n$5\r\nr1:a7\r\n$8\r\nr1:h2.15\r\n$1\r\n3\r\n\
             $3\r\nTTL\r\n$3\r\n250\r\n$6\r\nMEMBER\r\n$2\r\nm4\r\n"
        );
        let op = Op::Debit {
            acct: 7,
            id: hold,
            amount: 9,
            member: Some(0),
        };
        assert_eq!(op.to_string(), "DEBIT a7 d2.15 9 MEMBER m0");
        assert_eq!(
            spell(TargetKind::Creditd, op),
            "*6\r\n$5\r\nDEBIT\r\n$5\r\nr1:a7\r\n$8\r\nr1:d2.15\r\n$1\r\n9\r\n\
             $6\r\nMEMBER\r\n$2\r\nm0\r\n"
        );
        let op = Op::TopUp {
            acct: 7,
            id: hold,
            amount: 100,
        };
        assert_eq!(op.to_string(), "GRANT a7 g2.15 100");
        assert_eq!(
            spell(TargetKind::Creditd, op),
            "*4\r\n$5\r\nGRANT\r\n$5\r\nr1:a7\r\n$8\r\nr1:g2.15\r\n$3\r\n100\r\n"
        );
    }

    #[test]
    fn lua_commit_without_total() {
        let op = Op::Commit {
            acct: 7,
            hold: OpId { conn: 2, seq: 15 },
            total: None,
        };
        let s = spell(TargetKind::RedisLua, op);
        assert!(s.starts_with("*8\r\n$7\r\nEVALSHA\r\n$4\r\nsha3\r\n$1\r\n3\r\n$10\r\ncd:{r1:a7}\r\n$21\r\ncd:{r1:a7}:h:r1:h2.15\r\n$13\r\ncd:{r1:a7}:hz\r\n$0\r\n\r\n$8\r\nr1:h2.15\r\n"), "{s}");
    }
}
