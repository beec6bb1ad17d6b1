//! Process-wide state that a forked child must not inherit: the child has
//! none of the parent's threads, so lines, helper pools and given-up waits
//! made by the parent mean nothing there, and a lock one of those threads
//! held at the fork would never be let go there.
//!
//! [`Forkable`] is a mutex that a child gets afresh, unlocked and holding
//! the default value (its `unsafe` core is in the OS layer).

pub(crate) use crate::os::ProcessMutex as Forkable;
