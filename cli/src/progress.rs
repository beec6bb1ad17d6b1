//! The waiting message of `lockmgr run`.
//!
//! It names the holder the first try found and never looks again: finding
//! out would mean opening and closing the lock file, and every close wakes
//! every waiter on the host.

use std::io::IsTerminal;
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
            let attempt = attempt_at(waited, self.per_attempt, self.attempts);
            line.push_str(&format!(", attempt {attempt}/{}", self.attempts));
        }
        let line = if self.tty {
            format!("\r\x1b[K{line}")
        } else {
            format!("{line}\n")
        };
        // On a terminal, an update that cannot be shown at once is skipped
        // (the next comes in 500 ms); elsewhere the one line waits as any
        // other does.
        let patience = if self.tty {
            0
        } else {
            crate::output::PATIENCE_MS
        };
        crate::output::to_stderr(line.as_bytes(), patience);
        self.shown = true;
    }

    pub(crate) fn done(&self) {
        if self.shown && self.tty {
            say!("");
        }
    }
}

/// The attempt a wait is in after `waited`, 1 to `attempts`.
fn attempt_at(waited: Duration, per_attempt: Duration, attempts: u32) -> u32 {
    if per_attempt.is_zero() {
        return 1;
    }
    // `as` saturates: a wait of many attempts' length is the last one.
    let done = (waited.as_secs_f64() / per_attempt.as_secs_f64()) as u32;
    done.saturating_add(1).min(attempts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_shown_is_within_the_count() {
        let s = Duration::from_secs;
        assert_eq!(attempt_at(s(0), s(10), 3), 1);
        assert_eq!(attempt_at(s(15), s(10), 3), 2);
        assert_eq!(attempt_at(s(100), s(10), 3), 3);
        // `--attempts 4294967295 --wait 100`: attempts of 23 ns; after a
        // second, more of them than a u32 counts (before: an overflow).
        assert_eq!(
            attempt_at(s(100), Duration::from_nanos(23), u32::MAX),
            u32::MAX
        );
    }
}
