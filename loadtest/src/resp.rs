//! A small RESP2/RESP3 client codec: commands are encoded as arrays of bulk
//! strings straight into a reusable buffer; replies are parsed incrementally
//! from a read buffer. The same codec talks to creditd and to redis-server, so
//! the client's overhead is identical for both targets.

use std::fmt;

/// One reply. Integers, simple strings and errors are what the hot path sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    /// RESP3 map (`%`), in wire order.
    Map(Vec<(Reply, Reply)>),
    Double(f64),
    Bool(bool),
}

impl Reply {
    /// The error code (first word) of an error reply.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e.split(' ').next().unwrap_or("ERR")),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            Reply::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            Reply::Simple(s) => s.parse().ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Simple(s) => Some(s),
            Reply::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// A field/value reply (RESP2 flat array or RESP3 map) as pairs.
    pub fn fields(&self) -> Option<Vec<(&str, &Reply)>> {
        match self {
            Reply::Array(items) if items.len() % 2 == 0 => items
                .chunks(2)
                .map(|kv| Some((kv[0].as_str()?, &kv[1])))
                .collect(),
            Reply::Map(pairs) => pairs.iter().map(|(k, v)| Some((k.as_str()?, v))).collect(),
            _ => None,
        }
    }

    /// An integer field of a field/value reply.
    pub fn field_int(&self, name: &str) -> Option<i64> {
        self.fields()?
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_int())
    }

    /// BALANCE's five totals `[available, held, spent, expired, granted]`,
    /// if this is a whole BALANCE reply.
    pub fn balance(&self) -> Option<[i64; 5]> {
        let f = |k| self.field_int(k);
        Some([
            f("available")?,
            f("held")?,
            f("spent")?,
            f("expired")?,
            f("granted")?,
        ])
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Error(e) => write!(f, "-{e}"),
            Reply::Int(n) => write!(f, ":{n}"),
            Reply::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::Nil => write!(f, "(nil)"),
            Reply::Double(d) => write!(f, ",{d}"),
            Reply::Bool(b) => write!(f, "#{}", if *b { 't' } else { 'f' }),
            Reply::Array(items) => {
                write!(f, "[")?;
                for (i, r) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{r}")?;
                }
                write!(f, "]")
            }
            Reply::Map(pairs) => {
                write!(f, "{{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// A reply that can't be parsed: the stream is out of sync and must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

const MAX_DEPTH: usize = 32;

/// Parses one reply from the start of `buf`. `Ok(None)`: not complete yet.
/// On success, also returns how many bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, 0)? {
        Some(r) => Ok(Some((r, pos))),
        None => Ok(None),
    }
}

/// Finds the `\r\n` ending the line that starts at `from`; returns the index of `\r`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        match buf[i..buf.len() - 1].iter().position(|&b| b == b'\r') {
            Some(off) => {
                let at = i + off;
                if buf[at + 1] == b'\n' {
                    return Some(at);
                }
                i = at + 1;
            }
            None => return None,
        }
    }
    None
}

fn parse_i64(line: &[u8]) -> Result<i64, ProtocolError> {
    let (neg, digits) = match line.first() {
        Some(b'-') => (true, &line[1..]),
        Some(b'+') => (false, &line[1..]),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(ProtocolError(format!(
            "bad integer {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(ProtocolError(format!(
                "bad integer {:?}",
                String::from_utf8_lossy(line)
            )));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((d - b'0') as i64))
            .ok_or_else(|| ProtocolError("integer overflow".into()))?;
    }
    Ok(if neg { -n } else { n })
}

fn text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

fn parse_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Reply>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("nesting too deep".into()));
    }
    let start = *pos;
    if start >= buf.len() {
        return Ok(None);
    }
    let Some(end) = line_end(buf, start + 1) else {
        return Ok(None);
    };
    let line = &buf[start + 1..end];
    let after = end + 2;
    let kind = buf[start];
    let reply = match kind {
        b'+' => {
            *pos = after;
            Reply::Simple(text(line))
        }
        b'-' => {
            *pos = after;
            Reply::Error(text(line))
        }
        b':' => {
            *pos = after;
            Reply::Int(parse_i64(line)?)
        }
        b'_' => {
            *pos = after;
            Reply::Nil
        }
        b'#' => {
            *pos = after;
            Reply::Bool(line == b"t")
        }
        b',' => {
            *pos = after;
            let s = std::str::from_utf8(line).map_err(|_| ProtocolError("bad double".into()))?;
            Reply::Double(match s {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                _ => s
                    .parse()
                    .map_err(|_| ProtocolError(format!("bad double {s:?}")))?,
            })
        }
        b'(' => {
            *pos = after;
            Reply::Bulk(line.to_vec())
        }
        b'$' | b'=' | b'!' => {
            let n = parse_i64(line)?;
            if n < 0 {
                *pos = after;
                return Ok(Some(Reply::Nil));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not terminated by CRLF".into()));
            }
            *pos = after + n + 2;
            let body = &buf[after..after + n];
            match kind {
                b'!' => Reply::Error(text(body)),
                // Verbatim strings start with a 3-letter format and a colon.
                b'=' if n >= 4 => Reply::Bulk(body[4..].to_vec()),
                _ => Reply::Bulk(body.to_vec()),
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = parse_i64(line)?;
            if n < 0 {
                *pos = after;
                return Ok(Some(Reply::Nil));
            }
            let n = n as usize;
            let mut p = after;
            if kind == b'%' || kind == b'|' {
                let mut pairs = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let Some(k) = parse_at(buf, &mut p, depth + 1)? else {
                        return Ok(None);
                    };
                    let Some(v) = parse_at(buf, &mut p, depth + 1)? else {
                        return Ok(None);
                    };
                    pairs.push((k, v));
                }
                *pos = p;
                if kind == b'|' {
                    // An attribute precedes the real reply: skip it.
                    return parse_at(buf, pos, depth + 1);
                }
                Reply::Map(pairs)
            } else {
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let Some(item) = parse_at(buf, &mut p, depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                }
                *pos = p;
                Reply::Array(items)
            }
        }
        other => {
            return Err(ProtocolError(format!(
                "unexpected reply type byte {:?}",
                other as char
            )))
        }
    };
    Ok(Some(reply))
}

