//! Starting cluster mode: this node's identity and address, a journal that
//! is only a local log, and the keeper and writer threads.

use super::keeper::Keeper;
use super::leases;
use super::redis::RedisNodes;
use super::writer::Writer;
use super::{Cluster, Running};
use crate::app::App;
use crate::cli::Options;
use crate::node::NodeIdentity;
use crate::stop::Worker;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long start-up keeps trying to reach Redis.
const START_CONNECT_BUDGET: Duration = Duration::from_secs(10);

/// The journal's directory in cluster mode, emptied at every start: Redis
/// holds the state, each slot is loaded from Redis when this node takes it,
/// and a journal of an earlier run may hold changes of slots that other
/// nodes changed since, so it never wins over Redis (it is replayed never).
pub fn journal_dir(data_dir: &Path) -> Result<PathBuf, String> {
    let dir = data_dir.join("cluster-journal");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot empty {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// This node as the cluster knows it: its id (from --node-id, else the data
/// dir's), and the address it announces (--announce, else where it listens).
pub fn identity(opts: &Options, listen: SocketAddr, lease_ms: u64) -> Result<Cluster, String> {
    let mut node = NodeIdentity::load_or_create(&opts.data_dir)?;
    if let Some(id) = &opts.node_id {
        node.id = id.clone();
    }
    let announce = match &opts.announce {
        Some(text) => {
            let (host, port) = text.rsplit_once(':').expect("checked by the flag's parser");
            (
                host.to_string(),
                port.parse().expect("checked by the flag's parser"),
            )
        }
        None => (listen.ip().to_string(), listen.port()),
    };
    Ok(Cluster::new(node, announce, lease_ms))
}

fn connect(url: &str) -> Result<RedisNodes, String> {
    let sources = leases::sources();
    let scripts: Vec<&str> = sources.iter().map(String::as_str).collect();
    let started = Instant::now();
    loop {
        match RedisNodes::connect(url, &scripts) {
            Ok(nodes) => return Ok(nodes),
            Err(e) if started.elapsed() < START_CONNECT_BUDGET => {
                tracing::warn!("cannot reach Redis yet ({e}); retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(format!("cluster mode cannot start: {e}")),
        }
    }
}

/// Starts the writer (whose watermark `durable` carries to the replies)
/// and the keeper, which joins the cluster and takes this node's share.
pub fn start(app: &Arc<App>, url: &str, durable: watch::Sender<u64>) -> Result<Running, String> {
    let cluster = app.cluster.clone().expect("cluster mode");
    let (writer_redis, keeper_redis) =
        tokio::task::block_in_place(|| Ok::<_, String>((connect(url)?, connect(url)?)))?;
    tracing::info!(
        node = %cluster.node.id,
        announce = %format!("{}:{}", cluster.announce.0, cluster.announce.1),
        redis = %keeper_redis.url,
        redis_masters = keeper_redis.masters(),
        lease_ms = cluster.lease_ms,
        "joining the cluster"
    );
    let writer = {
        let (cluster, engine, journal) = (cluster.clone(), app.engine.clone(), app.journal.clone());
        Worker::thread("creditd-cluster-writer", move |stop| {
            Writer::new(cluster, engine, journal, durable, writer_redis, stop).run()
        })?
    };
    let keeper = {
        let (cluster, engine, journal) = (cluster, app.engine.clone(), app.journal.clone());
        Worker::thread("creditd-cluster-keeper", move |stop| {
            Keeper::new(cluster, engine, journal, keeper_redis, stop).run()
        })?
    };
    Ok(Running { keeper, writer })
}
