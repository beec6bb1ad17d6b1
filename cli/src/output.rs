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

/// Writes `bytes` to stderr once it can take some within `patience_ms`;
/// otherwise they are lost. A line is at most a few hundred bytes, which a
/// pipe or terminal that can take any takes whole.
pub(crate) fn to_stderr(bytes: &[u8], patience_ms: u16) {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    let stderr = std::io::stderr();
    let ready = {
        let mut fds = [PollFd::new(stderr.as_fd(), PollFlags::POLLOUT)];
        // A closed or invalid stderr polls ready, and its write fails.
        matches!(poll(&mut fds, patience_ms), Ok(n) if n > 0)
    };
    if ready {
        let _ = stderr.lock().write_all(bytes);
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
