//! `lockmgr status`: who holds a lock, as a sentence or a JSON object.

use std::path::Path;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use lockmgr::{Holder, Holders, LockFamily, LockKind, LockMgr, Status};
use serde::Serialize;

use crate::{fail, StatusArgs};

pub(crate) fn status(args: StatusArgs) -> ExitCode {
    let path = &args.lockfile;
    if let Err(e) = std::fs::symlink_metadata(path) {
        return fail(&format!(
            "cannot read lock file {}: {e}",
            crate::output::shown_path(path)
        ));
    }
    let lock = LockMgr::builder(path).kind(args.kind.into()).build();
    let mut status = match lock.status() {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let holders = match lock.holders() {
        Ok(h) => h,
        // No `/proc` (a bare container, a chroot): the state and the
        // record are still the answer; only the processes go unnamed.
        Err(e) if status != Status::Missing => {
            say!("lockmgr: the processes holding it cannot be named: {e}");
            return report(path, args.kind.name(), status, None, args.json);
        }
        Err(e) => return fail(&e.to_string()),
    };
    // The library checks a record only for a living process. Here every
    // holder is known too: when all are seen and none is the recorded
    // process, the record is an old one (its pid reused since, or a program
    // that writes no record holds the file). Only for a record of this host
    // (its name, as the library compares it): a process of a container on
    // this host, which may share the file, records its pid in its own
    // namespace, not the one the holders are seen in.
    // Only holders of the family asked about count: a `lockmgr` of the
    // other family may hold the file too, and its record is then no
    // account of who holds this lock (nor an old one): the holder is
    // unknown, and the lines below name both.
    let kind: LockKind = args.kind.into();
    let mut old_record = false;
    if let Status::Exclusive { holder: Some(h) } = &mut status {
        let here = nix::unistd::gethostname().is_ok_and(|name| *name == *h.host);
        // The process the record names, as the library tied it (a
        // record of another pid namespace names a pid of its own).
        let theirs = |p: &lockmgr::HoldingProcess| p.record.is_some();
        let seen_all = holders.unseen == 0 && holders.excluding(kind).next().is_some();
        if here && holders.other_family(kind).any(theirs) && !holders.excluding(kind).any(theirs) {
            status = Status::Exclusive { holder: None };
        } else if !h.stale && here && seen_all && !holders.excluding(kind).any(theirs) {
            h.stale = true;
            old_record = true;
        }
    }
    let on_host = OnHost {
        kind,
        holders: &holders,
        old_record,
    };
    report(path, args.kind.name(), status, Some(on_host), args.json)
}

/// What `/proc` says about a lock file, and the family that was asked about.
pub(crate) struct OnHost<'a> {
    kind: LockKind,
    holders: &'a Holders,
    /// The record names a living process that holds no lock on the file.
    old_record: bool,
}

impl OnHost<'_> {
    /// The lines after the status sentence.
    fn lines(&self) -> Vec<String> {
        host_lines(self.holders, Some(self.kind))
    }
}

/// One indented line per holder, then what else is known: a holder of the
/// other family than `asked`, unseen locks, waiters.
pub(crate) fn host_lines(h: &Holders, asked: Option<LockKind>) -> Vec<String> {
    let mut lines: Vec<String> = h.holding.iter().map(|p| format!("  held by {p}")).collect();
    if let Some(kind) = asked {
        if let Some(other) = h.other_family(kind).next() {
            // POSIX locks are seen by OFD ones: `--kind ofd` asks about them.
            let see_it = match other.family {
                LockFamily::Flock => LockKind::Flock,
                _ => LockKind::Ofd,
            };
            lines.push(format!(
                "  note: held with {family} locks, which {kind} locks do not see: you asked \
                     for {kind} (--kind {see_it} asks about the lock that program takes)",
                family = other.family
            ));
        }
    }
    if h.unseen > 0 {
        lines.push(format!(
            "  {} lock(s) whose process cannot be seen from here: another user's process \
                 (run as root to name it), or another host of a network file system",
            h.unseen
        ));
    }
    if h.blocked_requests > 0 {
        lines.push(format!(
            "  {} request(s) blocked in the kernel waiting for it",
            h.blocked_requests
        ));
    }
    for p in &h.open_without_lock {
        lines.push(format!(
            "  open without a lock (waiting, or about to lock): {p}"
        ));
    }
    lines
}

