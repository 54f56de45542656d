//! Incremental request parser: RESP2 multibulk arrays and Redis-style inline commands.
//!
//! The caller owns the input buffer and calls [`parse`] on it after every read.
//! Nothing is consumed until a whole request is there, so a partial request is just
//! parsed again from its start once more bytes arrive. Multibulk arguments come back
//! as byte ranges into that buffer (no copy); inline arguments, whose quoting and
//! escapes can change the bytes, are unescaped into a scratch buffer owned by
//! [`Frame`]. [`Frame::arg`] and [`Frame::iter`] hide the difference.

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
    /// The client has not authenticated: a broken bound is worded as Redis words it
    /// then (`unauthenticated multibulk length`, `unauthenticated bulk length`).
    pub unauthenticated: bool,
}

impl Limits {
    /// 64 KiB inline lines (Redis's), 1024 arguments, 1 MiB bulk strings: far above any
    /// creditd command (ids are at most 128 bytes) yet small enough to bound
    /// per-connection memory.
    pub const AUTHENTICATED: Limits = Limits {
        max_inline_len: 64 * 1024,
        max_args: 1024,
        max_bulk_len: 1024 * 1024,
        unauthenticated: false,
    };

    /// Before AUTH, when tokens are configured: Redis's limits for unauthenticated
    /// clients (10 arguments, 16 KiB per argument), and inline lines no longer than one
    /// such argument, so that a client without a token cannot park large frames.
    pub const UNAUTHENTICATED: Limits = Limits {
        max_inline_len: 16 * 1024,
        max_args: 10,
        max_bulk_len: 16 * 1024,
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
/// Read them with [`Frame::arg`] / [`Frame::iter`], passing the same buffer (the
/// arguments are only valid until that buffer is advanced or the frame parses again).
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

    /// Argument `i` (0 is the command name); `buf` must be the buffer given to [`parse`].
    /// Panics if `i >= self.len()`.
    pub fn arg<'a>(&'a self, buf: &'a [u8], i: usize) -> &'a [u8] {
        &self.source(buf)[self.ranges[i].clone()]
    }

    /// All arguments in order; `buf` must be the buffer given to [`parse`].
    pub fn iter<'a>(&'a self, buf: &'a [u8]) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let src = self.source(buf);
        self.ranges.iter().map(move |r| &src[r.clone()])
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
/// [`ProtocolError`] on malformed framing or a broken [`Limits`] bound; the stream
/// cannot be resynchronised, so reply and close. The frame's contents are then unspecified.
pub fn parse(buf: &[u8], limits: &Limits, frame: &mut Frame) -> Result<Parsed, ProtocolError> {
    frame.ranges.clear();
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => {
            frame.inline = false;
            frame.scanned = 0;
            multibulk(buf, limits, &mut frame.ranges)
        }
        Some(_) => inline(buf, limits, frame),
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
    let unbalanced = || err("unbalanced quotes in request");
    let closes = |p: usize| line.get(p + 1).is_none_or(|&b| is_space(b));
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
        let (mut dq, mut sq) = (false, false);
        loop {
            let c = line.get(p).copied();
            if dq {
                match c {
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
                    Some(b'"') if closes(p) => {
                        p += 1;
                        break;
                    }
                    Some(b'"') => return Err(unbalanced()),
                    Some(c) => {
                        out.push(c);
                        p += 1;
                    }
                }
            } else if sq {
                match c {
                    None => return Err(unbalanced()),
                    Some(b'\\') if line.get(p + 1) == Some(&b'\'') => {
                        out.push(b'\'');
                        p += 2;
                    }
                    Some(b'\'') if closes(p) => {
                        p += 1;
                        break;
                    }
                    Some(b'\'') => return Err(unbalanced()),
                    Some(c) => {
                        out.push(c);
                        p += 1;
                    }
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => dq = true,
                    Some(b'\'') => sq = true,
                    Some(c) => out.push(c),
                }
                p += 1;
            }
        }
        ranges.push(start..out.len());
    }
}

#[cfg(test)]
mod tests {
    use super::super::encode;
    use super::*;

    type Cmd = Vec<Vec<u8>>;

