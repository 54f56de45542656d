//! One client connection: read, parse every complete frame, execute each,
//! wait once for the journal to cover the batch, write all replies at once.
//!
//! This is mini-redis's frame/parse/apply shape with its gaps closed: full
//! pipelining (a batch is everything the last read delivered), explicit
//! limits on every buffer, and backpressure: replies are written before more
//! is read, so a client that never reads its replies stalls only itself.
//!
//! Per-connection memory is bounded: the query buffer by
//! [`MAX_QUERY_BUFFER_BYTES`] (one partial frame, as small as
//! [`Limits::UNAUTHENTICATED`] allows before AUTH), pending replies by
//! [`OUT_FLUSH_BYTES`] plus one reply (EXEC's replies too, one command at a
//! time), a MULTI queue by [`crate::multi::MULTI_MAX_BYTES`].

use crate::app::App;
use crate::commands::{lookup, Access, Flow, Session, COMMANDS};
use crate::multi::Multi;
use crate::resp::encode::{self, Proto};
use crate::resp::parse::{parse, Frame, Limits, Parsed};
use smallvec::SmallVec;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Bytes asked of the socket per read.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Most unparsed bytes a connection may hold (one partial frame, at most).
/// The buffer's allocation never passes this plus one read.
pub const MAX_QUERY_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Replies are flushed once this much is pending, even mid-batch.
pub const OUT_FLUSH_BYTES: usize = 1024 * 1024;
/// Longest command name echoed back in an error.
const NAME_ECHO_BYTES: usize = 64;
/// Longest wait for the journal to make a batch's changes durable. Past it
/// (the disk is full or failing) each reply still waiting becomes `-BUSY`
/// instead of hanging: the client learns the outcome by retrying the same id.
pub const DURABLE_WAIT_MAX_MS: u64 = 3_000;

/// Makes room for `additional` more elements, doubling as `Vec` does but never
/// past `ceiling` elements of capacity (unless `len + additional` alone is
/// more), so that a bound on a buffer's contents also bounds its allocation.
pub fn reserve_within<T>(v: &mut Vec<T>, additional: usize, ceiling: usize) {
    let needed = v.len() + additional;
    if needed <= v.capacity() {
        return;
    }
    let target = (v.capacity() * 2).clamp(needed, ceiling.max(needed));
    v.reserve_exact(target - v.len());
}

