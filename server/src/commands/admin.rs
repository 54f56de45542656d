//! INFO, CONFIG, CLOCK: operating the server.

use super::{is, parse_u64, Failure, Flow, Session, MAX_INTEGER};
use crate::app::App;
use crate::resp::encode;
use creditd_engine::clock::Clock;

/// `INFO [section]`
pub fn info(app: &App, s: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let section = a
        .get(1)
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    let text = crate::info::info(app, section.as_deref());
    encode::verbatim_or_bulk(out, s.proto, &text);
    Ok(Flow::Done)
}

/// `CONFIG RELOAD` | `CONFIG GET pattern`
pub fn config(app: &App, s: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let sub = a[1];
    if is(sub, "RELOAD") && a.len() == 2 {
        app.reload_config("CONFIG RELOAD").map_err(Failure::err)?;
        encode::simple(out, "OK");
    } else if is(sub, "GET") && a.len() >= 3 {
        // creditd has no Redis-style runtime parameters; an empty reply keeps
        // redis-benchmark and friends happy.
        encode::map_header(out, s.proto, 0);
    } else {
        return Err(Failure::err(format!(
            "unknown subcommand '{}'. Try CONFIG RELOAD or CONFIG GET.",
            String::from_utf8_lossy(sub)
        )));
    }
    Ok(Flow::Done)
}

/// `CLOCK GET | SET at_ms | ADVANCE ms` (only with `--test-clock`)
pub fn clock(app: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let Some(clock) = app.test_clock.as_ref() else {
        return Err(Failure::err(
            "CLOCK needs the server started with --test-clock",
        ));
    };
    let sub = a[1];
    let now = if is(sub, "GET") && a.len() == 2 {
        encode::integer(out, clock.now_ms() as i64);
        return Ok(Flow::Done);
    } else if is(sub, "SET") && a.len() == 3 {
        let at = parse_u64(a[2], "at_ms")?;
        clock
            .set(at)
            .map_err(|now| Failure::err(format!("the clock never goes backwards (now {now})")))?
    } else if is(sub, "ADVANCE") && a.len() == 3 {
        let ms = parse_u64(a[2], "ms")?;
        // The reply is a signed 64-bit integer: the clock never goes past i64::MAX.
        if clock.now_ms().saturating_add(ms) > MAX_INTEGER {
            return Err(Failure::err(format!(
                "CLOCK ADVANCE would take the clock past {MAX_INTEGER}"
            )));
        }
        clock.advance(ms)
    } else {
        return Err(Failure::syntax());
    };
    // Journal the new time so a restart never moves the clock back.
    let seq = app.engine.journal_clock(now);
    encode::integer(out, now as i64);
    Ok(Flow::Wait(seq))
}
