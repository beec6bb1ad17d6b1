//! The helper process of the cross-process tests: the test binary itself,
//! re-executed in this role (see [`super::helper_command`]). It uses only
//! the public API. Roles:
//!
//! - `hold PATH [OPTIONS]`: take the lock (waiting as long as needed), print
//!   `locked <pid>`, hold it until stdin closes, then release it.
//! - `posix-hold PATH`: the same with a POSIX record lock (`F_SETLKW`), as
//!   `lockf` and Python `fasteners` take it.
//! - `count PATH COUNTER MARKER ITERS TASKS [OPTIONS]`: TASKS tasks each
//!   increment the number in COUNTER ITERS times under the lock. Inside the
//!   critical section the marker file is created with O_EXCL and removed
//!   before leaving: if it already exists, two owners overlapped, and the
//!   helper exits with 3.
//!
//! - `journal-read JOURNAL`: read every record, report `records N bytes B
//!   peak_kib P` (P: peak resident memory).
//! - `journal-look JOURNAL [--wait]`: print the records, then try one
//!   append (see `journal_look`).
//! - `journal-lines JOURNAL`: append each line of stdin as a record, and
//!   say `ack` (or `error: <the error>`) after each.
//! - `journal-writer JOURNAL ID TASKS N [--large] [--flock]`: TASKS tasks
//!   each append N records to the journal, printing `ack <record id>` after
//!   each append that returned `Ok`. Records carry their length and a
//!   checksum, and some are larger than a page (with `--large`, all, about
//!   300 KB), so that a kill can tear one. With `--flock`, the journal's lock
//!   is a `flock` lock (and the default one after it).
//!
//! - `wait-without-threads PATH`: wait with no thread to be had (run it as
//!   an unprivileged user); `waiting`, then `locked <what woke the try>`.
//! - `fence PATH ITERS FILE [OPTIONS]`: ITERS times, take the lock, append
//!   the guard's fencing token as a line to FILE, release (use `--fencing`).
//! - `lead PATH [OPTIONS]`: campaign (`LockMgr::lead`); while leading,
//!   print `leading <pid>` and lead until stdin closes.
//! - `permit-hold PATH N`: take a permit of the N-permit semaphore, print
//!   `locked <slot>`, hold it until stdin closes.
//! - `permits PATH N ITERS TASKS DIR`: TASKS tasks take a permit ITERS times
//!   each, making DIR/slot-<slot> with O_EXCL inside (exit 3 on overlap).
//! - `crowd PATH TASKS`: TASKS tasks wait for the lock, each dropping it as
//!   soon as it wins; `all won` at the end.
//! - `holders PATH`: print `holding <pids, comma-separated> unseen <n>` (or
//!   `error: ...`), as `LockMgr::holders` finds them.
//! - `try PATH [OPTIONS]`: one try; `locked <pid>` (with ` token=<token>`
//!   when it drew one) and hold until stdin closes, or `error: <the
//!   error's message>`.
//!
//! - `raw-clone-drop PATH` and `raw-clone-record PATH`: before anything
//!   else starts a thread, win the lock once, then make a child with the
//!   bare `clone(2)` system call (no `fork` handlers run), in which,
//!   respectively, the guard of the lock the helper holds is dropped (the
//!   lock must stay held), or the lock is won (its holder record must name
//!   the child); print `ok` or `failed: <why>`.
//!
//! OPTIONS: `--shared`, `--flock`, `--remove` (remove_on_release),
//! `--label=TEXT`, `--no-record`, `--fencing` (fencing tokens; `hold` then
//! prints `locked <pid> token=<token>`), `--fsize=BYTES` (the largest file
//! the helper may write, `RLIMIT_FSIZE`; beyond it the kernel sends
//! SIGXFSZ, which ends the helper).
//!
//! With the `postgres` feature, for `lockmgr::pg`:
//!
//! - `pg-hold URL NAME [--shared] [--label=TEXT]`: take the lock, print
//!   `locked <fencing token>`, hold it until stdin closes, then release it.
//! - `pg-lead URL NAME`: campaign (`PgLockMgr::lead`); while leading, print
//!   `leading <fencing token>` until stdin closes (`stepped down`) or the
//!   lock is lost (`lost`).
//! - `pg-permits URL NAME N ITERS DIR`: ITERS times, take a permit, make
//!   DIR/slot-<slot> with O_EXCL inside (exit 3 on overlap), give it back.
//! - `pg-permit-hold URL NAME N`: take a permit of the N-permit
//!   `PgSemaphore` NAME, print `locked <slot>`, hold it until stdin closes.
//! - `pg-fence URL NAME ITERS FILE`: ITERS times, take the lock, append the
//!   guard's fencing token as a line to FILE, release.

