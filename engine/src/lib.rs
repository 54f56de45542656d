//! # creditd-engine
//!
//! The domain of creditd, pure and synchronous: accounts with buckets of
//! credits, holds (reserve, capture, commit, release, expire), grants and
//! debits with idempotency by id, per-account history, the rate card and
//! plans with calendar cycles, journal records and snapshots.
//!
//! State and rules only: no files, no sockets, no threads of its own and no
//! async runtime (`tests/purity.rs` checks the sources). Time comes from an
//! injected [`clock::Clock`], records go to a [`engine::JournalSink`], and the
//! config arrives as text or a parsed TOML table. The server reads files,
//! owns the on-disk journal (the `creditd-journal` crate) and adapts this to
//! the network.
//!
//! Conservation holds for every account at every moment a caller can observe:
//! `granted = available + held + spent + expired` (checked by
//! [`account::Account::check`] after every operation in debug builds).

#![forbid(unsafe_code)]

pub mod account;
pub mod bucket;
pub mod calendar;
pub mod clock;
pub mod command;
pub mod config;
pub mod encode;
pub mod engine;
pub mod error;
pub mod events;
pub mod history;
pub mod hold;
pub mod id;
pub mod pricing;
pub mod slot;
pub mod smallmap;

/// Largest credit amount (or quantity) one command may carry (contract §1).
pub const MAX_AMOUNT: u64 = 1_000_000_000_000_000;

pub use account::{AccountView, Balance};
pub use command::{Charge, Expiry, Mutation, Usage};
pub use engine::{Engine, EngineStats, JournalSink, MemoryJournal, Outcome};
pub use error::EngineError;
