//! Start-up, the accept loop, background threads and graceful shutdown.
//!
//! Threads: the connection threads (`conn_threads`, one current-thread
//! runtime each, `--workers` of them) run connections (parse, execute
//! against the engine under a shard lock for well under a microsecond,
//! reply); a small main runtime runs the accept loop, probes and the
//! write-behind; the
//! journal writer thread does all disk writes (group commit); a sweeper
//! thread applies due expiries and renewals to idle accounts; a snapshot
//! thread compacts the journal. No lock is ever held across I/O. Each of
//! these, and every task beside the connections, is a [`Worker`] that a
//! graceful shutdown stops in turn.

use crate::app::{load_config, open_to_anyone, App, Health};
use crate::auth::Tokens;
use crate::cli::Options;
use crate::cluster;
use crate::config::ServerConfig;
use crate::conn_threads::ConnThreads;
use crate::datadir::DataDirLock;
use crate::error::Failure;
use crate::http::{self, ProbeState};
use crate::metrics::Metrics;
use crate::node::NodeIdentity;
use crate::persist::{self, JournalSlot, Recovery};
use crate::stop::{Stop, Worker};
use crate::writebehind::{self, dependency, Loaded, WriteBehind};
use creditd_engine::clock::{wall_clock_ms, Clock, SystemClock, TestClock};
use creditd_engine::Engine;
use creditd_journal::{FsyncMode, JournalEvent};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often the sweeper looks for due events, and how many accounts it
/// visits per pass before it yields the shard locks.
const SWEEP_INTERVAL_MS: u64 = 20;
const SWEEP_BUDGET: usize = 4096;
/// How often the snapshot thread checks whether enough records accumulated.
const SNAPSHOT_CHECK_MS: u64 = 1000;
/// Threads of the main runtime: it serves no connections, so few suffice.
const MAIN_RUNTIME_THREADS: usize = 2;

/// Runs the server until SIGTERM/SIGINT. Returns an error message on a
/// failed start (bad config, refused address, corrupt journal).
pub fn run(opts: Options) -> Result<(), String> {
    let config = load_config(&opts)?;
    crate::app::log_loaded(&opts, &config, "config loaded");
    if open_to_anyone(&opts, &config) {
        return Err(format!(
            "refusing to listen on {} without tokens: anyone who can reach it could grant and spend credits. Add [[tokens]] to the config, listen on loopback, or pass --insecure",
            opts.listen
        ));
    }
    // A cluster URL that cannot work is refused before anything starts.
    if let (true, Some(url)) = (opts.cluster, &opts.redis) {
        cluster::redis::RedisNodes::parse(url)
            .map_err(|e| format!("cluster mode cannot start: {e}"))?;
    }
    // First, before any port or file is touched: one process per data dir.
    let data_dir_lock = DataDirLock::acquire(&opts.data_dir)?;
    // The main runtime runs everything but the connections (accept loop,
    // probes, write-behind and cluster tasks); `--workers` threads of their
    // own serve the connections (`conn_threads`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(MAIN_RUNTIME_THREADS)
        .enable_all()
        .thread_name("creditd-main")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(opts, config, data_dir_lock))
}

