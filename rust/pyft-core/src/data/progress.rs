//! A minimal progress line on stderr (`stage: done/total  rate/s`), redrawn at most 10×/s.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A thread-safe progress reporter; does nothing when disabled.
#[derive(Debug)]
pub struct Progress {
    stage: &'static str,
    total: usize,
    enabled: bool,
    start: Instant,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    /// A reporter for `total` items of `stage`.
    pub fn new(stage: &'static str, total: usize, enabled: bool) -> Progress {
        Progress { stage, total, enabled, start: Instant::now(), last: Mutex::new(None) }
    }

    /// Report that `done` items are finished.
    pub fn update(&self, done: usize) {
        if !self.enabled {
            return;
        }
        let Ok(mut last) = self.last.try_lock() else { return };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_millis(100)) && done < self.total {
            return;
        }
        *last = Some(now);
        let rate = done as f64 / now.duration_since(self.start).as_secs_f64().max(1e-9);
        let pct = if self.total == 0 { 100.0 } else { 100.0 * done as f64 / self.total as f64 };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}: {done}/{} ({pct:.0}%) {rate:.0}/s   ", self.stage, self.total);
        let _ = err.flush();
    }

    /// End the line.
    pub fn finish(&self) {
        if self.enabled {
            self.update(self.total);
            let _ = writeln!(std::io::stderr());
        }
    }
}