use std::io::{BufRead, ErrorKind, Write};
use std::path::PathBuf;

use std::time::Duration;

use super::sys::{exit_child, raw_clone};
use lockmgr::{LockKind, LockMgr};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

fn usage() -> ! {
    eprintln!(
        "usage: hold PATH [OPTIONS] | posix-hold PATH \
         | count PATH COUNTER MARKER ITERS TASKS [OPTIONS] | journal-writer ... | pg-hold ... | pg-fence ..."
    );
    std::process::exit(2)
}

struct Options {
    shared: bool,
    lock: LockMgr,
}

fn options(path: &str, opts: &[&str]) -> Options {
    let mut b = LockMgr::builder(path);
    let mut shared = false;
    for opt in opts {
        match *opt {
            "--shared" => shared = true,
            "--flock" => b = b.kind(LockKind::Flock),
            "--remove" => b = b.remove_on_release(true),
            "--no-record" => b = b.record_holder(false),
            "--fencing" => b = b.fencing_tokens(true),
            o if o.starts_with("--label=") => b = b.label(&o["--label=".len()..]),
            o if o.starts_with("--fsize=") => {
                let bytes = o["--fsize=".len()..].parse().unwrap_or_else(|_| usage());
                let (_, hard) = getrlimit(Resource::RLIMIT_FSIZE).expect("RLIMIT_FSIZE");
                setrlimit(Resource::RLIMIT_FSIZE, bytes, hard).expect("RLIMIT_FSIZE");
            }
            _ => usage(),
        }
    }
    Options {
        shared,
        lock: b.build(),
    }
}

fn wait_for_stdin_eof() {
    let mut line = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut line)
        .is_ok_and(|n| n > 0)
    {
        line.clear();
    }
}

fn say_locked() {
    println!("locked {}", std::process::id());
    std::io::stdout().flush().expect("flush");
}

/// `locked <pid>`, with ` token=<token>` when the guard drew one.
fn say_held(guard: &lockmgr::LockGuard) {
    match guard.fencing_token() {
        Some(token) => {
            println!("locked {} token={token}", std::process::id());
            std::io::stdout().flush().expect("flush");
        }
        None => say_locked(),
    }
}

/// `raw-clone-drop`: a raw clone child's drop of the parent's guard leaves
/// the parent's lock held.
fn raw_clone_drop(path: &str) -> ! {
    let lock = won_once(path);
    let guard = lock.try_acquire().expect("the lock");
    let Some(child) = raw_clone() else {
        drop(guard);
        exit_child(0);
    };
    let verdict = match child_status(child) {
        0 if LockMgr::new(path)
            .try_acquire()
            .is_err_and(|e| e.is_contended()) =>
        {
            "ok".to_owned()
        }
        0 => "failed: the child's drop released the parent's lock".to_owned(),
        status => format!("failed: the child exited with {status}"),
    };
    drop(guard);
    say_and_exit(&verdict)
}

/// `raw-clone-record`: a raw clone child that wins the lock records itself.
fn raw_clone_record(path: &str) -> ! {
    let lock = won_once(path);
    let Some(child) = raw_clone() else {
        let Ok(guard) = lock.try_acquire() else {
            exit_child(2);
        };
        let record = std::fs::read_to_string(path).unwrap_or_default();
        let me = format!(" pid={} ", std::process::id());
        drop(guard);
        exit_child(if record.contains(&me) { 0 } else { 1 });
    };
    say_and_exit(match child_status(child) {
        0 => "ok",
        1 => "failed: the child's holder record did not name it",
        _ => "failed: the child could not take the lock",
    })
}

/// `nested-pid-namespace-record`, run as pid 1 of a pid namespace: a raw
/// clone child made in a pid namespace of its own, pid 1 there too, records
/// its own namespace as its holder's, not its parent's.
fn nested_pid_namespace_record(path: &str) -> ! {
    let lock = won_once(path);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).expect("unshare(CLONE_NEWPID)");
    let Some(child) = raw_clone() else {
        if std::process::id() != 1 {
            exit_child(3);
        }
        let Ok(guard) = lock.try_acquire() else {
            exit_child(2);
        };
        let record = std::fs::read_to_string(path).unwrap_or_default();
        let own = std::fs::read_link("/proc/self/ns/pid").unwrap_or_default();
        let own = own.to_string_lossy();
        let own = own.trim_start_matches("pid:[").trim_end_matches(']');
        drop(guard);
        exit_child(if record.contains(&format!(" pidns={own} ")) {
            0
        } else {
            1
        });
    };
    say_and_exit(match child_status(child) {
        0 => "ok",
        1 => "failed: the child's holder record named its parent's pid namespace",
        3 => "failed: the child is not pid 1 (run this as pid 1 of a pid namespace)",
        _ => "failed: the child could not take the lock",
    })
}

