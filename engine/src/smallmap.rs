//! A map that is a plain vector while small and a hash map once large.
//!
//! Most accounts have a handful of open holds and idempotency records. A
//! `HashMap` allocates at least four slots plus control bytes on its first
//! insert (hundreds of bytes for creditd's values), and hashes every lookup.
//! A vector of pairs grown one slot at a time costs exactly what it holds
//! and a linear scan of a few short ids beats hashing. Past
//! [`SMALL_MAX`] entries it switches to a `HashMap` for O(1) lookups.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

/// Entries kept in the vector form.
pub const SMALL_MAX: usize = 16;

type Large<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone)]
pub enum SmallMap<K, V> {
    Small(Vec<(K, V)>),
    /// Boxed: keeps the small form (the common case) one vector wide.
    Large(Box<Large<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Small(Vec::new())
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    pub fn len(&self) -> usize {
        match self {
            SmallMap::Small(v) => v.len(),
            SmallMap::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the first entry (a small map's whole storage is one vector),
    /// for [`crate::Engine::prefetch`]; `weigh` picks something of it.
    #[inline]
    pub fn touch(&self, weigh: impl Fn(&K, &V) -> u64) -> u64 {
        match self {
            SmallMap::Small(v) => v.first().map_or(0, |(k, v)| weigh(k, v)),
            SmallMap::Large(m) => m.len() as u64,
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Small(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            SmallMap::Large(m) => m.get(key),
        }
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Small(v) => v
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Large(m) => m.get_mut(key),
        }
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts, replacing (and returning) an existing value for the key.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            SmallMap::Small(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                if v.len() < SMALL_MAX {
                    if v.len() == v.capacity() {
                        // Grow by what is needed while small, not by doubling.
                        v.reserve_exact(if v.len() < 4 { 1 } else { v.len() });
                    }
                    v.push((key, value));
                    return None;
                }
                let mut m: Large<K, V> = HashMap::with_capacity_and_hasher(
                    SMALL_MAX * 2,
                    foldhash::fast::RandomState::default(),
                );
                m.extend(v.drain(..));
                m.insert(key, value);
                *self = SmallMap::Large(Box::new(m));
                None
            }
            SmallMap::Large(m) => m.insert(key, value),
        }
    }

    pub fn remove_entry<Q>(&mut self, key: &Q) -> Option<(K, V)>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Small(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == key)?;
                let entry = v.swap_remove(i);
                if v.is_empty() {
                    // An account with no holds left keeps no allocation.
                    *v = Vec::new();
                }
                Some(entry)
            }
            SmallMap::Large(m) => {
                let entry = m.remove_entry(key);
                if m.is_empty() {
                    *self = SmallMap::Small(Vec::new());
                }
                entry
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.remove_entry(key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (&K, &V)> + '_> {
        match self {
            SmallMap::Small(v) => Box::new(v.iter().map(|(k, v)| (k, v))),
            SmallMap::Large(m) => Box::new(m.iter()),
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Serialize + Eq + Hash, V: Serialize> Serialize for SmallMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K, V> Deserialize<'de> for SmallMap<K, V>
where
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<K, V>(PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for V2<K, V>
        where
            K: Deserialize<'de> + Eq + Hash,
            V: Deserialize<'de>,
        {
            type Value = SmallMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut m = SmallMap::default();
                while let Some((k, v)) = a.next_entry()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_hash_map_and_back() {
        let mut m: SmallMap<u32, u32> = SmallMap::default();
        for i in 0..100 {
            assert_eq!(m.insert(i, i * 2), None);
            assert_eq!(m.get(&i), Some(&(i * 2)));
        }
        assert!(matches!(m, SmallMap::Large(_)));
        assert_eq!(m.insert(5, 7), Some(10));
        assert_eq!(m.len(), 100);
        for i in 0..100 {
            assert!(m.remove(&i).is_some());
        }
        assert!(m.is_empty());
        assert!(matches!(m, SmallMap::Small(_)));
        let bytes = postcard::to_allocvec(&m).unwrap();
        let back: SmallMap<u32, u32> = postcard::from_bytes(&bytes).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn small_form_grows_one_slot_at_a_time() {
        let mut m: SmallMap<u32, [u8; 100]> = SmallMap::default();
        m.insert(1, [0; 100]);
        match &m {
            SmallMap::Small(v) => assert_eq!(v.capacity(), 1),
            _ => unreachable!(),
        }
    }
}
