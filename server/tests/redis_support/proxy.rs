//! A TCP proxy between creditd and redis-server that injects faults: it cuts
//! connections after a random (seeded) number of bytes, cuts every open
//! connection on demand, or holds what clients send (a partition in one
//! direction) until released.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bound on bytes held back while holding (the test fails past it).
const HOLD_MAX_BYTES: usize = 64 << 20;

struct State {
    upstream: u16,
    stop: AtomicBool,
    hold: AtomicBool,
    /// Everything held back so far (to look for a command in it).
    held: Mutex<Vec<u8>>,
    /// With `Some`: each new connection is cut after a random number of
    /// bytes (both directions counted) up to the bound.
    cutter: Mutex<Option<(StdRng, usize)>>,
    /// Live connections (client side, upstream side), to cut on demand.
    live: Mutex<Vec<(TcpStream, TcpStream)>>,
    cuts: AtomicU64,
    accepted: AtomicU64,
}

/// The proxy; stops (and cuts everything) on drop.
pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Forwards a free loopback port to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream,
            stop: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            cutter: Mutex::new(None),
            live: Mutex::new(Vec::new()),
            cuts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let accept = {
            let state = state.clone();
            std::thread::spawn(move || accept_loop(listener, state))
        };
        Proxy {
            port,
            state,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, each new connection is cut after a random number of
    /// bytes in `1..=max_bytes` (seeded); `None` stops that.
    pub fn cut_randomly(&self, seed_and_max: Option<(u64, usize)>) {
        *self.state.cutter.lock().unwrap() =
            seed_and_max.map(|(seed, max)| (StdRng::seed_from_u64(seed), max));
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        for (client, upstream) in self.state.live.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            self.state.cuts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Holds back what clients send (nothing reaches Redis) until `release`.
    pub fn hold(&self) {
        self.state.held.lock().unwrap().clear();
        self.state.hold.store(true, Ordering::SeqCst);
    }

    /// Forwards what was held, then everything as before.
    pub fn release(&self) {
        self.state.hold.store(false, Ordering::SeqCst);
    }

    /// Whether the bytes held back so far contain `needle`.
    pub fn held_contains(&self, needle: &[u8]) -> bool {
        let held = self.state.held.lock().unwrap();
        held.windows(needle.len()).any(|w| w == needle)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    while !state.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(upstream) = TcpStream::connect(("127.0.0.1", state.upstream)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nonblocking(false);
        let budget = state
            .cutter
            .lock()
            .unwrap()
            .as_mut()
            .map(|(rng, max)| rng.random_range(1..=*max));
        let used = Arc::new(AtomicUsize::new(0));
        state
            .live
            .lock()
            .unwrap()
            .push((client.try_clone().unwrap(), upstream.try_clone().unwrap()));
        for (from, to, held) in [
            (
                client.try_clone().unwrap(),
                upstream.try_clone().unwrap(),
                true,
            ),
            (upstream, client, false),
        ] {
            let (state, used) = (state.clone(), used.clone());
            std::thread::spawn(move || pump(from, to, held, budget, used, state));
        }
    }
}

/// Copies `from` to `to` until either closes, the byte budget runs out (then
/// both are cut), or the proxy stops. `holds`: this direction is the one
/// `hold` holds back.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    holds: bool,
    budget: Option<usize>,
    used: Arc<AtomicUsize>,
    state: Arc<State>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 16 << 10];
    let mut backlog: Vec<u8> = Vec::new();
    loop {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        if holds && !backlog.is_empty() && !state.hold.load(Ordering::SeqCst) {
            if to.write_all(&backlog).is_err() {
                break;
            }
            backlog.clear();
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let mut chunk = &buf[..n];
        let mut cut = false;
        if let Some(budget) = budget {
            let before = used.fetch_add(n, Ordering::SeqCst);
            if before + n >= budget {
                chunk = &chunk[..budget.saturating_sub(before).min(n)];
                cut = true;
            }
        }
        if holds && (state.hold.load(Ordering::SeqCst) || !backlog.is_empty()) {
            backlog.extend_from_slice(chunk);
            let mut held = state.held.lock().unwrap();
            held.extend_from_slice(chunk);
            assert!(held.len() <= HOLD_MAX_BYTES, "the proxy held too much");
        } else if to.write_all(chunk).is_err() {
            break;
        }
        if cut {
            state.cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