/// The lock at `path`, won and released once, so that whatever this
/// process remembers of itself is set before it makes a child.
fn won_once(path: &str) -> LockMgr {
    let lock = LockMgr::new(path);
    drop(lock.try_acquire().expect("the lock"));
    lock
}

/// The exit status of `child` (-1 if it did not exit).
fn child_status(child: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    match waitpid(child, None) {
        Ok(WaitStatus::Exited(_, status)) => status,
        _ => -1,
    }
}

fn say_and_exit(line: &str) -> ! {
    println!("{line}");
    std::io::stdout().flush().expect("flush");
    std::process::exit(0)
}

fn posix_hold(path: &str) {
    use nix::fcntl::{fcntl, FcntlArg};
    use nix::libc;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open");
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(&file, FcntlArg::F_SETLKW(&fl)).expect("F_SETLKW");
    say_locked();
    wait_for_stdin_eof();
}

/// Runs the role `args` names, then ends the process (so that the test
/// harness around it prints nothing more).
pub fn run(args: Vec<String>) -> ! {
    // Before the runtime starts threads: a child made by a raw `clone`
    // gets no reset of locks another thread holds (the allocator's).
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["raw-clone-drop", path] => raw_clone_drop(path),
        ["raw-clone-record", path] => raw_clone_record(path),
        ["nested-pid-namespace-record", path] => nested_pid_namespace_record(path),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["hold", path, opts @ ..] => rt.block_on(hold(options(path, opts))),
        ["try", path, opts @ ..] => try_hold(options(path, opts)),
        ["fence", path, iters, file, opts @ ..] => rt.block_on(fence(
            options(path, opts),
            iters.parse().unwrap_or_else(|_| usage()),
            file,
        )),
        ["wait-without-threads", path] => wait_without_threads(path),
        ["wait-few-fds", path, free] => {
            wait_few_fds(path, free.parse().unwrap_or_else(|_| usage()))
        }
        ["revive-rounds", path, rounds, files] => revive_rounds(
            path,
            rounds.parse().unwrap_or_else(|_| usage()),
            files.parse().unwrap_or_else(|_| usage()),
        ),
        ["holders", path] => holders(path),
        ["crowd", path, tasks] => {
            rt.block_on(crowd(path, tasks.parse().unwrap_or_else(|_| usage())))
        }
        ["permit-hold", path, n] => {
            rt.block_on(permit_hold(path, n.parse().unwrap_or_else(|_| usage())))
        }
        ["permits", path, n, iters, tasks, dir] => rt.block_on(permits(
            path,
            n.parse().unwrap_or_else(|_| usage()),
            iters.parse().unwrap_or_else(|_| usage()),
            tasks.parse().unwrap_or_else(|_| usage()),
            PathBuf::from(dir),
        )),
        ["lead", path, opts @ ..] => rt.block_on(lead(options(path, opts))),
        ["posix-hold", path] => posix_hold(path),
        ["journal-read", path] => rt.block_on(journal_read(PathBuf::from(path))),
        ["journal-lines", path] => rt.block_on(journal_lines(PathBuf::from(path))),
        ["journal-look", path, opts @ ..] => {
            rt.block_on(journal_look(PathBuf::from(path), opts.contains(&"--wait")))
        }
        ["journal-writer", path, id, tasks, n, opts @ ..] => rt.block_on(journal_writer(
            PathBuf::from(path),
            id.parse().unwrap_or_else(|_| usage()),
            tasks.parse().unwrap_or_else(|_| usage()),
            n.parse().unwrap_or_else(|_| usage()),
            opts.contains(&"--large"),
            opts.contains(&"--flock"),
        )),
        ["count", path, counter, marker, iters, tasks, opts @ ..] => rt.block_on(count(
            options(path, opts),
            PathBuf::from(counter),
            PathBuf::from(marker),
            iters.parse().unwrap_or_else(|_| usage()),
            tasks.parse().unwrap_or_else(|_| usage()),
        )),
        #[cfg(feature = "postgres")]
        ["pg-hold", url, name, opts @ ..] => rt.block_on(pg::hold(url, name, opts)),
        #[cfg(feature = "postgres")]
        ["pg-lead", url, name] => rt.block_on(pg::lead(url, name)),
        #[cfg(feature = "postgres")]
        ["pg-fork", url, name] => pg::fork(url, name),
        #[cfg(feature = "postgres")]
        ["pg-permits", url, name, n, iters, dir] => rt.block_on(pg::permits(
            url,
            name,
            n.parse().unwrap_or_else(|_| usage()),
            iters.parse().unwrap_or_else(|_| usage()),
            PathBuf::from(dir),
        )),
        #[cfg(feature = "postgres")]
        ["pg-permit-hold", url, name, n] => rt.block_on(pg::permit_hold(
            url,
            name,
            n.parse().unwrap_or_else(|_| usage()),
        )),
        #[cfg(feature = "postgres")]
        ["pg-fence", url, name, iters, file] => rt.block_on(pg::fence(
            url,
            name,
            iters.parse().unwrap_or_else(|_| usage()),
            file,
        )),
        _ => usage(),
    }
    // Flush what the role printed before leaving without unwinding.
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

