//! `lockmgr run|status --postgres URL | --postgres-env | --postgres-url-var
//! VAR NAME`, driven as a real binary against the server of
//! `scripts/with-postgres` (see `tests/pg.rs` for how the server is found).
#![deny(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lockmgr::pg::PgLockMgr;

const LOCKMGR: &str = env!("CARGO_BIN_EXE_lockmgr");

fn lockmgr(args: &[&str]) -> Output {
    Command::new(LOCKMGR).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_and_status_on_a_postgres_lock() {
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-{}", std::process::id());

    let out = lockmgr(&["status", "--postgres", &url, "--json", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"state\":\"free\""),
        "{}",
        text(&out.stdout)
    );

    // A holder that runs until its stdin closes, and shows its token.
    let mut first = Command::new(LOCKMGR)
        .args(["run", "--postgres", &url, "--label", "nightly", &name, "--"])
        .args([
            "sh",
            "-c",
            "echo token=$LOCKMGR_FENCING_TOKEN; exec cat >/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let token: u64 = line
        .trim()
        .strip_prefix("token=")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no token in {line:?}"));

    let out = lockmgr(&["run", "--postgres", &url, "--nonblock", &name, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&name) && err.contains("(nightly)"), "{err}");

    let out = lockmgr(&["status", "--postgres", &url, "--json", &name]);
    assert_eq!(out.status.code(), Some(1));
    let json = text(&out.stdout);
    assert!(json.contains("\"kind\":\"postgres\""), "{json}");
    assert!(json.contains("\"state\":\"exclusive\""), "{json}");
    assert!(json.contains("\"label\":\"nightly\""), "{json}");

    drop(first.stdin.take());
    assert!(first.wait().unwrap().success());

    // The next holder gets a later token.
    let out = lockmgr(&[
        "run",
        "--postgres",
        &url,
        &name,
        "--",
        "sh",
        "-c",
        "echo $LOCKMGR_FENCING_TOKEN",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let next: u64 = text(&out.stdout).trim().parse().unwrap();
    assert!(next > token);
}

/// `lockmgr run --postgres` of `script` (which says `started` once it
/// runs) on the lock `name`, whose session the server then ends: how
/// `lockmgr` ended (`None`: still running 40 s later, when it is killed,
/// and its command with it), and the lock, free or not.
fn run_and_lose_the_session(url: &str, name: &str, script: &str) -> (Option<Output>, PgLockMgr) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut child = Command::new(LOCKMGR)
        .args(["run", "--postgres", url, name, "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lock = PgLockMgr::new(url, name).unwrap();
    let ended = rt.block_on(async {
        let backend = lock.holder().await.unwrap().expect("held").pid as i32;
        let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&backend])
            .await
            .unwrap();
        let pid = child.id() as i32;
        let waited = tokio::time::timeout(Duration::from_secs(40), async {
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap()
        })
        .await;
        if waited.is_err() {
            // Ends the command too (it dies with `lockmgr`).
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        waited.ok()
    });
    (ended, lock)
}

#[test]
fn a_lost_session_stops_the_command() {
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-lost-{}", std::process::id());
    let (ended, lock) = run_and_lose_the_session(&url, &name, "echo started; exec sleep 600");
    let status = ended.expect("the command was not stopped");
    // The command died of the SIGTERM, and lockmgr with it.
    assert_eq!(status.status.signal(), Some(15), "{}", text(&status.stderr));
    assert!(text(&status.stderr).contains("lock was lost"));
    // The lock is free for the next one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { drop(lock.try_acquire().await.unwrap()) });
}

/// A command that ends well on the SIGTERM of a lost lock (a graceful
/// shutdown, exit 0) does not make `lockmgr run` say success: its work ran
/// on past the lock's end, which a `lockmgr run ... && next` must not take
/// for done. It ends with status 2, and says why. (Before: 0.)
#[test]
fn a_command_that_exits_0_after_its_lock_was_lost_is_not_a_success() {
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-lost-graceful-{}", std::process::id());
    let script = "trap 'kill $!; exit 0' TERM; echo started; sleep 600 >/dev/null 2>&1 & wait";
    let (ended, _) = run_and_lose_the_session(&url, &name, script);
    let status = ended.expect("the command was not stopped");
    let err = text(&status.stderr);
    assert_eq!(status.status.code(), Some(2), "{err}");
    assert!(err.contains("lock was lost"), "{err}");
}

/// A command that ignores SIGTERM is not left running without its lock:
/// once the lock is lost, it gets SIGTERM, and SIGKILL a grace period
/// later (`--kill-after`, 10 s by default).
#[test]
fn a_lost_session_kills_a_command_that_ignores_sigterm() {
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-lost-stubborn-{}", std::process::id());
    // The ignored SIGTERM is inherited by the program it execs.
    let script = "trap '' TERM; echo started; exec sleep 600";
    let (ended, _) = run_and_lose_the_session(&url, &name, script);
    let status = ended.expect("the command runs on without the lock");
    let err = text(&status.stderr);
    assert_eq!(status.status.signal(), Some(9), "{err}");
    assert!(
        err.contains("lock was lost") && err.contains("SIGKILL"),
        "{err}"
    );
}

/// Whether process `pid` still runs (a zombie does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit(')').next().map(|rest| rest.trim().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// The lock lives in `lockmgr`'s own session, which dies with it: when
/// `lockmgr run` is killed, its command is ended at once, so it never runs
/// without the lock.
#[test]
fn a_killed_lockmgr_ends_its_command() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-killed-{}", std::process::id());
    let mut child = Command::new(LOCKMGR)
        .args(["run", "--postgres", &url, &name, "--"])
        .args(["sh", "-c", "echo $$; exec sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let command: i32 = line.trim().parse().unwrap();
    assert!(running(command));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + common::LIVENESS;
    while running(command) {
        if std::time::Instant::now() > deadline {
            let _ = kill(Pid::from_raw(command), Signal::SIGKILL);
            panic!("the command runs on after lockmgr died, without the lock");
        }
        std::thread::yield_now();
    }
}

/// The test server piece by piece (`LOCKMGR_PG_HOST`, ... of
/// `scripts/with-postgres`), `None` when there is none.
struct Server {
    url: String,
    host: String,
    port: String,
    user: String,
    password: String,
    db: String,
}

fn server() -> Option<Server> {
    let url = common::pg_url()?;
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    Some(Server {
        url,
        host: var("LOCKMGR_PG_HOST"),
        port: var("LOCKMGR_PG_PORT"),
        user: var("LOCKMGR_PG_USER"),
        password: var("LOCKMGR_PG_PASSWORD"),
        db: var("LOCKMGR_PG_DB"),
    })
}

/// `lockmgr` with none of the caller's libpq settings: no `PG*` variables,
/// and `home` as `HOME` (a directory without a `.pgpass`, unless the test
/// puts one there).
fn bare(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(LOCKMGR);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home);
    cmd
}

/// `bare`, with the server's host, port, user and database in `PGHOST`,
/// `PGPORT`, `PGUSER` and `PGDATABASE`, and no password anywhere.
fn without_password(pg: &Server, home: &std::path::Path) -> Command {
    let mut cmd = bare(home);
    cmd.env("PGHOST", &pg.host)
        .env("PGPORT", &pg.port)
        .env("PGUSER", &pg.user)
        .env("PGDATABASE", &pg.db)
        .env("PGPASSFILE", home.join("no-such-file"));
    cmd
}

fn output(cmd: &mut Command, args: &[&str]) -> Output {
    cmd.args(args).output().unwrap()
}

/// Neither output holds `secret`.
fn assert_unseen(out: &Output, secret: &str) {
    assert!(
        !text(&out.stdout).contains(secret),
        "the password in stdout"
    );
    assert!(
        !text(&out.stderr).contains(secret),
        "the password in stderr"
    );
}

/// Gives `run` (on `cmd`, after its own arguments) a command that asks,
/// with `lockmgr status ARGS... --json NAME`, about the lock its `lockmgr
/// run` holds, prints the answer, fails (exit 3) if lockmgr's command line
/// or its own holds `secret` (given to it in the environment), and else
/// exits with 40 plus the status's exit status (41: held).
fn status_from_inside(cmd: &mut Command, args: &[&str], name: &str, secret: &str) {
    cmd.env("LOCKMGR_TEST_SECRET", secret)
        .args(["--", "sh", "-c"])
        .arg(
            r#"for p in $PPID $$; do
                 if tr '\0' ' ' </proc/$p/cmdline | grep -qF -- "$LOCKMGR_TEST_SECRET"; then
                   echo "the password in the command line of $p"; exit 3
                 fi
               done
               "$@"; exit $((40 + $?))"#,
        )
        .args(["sh", LOCKMGR, "status"])
        .args(args)
        .args(["--json", name]);
}

#[test]
fn postgres_env_takes_the_connection_from_the_libpq_environment() {
    let Some(pg) = server() else { return };
    let home = tempfile::tempdir().unwrap();
    let name = format!("cli-env-{}", std::process::id());
    let env = || {
        let mut cmd = without_password(&pg, home.path());
        cmd.env("PGPASSWORD", &pg.password);
        cmd
    };

    let out = output(&mut env(), &["status", "--postgres-env", "--json", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"state\":\"free\""),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(text(&out.stderr), "");

    // `run` holds the lock while its command runs, and the command (with
    // the same environment) sees it held.
    let mut run = env();
    run.args(["run", "--postgres-env", "-E", "9", &name]);
    status_from_inside(&mut run, &["--postgres-env"], &name, &pg.password);
    let out = run.output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(41),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("\"state\":\"exclusive\""), "{stdout}");
    assert!(stdout.contains("\"kind\":\"postgres\""), "{stdout}");
    assert_unseen(&out, &pg.password);

    // Without the password (none in the environment, no password file):
    // no login.
    let out = output(
        &mut without_password(&pg, home.path()),
        &["status", "--postgres-env", &name],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
}

#[test]
fn a_password_file_is_used_only_when_others_cannot_read_it() {
    use std::os::unix::fs::PermissionsExt;
    let Some(pg) = server() else { return };
    let home = tempfile::tempdir().unwrap();
    let name = format!("cli-pgpass-{}", std::process::id());
    let file = home.path().join("passwords");
    std::fs::write(
        &file,
        format!(
            "# lockmgr tests\nother:{}:*:*:wrong\n{}:{}:{}:{}:{}\n",
            pg.port, pg.host, pg.port, pg.db, pg.user, pg.password
        ),
    )
    .unwrap();
    let mode =
        |m: u32| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).unwrap();
    let with_file = || {
        let mut cmd = without_password(&pg, home.path());
        cmd.env("PGPASSFILE", &file);
        cmd
    };

    mode(0o600);
    let out = output(
        &mut with_file(),
        &["status", "--postgres-env", "--json", &name],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"state\":\"free\""),
        "{}",
        text(&out.stdout)
    );
    let mut run = with_file();
    run.args(["run", "--postgres-env", "-E", "9", &name]);
    status_from_inside(&mut run, &["--postgres-env"], &name, &pg.password);
    let out = run.output().unwrap();
    assert_eq!(out.status.code(), Some(41), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"state\":\"exclusive\""),
        "{}",
        text(&out.stdout)
    );
    assert_unseen(&out, &pg.password);

    // ~/.pgpass when PGPASSFILE is not set, with a connection string that
    // names the server and leaves the password out.
    let dot = home.path().join(".pgpass");
    std::fs::copy(&file, &dot).unwrap();
    std::fs::set_permissions(&dot, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conninfo = format!(
        "host={} port={} user={} dbname={}",
        pg.host, pg.port, pg.user, pg.db
    );
    let out = output(
        &mut bare(home.path()),
        &["status", "--postgres", &conninfo, &name],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "a warning without a password");
    std::fs::remove_file(&dot).unwrap();

    // Readable by others: ignored, as by libpq, so the login fails; the
    // library's warning says why (as libpq's does), then the error line.
    mode(0o644);
    let out = output(&mut with_file(), &["status", "--postgres-env", &name]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("password file may be read by others"),
        "{err}"
    );
    assert!(
        lines[1].contains("refused the login") && lines[1].contains("password"),
        "{err}"
    );
    assert_unseen(&out, &pg.password);
}

#[test]
fn postgres_url_var_reads_the_url_from_the_named_variable() {
    let Some(pg) = server() else { return };
    let home = tempfile::tempdir().unwrap();
    let name = format!("cli-url-var-{}", std::process::id());
    let with_var = || {
        let mut cmd = bare(home.path());
        cmd.env("MY_LOCK_DB", &pg.url);
        cmd
    };

    let out = output(
        &mut with_var(),
        &[
            "status",
            "--postgres-url-var",
            "MY_LOCK_DB",
            "--json",
            &name,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"state\":\"free\""),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(text(&out.stderr), "");

    let mut run = with_var();
    run.args(["run", "--postgres-url-var", "MY_LOCK_DB", "-E", "9", &name]);
    status_from_inside(
        &mut run,
        &["--postgres-url-var", "MY_LOCK_DB"],
        &name,
        &pg.password,
    );
    let out = run.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(41),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("\"state\":\"exclusive\""),
        "{}",
        text(&out.stdout)
    );
    assert_unseen(&out, &pg.password);
}

/// Needs no server: the variable is read before any connection.
#[test]
fn a_missing_url_variable_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["status", "--postgres-url-var", "MY_LOCK_DB", "jobs"][..],
        &[
            "run",
            "--postgres-url-var",
            "MY_LOCK_DB",
            "jobs",
            "--",
            "true",
        ][..],
    ] {
        let mut cmd = bare(home.path());
        cmd.env_remove("MY_LOCK_DB");
        let out = output(&mut cmd, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("MY_LOCK_DB") && err.contains("not set"),
            "{err}"
        );
        assert_eq!(text(&out.stdout), "");

        let mut cmd = bare(home.path());
        cmd.env("MY_LOCK_DB", "");
        let out = output(&mut cmd, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("MY_LOCK_DB") && err.contains("empty"), "{err}");
    }
    // Not UTF-8: named, not shown.
    {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = bare(home.path());
        cmd.env(
            "MY_LOCK_DB",
            std::ffi::OsStr::from_bytes(b"postgres://u:s\xffcret@h/d"),
        );
        let out = output(
            &mut cmd,
            &["status", "--postgres-url-var", "MY_LOCK_DB", "jobs"],
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("MY_LOCK_DB") && err.contains("UTF-8"), "{err}");
        assert!(!err.contains("cret"), "{err}");
    }
}

/// A connection string given where a variable's name or a lock's name
/// belongs (`--postgres-url-var postgres://...`, or after `--postgres-env`)
/// is refused, and its password is shown nowhere: stderr goes to cron
/// mail, CI logs and journald. Needs no server: both are refused before
/// any connection. (Before: "the environment variable postgres://app:S3cret@db/app
/// is not set", and the lock named by the URL in every message.)
#[test]
fn a_connection_string_in_the_wrong_place_is_refused_unseen() {
    let home = tempfile::tempdir().unwrap();
    // Also passwords with a bare `@` or `?`, which make the URL unparsable
    // (before: those two went through as the lock's name, and were shown).
    for url in [
        "postgres://app:S3cret@db.invalid/app",
        "postgres://app:S3c@R3t@db.invalid/app",
        "postgres://app:S3c?R3t@db.invalid/app",
    ] {
        for args in [
            &["status", "--postgres-url-var", url, "jobs"][..],
            &["run", "--postgres-url-var", url, "jobs", "--", "true"][..],
            &["status", "--postgres-env", url][..],
            &["run", "--postgres-env", url, "--", "true"][..],
            &["run", "--postgres-env", "--permits", "2", url, "--", "true"][..],
        ] {
            let out = output(&mut bare(home.path()), args);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                !err.contains("S3c") && !err.contains("R3t"),
                "{args:?}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        }
    }
    // A plain name that says "password" is a name.
    let out = output(
        &mut bare(home.path()),
        &[
            "status",
            "--postgres-url-var",
            "NO_SUCH_VAR",
            "password-rotation",
        ],
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("NO_SUCH_VAR") && err.contains("not set"),
        "{err}"
    );
}

#[test]
fn a_password_on_the_command_line_draws_one_warning() {
    let Some(pg) = server() else { return };
    let home = tempfile::tempdir().unwrap();
    let name = format!("cli-warn-{}", std::process::id());
    let warned = |out: &Output| {
        let err = text(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].starts_with("lockmgr: warning: "), "{err}");
        assert!(lines[0].contains("command line"), "{err}");
        assert_unseen(out, &pg.password);
    };

    let out = output(
        &mut bare(home.path()),
        &["status", "--postgres", &pg.url, "--json", &name],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"state\":\"free\""));
    warned(&out);

    let out = output(
        &mut bare(home.path()),
        &[
            "run",
            "--postgres",
            &pg.url,
            &name,
            "--",
            "sh",
            "-c",
            "echo ran",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
    warned(&out);

    // libpq's key=value form, the password quoted.
    let conninfo = format!(
        "host={} port={} user={} dbname={} password = '{}'",
        pg.host, pg.port, pg.user, pg.db, pg.password
    );
    let out = output(
        &mut bare(home.path()),
        &["status", "--postgres", &conninfo, &name],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    warned(&out);

    // The same without the password, which comes from PGPASSWORD: no
    // warning.
    let url = format!("postgres://{}@{}:{}/{}", pg.user, pg.host, pg.port, pg.db);
    let out = output(
        bare(home.path()).env("PGPASSWORD", &pg.password),
        &["status", "--postgres", &url, &name],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

/// Needs no server: clap refuses two ways at once.
#[test]
fn the_ways_to_connect_exclude_each_other() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["status", "--postgres-env", "--postgres", "host=db", "jobs"][..],
        &[
            "status",
            "--postgres-url-var",
            "X",
            "--postgres-env",
            "jobs",
        ][..],
        &[
            "run",
            "--postgres",
            "host=db",
            "--postgres-url-var",
            "X",
            "jobs",
            "--",
            "true",
        ][..],
        &[
            "run",
            "--postgres-env",
            "--postgres-url-var",
            "X",
            "jobs",
            "--",
            "true",
        ][..],
    ] {
        let out = output(&mut bare(home.path()), args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("cannot be used with"), "{args:?}: {err}");
        assert_eq!(text(&out.stdout), "");
    }
}

/// `list --postgres-url-var VAR`: the server's `lockmgr` locks by name,
/// with the holding session and the one in its queue; `--json` carries
/// the same.
#[test]
fn list_names_the_servers_locks_their_holders_and_their_queue() {
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-list-{}", std::process::id());
    let (mut holder, said) = common::run_until_said(
        &["--postgres", &url, "--label", "lister-holder", &name],
        "echo running; exec cat >/dev/null",
    );
    assert_eq!(said, "running");
    let mut waiter = Command::new(LOCKMGR)
        .args([
            "run",
            "--postgres",
            &url,
            "--label",
            "lister-waiter",
            "--quiet",
        ])
        .args([&name, "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listed = |json: bool| {
        let mut args = vec!["list", "--postgres-url-var", "LISTED_URL"];
        if json {
            args.push("--json");
        }
        let out = Command::new(LOCKMGR)
            .args(&args)
            .env("LISTED_URL", &url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // Once the waiter is in the server's queue.
    let deadline = std::time::Instant::now() + common::LIVENESS;
    let ours = loop {
        let all: serde_json::Value = serde_json::from_str(&listed(true)).unwrap();
        let ours = all
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name.as_str())
            .cloned();
        if let Some(l) = ours.filter(|l| l["waiting"].as_array().is_some_and(|w| !w.is_empty())) {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never showed in {all}"
        );
    };
    assert_eq!(ours["state"], "exclusive");
    assert_eq!(ours["key"], lockmgr::pg::advisory_key(&name));
    assert_eq!(ours["holders"].as_array().unwrap().len(), 1, "{ours}");
    assert_eq!(ours["holders"][0]["label"], "lister-holder");
    assert_eq!(ours["waiting"][0]["label"], "lister-waiter");
    let said = listed(false);
    assert!(
        said.contains(&format!("{name}: held exclusive\n")),
        "{said}"
    );
    assert!(
        said.contains("(lister-holder)") && said.contains("waiting: "),
        "{said}"
    );

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert!(waiter.wait().unwrap().success());
    let all: serde_json::Value = serde_json::from_str(&listed(true)).unwrap();
    assert!(
        !all.as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == name.as_str()),
        "{all}"
    );
}

/// `run --permits 1 --postgres URL NAME`: the command gets its slot and
/// its permit's fencing token (before: no token); a second, without
/// waiting, is turned away while the first runs.
#[test]
fn permits_on_postgres() {
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-permits-{}", std::process::id());
    let label = format!("permits-label-{}", std::process::id());
    let (mut first, said) = common::run_until_said(
        &[
            "--permits",
            "1",
            "--label",
            &label,
            "--postgres",
            &url,
            &name,
        ],
        "echo slot=$LOCKMGR_PERMIT_SLOT token=${LOCKMGR_FENCING_TOKEN:-none}; exec cat >/dev/null",
    );
    let token = said.strip_prefix("slot=0 token=").map(str::parse::<u64>);
    assert!(matches!(token, Some(Ok(t)) if t > 0), "{said}");
    // The permit's session carries the label (before: `lockmgr`).
    let slot = format!("{name}/permit/0");
    let out = lockmgr(&["status", "--postgres", &url, "--json", &slot]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["holder"]["label"], label.as_str(), "{json}");
    let out = lockmgr(&[
        "run",
        "--permits",
        "1",
        "-n",
        "--postgres",
        &url,
        &name,
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // `status` of the semaphore's name counts its permits (before: "free",
    // exit 0, with the only permit held).
    let out = lockmgr(&["status", "--postgres", &url, &name]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("a semaphore of 1 permits, 1 taken"),
        "{}",
        text(&out.stdout)
    );
    let out = lockmgr(&["status", "--postgres", &url, "--json", &name]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "semaphore", "{json}");
    assert_eq!(
        (json["permits"].as_u64(), json["taken"].as_u64()),
        (Some(1), Some(1))
    );
    drop(first.stdin.take());
    assert!(first.wait().unwrap().success());
    let out = lockmgr(&["status", "--postgres", &url, &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = lockmgr(&[
        "run",
        "--permits",
        "1",
        "-n",
        "--postgres",
        &url,
        &name,
        "--",
        "true",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A signal (here `kill -INT`) ends `lockmgr` while it is still connecting
/// to a server that does not answer, for every subcommand, rather than
/// once the connection attempt gives up: Ctrl-C works. (Before: the signal
/// waited, blocked, until the 10 s connect timeout.) No server is needed.
#[test]
fn a_signal_ends_lockmgr_while_it_connects() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    // Accepts connections (the kernel does, from its backlog) and never
    // answers the first message.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://nobody@{}/db?sslmode=disable",
        silent.local_addr().unwrap()
    );
    let cases: [&[&str]; 3] = [
        &["status", "--postgres", &url, "name"],
        &["list", "--postgres", &url],
        &["run", "--postgres", &url, "name", "--", "true"],
    ];
    for args in cases {
        let child = Command::new(LOCKMGR)
            .args(args)
            .env("PGPASSWORD", "unused")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Connected: lockmgr now waits for the server's answer.
        let (_conn, _) = silent.accept().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(Signal::SIGINT as i32),
            "{:?}: {:?}: {}",
            args[0],
            out.status,
            text(&out.stderr)
        );
    }
}

/// `run --wait SECS` bounds the connect to a server too, whose first try
/// does not wait: against a server that never answers, `--wait 2` gives up
/// after about 2 s (exit status 2, the server named), where it took the
/// connect timeout, 10 s. No server is needed.
#[test]
fn the_wait_bounds_connecting_to_a_server_that_never_answers() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://nobody@{}/db?sslmode=disable",
        silent.local_addr().unwrap()
    );
    let started = std::time::Instant::now();
    let out = Command::new(LOCKMGR)
        .args([
            "run",
            "--wait",
            "2",
            "--postgres",
            &url,
            "name",
            "--",
            "true",
        ])
        .env("PGPASSWORD", "unused")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        took < std::time::Duration::from_secs(6),
        "took {took:?}: {}",
        text(&out.stderr)
    );
}

/// Options that cannot apply are refused, not silently ignored: `--kind`
/// with a PostgreSQL lock, `--kill-after` with a lock file. No server is
/// needed.
#[test]
fn options_that_cannot_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("l");
    let file = file.to_str().unwrap();
    for (args, names) in [
        (
            &[
                "run",
                "--kind",
                "flock",
                "--postgres",
                "host=db.invalid",
                "name",
                "--",
                "true",
            ][..],
            "--kind",
        ),
        (
            &["run", "--kill-after", "5", file, "--", "true"],
            "--postgres",
        ),
    ] {
        let out = Command::new(LOCKMGR).args(args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("lockmgr: ") && err.contains(names),
            "{args:?}: {err}"
        );
    }
}