async fn serve(
    mut opts: Options,
    config: ServerConfig,
    mut data_dir_lock: DataDirLock,
) -> Result<(), String> {
    // Probes first, so /healthz answers and /readyz says 503 while we recover.
    let probes = Arc::new(ProbeState::default());
    *probes.recovering_reason.lock() = "recovering".into();
    let http_listener = http::bind(opts.http)
        .await
        .map_err(|e| format!("cannot listen on {} (http): {e}", opts.http))?;
    // With port 0 the kernel picks one: from here on, the address is the real one.
    opts.http = http_listener.local_addr().unwrap_or(opts.http);
    let _probe_server = {
        let probes = probes.clone();
        Worker::task(|stop| http::serve(http_listener, probes, stop))
    };
    // Taken over from the default action (exit) now, acted on once serving.
    let hangups = hangup_signals()?;

    let settings = config.settings;
    let tokens = Tokens::new(&config.tokens);
    let recovered = recover(&opts, config.engine, settings.cluster_lease_ms, &probes).await?;

    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
    let listen = listener.local_addr().unwrap_or(opts.listen);
    data_dir_lock.record_addresses(listen, opts.http)?;
    opts.listen = listen;
    let cluster = match opts.cluster {
        true => Some(Arc::new(cluster::start::identity(
            &opts,
            listen,
            settings.cluster_lease_ms,
        )?)),
        false => None,
    };
    // In cluster mode replies wait for Redis (the cluster writer's
    // watermark), not for the local journal.
    let durable = match cluster {
        Some(_) => watch::channel(0u64).0,
        None => recovered.durable,
    };
    let app = Arc::new(App {
        engine: recovered.engine,
        opts: opts.clone(),
        journal: recovered.recovery.journal.clone(),
        durable: durable.clone(),
        test_clock: recovered.test_clock,
        tokens: RwLock::new(tokens),
        settings: Arc::new(RwLock::new(settings)),
        metrics: Metrics::new(),
        health: Health::default(),
        started: Instant::now(),
        next_client_id: AtomicU64::new(0),
        redis: RwLock::new(None),
        cluster,
    });
    observe_journal(&app);
    let write_behind = match recovered.loaded {
        Some(loaded) => Some(writebehind::start(app.clone(), loaded)?),
        None => None,
    };
    let cluster_threads = match (&app.cluster, &opts.redis) {
        (Some(_), Some(url)) => Some(cluster::start::start(&app, url, durable)?),
        _ => None,
    };
    let background = vec![
        reload_on_hangup(app.clone(), hangups),
        spawn_sweeper(app.engine.clone())?,
        spawn_snapshotter(app.clone(), settings.snapshot_every_records)?,
        metrics_upkeep(app.clone()),
    ];

    let conn_threads = Arc::new(ConnThreads::start(usize::from(app.opts.workers))?);
    tracing::info!(threads = conn_threads.len(), "connection threads started");
    app.health.ready.store(true, Ordering::Release);
    let _ = probes.app.set(app.clone());
    tracing::info!(listen = %listen, http = %opts.http, "creditd ready");

    let accept = {
        let app = app.clone();
        let conn_threads = conn_threads.clone();
        Worker::task(|stop| accept_loop(app, listener, conn_threads, stop))
    };
    shutdown_signal().await;
    let serving = Serving {
        accept,
        conn_threads,
    };
    shut_down(&app, serving, background, write_behind, cluster_threads).await
}

/// What recovery built: the engine holding every account, and the journal
/// open after its last record.
struct Recovered {
    engine: Arc<Engine>,
    recovery: Recovery,
    /// The highest journal seq known durable.
    durable: watch::Sender<u64>,
    test_clock: Option<Arc<TestClock>>,
    /// What start-up read from Redis (`--redis`), for the write-behind.
    loaded: Option<Loaded>,
}