#[cfg(feature = "postgres")]
mod pg {
    use std::io::Write;
    use std::time::Duration;

    use lockmgr::pg::PgLockMgr;

    pub async fn hold(url: &str, name: &str, opts: &[&str]) {
        let mut b = PgLockMgr::builder(url, name);
        let mut shared = false;
        for opt in opts {
            match *opt {
                "--shared" => shared = true,
                o if o.starts_with("--label=") => b = b.label(&o["--label=".len()..]),
                o if o.starts_with("--fence=") => b = b.fence_table(&o["--fence=".len()..]),
                _ => super::usage(),
            }
        }
        let lock = b.build().expect("lock");
        let guard = if shared {
            lock.acquire_shared(true, Duration::MAX).await
        } else {
            lock.acquire(true, Duration::MAX).await
        }
        .expect("acquire");
        println!("locked {}", guard.fencing_token());
        std::io::stdout().flush().expect("flush");
        tokio::task::spawn_blocking(super::wait_for_stdin_eof)
            .await
            .expect("stdin reader");
        guard.release().await.expect("release");
    }

    /// Holds the lock NAME, on a shared session driven by a thread of this
    /// process, and forks. The child, each step within 20 s: takes and
    /// lets go NAME-b; finds NAME held (by the parent); fails to release the
    /// guard it inherited (it is the parent's); still finds NAME held, and
    /// its status exclusive. It prints `child: ok`, or what went wrong, and
    /// the parent, which then lets NAME go on its own session, exits as the
    /// child did (3 if its own release failed).
    pub fn fork(url: &str, name: &str) {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        };
        let lock = PgLockMgr::new(url, name).expect("lock");
        let other = PgLockMgr::new(url, format!("{name}-b")).expect("lock");
        let guard = runtime()
            .block_on(lock.try_acquire())
            .expect("the parent's try");
        // The child makes a runtime and threads of its own, as a
        // pre-forking server would; no lock of this process's other threads
        // is held now (the parent's runtime is idle).
        let Some(child) = super::super::sys::fork() else {
            let bound = Duration::from_secs(20);
            let said = runtime().block_on(async {
                let within = |what: &str| format!("{what} did not return");
                match tokio::time::timeout(bound, other.try_acquire()).await {
                    Err(_) => return within("the try"),
                    Ok(Err(e)) => return format!("the try failed: {e}"),
                    Ok(Ok(g)) => {
                        if let Err(e) = g.release().await {
                            return format!("the release failed: {e}");
                        }
                    }
                }
                let held = || async {
                    match tokio::time::timeout(bound, lock.try_acquire()).await {
                        Err(_) => Some(within("the try of the parent's lock")),
                        Ok(Err(e)) if e.is_contended() => None,
                        Ok(other) => Some(format!("the parent's lock: {other:?}")),
                    }
                };
                if let Some(wrong) = held().await {
                    return wrong;
                }
                match tokio::time::timeout(bound, guard.release()).await {
                    Err(_) => return within("the inherited guard's release"),
                    Ok(Ok(())) => return "the inherited guard's release said ok".into(),
                    Ok(Err(_)) => {}
                }
                if let Some(wrong) = held().await {
                    return format!("after the inherited guard's release: {wrong}");
                }
                match tokio::time::timeout(bound, lock.status()).await {
                    Err(_) => within("the status"),
                    Ok(Ok(lockmgr::Status::Exclusive { .. })) => "ok".into(),
                    Ok(other) => format!("the status: {other:?}"),
                }
            });
            println!("child: {said}");
            std::io::stdout().flush().expect("flush");
            super::super::sys::exit_child(i32::from(said != "ok"))
        };
        let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
        if runtime().block_on(guard.release()).is_err() {
            std::process::exit(3);
        }
        match status {
            nix::sys::wait::WaitStatus::Exited(_, code) => std::process::exit(code),
            other => panic!("the child: {other:?}"),
        }
    }

    /// Campaigns; while leading prints `leading <fencing token>` and leads
    /// until stdin closes (then `stepped down`) or the lock is lost (then
    /// `lost`).
    pub async fn lead(url: &str, name: &str) {
        let lock = PgLockMgr::builder(url, name)
            .label("replica")
            .build()
            .expect("lock");
        let led = lock
            .lead(|term| async move {
                println!("leading {}", term.fencing_token.expect("a token"));
                std::io::stdout().flush().expect("flush");
                tokio::task::spawn_blocking(super::wait_for_stdin_eof)
                    .await
                    .expect("stdin reader");
            })
            .await
            .expect("lead");
        match led {
            lockmgr::pg::Led::Finished(()) => println!("stepped down"),
            _ => println!("lost"),
        }
    }

    /// ITERS times, takes a permit of the N-permit semaphore NAME; inside,
    /// makes DIR/slot-<slot> with O_EXCL (exit 3 if it is there: two
    /// holders of one slot), then gives it back.
    pub async fn permits(url: &str, name: &str, n: u32, iters: u32, dir: std::path::PathBuf) {
        let sem = lockmgr::pg::PgSemaphore::new(url, name, n).expect("semaphore");
        for _ in 0..iters {
            super::log_wanting(&dir);
            let permit = sem
                .acquire(true, Duration::from_secs(60))
                .await
                .expect("permit");
            assert!(permit.slot() < n);
            let marker = dir.join(format!("slot-{}", permit.slot()));
            super::enter(&marker);
            super::log_holding(&dir);
            // Give every other process the chance to break in.
            tokio::task::yield_now().await;
            std::fs::remove_file(&marker).expect("remove marker");
            permit.release().await.expect("release");
        }
    }

    /// Takes a permit of the N-permit semaphore NAME, prints `locked
    /// <slot>`, holds it until stdin closes.
    pub async fn permit_hold(url: &str, name: &str, n: u32) {
        let permit = lockmgr::pg::PgSemaphore::new(url, name, n)
            .expect("semaphore")
            .acquire(true, Duration::MAX)
            .await
            .expect("permit");
        println!("locked {}", permit.slot());
        std::io::stdout().flush().expect("flush");
        tokio::task::spawn_blocking(super::wait_for_stdin_eof)
            .await
            .expect("stdin reader");
        permit.release().await.expect("release");
    }

    pub async fn fence(url: &str, name: &str, iters: u32, file: &str) {
        let lock = PgLockMgr::new(url, name).expect("lock");
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .expect("open");
        for _ in 0..iters {
            let guard = lock
                .acquire(true, Duration::from_secs(60))
                .await
                .expect("acquire");
            // Nobody else may be inside: a second holder finds the marker.
            let inside = format!("{file}.inside");
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&inside)
                .expect("two holders at once: the marker was there");
            // One write(2) per line, under the lock: the file's order is
            // the order of the holdings.
            out.write_all(format!("{}\n", guard.fencing_token()).as_bytes())
                .expect("write");
            // A round trip to the server while inside, for others to overlap.
            lock.status().await.expect("status");
            std::fs::remove_file(&inside).expect("remove the marker");
            guard.release().await.expect("release");
        }
    }
}

