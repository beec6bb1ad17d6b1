//! The tracing events an operator relies on: one info event when a call
//! first has to wait, naming the lock; a debug event per try; a debug event
//! on release; a warning when fencing tokens can go no higher.
#![deny(unsafe_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockmgr::LockMgr;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Records (level, message) of every event on the thread it is set on.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Level, String)>>>);

struct Message(String);
impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), m.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn waiting_is_announced_once_and_tries_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.lock");
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lock = LockMgr::builder(&path).max_attempts(3).build();
            let held = lock.try_acquire().unwrap();
            let err = lock
                .acquire(true, Duration::from_millis(20))
                .await
                .unwrap_err();
            assert!(err.is_contended());
            drop(held);
        });
    });
    let events = recorder.0.lock().unwrap().clone();
    let waiting = format!("waiting for lock on {}", path.display());
    let infos: Vec<_> = events.iter().filter(|(l, _)| *l == Level::INFO).collect();
    assert_eq!(infos.len(), 1, "{events:?}");
    assert!(infos[0].1.starts_with(&waiting), "{events:?}");
    assert!(
        infos[0]
            .1
            .contains(&format!("held by pid {}", std::process::id())),
        "the info event names the holder: {events:?}"
    );
    let tries = events
        .iter()
        .filter(|(l, m)| *l == Level::DEBUG && m == "lock try")
        .count();
    // The tries are: the holder's; the waiter's first; its try right after
    // it started watching the file (a release in between is not missed);
    // at most one for events of the process's watches that nobody had read
    // yet (another test's, in this binary), which are then read; its last
    // look when its budget (3 attempts of 20 ms, well inside the first
    // 500 ms: no periodic try) ran out.
    assert!((4..=5).contains(&tries), "{tries} tries: {events:?}");
    assert!(
        events
            .iter()
            .any(|(l, m)| *l == Level::DEBUG && m == "released lock"),
        "{events:?}"
    );
}

/// Lock calls made by `acquire(true, timeout)` on a held lock built with
/// `max_attempts`, counted from the debug event of each try.
fn tries_while_waiting(timeout: Duration, max_attempts: u32) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.lock");
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lock = LockMgr::builder(&path).max_attempts(max_attempts).build();
            let held = lock.try_acquire().unwrap();
            let err = lock.acquire(true, timeout).await.unwrap_err();
            assert!(err.is_contended(), "{err}");
            drop(held);
        });
    });
    let events = recorder.0.lock().unwrap();
    events
        .iter()
        .filter(|(l, m)| *l == Level::DEBUG && m == "lock try")
        .count()
}

/// Attempts far shorter than a timer tick do not turn the wait into a spin:
/// 20 million attempts of 1 ns (a 20 ms budget) make a handful of lock
/// calls, not one per attempt.
#[test]
fn tiny_timeouts_do_not_spin() {
    let tries = tries_while_waiting(Duration::from_nanos(1), 20_000_000);
    assert!(tries <= 8, "{tries} lock calls in a 20 ms wait");
}

/// A record whose fencing token is already the largest there is (written
/// by hand, or by a hostile writer) leaves every later holder without a
/// token: the token is never taken back to a smaller one, so the holder
/// goes without, and the operator is told why with a warning naming the
/// lock.
#[test]
fn a_fencing_token_at_its_largest_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fenced.lock");
    let lock = LockMgr::builder(&path).fencing_tokens(true).build();
    assert_eq!(lock.try_acquire().unwrap().fencing_token(), Some(1));
    let record = std::fs::read_to_string(&path).unwrap();
    assert!(record.contains(" token=1"), "{record:?}");
    std::fs::write(
        &path,
        record.replace(" token=1", &format!(" token={}", u64::MAX)),
    )
    .unwrap();

    let recorder = Recorder::default();
    let labelled = LockMgr::builder(&path)
        .fencing_tokens(true)
        .label("second")
        .build();
    let token = tracing::subscriber::with_default(recorder.clone(), || {
        labelled.try_acquire().unwrap().fencing_token()
    });
    assert_eq!(token, None, "no token past the largest");
    let events = recorder.0.lock().unwrap().clone();
    let warned: Vec<_> = events
        .iter()
        .filter(|(l, m)| *l == Level::WARN && m.contains("fencing token"))
        .collect();
    assert_eq!(warned.len(), 1, "{events:?}");
    assert!(
        warned[0].1.contains(&path.display().to_string()),
        "the warning names the lock: {events:?}"
    );
    let record = std::fs::read_to_string(&path).unwrap();
    assert!(
        record.contains(&format!(" token={}", u64::MAX)),
        "the record keeps the largest token: {record:?}"
    );
    assert!(
        record.contains(" label=second"),
        "the record names the new holder: {record:?}"
    );
}

/// Fencing asked for and no token to be had, because the lock file holds
/// another program's data or may only be read here, or records are turned
/// off: one warning per lock naming it and why, not silence (before: a
/// debug event, or nothing, and every holder went without a token; with
/// records turned off, nothing until the last case was added).
#[test]
fn a_lock_that_cannot_draw_fencing_tokens_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.lock");
    std::fs::write(&data, "somebody's data, not a record").unwrap();
    let read_only = dir.path().join("read-only.lock");
    std::fs::write(&read_only, "").unwrap();
    let mut perms = std::fs::metadata(&read_only).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&read_only, perms).unwrap();
    // Root writes a 0444 file all the same: nothing to see there.
    let writable = std::fs::OpenOptions::new()
        .write(true)
        .open(&read_only)
        .is_ok();
    let no_record = dir.path().join("no-record.lock");
    for (path, kind, record, why) in [
        (&data, lockmgr::LockKind::Ofd, true, "other data"),
        (&read_only, lockmgr::LockKind::Flock, true, "only be read"),
        (
            &no_record,
            lockmgr::LockKind::Ofd,
            false,
            "record_holder(false)",
        ),
    ] {
        if writable && path == &read_only {
            continue;
        }
        let lock = LockMgr::builder(path)
            .kind(kind)
            .fencing_tokens(true)
            .record_holder(record)
            .build();
        let recorder = Recorder::default();
        tracing::subscriber::with_default(recorder.clone(), || {
            for _ in 0..3 {
                assert_eq!(lock.try_acquire().unwrap().fencing_token(), None);
            }
        });
        let events = recorder.0.lock().unwrap().clone();
        let warned: Vec<_> = events
            .iter()
            .filter(|(l, m)| *l == Level::WARN && m.contains("no fencing token"))
            .collect();
        assert_eq!(warned.len(), 1, "{why}: {events:?}");
        assert!(
            warned[0].1.contains(&path.display().to_string()) && warned[0].1.contains(why),
            "{events:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&data).unwrap(),
        "somebody's data, not a record"
    );
}