/// Builds the engine from what Redis holds (with `--redis`), then the latest
/// snapshot and the journal after it. `/readyz` tells which step runs.
async fn recover(
    opts: &Options,
    config: creditd_engine::config::Config,
    lease_ms: u64,
    probes: &ProbeState,
) -> Result<Recovered, String> {
    let test_clock = opts
        .test_clock
        .then(|| Arc::new(TestClock::new(wall_clock_ms())));
    let clock: Arc<dyn Clock> = match &test_clock {
        Some(c) => c.clone(),
        None => Arc::new(SystemClock),
    };
    let slot = Arc::new(JournalSlot::default());
    let engine =
        Arc::new(Engine::new(config, clock, slot.clone()).track_dirty(opts.redis.is_some()));

    // With --redis, recovery starts from what Redis holds, before the journal
    // is opened (after taking the lease on the Redis keyspace): the journal
    // then replays only what Redis lacks (records an account already reflects
    // are skipped by its applied_seq) and continues numbering after the
    // highest version in Redis. Without it, a data dir whose state came partly
    // from Redis is refused.
    // In cluster mode the journal is a local log only: slots are loaded from
    // Redis as they are taken (see `cluster::start::journal_dir`).
    let (mut loaded, journal_dir) = match &opts.redis {
        _ if opts.cluster => (None, cluster::start::journal_dir(&opts.data_dir)?),
        Some(url) => (
            Some(load_from_redis(opts, url, &engine, lease_ms, probes)?),
            opts.data_dir.clone(),
        ),
        None => {
            dependency::check_without_redis(&opts.data_dir)?;
            (None, opts.data_dir.clone())
        }
    };

    let (durable_tx, _) = watch::channel(0u64);
    let recovery =
        replay_journal(opts, &journal_dir, &engine, &durable_tx, loaded.as_mut()).await?;
    if let (Some(l), Some(url)) = (&loaded, &opts.redis) {
        dependency::record_if_arisen(
            &opts.data_dir,
            &writebehind::shown(url),
            l.redis_seq(),
            recovery.report.last_seq + 1,
            l.holds_other_nodes_state(),
        )?;
    }
    if let Some(l) = &loaded {
        // After the journal's events: a data dir behind Redis never numbers
        // an event the stream already holds.
        engine.raise_event_floor(l.events_seq + 1);
    }
    if opts.cluster {
        // A node's events live in its memory and its local journal starts
        // empty: numbering from the clock (a thousand numbers a millisecond)
        // keeps a restarted node's numbers above those it gave before, so a
        // consumer's cursor on this node stays valid (docs/CLUSTER.md).
        engine.raise_event_floor(wall_clock_ms().saturating_mul(1000));
    }
    durable_tx.send_replace(recovery.report.last_seq);
    slot.set(recovery.journal.clone());
    if !opts.cluster && opts.fsync != FsyncMode::Always {
        // Connections write the journal themselves (no fsync on their
        // thread: `always` keeps the writer thread's group commit).
        recovery.journal.set_inline_writes(true);
    }
    if let Some(clock) = &test_clock {
        // A restarted test clock never runs behind what was already recorded.
        let latest = recovery.max_at_ms.max(engine.latest_instant_ms());
        let _ = clock.set(latest.max(clock.now_ms()));
    }
    log_recovered(&engine, &recovery);
    Ok(Recovered {
        engine,
        recovery,
        durable: durable_tx,
        test_clock,
        loaded,
    })
}

/// Takes the lease on the Redis keyspace and loads every account Redis holds.
fn load_from_redis(
    opts: &Options,
    url: &str,
    engine: &Engine,
    lease_ms: u64,
    probes: &ProbeState,
) -> Result<Loaded, String> {
    *probes.recovering_reason.lock() = "taking the Redis lease, loading state from Redis".into();
    let started = Instant::now();
    let l = tokio::task::block_in_place(|| {
        let node = NodeIdentity::load_or_create(&opts.data_dir)?;
        let l = writebehind::load(engine, url, &node, lease_ms)?;
        dependency::check_with_redis(&opts.data_dir, &writebehind::shown(url), l.redis_seq())?;
        Ok::<_, String>(l)
    })?;
    tracing::info!(
        accounts = l.accounts,
        min_next_seq = l.base.min_next_seq,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded state from Redis"
    );
    *probes.recovering_reason.lock() = "recovering".into();
    Ok(l)
}

