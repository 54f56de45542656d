//! A full disk under a running creditd: writes answer `-BUSY` within 5 s
//! instead of hanging, `/readyz` turns 503 with the reason, `write_errors`
//! counts, nothing acknowledged is lost, and everything recovers by itself
//! once there is space again. The data dir is a real tmpfs of a few pages,
//! mounted by the test (root only: skipped with a reason elsewhere).

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A small tmpfs, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let path = temp_dir("tmpfs");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status}): not root?"));
        }
        Ok(Tmpfs { path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `dir` with one file, up to its last byte.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 4096];
    // Bounded: the tmpfs is a few MiB.
    for _ in 0..100_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    for _ in 0..4096 {
        if f.write_all(&[0u8]).is_err() {
            break;
        }
    }
    let _ = f.flush();
    path
}

fn info_field(conn: &mut redis::Connection, name: &str) -> String {
    let text = match cmd(conn, &["INFO", "persistence"]) {
        Ok(v) => as_string(&v),
        Err(e) => panic!("INFO: {e}"),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("INFO has no {name}: {text}"))
        .trim()
        .to_string()
}

fn code_of(r: &Result<redis::Value, String>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => e.split(' ').next().unwrap_or("").to_string(),
    }
}

#[test]
fn a_full_disk_answers_busy_at_once_and_recovers_by_itself() {
    let fs = match Tmpfs::mount("4m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let data = fs.path.join("data");
    let mut srv = Creditd::start_in(&data, &["--fsync", "always"]);
    let mut c = srv.client();
    assert_eq!(int(&mut c, &["GRANT", "acct", "g0", "1000"]), 1000);
    assert_eq!(srv.http_get("/readyz").0, 200);

    let filler = fill(&fs.path);
    // The journal's last page may still have room for a few records: send
    // grants until one is refused. Each reply comes within the bound.
    let mut acknowledged = 1000;
    let mut busy_id = None;
    for i in 1..=500 {
        let id = format!("g{i}");
        let sent = Instant::now();
        let reply = cmd(&mut c, &["GRANT", "acct", &id, "10"]);
        let took = sent.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "GRANT took {took:?} on a full disk"
        );
        match reply {
            Ok(redis::Value::Int(n)) => {
                acknowledged += 10;
                assert_eq!(n, acknowledged);
            }
            Err(e) if e.starts_with("BUSY") => {
                busy_id = Some(id);
                break;
            }
            other => panic!("GRANT on a full disk: {other:?}"),
        }
    }
    let busy_id = busy_id.expect("a full disk refuses writes");

    // From now on writes are refused at once, nothing is applied.
    let sent = Instant::now();
    let r = cmd(&mut c, &["DEBIT", "other", "d1", "5"]);
    assert_eq!(code_of(&r), "BUSY", "{r:?}");
    assert!(sent.elapsed() < Duration::from_secs(1));
    let (status, body) = srv.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("journal"), "{body}");
    assert!(info_field(&mut c, "write_errors").parse::<u64>().unwrap() > 0);
    let metrics = srv.http_get("/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("creditd_write_errors_total ") && !l.ends_with(" 0")),
        "no write errors in /metrics"
    );

    // Space returns: readiness and writes come back by themselves.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while srv.http_get("/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after space returned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The refused grant was applied or not: a retry with its id settles it,
    // once, whichever it was.
    let after_retry = int(&mut c, &["GRANT", "acct", &busy_id, "10"]);
    assert_eq!(after_retry, acknowledged + 10);
    assert_eq!(int(&mut c, &["DEBIT", "acct", "d1", "5"]), 5);
    assert_eq!(balance(&mut c, "other"), [0, 0, 0, 0, 0]);

    // Nothing acknowledged was lost.
    srv.kill9();
    srv.restart();
    let mut c = srv.client();
    assert_eq!(
        balance(&mut c, "acct"),
        [after_retry - 5, 0, 5, 0, after_retry]
    );
    // A retry repeats the first reply and applies nothing.
    assert_eq!(int(&mut c, &["GRANT", "acct", &busy_id, "10"]), after_retry);
    assert_eq!(balance(&mut c, "acct")[4], after_retry);
}
