//! One pass of the writer: take every changed account in one sweep over the
//! shards (each shard emptied under its lock), then write them in pipelined
//! batches of [`BATCH_ACCOUNTS`] accounts (`EVALSHA` calls of
//! [`SCRIPT_ACCOUNTS`]), sending the next batch before reading the replies of
//! the one before. When every write of a pass is confirmed, one more call
//! records the watermark (the journal seq read before the pass) in
//! `creditd:meta`. An account changed 100 times between two passes is written
//! once.

use super::script::{self, Item, Refusal, Reply};
use super::writer::{PassEnd, Writer};
use crate::persist::account_version;
use creditd_engine::id::Id;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;

/// Accounts per pipelined batch (two batches in flight at most).
const BATCH_ACCOUNTS: usize = 1024;
/// Bounds on one pass over the dirty lists (memory held by serialized
/// states); changed accounts beyond them wait for the next pass.
const PASS_ACCOUNTS: usize = 262_144;
const PASS_BYTES: usize = 256 << 20;
/// Accounts per EVALSHA call (one script run writes this many).
const SCRIPT_ACCOUNTS: usize = 64;
/// The send buffer is kept between batches up to this capacity.
const OUT_BUFFER_KEEP: usize = 16 << 20;

/// A batch sent whose replies are not read yet.
struct Sent {
    /// The accounts written, with the history seq each write streams up to.
    accounts: Vec<(Id, u64)>,
    /// Accounts per call, in order (one reply each).
    calls: Vec<usize>,
}

impl Writer {
    /// One pass over the dirty lists, then its writes. A pass takes every
    /// account changed so far, so when all its writes succeed, every change
    /// up to the journal seq read before the pass is in Redis: that seq
    /// becomes the watermark. Changes made meanwhile are the next pass's.
    pub(super) fn pass(&mut self) -> PassEnd {
        let started_ms = self.shared.now_ms();
        let seq = self.shared.journal.stats().last_seq;
        let (items, deferred) = self.take_pass();
        // Past the pass bound: these wait for the next pass, and this pass
        // does not complete the watermark.
        self.mark_dirty(deferred.iter());
        let complete = deferred.is_empty();
        if items.is_empty() {
            if complete {
                // Everything up to `seq` is in Redis: an earlier pass wrote
                // changes made after it read its seq. Record that in
                // `creditd:meta` too (one call, only when the seq moved), so
                // Redis never claims less than it holds once drained.
                if seq > self.meta_written {
                    if let Err(end) = self.check(Some(seq)) {
                        return end;
                    }
                }
                self.advance_watermark(seq, started_ms);
            }
            return PassEnd::Idle;
        }
        let mut in_flight: VecDeque<Sent> = VecDeque::with_capacity(2);
        let mut batches = items.chunks(BATCH_ACCOUNTS);
        let mut refusal: Option<Refusal> = None;
        let mut failed: Vec<(Id, String)> = Vec::new();
        loop {
            if refusal.is_none() && in_flight.len() < 2 {
                if let Some(batch) = batches.next() {
                    match self.send(batch) {
                        Ok(sent) => in_flight.push_back(sent),
                        Err(e) => {
                            self.mark_dirty(batch.iter().map(|item| &item.id));
                            return self.disconnected(e, in_flight, batches);
                        }
                    }
                    continue;
                }
            }
            let Some(sent) = in_flight.pop_front() else {
                break;
            };
            match self.receive(&sent, &mut failed) {
                Ok(Some(r)) => {
                    refusal = Some(match refusal {
                        Some(before) => before.max(r),
                        None => r,
                    });
                }
                Ok(None) => {}
                Err(e) => return self.disconnected(e, in_flight, batches),
            }
        }
        for batch in batches {
            self.mark_dirty(batch.iter().map(|item| &item.id));
        }
        if let Some(r) = refusal {
            return PassEnd::Refused(r);
        }
        if !failed.is_empty() {
            return PassEnd::Failed(failed);
        }
        if complete {
            if let Err(end) = self.check(Some(seq)) {
                return end;
            }
            self.advance_watermark(seq, started_ms);
        }
        PassEnd::Wrote
    }

    /// Reads the replies of one batch and applies them (see [`Self::confirm`]).
    /// Err: the connection failed; the replies read stand, the accounts of the
    /// rest are dirty again.
    fn receive(
        &mut self,
        sent: &Sent,
        failed: &mut Vec<(Id, String)>,
    ) -> Result<Option<Refusal>, String> {
        let mut replies = Vec::with_capacity(sent.calls.len());
        for _ in &sent.calls {
            match self.recv() {
                Ok(reply) => replies.push(script::classify(reply)),
                Err(e) => {
                    let confirmed: usize = sent.calls[..replies.len()].iter().sum();
                    self.confirm(&sent.accounts[..confirmed], replies, failed);
                    self.mark_dirty(sent.accounts[confirmed..].iter().map(|(id, _)| id));
                    return Err(e);
                }
            }
        }
        Ok(self.confirm(&sent.accounts, replies, failed))
    }