/// Campaigns; while leading prints `leading <pid>` and leads until stdin
/// closes; then prints `stepped down`.
async fn lead(o: Options) {
    o.lock
        .lead(|_term| async {
            println!("leading {}", std::process::id());
            std::io::stdout().flush().expect("flush");
            tokio::task::spawn_blocking(wait_for_stdin_eof)
                .await
                .expect("stdin reader");
        })
        .await
        .expect("lead");
    println!("stepped down");
}

/// Takes a permit of the N-permit semaphore at PATH, prints
/// `locked <slot>`, holds it until stdin closes.
async fn permit_hold(path: &str, n: u32) {
    let permit = lockmgr::Semaphore::new(path, n)
        .acquire(true, Duration::MAX)
        .await
        .expect("permit");
    println!("locked {}", permit.slot());
    std::io::stdout().flush().expect("flush");
    tokio::task::spawn_blocking(wait_for_stdin_eof)
        .await
        .expect("stdin reader");
    permit.release().expect("release");
}

/// TASKS tasks each take a permit ITERS times; inside, each makes the
/// marker DIR/slot-<slot> with O_EXCL (a second holder of a slot finds it,
/// and the helper exits with 3) and checks the slot is below N.
async fn permits(path: &str, n: u32, iters: u32, tasks: u32, dir: PathBuf) {
    let sem = lockmgr::Semaphore::new(path, n);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (sem, dir) = (sem.clone(), dir.clone());
        set.spawn(async move {
            for _ in 0..iters {
                log_wanting(&dir);
                let permit = sem
                    .acquire(true, Duration::from_secs(60))
                    .await
                    .expect("permit");
                assert!(permit.slot() < n, "slot {} of {n}", permit.slot());
                let marker = dir.join(format!("slot-{}", permit.slot()));
                enter(&marker);
                log_holding(&dir);
                tokio::task::yield_now().await;
                std::fs::remove_file(&marker).expect("remove marker");
                drop(permit);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
}

/// TASKS tasks wait for the lock (as long as it takes), each dropping it
/// at once when it wins; prints `all won` when every one has.
async fn crowd(path: &str, tasks: u32) {
    let lock = LockMgr::new(path);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let lock = lock.clone();
        set.spawn(async move { drop(lock.acquire(true, Duration::MAX).await.expect("acquire")) });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
    println!("all won");
}

/// Makes the marker `marker` with `O_EXCL` on entering a critical section:
/// if it is there already, two holders overlapped, and the helper says
/// `OVERLAP` and exits with 3.
fn enter(marker: &std::path::Path) {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            println!("OVERLAP");
            std::process::exit(3);
        }
        Err(e) => panic!("marker: {e}"),
    }
}

/// Appends `hold <pid>` to DIR/order: one write, made while holding, so the
/// file's order is the order of the holdings (see `super::holding_log`).
fn log_holding(dir: &std::path::Path) {
    log_event(dir, "hold");
}

/// Appends `want <pid>` to DIR/order, just before asking for a holding.
fn log_wanting(dir: &std::path::Path) {
    log_event(dir, "want");
}

fn log_event(dir: &std::path::Path, what: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("order"))
        .and_then(|mut log| log.write_all(format!("{what} {}\n", std::process::id()).as_bytes()))
        .expect("order log");
}

