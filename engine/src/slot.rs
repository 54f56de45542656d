//! Redis Cluster hash slots of accounts.
//!
//! Every account belongs to one of [`SLOTS`] slots, computed the way Redis
//! Cluster computes a key's slot (CRC16-XMODEM mod 16384, honouring a
//! `{hash tag}`), so a creditd node that owns a set of slots owns exactly
//! the accounts whose Redis state lives on those slots, and a client can
//! place related accounts together with a tag (`{team-7}:alice`).
//!
//! The engine picks an account's shard from its slot, so all accounts of a
//! slot share one shard: listing, loading or dropping a slot locks one shard.

/// Number of hash slots (Redis Cluster's).
pub const SLOTS: u16 = 16_384;

/// CRC16-XMODEM (polynomial 0x1021, initial 0), by byte through a table.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The part of a key Redis hashes: the first `{...}` with something in it,
/// else the whole key.
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The hash slot of an account id.
#[inline]
pub fn slot_of(account: &[u8]) -> u16 {
    crc16(hashed_part(account)) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from Redis's `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
    }
}
