//! The one way the engine appends a postcard encoding to a buffer.
//!
//! `postcard::to_extend` hands every byte to `Extend` one at a time and
//! moves the buffer in and out; this flavor pushes bytes and copies slices
//! straight into the caller's `Vec`. Same bytes either way (the format is
//! postcard's); it is the journal record's hot path.

use postcard::ser_flavors::Flavor;
use serde::Serialize;

/// Appends `value`'s postcard encoding to `out`.
#[inline]
pub fn append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Serializing into a growable buffer cannot fail for the engine's types.
    postcard::serialize_with_flavor(value, Tail(out)).expect("postcard encodes into a Vec");
}

struct Tail<'a>(&'a mut Vec<u8>);

impl Flavor for Tail<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_exactly_what_postcard_encodes() {
        let value = (7u64, "credits", vec![1u32, 300, 70_000], Some(-5i64));
        let mut out = b"kept".to_vec();
        append(&value, &mut out);
        let mut expected = b"kept".to_vec();
        expected.extend(postcard::to_allocvec(&value).unwrap());
        assert_eq!(out, expected);
    }
}
