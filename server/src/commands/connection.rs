//! PING, ECHO, AUTH, HELLO, QUIT, SELECT, CLIENT: what stock Redis
//! clients (redis-cli, redis-benchmark, redis-py) send around their real work.

use super::{is, Failure, Flow, Session};
use crate::app::App;
use crate::error::ErrorCode;
use crate::resp::encode::{self, Proto};

/// Longest client name or library name/version a connection keeps: they live
/// as long as the connection, so they are bounded well below a bulk string.
pub const MAX_CLIENT_INFO_BYTES: usize = 1024;

/// A copy of a client name or library field, refused past [`MAX_CLIENT_INFO_BYTES`].
fn client_info(arg: &[u8], what: &str) -> Result<Vec<u8>, Failure> {
    if arg.len() > MAX_CLIENT_INFO_BYTES {
        return Err(Failure::err(format!(
            "{what} too long (limit {MAX_CLIENT_INFO_BYTES} bytes)"
        )));
    }
    Ok(arg.to_vec())
}

/// `PING [msg]`
pub fn ping(_: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    match a.len() {
        1 => encode::simple(out, "PONG"),
        2 => encode::bulk(out, a[1]),
        _ => return Err(Failure::arity("ping")),
    }
    Ok(Flow::Done)
}

/// `ECHO msg`
pub fn echo(_: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    encode::bulk(out, a[1]);
    Ok(Flow::Done)
}

/// `AUTH [user] token`
pub fn auth(app: &App, s: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let (user, token) = match a.len() {
        2 => (None, a[1]),
        3 => (Some(a[1]), a[2]),
        _ => return Err(Failure::syntax()),
    };
    if !app.auth_required() {
        return Err(Failure::err(
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ));
    }
    s.role = Some(app.authenticate(user, token)?);
    encode::simple(out, "OK");
    Ok(Flow::Done)
}

/// `HELLO [2|3] [AUTH user token] [SETNAME name]`
pub fn hello(app: &App, s: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let mut proto = s.proto;
    let mut i = 1;
    if let Some(v) = a.get(1) {
        proto = match *v {
            b"2" => Proto::Resp2,
            b"3" => Proto::Resp3,
            _ => {
                return Err(Failure::new(
                    ErrorCode::NoProto,
                    "unsupported protocol version",
                ))
            }
        };
        i = 2;
    }
    let mut role = s.role;
    let mut name = None;
    while i < a.len() {
        if is(a[i], "AUTH") && i + 2 < a.len() {
            role = Some(app.authenticate(Some(a[i + 1]), a[i + 2])?);
            i += 3;
        } else if is(a[i], "SETNAME") && i + 1 < a.len() {
            name = Some(client_info(a[i + 1], "client name")?);
            i += 2;
        } else {
            return Err(Failure::syntax());
        }
    }
    if role.is_none() {
        return Err(Failure::new(
            ErrorCode::NoAuth,
            "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        ));
    }
    s.role = role;
    s.proto = proto;
    if name.is_some() {
        s.name = name;
    }
    encode::map_header(out, proto, 7);
    encode::bulk_str(out, "server");
    encode::bulk_str(out, "creditd");
    encode::bulk_str(out, "version");
    encode::bulk_str(out, env!("CARGO_PKG_VERSION"));
    encode::bulk_str(out, "proto");
    encode::integer(out, if proto == Proto::Resp3 { 3 } else { 2 });
    encode::bulk_str(out, "id");
    encode::integer(out, s.id as i64);
    encode::bulk_str(out, "mode");
    encode::bulk_str(out, "standalone");
    encode::bulk_str(out, "role");
    encode::bulk_str(out, "master");
    encode::bulk_str(out, "modules");
    encode::array_header(out, 0);
    Ok(Flow::Done)
}

/// `QUIT`
pub fn quit(_: &App, s: &mut Session, _: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    s.closing = true;
    encode::simple(out, "OK");
    Ok(Flow::Done)
}

/// `SELECT 0` (creditd has one keyspace).
pub fn select(_: &App, _: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    if a[1] != b"0" {
        return Err(Failure::err("DB index is out of range"));
    }
    encode::simple(out, "OK");
    Ok(Flow::Done)
}

/// `CLIENT SETNAME name | GETNAME | SETINFO attr value | ID`
pub fn client(_: &App, s: &mut Session, a: &[&[u8]], out: &mut Vec<u8>) -> Result<Flow, Failure> {
    let sub = a[1];
    if is(sub, "SETNAME") && a.len() == 3 {
        if a[2].iter().any(|c| *c <= b' ' || *c > b'~') {
            return Err(Failure::err(
                "Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        s.name = if a[2].is_empty() {
            None
        } else {
            Some(client_info(a[2], "client name")?)
        };
        encode::simple(out, "OK");
    } else if is(sub, "GETNAME") && a.len() == 2 {
        match &s.name {
            Some(n) => encode::bulk(out, n),
            None => encode::null(out, s.proto),
        }
    } else if is(sub, "SETINFO") && a.len() == 4 {
        if is(a[2], "LIB-NAME") {
            s.lib_name = Some(client_info(a[3], "LIB-NAME")?);
        } else if is(a[2], "LIB-VER") {
            s.lib_ver = Some(client_info(a[3], "LIB-VER")?);
        } else {
            return Err(Failure::err(format!(
                "Unrecognized option '{}'",
                String::from_utf8_lossy(a[2])
            )));
        }
        encode::simple(out, "OK");
    } else if is(sub, "ID") && a.len() == 2 {
        encode::integer(out, s.id as i64);
    } else {
        return Err(Failure::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(sub)
        )));
    }
    Ok(Flow::Done)
}