fn printable(name: &[u8]) -> String {
    let cut = &name[..name.len().min(NAME_ECHO_BYTES)];
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Handles MULTI/EXEC/DISCARD around [`execute_command`]. Queued commands
/// run in order at EXEC, each atomic on its own account; as in Redis, a
/// command that fails at EXEC does not undo the others (and, unlike Redis,
/// other clients' commands may interleave: accounts live on different shards).
pub fn execute_frame(app: &App, s: &mut Session, args: &[&[u8]], out: &mut Vec<u8>) -> u64 {
    let name = args[0];
    let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
    if s.multi.is_none() {
        if is("MULTI") {
            if s.role.is_none() {
                encode::error(out, "NOAUTH Authentication required.");
            } else if args.len() != 1 {
                encode::error(out, "ERR wrong number of arguments for 'multi' command");
            } else {
                s.multi = Some(Multi::default());
                encode::simple(out, "OK");
            }
            return 0;
        }
        if is("EXEC") || is("DISCARD") {
            let word = if is("EXEC") { "EXEC" } else { "DISCARD" };
            encode::error(out, &format!("ERR {word} without MULTI"));
            return 0;
        }
        return execute_command(app, s, args, out);
    }
    if is("MULTI") {
        encode::error(out, "ERR MULTI calls can not be nested");
        return 0;
    }
    if is("DISCARD") {
        s.multi = None;
        encode::simple(out, "OK");
        return 0;
    }
    if is("EXEC") {
        let multi = s.multi.take().expect("in MULTI");
        if multi.failed() {
            encode::error(
                out,
                "EXECABORT Transaction discarded because of previous errors.",
            );
            return 0;
        }
        // The replies follow one command at a time: see `execute_exec_step`.
        encode::array_header(out, multi.len());
        s.exec = Some(multi.into_exec());
        return 0;
    }
    // Queue: check what can be checked now (name, arity), as Redis does.
    let multi = s.multi.as_mut().expect("in MULTI");
    let known = lookup(name).map(|i| &COMMANDS[i]);
    let refusal = match known {
        None => Some(format!("ERR unknown command '{}'", printable(name))),
        Some(spec) => {
            let n = args.len() as i32;
            let ok = if spec.arity > 0 {
                n == spec.arity
            } else {
                n >= -spec.arity
            };
            (!ok).then(|| format!("ERR wrong number of arguments for '{}' command", spec.name))
        }
    };
    if let Some(msg) = refusal {
        multi.fail();
        encode::error(out, &msg);
    } else if let Err(msg) = multi.push(args) {
        encode::error(out, msg);
    } else {
        encode::simple(out, "QUEUED");
    }
    0
}

/// Runs the next command of the connection's running EXEC, appending its
/// reply; returns the journal seq it waits for, or None when no EXEC is
/// running (any more). One command at a time, so that the connection can
/// flush between them.
pub fn execute_exec_step(app: &App, s: &mut Session, out: &mut Vec<u8>) -> Option<u64> {
    let mut exec = s.exec.take()?;
    let args = exec.next_command()?;
    let seq = execute_command(app, s, &args, out);
    drop(args);
    s.exec = Some(exec);
    Some(seq)
}

/// The client of a running EXEC is gone: its commands were accepted at EXEC,
/// so they still run, as they would have, their replies discarded.
fn finish_exec_unanswered(app: &App, s: &mut Session) {
    let mut discarded = Vec::new();
    while execute_exec_step(app, s, &mut discarded).is_some() {
        discarded.clear();
    }
}

/// Executes one command, appending its reply to `out`. Returns the journal
/// seq its reply must wait for (0: none).
pub fn execute_command(app: &App, s: &mut Session, args: &[&[u8]], out: &mut Vec<u8>) -> u64 {
    let Some(index) = lookup(args[0]) else {
        app.metrics.unknown_command();
        encode::error(
            out,
            &format!("ERR unknown command '{}'", printable(args[0])),
        );
        return 0;
    };
    let spec = &COMMANDS[index];
    let n = args.len() as i32;
    let arity_ok = if spec.arity > 0 {
        n == spec.arity
    } else {
        n >= -spec.arity
    };
    if !arity_ok {
        app.metrics.command(index, "ERR", 0.0);
        encode::error(
            out,
            &format!("ERR wrong number of arguments for '{}' command", spec.name),
        );
        return 0;
    }
    match s.role {
        None if spec.access != Access::Open => {
            app.metrics.command(index, "NOAUTH", 0.0);
            encode::error(out, "NOAUTH Authentication required.");
            return 0;
        }
        Some(role) if !spec.access.allows(role) => {
            app.metrics.command(index, "NOPERM", 0.0);
            encode::error(
                out,
                &format!(
                    "NOPERM this user has no permissions to run the '{}' command",
                    spec.name
                ),
            );
            return 0;
        }
        _ => {}
    }
    let started = Instant::now();
    let result = (spec.handler)(app, s, args, out);
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(Flow::Done) => {
            app.metrics.command(index, "ok", seconds);
            0
        }
        Ok(Flow::Wait(seq)) => {
            app.metrics.command(index, "ok", seconds);
            seq
        }
        Err(failure) => {
            app.metrics.command(index, failure.code(), seconds);
            encode::error(out, &failure.0);
            0
        }
    }
}

/// The batch's replies with each one whose change is not durable yet
/// replaced by `-BUSY`: the change is applied in memory and will reach the
/// journal once it can write, or be lost with the process, so it was never
/// acknowledged; a retry with the same id answers which.
fn busy_where_not_durable(
    app: &App,
    out: &[u8],
    waiting: &[(usize, usize, u64)],
    durable_seq: u64,
) -> Vec<u8> {
    let why = app
        .journal
        .write_problem()
        .unwrap_or_else(|| format!("the journal did not write it within {DURABLE_WAIT_MAX_MS} ms"));
    let message = format!(
        "BUSY this change is not durable yet: {why}; retry with the same id to learn its outcome"
    );
    let mut replaced = Vec::with_capacity(out.len());
    let mut copied = 0;
    for &(start, end, _) in waiting.iter().filter(|w| w.2 > durable_seq) {
        replaced.extend_from_slice(&out[copied..start]);
        encode::error(&mut replaced, &message);
        copied = end;
        app.metrics.durability_timeouts.increment(1);
    }
    replaced.extend_from_slice(&out[copied..]);
    replaced
}

