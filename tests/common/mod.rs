//! Helpers shared by the integration tests, and the helper process they
//! start: the test binary itself, re-executed in a role (`helper`), so that
//! a plain `cargo test` builds and runs everything with no test-only
//! feature or binary.
#![allow(dead_code)]

pub mod helper;
pub mod sys;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// The environment variable that puts a re-executed test binary in a role:
/// its value is the role's arguments, separated by U+001F.
const ROLE: &str = "LOCKMGR_TEST_ROLE";

/// The entry point of the helper process. Not a test: the harness runs it
/// only when a test re-executes this binary (`helper_command`) with the
/// role in the environment; it then never returns.
#[test]
#[ignore = "the helper process's entry point, run by the cross-process tests"]
fn helper_process() {
    let Ok(role) = std::env::var(ROLE) else {
        eprintln!("not a test: the entry point of the helper process");
        return;
    };
    helper::run(role.split('\u{1f}').map(str::to_owned).collect());
}

/// A command that runs this test binary as the helper process in `role`
/// with `args` (see `helper.rs` for the roles). The harness prints a line
/// or two of its own before the role speaks: readers skip to the role's
/// lines.
pub fn helper_command<S: AsRef<OsStr>>(role: &str, args: impl IntoIterator<Item = S>) -> Command {
    let mut joined = role.to_owned();
    for a in args {
        joined.push('\u{1f}');
        joined.push_str(a.as_ref().to_str().expect("helper arguments are UTF-8"));
    }
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([
        "--exact",
        "common::helper_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env(ROLE, joined);
    cmd
}

/// The role's lines of a helper's output: without the harness's own.
pub fn role_lines(out: impl BufRead) -> impl Iterator<Item = String> {
    out.lines()
        .map_while(Result::ok)
        .filter(|l| !l.is_empty() && l != "running 1 test")
}

/// Generous bound for "promptly": a liveness check, not a speed assertion.
pub const LIVENESS: Duration = Duration::from_secs(30);

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What each open file descriptor points at (for failure messages).
pub fn fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let t = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{} -> {}", e.file_name().to_string_lossy(), t.display())
        })
        .collect();
    v.sort();
    v
}

/// Number of inotify watches held by this process, over all its instances.
pub fn inotify_watches() -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            n += text
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

/// Number of inotify instances this process has open (a waiter's runtime
/// polls a duplicate of the instance's descriptor: one instance, however
/// many descriptors name it).
pub fn inotify_instances() -> usize {
    inotify_descriptors("self").len()
}

/// The descriptors of process `pid` (or "self") that name an inotify
/// instance, one per instance.
fn inotify_descriptors(pid: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<i32> = entries
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().contains("inotify"))
                .unwrap_or(false)
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let pid: i32 = if pid == "self" {
        std::process::id() as i32
    } else {
        pid.parse().unwrap()
    };
    let mut distinct: Vec<i32> = Vec::new();
    for fd in fds {
        if !distinct.iter().any(|&d| sys::same_description(pid, d, fd)) {
            distinct.push(fd);
        }
    }
    distinct
}

/// How this process waits for the file at `path`, as its descriptors and
/// the kernel tell: `(descriptors on the file, inotify watches on it, lock
/// requests blocked on it)`.
pub fn waiting_on(path: &Path) -> (usize, usize, usize) {
    (fds_on(path), watches_on(path), blocked_on(path))
}

/// Whether this process waits for the file at `path` with exactly one wait
/// beside `held` descriptors of holders: the head of its line, watching the
/// file (its descriptor and one watch) or, once its wait has settled, in
/// the kernel (its descriptor, its helper's two copies, one blocked
/// request).
pub fn one_wait_on(path: &Path, held: usize) -> bool {
    matches!(waiting_on(path), (f, 1, 0) if f == held + 1)
        || matches!(waiting_on(path), (f, _, 1) if f == held + 3)
}

/// Number of inotify watches this process has on the inode at `path`.
pub fn watches_on(path: &Path) -> usize {
    watches_of("self", path)
}

/// Number of inotify watches process `pid` (or "self") has on the inode at
/// `path`.
pub fn watches_of(pid: &str, path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let ino = format!(" ino:{:x} ", std::fs::metadata(path).unwrap().ino());
    let mut n = 0;
    for fd in inotify_descriptors(pid) {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) {
            n += text
                .lines()
                .filter(|l| l.starts_with("inotify wd:") && l.contains(&ino))
                .count();
        }
    }
    n
}