/// `LockMgr::holders`, as this process (and its user) can see them.
fn holders(path: &str) {
    match LockMgr::new(path).holders() {
        Ok(h) => {
            let pids: Vec<String> = h.holding.iter().map(|p| p.pid.to_string()).collect();
            println!("holding {} unseen {}", pids.join(","), h.unseen);
        }
        Err(e) => println!("error: {e}"),
    }
}

/// With every inotify instance of its user taken (so that each wait goes
/// to the kernel's queue at once), `rounds` times: takes the lock; lets a
/// second task wait for it a moment and give up (its kernel wait is
/// abandoned, its helper still blocked); releases it (the kernel grants the
/// abandoned wait, whose helper gives it back) and at once acquires it
/// again, which must win: the lock is free but for an instant. As many
/// times at once on `files` lock files (`PATH.0`, `PATH.1`, ...), with
/// every event logged to stderr, as an operator's debug log would. Prints
/// `no inotify` once the instances are taken, then `failed N` (re-acquires
/// that did not win within 2 s, all files together).
fn revive_rounds(path: &str, rounds: u32, files: u32) {
    tracing::subscriber::set_global_default(super::OnEvent(debug_line))
        .expect("the only subscriber");
    // Room for every instance and the runtime's descriptors after them,
    // so that the instances run out before the descriptors do.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("RLIMIT_NOFILE");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("RLIMIT_NOFILE");
    let mut taken = Vec::new();
    while let Ok(instance) = inotify::Inotify::init() {
        taken.push(instance);
        assert!(taken.len() < 100_000, "no limit on inotify instances");
    }
    assert!(
        (taken.len() as u64) + 64 < hard,
        "descriptors ran out before inotify instances ({} taken)",
        taken.len()
    );
    println!("no inotify");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let failed: u32 = rt.block_on(async {
        let each = (0..files).map(|i| tokio::spawn(revive_round(format!("{path}.{i}"), rounds)));
        let mut failed = 0;
        for file in each.collect::<Vec<_>>() {
            failed += file.await.expect("task");
        }
        failed
    });
    println!("failed {failed}");
    drop(taken);
}