    fn advance_watermark(&self, seq: u64, started_ms: u64) {
        self.shared
            .watermark_at_ms
            .store(started_ms, Ordering::Release);
        self.shared.watermark.fetch_max(seq, Ordering::AcqRel);
    }

    /// Applies the replies of one batch's calls to `accounts` (in call
    /// order): written accounts are known to be in Redis; failed and refused
    /// ones are dirty again. Returns the most important refusal, if any.
    fn confirm(
        &mut self,
        accounts: &[(Id, u64)],
        replies: Vec<Reply>,
        failed: &mut Vec<(Id, String)>,
    ) -> Option<Refusal> {
        let mut refusal: Option<Refusal> = None;
        let mut calls = accounts.chunks(SCRIPT_ACCOUNTS);
        for reply in replies {
            let Some(call) = calls.next() else { break };
            match reply {
                Reply::Ran { failed: bad } => {
                    for (at, (id, history_seq)) in call.iter().enumerate() {
                        if let Some((_, error)) = bad.iter().find(|(i, _)| *i == at) {
                            self.engine.mark_dirty(id);
                            failed.push((id.clone(), error.clone()));
                            continue;
                        }
                        if self.failing.remove(id) {
                            tracing::info!(redis = %self.url, account = %String::from_utf8_lossy(id), "written to Redis again after refused writes");
                        }
                        self.streamed.insert(id.clone(), *history_seq);
                    }
                }
                Reply::Refused(r) => {
                    self.mark_dirty(call.iter().map(|(id, _)| id));
                    refusal = Some(match refusal {
                        Some(before) => before.max(r),
                        None => r,
                    });
                }
            }
        }
        refusal
    }

    /// The connection failed: whatever was not confirmed is written later.
    fn disconnected<'a>(
        &self,
        error: String,
        in_flight: VecDeque<Sent>,
        batches: impl Iterator<Item = &'a [Item]>,
    ) -> PassEnd {
        for sent in &in_flight {
            self.mark_dirty(sent.accounts.iter().map(|(id, _)| id));
        }
        for batch in batches {
            self.mark_dirty(batch.iter().map(|item| &item.id));
        }
        PassEnd::Disconnected(error)
    }

    /// Marks accounts whose write failed dirty again: they are written later.
    fn mark_dirty<'a>(&self, ids: impl Iterator<Item = &'a Id>) {
        for id in ids {
            self.engine.mark_dirty(id);
        }
    }

    /// Takes every changed account in one sweep over the shards, serializing
    /// up to [`PASS_ACCOUNTS`] / [`PASS_BYTES`] of them; the ids beyond are
    /// returned to be marked dirty again (not here: the shard lock is held).
    fn take_pass(&self) -> (Vec<Item>, Vec<Id>) {
        let mut items: Vec<Item> = Vec::new();
        let mut deferred: Vec<Id> = Vec::new();
        let mut bytes = 0;
        self.engine.take_dirty(usize::MAX, |id, acct| {
            if items.len() >= PASS_ACCOUNTS || bytes >= PASS_BYTES {
                deferred.push(id.clone());
                return;
            }
            let (version, history_seq) = account_version(acct);
            let streamed = self.streamed.get(id).copied().unwrap_or(0);
            let entries = match history_seq.saturating_sub(streamed) {
                0 => Vec::new(),
                fresh => {
                    let mut all = acct.history(usize::try_from(fresh).unwrap_or(usize::MAX));
                    all.reverse();
                    all
                }
            };
            let view = acct.view();
            let state = postcard::to_allocvec(acct).expect("an account encodes");
            bytes += state.len();
            items.push(Item {
                id: id.clone(),
                version,
                history_seq,
                streamed,
                state,
                balance: view.balance,
                plan: view.plan,
                seats: view.seats,
                entries,
            });
        });
        (items, deferred)
    }

    /// Sends one batch as one pipeline of calls, without waiting for the
    /// replies. The commands are encoded straight into one reused buffer.
    fn send(&mut self, batch: &[Item]) -> Result<Sent, String> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let call = self.call(None);
        let mut calls = Vec::with_capacity(batch.len().div_ceil(SCRIPT_ACCOUNTS));
        for chunk in batch.chunks(SCRIPT_ACCOUNTS) {
            call.encode(&mut out, chunk);
            calls.push(chunk.len());
        }
        let sent = self.send_packed(&out);
        if out.capacity() <= OUT_BUFFER_KEEP {
            self.out = out;
        }
        sent?;
        Ok(Sent {
            accounts: batch
                .iter()
                .map(|item| (item.id.clone(), item.history_seq))
                .collect(),
            calls,
        })
    }
}