    /// Parses every whole request in `buf` (skipping empty ones); returns them and the
    /// bytes consumed, and checks that every call makes progress and stays in bounds.
    fn parse_all(buf: &[u8], limits: &Limits) -> Result<(Vec<Cmd>, usize), ProtocolError> {
        let (mut cmds, mut pos, mut frame) = (Vec::new(), 0, Frame::new());
        loop {
            let rest = &buf[pos..];
            match parse(rest, limits, &mut frame)? {
                Parsed::Incomplete => return Ok((cmds, pos)),
                Parsed::Empty { consumed } => {
                    assert!(consumed > 0 && consumed <= rest.len());
                    pos += consumed;
                }
                Parsed::Complete { consumed } => {
                    assert!(consumed > 0 && consumed <= rest.len());
                    cmds.push(frame.iter(rest).map(<[u8]>::to_vec).collect());
                    pos += consumed;
                }
            }
        }
    }

    fn one(buf: &[u8]) -> Result<Cmd, ProtocolError> {
        let (mut cmds, used) = parse_all(buf, &Limits::default())?;
        assert_eq!(
            (cmds.len(), used),
            (1, buf.len()),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
        Ok(cmds.pop().unwrap())
    }

    fn fails(buf: &[u8], why: &str) {
        let got = parse_all(buf, &Limits::default()).map(|_| ()).unwrap_err();
        assert_eq!(got.to_string(), why, "{:?}", String::from_utf8_lossy(buf));
    }

    fn cmd(words: &[&str]) -> Cmd {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        encode::array_header(&mut out, args.len());
        args.iter().for_each(|a| encode::bulk(&mut out, a));
        out
    }

    /// SplitMix64: deterministic randomness without a dev-dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// Up to `max` bytes, mostly from `alphabet` (protocol-significant bytes).
        fn bytes(&mut self, max: usize, alphabet: &[u8]) -> Vec<u8> {
            (0..self.below(max + 1))
                .map(|_| {
                    if self.below(4) == 0 {
                        self.next() as u8
                    } else {
                        alphabet[self.below(alphabet.len())]
                    }
                })
                .collect()
        }
    }

    #[test]
    fn multibulk_ok() {
        assert_eq!(
            one(b"*2\r\n$4\r\nPING\r\n$0\r\n\r\n").unwrap(),
            cmd(&["PING", ""])
        );
        assert_eq!(
            one(b"*1\r\n$4\r\na\r\nb\r\n").unwrap(),
            vec![b"a\r\nb".to_vec()]
        );
        let l = Limits::default();
        let mut f = Frame::new();
        assert_eq!(
            parse(b"*0\r\n", &l, &mut f),
            Ok(Parsed::Empty { consumed: 4 })
        );
        assert_eq!(
            parse(b"*-1\r\n", &l, &mut f),
            Ok(Parsed::Empty { consumed: 5 })
        );
        for partial in [
            &b""[..],
            b"*",
            b"*1",
            b"*1\r",
            b"*1\r\n$",
            b"*1\r\n$3\r\nab",
            b"*1\r\n$3\r\nabc\r",
        ] {
            assert_eq!(parse(partial, &l, &mut f), Ok(Parsed::Incomplete));
        }
    }

