//! Incremental request parser: RESP2 multibulk arrays and Redis-style inline commands.
//!
//! The caller owns the input buffer and calls [`parse`] on it after every read.
//! Nothing is consumed until a whole request is there, so a partial request is just
//! parsed again from its start once more bytes arrive. Multibulk arguments come back
//! as byte ranges into that buffer (no copy); inline arguments, whose quoting and
//! escapes can change the bytes, are unescaped into a scratch buffer owned by
//! [`Frame`]. [`Frame::iter`] hides the difference.

use std::fmt;
use std::ops::Range;

/// Bounds on what one request may claim, so that a broken or hostile client can make
/// the server neither buffer nor allocate without limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest inline line, and how long we wait for its newline before giving up.
    pub max_inline_len: usize,
    /// Most arguments (command name included) in one request.
    pub max_args: usize,
    /// Longest bulk string; Redis's `proto-max-bulk-len` equivalent.
    pub max_bulk_len: usize,
    /// Most bytes a request may take before it is whole. A connection buffers
    /// at most one partial request, so this bounds its query buffer too.
    pub max_request_bytes: usize,
    /// The client has not authenticated: a broken bound is worded as Redis words it
    /// then (`unauthenticated multibulk length`, `unauthenticated bulk length`).
    pub unauthenticated: bool,
}

/// The query buffer's bound: [`Limits::max_request_bytes`] for every client.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

impl Limits {
    /// 64 KiB inline lines (Redis's), 1024 arguments, 1 MiB bulk strings, 4 MiB
    /// requests: far above any creditd command (ids are at most 128 bytes) yet small
    /// enough to bound per-connection memory.
    pub const AUTHENTICATED: Limits = Limits {
        max_inline_len: 64 * 1024,
        max_args: 1024,
        max_bulk_len: 1024 * 1024,
        max_request_bytes: MAX_REQUEST_BYTES,
        unauthenticated: false,
    };

    /// Before AUTH, when tokens are configured: Redis's limits for unauthenticated
    /// clients (10 arguments, 16 KiB per argument), and inline lines no longer than one
    /// such argument, so that a client without a token cannot park large frames.
    pub const UNAUTHENTICATED: Limits = Limits {
        max_inline_len: 16 * 1024,
        max_args: 10,
        max_bulk_len: 16 * 1024,
        max_request_bytes: MAX_REQUEST_BYTES,
        unauthenticated: true,
    };

    fn too_many_args(&self) -> ProtocolError {
        err(if self.unauthenticated {
            "unauthenticated multibulk length"
        } else {
            "too many arguments"
        })
    }

    fn bulk_too_long(&self) -> ProtocolError {
        err(if self.unauthenticated {
            "unauthenticated bulk length"
        } else {
            "invalid bulk length"
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::AUTHENTICATED
    }
}

/// Malformed framing. The connection cannot be resynchronised after one, so the server
/// replies `-ERR Protocol error: <Display>` and closes it, as Redis does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    /// The reason only, worded like Redis, e.g. `invalid bulk length`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn err(msg: &str) -> ProtocolError {
    ProtocolError(msg.to_owned())
}

/// What one [`parse`] call found at the start of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet: read more and call again with the same bytes extended.
    Incomplete,
    /// One request whose arguments are now in the [`Frame`]; drop `consumed` bytes
    /// from the buffer once done with them.
    Complete {
        /// Length of the request, terminator included.
        consumed: usize,
    },
    /// A request with no arguments (blank inline line, `*0`, `*-1`): Redis ignores
    /// these silently, so drop `consumed` bytes and send no reply.
    Empty {
        /// Length of the empty request, terminator included.
        consumed: usize,
    },
}

/// The arguments of the last request parsed, reused across calls so that parsing a
/// steady stream of requests allocates nothing once its vectors have grown.
///
/// Multibulk arguments are ranges into the buffer given to [`parse`]; inline ones are
/// ranges into the frame's own scratch buffer, because unescaping changes their bytes.
/// Read them with [`Frame::iter`], passing the same buffer (the arguments are only valid
/// until that buffer is advanced or the frame parses again).
#[derive(Debug, Default)]
pub struct Frame {
    ranges: Vec<Range<usize>>,
    scratch: Vec<u8>,
    inline: bool,
    /// Inline only: bytes at the buffer's start already known to hold no `\n`, so that
    /// a long line arriving in small reads is scanned once in total, not once per read.
    scanned: usize,
}

