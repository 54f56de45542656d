//! COMMAND describes creditd's commands as Redis 7 describes its own, so
//! stock clients learn them and cluster-aware clients learn where the key
//! (the account) is: position 1 for every command that names an account,
//! none for the others.

mod common;

use common::*;
use redis::Value;

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// COMMAND INFO's key positions (first, last, step) of one command.
fn key_positions(c: &mut redis::Connection, name: &str) -> (i64, i64, i64) {
    let Ok(Value::Array(entries)) = cmd(c, &["COMMAND", "INFO", name]) else {
        panic!("COMMAND INFO {name}");
    };
    let Value::Array(entry) = &entries[0] else {
        panic!("no entry for {name}: {entries:?}");
    };
    assert_eq!(entry.len(), 10, "{name}: Redis 7 entries have ten elements");
    assert_eq!(text(&entry[0]), name);
    let int = |v: &Value| match v {
        Value::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    };
    (int(&entry[3]), int(&entry[4]), int(&entry[5]))
}

#[test]
fn every_command_that_names_an_account_has_it_as_its_key() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    let keyed = [
        "reserve",
        "capture",
        "commit",
        "release",
        "extend",
        "debit",
        "grant",
        "balance",
        "account",
        "history",
        "subscribe",
        "seats",
        "addon",
        "unsubscribe",
        "plan",
    ];
    for name in keyed {
        assert_eq!(key_positions(&mut c, name), (1, 1, 1), "{name}");
    }
    for name in [
        "quote", "ping", "info", "config", "clock", "command", "auth", "client",
    ] {
        assert_eq!(key_positions(&mut c, name), (0, 0, 0), "{name}");
    }

    // GETKEYS names the account, as a cluster client asks it.
    let keys = cmd(
        &mut c,
        &["COMMAND", "GETKEYS", "RESERVE", "{team}:a", "h1", "10"],
    );
    assert_eq!(
        keys,
        Ok(Value::Array(vec![Value::BulkString(b"{team}:a".to_vec())]))
    );
    let keys = cmd(&mut c, &["COMMAND", "GETKEYS", "balance", "acct:1"]);
    assert_eq!(
        keys,
        Ok(Value::Array(vec![Value::BulkString(b"acct:1".to_vec())]))
    );
    assert_eq!(
        err(&mut c, &["COMMAND", "GETKEYS", "QUOTE", "image", "1"]),
        "ERR The command has no key arguments"
    );
    assert_eq!(
        err(&mut c, &["COMMAND", "GETKEYS", "NOPE", "x"]),
        "ERR Invalid command specified"
    );
    assert_eq!(
        err(&mut c, &["COMMAND", "GETKEYS", "BALANCE"]),
        "ERR Invalid number of arguments specified for command"
    );
}

#[test]
fn count_list_docs_and_help_agree_with_the_table() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    let count = int(&mut c, &["COMMAND", "COUNT"]);
    let Ok(Value::Array(list)) = cmd(&mut c, &["COMMAND", "LIST"]) else {
        panic!("COMMAND LIST");
    };
    assert_eq!(list.len() as i64, count);
    let names: Vec<String> = list.iter().map(text).collect();
    for name in ["reserve", "commit", "balance", "plan", "quote", "command"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    let Ok(Value::Array(all)) = cmd(&mut c, &["COMMAND"]) else {
        panic!("COMMAND");
    };
    assert_eq!(all.len() as i64, count);

    // DOCS: a map of name to summary, since and group; unknown names left out.
    let docs = cmd(&mut c, &["COMMAND", "DOCS", "reserve", "nope"]).unwrap();
    let Value::Array(pairs) = docs else {
        panic!("RESP2 map as a flat array: {docs:?}");
    };
    assert_eq!(pairs.len(), 2, "{pairs:?}");
    assert_eq!(text(&pairs[0]), "reserve");
    let Value::Array(fields) = &pairs[1] else {
        panic!("{pairs:?}");
    };
    let fields: Vec<String> = fields.iter().map(text).collect();
    assert_eq!(fields[0], "summary");
    assert!(!fields[1].is_empty());
    assert_eq!(&fields[2..], ["since", "1.0.0", "group", "creditd"]);
    let Ok(Value::Array(all_docs)) = cmd(&mut c, &["COMMAND", "DOCS"]) else {
        panic!("COMMAND DOCS");
    };
    assert_eq!(all_docs.len() as i64, 2 * count);

    let Ok(Value::Array(help)) = cmd(&mut c, &["COMMAND", "HELP"]) else {
        panic!("COMMAND HELP");
    };
    assert!(help.iter().map(text).any(|l| l.starts_with("GETKEYS")));
    assert_eq!(
        err(&mut c, &["COMMAND", "BOGUS"]),
        "ERR unknown subcommand or wrong number of arguments for 'BOGUS'. Try COMMAND HELP."
    );
}

#[test]
fn without_cluster_mode_cluster_commands_say_so_as_redis_does() {
    let srv = Creditd::start(&[]);
    let mut c = srv.client();
    for sub in ["INFO", "SLOTS", "SHARDS", "NODES", "MYID", "KEYSLOT"] {
        assert_eq!(
            err(&mut c, &["CLUSTER", sub]),
            "ERR This instance has cluster support disabled",
            "{sub}"
        );
    }
    let Ok(Value::BulkString(info)) = cmd(&mut c, &["INFO", "cluster"]) else {
        panic!("INFO cluster");
    };
    assert_eq!(
        String::from_utf8_lossy(&info),
        "# Cluster\r\ncluster_enabled:0\r\n\r\n"
    );
}
