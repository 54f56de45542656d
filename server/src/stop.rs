//! How background work is stopped: every thread and task that runs beside the
//! connections is a [`Worker`], and its work watches the [`Stop`] it was
//! given. One mechanism, so that a graceful shutdown stops each piece the
//! same way and nothing is left running unseen.
//!
//! A thread sleeps with [`Stop::sleep`], which the worker's stop (or
//! [`Worker::wake`]) interrupts; a task awaits [`Stop::wait`] in a `select!`.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

/// The stop signal as the work sees it: cheap to clone, so a task can hand
/// it on (the accept loop gives one to every connection it starts).
#[derive(Clone)]
pub struct Stop {
    requested: watch::Receiver<bool>,
}

impl Stop {
    /// True once the worker was asked to stop.
    pub fn requested(&self) -> bool {
        *self.requested.borrow()
    }

    /// Resolves once the worker is asked to stop (or is gone).
    pub async fn wait(&mut self) {
        let _ = self.requested.wait_for(|stop| *stop).await;
    }

    /// Sleeps this thread for up to `wait`. The worker's stop wakes it early,
    /// once: work that goes on after a stop (draining) sleeps normally again.
    pub fn sleep(&self, wait: Duration) {
        std::thread::park_timeout(wait);
    }
}

enum Running {
    Thread(JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

/// A background thread or tokio task and the means to stop it. Stopping
/// signals its [`Stop`] (waking a sleeping thread) and waits for it to end:
/// [`Worker::shutdown`] does so explicitly; dropping a worker does too, but
/// can wait only for a thread (a task ends by itself once signalled).
pub struct Worker {
    signal: watch::Sender<bool>,
    running: Option<Running>,
}

fn signal_pair() -> (watch::Sender<bool>, Stop) {
    let (signal, requested) = watch::channel(false);
    (signal, Stop { requested })
}

impl Worker {
    /// Runs `work` on a thread of its own named `name`.
    pub fn thread(name: &str, work: impl FnOnce(Stop) + Send + 'static) -> Result<Worker, String> {
        let (signal, stop) = signal_pair();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || work(stop))
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
        Ok(Worker {
            signal,
            running: Some(Running::Thread(handle)),
        })
    }

    /// Runs `work` as a tokio task (call from within the runtime).
    pub fn task<F>(work: impl FnOnce(Stop) -> F) -> Worker
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (signal, stop) = signal_pair();
        Worker {
            signal,
            running: Some(Running::Task(tokio::spawn(work(stop)))),
        }
    }

    /// Interrupts a sleeping thread's [`Stop::sleep`] without stopping it
    /// (work to do now); nothing for a task.
    pub fn wake(&self) {
        if let Some(Running::Thread(handle)) = &self.running {
            handle.thread().unpark();
        }
    }

    fn signal(&self) {
        self.signal.send_replace(true);
        self.wake();
    }

    /// Signals the stop and waits until the work has ended.
    pub async fn shutdown(mut self) {
        self.signal();
        match self.running.take() {
            Some(Running::Thread(handle)) => {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            Some(Running::Task(handle)) => {
                let _ = handle.await;
            }
            None => {}
        }
    }
}

impl Drop for Worker {
    /// Signals the stop; waits for a thread (blocking), not for a task.
    fn drop(&mut self) {
        self.signal();
        if let Some(Running::Thread(handle)) = self.running.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn dropping_a_thread_worker_wakes_and_joins_it() {
        let rounds = Arc::new(AtomicU32::new(0));
        let counted = rounds.clone();
        let worker = Worker::thread("test-sleeper", move |stop| {
            while !stop.requested() {
                counted.fetch_add(1, Ordering::Relaxed);
                stop.sleep(Duration::from_secs(60));
            }
        })
        .unwrap();
        while rounds.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let started = Instant::now();
        drop(worker);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken, not slept out"
        );
        let after = rounds.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            rounds.load(Ordering::Relaxed),
            after,
            "joined: no more rounds"
        );
    }

    #[test]
    fn a_task_worker_ends_on_shutdown_and_passes_its_stop_on() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let worker = Worker::task(|mut stop| async move {
                let mut handed_on = stop.clone();
                let child = tokio::spawn(async move { handed_on.wait().await });
                stop.wait().await;
                let _ = child.await;
                let _ = done_tx.send(());
            });
            worker.shutdown().await;
            done_rx.await.expect("the task ran to its end");
        });
    }
}