/// Writes an event to stderr as a line: what an operator who turned on
/// debug logging gets (stderr is a pipe here).
fn debug_line(event: &tracing::Event<'_>) {
    struct Line(String);
    impl tracing::field::Visit for Line {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    let mut line = Line(format!(
        "{:?} {}",
        std::time::SystemTime::now(),
        event.metadata().target()
    ));
    event.record(&mut line);
    eprintln!("{}", line.0);
}

/// `rounds` rounds of [`revive_rounds`] on the lock file `path`: how many
/// re-acquires failed.
async fn revive_round(path: String, rounds: u32) -> u32 {
    let lock = LockMgr::builder(path).max_attempts(1).build();
    let mut failed = 0;
    for _ in 0..rounds {
        let held = lock
            .acquire(true, Duration::from_secs(2))
            .await
            .expect("the lock at the round's start");
        let second = lock.clone();
        let gave_up = tokio::spawn(async move {
            second
                .acquire(true, Duration::from_millis(20))
                .await
                .map(drop)
        });
        assert!(gave_up.await.expect("task").is_err(), "two holders");
        drop(held);
        match lock.acquire(true, Duration::from_secs(2)).await {
            Ok(again) => drop(again),
            Err(_) => failed += 1,
        }
    }
    failed
}

/// Waits for the lock; once the waiter has made its first try (its lock
/// file open, its watch set), takes every descriptor but `free` (under a
/// limit of 256), and prints `waiting`; then prints `locked`, or
/// `failed: <error>`.
fn wait_few_fds(path: &str, free: usize) {
    let tries = super::TryLog::default();
    let _log = tries.install();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("RLIMIT_NOFILE");
    setrlimit(Resource::RLIMIT_NOFILE, 256.min(soft), hard).expect("RLIMIT_NOFILE");
    let mut filler = Vec::new();
    let lock = LockMgr::new(path);
    rt.block_on(async {
        let acquire = lock.acquire(true, Duration::MAX);
        tokio::pin!(acquire);
        let mut said = false;
        let outcome = loop {
            tokio::select! {
                r = &mut acquire => break r,
                _ = tokio::task::yield_now(), if !said => {
                    if !tries.tries().is_empty() {
                        while let Ok(f) = std::fs::File::open("/dev/null") {
                            filler.push(f);
                        }
                        filler.truncate(filler.len().saturating_sub(free));
                        println!("waiting");
                        std::io::stdout().flush().expect("flush");
                        said = true;
                    }
                }
            }
        };
        match outcome {
            Ok(guard) => {
                println!("locked");
                drop(guard);
            }
            Err(e) => println!("failed: {e}"),
        }
        std::io::stdout().flush().expect("flush");
    });
    drop(filler);
}

/// Waits for the lock with no thread to be had (`RLIMIT_NPROC` reached, as
/// for a user at its process limit): prints `waiting` once the waiter has
/// made a few tries, then `locked <what woke the winning try>`.
fn wait_without_threads(path: &str) {
    let tries = super::TryLog::default();
    let _log = tries.install();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // From here on, no new thread: not the kernel wait's helper, not the
    // inotify reader (this must not run as root, which the limit spares).
    setrlimit(Resource::RLIMIT_NPROC, 0, 0).expect("RLIMIT_NPROC");
    assert!(
        std::thread::Builder::new().spawn(|| {}).is_err(),
        "threads can still be started"
    );
    let lock = LockMgr::new(path);
    rt.block_on(async {
        let acquire = lock.acquire(true, Duration::MAX);
        tokio::pin!(acquire);
        let mut said = false;
        let guard = loop {
            tokio::select! {
                r = &mut acquire => break r.expect("acquire"),
                _ = tokio::task::yield_now(), if !said => {
                    if tries.tries().len() >= 3 {
                        println!("waiting");
                        std::io::stdout().flush().expect("flush");
                        said = true;
                    }
                }
            }
        };
        println!("locked {}", tries.winner_woken_by());
        std::io::stdout().flush().expect("flush");
        drop(guard);
    });
}

/// One try: prints `locked <pid>` and holds until stdin closes, or prints
/// `error: <the error>`.
fn try_hold(o: Options) {
    let got = if o.shared {
        o.lock.try_acquire_shared()
    } else {
        o.lock.try_acquire()
    };
    match got {
        Ok(guard) => {
            say_held(&guard);
            wait_for_stdin_eof();
            guard.release().expect("release");
        }
        Err(e) => {
            println!("error: {e}");
            std::io::stdout().flush().expect("flush");
        }
    }
}

async fn hold(o: Options) {
    let guard = if o.shared {
        o.lock.acquire_shared(true, Duration::MAX).await
    } else {
        o.lock.acquire(true, Duration::MAX).await
    }
    .expect("acquire");
    say_held(&guard);
    // Block (on a blocking thread) until the test closes our stdin.
    tokio::task::spawn_blocking(wait_for_stdin_eof)
        .await
        .expect("stdin reader");
    guard.release().expect("release");
}

async fn count(o: Options, counter: PathBuf, marker: PathBuf, iters: u32, tasks: u32) {
    let lock = o.lock;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (lock, counter, marker) = (lock.clone(), counter.clone(), marker.clone());
        set.spawn(async move {
            for _ in 0..iters {
                let guard = lock
                    .acquire(true, Duration::from_secs(60))
                    .await
                    .expect("acquire");
                enter(&marker);
                let n: u64 = std::fs::read_to_string(&counter)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                // Give every other task and process the chance to break in.
                tokio::task::yield_now().await;
                std::fs::write(&counter, format!("{}\n", n + 1)).expect("write counter");
                std::fs::remove_file(&marker).expect("remove marker");
                drop(guard);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
}

/// ITERS times: take the lock, append the guard's fencing token as a line
/// to FILE (one write, under the lock: the file's order is the order of the
/// holdings), release.
async fn fence(o: Options, iters: u32, file: &str) {
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .expect("open");
    for _ in 0..iters {
        let guard = o
            .lock
            .acquire(true, Duration::from_secs(60))
            .await
            .expect("acquire");
        let token = guard.fencing_token().expect("a token");
        out.write_all(format!("{token}\n").as_bytes())
            .expect("write");
        // Give every other process the chance to break in.
        tokio::task::yield_now().await;
        drop(guard);
    }
}

/// Reads the whole journal and reports `records N bytes B peak_kib P`, P
/// being this process's peak resident memory (`VmHWM`).
async fn journal_read(path: PathBuf) {
    let journal = lockmgr::journal::Journal::open(path)
        .await
        .expect("open journal");
    let read = journal.records().await.expect("records");
    let (mut n, mut bytes) = (0usize, 0usize);
    for record in read {
        n += 1;
        bytes += record.expect("a record").len();
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .expect("VmHWM");
    println!("records {n} bytes {bytes} peak_kib {peak}");
}

/// The record `id` with a payload of `len` bytes: `<id> len=<len> sum=<sum> <payload>`.
/// The test recomputes both from the line.
fn journal_record(id: &str, len: usize) -> String {
    let payload: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let sum: u64 = payload.bytes().map(u64::from).sum();
    format!("{id} len={len} sum={sum} {payload}")
}

/// `journal-lines`: appends each line of stdin as a record, printing `ack`
/// or `error: <the error>` after each.
async fn journal_lines(path: PathBuf) {
    let journal = lockmgr::journal::Journal::open(path)
        .await
        .expect("open journal");
    let mut line = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut line)
        .is_ok_and(|n| n > 0)
    {
        match journal.append(line.trim_end()).await {
            Ok(()) => println!("ack"),
            Err(e) => println!("error: {e}"),
        }
        std::io::stdout().flush().expect("flush");
        line.clear();
    }
}

/// `journal-look`: opens the journal at `path` (with `wait`, then says
/// `opened` and waits for a line on stdin), prints its records one per
/// line (after `torn: N`, a torn tail's length), then tries to append
/// `appended` and prints `ack` or `error: <Debug of the error>` (with
/// `wait`, then keeps the journal open until stdin ends); `open error:
/// ...` if it cannot be opened.
async fn journal_look(path: PathBuf, wait: bool) {
    let journal = match lockmgr::journal::Journal::open(path).await {
        Ok(journal) => journal,
        Err(e) => {
            println!("open error: {e}");
            return;
        }
    };
    if wait {
        println!("opened");
        std::io::stdout().flush().expect("flush");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).expect("stdin");
    }
    match journal.records().await {
        Ok(records) => {
            if let Some(torn) = records.torn_tail() {
                println!("torn: {}", torn.len());
            }
            for record in records {
                match record {
                    Ok(record) => println!("{}", String::from_utf8_lossy(&record)),
                    Err(e) => println!("read error: {e}"),
                }
            }
        }
        Err(e) => println!("records error: {e}"),
    }
    match journal.append("appended").await {
        Ok(()) => println!("ack"),
        Err(e) => println!("error: {e:?}"),
    }
    if wait {
        std::io::stdout().flush().expect("flush");
        wait_for_stdin_eof();
    }
}

async fn journal_writer(path: PathBuf, id: u32, tasks: u32, n: u32, large: bool, flock: bool) {
    let kind = if flock {
        LockKind::Flock
    } else {
        LockKind::Ofd
    };
    let journal = lockmgr::journal::Journal::builder(path)
        .kind(kind)
        .timeout(Duration::from_secs(60))
        .max_record_len(400_000)
        .open()
        .await
        .expect("open journal");
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (journal, out) = (journal.clone(), out.clone());
        set.spawn(async move {
            for i in 0..n {
                let rid = format!("w{id}-t{t}-n{i}");
                // Mostly small records, every 7th larger than a page; or
                // all of them about 300 KB.
                let len = if large {
                    300_000 + (i as usize * 37) % 5000
                } else if i % 7 == 3 {
                    9000 + (i as usize * 37) % 5000
                } else {
                    20 + (i as usize * 13) % 200
                };
                journal
                    .append(journal_record(&rid, len))
                    .await
                    .expect("append");
                let mut out = out.lock().unwrap();
                writeln!(out, "ack {rid}").unwrap();
                out.flush().unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
}
