//! [`Permit`]: one of a [`Semaphore`](crate::Semaphore)'s permits, held.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::error::LockError;
use crate::slots::HeldPermit;

/// One permit of a [`Semaphore`](crate::Semaphore), held: proof that this
/// holder is one of at most `permits` at this moment.
///
/// Dropping it gives the permit back (the slot unlocked, the descriptor
/// closed, which wakes the waiters of every process); a holder that dies,
/// even by `kill -9`, gives it back with its descriptors. A permit dropped
/// in a forked child does not give back its parent's.
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct Permit {
    held: HeldPermit,
}

impl Permit {
    pub(crate) fn new(held: HeldPermit) -> Permit {
        Permit { held }
    }

    /// Which permit this is: a number below the semaphore's
    /// [`permits`](crate::Semaphore::permits), that no other holder has
    /// while this one lives (e.g. to pick one of N connections or
    /// workspaces).
    pub fn slot(&self) -> u32 {
        self.held.slot()
    }

    /// The semaphore's file.
    pub fn path(&self) -> &Path {
        self.held.path()
    }

    /// Gives the permit back now and reports what went wrong, if anything.
    ///
    /// # Errors
    ///
    /// [`LockError::Io`] with [`Operation::Unlock`](crate::Operation::Unlock)
    /// or [`Operation::Close`](crate::Operation::Close). The descriptor is
    /// closed, and with it the permit, in every case.
    pub fn release(mut self) -> Result<(), LockError> {
        self.held.release()
    }
}

impl AsFd for Permit {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.held.fd()
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("path", &self.path())
            .field("slot", &self.slot())
            .finish()
    }
}
