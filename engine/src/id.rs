//! Client-chosen identifiers (accounts, holds, grants, debits): 1 to 128
//! bytes, binary safe.
//!
//! [`Id`] keeps ids of up to [`INLINE_ID_BYTES`] bytes inline (24 bytes in
//! all, no allocation: typical ids like `acct:12345` or `h:987654` fit) and
//! longer ones in a shared `Arc<[u8]>`. Every open hold, idempotency record
//! and history entry carries one, so an allocation and a pointer chase per
//! id was most of what a RESERVE+COMMIT pair cost (docs/PERFORMANCE.md).

use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// Longest id accepted, in bytes (contract §1).
pub const MAX_ID_BYTES: usize = 128;

/// Longest id stored inline, without an allocation.
pub const INLINE_ID_BYTES: usize = 22;

/// An owned id: inline up to [`INLINE_ID_BYTES`], shared beyond.
#[derive(Clone)]
pub struct Id(Repr);

#[derive(Clone)]
enum Repr {
    /// Length and bytes; the bytes past the length are zero.
    Inline(u8, [u8; INLINE_ID_BYTES]),
    Shared(Arc<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Id>() == 24);

impl Id {
    #[inline]
    pub fn new(bytes: &[u8]) -> Id {
        debug_assert!(bytes.len() <= MAX_ID_BYTES);
        if bytes.len() <= INLINE_ID_BYTES {
            let mut inline = [0u8; INLINE_ID_BYTES];
            inline[..bytes.len()].copy_from_slice(bytes);
            Id(Repr::Inline(bytes.len() as u8, inline))
        } else {
            Id(Repr::Shared(Arc::from(bytes)))
        }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(len, bytes) => &bytes[..*len as usize],
            Repr::Shared(bytes) => bytes,
        }
    }
}

/// The empty id (a placeholder: valid ids have at least one byte).
impl Default for Id {
    fn default() -> Id {
        Id(Repr::Inline(0, [0; INLINE_ID_BYTES]))
    }
}

impl Deref for Id {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Id {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Id {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Id {
    #[inline]
    fn eq(&self, other: &Id) -> bool {
        match (&self.0, &other.0) {
            // Zero padding makes equal inline ids equal byte for byte.
            (Repr::Inline(a, x), Repr::Inline(b, y)) => a == b && x == y,
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for Id {}

/// Hashes like `[u8]`, as `Borrow<[u8]>` requires.
impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Id {
    fn cmp(&self, other: &Id) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// As a byte string (postcard: varint length + raw bytes), like [`Bytes`].
impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("id bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Id, E> {
                if v.len() > MAX_ID_BYTES {
                    return Err(E::custom("id longer than 128 bytes"));
                }
                Ok(Id::new(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

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

/// A lossy, printable form of an id for messages and logs.
pub fn show(id: &[u8]) -> String {
    String::from_utf8_lossy(id).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_shared_ids_behave_alike() {
        for len in [1, 2, 21, 22, 23, 64, 128] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let id = Id::new(&bytes);
            assert_eq!(&*id, &bytes[..]);
            assert_eq!(id.clone(), id);
            assert_eq!(id, Id::new(&bytes));
            let encoded = postcard::to_allocvec(&id).unwrap();
            assert_eq!(encoded, postcard::to_allocvec(&Bytes(&bytes)).unwrap());
            let back: Id = postcard::from_bytes(&encoded).unwrap();
            assert_eq!(back, id);
        }
        assert_ne!(Id::new(b"ab"), Id::new(b"abc"));
        assert_ne!(Id::new(b"a\0"), Id::new(b"a"));
        assert!(Id::new(b"a") < Id::new(b"b"));
    }

    #[test]
    fn ids_hash_like_their_bytes() {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(1);
        for bytes in [&b"x"[..], &[9u8; 30][..]] {
            assert_eq!(h.hash_one(Id::new(bytes)), h.hash_one(bytes));
        }
    }

    #[test]
    fn overlong_ids_are_refused_on_decode() {
        let encoded = postcard::to_allocvec(&Bytes(&[1u8; 129])).unwrap();
        assert!(postcard::from_bytes::<Id>(&encoded).is_err());
    }
}
