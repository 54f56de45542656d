//! Events: an account's balance fell below one of its alert thresholds
//! (`low`), or a command was refused for credits (`insufficient`) or by a
//! member's cap (`limited`).
//!
//! Exactly once: an event is raised under its account's shard lock, by the
//! change (or the refusal) that caused it, and numbered and journaled with
//! that change while the [`EventLog`]'s lock is held. So the journal holds
//! event-raising records in the order of their event numbers, replay raises
//! the same events with the same numbers, and a crash neither loses nor
//! repeats one. The log is bounded: events older than the retention, or past
//! the count bound, are dropped oldest first.

use crate::command::LowEvents;
use crate::id::{Bytes, Id};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// An event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Low,
    Insufficient,
    Limited,
}

impl EventKind {
    /// The `type` field as EVENTS and the Redis stream show it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Low => "low",
            EventKind::Insufficient => "insufficient",
            EventKind::Limited => "limited",
        }
    }
}

/// How long a refusal event silences the next one of its kind: one
/// `insufficient` per account, one `limited` per account and member, per
/// minute (a retry storm makes one event).
pub const REFUSAL_EVENT_INTERVAL_MS: u64 = 60_000;

/// A refusal that raised an event, as its journal record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused<'a> {
    /// [`EventKind::Insufficient`] or [`EventKind::Limited`].
    pub kind: EventKind,
    #[serde(borrow)]
    pub member: Option<Bytes<'a>>,
    /// What the refused command needed.
    pub need: u64,
}

/// One event as EVENTS lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: EventKind,
    pub account: Id,
    pub member: Option<Id>,
    pub value: u64,
    pub threshold: u64,
    /// The journal record that raised it: a reply showing the event waits
    /// until that record is durable. Not stored (0 after a restart: durable).
    #[serde(skip)]
    pub journal_seq: u64,
}

/// The bounds of the log, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
    pub max_events: u64,
    pub retention_ms: u64,
}

/// The events kept, oldest first, and the next sequence number.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EventLog {
    events: VecDeque<Event>,
    /// The next event's number (numbers start at 1 and are never reused).
    next_seq: u64,
    /// Events dropped by the bounds since the process started (not stored).
    #[serde(skip)]
    dropped: u64,
}

impl EventLog {
    pub fn new() -> EventLog {
        EventLog {
            next_seq: 1,
            ..Default::default()
        }
    }

    /// The number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.max(1)
    }

    /// Numbers new events from `next_seq` at least.
    pub fn raise_floor(&mut self, next_seq: u64) {
        self.next_seq = self.next_seq().max(next_seq);
    }

    /// Adds an event numbered by [`EventLog::next_seq`], or on replay by its
    /// record. An event numbered below the next one is known already (a
    /// snapshot holds it, or held it before the bounds dropped it): skipped.
    pub fn push(&mut self, event: Event, now_ms: u64, bounds: EventBounds) {
        if event.seq < self.next_seq() {
            return;
        }
        self.next_seq = event.seq + 1;
        self.events.push_back(event);
        self.prune(now_ms, bounds);
    }

    /// Adds the `low` events of one change of `account` (see [`EventLog::push`]).
    pub fn push_low(
        &mut self,
        account: &[u8],
        low: &LowEvents,
        at_ms: u64,
        journal_seq: u64,
        bounds: EventBounds,
    ) {
        for (i, &threshold) in low.thresholds.iter().enumerate() {
            let event = Event {
                seq: low.first + i as u64,
                at_ms,
                kind: EventKind::Low,
                account: Id::new(account),
                member: None,
                value: low.available,
                threshold,
                journal_seq,
            };
            self.push(event, at_ms, bounds);
        }
    }

    /// Drops events past the retention or the count bound, oldest first.
    pub fn prune(&mut self, now_ms: u64, bounds: EventBounds) {
        while let Some(front) = self.events.front() {
            let too_many = self.events.len() as u64 > bounds.max_events;
            let too_old = front.at_ms.saturating_add(bounds.retention_ms) <= now_ms;
            if !(too_many || too_old) {
                break;
            }
            self.events.pop_front();
            self.dropped += 1;
        }
    }

    /// Up to `count` events numbered above `after`, oldest first, and the
    /// highest journal seq among them (the reply waits for it).
    pub fn after(&self, after: u64, count: usize) -> (Vec<Event>, u64) {
        let start = self.events.partition_point(|e| e.seq <= after);
        let events: Vec<Event> = self.events.range(start..).take(count).cloned().collect();
        let wait = events.iter().map(|e| e.journal_seq).max().unwrap_or(0);
        (events, wait)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events the bounds dropped since the process started.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Checks the numbering (recovery): rising, below the next number.
    pub fn check(&self) -> Result<(), String> {
        let rising = self
            .events
            .iter()
            .zip(self.events.iter().skip(1))
            .all(|(a, b)| a.seq < b.seq);
        let below = self.events.back().is_none_or(|e| e.seq < self.next_seq());
        if rising && below {
            Ok(())
        } else {
            Err("event log out of order".into())
        }
    }
}

/// The event of a refusal record, as it was raised.
pub fn refusal_event(account: &[u8], at_ms: u64, refused: &Refused, seq: u64) -> Event {
    Event {
        seq,
        at_ms,
        kind: refused.kind,
        account: Id::new(account),
        member: refused.member.map(|m| Id::new(m.0)),
        value: refused.need,
        threshold: 0,
        journal_seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, at_ms: u64) -> Event {
        Event {
            seq,
            at_ms,
            kind: EventKind::Low,
            account: Id::new(b"a"),
            member: None,
            value: 0,
            threshold: 1,
            journal_seq: seq,
        }
    }

    const WIDE: EventBounds = EventBounds {
        max_events: 1000,
        retention_ms: 1000,
    };

    #[test]
    fn known_numbers_are_skipped_and_reads_resume_after_a_number() {
        let mut log = EventLog::new();
        for seq in 1..=5 {
            log.push(event(seq, 10), 10, WIDE);
        }
        log.push(event(3, 10), 10, WIDE);
        assert_eq!(log.len(), 5);
        let (got, wait) = log.after(2, 2);
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(wait, 4);
        assert!(log.after(5, 10).0.is_empty());
        assert_eq!(log.check(), Ok(()));
    }

    #[test]
    fn bounds_drop_the_oldest() {
        let mut log = EventLog::new();
        let tight = EventBounds {
            max_events: 2,
            retention_ms: 100,
        };
        log.push(event(1, 0), 0, tight);
        log.push(event(2, 50), 50, tight);
        log.push(event(3, 60), 60, tight);
        assert_eq!(log.after(0, 10).0.len(), 2, "count bound");
        log.push(event(4, 165), 165, tight);
        let seqs: Vec<u64> = log.after(0, 10).0.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4], "2 by the count, 3 (at 60) by the retention");
        assert_eq!(log.dropped(), 3);
        assert_eq!(log.next_seq(), 5);
    }
}
