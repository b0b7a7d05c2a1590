//! One shared cancel flag, so that Ctrl-C stops whatever is running.
//!
//! The terminal front end installs a Ctrl-C handler that calls [`CancelToken::cancel`]. Script
//! evaluation polls the flag between Rhai operations, and every long native loop in the core
//! (training steps, generation, file scans) calls [`CancelToken::check`] often enough to stop
//! within a fraction of a second. The flag is cleared before each new evaluation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A cheap-to-clone handle on one cancel flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
}

impl CancelToken {
    /// A fresh, un-cancelled token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask everything that watches this token to stop.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Forget an earlier request (called before each new evaluation).
    pub fn reset(&self) {
        self.flag.store(false, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// `Err(Error::Cancelled)` once a stop was requested; call this inside long loops.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sleep for `duration`, waking early (with `Error::Cancelled`) when cancelled.
    pub fn sleep(&self, duration: Duration) -> Result<()> {
        const TICK: Duration = Duration::from_millis(10);
        let end = Instant::now() + duration;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep(TICK.min(end - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_is_seen_by_clones_and_reset_clears_it() {
        let token = CancelToken::new();
        let clone = token.clone();
        assert!(clone.check().is_ok());
        token.cancel();
        assert!(matches!(clone.check(), Err(Error::Cancelled)));
        token.reset();
        assert!(clone.check().is_ok());
    }

    #[test]
    fn sleep_wakes_early_when_cancelled() {
        let token = CancelToken::new();
        let other = token.clone();
        let start = Instant::now();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.cancel();
        });
        let result = token.sleep(Duration::from_secs(30));
        waker.join().unwrap();
        assert!(matches!(result, Err(Error::Cancelled)));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
