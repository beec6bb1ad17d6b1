//! Process-wide state that a forked child must not inherit: the child has
//! none of the parent's threads, so lines, helper pools and given-up waits
//! made by the parent mean nothing there.

use crate::os;

/// Process-wide state that must not cross a `fork`: in the child, which
/// has none of the parent's threads, what was inherited is forgotten (never
/// dropped: its locks and descriptors belong to the parent's threads).
pub(crate) struct Forkable<T: Default> {
    pid: u32,
    value: T,
}

impl<T: Default> Forkable<T> {
    /// The value as it is (call [`get`](Forkable::get) first to forget an
    /// inherited one).
    pub(crate) fn peek(&self) -> &T {
        &self.value
    }

    /// The value, fresh if this process is not the one that made it.
    pub(crate) fn get(&mut self) -> &mut T {
        let pid = os::current_pid();
        if self.pid != pid {
            std::mem::forget(std::mem::take(&mut self.value));
            self.pid = pid;
        }
        &mut self.value
    }
}

impl<T> Forkable<Option<T>> {
    /// Nothing yet, for a `static`: no process has pid 0, so the first
    /// [`get`](Forkable::get) claims it for the caller's process.
    pub(crate) const NONE: Self = Forkable {
        pid: 0,
        value: None,
    };
}

impl<T: Default> Default for Forkable<T> {
    fn default() -> Self {
        Forkable {
            pid: os::current_pid(),
            value: T::default(),
        }
    }
}
