//! What the crate reports through the [`metrics`](https://docs.rs/metrics)
//! facade, with the `metrics` feature: any exporter a program installs
//! (Prometheus, StatsD, ...) receives them. Without the feature every call
//! here is empty.
//!
//! The names, labels and meanings are in the crate docs' Metrics section.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::vocab::LockMode;

/// Where one lock's numbers go: its kind and metrics label.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct Meter {
    kind: &'static str,
    label: Arc<str>,
}

impl Meter {
    pub(crate) fn new(kind: &'static str, label: Option<&str>) -> Meter {
        Meter {
            kind,
            label: label.unwrap_or("").into(),
        }
    }

    /// A lock was won: by a waiting `acquire` that started at `waited_since`
    /// when that is given. (The start, not the wait: without the `metrics`
    /// feature the clock is not read again.)
    pub(crate) fn acquired(&self, mode: LockMode, contended: bool, waited_since: Option<Instant>) {
        #[cfg(feature = "metrics")]
        {
            describe();
            let mode = match mode {
                LockMode::Exclusive => "exclusive",
                LockMode::Shared => "shared",
            };
            let labels = [
                ("kind", self.kind.to_string()),
                ("mode", mode.to_string()),
                ("label", self.label.to_string()),
            ];
            metrics::counter!(ACQUISITIONS, &labels).increment(1);
            if contended {
                metrics::counter!(CONTENDED, &labels).increment(1);
            }
            if let Some(since) = waited_since {
                metrics::histogram!(WAIT, &self.labels()).record(since.elapsed().as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (mode, contended, waited_since);
    }

    /// An `acquire` ran out of its budget.
    pub(crate) fn timed_out(&self) {
        #[cfg(feature = "metrics")]
        {
            describe();
            metrics::counter!(TIMEOUTS, &self.labels()).increment(1);
        }
    }

    /// A lock was let go after `held`.
    #[cfg_attr(not(any(feature = "metrics", feature = "postgres")), allow(dead_code))]
    pub(crate) fn released(&self, held: Duration) {
        #[cfg(feature = "metrics")]
        {
            describe();
            metrics::histogram!(HELD, &self.labels()).record(held.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = held;
    }

    /// A lock was lost while held.
    #[cfg(feature = "postgres")]
    pub(crate) fn lost(&self) {
        #[cfg(feature = "metrics")]
        {
            describe();
            metrics::counter!(LOST, &self.labels()).increment(1);
        }
    }

    #[cfg(feature = "metrics")]
    fn labels(&self) -> [(&'static str, String); 2] {
        [
            ("kind", self.kind.to_string()),
            ("label", self.label.to_string()),
        ]
    }
}

#[cfg(feature = "metrics")]
const ACQUISITIONS: &str = "lockmgr_acquisitions_total";
#[cfg(feature = "metrics")]
const CONTENDED: &str = "lockmgr_contended_acquisitions_total";
#[cfg(feature = "metrics")]
const WAIT: &str = "lockmgr_wait_seconds";
#[cfg(feature = "metrics")]
const HELD: &str = "lockmgr_held_seconds";
#[cfg(feature = "metrics")]
const TIMEOUTS: &str = "lockmgr_timeouts_total";
#[cfg(feature = "metrics")]
const LOST: &str = "lockmgr_lost_total";

/// Tells the recorder what each metric is: once, at the first lock (the
/// recorder installed then gets the descriptions).
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(describe_all);
}

#[cfg(feature = "metrics")]
fn describe_all() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(ACQUISITIONS, Unit::Count, "Locks won, by acquire or a try.");
    describe_counter!(
        CONTENDED,
        Unit::Count,
        "Locks won whose first try found the lock held."
    );
    describe_histogram!(
        WAIT,
        Unit::Seconds,
        "How long each winning acquire took, from call to guard."
    );
    describe_histogram!(
        HELD,
        Unit::Seconds,
        "How long each lock was held, from guard to release."
    );
    describe_counter!(
        TIMEOUTS,
        Unit::Count,
        "Acquire calls that ran out of their budget."
    );
    describe_counter!(
        LOST,
        Unit::Count,
        "PostgreSQL locks lost while held (their session ended)."
    );
}
