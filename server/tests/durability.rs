//! Durability: under concurrent load, `kill -9` at a random moment loses no
//! acknowledged change, and retrying acknowledged commands applies nothing twice.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One acknowledged command and the reply it got.
#[derive(Clone, Debug)]
struct Acked {
    args: Vec<String>,
    reply: i64,
}

/// A worker's log: what was acknowledged, and the command in flight (if any) when the server died.
#[derive(Default)]
struct WorkerLog {
    acked: Vec<Acked>,
    in_flight: Option<Vec<String>>,
}

fn worker(port: u16, account: String, stop: Arc<AtomicBool>, log: Arc<Mutex<WorkerLog>>) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let Ok(mut conn) = client.get_connection() else {
        return;
    };
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // A grant, a reservation, a partial commit, a debit: every kind of change.
        let steps: [Vec<String>; 4] = [
            vec![
                "GRANT".into(),
                account.clone(),
                format!("g{i}"),
                "100".into(),
            ],
            vec![
                "RESERVE".into(),
                account.clone(),
                format!("h{i}"),
                "60".into(),
            ],
            vec![
                "COMMIT".into(),
                account.clone(),
                format!("h{i}"),
                "45".into(),
            ],
            vec!["DEBIT".into(), account.clone(), format!("d{i}"), "5".into()],
        ];
        for args in steps {
            log.lock().unwrap().in_flight = Some(args.clone());
            let mut c = redis::cmd(&args[0]);
            for a in &args[1..] {
                c.arg(a);
            }
            match c.query::<i64>(&mut conn) {
                Ok(reply) => {
                    let mut l = log.lock().unwrap();
                    l.acked.push(Acked { args, reply });
                    l.in_flight = None;
                }
                Err(_) => return, // the server died mid-command
            }
        }
        i += 1;
    }
}

fn expected_totals(acked: &[Acked]) -> (i64, i64) {
    let mut granted = 0;
    let mut spent = 0;
    for a in acked {
        match a.args[0].as_str() {
            "GRANT" => granted += 100,
            "COMMIT" | "DEBIT" => spent += a.reply,
            _ => {}
        }
    }
    (granted, spent)
}

fn one_round(seed: u64) {
    // Connections write the journal inline in each of these (see
    // `Journal::write_inline`): with one worker or several, and without fsync.
    let args: &[&str] = match seed % 3 {
        1 => &["--fsync", "everysec"],
        2 => &["--fsync", "everysec", "--workers", "1"],
        _ => &["--fsync", "no"],
    };
    let mut srv = Creditd::start(args);
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<WorkerLog>>> = (0..4).map(|_| Arc::default()).collect();
    let threads: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(w, log)| {
            let (port, stop, log) = (srv.port, stop.clone(), log.clone());
            std::thread::spawn(move || worker(port, format!("acct{w}"), stop, log))
        })
        .collect();
    // Kill at a pseudo-random moment between 300 and 1300 ms.
    std::thread::sleep(Duration::from_millis(300 + seed * 7919 % 1000));
    srv.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    srv.restart();
    let mut c = srv.client();
    let mut total_acked = 0;
    for (w, log) in logs.iter().enumerate() {
        let log = log.lock().unwrap();
        let account = format!("acct{w}");
        total_acked += log.acked.len();
        let b = balance(&mut c, &account);
        assert_conserved(b);
        let (granted, spent) = expected_totals(&log.acked);
        // Every acknowledged change is there; at most the one in flight is extra.
        let extra = log.in_flight.as_ref().map(|a| a[0].clone());
        let granted_ok =
            b[4] == granted || (extra.as_deref() == Some("GRANT") && b[4] == granted + 100);
        assert!(
            granted_ok,
            "{account}: granted {} vs acknowledged {granted} (in flight {extra:?})",
            b[4]
        );
        let spent_ok = b[2] == spent
            || (extra.as_deref() == Some("COMMIT") && b[2] == spent + 45)
            || (extra.as_deref() == Some("DEBIT") && b[2] == spent + 5);
        assert!(
            spent_ok,
            "{account}: spent {} vs acknowledged {spent} (in flight {extra:?})",
            b[2]
        );
        // Retrying every acknowledged command repeats its reply and changes nothing.
        for a in &log.acked {
            let args: Vec<&str> = a.args.iter().map(|s| s.as_str()).collect();
            // (A reservation retried after its commit repeats the reserve reply.)
            assert_eq!(int(&mut c, &args), a.reply, "retry {args:?}");
        }
        assert_eq!(
            balance(&mut c, &account),
            b,
            "{account}: retries applied something"
        );
    }
    assert!(total_acked > 0, "the load ran before the kill");
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_change() {
    for seed in 1..=3 {
        one_round(seed);
    }
}

#[test]
fn journal_survives_restart_with_snapshot_and_fsync_always() {
    let dir = temp_dir("snap");
    let config = dir.join("creditd.toml");
    // Snapshot every 50 records so the run takes several and deletes old segments.
    std::fs::write(&config, "snapshot_every_records = 50\n").unwrap();
    let mut srv = Creditd::start_in(
        &dir.join("data"),
        &["--fsync", "always", "--config", config.to_str().unwrap()],
    );
    let mut c = srv.client();
    for i in 0..200 {
        int(&mut c, &["GRANT", "s", &format!("g{i}"), "10"]);
        int(&mut c, &["RESERVE", "s", &format!("h{i}"), "4"]);
        if i % 2 == 0 {
            int(&mut c, &["COMMIT", "s", &format!("h{i}"), "3"]);
        }
        if i == 120 {
            std::thread::sleep(Duration::from_millis(2500)); // let the snapshot thread run
        }
    }
    let before = balance(&mut c, "s");
    srv.kill9();
    let snapshots = std::fs::read_dir(&srv.data_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("snapshot-")
        })
        .count();
    assert!(snapshots >= 1, "a snapshot was written");
    srv.restart();
    let mut c = srv.client();
    assert_eq!(balance(&mut c, "s"), before);
    assert_eq!(
        int(&mut c, &["COMMIT", "s", "h1", "4"]),
        4,
        "open holds survived"
    );
    assert_eq!(
        int(&mut c, &["RESERVE", "s", "h0", "4"]),
        4,
        "idempotency records survived"
    );
}
