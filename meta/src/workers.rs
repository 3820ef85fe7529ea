//! Background workers that cannot die silently.
//!
//! Every long-running task of a controller (replication, repair, GC, the clock watch, the
//! metrics endpoint) runs under [`supervise`]: if it ends before shutdown, by returning or by
//! panicking, the failure is logged, counted and shown by `status`, and the worker is started
//! again after a backoff. [`WorkerBoard`] holds each worker's state for `status`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

/// First restart delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a worker may take to stop at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One worker's state, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerState {
    /// running, restarting or stopped.
    pub state: &'static str,
    pub restarts: u64,
    pub last_error: String,
}

/// The state of every supervised worker.
#[derive(Debug, Default)]
pub struct WorkerBoard {
    workers: Mutex<BTreeMap<&'static str, WorkerState>>,
}

impl WorkerBoard {
    fn update(&self, name: &'static str, f: impl FnOnce(&mut WorkerState)) {
        f(self.workers.lock().entry(name).or_default());
    }

    /// Every worker's state, by name.
    pub fn snapshot(&self) -> Vec<(&'static str, WorkerState)> {
        self.workers
            .lock()
            .iter()
            .map(|(n, s)| (*n, s.clone()))
            .collect()
    }
}

/// Runs the worker `make()` builds until `shutdown` turns true, restarting it whenever it ends
/// early.
pub async fn supervise<F, Fut>(
    name: &'static str,
    board: Arc<WorkerBoard>,
    mut shutdown: watch::Receiver<bool>,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        if *shutdown.borrow() {
            break;
        }
        board.update(name, |w| w.state = "running");
        let mut task = tokio::spawn(make());
        let ended = tokio::select! {
            _ = shutdown.changed() => None,
            r = &mut task => Some(r),
        };
        let Some(result) = ended else {
            let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
            break;
        };
        if *shutdown.borrow() {
            break;
        }
        let why = match result {
            Ok(()) => "ended unexpectedly".to_owned(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(e) => format!("failed: {e}"),
        };
        tracing::error!(worker = name, error = %why, ?backoff, "worker stopped; restarting");
        board.update(name, |w| {
            w.state = "restarting";
            w.restarts += 1;
            w.last_error = why;
        });
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    board.update(name, |w| w.state = "stopped");
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_worker_is_restarted_and_reported() {
        let board = Arc::new(WorkerBoard::default());
        let (stop, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let sup = tokio::spawn(supervise("flaky", board.clone(), rx.clone(), move || {
            let r = r.clone();
            let rx = rx.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("boom");
                }
                let mut rx = rx;
                let _ = rx.changed().await;
            }
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker not restarted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (name, state) = board.snapshot().remove(0);
        assert_eq!(name, "flaky");
        assert_eq!(state.restarts, 1);
        assert!(state.last_error.contains("boom"), "{}", state.last_error);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), sup)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(board.snapshot()[0].1.state, "stopped");
    }
}