/// Prints a status and returns its exit code: 0 free, 1 held.
pub(crate) fn report(
    path: &Path,
    kind: &str,
    status: Status,
    on_host: Option<OnHost<'_>>,
    json: bool,
) -> ExitCode {
    if json {
        let mut object = StatusJson::new(path, kind, &status);
        if let Some(on_host) = &on_host {
            object.on_host = Some(HostJson::new(on_host.holders));
        }
        match serde_json::to_string(&object) {
            Ok(line) => answer!("{line}"),
            Err(e) => return fail(&format!("cannot write JSON: {e}")),
        }
    } else {
        let what = match &status {
            Status::Missing | Status::Free => "free".to_owned(),
            Status::Shared => "held shared".to_owned(),
            Status::Exclusive { holder: Some(h) }
                if on_host.as_ref().is_some_and(|o| o.old_record) =>
            {
                format!(
                "held exclusive; the record in the file names pid {} on host {}, which does not \
                 hold it (an old record)",
                h.pid,
                h.host.escape_debug()
            )
            }
            Status::Exclusive { holder: Some(h) } => format!("held exclusive by {h}"),
            Status::Exclusive { holder: None } => "held exclusive (holder unknown)".to_owned(),
            Status::Semaphore { permits, taken } => {
                format!("a semaphore of {permits} permits, {taken} taken")
            }
            _ => "in an unknown state".to_owned(),
        };
        answer!("{}: {what}", crate::output::shown_path(path));
        for line in on_host.iter().flat_map(OnHost::lines) {
            answer!("{line}");
        }
    }
    match status {
        Status::Missing | Status::Free => ExitCode::SUCCESS,
        // As for a lock: 0 when a `run` would get in at once.
        Status::Semaphore { permits, taken } if taken < permits => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// The `status --json` object. Its fields are stable and documented in the
/// README:
/// `{"lock": str, "kind": "ofd"|"flock"|"postgres",
///   "state": "free"|"exclusive"|"shared"|"semaphore",
///   "holder": null | {"pid": int, "host": str, "since": int, "since_utc": str,
///                     "label": str|null, "stale": bool}}`
/// with, for a semaphore only, `"permits": int, "taken": int`
/// and, for lock files, what `/proc` says:
/// `"holders": [{"pid": int, "command": str|null, "family": "flock"|"ofd"|"posix",
///               "mode": "exclusive"|"shared", "record": null | {as "holder"}}],
///  "unseen": int, "blocked_requests": int,
///  "open_without_lock": [{"pid": int, "command": str|null}]`
#[derive(Serialize)]
struct StatusJson<'a> {
    lock: String,
    kind: &'a str,
    state: &'static str,
    holder: Option<HolderJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    taken: Option<u32>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    on_host: Option<HostJson<'a>>,
}

/// What `/proc` says about a lock file: the `holders`, `unseen`,
/// `blocked_requests` and `open_without_lock` fields of `status` and
/// `list`.
#[derive(Serialize)]
pub(crate) struct HostJson<'a> {
    holders: Vec<ProcessJson<'a>>,
    unseen: usize,
    blocked_requests: usize,
    open_without_lock: Vec<OpenJson<'a>>,
}

impl<'a> HostJson<'a> {
    pub(crate) fn new(h: &'a Holders) -> Self {
        HostJson {
            holders: h
                .holding
                .iter()
                .map(|p| ProcessJson {
                    pid: p.pid,
                    command: p.command.as_deref(),
                    family: p.family.to_string(),
                    mode: p.mode.to_string(),
                    record: p.record.as_ref().map(HolderJson::new),
                    waiting: p.waiting.as_ref().map(WaitingJson::new),
                })
                .collect(),
            unseen: h.unseen,
            blocked_requests: h.blocked_requests,
            open_without_lock: h
                .open_without_lock
                .iter()
                .map(|p| OpenJson {
                    pid: p.pid,
                    command: p.command.as_deref(),
                    waiting: p.waiting.as_ref().map(WaitingJson::new),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct ProcessJson<'a> {
    pid: u32,
    command: Option<&'a str>,
    family: String,
    mode: String,
    record: Option<HolderJson<'a>>,
    waiting: Option<WaitingJson>,
}

#[derive(Serialize)]
struct OpenJson<'a> {
    pid: u32,
    command: Option<&'a str>,
    waiting: Option<WaitingJson>,
}

/// A process's waiting `lockmgr` tasks: `{"tasks": int, "since": int,
/// "since_utc": str}`.
#[derive(Serialize)]
struct WaitingJson {
    tasks: u64,
    since: u64,
    since_utc: String,
}

impl WaitingJson {
    fn new(w: &lockmgr::Waiting) -> Self {
        WaitingJson {
            tasks: w.tasks,
            since: w
                .since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            since_utc: w.since_utc(),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct HolderJson<'a> {
    pid: u32,
    host: &'a str,
    since: u64,
    since_utc: String,
    label: Option<&'a str>,
    stale: bool,
}

impl<'a> StatusJson<'a> {
    fn new(path: &Path, kind: &'a str, status: &'a Status) -> Self {
        let state = match status {
            Status::Missing | Status::Free => "free",
            Status::Shared => "shared",
            Status::Semaphore { .. } => "semaphore",
            _ => "exclusive",
        };
        let (permits, taken) = match status {
            Status::Semaphore { permits, taken } => (Some(*permits), Some(*taken)),
            _ => (None, None),
        };
        let holder = match status {
            Status::Exclusive { holder: Some(h) } => Some(HolderJson::new(h)),
            _ => None,
        };
        StatusJson {
            lock: path.to_string_lossy().into_owned(),
            kind,
            state,
            holder,
            permits,
            taken,
            on_host: None,
        }
    }
}

impl<'a> HolderJson<'a> {
    pub(crate) fn new(h: &'a Holder) -> Self {
        HolderJson {
            pid: h.pid,
            host: &h.host,
            since: h
                .since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            since_utc: h.since_utc(),
            label: h.label.as_deref(),
            stale: h.stale,
        }
    }
}
