//! RESP encoding, appended to a buffer: a connection's replies, and the requests
//! the Redis write-behind sends (arrays of bulk strings).
//!
//! Every function appends one complete RESP value (or an aggregate's header, whose
//! elements the caller appends next), so a pipeline's replies (or requests) accumulate
//! in one `Vec` and go out in a single write. Numbers are formatted without `format!`:
//! integer and length formatting is on the hot path of every reply.

use std::fmt;
use std::io::Write as _;

/// The protocol a connection speaks: RESP2 by default, RESP3 after `HELLO 3`. Only
/// nulls, maps and verbatim text differ, so only those functions take it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    /// Redis 2+ protocol: maps as flat arrays, null as `$-1`.
    Resp2,
    /// Redis 6+ protocol: real maps `%`, null `_`, verbatim strings `=`.
    Resp3,
}

/// `v` in decimal, written at the end of `buf`.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(decimal(v, &mut buf));
}

fn header(out: &mut Vec<u8>, tag: u8, n: usize) {
    out.push(tag);
    push_u64(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// A line-typed value cannot carry CR or LF (they would end it early and desync the
/// client), so they become spaces, as Redis does for error strings.
fn line(out: &mut Vec<u8>, tag: u8, s: &str) {
    out.push(tag);
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Status reply such as `+OK` or `+PONG`; CR/LF in `s` become spaces.
pub fn simple(out: &mut Vec<u8>, s: &str) {
    line(out, b'+', s);
}

/// Error reply `-code detail`: clients parse the code word (`ERR`, `INSUFFICIENT`,
/// ...); CR/LF in the detail become spaces so a message can never break framing.
pub fn error(out: &mut Vec<u8>, code: &str, detail: impl fmt::Display) {
    let start = out.len();
    out.push(b'-');
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{code} {detail}");
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Integer reply `:n`, the result of nearly every creditd command.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
    out.extend_from_slice(b"\r\n");
}

/// Binary-safe bulk string `$len`: ids and field names are arbitrary bytes.
pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    header(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// One bulk string made of two parts, e.g. a key prefix and an id.
pub fn bulk_concat(out: &mut Vec<u8>, a: &[u8], b: &[u8]) {
    header(out, b'$', a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// A number as a bulk string (how requests carry numbers).
pub fn bulk_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    bulk(out, decimal(v, &mut buf));
}

/// [`bulk`] for text, e.g. field names in *fields* replies.
pub fn bulk_str(out: &mut Vec<u8>, s: &str) {
    bulk(out, s.as_bytes());
}

/// "No value" (e.g. `CLIENT GETNAME` without a name): `$-1` in RESP2, `_` in RESP3.
pub fn null(out: &mut Vec<u8>, p: Proto) {
    out.extend_from_slice(match p {
        Proto::Resp2 => b"$-1\r\n",
        Proto::Resp3 => b"_\r\n",
    });
}

/// Array header `*n`; the caller then appends exactly `n` values.
pub fn array_header(out: &mut Vec<u8>, n: usize) {
    header(out, b'*', n);
}

/// Header of a *fields* reply with `pairs` field/value pairs: a RESP3 map `%pairs`,
/// or in RESP2 the flat array `*2*pairs` Redis uses (e.g. for `HGETALL`). The caller
/// appends field, value, field, value... the same way for both.
pub fn map_header(out: &mut Vec<u8>, p: Proto, pairs: usize) {
    match p {
        Proto::Resp2 => header(out, b'*', pairs * 2),
        Proto::Resp3 => header(out, b'%', pairs),
    }
}

/// Human-readable text such as `INFO`: a RESP3 verbatim string (`=len`, `txt:` prefix)
/// so RESP3 clients display it as text, a plain bulk string in RESP2, as Redis does.
pub fn verbatim_or_bulk(out: &mut Vec<u8>, p: Proto, text: &str) {
    match p {
        Proto::Resp2 => bulk(out, text.as_bytes()),
        Proto::Resp3 => {
            header(out, b'=', text.len() + 4);
            out.extend_from_slice(b"txt:");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(enc(|o| simple(o, "OK")), "+OK\r\n");
        assert_eq!(
            enc(|o| error(o, "ERR", "bad\r\nthing")),
            "-ERR bad  thing\r\n"
        );
        assert_eq!(enc(|o| bulk(o, b"a\r\nb")), "$4\r\na\r\nb\r\n");
        assert_eq!(enc(|o| bulk_str(o, "")), "$0\r\n\r\n");
        assert_eq!(enc(|o| null(o, Proto::Resp2)), "$-1\r\n");
        assert_eq!(enc(|o| null(o, Proto::Resp3)), "_\r\n");
    }

    #[test]
    fn requests() {
        let mut out = Vec::new();
        array_header(&mut out, 3);
        bulk(&mut out, b"HSET");
        bulk_concat(&mut out, b"k:", b"a");
        bulk_u64(&mut out, 0);
        bulk_u64(&mut out, u64::MAX);
        assert_eq!(
            out,
            b"*3\r\n$4\r\nHSET\r\n$3\r\nk:a\r\n$1\r\n0\r\n$20\r\n18446744073709551615\r\n"
        );
    }

    #[test]
    fn integers() {
        for n in [0, 7, -7, 10, 1_000_000_000_000_000, i64::MAX, i64::MIN, -1] {
            assert_eq!(enc(|o| integer(o, n)), format!(":{n}\r\n"));
        }
    }

    #[test]
    fn aggregates() {
        assert_eq!(enc(|o| array_header(o, 0)), "*0\r\n");
        assert_eq!(enc(|o| array_header(o, 12)), "*12\r\n");
        assert_eq!(enc(|o| map_header(o, Proto::Resp2, 5)), "*10\r\n");
        assert_eq!(enc(|o| map_header(o, Proto::Resp3, 5)), "%5\r\n");
        assert_eq!(
            enc(|o| verbatim_or_bulk(o, Proto::Resp2, "a:1")),
            "$3\r\na:1\r\n"
        );
        assert_eq!(
            enc(|o| verbatim_or_bulk(o, Proto::Resp3, "a:1")),
            "=7\r\ntxt:a:1\r\n"
        );
    }
}
