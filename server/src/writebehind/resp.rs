//! RESP request encoding (arrays of bulk strings), written straight into a
//! buffer: the writer encodes whole pipelines without per-argument allocation.

/// `v` in decimal: the digits are `buf[at..]`.
fn digits(v: u64, buf: &mut [u8; 20]) -> usize {
    let mut at = buf.len();
    let mut v = v;
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return at;
        }
    }
}

fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    let mut buf = [0u8; 20];
    let at = digits(len as u64, &mut buf);
    out.push(kind);
    out.extend_from_slice(&buf[at..]);
    out.extend_from_slice(b"\r\n");
}

pub fn array(out: &mut Vec<u8>, len: usize) {
    header(out, b'*', len);
}

pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    bulk2(out, bytes, b"");
}

/// One bulk string made of two parts (a key prefix and an id).
pub fn bulk2(out: &mut Vec<u8>, a: &[u8], b: &[u8]) {
    header(out, b'$', a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

pub fn bulk_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let at = digits(v, &mut buf);
    bulk(out, &buf[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_encoding() {
        let mut out = Vec::new();
        array(&mut out, 3);
        bulk(&mut out, b"HSET");
        bulk2(&mut out, b"k:", b"a");
        bulk_u64(&mut out, 0);
        bulk_u64(&mut out, u64::MAX);
        assert_eq!(
            out,
            b"*3\r\n$4\r\nHSET\r\n$3\r\nk:a\r\n$1\r\n0\r\n$20\r\n18446744073709551615\r\n"
        );
    }
}