/// Lock requests blocked in the kernel on the file at `path`, by any
/// process (the `->` lines of `/proc/locks`): waiters asleep in the
/// kernel's own wait.
pub fn blocked_on(path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino();
    let want = format!(":{ino} ");
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.contains("->") && l.contains(&want))
        .count()
}

/// Whether some waiter sleeps on the file at `path`: blocked in the
/// kernel's wait (or, without a helper thread, watching it with inotify).
pub fn someone_waits(path: &Path) -> bool {
    blocked_on(path) > 0 || watches_on(path) > 0
}

/// Returns once some waiter sleeps on the file at `path`, i.e. has found
/// the lock held and gone to sleep on it.
pub async fn until_waiting(path: &Path) {
    tokio::time::timeout(LIVENESS, async {
        while !someone_waits(path) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("no waiter went to sleep on the lock file");
}

/// Whether a thread of process `pid` is named `name`.
#[allow(dead_code)]
pub fn has_thread(pid: u32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

/// Returns once process `pid` waits for the file at `path`: a `lockmgr`
/// waiter there found the lock held and went to sleep on it (in the
/// kernel's wait, which `/proc/locks` shows, or on inotify events).
pub fn until_watched_by(pid: u32, path: &Path) {
    let deadline = std::time::Instant::now() + LIVENESS;
    while blocked_on(path) == 0 && watches_of(&pid.to_string(), path) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} never went to sleep on the lock file"
        );
        std::thread::yield_now();
    }
}

/// Awaits a spawned `acquire` within the liveness bound and returns its
/// guard; `what` says what a timeout would mean.
pub async fn won(
    waiter: tokio::task::JoinHandle<Result<lockmgr::LockGuard, lockmgr::LockError>>,
    what: &str,
) -> lockmgr::LockGuard {
    tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect(what)
        .unwrap()
        .expect("acquire")
}

/// A helper process holding the lock at `path`.
pub struct Holder {
    pub child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    /// Starts the helper and returns once it reports that it holds the lock.
    pub fn start(path: &Path) -> Holder {
        Holder::start_with(path, "hold", &[])
    }

