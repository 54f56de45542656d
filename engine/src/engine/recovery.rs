//! Recovery: replaying journal records, and snapshots of shards (taken
//! fuzzily, restored from any shard count), with the invariant checks that
//! refuse a state that does not add up.

use super::apply::{apply, reserve_ttl_ms, sku_of, Resolved};
use super::shard::Find;
use super::Engine;
use crate::account::{Account, Applied, Ctx, Limits};
use crate::bucket::NEVER;
use crate::command::{decode_record, Mutation, Record};
use crate::events::{refusal_event, EventLog, Refused, REFUSAL_EVENT_INTERVAL_MS};
use crate::id::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

impl Engine {
    /// Replays one journal record. Records an account already reflects (its
    /// `applied_seq` is at or past `seq`) are skipped, which makes fuzzy
    /// snapshots and Redis state safe to combine with the journal.
    /// Returns the record's instant.
    pub fn replay(&self, seq: u64, payload: &[u8]) -> std::result::Result<u64, String> {
        let record = decode_record(payload)?;
        let Record::Apply {
            at_ms,
            account,
            mutation: m,
            price,
            plan,
            terms,
            default_ttl_ms,
            events,
        } = record
        else {
            return match record {
                Record::Clock { at_ms } => Ok(at_ms),
                Record::Refused {
                    at_ms,
                    account,
                    refused,
                    event_seq,
                } => self.replay_refusal(seq, at_ms, account.0, &refused, event_seq),
                Record::Apply { .. } => unreachable!("an Apply record is replayed below"),
            };
        };
        if matches!(m, Mutation::Reserve { ttl_ms: None, .. }) && default_ttl_ms.is_none() {
            return Err(format!("record {seq} (reserve) has no TTL"));
        }
        // What the record was decided under; the other limits (open holds,
        // buckets) are not re-checked on replay.
        let limits = Limits {
            terms,
            ..self.catalog().limits
        };
        let resolved = Resolved {
            ttl_ms: reserve_ttl_ms(&m, default_ttl_ms),
            price: sku_of(&m)
                .map(Arc::<str>::from)
                .zip(price.map(|p| Arc::new(p.into_owned()))),
            plan: plan.map(|p| Arc::new(p.into_owned())),
        };
        let bounds = self.catalog().event_bounds;
        let mut shard = self.shard_of(account.0).lock();
        if shard
            .accounts
            .get(account.0)
            .is_some_and(|a| seq <= a.applied_seq)
        {
            // The account (from a snapshot or Redis) reflects the change;
            // its events come from the record (the log skips known ones).
            self.events
                .lock()
                .push_low(account.0, &events, at_ms, 0, bounds);
            return Ok(at_ms);
        }
        let find = Find::OrCreateUnbounded(&self.accounts);
        let replayed = shard.visit(account.0, Some(at_ms), find, |acct, step| {
            let ctx = Ctx {
                now_ms: step.now_ms,
                limits,
                replay: true,
            };
            match apply(acct, &ctx, &m, &resolved) {
                Ok(Applied::Changed(_)) => {}
                Ok(Applied::Repeated(_)) => {
                    return Err(format!(
                    "record {seq} ({}) changed nothing on replay: the journal and state disagree",
                    m.name()
                ))
                }
                Err(e) => return Err(format!("record {seq} ({}) failed on replay: {e}", m.name())),
            }
            let mut crossed = Vec::new();
            let available = acct.raise_low(&mut crossed);
            let same = crossed == events.thresholds
                && (crossed.is_empty() || available == events.available);
            if !same {
                return Err(format!(
                    "record {seq} ({}) raised low events for {crossed:?} at {available} on replay, for {:?} at {} when it was made",
                    m.name(),
                    events.thresholds,
                    events.available
                ));
            }
            self.events
                .lock()
                .push_low(account.0, &events, at_ms, 0, bounds);
            acct.applied_seq = seq;
            acct.terms = terms;
            step.changed = true;
            Ok(at_ms)
        });
        replayed
            .map_err(|e| e.to_string())?
            .expect("the account was found or created")
    }

