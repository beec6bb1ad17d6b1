//! The `lockmgr` command, driven as a real binary.
#![deny(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LOCKMGR: &str = env!("CARGO_BIN_EXE_lockmgr");

fn lockmgr(args: &[&str]) -> Output {
    Command::new(LOCKMGR).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `lockmgr run [opts] LOCK -- sh -c 'echo started; exec cat'`: holds the
/// lock until its stdin closes. Returns once the command runs.
fn holder(lock: &Path, opts: &[&str]) -> Child {
    let mut args = opts.to_vec();
    args.push(s(lock));
    let (child, said) = common::run_until_said(&args, "echo started; exec cat >/dev/null");
    assert_eq!(said, "started");
    child
}

/// util-linux `flock LOCK sh -c SCRIPT`, stdin and stdout piped; returns
/// once the script has printed its first line, with that line.
fn flock_1_holding(lock: &Path, script: &str) -> (Child, String) {
    let mut flock = Command::new("flock");
    flock.args([s(lock), "sh", "-c", script]);
    started_saying(flock)
}

/// `cmd` started with its stdin and stdout piped, and the first line it
/// said.
fn started_saying(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

fn finish(mut child: Child) -> Output {
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// `tests/foreign/holder.c` holding a `family` lock in `mode` on `lock`
/// (stdin and stdout piped); returns once it holds it, with its output.
fn c_holder(
    family: &str,
    mode: &str,
    lock: &Path,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut foreign = Command::new(common::c_program("holder"))
        .args([family, mode])
        .arg(lock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(foreign.stdout.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert!(line.starts_with("locked"), "{line}");
    (foreign, said)
}

/// How `run` ended, if it did within the liveness bound; killed if not.
fn ended(mut run: Child) -> Option<std::process::ExitStatus> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = run.id();
    std::thread::spawn(move || tx.send(run.wait().unwrap()));
    let status = rx.recv_timeout(common::LIVENESS).ok();
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    status
}

/// Fills the pipe or socket whose writing end is `writer`, and leaves the
/// descriptor blocking again, as a program given it finds it.
fn fill(writer: &std::os::fd::OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(writer, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let mut fill = std::fs::File::from(writer.try_clone().unwrap());
    while fill.write(&[b'x'; 4096]).is_ok() {}
    fcntl(writer, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn two_runs_exclude_each_other_and_the_loser_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let first = holder(&lock, &["--label", "nightly"]);
    let pid = first.id();

    let out = lockmgr(&["run", "--nonblock", s(&lock), "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("is held by pid {pid} on host ")) && err.contains("(nightly)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = lockmgr(&[
        "run",
        "-n",
        "--conflict-exit-code",
        "7",
        s(&lock),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(7));

    assert!(finish(first).status.success());
    let out = lockmgr(&["run", "--nonblock", s(&lock), "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn waiting_gives_up_after_the_attempts_with_one_line_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let first = holder(&lock, &[]);
    let out = lockmgr(&[
        "run",
        "--wait",
        "0.3",
        "--attempts",
        "3",
        s(&lock),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let waiting: Vec<_> = err
        .lines()
        .filter(|l| l.starts_with("lockmgr: waiting for lock"))
        .collect();
    assert_eq!(waiting.len(), 1, "{err}");
    assert!(waiting[0].contains("held by pid"), "{err}");
    assert!(waiting[0].ends_with("attempt 1/3"), "{err}");
    assert!(err.contains("after 3 attempts"), "{err}");

    // `--quiet` says nothing of a held lock, waited for or not (a cron
    // job's `--nonblock` would mail every overlap): the status says it.
    // (Before: it silenced only the waiting message.)
    for wait in [&["-w", "0.1"][..], &["-n"]] {
        let mut args = vec!["run", "-q"];
        args.extend_from_slice(wait);
        args.extend([s(&lock), "--", "true"]);
        let quiet = lockmgr(&args);
        assert_eq!(quiet.status.code(), Some(1));
        assert_eq!(text(&quiet.stderr), "", "{wait:?}");
    }
    finish(first);
}

#[test]
fn a_waiting_run_proceeds_when_the_holder_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let first = holder(&lock, &[]);
    let mut second = Command::new(LOCKMGR)
        .args(["run", s(&lock), "--", "sh", "-c", "echo second"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The second announces its wait (one line, off a terminal) before the
    // first lets go.
    let mut line = String::new();
    BufReader::new(second.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("waiting for lock"), "{line}");
    // As long as it takes: no count of attempts (before: "attempt 1/10").
    assert!(!line.contains("attempt"), "{line}");
    assert!(finish(first).status.success());
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "second\n");
}

#[test]
fn exit_status_is_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let out = lockmgr(&["run", s(&lock), "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    // A command ended by a signal ends lockmgr by the same signal, as a
    // shell expects of the plain command; SIGSEGV and SIGBUS too, for which
    // Rust's runtime has handlers of its own (before: exit 139 and 135).
    // SIGPIPE, which Rust's runtime ignores (before: exit 141), and a
    // realtime signal, which has no name in `nix` (before: exit 1).
    for sig in [
        Signal::SIGKILL as i32,
        Signal::SIGTERM as i32,
        Signal::SIGINT as i32,
        Signal::SIGSEGV as i32,
        Signal::SIGBUS as i32,
        Signal::SIGPIPE as i32,
        nix::libc::SIGRTMIN() + 6,
    ] {
        let script = format!("ulimit -c 0; kill -{sig} $$");
        let out = lockmgr(&["run", s(&lock), "--", "sh", "-c", &script]);
        assert_eq!(out.status.signal(), Some(sig), "{sig}: {:?}", out.status);
        // And it released the lock first.
        assert!(lockmgr(&["run", "-n", s(&lock), "--", "true"])
            .status
            .success());
    }
    let out = lockmgr(&["run", s(&lock), "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127));
    // The line names the lock too: a script runs many.
    let said = text(&out.stderr);
    assert!(
        said.contains("cannot run /nonexistent/command") && said.contains(s(&lock)),
        "{said}"
    );
}

/// A command killed by a signal may leave processes it started running
/// (a shell's foreground child outlives the shell): they have the lock's
/// descriptor, and keep the lock until they end, as under `flock(1)`.
/// Before, `lockmgr` unlocked it explicitly, and a second run got in while
/// they still worked.
#[test]
fn a_command_killed_by_a_signal_leaves_the_lock_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let mut first = Command::new(LOCKMGR)
        .args([
            "run",
            s(&lock),
            "--",
            "sh",
            "-c",
            "sleep 60 & echo $!; wait",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let worker = Pid::from_raw(line.trim().parse().unwrap());
    // The shell's child is named `sleep` once it has run it (before, it is
    // a copy of the shell).
    let started = std::time::Instant::now();
    while std::fs::read_to_string(format!("/proc/{worker}/comm")).unwrap_or_default() != "sleep\n" {
        assert!(
            started.elapsed() < common::LIVENESS,
            "the worker never ran sleep"
        );
        std::thread::yield_now();
    }
    // Passed on to the shell alone, which it kills; `sleep` works on.
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(first.wait().unwrap().signal(), Some(15));
    let out = lockmgr(&["run", "--nonblock", s(&lock), "--", "true"]);
    let still_working = kill(worker, None).is_ok();
    assert!(still_working, "the worker ended too soon for the test");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a second run got the lock while the first one's command still works: {}",
        text(&out.stderr)
    );
    // The record names the dead `lockmgr`: the refusal names the living
    // holder too, lest someone take the lock file for abandoned (before:
    // only "stale record: pid N is not running").
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!("held by sleep pid {worker}")),
        "{said}"
    );
    // It ends: the lock is free.
    kill(worker, Signal::SIGKILL).unwrap();
    let out = lockmgr(&["run", "--wait", "30", s(&lock), "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A signal the parent left ignored (`nohup`, `trap '' HUP`, a script's
/// background job) is ignored by `lockmgr` too, as by `flock(1)`: it keeps
/// waiting. Before, a SIGHUP ended a waiting `lockmgr` (exit 129).
#[test]
fn a_signal_ignored_by_the_parent_does_not_end_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let first = holder(&lock, &[]);
    let mut second = Command::new("env")
        .args([
            "--ignore-signal=HUP",
            LOCKMGR,
            "run",
            s(&lock),
            "--",
            "true",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(second.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("waiting for lock"), "{line}");
    kill(Pid::from_raw(second.id() as i32), Signal::SIGHUP).unwrap();
    assert!(finish(first).status.success());
    let out = second.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// With SIGCHLD ignored (inherited), the kernel reaps the command itself;
/// its exit status must not be lost. Before: "cannot wait for the command:
/// No child processes", exit 2.
#[test]
fn an_ignored_sigchld_keeps_the_commands_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let out = Command::new("env")
        .args(["--ignore-signal=CHLD", LOCKMGR, "run", s(&lock), "--"])
        .args(["sh", "-c", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["run", s(dir.path()), "--", "true"], // a directory
        vec!["run", "/nonexistent-dir/x.lock", "--", "true"], // missing parent
        vec!["status", "/nonexistent-dir/x.lock"], // missing file
        vec!["status", s(dir.path())],            // a directory
    ] {
        let out = lockmgr(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("lockmgr: "), "{err}");
        // Nothing that only a user of the library could act on.
        assert!(!err.contains("builder"), "{err}");
    }
    // Bad arguments: clap's usage error, also status 2, in one line that
    // says what is missing (before: "the following required arguments were
    // not provided:", and nothing after).
    let out = lockmgr(&["run", "x.lock"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("<COMMAND>"), "{err}");
    assert_eq!(
        lockmgr(&["run", "--nonblock", "--wait", "1", "x", "--", "true"])
            .status
            .code(),
        Some(2)
    );
}

/// `lockmgr run LOCK -- sh -c SCRIPT` with the script's stdout piped, once
/// the script has said its first line (`first`). The script is bounded by
/// a 30 s loop of its own at the end, so that a failure cannot leave it
/// running for ever.
fn supervising(lock: &Path, script: &str, first: &str) -> (Child, impl FnMut() -> String) {
    let mut child = Command::new(LOCKMGR)
        .args(["run", s(lock), "--", "sh", "-c"])
        .arg(format!(
            "{script}; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut next = move || {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line
    };
    assert_eq!(next(), format!("{first}\n"));
    (child, next)
}

#[test]
fn sigterm_is_forwarded_to_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let script = "trap 'echo got TERM; exit 42' TERM; echo ready";
    let (mut child, mut next) = supervising(&lock, script, "ready");
    // Only lockmgr gets the signal; the command hears of it from lockmgr.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(next(), "got TERM\n");
    assert_eq!(child.wait().unwrap().code(), Some(42));
    // And the lock went with it.
    assert!(lockmgr(&["run", "-n", s(&lock), "--", "true"])
        .status
        .success());
}

/// SIGUSR1 and SIGUSR2 sent to lockmgr (a log rotation's "reopen your
/// logs" aimed at the pid a service manager knows, which is lockmgr's) are
/// passed on, and the command runs on. Before, they ended lockmgr (their
/// default action) and left the command running without its supervisor.
#[test]
fn user_signals_are_passed_on_and_the_command_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let script = "trap 'echo got USR1' USR1; trap 'echo got USR2' USR2; \
                  trap 'echo got TERM; exit 42' TERM; echo ready";
    let (mut child, mut next) = supervising(&dir.path().join("l"), script, "ready");
    for (signal, said) in [
        (Signal::SIGUSR1, "got USR1\n"),
        (Signal::SIGUSR2, "got USR2\n"),
        (Signal::SIGTERM, "got TERM\n"),
    ] {
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        assert_eq!(next(), said, "after {signal}");
    }
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

/// A signal the command sends to its parent (`kill -USR1 $PPID`, a
/// readiness ping) is not sent back to it: it was not meant for it. One
/// sent to `lockmgr` by another process after it still is.
#[test]
fn a_signal_from_the_command_is_not_sent_back_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = "trap 'echo got USR1' USR1; trap 'echo got USR2; exit 0' USR2; \
                  kill -USR1 $PPID; echo sent";
    let (mut child, mut next) = supervising(&dir.path().join("l"), script, "sent");
    // lockmgr reads its signals in turn: a USR1 passed back would reach
    // the command before this USR2.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGUSR2).unwrap();
    assert_eq!(next(), "got USR2\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn the_command_does_not_inherit_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    // The command leaves a background process behind, which inherits every
    // descriptor the command had.
    let out = lockmgr(&[
        "run",
        s(&lock),
        "--",
        "sh",
        "-c",
        "sleep 30 >/dev/null 2>&1 & echo $!",
    ]);
    assert!(out.status.success());
    let straggler: i32 = text(&out.stdout).trim().parse().unwrap();
    let status = lockmgr(&["status", s(&lock)]);
    kill(Pid::from_raw(straggler), Signal::SIGKILL).unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stdout));
}

#[test]
fn flock_kind_interoperates_with_util_linux_flock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let ours = holder(&lock, &["--kind", "flock"]);
    let flock = Command::new("flock")
        .args(["-n", s(&lock), "true"])
        .status()
        .unwrap();
    assert_eq!(
        flock.code(),
        Some(1),
        "flock(1) got in past lockmgr --kind flock"
    );
    finish(ours);

    let (mut theirs, _) = flock_1_holding(&lock, "echo locked; exec cat >/dev/null");
    let out = lockmgr(&["run", "-n", "--kind", "flock", s(&lock), "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    // The OFD family does not see flock(1): the kind must match.
    assert!(lockmgr(&["run", "-n", s(&lock), "--", "true"])
        .status
        .success());
    theirs.stdin.take().unwrap().write_all(b"").unwrap();
    theirs.wait().unwrap();
}

#[test]
fn status_while_held_and_after_the_holder_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let first = holder(&lock, &["--label", "backup \"db\""]);
    let pid = first.id();

    let out = lockmgr(&["status", s(&lock)]);
    assert_eq!(out.status.code(), Some(1));
    let line = text(&out.stdout);
    assert!(
        line.starts_with(&format!(
            "{}: held exclusive by pid {pid} on host ",
            lock.display()
        )),
        "{line}"
    );

    let out = lockmgr(&["status", "--json", s(&lock)]);
    assert_eq!(out.status.code(), Some(1));
    let json = text(&out.stdout);
    assert!(json.contains("\"state\":\"exclusive\""), "{json}");
    assert!(json.contains(&format!("\"pid\":{pid},")), "{json}");
    assert!(json.contains("\"label\":\"backup \\\"db\\\"\""), "{json}");
    assert!(json.contains("\"stale\":false"), "{json}");
    assert!(json.contains("\"kind\":\"ofd\""), "{json}");

    let mut first = first;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    // Closes the command's stdin: it ends, and with it its inherited copy
    // of the lock; wait for that (writing no record of our own).
    first.wait().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gone = lockmgr::LockMgr::builder(&lock)
        .record_holder(false)
        .build();
    drop(
        rt.block_on(gone.acquire(true, std::time::Duration::from_secs(30)))
            .unwrap(),
    );

    let out = lockmgr(&["status", s(&lock)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout), format!("{}: free\n", lock.display()));
    let out = lockmgr(&["status", "--json", s(&lock)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("\"state\":\"free\",\"holder\":null"));

    // Held shared: said so, and the holding processes named (lockmgr and
    // its command, which inherited the lock), each with its family.
    let reader = holder(&lock, &["--shared"]);
    let out = lockmgr(&["status", s(&lock)]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stdout);
    assert!(
        said.starts_with(&format!("{}: held shared\n", lock.display())),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "  held by lockmgr pid {}, shared ofd lock\n",
            reader.id()
        )),
        "{said}"
    );
    assert_eq!(said.matches("shared ofd lock").count(), 2, "{said}");
    finish(reader);
}

/// When `lockmgr run` itself is killed (SIGKILL, the OOM killer), its
/// command keeps the lock, as `flock(1)`'s command does: nobody else gets
/// it until the command (and whatever inherited the lock from it) ends.
#[test]
fn a_killed_lockmgr_leaves_the_lock_with_its_command() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let mut first = holder(&lock, &[]);
    // Kept: `wait` would close it, and the command ends at its end.
    let command_input = first.stdin.take();
    kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).unwrap();
    assert_eq!(first.wait().unwrap().signal(), Some(9));
    // The command (`cat`, reading the stdin we still hold) runs on.
    let out = lockmgr(&["run", "--nonblock", s(&lock), "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a second run got the lock while the first one's command runs: {}",
        text(&out.stderr)
    );
    // The command ends: the lock is free.
    drop(command_input);
    let out = lockmgr(&["run", "--wait", "30", s(&lock), "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Runs `command` (a shell command line) on a terminal of its own, with
/// util-linux `script`; its output (the terminal's) is read as it comes.
fn on_a_terminal(command: &str) -> (Child, common::Output) {
    let mut child = Command::new("script")
        .args(["-q", "-f", "-e", "-c", command, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("util-linux script(1) runs commands on a terminal for these tests");
    let out = common::Output::of(child.stdout.take().unwrap());
    (child, out)
}

/// One Ctrl-C on a terminal reaches the command once: the terminal sends it
/// to the whole foreground group, so lockmgr must not pass it on as well.
/// A signal sent to lockmgr alone (here SIGTERM) is passed on.
#[test]
fn one_ctrl_c_reaches_the_command_once() {
    one_ctrl_c_reaches("");
}

/// A Ctrl-C on a terminal reaches a command that runs in a process group
/// of its own (`setsid`, GNU `timeout`, a daemon's `setpgid`), once: the
/// terminal sent it to `lockmgr`'s group only, so `lockmgr` passes it on.
/// (Before: it took it for one the command had got too, and the command
/// ran on, holding the lock, until it ended by itself.)
#[test]
fn a_ctrl_c_reaches_a_command_in_a_process_group_of_its_own() {
    one_ctrl_c_reaches("setsid -w ");
}

/// Runs the signal counter under `lockmgr run` on a terminal, started
/// through `wrapper` (a command line prefix), types one Ctrl-C, then sends
/// the counter SIGTERM: it must have counted exactly one SIGINT, and
/// `lockmgr` ends as it did.
fn one_ctrl_c_reaches(wrapper: &str) {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let counter = common::c_program("signals");
    let (mut term, mut out) = on_a_terminal(&format!(
        "exec {LOCKMGR} run {} -- {wrapper}{}",
        lock.display(),
        counter.display()
    ));
    out.until("ready", 1);
    let lockmgr_pid = term.id(); // script's child is exec'd lockmgr
    term.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    term.stdin.as_mut().unwrap().flush().unwrap();
    out.until("INT", 1);
    // Signals reach the command in order: any SIGINT lockmgr passed on
    // arrives before the SIGTERM it passes on now.
    let pid = pid_of_child_of(lockmgr_pid);
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    out.until("TERM", 1);
    assert!(term.wait().unwrap().success());
    let all = out.rest();
    assert_eq!(all.matches("INT").count(), 1, "{all:?}");
}

/// A terminal's hang-up reaches the command when `lockmgr` leads the
/// terminal's session (a shell that execs it, as `ssh -t host 'lockmgr run
/// ...'` does): the kernel sends a hang-up to the session's leader alone,
/// where it sends a Ctrl-C to the whole foreground group, so `lockmgr`
/// must pass this one on. (Before: it took it for one the command had got
/// too, and the command ran on, holding the lock.)
#[test]
fn a_hang_up_reaches_the_command_when_lockmgr_leads_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let marker = dir.path().join("hung-up");
    let (mut term, mut out) = on_a_terminal(&format!(
        "exec {LOCKMGR} run {} -- sh -c 'trap \"echo > {}; exit 0\" HUP; echo ready; \
         i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done'",
        lock.display(),
        marker.display()
    ));
    out.until("ready", 1);
    let lockmgr = pid_of_child_of(term.id());
    // The end of `script` closes the terminal's other side: a hang-up.
    term.kill().unwrap();
    term.wait().unwrap();
    let deadline = std::time::Instant::now() + common::LIVENESS;
    while is_running(lockmgr) {
        assert!(
            std::time::Instant::now() < deadline,
            "lockmgr still runs after the hang-up"
        );
        std::thread::yield_now();
    }
    assert!(marker.exists(), "the command never got the hang-up");
}

/// `status` where `/proc` is not mounted (a minimal container, a chroot)
/// answers what it can: the lock's state and its record, from the file and
/// the kernel, and says on stderr that the holding processes cannot be
/// named, naming `/proc/locks`. (Before: "cannot read lock file ...: No
/// such file or directory", for a file that exists, and no answer.)
#[test]
fn status_without_proc_answers_what_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let held = lockmgr::LockMgr::builder(&lock)
        .label("nightly")
        .build()
        .try_acquire()
        .unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(format!(
            "umount -l /proc && exec {LOCKMGR} status {}",
            lock.display()
        ))
        .output()
        .unwrap();
    drop(held);
    let (said, err) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{said}{err}");
    assert!(
        said.contains("held exclusive") && said.contains("nightly"),
        "{said}"
    );
    assert!(err.contains("/proc/locks"), "{err}");
}

/// `ARGS` run in a pid namespace of its own (`unshare --pid --fork
/// --mount-proc`, root), as a container that shares the host's name runs
/// it: `ARGS[0]` is pid 1 there.
fn contained(args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"]).args(args);
    cmd
}

/// [`contained`] `ARGS`, whose command says `ready` (then reads its stdin
/// to the end) once it holds the lock; returned then.
fn contained_holder(args: &[&str]) -> Child {
    let (holder, line) = started_saying(contained(args));
    assert_eq!(line, "ready\n");
    holder
}

/// Ends a [`contained_holder`]: its stdin closes.
fn end_contained(holder: Child) {
    assert!(finish(holder).status.success());
}

/// A holder in a pid namespace of its own (a container that shares the
/// host's name: Kubernetes' `hostNetwork`, `unshare --pid`) records the pid
/// it has there, 1 here. `status` does not call that record old or stale,
/// nor take it for the host's process 1: it ties it to the holding process
/// it names. (Before: "the record in the file names pid 1 on host ...,
/// which does not hold it (an old record)", JSON `"stale": true`.)
#[test]
fn a_holder_in_another_pid_namespace_is_not_an_old_record() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("ns.lock");
    let script = "echo ready; exec cat >/dev/null";
    let holder = contained_holder(&[LOCKMGR, "run", s(&lock), "--", "sh", "-c", script]);
    let out = lockmgr(&["status", s(&lock)]);
    let said = text(&out.stdout);
    assert!(said.contains("held exclusive by pid 1 "), "{said}");
    assert!(!said.contains("old record"), "{said}");
    assert!(!said.contains("stale"), "{said}");
    let out = lockmgr(&["status", "--json", s(&lock)]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["holder"]["pid"], 1, "{json}");
    assert_eq!(json["holder"]["stale"], false, "{json}");
    let named: Vec<_> = json["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["record"].is_null())
        .collect();
    assert_eq!(named.len(), 1, "the record is tied to one holder: {json}");
    assert_ne!(named[0]["pid"], 1, "{json}");
    end_contained(holder);
}

/// The same seen by a user who may not read the holder's namespace
/// (`/proc/PID/ns/pid` of another user's process): the holder's own pid,
/// which its status shows to anyone, ties the record to it. Here a `flock`
/// lock, whose holder `/proc/locks` names to anyone.
#[test]
fn a_holder_in_another_pid_namespace_is_not_an_old_record_to_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = dir.path().join("ns.lock");
    let script = "echo ready; exec cat >/dev/null";
    let run = [
        LOCKMGR,
        "run",
        "--kind",
        "flock",
        s(&lock),
        "--",
        "sh",
        "-c",
        script,
    ];
    let holder = contained_holder(&run);
    let out = Command::new(LOCKMGR)
        .args(["status", "--kind", "flock", s(&lock)])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(
        said.contains("held exclusive by pid 1 of another pid namespace"),
        "{said}"
    );
    assert!(!said.contains("old record"), "{said}");
    end_contained(holder);
}

/// The record a holder of one pid namespace left (pid 1 there) is not tied
/// to the holder of another namespace whose own pid is 1 too (two
/// containers that share the host's name): it is an old record. Here the
/// second holder is `flock(1)`, which writes none.
#[test]
fn a_record_of_one_container_is_not_tied_to_the_pid_1_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("ns.lock");
    let left = contained(&[LOCKMGR, "run", "--kind", "flock", s(&lock), "--", "true"])
        .output()
        .expect("util-linux unshare(1)");
    assert!(left.status.success(), "{}", text(&left.stderr));
    assert!(std::fs::read_to_string(&lock).unwrap().contains(" pid=1 "));
    let holder = contained_holder(&["flock", "-x", s(&lock), "sh", "-c", "echo ready; exec cat"]);
    let out = lockmgr(&["status", "--kind", "flock", s(&lock)]);
    let said = text(&out.stdout);
    assert!(said.contains("(an old record)"), "{said}");
    let out = lockmgr(&["status", "--kind", "flock", "--json", s(&lock)]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holders = json["holders"].as_array().unwrap();
    assert!(!holders.is_empty(), "{json}");
    assert!(holders.iter().all(|p| p["record"].is_null()), "{json}");
    end_contained(holder);
}

/// A SIGPIPE `lockmgr` was started with ignored (systemd starts services
/// so: `IgnoreSIGPIPE=yes`) stays ignored for its command, as under
/// `flock(1)`; one at its default stays so. Rust's runtime ignores SIGPIPE
/// in `lockmgr` itself, and gives its children the default unless told
/// otherwise. (Before: the command always got the default.)
#[test]
fn an_ignored_sigpipe_stays_ignored_for_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let command = ["run", s(&lock), "--", "grep", "SigIgn", "/proc/self/status"];
    let sigpipe_ignored = |out: &Output| {
        let said = text(&out.stdout);
        let mask = said.split_whitespace().last().expect("SigIgn: MASK");
        let mask = u64::from_str_radix(mask, 16).unwrap();
        mask & (1 << (Signal::SIGPIPE as u32 - 1)) != 0
    };
    let mut ignoring = Command::new(LOCKMGR);
    ignoring.args(command);
    common::sys::ignore_sigpipe(&mut ignoring);
    let out = ignoring.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(sigpipe_ignored(&out), "{}", text(&out.stdout));
    let out = lockmgr(&command);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!sigpipe_ignored(&out), "{}", text(&out.stdout));
}

/// Whether process `pid` exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Held by a test while it runs `lockmgr list` without a directory, which
/// opens every locked file of the host to read its record, and by the
/// tests that count the opens of a lock file of theirs.
static HOST_WIDE_LIST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The pid of the (only) child of `parent`, from /proc.
fn pid_of_child_of(parent: u32) -> i32 {
    let deadline = std::time::Instant::now() + common::LIVENESS;
    loop {
        let path = format!("/proc/{parent}/task/{parent}/children");
        let kids = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(pid) = kids.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no child of {parent}");
        std::thread::yield_now();
    }
}

/// The waiting display on a narrow terminal stays one row: a line wider
/// than the terminal wraps, and each refresh, which clears only the last
/// row, would leave the others behind (before: a new row every half second
/// on an 80-column terminal, for a long path or holder).
#[test]
fn the_waiting_display_fits_a_narrow_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir
        .path()
        .join(format!("{}.lock", "a-long-name-".repeat(8)));
    let held = lockmgr::LockMgr::builder(&lock)
        .label("a label that is long too")
        .build()
        .try_acquire()
        .unwrap();
    let (mut term, mut out) = on_a_terminal(&format!(
        "stty cols 60 rows 20; exec {LOCKMGR} run --wait 600 {} -- true",
        lock.display()
    ));
    out.until("attempt 1/10", 3);
    drop(held);
    assert!(term.wait().unwrap().success());
    let all = out.rest();
    let refreshes: Vec<&str> = all
        .split("\x1b[K")
        .skip(1)
        .map(|r| r.trim_end_matches(['\r', '\n']))
        .filter(|r| !r.is_empty())
        .collect();
    assert!(refreshes.len() >= 3, "{all:?}");
    for r in refreshes {
        assert!(r.chars().count() < 60, "{r:?} is wider than the terminal");
        assert!(r.starts_with("lockmgr: waiting for lock"), "{r:?}");
        assert!(r.ends_with("attempt 1/10"), "{r:?}");
    }
}

/// A warning while the waiting display is up starts a line of its own:
/// it clears the display's line, which draws itself again below it.
/// (Before: the warning was written at the end of the display's line.)
#[test]
fn a_warning_while_waiting_on_a_terminal_starts_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let held = lockmgr::LockMgr::new(&lock).try_acquire().unwrap();
    let (mut term, mut out) = on_a_terminal(&format!(
        "exec {LOCKMGR} run --wait 600 {} -- true",
        lock.display()
    ));
    out.until("attempt 1/10", 1);
    // The file waited for goes away: the waiter warns, and takes the one
    // now at the path.
    std::fs::rename(&lock, dir.path().join("old")).unwrap();
    std::fs::write(&lock, "").unwrap();
    drop(held);
    assert!(term.wait().unwrap().success());
    let all = out.rest();
    let at = all
        .find("WARN")
        .unwrap_or_else(|| panic!("no warning: {all:?}"));
    assert!(
        all[..at].trim_end_matches(' ').ends_with("\r\x1b[K"),
        "{all:?}"
    );
}

/// The waiting display on a terminal refreshes every half second without
/// opening the lock file: every close of it wakes every waiter on the host.
#[test]
fn the_waiting_display_does_not_touch_the_lock_file() {
    let _no_host_wide_list = HOST_WIDE_LIST.lock().unwrap_or_else(|e| e.into_inner());
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let held = lockmgr::LockMgr::new(&lock).try_acquire().unwrap();
    let (mut term, mut out) =
        on_a_terminal(&format!("exec {LOCKMGR} run {} -- true", lock.display()));
    // The display is up: lockmgr's own opens are behind it.
    out.until("waiting for lock", 1);
    let watch = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    watch
        .add_watch(&lock, AddWatchFlags::IN_OPEN | AddWatchFlags::IN_CLOSE)
        .unwrap();
    let shown = out.count("waiting for lock");
    out.until("waiting for lock", shown + 3);
    let touched = watch.read_events().map(|e| e.len()).unwrap_or(0);
    drop(held);
    assert!(term.wait().unwrap().success());
    assert_eq!(
        touched, 0,
        "the display opened the lock file while it waited"
    );
}

/// Arguments that are out of range give one clear line and status 2, or
/// have a documented meaning; none panics.
#[test]
fn no_argument_panics() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let run = |opts: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(opts);
        args.extend([s(&lock), "--", "true"]);
        lockmgr(&args)
    };
    // As long as it takes (the lock is free: the command runs).
    for wait in ["1e20", "inf", "1e308", "18446744073709551616"] {
        let out = run(&["--wait", wait]);
        assert!(out.status.success(), "--wait {wait}: {}", text(&out.stderr));
    }
    // Shorter than a nanosecond: one try.
    assert!(run(&["--wait", "1e-12"]).status.success());
    assert!(run(&["--attempts", "4294967295", "--wait", "0.01"])
        .status
        .success());
    assert!(run(&["--attempts", "0"]).status.success());
    for bad in [
        &["--wait", "nan"][..],
        &["--wait", "-1"],
        &["--wait", "-inf"],
        &["--wait", "soon"],
        &["--attempts", "99999999999"],
        &["--attempts", "-3"],
    ] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{bad:?}: {err}");
        assert!(err.starts_with("lockmgr: "), "{bad:?}: {err}");
        // A negative number is read as one, and told so (before: "unexpected
        // argument '-1' found"); `-inf` is no number to clap.
        if bad[1] != "-inf" {
            assert!(!err.contains("unexpected argument"), "{bad:?}: {err}");
        }
    }
    // Zero written with a sign is zero: one try.
    assert!(run(&["-w", "-0"]).status.success());
    // A `--wait` with no value before `--` says so (`--` is not taken for
    // its value).
    let out = lockmgr(&["run", s(&lock), "-w", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--wait"),
        "{}",
        text(&out.stderr)
    );
    // No arguments at all: the usage, not a bare line.
    let out = lockmgr(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Usage:"),
        "{}",
        text(&out.stderr)
    );
    // Held: the tiny wait and the many tiny attempts give up, and soon.
    let held = lockmgr::LockMgr::new(&lock).try_acquire().unwrap();
    assert_eq!(run(&["--wait", "1e-12"]).status.code(), Some(1));
    let out = run(&["--attempts", "4294967295", "--wait", "0.2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    drop(held);
}

/// Under every descriptor limit (`ulimit -n`) from the lowest a dynamically
/// linked program starts with, `lockmgr` either does its job or says in one
/// line why not, naming the lock when the trouble is the lock's; none
/// panics. (Before: Tokio's runtime panicked at 6 and 7 descriptors, and at
/// 12 `run` did not say which lock it could not hand over.)
#[test]
fn no_descriptor_limit_panics() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("limited.lock");
    let sem = dir.path().join("limited.sem");
    let cases: [&[&str]; 3] = [
        &["run", s(&lock), "--", "true"],
        &["run", "--permits", "2", s(&sem), "--", "true"],
        &["status", s(&lock)],
    ];
    let mut failures = 0;
    for limit in 4..=24 {
        for args in cases {
            let line = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
            let out = Command::new("sh")
                .args(["-c", &line, LOCKMGR])
                .args(args)
                .output()
                .unwrap();
            let err = text(&out.stderr);
            let what = format!("ulimit -n {limit}, {args:?}: {:?}: {err}", out.status);
            assert!(!err.contains("panicked"), "{what}");
            let code = out.status.code().unwrap_or_else(|| panic!("{what}"));
            if code == 0 {
                continue;
            }
            failures += 1;
            assert!(matches!(code, 2 | 126), "{what}");
            assert_eq!(err.lines().count(), 1, "{what}");
            let said = err
                .strip_prefix("lockmgr: ")
                .unwrap_or_else(|| panic!("{what}"));
            let path = args.iter().find(|a| a.starts_with('/')).unwrap();
            if said.contains("lock") {
                assert!(said.contains(path), "does not name the lock: {what}");
            }
        }
    }
    // The low limits did fail (the test would otherwise check nothing), and
    // the high ones did not.
    assert!(failures > 0);
    for args in cases {
        let line = "ulimit -n 24 && exec \"$0\" \"$@\"";
        let out = Command::new("sh")
            .args(["-c", line, LOCKMGR])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
}

/// `--kind flock` locks a file it may only read, as `flock(1)` does.
#[test]
fn flock_kind_locks_a_read_only_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = dir.path().join("shared.lock");
    std::fs::write(&lock, b"").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |opts: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(opts);
        args.extend([s(&lock), "--", "true"]);
        Command::new(LOCKMGR)
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["--kind", "flock"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // No token is the documented lot of a file that cannot be written: the
    // library's warning to those who asked for one is not shown.
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let out = as_nobody(&[]);
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out.stderr);
    assert!(said.contains("write"), "{said}");
    // The way out is named as the command spells it, not as the library's
    // builder does.
    assert!(said.contains("--kind flock"), "{said}");
    assert!(!said.contains("LockKind"), "{said}");
    // A semaphore takes OFD write locks, whatever the kind: no such hint.
    let out = as_nobody(&["--permits", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !text(&out.stderr).contains("--kind"),
        "{}",
        text(&out.stderr)
    );
}

/// A lock file that holds a script's own text (the `flock "$0"` idiom) is
/// locked without a word: no record is written into it, and no warning
/// about the fencing token it then cannot give.
#[test]
fn a_lock_file_with_data_is_locked_quietly_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let out = lockmgr(&["run", s(&script), "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&script).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
}

/// The waiting line of a run for a permit says every permit is taken, not
/// that "another owner" holds a lock. (Before: the lock's wording.)
#[test]
fn waiting_for_a_permit_says_every_permit_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let sem = dir.path().join("pool.sem");
    let (holder, slot) = common::run_until_said(
        &["--permits", "1", s(&sem)],
        "echo slot=$LOCKMGR_PERMIT_SLOT; exec cat >/dev/null",
    );
    assert_eq!(slot, "slot=0");
    let out = lockmgr(&[
        "run",
        "--permits",
        "1",
        "--wait",
        "0.2",
        s(&sem),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(said.contains("every permit taken"), "{said}");
    assert!(!said.contains("another owner"), "{said}");
    let out = lockmgr(&["run", "--permits", "1", "--nonblock", s(&sem), "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.contains("every permit of") && said.contains("is taken"),
        "{said}"
    );
    assert!(!said.contains("another owner"), "{said}");
    finish(holder);
}

/// `list DIR` shows a semaphore's file as one, with its permits taken, as
/// `status` does, and the holder of each permit under it. (Before: "held
/// exclusive", JSON state "exclusive", for one permit of three taken.)
#[test]
fn list_shows_a_semaphore_with_its_permits_taken() {
    let dir = tempfile::tempdir().unwrap();
    let sem = dir.path().join("pool.sem");
    let (holder, slot) = common::run_until_said(
        &["--permits", "3", s(&sem)],
        "echo slot=$LOCKMGR_PERMIT_SLOT; exec cat >/dev/null",
    );
    assert_eq!(slot, "slot=0");
    let out = lockmgr(&["list", s(dir.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!(
            "{}: a semaphore of 3 permits, 1 taken\n",
            sem.display()
        )),
        "{said}"
    );
    assert!(said.contains("  held by "), "{said}");
    let out = lockmgr(&["list", "--json", s(dir.path())]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = &listed[0];
    assert_eq!(ours["state"], "semaphore", "{listed}");
    assert_eq!(
        (ours["permits"].as_u64(), ours["taken"].as_u64()),
        (Some(3), Some(1)),
        "{listed}"
    );
    finish(holder);
}

/// A lock held exclusively by a process the caller cannot see (an OFD
/// lock, which the kernel ties to no process, of another user's process:
/// here root's, listed by `nobody`) is listed as held exclusive. (Before:
/// "held shared", JSON state "shared": a lock whose holder was unseen
/// counted as no exclusive holder.)
#[test]
fn list_shows_an_unseen_exclusive_holder_as_exclusive() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = dir.path().join("ofd.lock");
    let (mut holder, _said) = c_holder("ofd", "ex", &lock);
    let as_nobody = |json: bool| {
        let mut args = vec!["list"];
        args.extend(json.then_some("--json"));
        args.push(s(dir.path()));
        let out = Command::new(LOCKMGR)
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let said = as_nobody(false);
    assert!(
        said.contains(&format!("{}: held exclusive\n", lock.display())),
        "{said}"
    );
    let listed: serde_json::Value = serde_json::from_str(&as_nobody(true)).unwrap();
    assert_eq!(listed[0]["state"], "exclusive", "{listed}");
    assert_eq!(listed[0]["unseen"], 1, "{listed}");
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// `--permits` takes OFD locks: `--kind ofd` beside it is accepted (the
/// synopsis lists both), `--kind flock` refused with one line.
#[test]
fn permits_go_with_kind_ofd_only() {
    let dir = tempfile::tempdir().unwrap();
    let sem = dir.path().join("pool.sem");
    let out = lockmgr(&[
        "run",
        "--permits",
        "2",
        "--kind",
        "ofd",
        s(&sem),
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = lockmgr(&[
        "run",
        "--permits",
        "2",
        "--kind",
        "flock",
        s(&sem),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out.stderr);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains("--permits") && said.contains("flock"),
        "{said}"
    );
}

/// A holder that unlocks without closing (here a C program with
/// `flock(fd, LOCK_UN)`): `lockmgr run` without `--wait` still gets in.
#[test]
fn a_run_gets_in_when_a_foreign_holder_unlocks_without_closing() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let (mut foreign, mut said) = c_holder("flock", "ex", &lock);
    let mut line = String::new();
    let mut run = Command::new(LOCKMGR)
        .args(["run", "--kind", "flock", s(&lock), "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(run.stderr.take().unwrap());
    line.clear();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for lock"), "{line}");
    writeln!(foreign.stdin.as_mut().unwrap(), "unlock").unwrap();
    line.clear();
    said.read_line(&mut line).unwrap();
    assert_eq!(line, "unlocked\n");
    let status = ended(run);
    let _ = foreign.kill();
    let _ = foreign.wait();
    let status = status.expect("lockmgr run still waits on a free lock");
    assert!(status.success());
}

/// util-linux `flock(1)` holds a file with its command: `status` (asked
/// about OFD locks, which do not see it) says free, names both processes
/// with their family, and says which `--kind` asks about their lock;
/// `--json` carries the same. `list` names the file among the host's
/// locked files, and under its directory, next to a free lock file.
#[test]
fn status_and_list_name_a_flock_1_holder_and_tell_the_family() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("backup.lock");
    let free = dir.path().join("idle.lock");
    std::fs::write(&free, b"").unwrap();
    std::fs::write(dir.path().join("data.txt"), b"not a lock").unwrap();
    // No `exec` after the line: the command's name stays `sh`.
    let (mut flock, line) = flock_1_holding(&lock, "echo locked $$; read line || true");
    let command: u32 = line
        .trim()
        .strip_prefix("locked ")
        .unwrap()
        .parse()
        .unwrap();

    let out = lockmgr(&["status", s(&lock)]);
    assert_eq!(out.status.code(), Some(0), "free for OFD locks");
    let said = text(&out.stdout);
    assert!(
        said.starts_with(&format!("{}: free\n", lock.display())),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "held by flock pid {}, exclusive flock lock",
            flock.id()
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("held by sh pid {command}, exclusive flock lock")),
        "{said}"
    );
    assert!(said.contains("you asked for ofd (--kind flock"), "{said}");

    let out = lockmgr(&["status", "--kind", "flock", "--json", s(&lock)]);
    assert_eq!(out.status.code(), Some(1), "held for flock locks");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "exclusive");
    let holders = json["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 2, "{json}");
    assert!(holders
        .iter()
        .all(|h| h["family"] == "flock" && h["mode"] == "exclusive" && h["record"].is_null()));
    assert!(holders
        .iter()
        .any(|h| h["pid"] == flock.id() && h["command"] == "flock"));
    assert_eq!(json["unseen"], 0);
    assert_eq!(json["blocked_requests"], 0);
    assert_eq!(json["open_without_lock"], serde_json::json!([]));

    // The host's locked files include this one, by path. (The host-wide
    // list reads the record of every locked file of the host: not while
    // another test watches its lock file for opens.)
    let host_wide = HOST_WIDE_LIST.lock().unwrap_or_else(|e| e.into_inner());
    let out = lockmgr(&["list", "--json"]);
    drop(host_wide);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = all
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == s(&lock))
        .unwrap_or_else(|| panic!("{} not listed in {all}", lock.display()));
    assert_eq!(ours["state"], "exclusive");
    assert_eq!(ours["holders"].as_array().unwrap().len(), 2);

    // Under the directory: the locked file and the free lock file, not the
    // data file.
    let out = lockmgr(&["list", s(dir.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("{}: held exclusive\n", lock.display())),
        "{said}"
    );
    assert!(
        said.contains(&format!("  held by sh pid {command}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("{}: free\n", free.display())),
        "{said}"
    );
    assert!(!said.contains("data.txt"), "{said}");

    drop(flock.stdin.take());
    assert!(flock.wait().unwrap().success());
    let out = lockmgr(&["list", "--json", s(dir.path())]);
    let under: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        under
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["state"] == "free"),
        "{under}"
    );
    assert!(!lockmgr(&["list", "/nonexistent-dir"]).status.success());
}

/// `list DIR` of more files than it looks at (100,000) says so on stderr,
/// naming the directory, rather than list a part as if it were all.
/// (Before: the listing stopped there in silence.) With exactly that many
/// files, and an empty directory beside them, it says nothing.
#[test]
fn list_of_a_directory_too_large_to_look_at_whole_says_so() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..100_000 {
        std::fs::File::create(dir.path().join(format!("f{i}"))).unwrap();
    }
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = lockmgr(&["list", s(dir.path())]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stderr), "");
    std::fs::File::create(dir.path().join("empty").join("one-more")).unwrap();
    let out = lockmgr(&["list", s(dir.path())]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stderr);
    assert!(
        said.contains("only the first 100000 files") && said.contains(s(dir.path())),
        "{said:?}"
    );
    // A stderr that cannot take the note (a full disk) loses the note, not
    // the listing (before: a panic, exit status 101, nothing listed).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(LOCKMGR)
        .args(["list", s(dir.path())])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let few = tempfile::tempdir().unwrap();
    for i in 0..100 {
        std::fs::File::create(few.path().join(format!("f{i}"))).unwrap();
    }
    let out = lockmgr(&["list", s(few.path())]);
    assert_eq!(text(&out.stderr), "");
}

/// `list DIR` while lock files under it come and go (`remove_on_release`,
/// `/run/lock`): every run lists what stays. (Before: a file removed
/// between reading the directory and looking at the file failed the whole
/// listing, "cannot list DIR: No such file or directory", in about half the
/// runs.)
#[test]
fn list_of_a_directory_whose_files_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..200 {
        std::fs::write(dir.path().join(format!("keep{i}.lock")), "").unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = std::thread::spawn({
        let (dir, stop) = (dir.path().to_path_buf(), stop.clone());
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in 0..50 {
                    let p = dir.join(format!("t{i}.lock"));
                    let _ = std::fs::write(&p, "");
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    });
    let failed: Vec<String> = (0..40)
        .map(|_| lockmgr(&["list", s(dir.path())]))
        .filter(|out| !out.status.success() || !text(&out.stdout).contains("keep199.lock: free"))
        .map(|out| text(&out.stderr))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of 40 failed: {:?}",
        failed.len(),
        failed.first()
    );
}

/// `run` on a lock file gives its command a fencing token in
/// `LOCKMGR_FENCING_TOKEN`, greater with every run.
#[test]
fn run_gives_the_command_a_fencing_token_for_file_locks_too() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("fenced.lock");
    let token = || {
        let out = lockmgr(&[
            "run",
            s(&lock),
            "--",
            "sh",
            "-c",
            "echo \"$LOCKMGR_FENCING_TOKEN\"",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().parse::<u64>().unwrap()
    };
    let first = token();
    let second = token();
    assert_eq!((first, second), (1, 2));
}

/// A command that gets no token (a shared lock) or no slot (no
/// `--permits`) does not see the value `lockmgr` itself was started with:
/// an outer `lockmgr run`'s token or slot, or one set by hand, would look
/// like its own. (Before: passed through untouched.)
#[test]
fn run_passes_on_no_token_or_slot_that_is_not_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("inner.lock");
    let seen = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lockmgr"));
        command
            .arg("run")
            .args(args)
            .args([s(&lock), "--", "sh", "-c"])
            .arg("echo ${LOCKMGR_FENCING_TOKEN-none} ${LOCKMGR_PERMIT_SLOT-none}")
            .env("LOCKMGR_FENCING_TOKEN", "999999")
            .env("LOCKMGR_PERMIT_SLOT", "7");
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(seen(&["--shared"]), "none none\n");
    assert_eq!(seen(&[]), "1 none\n");
    let _ = std::fs::remove_file(&lock);
    assert_eq!(seen(&["--permits", "2"]), "none 0\n");
}

/// `run --permits 2`: two commands run at once, each told its slot; a
/// third is turned away with `--nonblock`, and a waiting one starts when
/// one of the two ends, in the slot it left.
#[test]
fn permits_let_n_commands_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let sem = dir.path().join("pool.sem");
    let start = |extra: &[&str]| {
        let mut args = vec!["--permits", "2"];
        args.extend_from_slice(extra);
        args.push(s(&sem));
        common::run_until_said(&args, "echo slot=$LOCKMGR_PERMIT_SLOT; exec cat >/dev/null")
    };
    let (first, first_slot) = start(&[]);
    let (second, second_slot) = start(&[]);
    let mut slots = [first_slot.clone(), second_slot];
    slots.sort();
    assert_eq!(slots, ["slot=0", "slot=1"]);

    let out = lockmgr(&["run", "--permits", "2", "-n", s(&sem), "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    let (third, third_slot) = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| start(&["--quiet"]));
        let out = finish(first);
        assert!(out.status.success());
        waiting.join().unwrap()
    });
    assert_eq!(third_slot, first_slot, "the slot the first left");
    assert!(finish(second).status.success());
    assert!(finish(third).status.success());

    let out = lockmgr(&["run", "--permits", "3", s(&sem), "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("has 2 permits"),
        "{}",
        text(&out.stderr)
    );
}

/// `status` of a semaphore's file counts the permits taken, and exits 0
/// while one is free (a `run --permits` would get in at once), 1 when all
/// are taken. (Before: "held exclusive (holder unknown)" as soon as one
/// permit was taken.)
#[test]
fn status_of_a_semaphore_counts_its_permits() {
    let dir = tempfile::tempdir().unwrap();
    let sem = dir.path().join("pool.sem");
    let first = holder(&sem, &["--permits", "2"]);
    let out = lockmgr(&["status", s(&sem)]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.starts_with(&format!("{}: a semaphore of 2 permits, 1 taken\n", s(&sem))),
        "{said}"
    );
    let second = holder(&sem, &["--permits", "2"]);
    let out = lockmgr(&["status", "--json", s(&sem)]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let json: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(json["state"], "semaphore", "{said}");
    assert_eq!(json["permits"], 2, "{said}");
    assert_eq!(json["taken"], 2, "{said}");
    assert!(finish(first).status.success());
    assert!(finish(second).status.success());
    let out = lockmgr(&["status", s(&sem)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with(&format!("{}: a semaphore of 2 permits, 0 taken", s(&sem))),
        "{}",
        text(&out.stdout)
    );
}

/// The library's warnings reach the operator on stderr (here: fencing
/// tokens that can go no higher), and `LOCKMGR_LOG` sets how much is shown
/// (`off` shows none). Before, `lockmgr` installed no subscriber, so every
/// warning was lost.
#[test]
fn library_warnings_are_shown_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("fenced.lock");
    let record = format!("lockmgr-holder/1 pid=1 host=h since=1 token={}\n", u64::MAX);
    let run = |log: Option<&str>| {
        std::fs::write(&lock, &record).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lockmgr"));
        command.args([
            "run",
            s(&lock),
            "--",
            "sh",
            "-c",
            "echo ${LOCKMGR_FENCING_TOKEN-none}",
        ]);
        command.env_remove("LOCKMGR_LOG");
        if let Some(log) = log {
            command.env("LOCKMGR_LOG", log);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "none\n", "no token past the largest");
        text(&out.stderr)
    };
    let said = run(None);
    assert!(
        said.contains("fencing token") && said.contains(s(&lock)),
        "the warning names the lock: {said:?}"
    );
    assert_eq!(said.lines().count(), 1, "{said:?}");
    assert_eq!(run(Some("off")), "", "LOCKMGR_LOG=off");
    assert_eq!(
        run(Some("")),
        said,
        "LOCKMGR_LOG set but empty is the default"
    );
    assert!(
        run(Some("debug")).lines().count() > 1,
        "LOCKMGR_LOG=debug shows more"
    );

    // A warning that cannot be written is lost, and the command still runs
    // (before: a panic of the formatter's own error report, exit 101).
    std::fs::write(&lock, &record).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockmgr"))
        .args(["run", s(&lock), "--", "echo", "ran"])
        .env("LOCKMGR_LOG", "debug")
        .stderr(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "ran\n");
}

/// Output to a pipe nobody reads any more (`lockmgr list | head -1`, a log
/// reader that went away) ends `status` and `list` by SIGPIPE, as it ends
/// `ls`, and does not stop `run`, whose lines on stderr are only news: it
/// still waits, gives up or runs its command as it would have. An answer
/// that cannot be written otherwise (`/dev/full`) is one line and exit 2.
/// None panics. (Before: each panicked, "failed printing to stdout: Broken
/// pipe", exit 101.)
#[test]
fn a_reader_that_went_away_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l.lock");
    std::fs::write(&lock, b"").unwrap();
    // A pipe whose reading end is closed before lockmgr starts: its first
    // write fails with EPIPE, whatever the timing. Close-on-exec, or a
    // program another test starts meanwhile would keep the reading end.
    let broken = || {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(read);
        Stdio::from(write)
    };
    let spawn = |args: &[&str], stdout: Stdio, stderr: Stdio| {
        Command::new(LOCKMGR)
            .args(args)
            .stdout(stdout)
            .stderr(stderr)
            .output()
            .unwrap()
    };
    for args in [
        &["status", s(&lock)][..],
        &["status", "--json", s(&lock)],
        &["list", s(dir.path())],
        &["list", "--json", s(dir.path())],
    ] {
        let out = spawn(args, broken(), Stdio::piped());
        assert_eq!(
            out.status.signal(),
            Some(Signal::SIGPIPE as i32),
            "{args:?}: {:?}: {}",
            out.status,
            text(&out.stderr)
        );
    }
    // An answer that cannot be written for another reason (a full disk):
    // one line, exit status 2.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = spawn(&["status", s(&lock)], Stdio::from(full), Stdio::piped());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{:?}: {err}", out.status);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("lockmgr: cannot write the answer: "),
        "{err}"
    );
    // run, its stderr broken: a free lock runs the command...
    let out = spawn(
        &["run", s(&lock), "--", "sh", "-c", "echo ran"],
        Stdio::piped(),
        broken(),
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", out.status);
    assert_eq!(text(&out.stdout), "ran\n");
    // ...and a held one is waited for (the waiting line lost), then given
    // up on, with the status that says so.
    let held = lockmgr::LockMgr::new(&lock).try_acquire().unwrap();
    let out = spawn(
        &["run", "--wait", "0.2", s(&lock), "--", "true"],
        Stdio::piped(),
        broken(),
    );
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    drop(held);
}

/// What other processes wrote (the label of a holder record, a command
/// name, a file name) cannot forge a line of `status` or `list`, nor drive
/// the terminal: text with a control character in it is shown quoted and
/// escaped. (Before: printed as it was, escape sequences and newlines
/// included.)
#[test]
fn text_from_other_processes_cannot_forge_lines() {
    let dir = tempfile::tempdir().unwrap();
    let forged = "\nforged.lock: free\x1b[2J";
    // A file name, a label and a command name, each with the forged line.
    let lock = dir.path().join(format!("odd{forged}.lock"));
    let labelled = holder(&lock, &["--label", &format!("job{forged}")]);
    let other = dir.path().join("other.lock");
    // Python's own fcntl.lockf: a POSIX lock, held by a process whose
    // command name (`/proc/PID/comm`) it set itself.
    let script = "import fcntl, os, sys\n\
                  f = open(sys.argv[1], 'a')\n\
                  open('/proc/self/comm', 'w').write(os.environ['COMM'])\n\
                  fcntl.lockf(f, fcntl.LOCK_EX)\n\
                  print('locked', flush=True)\n\
                  sys.stdin.read()\n";
    let mut named = Command::new("python3")
        .args(["-c", script, s(&other)])
        .env("COMM", "py\nx: free\x1b[2J")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(named.stdout.as_mut().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said, "locked\n");

    for args in [
        &["status", s(&lock)][..],
        &["status", s(&other)],
        // (Not the host-wide `list`: it reads the record of every locked
        // file of the host, which other tests watch.)
        &["list", s(dir.path())],
    ] {
        let out = lockmgr(args);
        let said = text(&out.stdout);
        assert!(!said.contains('\x1b'), "{args:?}: {said:?}");
        for line in said.lines() {
            assert!(
                line.starts_with('/') || line.starts_with("  ") || line.starts_with('"'),
                "{args:?}: a forged line {line:?} in {said:?}"
            );
        }
    }
    let out = lockmgr(&["status", s(&lock)]);
    assert!(
        text(&out.stdout).contains(r#"\u{1b}[2J"#),
        "{}",
        text(&out.stdout)
    );
    // Error lines name a path the same way: a missing file, a directory
    // that is not there.
    let missing = dir.path().join(format!("gone{forged}.lock"));
    let no_dir = dir.path().join(format!("no-dir{forged}"));
    for args in [&["status", s(&missing)][..], &["list", s(&no_dir)]] {
        let out = lockmgr(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let said = text(&out.stderr);
        assert!(!said.contains('\x1b'), "{args:?}: {said:?}");
        assert_eq!(
            said.lines().count(),
            1,
            "{args:?}: a forged line in {said:?}"
        );
    }

    drop(named.stdin.take());
    named.wait().unwrap();
    finish(labelled);
}

/// `lockmgr list DIR` opens (to read its record) no locked file outside
/// DIR: every open and close of a lock file wakes its waiters. (Before: it
/// read the record of every locked file of the host, then kept those under
/// DIR.)
#[test]
fn listing_a_directory_opens_no_lock_file_outside_it() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let _no_host_wide_list = HOST_WIDE_LIST.lock().unwrap_or_else(|e| e.into_inner());
    let listed = tempfile::tempdir().unwrap();
    let inside = listed.path().join("in.lock");
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().join("out.lock");
    let _held_inside = lockmgr::LockMgr::builder(&inside)
        .label("inside")
        .build()
        .try_acquire()
        .unwrap();
    let _held_outside = lockmgr::LockMgr::new(&outside).try_acquire().unwrap();
    let watch = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    watch
        .add_watch(&outside, AddWatchFlags::IN_OPEN | AddWatchFlags::IN_CLOSE)
        .unwrap();

    let out = lockmgr(&["list", s(listed.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    // What is under DIR is still listed in full, its record included.
    assert!(
        said.starts_with(&format!("{}: held exclusive\n", inside.display())),
        "{said}"
    );
    assert!(said.contains("label inside"), "{said}");
    assert!(!said.contains("out.lock"), "{said}");
    let touched = watch.read_events().map(|e| e.len()).unwrap_or(0);
    assert_eq!(touched, 0, "list opened a lock file outside its directory");
}

/// A record that names a living process which does not hold the lock (its
/// pid reused since, or a program that writes no record holds the file
/// now) is said to be an old record, not given as the holder. (Before:
/// "held exclusive by pid 1 ... (deploy)", "stale": false, while the lines
/// below named flock(1) and its command.)
#[test]
fn status_says_an_old_record_is_one_when_another_process_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("deploy.lock");
    // pid 1 lives, and holds no lock on this file. (A record of another
    // host is not judged: its pids are not this host's.)
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    std::fs::write(
        &lock,
        format!("lockmgr-holder/1 pid=1 host={host} since=1763917331 label=deploy\n"),
    )
    .unwrap();
    let (mut flock, line) = flock_1_holding(&lock, "echo locked; read line || true");
    assert_eq!(line, "locked\n");

    let out = lockmgr(&["status", "--kind", "flock", s(&lock)]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stdout);
    let first = said.lines().next().unwrap();
    assert!(
        first.ends_with(&format!(
            "held exclusive; the record in the file names pid 1 on host {host}, which does not \
             hold it (an old record)"
        )),
        "{said}"
    );
    assert!(said.contains("  held by flock pid "), "{said}");
    let out = lockmgr(&["status", "--kind", "flock", "--json", s(&lock)]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["holder"]["pid"], 1);
    assert_eq!(json["holder"]["stale"], true, "{json}");
    // The same record from another host is given as it is.
    std::fs::write(
        &lock,
        "lockmgr-holder/1 pid=1 host=elsewhere since=1763917331 label=deploy\n",
    )
    .unwrap();
    let out = lockmgr(&["status", "--kind", "flock", s(&lock)]);
    let said = text(&out.stdout);
    assert!(
        said.contains(": held exclusive by pid 1 on host elsewhere "),
        "{said}"
    );

    drop(flock.stdin.take());
    assert!(flock.wait().unwrap().success());
}

/// A `lockmgr run` (OFD, with its record) and `flock(1)` hold one file,
/// each in its own family. `status --kind flock` does not name the OFD
/// holder from its record (on the old code it said "held exclusive by" that
/// pid, which holds no flock lock): the holder is unknown, and the lines
/// under it name both. A POSIX holder seen from `--kind flock` is pointed to
/// `--kind ofd`, which sees POSIX locks (the old code said `--kind posix`,
/// which does not exist).
#[test]
fn status_names_no_holder_from_the_other_familys_record() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("both.lock");
    let ofd = holder(&lock, &[]);
    let (flock, line) = flock_1_holding(&lock, "echo locked; read line || true");
    assert_eq!(line.trim(), "locked");
    let out = lockmgr(&["status", "--kind", "flock", s(&lock)]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        !said.contains(&format!("held exclusive by pid {}", ofd.id())),
        "{said}"
    );
    assert!(said.contains("held exclusive (holder unknown)"), "{said}");
    assert!(
        said.contains(&format!(
            "held by lockmgr pid {}, exclusive ofd lock",
            ofd.id()
        )),
        "{said}"
    );
    let out = lockmgr(&["status", "--kind", "flock", "--json", s(&lock)]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["holder"].is_null(), "{json}");
    finish(flock);
    finish(ofd);

    let posix = dir.path().join("posix.lock");
    let (foreign, _) = c_holder("posix", "ex", &posix);
    let out = lockmgr(&["status", "--kind", "flock", s(&posix)]);
    let said = text(&out.stdout);
    assert!(said.contains("(--kind ofd asks about"), "{said}");
    finish(foreign);
}

/// A stderr that takes nothing (a pipe whose reader has stopped reading, a
/// terminal stopped with Ctrl-S) holds up neither the wait's deadline nor
/// the signals read between lines: the waiting line is lost, and `-w 1`
/// ends the run when its second is up. On the old code `lockmgr` hung in
/// `write(2)` for as long as nobody read, past its deadline and deaf to
/// SIGTERM and SIGINT.
#[test]
fn a_stderr_nobody_reads_does_not_hold_up_the_wait() {
    use nix::fcntl::OFlag;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::OwnedFd;
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let held = holder(&lock, &[]);
    // A pipe, and a stream socket as systemd gives a service for its
    // journal: (the end nobody reads, the end that is stderr).
    let pipe = || -> (OwnedFd, OwnedFd) { nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap() };
    let socket = || -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    };
    for (what, (reader, writer)) in [("pipe", pipe()), ("socket", socket())] {
        fill(&writer);
        let run = Command::new(LOCKMGR)
            .args(["run", "-w", "1", s(&lock), "--", "true"])
            .stderr(Stdio::from(writer))
            .spawn()
            .unwrap();
        let status = ended(run);
        drop(reader);
        let status = status.unwrap_or_else(|| panic!("{what}: lockmgr hung on its stderr"));
        assert_eq!(
            status.code(),
            Some(1),
            "{what}: timed out, the conflict status"
        );

        // A SIGTERM while a line is stuck in the write: `lockmgr` ends by
        // it at once. (The first version of the writing thread held
        // stderr's lock while stuck, and the flush before `lockmgr` ends by
        // a signal waited for it for good.)
        let (reader, writer) = if what == "pipe" { pipe() } else { socket() };
        fill(&writer);
        let run = Command::new(LOCKMGR)
            .args(["run", "-w", "60", s(&lock), "--", "true"])
            .stderr(Stdio::from(writer))
            .spawn()
            .unwrap();
        let pid = run.id();
        let stuck = std::time::Instant::now() + common::LIVENESS;
        while !stuck_writing(pid) {
            assert!(
                std::time::Instant::now() < stuck,
                "{what}: no line got stuck"
            );
            std::thread::yield_now();
        }
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        let status = ended(run);
        drop(reader);
        let status = status.unwrap_or_else(|| panic!("{what}: SIGTERM did not end lockmgr"));
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{what}");
    }
    finish(held);
}

/// Whether a thread of process `pid` sleeps in a write to a pipe or
/// socket (its kernel wait channel says so).
fn stuck_writing(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("wchan"))
            .is_ok_and(|w| w.contains("pipe_write") || w.contains("sock") || w.contains("stream"))
    })
}

/// A file system that refuses locks (`ENOLCK`, as NFS without its lock
/// daemon gives), made by preloading a library that fails every lock
/// request so: `run` (waiting or not, either family) and `status` fail at
/// once, exit 2, with one line that names the lock and says why, and the
/// command never runs.
#[test]
fn a_file_system_that_refuses_locks_is_one_clear_error() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/foreign/nolocks.c");
    let shim =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nolocks-{}.so", std::process::id()));
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-o"])
        .arg(&shim)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(built.success());
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let ran = dir.path().join("ran");
    let touch = format!("touch {}", s(&ran));
    for args in [
        vec!["run", s(&lock), "--", "sh", "-c", &touch],
        vec![
            "run",
            "-n",
            "--kind",
            "flock",
            s(&lock),
            "--",
            "sh",
            "-c",
            &touch,
        ],
        vec!["run", "--shared", s(&lock), "--", "sh", "-c", &touch],
        vec!["status", s(&lock)],
        vec!["status", "--kind", "flock", s(&lock)],
    ] {
        let out = Command::new(LOCKMGR)
            .args(&args)
            .env("LD_PRELOAD", &shim)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(s(&lock)), "{args:?}: {err}");
        assert!(err.contains("No locks available"), "{args:?}: {err}");
    }
    assert!(!ran.exists(), "a command ran without its lock");
    let _ = std::fs::remove_file(&shim);
}

/// `lockmgr` run as another user than the owner of its stderr (a pipe or
/// terminal it cannot open anew), with a line longer than the room left in
/// the pipe (a lock path of escaped control bytes): the write blocked
/// part-way, past the `-w` deadline and deaf to signals, in the version
/// before lines were written by a thread of their own. Now the run ends
/// when its wait does.
#[test]
fn a_long_line_to_another_users_full_pipe_does_not_hold_up_the_wait() {
    use nix::fcntl::OFlag;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    // Root only (it runs `lockmgr` as another user): `/proc/self` is
    // owned by the process's user.
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Four directories of 200 control bytes each: shown escaped, the
    // waiting line is longer than a pipe's page.
    let mut parent = dir.path().to_path_buf();
    for c in [1u8, 2, 3, 4] {
        use std::os::unix::ffi::OsStrExt;
        parent.push(std::ffi::OsStr::from_bytes(&[c; 200]));
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let lock = parent.join("l");
    std::fs::write(&lock, b"").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let held = holder(&lock, &[]);
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    // Full, then one page read off: room for less than the line.
    fill(&writer);
    let mut reader = std::fs::File::from(reader);
    reader.read_exact(&mut [0u8; 4096]).unwrap();
    let run = Command::new(LOCKMGR)
        .args(["run", "-w", "1"])
        .arg(&lock)
        .args(["--", "true"])
        .uid(65534)
        .gid(65534)
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    let status = ended(run);
    drop(reader);
    finish(held);
    let status = status.expect("lockmgr hung in a write to its stderr");
    assert_eq!(status.code(), Some(1), "timed out: the conflict status");
}

/// `run --no-record` writes no holder record: an empty file (a new
/// `lockmgr` journal, which would take the record for its first record)
/// stays empty, and the command gets no fencing token. Without it, the
/// record is the file's first line.
#[test]
fn no_record_leaves_an_empty_file_empty() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("journal");
    std::fs::write(&file, b"").unwrap();
    let out = lockmgr(&[
        "run",
        "--no-record",
        s(&file),
        "--",
        "sh",
        "-c",
        "test -z \"$LOCKMGR_FENCING_TOKEN\"",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), b"");
    let out = lockmgr(&["run", s(&file), "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.starts_with("lockmgr-holder/1 "), "{written}");
    // A PostgreSQL lock has no record to leave out: refused, not ignored.
    if cfg!(feature = "postgres") {
        let out = lockmgr(&[
            "run",
            "--no-record",
            "--postgres",
            "host=db",
            "x",
            "--",
            "true",
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("cannot be used with"),
            "{}",
            text(&out.stderr)
        );
    }
}
