//! Client-chosen identifiers (accounts, holds, grants, debits): 1 to 128
//! bytes, binary safe. Stored as `Arc<[u8]>` so the hold map, the history and
//! the idempotency index can share one allocation.

use serde::de::{Deserializer, Error as _, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// Longest id accepted, in bytes (contract §1).
pub const MAX_ID_BYTES: usize = 128;

/// An owned id.
pub type Id = Arc<[u8]>;

/// Is `bytes` a valid id?
pub fn valid_id(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= MAX_ID_BYTES
}

/// Borrowed bytes that serialize as a byte string (postcard: varint length +
/// raw bytes) and deserialize without copying. serde's own `&[u8]` impls
/// disagree on seq vs bytes, so this pins the encoding down.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bytes<'a>(pub &'a [u8]);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.0))
    }
}

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("borrowed bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(Bytes(v))
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Bytes(v.as_bytes()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Serde for owned ids (`Arc<[u8]>`) as byte strings, for snapshots.
pub mod id_serde {
    use super::*;

    pub fn serialize<S: Serializer>(id: &Id, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("id bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Id, E> {
                Ok(Arc::from(v))
            }
        }
        let id = d.deserialize_bytes(V)?;
        if id.len() > MAX_ID_BYTES {
            return Err(D::Error::custom("id longer than 128 bytes"));
        }
        Ok(id)
    }
}

/// A lossy, printable form of an id for messages and logs.
pub fn show(id: &[u8]) -> String {
    String::from_utf8_lossy(id).into_owned()
}