/// Serves one connection until it closes, errs, or the server shuts down.
pub async fn serve(app: Arc<App>, mut stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut session = Session {
        id: app.next_client_id.fetch_add(1, Ordering::Relaxed) + 1,
        proto: Proto::Resp2,
        role: app.initial_role(),
        name: None,
        lib_name: None,
        lib_ver: None,
        closing: false,
        multi: None,
        exec: None,
    };
    let mut durable = app.durable.subscribe();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut start = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut frame = Frame::new();
    // Replies that wait for the journal: (start, end in `out`, seq).
    let mut waiting: Vec<(usize, usize, u64)> = Vec::new();
    loop {
        // Execute every complete frame in the buffer (pipelining).
        let mut wait_seq = 0u64;
        waiting.clear();
        let mut close = false;
        let mut commands = 0u64;
        // Set when we stop early to flush: complete frames may remain
        // buffered, or EXEC commands remain to run.
        let mut more_buffered = false;
        loop {
            if out.len() >= OUT_FLUSH_BYTES {
                more_buffered = start < buf.len() || session.exec.is_some();
                break;
            }
            // A running EXEC goes first: its replies come before later frames'.
            let reply_start = out.len();
            if let Some(seq) = execute_exec_step(&app, &mut session, &mut out) {
                if seq > 0 {
                    // One element of EXEC's array: an error in its place is valid.
                    waiting.push((reply_start, out.len(), seq));
                }
                wait_seq = wait_seq.max(seq);
                continue;
            }
            if session.closing {
                break;
            }
            let limits = if session.role.is_some() {
                &Limits::AUTHENTICATED
            } else {
                &Limits::UNAUTHENTICATED
            };
            match parse(&buf[start..], limits, &mut frame) {
                Ok(Parsed::Complete { consumed }) => {
                    let window = &buf[start..start + consumed];
                    let args: SmallVec<[&[u8]; 16]> = frame.iter(window).collect();
                    let reply_start = out.len();
                    let seq = execute_frame(&app, &mut session, &args, &mut out);
                    if seq > 0 {
                        waiting.push((reply_start, out.len(), seq));
                    }
                    wait_seq = wait_seq.max(seq);
                    commands += 1;
                    start += consumed;
                }
                Ok(Parsed::Empty { consumed }) => start += consumed,
                Ok(Parsed::Incomplete) => break,
                Err(e) => {
                    app.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    encode::error(&mut out, &format!("ERR Protocol error: {e}"));
                    close = true;
                    break;
                }
            }
        }
        if commands > 0 {
            app.stats
                .commands_processed
                .fetch_add(commands, Ordering::Relaxed);
        }
        // Keep only the unparsed tail.
        if start == buf.len() {
            buf.clear();
            start = 0;
        } else if start > 0 && (start >= buf.len() / 2 || buf.len() > READ_CHUNK_BYTES * 4) {
            buf.drain(..start);
            start = 0;
        }
        // A large frame is gone: give its room back rather than keep it idle.
        if buf.len() <= READ_CHUNK_BYTES && buf.capacity() > READ_CHUNK_BYTES * 4 {
            buf.shrink_to(READ_CHUNK_BYTES);
        }
        if !close && buf.len() - start > MAX_QUERY_BUFFER_BYTES {
            app.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            encode::error(&mut out, "ERR Protocol error: query buffer limit exceeded");
            close = true;
        }
        if !out.is_empty() {
            if wait_seq > *durable.borrow() {
                let waited = Instant::now();
                let limit = std::time::Duration::from_millis(DURABLE_WAIT_MAX_MS);
                let waited_for =
                    tokio::time::timeout(limit, durable.wait_for(|d| *d >= wait_seq)).await;
                match waited_for.map(|r| r.map(|_| ())) {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return, // the journal is gone: the server is stopping
                    Err(_) => {
                        let durable_seq = *durable.borrow();
                        out = busy_where_not_durable(&app, &out, &waiting, durable_seq);
                    }
                }
                app.metrics
                    .durability_wait
                    .record(waited.elapsed().as_secs_f64());
            }
            if stream.write_all(&out).await.is_err() {
                finish_exec_unanswered(&app, &mut session);
                return;
            }
            out.clear();
            // Large replies are gone: give their room back before waiting for
            // the client (not between flushes of one long batch).
            if !more_buffered && out.capacity() > READ_CHUNK_BYTES * 4 {
                out.shrink_to(READ_CHUNK_BYTES);
            }
        }
        if close || (session.closing && session.exec.is_none()) {
            let _ = stream.shutdown().await;
            return;
        }
        // More complete frames may still be buffered (we stopped to flush).
        if more_buffered {
            continue;
        }
        if *shutdown.borrow() {
            return;
        }
        reserve_within(
            &mut buf,
            READ_CHUNK_BYTES,
            MAX_QUERY_BUFFER_BYTES + READ_CHUNK_BYTES,
        );
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = shutdown.changed() => return,
        }
    }
}
