//! Where `lockmgr`'s own lines go: the answer on stdout (`status`, `list`),
//! news and errors on stderr. Neither panics when nobody reads any more, as
//! `println!` and `eprintln!` do.

use std::fmt::Arguments;
use std::io::Write;
use std::path::Path;

/// `eprintln!`, except that a stderr nobody reads any more (a closed pipe,
/// or one nobody drains) loses the line instead of panicking or blocking:
/// `run` must still keep its deadline, hear signals, release its lock and
/// end as its command did.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::say_line(format_args!($($arg)*))
    };
}

/// `println!` for the answer of `status` and `list`: a reader that went
/// away (`lockmgr list | head -1`) ends `lockmgr` by SIGPIPE, as it ends
/// `ls`; any other failure to write it (a full disk) is one line on stderr
/// and exit status 2.
macro_rules! answer {
    ($($arg:tt)*) => {
        $crate::output::answer_line(format_args!($($arg)*))
    };
}

pub(crate) fn say_line(line: Arguments<'_>) {
    // One write, so that the line does not interleave with the command's.
    let line = format!("{line}\n");
    to_stderr(line.as_bytes(), PATIENCE_MS);
}

/// How long, in ms, a line waits for stderr to take it before it is lost.
/// A stderr that takes nothing (a pipe whose reader stopped reading, a
/// terminal stopped with Ctrl-S) must not hold `lockmgr` in `write(2)`:
/// the thread that writes is the one that keeps the wait's deadline and
/// reads the signals that end it.
pub(crate) const PATIENCE_MS: u16 = 1000;

/// Writes `bytes` to stderr, waiting at most `patience_ms` for it to take
/// them; what it has not taken by then is lost.
///
/// A pipe or terminal is written through a descriptor of `lockmgr`'s own
/// that does not block ([`own_stderr`]): the command shares stderr, and may
/// fill the pipe between a check that it has room and a blocking write.
/// Such a write of a line (at most a pipe's atomic 4,096 bytes) goes in
/// whole or not at all, so it still never interleaves with the command's.
pub(crate) fn to_stderr(bytes: &[u8], patience_ms: u16) {
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(patience_ms.into());
    let Some(mut own) = own_stderr() else {
        let stderr = std::io::stderr();
        if is_socket(&stderr) {
            send_by(stderr.as_fd(), bytes, deadline);
        } else if writable_by(stderr.as_fd(), deadline) {
            // A file: it takes a write at once.
            let _ = stderr.lock().write_all(bytes);
        }
        return;
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        match own.write(rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !writable_by(own.as_fd(), deadline) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A non-blocking descriptor of stderr's pipe or terminal, opened anew
/// (`/proc/self/fd/2`) so that the flag is `lockmgr`'s alone: set on
/// stderr itself, it would be the command's too. `None` for a regular file
/// (a second open would write at its own offset, over the command's lines),
/// a socket (which cannot be opened so), or where the open fails.
fn own_stderr() -> Option<&'static std::fs::File> {
    use nix::sys::stat::{fstat, SFlag};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    static OWN: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let st = fstat(std::io::stderr().as_fd()).ok()?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFIFO && kind != SFlag::S_IFCHR {
            return None;
        }
        let own = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open("/proc/self/fd/2")
            .ok()?;
        // The same pipe or terminal, not what the name finds now.
        let again = fstat(own.as_fd()).ok()?;
        (again.st_dev == st.st_dev && again.st_ino == st.st_ino && again.st_rdev == st.st_rdev)
            .then_some(own)
    })
    .as_ref()
}

/// Whether stderr is a socket (systemd's `StandardError=journal`).
fn is_socket(stderr: &std::io::Stderr) -> bool {
    use nix::sys::stat::{fstat, SFlag};
    use std::os::fd::AsFd;
    fstat(stderr.as_fd())
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK)
}

/// Sends `bytes` on socket `fd` without blocking (`MSG_DONTWAIT`, a flag
/// of the call alone: the command's descriptor stays blocking), waiting
/// for room until `deadline` at most.
fn send_by(fd: std::os::fd::BorrowedFd<'_>, bytes: &[u8], deadline: std::time::Instant) {
    use nix::errno::Errno;
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut rest = bytes;
    while !rest.is_empty() {
        match send(
            fd.as_raw_fd(),
            rest,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                if !writable_by(fd, deadline) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Whether `fd` can take a write before `deadline`.
fn writable_by(fd: std::os::fd::BorrowedFd<'_>, deadline: std::time::Instant) -> bool {
    use nix::poll::{poll, PollFd, PollFlags};
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Rounded up: a wait of less than a millisecond is not no wait.
        let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        match poll(&mut fds, ms) {
            // A closed or broken stderr polls ready; its write fails.
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

pub(crate) fn answer_line(line: Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // Stdout is line-buffered: the newline writes the line out, so a
    // failure shows here.
    match out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::sys::die_of_sigpipe(),
        Err(e) => {
            say!("lockmgr: cannot write the answer: {e}");
            std::process::exit(2);
        }
    }
}

/// Stderr for the library's events, with a line's patience (see
/// [`to_stderr`]): the events' formatter writes each event whole.
pub(crate) struct PatientStderr;

impl Write for PatientStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        to_stderr(bytes, PATIENCE_MS);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A path found on the system (a file name any local user may have chosen),
/// as `status` and `list` show it: as the library shows a lock's name, as it
/// is or quoted and escaped as `{:?}` does when a control character or a
/// bidirectional override in it could forge a line or drive the terminal.
pub(crate) fn shown_path(path: &Path) -> String {
    lockmgr::LockId::file(path).to_string()
}
