//! COMMAND: the command table as Redis 7 describes its own, so that stock
//! clients learn every creditd command, and cluster-aware clients learn
//! where the key is: the account, first argument, for every command that
//! names one (key positions 1, 1, 1), none for the others.

use super::{is, lookup, Failure, Flow, Session, Spec, COMMANDS};
use crate::app::App;
use crate::resp::encode;

/// The version COMMAND DOCS gives as `since` for every command.
const SINCE: &str = "1.0.0";

const HELP: &[&str] = &[
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands.",
    "COUNT",
    "    Return the total number of commands.",
    "LIST",
    "    Return a list of all commands.",
    "INFO [<command-name> ...]",
    "    Return details about the named commands, or all with none named.",
    "DOCS [<command-name> ...]",
    "    Return documentation about the named commands, or all with none named.",
    "GETKEYS <full-command>",
    "    Return the keys (the account) of a full command.",
    "HELP",
    "    Print this help.",
];

pub fn command(_: &App, s: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let Some(sub) = a.get(1) else {
        encode::array_header(out, COMMANDS.len());
        COMMANDS.iter().for_each(|spec| write_info(out, spec));
        return Ok(Flow::Done);
    };
    let rest = &a[2..];
    if is(sub, "COUNT") && rest.is_empty() {
        encode::integer(out, COMMANDS.len() as i64);
    } else if is(sub, "LIST") && rest.is_empty() {
        encode::array_header(out, COMMANDS.len());
        COMMANDS
            .iter()
            .for_each(|spec| encode::bulk_str(out, spec.name));
    } else if is(sub, "INFO") {
        if rest.is_empty() {
            encode::array_header(out, COMMANDS.len());
            COMMANDS.iter().for_each(|spec| write_info(out, spec));
        } else {
            encode::array_header(out, rest.len());
            for name in rest {
                match lookup(name) {
                    Some(i) => write_info(out, &COMMANDS[i]),
                    None => encode::null(out, s.proto),
                }
            }
        }
    } else if is(sub, "DOCS") {
        // Unknown names are left out, as Redis does.
        let specs: Vec<&Spec> = if rest.is_empty() {
            COMMANDS.iter().collect()
        } else {
            rest.iter()
                .filter_map(|name| lookup(name).map(|i| &COMMANDS[i]))
                .collect()
        };
        encode::map_header(out, s.proto, specs.len());
        for spec in specs {
            encode::bulk_str(out, spec.name);
            write_docs(out, s, spec);
        }
    } else if is(sub, "GETKEYS") {
        let account = keys_of(rest)?;
        encode::array_header(out, 1);
        encode::bulk(out, account);
    } else if is(sub, "HELP") && rest.is_empty() {
        encode::array_header(out, HELP.len());
        HELP.iter().for_each(|line| encode::simple(out, line));
    } else {
        return Err(Failure::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        )));
    }
    Ok(Flow::Done)
}

/// GETKEYS: the account a full command names, with Redis's wording when
/// there is none.
fn keys_of<'a>(full: &[&'a [u8]]) -> Result<&'a [u8], Failure> {
    let Some(name) = full.first() else {
        return Err(Failure::err(
            "wrong number of arguments for 'command|getkeys' command",
        ));
    };
    let spec = lookup(name)
        .map(|i| &COMMANDS[i])
        .ok_or_else(|| Failure::err("Invalid command specified"))?;
    if !crate::dispatch::arity_ok(spec, full.len()) {
        return Err(Failure::err(
            "Invalid number of arguments specified for command",
        ));
    }
    if !spec.keyed {
        return Err(Failure::err("The command has no key arguments"));
    }
    Ok(full[1])
}

/// One command's entry as Redis 7 lays it out: name, arity, flags, first
/// key, last key, step, ACL categories, tips, key specs, subcommands. Clients
/// read all ten (redis-py's RESP3 parser fails on a shorter entry).
fn write_info(out: &mut Vec<u8>, spec: &Spec) {
    encode::array_header(out, 10);
    encode::bulk_str(out, spec.name);
    encode::integer(out, spec.arity as i64);
    encode::array_header(out, 1);
    encode::simple(out, if spec.write { "write" } else { "readonly" });
    let k = i64::from(spec.keyed);
    encode::integer(out, k);
    encode::integer(out, k);
    encode::integer(out, k);
    encode::array_header(out, 1);
    encode::simple(out, if spec.write { "@write" } else { "@read" });
    // No tips, key specs or subcommands.
    for _ in 0..3 {
        encode::array_header(out, 0);
    }
}

/// One command's COMMAND DOCS map: summary, since, group.
fn write_docs(out: &mut Vec<u8>, s: &Session, spec: &Spec) {
    let group = if spec.keyed || spec.name == "quote" {
        "creditd"
    } else {
        "connection"
    };
    encode::map_header(out, s.proto, 3);
    for (key, value) in [
        ("summary", spec.summary),
        ("since", SINCE),
        ("group", group),
    ] {
        encode::bulk_str(out, key);
        encode::bulk_str(out, value);
    }
}
