//! CLUSTER, ASKING, READONLY, READWRITE: what cluster-aware clients send to
//! learn the slot map and to follow redirects. Without `--cluster` they
//! answer as a Redis without cluster support does, so a client probing for
//! a cluster falls back to a plain connection.

use super::{is, parse_u64, Failure, Flow, Session};
use crate::app::App;
use crate::cluster::Cluster;
use crate::resp::encode;
use creditd_engine::slot::{slot_of, SLOTS};

fn cluster_of(app: &App) -> Result<&Cluster, Failure> {
    app.cluster
        .as_deref()
        .ok_or_else(|| Failure::err("This instance has cluster support disabled"))
}

const HELP: &[&str] = &[
    "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "SLOTS: the slot ranges and the node serving each.",
    "SHARDS: the nodes as shards, with their slots.",
    "NODES: the nodes in Redis Cluster's line format.",
    "MYID: this node's id.",
    "INFO: cluster_state and counts.",
    "KEYSLOT <key>: the hash slot of a key (an account).",
    "COUNTKEYSINSLOT <slot>: accounts of a slot held here.",
    "GETKEYSINSLOT <slot> <count>: up to count accounts of a slot held here.",
];

/// `CLUSTER SLOTS|SHARDS|NODES|MYID|INFO|KEYSLOT|COUNTKEYSINSLOT|GETKEYSINSLOT|HELP`
pub fn cluster(
    app: &App,
    s: &mut Session,
    a: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    let sub = a[1];
    if is(sub, "HELP") && a.len() == 2 {
        encode::array_header(out, HELP.len());
        for line in HELP {
            encode::simple(out, line);
        }
        return Ok(Flow::Done);
    }
    if is(sub, "KEYSLOT") && a.len() == 3 {
        encode::integer(out, i64::from(slot_of(a[2])));
        return Ok(Flow::Done);
    }
    let c = cluster_of(app)?;
    let arity = |n: usize| {
        if a.len() == n {
            Ok(())
        } else {
            Err(Failure::err(format!(
                "wrong number of arguments for 'cluster|{}' command",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            )))
        }
    };
    if is(sub, "SLOTS") {
        arity(2)?;
        c.write_slots(out);
    } else if is(sub, "SHARDS") {
        arity(2)?;
        c.write_shards(out, s.proto);
    } else if is(sub, "NODES") {
        arity(2)?;
        encode::verbatim_or_bulk(out, s.proto, &c.nodes_text());
    } else if is(sub, "MYID") {
        arity(2)?;
        encode::bulk_str(out, &c.node.id);
    } else if is(sub, "INFO") {
        arity(2)?;
        encode::verbatim_or_bulk(out, s.proto, &c.info_text());
    } else if is(sub, "COUNTKEYSINSLOT") {
        arity(3)?;
        let slot = slot_arg(a[2])?;
        encode::integer(out, app.engine.slot_accounts(slot).len() as i64);
    } else if is(sub, "GETKEYSINSLOT") {
        arity(4)?;
        let slot = slot_arg(a[2])?;
        let count = parse_u64(a[3], "count")? as usize;
        let ids = app.engine.slot_accounts(slot);
        let ids = &ids[..ids.len().min(count)];
        encode::array_header(out, ids.len());
        for id in ids {
            encode::bulk(out, id);
        }
    } else {
        return Err(Failure::err(format!(
            "unknown subcommand '{}'. Try CLUSTER HELP.",
            String::from_utf8_lossy(&sub[..sub.len().min(64)])
        )));
    }
    Ok(Flow::Done)
}

fn slot_arg(arg: &[u8]) -> Result<u16, Failure> {
    match parse_u64(arg, "slot") {
        Ok(n) if n < u64::from(SLOTS) => Ok(n as u16),
        _ => Err(Failure::err("Invalid slot")),
    }
}

/// `ASKING`: accepted; creditd answers `-TRYAGAIN` for a moving slot
/// rather than `-ASK`, so there is nothing to remember.
pub fn asking(app: &App, _: &mut Session, _: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    cluster_of(app)?;
    encode::simple(out, "OK");
    Ok(Flow::Done)
}

/// `READONLY` / `READWRITE`: accepted; every node is a master and serves
/// reads and writes of its own slots.
pub fn read_mode(
    app: &App,
    _: &mut Session,
    _: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<Flow, Failure> {
    cluster_of(app)?;
    encode::simple(out, "OK");
    Ok(Flow::Done)
}