    #[test]
    fn multibulk_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*\r\n",
            b"*-2\r\n",
            b"*01\r\n",
            b"*-0\r\n",
            b"*+1\r\n",
            b"*1\n",
            b"*1\rx",
        ] {
            fails(bad, "invalid multibulk length");
        }
        fails(b"*99999999999999999999999", "invalid multibulk length");
        fails(b"*1025\r\n", "too many arguments");
        fails(b"*999999999\r\n", "too many arguments");
        for bad in [
            &b"*1\r\n$x\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$1048577\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$03\r\n",
        ] {
            fails(bad, "invalid bulk length");
        }
        fails(b"*1\r\n:3\r\n", "expected '$', got ':'");
        fails(b"*2\r\n$1\r\na\r\n\r\n", "expected '$', got '\\x0d'");
        fails(b"*1\r\n$3\r\nabcXY", "expected CRLF after bulk string");
        // At the limits exactly is fine.
        assert_eq!(
            one(&multibulk(&vec![b"x".to_vec(); 1024])).unwrap().len(),
            1024
        );
        assert_eq!(
            one(&multibulk(&[vec![7; 1 << 20]])).unwrap()[0].len(),
            1 << 20
        );
    }

    #[test]
    fn inline_quoting_like_redis() {
        assert_eq!(
            one(b"set \"a b\" 'c d'\r\n").unwrap(),
            cmd(&["set", "a b", "c d"])
        );
        assert_eq!(one(b"\"\\x41\"\n").unwrap(), cmd(&["A"]));
        assert_eq!(one(b"  PING\t x\n").unwrap(), cmd(&["PING", "x"]));
        assert_eq!(
            one(b"\"a\\n\\r\\t\\\"\\\\\\q\" 'it\\'s' \"\" \"\\xZZ\"\n").unwrap(),
            cmd(&["a\n\r\t\"\\q", "it's", "", "xZZ"])
        );
        assert_eq!(one(b"a\"b c\" 'x\\n'\n").unwrap(), cmd(&["ab c", "x\\n"]));
        assert_eq!(one(b"a\rb\r\n").unwrap(), cmd(&["a", "b"]));
        for bad in [
            &b"set \"a\n"[..],
            b"set 'a\n",
            b"\"a\"b\n",
            b"'a'b\n",
            b"\"a\\\"\n",
        ] {
            fails(bad, "unbalanced quotes in request");
        }
        fails(
            format!("{}\n", "a ".repeat(1025)).as_bytes(),
            "too many arguments",
        );
    }

    #[test]
    fn inline_empty_and_limits() {
        let l = Limits::default();
        let mut f = Frame::new();
        assert_eq!(
            parse(b"\r\n", &l, &mut f),
            Ok(Parsed::Empty { consumed: 2 })
        );
        assert_eq!(
            parse(b" \t \n", &l, &mut f),
            Ok(Parsed::Empty { consumed: 4 })
        );
        let mut long = vec![b'a'; l.max_inline_len];
        assert_eq!(parse(&long, &l, &mut f), Ok(Parsed::Incomplete));
        long.push(b'\n');
        assert_eq!(one(&long).unwrap()[0].len(), l.max_inline_len);
        long.pop();
        long.push(b'a');
        fails(&long, "too big inline request");
        long.push(b'\n');
        fails(&long, "too big inline request");
    }

    #[test]
    fn unauthenticated_limits_as_redis() {
        let l = Limits::UNAUTHENTICATED;
        let fails_with = |buf: &[u8], why: &str| {
            let got = parse_all(buf, &l).map(|_| ()).unwrap_err();
            assert_eq!(got.to_string(), why, "{:?}", String::from_utf8_lossy(buf));
        };
        fails_with(b"*11\r\n", "unauthenticated multibulk length");
        fails_with(b"*1\r\n$16385\r\n", "unauthenticated bulk length");
        fails_with(b"*1\r\n$x\r\n", "invalid bulk length");
        fails_with(
            format!("{}\n", "a ".repeat(11)).as_bytes(),
            "unauthenticated multibulk length",
        );
        fails_with(&[b'a'; 16 * 1024 + 1], "too big inline request");
        // At the limits exactly is fine.
        let ten = multibulk(&vec![vec![7; 16 * 1024]; 10]);
        assert_eq!(parse_all(&ten, &l).unwrap().0[0].len(), 10);
        let mut line = vec![b'a'; 16 * 1024];
        line.push(b'\n');
        assert_eq!(parse_all(&line, &l).unwrap().0.len(), 1);
    }

    #[test]
    fn pipelined_10k() {
        let mut buf = Vec::new();
        for i in 0..10_000 {
            buf.extend(multibulk(&cmd(&[
                "RESERVE",
                "acct",
                &format!("h{i}"),
                "100",
            ])));
        }
        let (cmds, used) = parse_all(&buf, &Limits::default()).unwrap();
        assert_eq!((cmds.len(), used), (10_000, buf.len()));
        assert!(cmds
            .iter()
            .enumerate()
            .all(|(i, c)| c[2] == format!("h{i}").as_bytes()));
    }

    /// Feeds a mixed stream one byte at a time into a buffer drained like a connection's.
    fn byte_by_byte(all: &[u8]) -> Vec<Cmd> {
        let (l, mut f, mut pending, mut cmds) =
            (Limits::default(), Frame::new(), Vec::new(), Vec::new());
        for &b in all {
            pending.push(b);
            loop {
                match parse(&pending, &l, &mut f).unwrap() {
                    Parsed::Incomplete => break,
                    Parsed::Empty { consumed } => drop(pending.drain(..consumed)),
                    Parsed::Complete { consumed } => {
                        cmds.push(f.iter(&pending).map(<[u8]>::to_vec).collect());
                        pending.drain(..consumed);
                    }
                }
            }
        }
        assert!(pending.is_empty());
        cmds
    }

    #[test]
    fn split_at_every_byte() {
        let mut all = multibulk(&cmd(&["GRANT", "a", "g1", "1000"]));
        all.extend_from_slice(b"*0\r\nBALANCE \"a\\x41\" 'q q'\r\n\r\n");
        all.extend(multibulk(&[b"ECHO".to_vec(), b"\r\n*1\r\n".to_vec()]));
        all.extend_from_slice(b"*-1\r\nPING\n");
        let whole = parse_all(&all, &Limits::default()).unwrap();
        assert_eq!((whole.0.len(), whole.1), (4, all.len()));
        assert_eq!(byte_by_byte(&all), whole.0);
        assert_eq!(whole.0[1], cmd(&["BALANCE", "aA", "q q"]));
    }

    #[test]
    fn random_args_round_trip() {
        let mut rng = Rng(1);
        for _ in 0..2_000 {
            let n = 1 + rng.below(8);
            let args: Cmd = (0..n)
                .map(|_| rng.bytes(40, b"*$\r\n-0123 \"'\\x"))
                .collect();
            // As a RESP array, pipelined twice, fed in random-size chunks.
            let mut buf = multibulk(&args);
            buf.extend(multibulk(&args));
            let (l, mut f, mut pending, mut got) =
                (Limits::default(), Frame::new(), Vec::new(), Vec::new());
            let mut fed = 0;
            while fed < buf.len() {
                let k = (1 + rng.below(16)).min(buf.len() - fed);
                pending.extend_from_slice(&buf[fed..fed + k]);
                fed += k;
                while let Parsed::Complete { consumed } = parse(&pending, &l, &mut f).unwrap() {
                    got.push(f.iter(&pending).map(<[u8]>::to_vec).collect::<Cmd>());
                    pending.drain(..consumed);
                }
            }
            assert_eq!(got, vec![args.clone(), args.clone()]);
            // As an inline command with every byte \xHH-escaped.
            let mut line: Vec<u8> = args
                .iter()
                .flat_map(|a| {
                    let esc: String = a.iter().map(|b| format!("\\x{b:02x}")).collect();
                    format!("\"{esc}\" ").into_bytes()
                })
                .collect();
            line.extend_from_slice(b"\r\n");
            assert_eq!(one(&line).unwrap(), args);
        }
    }

    /// Random bytes, and valid pipelines with random bytes overwritten, inserted or
    /// removed (which reach deep into the multibulk path): `parse_all` asserts progress
    /// and bounds on every call, so a panic or a loop would fail here.
    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng(2);
        let tight = Limits {
            max_inline_len: 16,
            max_args: 4,
            max_bulk_len: 8,
            unauthenticated: true,
        };
        let alphabet = b"*$\r\n\r\n-0123456789 \"'\\xa";
        for i in 0..50_000 {
            let mut buf = if i % 2 == 0 {
                rng.bytes(64, alphabet)
            } else {
                let args: Cmd = (0..1 + rng.below(4))
                    .map(|_| rng.bytes(6, alphabet))
                    .collect();
                [multibulk(&args), multibulk(&args)].concat()
            };
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(buf.len() + 1);
                match rng.below(3) {
                    0 if at < buf.len() => buf[at] = alphabet[rng.below(alphabet.len())],
                    1 if at < buf.len() => drop(buf.remove(at)),
                    _ => buf.insert(at, rng.next() as u8),
                }
            }
            for l in [&Limits::default(), &tight] {
                let _ = parse_all(&buf, l);
            }
        }
    }
}
