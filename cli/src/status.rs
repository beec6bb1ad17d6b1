//! `lockmgr status`: who holds a lock, as a sentence or a JSON object.

use std::path::Path;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use lockmgr::{Holder, LockMgr, Status};
use serde::Serialize;

use crate::{fail, StatusArgs};

pub(crate) fn status(args: StatusArgs) -> ExitCode {
    let path = &args.lockfile;
    if let Err(e) = std::fs::symlink_metadata(path) {
        return fail(&format!("cannot read lock file {}: {e}", path.display()));
    }
    let lock = LockMgr::builder(path).kind(args.kind.into()).build();
    let status = match lock.status() {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    report(path, args.kind.name(), status, args.json)
}

/// Prints a status and returns its exit code: 0 free, 1 held.
pub(crate) fn report(path: &Path, kind: &str, status: Status, json: bool) -> ExitCode {
    if json {
        let object = StatusJson::new(path, kind, &status);
        match serde_json::to_string(&object) {
            Ok(line) => println!("{line}"),
            Err(e) => return fail(&format!("cannot write JSON: {e}")),
        }
    } else {
        let what = match &status {
            Status::Missing | Status::Free => "free".to_owned(),
            Status::Shared => "held shared".to_owned(),
            Status::Exclusive { holder: Some(h) } => format!("held exclusive by {h}"),
            Status::Exclusive { holder: None } => "held exclusive (holder unknown)".to_owned(),
            _ => "in an unknown state".to_owned(),
        };
        println!("{}: {what}", path.display());
    }
    match status {
        Status::Missing | Status::Free => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// The `status --json` object. Its fields are stable and documented in the
/// README:
/// `{"lock": str, "kind": "ofd"|"flock"|"postgres", "state": "free"|"exclusive"|"shared",
///   "holder": null | {"pid": int, "host": str, "since": int, "since_utc": str,
///                     "label": str|null, "stale": bool}}`
#[derive(Serialize)]
struct StatusJson<'a> {
    lock: String,
    kind: &'a str,
    state: &'static str,
    holder: Option<HolderJson<'a>>,
}

#[derive(Serialize)]
struct HolderJson<'a> {
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
            _ => "exclusive",
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
        }
    }
}

impl<'a> HolderJson<'a> {
    fn new(h: &'a Holder) -> Self {
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
