//! One journal frame on disk:
//! `[magic u8 = 0xC7][version u8 = 2][len u32 LE][seq u64 LE][crc32c u32 LE][payload]`.
//!
//! Why this layout: the magic byte and the version tell a frame from the zeroes or garbage a
//! file system may leave at the tail after a crash; the length precedes the payload so the
//! payload stays opaque (no escaping); the seq is stored, not implied by position, so recovery
//! can prove the log has no gap and no repeat; the checksum covers the version, length and seq
//! as well as the payload, so a torn or flipped length is caught instead of trusted. The crc is
//! the last header field so `append` can fill it in after the payload was written in place.

/// First byte of every frame.
pub const FRAME_MAGIC: u8 = 0xC7;
/// Second byte of every frame: the version of this layout, and of the payloads the server
/// writes in it (the crate treats them as opaque, but a build that cannot decode them must not
/// start on them). A whole frame of another version whose checksum holds under this layout is
/// [`Decoded::Foreign`], and recovery refuses the journal rather than cut it off as a torn
/// tail: a later layout should keep magic, version, length and seq where they are.
/// Version 2: same layout as 1; the server's records carry members and events.
pub const FRAME_VERSION: u8 = 2;
/// magic (1) + version (1) + len (4) + seq (8) + crc (4).
pub const FRAME_HEADER_BYTES: usize = 18;
/// Bound on one payload, so a corrupt length can never make recovery allocate or skip gigabytes.
pub const FRAME_PAYLOAD_MAX_BYTES: usize = 16 << 20;

/// Appends one complete frame for `payload` to `out`.
pub fn encode_frame(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = begin_frame(out);
    out.extend_from_slice(payload);
    seal_frame(out, start, seq);
}

/// Reserves the header of a frame whose payload the caller appends next; returns its start.
pub(crate) fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    start
}

/// Fills in the header of the frame at `start`, whose payload is everything after the header.
/// Returns the frame's size in bytes.
pub(crate) fn seal_frame(out: &mut [u8], start: usize, seq: u64) -> usize {
    assert!(seq > 0, "seq 0 is never used");
    assert!(
        out.len() >= start + FRAME_HEADER_BYTES,
        "payload writer cut into the frame header"
    );
    let payload_bytes = out.len() - start - FRAME_HEADER_BYTES;
    assert!(
        payload_bytes <= FRAME_PAYLOAD_MAX_BYTES,
        "payload of {payload_bytes} bytes over the maximum"
    );
    let len = u32::try_from(payload_bytes).expect("FRAME_PAYLOAD_MAX_BYTES fits u32");
    let frame = &mut out[start..];
    frame[0] = FRAME_MAGIC;
    frame[1] = FRAME_VERSION;
    frame[2..6].copy_from_slice(&len.to_le_bytes());
    frame[6..14].copy_from_slice(&seq.to_le_bytes());
    let crc = frame_crc(frame, payload_bytes);
    frame[14..18].copy_from_slice(&crc.to_le_bytes());
    frame.len()
}

fn frame_crc(frame: &[u8], payload_bytes: usize) -> u32 {
    let header = crc32c::crc32c(&frame[1..14]);
    crc32c::crc32c_append(
        header,
        &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_bytes],
    )
}

/// What the bytes at some offset hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Frame {
        seq: u64,
        payload: &'a [u8],
        frame_bytes: usize,
    },
    /// A plausible frame that runs past the end of the bytes (torn write).
    Incomplete,
    /// Not a frame: the reason.
    Bad(&'static str),
    /// A whole, checksummed frame of another layout version (written by another build).
    Foreign(u8),
}

/// Decodes the frame at the start of `bytes`.
pub fn decode_frame(bytes: &[u8]) -> Decoded<'_> {
    match bytes {
        [] => return Decoded::Incomplete,
        [magic, ..] if *magic != FRAME_MAGIC => return Decoded::Bad("bad magic byte"),
        _ if bytes.len() < FRAME_HEADER_BYTES => return Decoded::Incomplete,
        _ => {}
    }
    let len = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes")) as usize;
    if len > FRAME_PAYLOAD_MAX_BYTES {
        return Decoded::Bad("payload length over the maximum");
    }
    let frame_bytes = FRAME_HEADER_BYTES + len;
    if bytes.len() < frame_bytes {
        return Decoded::Incomplete;
    }
    let crc_stored = u32::from_le_bytes(bytes[14..18].try_into().expect("4 bytes"));
    let crc_ok = frame_crc(bytes, len) == crc_stored;
    match bytes[1] {
        FRAME_VERSION if crc_ok => {}
        FRAME_VERSION => return Decoded::Bad("checksum mismatch"),
        other if crc_ok => return Decoded::Foreign(other),
        _ => return Decoded::Bad("unknown frame version"),
    }
    let seq = u64::from_le_bytes(bytes[6..14].try_into().expect("8 bytes"));
    if seq == 0 {
        return Decoded::Bad("seq 0");
    }
    Decoded::Frame {
        seq,
        payload: &bytes[FRAME_HEADER_BYTES..frame_bytes],
        frame_bytes,
    }
}

/// Offset of the first valid frame in `bytes`, if any. Used only after a bad frame, to tell a
/// torn tail (nothing valid after it) from corruption in the middle of the log.
pub(crate) fn find_valid_frame(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&offset| {
        bytes[offset] == FRAME_MAGIC
            && matches!(decode_frame(&bytes[offset..]), Decoded::Frame { .. })
    })
}