/// Opens the journal and replays it into `engine` (on a blocking thread),
/// over what Redis held, if anything.
async fn replay_journal(
    opts: &Options,
    dir: &std::path::Path,
    engine: &Arc<Engine>,
    durable_tx: &watch::Sender<u64>,
    loaded: Option<&mut Loaded>,
) -> Result<Recovery, String> {
    let fsync = opts.fsync;
    tracing::info!(journal_dir = %dir.display(), fsync = fsync.as_str(), "recovering");
    // Lent to the blocking thread and given back: the write-behind needs it.
    let mut loaded = loaded;
    let base = loaded.as_deref_mut().map(|l| std::mem::take(&mut l.base));
    let engine = engine.clone();
    let dir = dir.to_path_buf();
    let tx = durable_tx.clone();
    let (recovery, base) = tokio::task::spawn_blocking(move || {
        let recovery = persist::recover(&engine, &dir, fsync, tx, base.as_ref());
        (recovery, base)
    })
    .await
    .map_err(|e| format!("recovery panicked: {e}"))?;
    if let (Some(l), Some(base)) = (loaded, base) {
        l.base = base;
    }
    let recovery = recovery?;
    if let Some((file, offset)) = &recovery.report.torn_tail {
        tracing::warn!(file = %file.display(), offset, "cut off a torn last journal record (it was never acknowledged)");
    }
    for w in &recovery.report.warnings {
        tracing::warn!("{w}");
    }
    Ok(recovery)
}

fn log_recovered(engine: &Engine, recovery: &Recovery) {
    let stats = engine.stats();
    tracing::info!(
        accounts = stats.accounts,
        open_holds = stats.open_holds,
        snapshot_accounts = recovery.snapshot_accounts,
        records_replayed = recovery.report.records_replayed,
        last_seq = recovery.report.last_seq,
        elapsed_ms = recovery.elapsed_ms as u64,
        "recovered"
    );
}

/// Journal write and fsync latencies as histograms (recorded on the writer
/// thread: one atomic bucket update per group).
fn observe_journal(app: &App) {
    let (write, fsync, bytes) = (
        app.metrics.journal_write.clone(),
        app.metrics.journal_fsync.clone(),
        app.metrics.journal_group_bytes.clone(),
    );
    app.journal.set_observer(Box::new(move |event| match event {
        JournalEvent::Write {
            latency_ns,
            bytes: n,
        } => {
            write.record(latency_ns as f64 / 1e9);
            bytes.record(n as f64);
        }
        JournalEvent::Fsync { latency_ns } => fsync.record(latency_ns as f64 / 1e9),
    }));
}

/// Graceful shutdown: not ready, stop accepting, drain the connections
/// (for up to `--shutdown-grace-s`), stop the background work, flush.
/// The accept loop and the threads it hands connections to.
struct Serving {
    accept: Worker,
    conn_threads: Arc<ConnThreads>,
}

async fn shut_down(
    app: &App,
    serving: Serving,
    background: Vec<Worker>,
    write_behind: Option<WriteBehind>,
    cluster_threads: Option<cluster::Running>,
) -> Result<(), String> {
    tracing::info!("shutting down");
    app.health.shutting_down.store(true, Ordering::Release);
    // Cluster mode: hand every slot over first, while connections are still
    // open to be told where their accounts went.
    if let Some(threads) = cluster_threads {
        threads.shutdown().await;
    }
    // The accept loop's stop is every connection's: idle ones close now,
    // busy ones once their replies are out.
    serving.accept.shutdown().await;
    let open = &app.metrics.counters.connections_open;
    let deadline = Instant::now() + Duration::from_secs(app.opts.shutdown_grace_s);
    while open.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The accept loop (the only other owner) has ended.
    if let Ok(threads) = Arc::try_unwrap(serving.conn_threads) {
        threads.shutdown().await;
    }
    for worker in background {
        worker.shutdown().await;
    }
    if let Some(write_behind) = write_behind {
        write_behind.shutdown().await;
    }
    app.journal
        .shutdown()
        .map_err(|e| format!("journal flush failed at shutdown: {e}"))?;
    tracing::info!(
        last_seq = app.journal.stats().last_seq,
        "stopped: journal flushed"
    );
    Ok(())
}

