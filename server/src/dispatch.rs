//! From a parsed request to its reply: MULTI/EXEC/DISCARD around the command
//! table, the checks every command passes (name, arity, authentication,
//! permission), and the counting of results and error replies.

use crate::app::App;
use crate::cluster::Route;
use crate::commands::{lookup, Access, Flow, Session, Spec, COMMANDS};
use crate::error::{ErrorCode, Failure};
use crate::multi::Multi;
use crate::resp::encode;
use std::time::Instant;

/// Appends an error reply and counts it (INFO errorstats, `/metrics`).
pub fn reply_error(app: &App, out: &mut Vec<u8>, failure: &Failure) {
    app.metrics.counters.error_reply(failure.code);
    failure.encode(out);
}

pub fn arity_ok(spec: &Spec, args: usize) -> bool {
    let n = args as i32;
    if spec.arity > 0 {
        n == spec.arity
    } else {
        n >= -spec.arity
    }
}

/// Handles MULTI/EXEC/DISCARD around [`execute_command`]. Queued commands
/// run in order at EXEC, each atomic on its own account; as in Redis, a
/// command that fails at EXEC does not undo the others (and, unlike Redis,
/// other clients' commands may interleave: accounts live on different shards).
/// Returns the journal seq the reply must wait for (0: none).
pub fn execute_frame(app: &App, s: &mut Session, args: &[&[u8]], out: &mut Vec<u8>) -> u64 {
    let name = args[0];
    let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
    let reply = if s.multi.is_none() {
        if is("MULTI") {
            begin_multi(s, args)
        } else if is("EXEC") || is("DISCARD") {
            let word = if is("EXEC") { "EXEC" } else { "DISCARD" };
            Err(Failure::err(format!("{word} without MULTI")))
        } else {
            return execute_command(app, s, args, out);
        }
    } else if is("MULTI") {
        Err(Failure::err("MULTI calls can not be nested"))
    } else if is("DISCARD") {
        s.multi = None;
        Ok("OK")
    } else if is("EXEC") {
        return start_exec(app, s, out);
    } else {
        queue(s, args)
    };
    match reply {
        Ok(status) => encode::simple(out, status),
        Err(failure) => reply_error(app, out, &failure),
    }
    0
}

fn begin_multi(s: &mut Session, args: &[&[u8]]) -> Result<&'static str, Failure> {
    if s.role.is_none() {
        return Err(Failure::no_auth());
    }
    if args.len() != 1 {
        return Err(Failure::arity("multi"));
    }
    s.multi = Some(Multi::default());
    Ok("OK")
}

/// EXEC: the array header now; the replies follow one command at a time
/// (see [`execute_exec_step`]).
fn start_exec(app: &App, s: &mut Session, out: &mut Vec<u8>) -> u64 {
    let multi = s.multi.take().expect("in MULTI");
    if multi.failed() {
        let abort = Failure::new(
            ErrorCode::ExecAbort,
            "Transaction discarded because of previous errors.",
        );
        reply_error(app, out, &abort);
        return 0;
    }
    encode::array_header(out, multi.len());
    s.exec = Some(multi.into_exec());
    0
}

/// Queues a command: what can be checked now (name, arity) is, as Redis does.
fn queue(s: &mut Session, args: &[&[u8]]) -> Result<&'static str, Failure> {
    let multi = s.multi.as_mut().expect("in MULTI");
    let refusal = match lookup(args[0]).map(|i| &COMMANDS[i]) {
        None => Some(Failure::unknown_command(args[0])),
        Some(spec) => (!arity_ok(spec, args.len())).then(|| Failure::arity(spec.name)),
    };
    if let Some(failure) = refusal {
        multi.fail();
        return Err(failure);
    }
    multi.push(args)?;
    Ok("QUEUED")
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
pub fn finish_exec_unanswered(app: &App, s: &mut Session) {
    let mut discarded = Vec::new();
    while execute_exec_step(app, s, &mut discarded).is_some() {
        discarded.clear();
    }
}

/// Why a known command may not run for this session now, if it may not.
fn refusal(spec: &Spec, s: &Session, args: usize) -> Option<Failure> {
    if !arity_ok(spec, args) {
        return Some(Failure::arity(spec.name));
    }
    match s.role {
        None if spec.access != Access::Open => Some(Failure::no_auth()),
        Some(role) if !spec.access.allows(role) => Some(Failure::new(
            ErrorCode::NoPerm,
            format!(
                "this user has no permissions to run the '{}' command",
                spec.name
            ),
        )),
        _ => None,
    }
}

/// Cluster mode: a keyed command runs only on the node serving its
/// account's slot; elsewhere it is redirected (`-MOVED`), deferred
/// (`-TRYAGAIN`) or refused (`-CLUSTERDOWN`), as Redis Cluster does.
fn route(app: &App, spec: &Spec, s: &mut Session, args: &[&[u8]]) -> Option<Failure> {
    let cluster = app.cluster.as_ref().filter(|_| spec.keyed)?;
    match cluster.route(args[1]) {
        Route::Here { slot, generation } => {
            s.routed = Some((slot, generation));
            None
        }
        Route::Moved { slot, to } => Some(Failure::new(ErrorCode::Moved, format!("{slot} {to}"))),
        Route::TryAgain(why) => Some(Failure::new(ErrorCode::TryAgain, why)),
        Route::Down => Some(Failure::new(ErrorCode::ClusterDown, "Hash slot not served")),
    }
}

/// Executes one command, appending its reply to `out`. Returns the journal
/// seq its reply must wait for (0: none).
fn execute_command(app: &App, s: &mut Session, args: &[&[u8]], out: &mut Vec<u8>) -> u64 {
    let Some(index) = lookup(args[0]) else {
        app.metrics.unknown_command();
        reply_error(app, out, &Failure::unknown_command(args[0]));
        return 0;
    };
    let spec = &COMMANDS[index];
    if let Some(failure) = refusal(spec, s, args.len()) {
        app.metrics.command(index, Some(failure.code), 0.0);
        reply_error(app, out, &failure);
        return 0;
    }
    if let Some(failure) = route(app, spec, s, args) {
        app.metrics.command(index, Some(failure.code), 0.0);
        reply_error(app, out, &failure);
        return 0;
    }
    let started = Instant::now();
    let result = (spec.handler)(app, s, args, out);
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(flow) => {
            app.metrics.command(index, None, seconds);
            match flow {
                Flow::Done => 0,
                Flow::Wait(seq) => seq,
            }
        }
        Err(failure) => {
            app.metrics.command(index, Some(failure.code), seconds);
            reply_error(app, out, &failure);
            failure.wait_seq
        }
    }
}
