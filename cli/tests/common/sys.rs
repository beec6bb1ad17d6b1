//! The command's tests' only `unsafe` code. Every test crate denies
//! `unsafe_code`; this module alone is allowed it (`tests/architecture.rs`
//! checks both).
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `command` start with SIGPIPE ignored, as a shell started from a
/// service manager that ignores it would.
pub fn ignore_sigpipe(command: &mut Command) {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: runs between fork and exec: one `sigaction` call, which is
    // async-signal-safe, and no allocation (the error is a bare errno).
    unsafe {
        command.pre_exec(|| {
            signal(Signal::SIGPIPE, SigHandler::SigIgn)
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}
