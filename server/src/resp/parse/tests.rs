//! The parser against Redis's wording, every split point, and random input.

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
        max_request_bytes: 32,
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

#[test]
fn a_partial_request_past_its_bound_is_refused() {
    let l = Limits {
        max_request_bytes: 16,
        ..Limits::default()
    };
    let mut f = Frame::new();
    // Every argument within its own bound, the whole past the request's.
    let whole = multibulk(&[b"ECHO".to_vec(), vec![b'x'; 12]]);
    assert!(whole.len() > 16);
    assert_eq!(
        parse(&whole[..16], &l, &mut f),
        Ok(Parsed::Incomplete),
        "at the bound: wait for more"
    );
    assert_eq!(
        parse(&whole[..17], &l, &mut f).unwrap_err().to_string(),
        "query buffer limit exceeded"
    );
    // A whole request is taken whatever its size (it leaves the buffer).
    assert_eq!(
        parse(&whole, &l, &mut f),
        Ok(Parsed::Complete {
            consumed: whole.len()
        })
    );
}
