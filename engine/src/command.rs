//! The mutating commands as the engine applies them and as the journal stores
//! them. A [`Mutation`] borrows its ids from the request buffer (no copies on
//! the hot path); a [`Record`] is what goes to disk: the mutation, the instant
//! it was applied, and whatever it resolved from the config at that instant
//! (a sku's price, a plan's terms), so replay never depends on today's config.

use crate::account::{Cap, Terms};
use crate::bucket::BucketKind;
use crate::config::PlanTerms;
use crate::events::Refused;
use crate::id::Bytes;
use crate::pricing::SkuPrice;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// What a reservation or debit costs: a plain amount, or a priced sku.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Charge<'a> {
    Amount(u64),
    Sku {
        #[serde(borrow)]
        sku: &'a str,
        qty: u64,
    },
}

/// Usage reported by CAPTURE or COMMIT: credits, or a quantity priced with the hold's sku.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Usage {
    Total(u64),
    Qty(u64),
}

/// A grant's expiry as the client wrote it (TTL is relative to the grant's instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    Never,
    At(u64),
    Ttl(u64),
}

/// One mutating command, minus its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation<'a> {
    Grant {
        #[serde(borrow)]
        grant_id: Bytes<'a>,
        amount: u64,
        kind: BucketKind,
        expiry: Expiry,
        priority: u8,
    },
    Reserve {
        #[serde(borrow)]
        hold_id: Bytes<'a>,
        #[serde(borrow)]
        charge: Charge<'a>,
        /// As the client sent it; `None` means the configured default, which
        /// the journal record carries beside it.
        ttl_ms: Option<u64>,
        /// `MEMBER m`: the member charged beside the pool (its cap applies).
        #[serde(borrow)]
        member: Option<Bytes<'a>>,
    },
    Capture {
        #[serde(borrow)]
        hold_id: Bytes<'a>,
        usage: Usage,
    },
    Commit {
        #[serde(borrow)]
        hold_id: Bytes<'a>,
        usage: Option<Usage>,
    },
    Release {
        #[serde(borrow)]
        hold_id: Bytes<'a>,
    },
    Extend {
        #[serde(borrow)]
        hold_id: Bytes<'a>,
        ttl_ms: u64,
    },
    Debit {
        #[serde(borrow)]
        debit_id: Bytes<'a>,
        #[serde(borrow)]
        charge: Charge<'a>,
        #[serde(borrow)]
        member: Option<Bytes<'a>>,
    },
    Subscribe {
        #[serde(borrow)]
        plan: &'a str,
        seats: Option<u32>,
        anchor_ms: Option<u64>,
    },
    Seats {
        seats: u32,
    },
    Addon {
        units: u32,
    },
    Unsubscribe,
    /// LIMIT: sets (`Some`) or removes (`None`) a member's cap.
    Limit {
        #[serde(borrow)]
        member: Bytes<'a>,
        cap: Option<Cap>,
    },
    /// ALERT: adds (`remove` false) or deletes a low-balance threshold.
    Alert {
        threshold: u64,
        remove: bool,
    },
}

impl Mutation<'_> {
    /// The command's name, for metrics and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Mutation::Grant { .. } => "grant",
            Mutation::Reserve { .. } => "reserve",
            Mutation::Capture { .. } => "capture",
            Mutation::Commit { .. } => "commit",
            Mutation::Release { .. } => "release",
            Mutation::Extend { .. } => "extend",
            Mutation::Debit { .. } => "debit",
            Mutation::Subscribe { .. } => "subscribe",
            Mutation::Seats { .. } => "seats",
            Mutation::Addon { .. } => "addon",
            Mutation::Unsubscribe => "unsubscribe",
            Mutation::Limit { .. } => "limit",
            Mutation::Alert { .. } => "alert",
        }
    }
}

/// One journal record. Version 3 of the payload format (version 1 records
/// carried no terms, version 2 no members and no events). The payload
/// carries no version number of its own: the journal frame's version covers
/// it (the server's `formats` module lists every versioned format and what
/// changing it means).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Records are built on the stack and encoded at once, never stored: boxing
// the large variant would cost an allocation per command.
#[allow(clippy::large_enum_variant)]
pub enum Record<'a> {
    /// A mutation applied to one account at `at_ms`.
    Apply {
        at_ms: u64,
        #[serde(borrow)]
        account: Bytes<'a>,
        #[serde(borrow)]
        mutation: Mutation<'a>,
        /// The sku's price when the mutation priced one.
        price: Option<Cow<'a, SkuPrice>>,
        /// The plan's terms for SUBSCRIBE.
        plan: Option<Cow<'a, PlanTerms>>,
        /// The settings it was applied under (idempotency window, id cap,
        /// history length): replay uses these, not today's config.
        terms: Terms,
        /// The default hold TTL a RESERVE without TTL got.
        default_ttl_ms: Option<u64>,
        /// The `low` events this change raised. Replay raises them again
        /// and checks they are these; a record an account already reflects
        /// (from a snapshot or Redis) restores them from here.
        events: LowEvents,
    },
    /// The test clock moved to `at_ms` (so a restart never moves it back).
    Clock { at_ms: u64 },
    /// A command refused with INSUFFICIENT or LIMITED that raised an event
    /// (the refusal changed nothing but the event and its rate stamp).
    Refused {
        at_ms: u64,
        #[serde(borrow)]
        account: Bytes<'a>,
        #[serde(borrow)]
        refused: Refused<'a>,
        /// The event's sequence number.
        event_seq: u64,
    },
}

/// The `low` events one change raised: one per threshold crossed, numbered
/// from `first`, each with `available` after the change as its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowEvents {
    pub first: u64,
    pub available: u64,
    pub thresholds: Vec<u64>,
}

impl Record<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        crate::encode::append(self, out);
    }
}

/// Decodes a record payload.
pub fn decode_record(payload: &[u8]) -> Result<Record<'_>, String> {
    postcard::from_bytes(payload).map_err(|e| format!("undecodable record: {e}"))
}
