//! The live agent's threads besides the one that counts: a runtime for the services (the
//! metrics endpoint, capture on request, the Kubernetes watches), and one for the probes
//! alone, so that neither a busy service nor a crowd of clients can keep `/healthz` from
//! answering. Started after capabilities are dropped (they belong to threads).

use std::{
    future::Future,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{runtime::Handle, sync::oneshot};

/// A tokio runtime on threads of its own, until [`Runtime::stop`].
pub struct Runtime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Runtime {
    /// A runtime named `name` with `workers` threads (1: a current-thread runtime).
    pub fn start(name: &str, workers: usize) -> Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = if workers <= 1 {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(workers)
                        .thread_name(thread_name)
                        .enable_all()
                        .build()
                };
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // Runs the spawned tasks until asked to stop (or the owner is gone).
                let _ = rt.block_on(stop_rx);
                // Blocking threads (a capture's libpcap reads) must not hold the exit up.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .with_context(|| format!("starting the {name} thread"))?;
        let handle = handle_rx
            .recv()
            .context("the runtime thread ended at start")?
            .with_context(|| format!("starting the {name} runtime"))?;
        Ok(Self {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `fut` on this runtime and waits for its result (from any runtime).
    pub async fn run<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .context("a task of the services runtime failed")
    }

    /// Stops the runtime's tasks; waits for its thread until `deadline` at most.
    pub fn stop(mut self, deadline: Instant) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}
