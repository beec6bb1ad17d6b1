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
        let what = format!(
            "lockmgr: waiting for lock {} ({})",
            self.lock,
            self.held_by()
        );
        let mut counts = format!(": {:.0}s", waited.as_secs_f64());
        // A wait as long as it takes is one attempt: no count to show.
        if self.per_attempt != Duration::MAX {
            let attempt = attempt_at(waited, self.per_attempt, self.attempts);
            counts.push_str(&format!(", attempt {attempt}/{}", self.attempts));
        }
        let line = if self.tty {
            // A line wider than the terminal wraps, and `\r\x1b[K` clears
            // only its last row: each refresh would leave rows behind.
            let shown = match crate::sys::stderr_columns() {
                Some(columns) => fit_line(&what, &counts, columns),
                None => format!("{what}{counts}"),
            };
            format!("\r\x1b[K{shown}")
        } else {
            format!("{what}{counts}\n")
        };
        // On a terminal, an update that cannot be shown at once is skipped
        // (the next comes in 500 ms); elsewhere the one line waits as any
        // other does.
        let patience = if self.tty {
            0
        } else {
            crate::output::PATIENCE_MS
        };
        // Up before it is written: a warning written meanwhile then clears
        // a line that may not be there yet, which does no harm, rather than
        // land at its end.
        crate::output::display_up(self.tty);
        crate::output::to_stderr(line.as_bytes(), patience);
        self.shown = true;
    }

    pub(crate) fn done(&self) {
        // Ended, not cleared: the last state of the wait stays shown; a
        // warning that cleared it already ended the line.
        if self.shown && self.tty && crate::output::display_up(false) {
            say!("");
        }
    }
}

/// The display's line for a terminal `columns` wide: `what` cut short to
/// leave room for `counts`, and the whole cut too on a terminal narrower
/// than `counts` (the last column is left free: writing there makes some
/// terminals wrap).
fn fit_line(what: &str, counts: &str, columns: usize) -> String {
    let room = columns.saturating_sub(1);
    let line = format!(
        "{}{counts}",
        fitted(what, room.saturating_sub(counts.len()))
    );
    fitted(&line, room)
}

/// `text` cut to at most `columns` columns, its end shown as `...` when it
/// is cut. A character outside ASCII counts as two columns, as wide ones
/// take on a terminal: a cut may be shorter than it had to be, never longer.
fn fitted(text: &str, columns: usize) -> String {
    let width = |c: char| if c.is_ascii() { 1 } else { 2 };
    if text.chars().map(width).sum::<usize>() <= columns {
        return text.to_string();
    }
    let dots = if columns >= 3 { "..." } else { "" };
    let room = columns - dots.len();
    let mut used = 0;
    let kept: String = text
        .chars()
        .take_while(|&c| {
            used += width(c);
            used <= room
        })
        .collect();
    format!("{kept}{dots}")
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
    fn the_line_never_takes_the_last_column() {
        let what = "lockmgr: waiting for lock /tmp/h.lock (held by pid 1)";
        let counts = ": 12s, attempt 1/10";
        for columns in [0, 1, 5, 10, 20, 30, 60, 200] {
            let line = fit_line(what, counts, columns);
            assert!(line.chars().count() < columns.max(1), "{columns}: {line:?}");
        }
        // Wide enough: the counts whole, the rest cut first.
        assert!(fit_line(what, counts, 40).ends_with(counts));
    }

    #[test]
    fn text_is_fitted_to_the_columns_it_has() {
        assert_eq!(fitted("lockmgr: waiting", 40), "lockmgr: waiting");
        assert_eq!(fitted("lockmgr: waiting", 10), "lockmgr...");
        // Wide characters count twice.
        assert_eq!(fitted("ab\u{4e00}\u{4e00}cd", 7), "ab\u{4e00}...");
        assert_eq!(fitted("ab\u{4e00}\u{4e00}cd", 6), "ab...");
        assert_eq!(fitted("abcd", 2), "ab");
        assert_eq!(fitted("abc", 0), "");
    }

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
