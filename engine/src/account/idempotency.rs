//! Idempotency: what each finished GRANT, DEBIT and hold replied, kept for
//! the idempotency window, and the history of what happened.
//!
//! A retry is told from a conflict *before* anything is priced or checked
//! against today's config: the `recall_*` functions answer for an id that
//! was used already, and the caller only prices and applies a new one. A
//! retry thus repeats its first reply even after a plan change or a CONFIG
//! RELOAD that would refuse the command now.

use super::done_log::Kind;
use super::{Account, Applied, Terms};
use crate::bucket::BucketKind;
use crate::command::{Charge, Expiry};
use crate::error::{EngineError, IdOf, Result};
use crate::history::Op;
use crate::hold::{ChargeArgs, ClosedHold};
use crate::id::Id;
use serde::{Deserialize, Serialize};

/// What an idempotency record remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Done {
    Grant {
        args: GrantArgs,
        reply: u64,
    },
    Debit {
        args: ChargeArgs,
        reply: u64,
        member: Option<Id>,
    },
    Hold(ClosedHold),
}

/// GRANT's arguments as given (TTL unresolved), to tell a retry from a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantArgs {
    pub amount: u64,
    pub kind: BucketKind,
    pub expiry: Expiry,
    pub priority: u8,
}

/// An earlier use of an id decides the command: its reply again, or a conflict.
pub type Recall = Option<Result<Applied>>;

impl Account {
    /// Appends a history entry.
    pub(crate) fn log(
        &mut self,
        terms: Terms,
        at_ms: u64,
        op: Op,
        id: impl AsRef<[u8]>,
        amount: u64,
    ) {
        let cap = terms.history_len.max(1) as usize;
        self.history.push(cap, at_ms, op, id.as_ref(), amount);
    }

    #[inline]
    pub(crate) fn lookup_done(&self, kind: Kind, id: &[u8]) -> Option<Done> {
        self.done.get(kind, id)
    }

    /// Keeps `record` for the idempotency window (its namespace is its variant).
    pub(crate) fn remember(&mut self, terms: Terms, now_ms: u64, id: Id, record: Done) {
        // Bounded memory: past the cap the oldest record goes early (documented).
        let cap = terms.max_ids.max(1) as usize;
        self.done.pop_while(|_, len| len >= cap);
        self.done.push(now_ms, &id, &record);
        let prune_at = now_ms.saturating_add(terms.idempotency_window_ms);
        self.next_due_ms = self.next_due_ms.min(prune_at);
    }

    /// Forgets records whose window has passed by `now_ms`.
    pub(crate) fn forget_done(&mut self, now_ms: u64, window_ms: u64) {
        self.done
            .pop_while(|finished_ms, _| finished_ms.saturating_add(window_ms) <= now_ms);
    }

    /// GRANT with an id used before.
    pub fn recall_grant(&self, grant_id: &[u8], args: &GrantArgs) -> Recall {
        Some(match self.lookup_done(Kind::Grant, grant_id)? {
            Done::Grant { args: a, reply } if a == *args => Ok(Applied::Repeated(reply)),
            _ => Err(EngineError::id_reused(IdOf::Grant)),
        })
    }

    /// DEBIT with an id used before.
    pub fn recall_debit(&self, debit_id: &[u8], request: &Charge, member: Option<&[u8]>) -> Recall {
        Some(match self.lookup_done(Kind::Debit, debit_id)? {
            Done::Debit {
                args,
                reply,
                member: m,
            } if args.matches(request) && same_member(&m, member) => Ok(Applied::Repeated(reply)),
            _ => Err(EngineError::id_reused(IdOf::Debit)),
        })
    }

    /// RESERVE with a hold id used before, open or closed. A retry is told
    /// from a conflict by what the client sent: `ttl_given` is its TTL, if
    /// any, so one without TTL repeats even if the default changed since.
    pub fn recall_reserve(
        &self,
        hold_id: &[u8],
        request: &Charge,
        ttl_given: Option<u64>,
        member: Option<&[u8]>,
    ) -> Recall {
        let repeats = |charge: &ChargeArgs, held_ttl: Option<u64>, m: &Option<Id>, amount| {
            if charge.matches(request) && held_ttl == ttl_given && same_member(m, member) {
                Ok(Applied::Repeated(amount))
            } else {
                Err(EngineError::id_reused(IdOf::Hold))
            }
        };
        Some(match self.holds.get(hold_id) {
            Some(h) => repeats(&h.charge, h.ttl_given, &h.member, h.amount),
            None => match self.lookup_done(Kind::Hold, hold_id)? {
                Done::Hold(c) => repeats(&c.charge, c.ttl_given, &c.member, c.amount),
                _ => Err(EngineError::id_reused(IdOf::Hold)),
            },
        })
    }
}

/// The member is part of a command's arguments: a retry names the same one.
fn same_member(kept: &Option<Id>, sent: Option<&[u8]>) -> bool {
    kept.as_deref() == sent
}
