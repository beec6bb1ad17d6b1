//! The waiting message of `lockmgr run`.
//!
//! It names the holder the first try found and never looks again: finding
//! out would mean opening and closing the lock file, and every close wakes
//! every waiter on the host.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use lockmgr::{Holder, LockId};

/// The waiting message: one updating line on a terminal, one line otherwise.
pub(crate) struct Progress {
    lock: LockId,
    holder: Option<Holder>,
    /// A semaphore's permit is waited for: no one holder to name.
    semaphore: bool,
    tty: bool,
    quiet: bool,
    started: Instant,
    per_attempt: Duration,
    attempts: u32,
    shown: bool,
}

impl Progress {
    pub(crate) fn new(
        lock: &LockId,
        holder: Option<Holder>,
        semaphore: bool,
        quiet: bool,
        per_attempt: Duration,
        attempts: u32,
    ) -> Self {
        Progress {
            lock: lock.clone(),
            holder,
            semaphore,
            tty: std::io::stderr().is_terminal(),
            quiet,
            started: Instant::now(),
            per_attempt,
            attempts,
            shown: false,
        }
    }

    fn held_by(&self) -> String {
        if self.semaphore {
            return "every permit taken".into();
        }
        match &self.holder {
            Some(h) => format!("held by {h}"),
            None => "held by another owner".into(),
        }
    }

    pub(crate) fn show(&mut self) {
        if self.quiet || (self.shown && !self.tty) {
            return;
        }
        let waited = self.started.elapsed();
        let mut line = format!(
            "lockmgr: waiting for lock {} ({}): {:.0}s",
            self.lock,
            self.held_by(),
            waited.as_secs_f64(),
        );
        // A wait as long as it takes is one attempt: no count to show.
        if self.per_attempt != Duration::MAX {
            let attempt = if self.per_attempt.is_zero() {
                1
            } else {
                (waited.as_secs_f64() / self.per_attempt.as_secs_f64()) as u32 + 1
            }
            .min(self.attempts);
            line.push_str(&format!(", attempt {attempt}/{}", self.attempts));
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.shown = true;
    }

    pub(crate) fn done(&self) {
        if self.shown && self.tty {
            say!("");
        }
    }
}