impl Frame {
    /// An empty frame; keep one per connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of arguments, command name included.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when no request has been parsed into the frame (or it was empty).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// All arguments in order; `buf` must be the buffer given to [`parse`].
    pub fn iter<'a>(&'a self, buf: &'a [u8]) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let src = self.source(buf);
        self.ranges.iter().map(move |r| &src[r.clone()])
    }

    /// Where argument `i` lies in the parsed request's bytes, for a
    /// multibulk request (`None` for an inline one: its arguments are
    /// copied, not in the request's bytes).
    pub fn arg_range(&self, i: usize) -> Option<Range<usize>> {
        match self.inline {
            true => None,
            false => self.ranges.get(i).cloned(),
        }
    }

    fn source<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        if self.inline {
            &self.scratch
        } else {
            buf
        }
    }
}

/// Parses the request at the start of `buf` into `frame`.
///
/// Never consumes a partial request and never reserves memory for a length the client
/// merely claimed (reservations are capped by `limits`), so a `*999999999` cannot make
/// the server allocate. After [`Parsed::Incomplete`] the next call must be given the
/// same bytes followed by more (the frame remembers how far an inline line was scanned).
///
/// # Errors
/// [`ProtocolError`] on malformed framing or a broken [`Limits`] bound (a partial
/// request past `max_request_bytes` included); the stream
/// cannot be resynchronised, so reply and close. The frame's contents are then unspecified.
pub fn parse(buf: &[u8], limits: &Limits, frame: &mut Frame) -> Result<Parsed, ProtocolError> {
    frame.ranges.clear();
    let parsed = match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => {
            frame.inline = false;
            frame.scanned = 0;
            multibulk(buf, limits, &mut frame.ranges)
        }
        Some(_) => inline(buf, limits, frame),
    };
    match parsed {
        Ok(Parsed::Incomplete) if buf.len() > limits.max_request_bytes => {
            Err(err("query buffer limit exceeded"))
        }
        parsed => parsed,
    }
}

enum Len {
    Incomplete,
    Bad,
    Ok(i64),
}

/// Reads `-?digits\r\n` at `buf[*pos..]`, accepting what Redis's `string2ll` accepts
/// (no sign other than `-`, no leading zeros, no `-0`). It fails on the first byte that
/// cannot belong to a length, so a bogus header is rejected without waiting for `\r`.
#[inline]
fn read_len(buf: &[u8], pos: &mut usize) -> Len {
    let mut i = *pos;
    let neg = buf.get(i) == Some(&b'-');
    i += neg as usize;
    let start = i;
    let mut v: i64 = 0;
    loop {
        match buf.get(i) {
            None => return Len::Incomplete,
            Some(&d @ b'0'..=b'9') if i - start < 18 => {
                v = v * 10 + (d - b'0') as i64;
                i += 1;
            }
            Some(b'\r') => break,
            Some(_) => return Len::Bad,
        }
    }
    if i == start || (buf[start] == b'0' && (neg || i - start > 1)) {
        return Len::Bad;
    }
    match buf.get(i + 1) {
        None => Len::Incomplete,
        Some(b'\n') => {
            *pos = i + 2;
            Len::Ok(if neg { -v } else { v })
        }
        Some(_) => Len::Bad,
    }
}

fn multibulk(
    buf: &[u8],
    limits: &Limits,
    ranges: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let mut pos = 1;
    let n = match read_len(buf, &mut pos) {
        Len::Incomplete => return Ok(Parsed::Incomplete),
        Len::Bad => return Err(err("invalid multibulk length")),
        Len::Ok(n) => n,
    };
    if n <= 0 {
        // Redis skips `*0` and the null array `*-1`; any other negative count is garbage.
        return match n {
            0 | -1 => Ok(Parsed::Empty { consumed: pos }),
            _ => Err(err("invalid multibulk length")),
        };
    }
    if n as u64 > limits.max_args as u64 {
        return Err(limits.too_many_args());
    }
    ranges.reserve((n as usize).min(64));
    for _ in 0..n {
        match buf.get(pos) {
            None => return Ok(Parsed::Incomplete),
            Some(b'$') => pos += 1,
            Some(&c) => return Err(ProtocolError(format!("expected '$', got '{}'", show(c)))),
        }
        let len = match read_len(buf, &mut pos) {
            Len::Incomplete => return Ok(Parsed::Incomplete),
            Len::Ok(len) if len >= 0 && len as u64 <= limits.max_bulk_len as u64 => len as usize,
            Len::Ok(len) if len >= 0 => return Err(limits.bulk_too_long()),
            _ => return Err(err("invalid bulk length")),
        };
        if buf.len() - pos < len.saturating_add(2) {
            return Ok(Parsed::Incomplete);
        }
        let end = pos + len;
        if buf[end..end + 2] != *b"\r\n" {
            return Err(err("expected CRLF after bulk string"));
        }
        ranges.push(pos..end);
        pos = end + 2;
    }
    Ok(Parsed::Complete { consumed: pos })
}

