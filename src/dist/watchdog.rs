//! A watchdog over collective operations: a rank that waits longer than the timeout for the
//! others (one died, or hangs) ends this process with a non-zero status, and the launcher then
//! tears the job down (mpirun and `tunelab launch` both do), instead of every rank hanging.
//!
//! The timeout is `TUNELAB_DIST_TIMEOUT` seconds (default 600, torch's NCCL default).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit status of a rank the watchdog stopped.
pub const EXIT_TIMED_OUT: i32 = 124;

/// The operation being waited on, if any.
struct Waiting {
    what: &'static str,
    since: Instant,
}

/// Watches one rank's collectives from a background thread.
pub struct Watchdog {
    waiting: Arc<Mutex<Option<Waiting>>>,
}

/// While alive, the watchdog times the operation; dropping it marks the operation done.
pub struct Watched<'a> {
    dog: &'a Watchdog,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        *self.dog.lock() = None;
    }
}

/// The timeout from `TUNELAB_DIST_TIMEOUT` (seconds), or 600 s.
pub fn timeout_from_env() -> Duration {
    std::env::var("TUNELAB_DIST_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(600), Duration::from_secs_f64)
}

impl Watchdog {
    /// Start watching; `rank` names this process in the message it prints before exiting.
    pub fn start(rank: usize, timeout: Duration) -> Watchdog {
        let waiting: Arc<Mutex<Option<Waiting>>> = Arc::new(Mutex::new(None));
        let shared = waiting.clone();
        let tick = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        std::thread::spawn(move || loop {
            std::thread::sleep(tick);
            let late = shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|w| w.since.elapsed() > timeout)
                .map(|w| (w.what, w.since.elapsed()));
            if let Some((what, waited)) = late {
                eprintln!(
                    "[rank {rank}] tunelab: {what} has waited {:.0} s for the other ranks (TUNELAB_DIST_TIMEOUT={:.0}); a rank has died or hangs: stopping this rank so the launcher ends the job; resume from the last checkpoint",
                    waited.as_secs_f64(),
                    timeout.as_secs_f64()
                );
                // No destructors or exit handlers: the engine may be blocked inside them.
                unsafe { libc::_exit(EXIT_TIMED_OUT) };
            }
        });
        Watchdog { waiting }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time `what` until the returned guard is dropped.
    pub fn watch(&self, what: &'static str) -> Watched<'_> {
        *self.lock() = Some(Waiting {
            what,
            since: Instant::now(),
        });
        Watched { dog: self }
    }
}