/// Accepts connections until stopped; each connection gets the same stop.
async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    conn_threads: Arc<ConnThreads>,
    mut stop: Stop,
) {
    let counters = &app.metrics.counters;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait() => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counters.connections_total.fetch_add(1, Ordering::Relaxed);
        let open = counters.connections_open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > u64::from(app.settings.read().max_clients) {
            tracing::debug!(%peer, "connection refused: max_clients reached");
            counters.connections_open.fetch_sub(1, Ordering::AcqRel);
            counters
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse_connection(stream));
            continue;
        }
        tracing::debug!(%peer, open, "connection accepted");
        let served = {
            let (app, stop) = (app.clone(), stop.clone());
            conn_threads.serve(stream, move |stream| async move {
                crate::conn::serve(app.clone(), stream, stop).await;
                app.metrics
                    .counters
                    .connections_open
                    .fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(%peer, "connection closed");
            })
        };
        if let Err(e) = served {
            // The socket could not leave this runtime (closed already).
            tracing::debug!(%peer, "connection dropped before serving: {e}");
            counters.connections_open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Answers a connection over `max_clients` with an error and closes it.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    let mut line = Vec::new();
    Failure::err("max number of clients reached").encode(&mut line);
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// SIGHUP's default action ends the process; from here on it is queued for
/// [`reload_on_hangup`] instead, even while recovery still runs.
fn hangup_signals() -> Result<Hangups, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))
    }
    #[cfg(not(unix))]
    Ok(())
}

/// SIGHUP rereads the config exactly as CONFIG RELOAD does (same checks;
/// `App::reload_config` logs what was loaded, or why not and that the old
/// config stays). It never stops the server.
fn reload_on_hangup(app: Arc<App>, hangups: Hangups) -> Worker {
    Worker::task(|mut stop| async move {
        #[cfg(unix)]
        {
            let mut hangups = hangups;
            loop {
                tokio::select! {
                    hangup = hangups.recv() => if hangup.is_none() { return },
                    _ = stop.wait() => return,
                }
                let _ = app.reload_config("SIGHUP");
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (app, hangups);
            stop.wait().await;
        }
    })
}

/// Drains histogram samples into their buckets every few seconds.
fn metrics_upkeep(app: Arc<App>) -> Worker {
    Worker::task(|mut stop| async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => app.metrics.upkeep(),
                _ = stop.wait() => return,
            }
        }
    })
}

/// Applies due expiries and renewals to idle accounts, every
/// [`SWEEP_INTERVAL_MS`].
fn spawn_sweeper(engine: Arc<Engine>) -> Result<Worker, String> {
    Worker::thread("creditd-sweeper", move |stop| loop {
        stop.sleep(Duration::from_millis(SWEEP_INTERVAL_MS));
        if stop.requested() {
            return;
        }
        // Bounded passes: at most 64 full budgets before sleeping again.
        let mut visited = 0;
        for _ in 0..64 {
            let n = engine.sweep(SWEEP_BUDGET);
            visited += n;
            if n < SWEEP_BUDGET {
                break;
            }
        }
        if visited > 0 {
            tracing::debug!(
                accounts = visited,
                "sweeper applied due expiries and renewals"
            );
        }
    })
}

/// Takes a snapshot once `every_records` records accumulated since the last.
fn spawn_snapshotter(app: Arc<App>, every_records: u64) -> Result<Worker, String> {
    Worker::thread("creditd-snapshot", move |stop| {
        let mut last = app.journal.stats().last_seq;
        loop {
            stop.sleep(Duration::from_millis(SNAPSHOT_CHECK_MS));
            if stop.requested() {
                return;
            }
            let seq = app.journal.stats().last_seq;
            if seq.saturating_sub(last) < every_records {
                continue;
            }
            let started = Instant::now();
            match persist::take_snapshot(&app.engine, &app.journal) {
                Ok((first_seq, bytes)) => {
                    last = seq;
                    writebehind::snapshot_taken(&app, first_seq);
                    tracing::info!(
                        first_seq,
                        bytes,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "snapshot written; older journal segments removed"
                    );
                }
                Err(e) => tracing::warn!("snapshot failed: {e}"),
            }
        }
    })
}