    /// Starts the helper's `command` (`hold`, `posix-hold`) with options.
    pub fn start_with(path: &Path, command: &str, opts: &[&str]) -> Holder {
        let mut args = vec![path.to_str().expect("UTF-8 path")];
        args.extend_from_slice(opts);
        let child = helper_command(command, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn helper");
        Holder::started(child)
    }

    /// Any command that prints a line starting with "locked" once it holds
    /// the lock and releases it when its stdin closes (lines before it,
    /// such as a test harness's, are skipped).
    pub fn started(mut child: Child) -> Holder {
        let line = role_lines(BufReader::new(child.stdout.take().unwrap())).next();
        assert!(
            line.as_deref().is_some_and(|l| l.starts_with("locked")),
            "holder said {line:?}"
        );
        let stdin = child.stdin.take();
        Holder { child, stdin }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` and reaps the helper; asserts the signal killed it.
    pub fn kill(mut self, sig: nix::sys::signal::Signal) {
        use std::os::unix::process::ExitStatusExt;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig as i32), "{status:?}");
    }

    /// Asks the helper to release and exit normally.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `procs` helper processes that each let `tasks` tasks increment a
/// counter `iters` times under the lock at `lock` (helper options `opts`),
/// asserts that none saw an overlap and all succeeded, and returns the
/// final count.
pub fn count_in_processes(lock: &Path, procs: u64, tasks: u64, iters: u64, opts: &[&str]) -> u64 {
    let dir = lock.parent().unwrap();
    let counter = dir.join("counter");
    let marker = dir.join("inside");
    let children: Vec<_> = (0..procs)
        .map(|_| {
            let mut args: Vec<String> = [lock, &counter, &marker]
                .iter()
                .map(|p| p.to_str().expect("UTF-8 path").to_owned())
                .collect();
            args.extend([iters.to_string(), tasks.to_string()]);
            args.extend(opts.iter().map(|o| o.to_string()));
            helper_command("count", args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("OVERLAP"),
            "two owners at once"
        );
        assert!(
            out.status.success(),
            "{:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!marker.exists());
    std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Number of this process's descriptors open on the file at `path`.
pub fn fds_on(path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(path).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::metadata(e.path())
                .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        })
        .count()
}

/// The URL of the PostgreSQL server for the `lockmgr::pg` tests
/// (`LOCKMGR_PG_URL`, exported by `scripts/with-postgres`). `None`, with a
/// note on stderr, when it is not set outside CI; under CI (`CI` set) a
/// missing URL fails the test.
pub fn pg_url() -> Option<String> {
    match std::env::var("LOCKMGR_PG_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run these tests through scripts/with-postgres"
            );
            eprintln!("LOCKMGR_PG_URL is not set: not run (use scripts/test)");
            None
        }
    }
}

/// The foreign holder (`tests/foreign/holder.c`), compiled once per test
/// run with the system's C compiler into cargo's temporary directory.
pub fn foreign_holder_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/foreign/holder.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("foreign-holder");
        // Built under a name of its own, then renamed: test binaries that
        // run at once never see a half-written program.
        let tmp = out.with_extension(format!("{}", std::process::id()));
        let status = Command::new("cc")
            .args(["-O1", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("a C compiler (cc) is needed for the foreign-holder tests");
        assert!(status.success(), "cc failed on {}", src.display());
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
    .clone()
}

/// The preloadable library `tests/foreign/NAME.c`, compiled once per
/// test run (as [`foreign_holder_bin`]): set it as `LD_PRELOAD`.
pub fn preload_lib(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, std::path::PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, out)) = built.iter().find(|(n, _)| n == name) {
        return out.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/foreign/{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.so"));
    // Built under a name of its own, then renamed: test binaries that run
    // at once never load a half-written library.
    let tmp = out.with_extension(format!("{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) is needed for the preloaded libraries");
    assert!(status.success(), "cc failed on {}", src.display());
    std::fs::rename(&tmp, &out).unwrap();
    built.push((name.to_owned(), out.clone()));
    out
}

/// A foreign program holding a lock (`tests/foreign/holder.c`): a plain C
/// process using `fcntl`/`flock` directly, as other tools do.
pub struct Foreign {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Foreign {
    /// Starts a holder of `family` (`ofd`, `posix`, `flock`) in `mode`
    /// (`ex`, `sh`) and returns once it holds the lock at `path`.
    pub fn start(family: &str, mode: &str, path: &Path) -> Foreign {
        let mut child = Command::new(foreign_holder_bin())
            .args([family, mode])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the foreign holder");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().map(Result::unwrap);
        assert!(
            first.as_deref().is_some_and(|l| l.starts_with("locked")),
            "foreign holder said {first:?}"
        );
        Foreign {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one command (`unlock`, `lock`, `fork`) and returns its answer.
    pub fn command(&mut self, command: &str) -> String {
        use std::io::Write;
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.lines.next().expect("an answer").unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its stdin: it exits, closing its descriptor.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tracing subscriber that hands every event to its function: the tests'
/// one way of listening to the crate's events (no spans are kept).
pub struct OnEvent<F>(pub F);

impl<F: Fn(&tracing::Event<'_>) + 'static> tracing::Subscriber for OnEvent<F> {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        (self.0)(event)
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Makes `subscriber` the default of the calling thread until the guard
/// drops. Tracing caches per call site whether anyone listens; a call site
/// first reached on another thread while this one was being installed can
/// keep a "nobody" answer, so the cache is rebuilt once it is in place.
pub fn listen(
    subscriber: impl tracing::Subscriber + Send + Sync,
) -> tracing::subscriber::DefaultGuard {
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    guard
}

/// The `lock try` debug events of the crate, as (won, what woke the try),
/// recorded on the threads it is the default subscriber of.
#[derive(Clone, Default)]
pub struct TryLog(std::sync::Arc<std::sync::Mutex<Vec<(bool, String)>>>);

impl TryLog {
    /// Makes this log the default subscriber of the calling thread until
    /// the guard drops (see [`listen`]).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let tries = self.0.clone();
        listen(OnEvent(move |event: &tracing::Event<'_>| {
            let mut fields = TryFields::default();
            event.record(&mut fields);
            if fields.is_try {
                tries.lock().unwrap().push((fields.won, fields.woke));
            }
        }))
    }

    /// The tries so far.
    pub fn tries(&self) -> Vec<(bool, String)> {
        self.0.lock().unwrap().clone()
    }

    /// What woke the try that won the lock.
    pub fn winner_woken_by(&self) -> String {
        self.tries()
            .into_iter()
            .rev()
            .find(|(won, _)| *won)
            .map(|(_, woke)| woke)
            .expect("no try won")
    }
}

#[derive(Default)]
struct TryFields {
    is_try: bool,
    won: bool,
    woke: String,
}

impl tracing::field::Visit for TryFields {
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if field.name() == "won" {
            self.won = value;
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "woke" {
            self.woke = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.is_try = format!("{value:?}") == "lock try";
        }
    }
}

/// Waits (within the liveness bound) until this process has `n` open
/// descriptors again: a kernel wait given up on closes its descriptor only
/// once the lock is free and its helper has given the grant back.
pub async fn until_open_fds(n: usize) {
    let settled = tokio::time::timeout(LIVENESS, async {
        while open_fds() != n {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "{} descriptors open, not {n}: {:#?}",
        open_fds(),
        fd_targets()
    );
}

/// Waits (within the liveness bound) until this process has no descriptor
/// open on the file at `path`: the descriptor of a kernel wait that was
/// claimed closes a moment after the claim, on its helper thread.
pub async fn until_no_fds_on(path: &Path) {
    let closed = tokio::time::timeout(LIVENESS, async {
        while fds_on(path) > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "descriptors stay open on {}: {:?}",
        path.display(),
        fd_targets()
    );
}

/// What the helpers logged in DIR/order, in order: `(pid, holds)`, a
/// holding when `holds`, else the start of a wait for one.
pub fn holding_log(dir: &Path) -> Vec<(String, bool)> {
    std::fs::read_to_string(dir.join("order"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| match l.split_once(' ') {
            Some(("hold", pid)) => Some((pid.to_owned(), true)),
            Some(("want", pid)) => Some((pid.to_owned(), false)),
            _ => None,
        })
        .collect()
}

/// The number of holdings in a [`holding_log`].
pub fn holdings(log: &[(String, bool)]) -> usize {
    log.iter().filter(|(_, holds)| *holds).count()
}

/// The longest run of holdings by one process, in a [`holding_log`], while
/// every other process waited for one and still had holdings to make (each
/// makes `each`): how long one process kept the others out. A process that
/// was not waiting (between two holdings it had not yet asked again, for
/// instance while the machine did not run it) was not kept out, and breaks
/// no run but is not counted in one either.
pub fn longest_run(log: &[(String, bool)], each: usize) -> usize {
    let mut left: std::collections::HashMap<&str, usize> =
        log.iter().map(|(p, _)| (p.as_str(), each)).collect();
    let mut waiting = std::collections::HashSet::new();
    let (mut longest, mut streak, mut last) = (0, 0, "");
    for (p, holds) in log {
        let p = p.as_str();
        if !holds {
            waiting.insert(p);
            continue;
        }
        waiting.remove(p);
        let others_kept_out = left
            .iter()
            .filter(|(q, _)| **q != p)
            .all(|(q, &n)| n > 0 && waiting.contains(q));
        if others_kept_out && left[p] > 0 {
            streak = if p == last { streak + 1 } else { 1 };
            longest = longest.max(streak);
        } else if p != last {
            streak = 0;
        }
        if let Some(n) = left.get_mut(p) {
            *n = n.saturating_sub(1);
        }
        last = p;
    }
    longest
}

/// `n` helper processes in `role` with `args` (see [`helper_command`]),
/// started one after the other.
pub fn helpers(n: usize, role: &str, args: &[&str]) -> Vec<std::process::Child> {
    (0..n)
        .map(|_| helper_command(role, args).spawn().expect("spawn helper"))
        .collect()
}

/// Waits for every one of `children`: whether all exited with success.
pub fn all_succeed(children: Vec<std::process::Child>) -> bool {
    // Every one waited for, not only up to the first failure.
    let exits: Vec<bool> = children
        .into_iter()
        .map(|mut c| c.wait().is_ok_and(|s| s.success()))
        .collect();
    exits.iter().all(|&ok| ok)
}

/// A tmpfs of a few hundred KiB, unmounted when dropped.
pub struct SmallFs(pub std::path::PathBuf);

impl SmallFs {
    pub fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
