//! Talking to the Redis deployment of a cluster: a Redis Cluster (each
//! command goes to the master of its key's slot, as `CLUSTER SLOTS` says) or
//! one plain Redis (every slot on it).
//!
//! Blocking connections, one per master, each thread its own [`RedisNodes`]:
//! the lease keeper and the writer never wait on each other. Commands are
//! grouped by master and sent as one pipeline per master ([`RedisNodes::run`]):
//! that is the group commit, one round trip per Redis node for everything a
//! pass writes. A connection error or a `MOVED`/`ASK` reply (Redis resharded)
//! drops the connection and re-reads the topology before the next use.

use crate::redis_reply::text;
use crate::writebehind::shown;
use creditd_engine::slot::SLOTS;
use redis::{Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult, Value};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// No master known for a slot.
const UNKNOWN: u16 = u16::MAX;

struct Master {
    addr: (String, u16),
    conn: Option<redis::Connection>,
}

/// The masters of a Redis deployment and which one holds each slot.
pub struct RedisNodes {
    base: ConnectionInfo,
    /// The URL without its password, for messages.
    pub url: String,
    masters: Vec<Master>,
    slot_master: Vec<u16>,
    /// Scripts loaded on every connection when it is made.
    scripts: Vec<String>,
    stale: bool,
}

impl RedisNodes {
    /// Reads the topology through `url` (any master of a Redis Cluster, or a
    /// plain Redis). Scripts in `scripts` are loaded on every connection.
    pub fn connect(url: &str, scripts: &[&str]) -> Result<RedisNodes, String> {
        let (base, addr) = Self::parse(url)?;
        let mut nodes = RedisNodes {
            base,
            url: shown(url),
            masters: vec![Master { addr, conn: None }],
            slot_master: vec![0; usize::from(SLOTS)],
            scripts: scripts.iter().map(|s| s.to_string()).collect(),
            stale: true,
        };
        nodes.refresh()?;
        Ok(nodes)
    }