/// Encodes commands as RESP arrays of bulk strings into a reusable buffer.
#[derive(Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

/// One piece of a bulk string argument built from parts (ids made of a prefix
/// and numbers), so no temporary string is allocated per command.
#[derive(Clone, Copy)]
pub enum Part<'a> {
    Bytes(&'a [u8]),
    Num(u64),
}

fn digits(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

fn num_len(v: u64) -> usize {
    if v == 0 {
        1
    } else {
        v.ilog10() as usize + 1
    }
}

impl Encoder {
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn header(&mut self, kind: u8, n: u64) {
        let mut d = [0u8; 20];
        self.buf.push(kind);
        self.buf.extend_from_slice(digits(n, &mut d));
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Starts a command of `n` arguments (the name included).
    pub fn array(&mut self, n: usize) {
        self.header(b'*', n as u64);
    }

    pub fn bulk(&mut self, b: &[u8]) {
        self.header(b'$', b.len() as u64);
        self.buf.extend_from_slice(b);
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn bulk_u64(&mut self, v: u64) {
        let mut d = [0u8; 20];
        let s = digits(v, &mut d);
        self.header(b'$', s.len() as u64);
        self.buf.extend_from_slice(s);
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn bulk_parts(&mut self, parts: &[Part<'_>]) {
        let len: usize = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len(),
                Part::Num(n) => num_len(*n),
            })
            .sum();
        self.header(b'$', len as u64);
        let mut d = [0u8; 20];
        for p in parts {
            match p {
                Part::Bytes(b) => self.buf.extend_from_slice(b),
                Part::Num(n) => self.buf.extend_from_slice(digits(*n, &mut d)),
            }
        }
        self.buf.extend_from_slice(b"\r\n");
    }

    /// A whole command from string arguments (setup paths, not the hot path).
    pub fn command(&mut self, args: &[&[u8]]) {
        self.array(args.len());
        for a in args {
            self.bulk(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8]) -> Vec<Reply> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((r, n)) = parse(&buf[pos..]).unwrap() {
            out.push(r);
            pos += n;
        }
        assert_eq!(pos, buf.len(), "trailing bytes");
        out
    }

    #[test]
    fn parses_every_kind() {
        let r = all(b"+OK\r\n-INSUFFICIENT need 5 available 2\r\n:42\r\n:-7\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$1\r\nx\r\n%1\r\n+a\r\n:1\r\n_\r\n#t\r\n,1.5\r\n");
        assert_eq!(r[0], Reply::Simple("OK".into()));
        assert_eq!(r[1].error_code(), Some("INSUFFICIENT"));
        assert_eq!(r[2], Reply::Int(42));
        assert_eq!(r[3], Reply::Int(-7));
        assert_eq!(r[4], Reply::Bulk(b"abc".to_vec()));
        assert_eq!(r[5], Reply::Nil);
        assert_eq!(
            r[6],
            Reply::Array(vec![Reply::Int(1), Reply::Bulk(b"x".to_vec())])
        );
        assert_eq!(r[7].field_int("a"), Some(1));
        assert_eq!(r[8], Reply::Nil);
        assert_eq!(r[9], Reply::Bool(true));
        assert_eq!(r[10], Reply::Double(1.5));
    }

    #[test]
    fn incomplete_input_waits() {
        let full = b"*2\r\n$5\r\nhello\r\n:12\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(full).unwrap().is_some());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":12a\r\n").is_err());
        assert!(parse(b"$3\r\nabcd\r\n").is_err());
    }

    #[test]
    fn balance_fields_resp2() {
        let r = all(b"*4\r\n$9\r\navailable\r\n:10\r\n$4\r\nheld\r\n:3\r\n");
        assert_eq!(r[0].field_int("available"), Some(10));
        assert_eq!(r[0].field_int("held"), Some(3));
    }

    #[test]
    fn encodes_arrays_of_bulk_strings() {
        let mut e = Encoder::default();
        e.array(3);
        e.bulk(b"RESERVE");
        e.bulk_parts(&[Part::Bytes(b"a"), Part::Num(0), Part::Num(105)]);
        e.bulk_u64(7);
        assert_eq!(
            e.buf,
            b"*3\r\n$7\r\nRESERVE\r\n$5\r\na0105\r\n$1\r\n7\r\n".to_vec()
        );
    }
}
