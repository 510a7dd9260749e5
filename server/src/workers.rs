//! Connection workers: threads that each run a single-threaded runtime and
//! serve the connections handed to them, from first byte to close.
//!
//! Off by default (`connection_threads = 0`): see the measurements in
//! docs/LOAD.md. Why one might want them: an idle fleet is tens of
//! thousands of short polls, each a few microseconds of work. On the shared
//! multi-threaded runtime a connection's task migrates between workers, and
//! idle workers spin looking for work to steal; on a machine whose cores are
//! busy (the load generator, other services) that costs the tail of the
//! latency distribution, not its median. nginx pins each connection to one
//! worker process; these threads do the same: a connection never moves, and
//! a worker with nothing to do sleeps in epoll. The price is throughput:
//! a busy thread cannot hand its connections to an idle core.
//!
//! Everything else (rollout and re-signing jobs, the published-metadata
//! refresh, the accept loop) stays on the main runtime. A handler may still
//! `spawn_blocking` (each worker has its own blocking pool) and use the
//! database pool: tokio resources registered with another runtime keep
//! working while that runtime runs, and every runtime here runs until the
//! server has drained its connections.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A fixed set of connection threads, handed connections in turn.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("ota-conn-{i}"))
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("ota-conn-{i}"))
                .spawn(move || {
                    // Parked here, the thread drives its runtime's I/O and
                    // timers; the runtime is dropped on this plain thread,
                    // never inside an async context.
                    let _ = runtime.block_on(stopped);
                    runtime.shutdown_background();
                })?;
            workers.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// How many threads serve connections.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs `connection` on the next worker, round robin: connections of an
    /// idle fleet are alike, so turns spread them as well as counting would.
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        drop(self.workers[i].handle.spawn(connection));
    }
}

impl Drop for Workers {
    /// Stops the threads without waiting for them: by now the server has
    /// drained its connections, and joining here could block an async caller.
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
            drop(worker.thread.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn connections_are_spread_over_the_threads_and_stay_on_theirs() {
        let workers = Workers::start(2).expect("start workers");
        assert_eq!(workers.len(), 2);
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let before = std::thread::current().id();
                tokio::time::sleep(Duration::from_millis(5)).await;
                tokio::task::yield_now().await;
                let after = std::thread::current().id();
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((before, after, name));
            });
        }
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let (before, after, name) = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("a connection task ran");
            assert_eq!(before, after, "a task moved between threads");
            names.insert(name.expect("worker threads are named"));
        }
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["ota-conn-0", "ota-conn-1"]
        );
    }
}