    /// The URL's connection settings and address: a `redis://host:port`
    /// URL (a mistake here is not worth retrying).
    pub fn parse(url: &str) -> Result<(ConnectionInfo, (String, u16)), String> {
        let base = url
            .into_connection_info()
            .map_err(|e| format!("--redis {}: bad URL: {e}", shown(url)))?;
        let addr = match base.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            _ => return Err("--cluster needs a redis://host:port URL".into()),
        };
        Ok((base, addr))
    }

    /// How many masters hold slots.
    pub fn masters(&self) -> usize {
        self.masters.len()
    }

    /// Re-reads `CLUSTER SLOTS` from the first master that answers. A plain
    /// Redis ("cluster support disabled") holds every slot itself.
    pub fn refresh(&mut self) -> Result<(), String> {
        let mut last_error = String::from("no master reachable");
        for i in 0..self.masters.len() {
            let reply = self
                .conn(i)
                .and_then(|c| redis::cmd("CLUSTER").arg("SLOTS").query::<Value>(c));
            match reply {
                Ok(Value::Array(ranges)) => {
                    self.adopt(&ranges);
                    self.stale = false;
                    return Ok(());
                }
                Ok(other) => last_error = format!("CLUSTER SLOTS answered {other:?}"),
                Err(e) if e.to_string().contains("cluster support disabled") => {
                    let only = self.masters.swap_remove(i);
                    self.masters = vec![only];
                    self.slot_master.fill(0);
                    self.stale = false;
                    return Ok(());
                }
                Err(e) => {
                    self.masters[i].conn = None;
                    last_error = e.to_string();
                }
            }
        }
        Err(format!("Redis at {}: {last_error}", self.url))
    }

    /// Takes a `CLUSTER SLOTS` reply: keeps the connections of masters that
    /// stay, makes the others on first use.
    fn adopt(&mut self, ranges: &[Value]) {
        let mut masters: Vec<Master> = Vec::new();
        let mut slot_master = vec![UNKNOWN; usize::from(SLOTS)];
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let (Some(host), Some(Value::Int(port))) = (node.first(), node.get(1)) else {
                continue;
            };
            let addr = (text(host), *port as u16);
            let index = match masters.iter().position(|m| m.addr == addr) {
                Some(i) => i,
                None => {
                    let conn = self
                        .masters
                        .iter_mut()
                        .find(|m| m.addr == addr)
                        .and_then(|m| m.conn.take());
                    masters.push(Master { addr, conn });
                    masters.len() - 1
                }
            };
            for s in (*lo).max(0)..=(*hi).min(i64::from(SLOTS) - 1) {
                slot_master[s as usize] = index as u16;
            }
        }
        if masters.is_empty() {
            return;
        }
        self.masters = masters;
        self.slot_master = slot_master;
    }

    fn conn(&mut self, i: usize) -> RedisResult<&mut redis::Connection> {
        let master = &mut self.masters[i];
        if master.conn.is_none() {
            let (host, port) = master.addr.clone();
            let info = self.base.clone().set_addr(ConnectionAddr::Tcp(host, port));
            let client = redis::Client::open(info)?;
            let mut conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            conn.set_read_timeout(Some(IO_TIMEOUT))?;
            conn.set_write_timeout(Some(IO_TIMEOUT))?;
            for script in &self.scripts {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(script)
                    .query::<String>(&mut conn)?;
            }
            master.conn = Some(conn);
        }
        Ok(master.conn.as_mut().expect("connected"))
    }

    /// Runs `commands`, each on the master of its slot: one pipeline per
    /// master. Replies come back in the order of `commands`; a command whose
    /// master could not be reached gets that error.
    pub fn run(&mut self, commands: Vec<(u16, Cmd)>) -> Vec<RedisResult<Value>> {
        if self.stale {
            let _ = self.refresh();
        }
        let mut replies: Vec<Option<RedisResult<Value>>> = Vec::with_capacity(commands.len());
        replies.resize_with(commands.len(), || None);
        let mut by_master: Vec<Vec<(usize, Cmd)>> = Vec::new();
        by_master.resize_with(self.masters.len(), Vec::new);
        for (at, (slot, cmd)) in commands.into_iter().enumerate() {
            match self.slot_master[usize::from(slot)] {
                UNKNOWN => {
                    self.stale = true;
                    replies[at] = Some(Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no Redis master holds the slot",
                    ))));
                }
                m => by_master[usize::from(m)].push((at, cmd)),
            }
        }
        for (m, batch) in by_master.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let positions: Vec<usize> = batch.iter().map(|(at, _)| *at).collect();
            for (_, cmd) in batch {
                pipe.add_command(cmd);
            }
            let result = self
                .conn(m)
                .and_then(|c| pipe.query::<Vec<RedisResult<Value>>>(c));
            match result {
                Ok(results) => {
                    for (at, r) in positions.into_iter().zip(results) {
                        if let Err(e) = &r {
                            if matches!(
                                e.code(),
                                Some("MOVED" | "ASK" | "CLUSTERDOWN" | "NOSCRIPT")
                            ) {
                                self.masters[m].conn = None;
                                self.stale = true;
                            }
                        }
                        replies[at] = Some(r);
                    }
                }
                Err(e) => {
                    self.masters[m].conn = None;
                    self.stale = true;
                    let shown = e.to_string();
                    for at in positions {
                        replies[at] = Some(Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "Redis unreachable",
                            shown.clone(),
                        ))));
                    }
                }
            }
        }
        replies
            .into_iter()
            .map(|r| r.expect("every command answered"))
            .collect()
    }

    /// Runs one command on the master of `slot`.
    pub fn run_one(&mut self, slot: u16, cmd: Cmd) -> RedisResult<Value> {
        self.run(vec![(slot, cmd)]).pop().expect("one reply")
    }
}