/// Printable ASCII as itself, anything else as `\xHH`, so error text stays one clean line.
fn show(c: u8) -> String {
    if c.is_ascii_graphic() || c == b' ' {
        (c as char).to_string()
    } else {
        format!("\\x{c:02x}")
    }
}

fn inline(buf: &[u8], limits: &Limits, frame: &mut Frame) -> Result<Parsed, ProtocolError> {
    frame.inline = true;
    let from = if frame.scanned <= buf.len() {
        frame.scanned
    } else {
        0
    };
    let Some(nl) = buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| i + from)
    else {
        if buf.len() > limits.max_inline_len {
            frame.scanned = 0;
            return Err(err("too big inline request"));
        }
        frame.scanned = buf.len();
        return Ok(Parsed::Incomplete);
    };
    frame.scanned = 0;
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    if line.len() > limits.max_inline_len {
        return Err(err("too big inline request"));
    }
    split_args(line, limits, &mut frame.scratch, &mut frame.ranges)?;
    let consumed = nl + 1;
    Ok(if frame.ranges.is_empty() {
        Parsed::Empty { consumed }
    } else {
        Parsed::Complete { consumed }
    })
}

/// C `isspace`: what Redis skips between inline arguments.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Redis's `sdssplitargs`: words split on blanks; `"..."` understands `\n \r \t \b \a`,
/// `\xHH` and `\<any>`; `'...'` understands only `\'`; a closing quote must be followed by
/// a blank or the end of line. Arguments are unescaped into `out`, `ranges` index it.
/// (Unlike C, a NUL byte is an ordinary byte here rather than the end of the line.)
fn split_args(
    line: &[u8],
    limits: &Limits,
    out: &mut Vec<u8>,
    ranges: &mut Vec<Range<usize>>,
) -> Result<(), ProtocolError> {
    out.clear();
    let mut p = 0;
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p == line.len() {
            return Ok(());
        }
        if ranges.len() == limits.max_args {
            return Err(limits.too_many_args());
        }
        let start = out.len();
        p = word(line, p, out)?;
        ranges.push(start..out.len());
    }
}

fn unbalanced() -> ProtocolError {
    err("unbalanced quotes in request")
}

/// A quote at `line[p]` closes only before a blank or the end of the line.
fn closes(line: &[u8], p: usize) -> bool {
    line.get(p + 1).is_none_or(|&b| is_space(b))
}

/// The argument starting at `line[p]`, unescaped into `out`; returns where it
/// ends. A quoted part ends the argument with its closing quote.
fn word(line: &[u8], mut p: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(p).copied() {
            None | Some(b' ' | b'\n' | b'\r' | b'\t') => return Ok(p),
            Some(b'"') => return double_quoted(line, p + 1, out),
            Some(b'\'') => return single_quoted(line, p + 1, out),
            Some(c) => {
                out.push(c);
                p += 1;
            }
        }
    }
}

/// The rest of a `"..."` part from `line[p]`, escapes undone; returns the
/// position after the closing quote.
fn double_quoted(line: &[u8], mut p: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(p).copied() {
            None => return Err(unbalanced()),
            Some(b'\\') if line.get(p + 1) == Some(&b'x') => {
                match (
                    line.get(p + 2).and_then(|&b| hex(b)),
                    line.get(p + 3).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        p += 4;
                    }
                    _ => {
                        out.push(b'x');
                        p += 2;
                    }
                }
            }
            Some(b'\\') if p + 1 < line.len() => {
                out.push(match line[p + 1] {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => other,
                });
                p += 2;
            }
            Some(b'"') if closes(line, p) => return Ok(p + 1),
            Some(b'"') => return Err(unbalanced()),
            Some(c) => {
                out.push(c);
                p += 1;
            }
        }
    }
}

/// The rest of a `'...'` part from `line[p]` (only `\'` is an escape);
/// returns the position after the closing quote.
fn single_quoted(line: &[u8], mut p: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(p).copied() {
            None => return Err(unbalanced()),
            Some(b'\\') if line.get(p + 1) == Some(&b'\'') => {
                out.push(b'\'');
                p += 2;
            }
            Some(b'\'') if closes(line, p) => return Ok(p + 1),
            Some(b'\'') => return Err(unbalanced()),
            Some(c) => {
                out.push(c);
                p += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