    /// Replays a refusal's event record: the rate stamp it set, and its event.
    fn replay_refusal(
        &self,
        seq: u64,
        at_ms: u64,
        account: &[u8],
        refused: &Refused,
        event_seq: u64,
    ) -> std::result::Result<u64, String> {
        let bounds = self.catalog().event_bounds;
        let mut shard = self.shard_of(account).lock();
        let replayed = shard.visit(account, Some(at_ms), Find::Existing, |acct, step| {
            if seq <= acct.applied_seq {
                // The account reflects the refusal's stamp; the event is the record's.
                let event = refusal_event(account, at_ms, refused, event_seq);
                self.events.lock().push(event, at_ms, bounds);
                return Ok(());
            }
            let member = refused.member.map(|m| m.0);
            let due = acct.stamp_refusal(
                refused.kind,
                member,
                step.now_ms,
                REFUSAL_EVENT_INTERVAL_MS,
            );
            if !due {
                return Err(format!(
                    "record {seq} (a refusal's event) is not due on replay: the journal and state disagree"
                ));
            }
            let event = refusal_event(account, step.now_ms, refused, event_seq);
            self.events.lock().push(event, step.now_ms, bounds);
            acct.applied_seq = seq;
            step.changed = true;
            Ok(())
        });
        match replayed.map_err(|e| e.to_string())? {
            Some(result) => result.map(|()| at_ms),
            None => Err(format!(
                "record {seq} (a refusal's event) names account {} that nothing created",
                crate::id::show(account)
            )),
        }
    }

    /// Serializes the event log (after every shard: see [`EventLog::push`]
    /// for why replaying records the log already holds is harmless).
    pub fn snapshot_events(&self, out: &mut Vec<u8>) {
        let log = self.events.lock();
        crate::encode::append(&*log, out);
    }

    /// Loads a serialized event log (before the journal is replayed).
    pub fn restore_events(&self, bytes: &[u8]) -> std::result::Result<(), String> {
        let log: EventLog =
            postcard::from_bytes(bytes).map_err(|e| format!("undecodable event log: {e}"))?;
        log.check()?;
        *self.events.lock() = log;
        Ok(())
    }

    /// Serializes one shard (for a fuzzy snapshot: each shard is consistent
    /// with itself; records after it are skipped on replay by `applied_seq`).
    pub fn snapshot_shard(&self, index: usize, out: &mut Vec<u8>) {
        let shard = self.shards[index].0.lock();
        let part = ShardSnapshotRef {
            accounts: shard.accounts.iter().map(|a| (Bytes(&a.key), a)).collect(),
        };
        crate::encode::append(&part, out);
    }

    /// Loads one serialized shard part (from any shard count). Every account
    /// is checked; a broken invariant refuses the snapshot.
    pub fn restore_shard(&self, bytes: &[u8]) -> std::result::Result<usize, String> {
        let accounts = Engine::decode_shard(bytes)?;
        let n = accounts.len();
        for (id, acct) in accounts {
            self.restore_account(&id, acct)?;
        }
        Ok(n)
    }

    /// Decodes one serialized shard part without installing it (for a
    /// caller that decides per account, as the server does against Redis).
    pub fn decode_shard(bytes: &[u8]) -> std::result::Result<Vec<(Vec<u8>, Account)>, String> {
        let part: ShardSnapshotOwned =
            postcard::from_bytes(bytes).map_err(|e| format!("undecodable snapshot: {e}"))?;
        Ok(part.accounts.into_iter().map(|(id, a)| (id.0, a)).collect())
    }

    /// Installs one account's state (from a snapshot or from Redis), unless
    /// the engine already has a newer one.
    pub fn restore_account(&self, id: &[u8], acct: Account) -> std::result::Result<(), String> {
        acct.check()
            .map_err(|e| format!("account {}: {e}", crate::id::show(id)))?;
        let mut shard = self.shard_of(id).lock();
        let find = Find::OrCreateUnbounded(&self.accounts);
        let installed = shard.visit(id, None, find, |existing, _| {
            if existing.applied_seq >= acct.applied_seq && !existing.is_blank() {
                return;
            }
            let key = std::mem::take(&mut existing.key);
            *existing = Account {
                key,
                queued_due_ms: NEVER,
                ..acct
            };
        });
        installed.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The latest instant any account has seen (a restarted test clock
    /// resumes no earlier).
    pub fn latest_instant_ms(&self) -> u64 {
        let mut latest = 0;
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            for acct in shard.accounts.iter() {
                latest = latest.max(acct.last_now_ms);
            }
        }
        latest
    }

    /// Checks every account's invariants (after recovery).
    pub fn check_all(&self) -> std::result::Result<(), String> {
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            for acct in shard.accounts.iter() {
                acct.check()
                    .map_err(|e| format!("account {}: {e}", crate::id::show(&acct.key)))?;
            }
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct ShardSnapshotRef<'a> {
    accounts: Vec<(Bytes<'a>, &'a Account)>,
}

#[derive(Deserialize)]
struct ShardSnapshotOwned {
    accounts: Vec<(serde_bytes_owned::ByteBuf, Account)>,
}

/// Owned bytes that deserialize from a byte string.
mod serde_bytes_owned {
    use serde::de::{Deserializer, Visitor};
    use serde::Deserialize;
    use std::fmt;
    use std::ops::Deref;

    pub struct ByteBuf(pub Vec<u8>);

    impl Deref for ByteBuf {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.0
        }
    }

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}
