//! INFO text, Redis style: `# Section` headers, `key:value` lines, a blank
//! line after each section. Counts come from the same atomics `/metrics`
//! publishes ([`crate::metrics::Counters`]).

use crate::app::App;
use crate::error::ErrorCode;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Appends one section.
type WriteSection = fn(&App, &mut String);

/// Every section, in order, with the function that writes it.
const SECTIONS: &[(&str, WriteSection)] = &[
    ("server", server),
    ("clients", clients),
    ("stats", stats),
    ("persistence", persistence),
    ("accounts", accounts),
    ("cluster", cluster),
    ("errorstats", errorstats),
];

/// INFO's reply: one section by its (lowercase) name, or all of them.
pub fn info(app: &App, section: Option<&str>) -> String {
    let all = matches!(
        section,
        None | Some("all") | Some("everything") | Some("default")
    );
    let mut s = String::new();
    for (name, write) in SECTIONS {
        if all || section == Some(*name) {
            write(app, &mut s);
        }
    }
    s
}

fn read(n: &AtomicU64) -> u64 {
    n.load(Ordering::Relaxed)
}

fn server(app: &App, s: &mut String) {
    let _ = write!(
        s,
        "# Server\r\nredis_version:7.0.0\r\ncreditd_version:{}\r\nredis_mode:standalone\r\nos:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\ntest_clock:{}\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::process::id(),
        app.opts.listen.port(),
        app.started.elapsed().as_secs(),
        app.test_clock.is_some() as u8,
    );
}

fn clients(app: &App, s: &mut String) {
    let _ = write!(
        s,
        "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
        read(&app.metrics.counters.connections_open),
        app.settings.read().max_clients,
    );
}

fn stats(app: &App, s: &mut String) {
    let c = &app.metrics.counters;
    let _ = write!(
        s,
        "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\ntotal_protocol_errors:{}\r\ntotal_error_replies:{}\r\n\r\n",
        read(&c.connections_total),
        read(&c.commands_processed),
        read(&c.connections_rejected),
        read(&c.protocol_errors),
        c.total_error_replies(),
    );
}

fn persistence(app: &App, s: &mut String) {
    let js = app.journal.stats();
    let (connected, pending, lag_ms) = app.redis_status();
    let _ = write!(
        s,
        "# Persistence\r\nloading:{}\r\njournal_fsync:{}\r\njournal_last_seq:{}\r\njournal_durable_seq:{}\r\njournal_bytes_written:{}\r\njournal_writes:{}\r\njournal_fsyncs:{}\r\njournal_segments:{}\r\njournal_pending_bytes:{}\r\njournal_writer_failed:{}\r\nwrite_errors:{}\r\nredis_enabled:{}\r\nredis_connected:{}\r\nredis_pending:{}\r\nredis_lag_ms:{}\r\n",
        (!app.health.ready.load(Ordering::Acquire)) as u8,
        app.opts.fsync.as_str(),
        js.last_seq,
        js.durable_seq,
        js.bytes_written,
        js.groups_written,
        js.fsyncs,
        js.segment_count,
        js.pending_bytes,
        js.writer_failed as u8,
        js.write_errors,
        app.opts.redis.is_some() as u8,
        connected as u8,
        pending,
        lag_ms,
    );
    if let Some(redis) = app.redis.read().as_ref() {
        redis.write_info(s);
    }
    s.push_str("\r\n");
}

fn accounts(app: &App, s: &mut String) {
    let es = app.engine.stats();
    let (events_kept, events_next_seq, events_dropped) = app.engine.event_stats();
    let _ = write!(
        s,
        "# Accounts\r\naccounts:{}\r\nopen_holds:{}\r\nhold_expiries:{}\r\nbucket_expiries:{}\r\nrenewals:{}\r\nevents_kept:{events_kept}\r\nevents_last_seq:{}\r\nevents_dropped:{events_dropped}\r\n\r\n",
        es.accounts, es.open_holds, es.hold_expiries, es.bucket_expiries, es.renewals,
        events_next_seq - 1,
    );
}

/// Error replies by code, as Redis shows them: only codes sent at least once.
fn errorstats(app: &App, s: &mut String) {
    s.push_str("# Errorstats\r\n");
    for code in ErrorCode::ALL {
        let n = app.metrics.counters.error_replies(code);
        if n > 0 {
            let _ = write!(s, "errorstat_{}:count={n}\r\n", code.as_str());
        }
    }
    s.push_str("\r\n");
}

/// `cluster_enabled` as Redis says it (clients such as redis-py's
/// `RedisCluster` read it to tell a cluster node), then, in cluster mode,
/// this node, its slots and what moved.
fn cluster(app: &App, s: &mut String) {
    match &app.cluster {
        None => s.push_str("# Cluster\r\ncluster_enabled:0\r\n\r\n"),
        Some(c) => {
            s.push_str("# Cluster\r\ncluster_enabled:1\r\n");
            c.write_info(s);
            s.push_str("\r\n");
        }
    }
}
