//! The waiting message of `lockmgr run`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use lockmgr::{Holder, LockId};

use crate::RunArgs;

/// The waiting message: one updating line on a terminal, one line otherwise.
pub(crate) struct Progress {
    lock: LockId,
    holder: Option<Holder>,
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
        args: &RunArgs,
        per_attempt: Duration,
    ) -> Self {
        Progress {
            lock: lock.clone(),
            holder,
            tty: std::io::stderr().is_terminal(),
            quiet: args.quiet,
            started: Instant::now(),
            per_attempt,
            attempts: args.attempts.max(1),
            shown: false,
        }
    }

    fn held_by(&self) -> String {
        match &self.holder {
            Some(h) => format!("held by {h}"),
            None => "held by another owner".into(),
        }
    }

    pub(crate) fn show(&mut self, refresh: &impl Fn() -> Option<Holder>) {
        if self.quiet || (self.shown && !self.tty) {
            return;
        }
        if self.shown {
            // The holder may have changed hands meanwhile.
            self.holder = refresh().or(self.holder.take());
        }
        let waited = self.started.elapsed();
        let attempt = if self.per_attempt.is_zero() || self.per_attempt == Duration::MAX {
            1
        } else {
            (waited.as_secs_f64() / self.per_attempt.as_secs_f64()) as u32 + 1
        }
        .min(self.attempts);
        let line = format!(
            "lockmgr: waiting for lock {} ({}): {:.0}s, attempt {}/{}",
            self.lock,
            self.held_by(),
            waited.as_secs_f64(),
            attempt,
            self.attempts
        );
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
            eprintln!();
        }
    }
}
