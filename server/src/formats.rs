//! Every format creditd keeps beyond one process, with its version, in one
//! place: what each version covers, and what changing it means. A version is
//! what lets a creditd tell data it cannot read from damage, and refuse it
//! with a message instead of misreading credits.
//!
//! What these formats encode, and so what bumps which:
//!
//! * The engine's [`Account`](creditd_engine::account::Account) (postcard):
//!   inside every snapshot body ([`SNAPSHOT_MAGIC`]) and in every account's
//!   `state` in Redis ([`REDIS_SCHEMA`]). Changing how an account encodes
//!   means bumping both.
//! * The engine's journal record ([`Record`](creditd_engine::command::Record),
//!   postcard): the payload of every journal frame. It carries no version of
//!   its own: [`JOURNAL_FRAME_VERSION`] covers it, so any change to it bumps
//!   the frame version and old journals are refused up front, both versions
//!   named, rather than fail to replay (`undecodable record`).
//! * The journal's own files: frames ([`JOURNAL_FRAME_VERSION`]) and the
//!   snapshot file's envelope ([`JOURNAL_SNAPSHOT_FILE_VERSION`]), owned by
//!   the journal crate, which cannot depend on the server: they are named here.

/// The layout of one journal frame (`creditd_journal::FRAME_VERSION`): magic,
/// version, length, seq, checksum, then the payload; and the payload's
/// encoding (2: records carry members, alert events and refusal events). A whole frame of another version (its checksum holds) is refused
/// at recovery with both versions named, never cut off as a torn tail; a new
/// layout keeps magic, version, length and seq where they are so that an
/// older build can still tell.
pub use creditd_journal::FRAME_VERSION as JOURNAL_FRAME_VERSION;

/// The envelope of a journal snapshot file (`creditd_journal::SNAPSHOT_FILE_VERSION`):
/// magic `CDSN`, version, seq, length, checksum around a snapshot body. A file
/// of another version is skipped with a warning, like a damaged one; recovery
/// then needs the journal segments that snapshot had replaced, and refuses
/// without them.
pub use creditd_journal::SNAPSHOT_FILE_VERSION as JOURNAL_SNAPSHOT_FILE_VERSION;

/// The snapshot body (`crate::persist`): this magic, the shard count, the
/// clock's instant, then each shard as the engine serializes it
/// (`Engine::snapshot_shard`: its accounts, postcard), then the event log
/// (`Engine::snapshot_events`). Its last two bytes are the version: 02 added
/// the clock's instant and the accounts' terms, 03 the accounts' members and
/// alerts, holds' members, and the event log. A body
/// of another version is refused with both versions named, and the start
/// fails: bump it whenever the body layout or the account encoding changes.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"CDSNAP03";

/// The Redis key schema and the account `state` encoding, stored as `schema`
/// in `creditd:meta` (docs/OPERATIONS.md, "Redis key schema"). 2: accounts
/// carry their terms, buckets whether the plan made them, holds the TTL as
/// sent, subscriptions a pending cancellation. 3: accounts carry members and
/// alerts, holds and idempotency records their member, and events go to the
/// `creditd:events` stream. A creditd refuses to start on
/// a Redis that holds another schema: bump it whenever a key, a field or the
/// account encoding changes.
pub const REDIS_SCHEMA: u64 = 3;
