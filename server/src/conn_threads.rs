//! The threads that serve connections: thread per core.
//!
//! Each thread runs a current-thread tokio runtime of its own, and every
//! connection lives on one of them for its whole life. The accept loop
//! hands a new connection to the thread with the fewest open ones.
//!
//! Why not tokio's multi-thread scheduler: at pipeline 1 a request costs a
//! read, an engine call and a write, so the scheduler's own work (waking a
//! task on another worker, stealing, the shared queues' atomics) is a large
//! part of it. A thread that owns its connections runs each ready one in
//! turn with no hand-off, as Redis's event loop does, and a connection's
//! journal write covers every connection that became ready in the same
//! round on that thread (see `conn.rs`, "leader writes"). The numbers are
//! in docs/PERFORMANCE.md ("Thread per core").
//!
//! What stays on the main runtime: the accept loop, HTTP probes, the
//! write-behind and cluster tasks. Nothing here blocks a thread: the engine
//! holds a shard lock for well under a microsecond.

use crate::stop::Worker;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;

/// Bound on connection threads (the `--workers` flag's range).
pub const MAX_THREADS: usize = 1024;

/// One connection thread: its runtime's handle and how many connections
/// it serves now.
struct ConnThread {
    handle: tokio::runtime::Handle,
    open: Arc<AtomicUsize>,
    worker: Worker,
}

/// The connection threads, started together and stopped together.
pub struct ConnThreads {
    threads: Vec<ConnThread>,
}

/// Counts a connection off its thread however its task ends (even if the
/// runtime drops it unfinished at shutdown).
struct Served(Arc<AtomicUsize>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnThreads {
    /// Starts `count` threads (`0`: one per core), named `creditd-conn-<i>`.
    pub fn start(count: usize) -> Result<ConnThreads, String> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
        .min(MAX_THREADS);
        assert!(count >= 1, "at least one connection thread");
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start connection thread {i}: {e}"))?;
            let handle = runtime.handle().clone();
            // The thread drives its runtime until stopped; dropping the
            // runtime then ends any connection still on it.
            let worker = Worker::thread(&format!("creditd-conn-{i}"), move |mut stop| {
                runtime.block_on(async move { stop.wait().await });
            })?;
            threads.push(ConnThread {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                worker,
            });
        }
        Ok(ConnThreads { threads })
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Connections served now, over all threads.
    pub fn open_connections(&self) -> usize {
        self.threads
            .iter()
            .map(|t| t.open.load(Ordering::Acquire))
            .sum()
    }

    /// Moves `stream` to the least busy thread and runs `serve` on it there.
    /// The stream leaves the caller's runtime and joins that thread's, so all
    /// its I/O happens on that thread.
    pub fn serve<F, Fut>(&self, stream: TcpStream, serve: F) -> std::io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stream = stream.into_std()?;
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Acquire))
            .expect("at least one connection thread");
        thread.open.fetch_add(1, Ordering::AcqRel);
        let served = Served(thread.open.clone());
        thread.handle.spawn(async move {
            let _served = served;
            // Registered with this thread's reactor (the stream is already
            // non-blocking: `into_std` leaves it so).
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!("cannot move a connection to its thread: {e}"),
            }
        });
        Ok(())
    }

    /// Stops every thread: connections still open end with their runtime.
    pub async fn shutdown(self) {
        for thread in self.threads {
            thread.worker.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn connections_spread_over_threads_and_are_served_there() {
        let threads = ConnThreads::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut names = Vec::new();
        for _ in 0..4 {
            let client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            threads
                .serve(stream, |mut s| async move {
                    // Echo the serving thread's name back.
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    let _ = s.write_all(name.as_bytes()).await;
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                })
                .unwrap();
            clients.push(client);
        }
        for c in &mut clients {
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).await.unwrap();
            names.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "creditd-conn-0",
                "creditd-conn-0",
                "creditd-conn-1",
                "creditd-conn-1"
            ],
            "least busy first: two each"
        );
        let open = threads.open_connections();
        assert_eq!(open, 4);
        drop(clients);
        // Every connection ends once its client closes: the counts fall to 0.
        for _ in 0..500 {
            let open = threads.open_connections();
            if open == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let open = threads.open_connections();
        assert_eq!(open, 0);
        threads.shutdown().await;
    }
}
