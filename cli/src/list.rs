//! `lockmgr list`: every locked file of this host, or the lock files under
//! a directory (free ones too), with who holds them.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lockmgr::{locked_files, locked_files_among, LockedFile, Status};
use nix::fcntl::OFlag;
use serde::Serialize;

use crate::status::{host_lines, HostJson};
use crate::{fail, ListArgs};

/// The most files looked at under a directory: a listing is for people.
const MAX_FILES: usize = 100_000;

/// One listed file.
struct Row<'a> {
    path: Option<PathBuf>,
    locked: Option<&'a LockedFile>,
}

pub(crate) fn list(args: ListArgs) -> ExitCode {
    let mut files = Vec::new();
    if let Some(dir) = &args.dir {
        let mut cut = false;
        if let Err(e) = walk(dir, &mut files, &mut cut) {
            return fail(&format!(
                "cannot list {}: {e}",
                crate::output::shown_path(dir)
            ));
        }
        if cut {
            say!(
                "lockmgr: only the first {MAX_FILES} files under {} were looked at",
                crate::output::shown_path(dir)
            );
        }
    }
    let locked = match &args.dir {
        None => locked_files(),
        // Only the files under DIR are opened (for their records): every
        // open and close of a lock file wakes its waiters.
        Some(_) => locked_files_among(files.iter().map(|(_, meta)| meta)),
    };
    let locked = match locked {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot read the host's locks (/proc/locks): {e}")),
    };
    let rows: Vec<Row<'_>> = match &args.dir {
        None => locked
            .iter()
            .map(|l| Row {
                path: l.path.clone(),
                locked: Some(l),
            })
            .collect(),
        Some(_) => files
            .into_iter()
            .filter_map(|(path, meta)| {
                let locked = locked.iter().find(|l| l.is(&meta));
                (locked.is_some() || was_a_lock_file(&path)).then_some(Row {
                    path: Some(path),
                    locked,
                })
            })
            .collect(),
    };
    if args.json {
        let objects: Vec<FileJson<'_>> = rows.iter().map(FileJson::new).collect();
        match serde_json::to_string(&objects) {
            Ok(line) => answer!("{line}"),
            Err(e) => return fail(&format!("cannot write JSON: {e}")),
        }
    } else {
        for row in &rows {
            let name = match (&row.path, row.locked) {
                (Some(p), _) => crate::output::shown_path(p),
                (None, Some(l)) => {
                    format!("(no visible path: device {}, inode {})", l.device, l.inode)
                }
                (None, None) => continue,
            };
            match row.locked {
                None => answer!("{name}: free"),
                Some(l) => {
                    answer!("{name}: {}", state(l));
                    for line in host_lines(&l.holders, None) {
                        answer!("{line}");
                    }
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn state(l: &LockedFile) -> String {
    let h = &l.holders;
    if let Some(Status::Semaphore { permits, taken }) = l.semaphore {
        // Each permit is an exclusive lock on a byte of its own: "held
        // exclusive" would hide the permits still free.
        format!("a semaphore of {permits} permits, {taken} taken")
    } else if h.is_free() {
        "free, with requests waiting".into()
    } else if h.held_exclusively() {
        "held exclusive".into()
    } else {
        "held shared".into()
    }
}

/// The regular files under `dir`, without following symbolic links. An
/// entry that goes while it is looked at (lock files come and go:
/// `remove_on_release`, `/run/lock`) is not listed, and a directory below
/// `dir` that cannot be read is skipped; only `dir` itself must be read.
/// At a regular file past [`MAX_FILES`] it stops, and sets `cut`.
fn walk(
    dir: &Path,
    files: &mut Vec<(PathBuf, fs::Metadata)>,
    cut: &mut bool,
) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            let _ = walk(&entry.path(), files, cut);
            if *cut {
                return Ok(());
            }
        } else if meta.is_file() {
            if files.len() >= MAX_FILES {
                *cut = true;
                return Ok(());
            }
            files.push((entry.path(), meta));
        }
    }
    Ok(())
}

/// A free file that was a lock file: named like one, or holding a
/// `lockmgr` holder record.
fn was_a_lock_file(path: &Path) -> bool {
    let named = path.extension().is_some_and(|e| e == "lock" || e == "lck");
    named || starts_with_record(path)
}

fn starts_with_record(path: &Path) -> bool {
    const TAG: &[u8] = b"lockmgr-holder/";
    let mut head = [0u8; TAG.len()];
    // O_NONBLOCK: a file that became a FIFO since it was listed must not
    // hang the listing.
    let opened = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY).bits())
            .open(path)
    };
    opened
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == TAG)
}

/// One object of `list --json` (stable, documented in the README):
/// `{"path": str|null, "device": int, "inode": int,
///   "state": "free"|"exclusive"|"shared"|"waited-for"|"semaphore",
///   ["permits": int, "taken": int,] ...the fields of HostJson}`
#[derive(Serialize)]
struct FileJson<'a> {
    path: Option<String>,
    device: Option<u64>,
    inode: Option<u64>,
    state: &'static str,
    /// A semaphore's permits, and how many are taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    permits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    taken: Option<u32>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    on_host: Option<HostJson<'a>>,
}

impl<'a> FileJson<'a> {
    fn new(row: &Row<'a>) -> Self {
        let semaphore = row.locked.and_then(|l| match l.semaphore {
            Some(Status::Semaphore { permits, taken }) => Some((permits, taken)),
            _ => None,
        });
        let state = match row.locked.map(|l| &l.holders) {
            _ if semaphore.is_some() => "semaphore",
            None => "free",
            Some(h) if h.is_free() => "waited-for",
            Some(h) if h.held_exclusively() => "exclusive",
            Some(_) => "shared",
        };
        FileJson {
            path: row.path.as_ref().map(|p| p.to_string_lossy().into_owned()),
            device: row.locked.map(|l| l.device),
            inode: row.locked.map(|l| l.inode),
            state,
            permits: semaphore.map(|(permits, _)| permits),
            taken: semaphore.map(|(_, taken)| taken),
            on_host: row.locked.map(|l| HostJson::new(&l.holders)),
        }
    }
}
