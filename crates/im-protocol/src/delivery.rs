//! The ports of live delivery, shared by the crates on either side of them: the consumer
//! pool and the user manager deliver through [`Mailboxes`] (the SSE broker's sessions), the
//! pool asks [`Recipients`] (the user manager) who receives a message, and the broker tells a
//! [`SessionListener`] (the user manager's presence) of every stream. Here, in the crate all
//! of them already use, none of them has to depend on another only for a trait.

use crate::sse::Frame;
use crate::{Message, UserId};

/// Live sessions, as a deliverer sees them: implemented by the SSE broker.
pub trait Mailboxes: Send + Sync + 'static {
    /// Queues `frame` on every live session of `user`. Must not block: a session whose
    /// mailbox is full is closed, and its client resumes from the store.
    fn deliver(&self, user: UserId, frame: &Frame);
}

/// Who receives a message: implemented by the user manager, which knows group members.
pub trait Recipients: Send + Sync + 'static {
    /// Appends every user who must receive `msg`, the sender included (their other sessions).
    fn recipients(&self, msg: &Message, out: &mut Vec<UserId>);
}

/// Hears every stream open and close, e.g. to track presence. Calls come from any thread and
/// must not block; opens and closes of one user may arrive in any order relative to each
/// other, so keep counts rather than flags.
pub trait SessionListener: Send + Sync + 'static {
    /// A stream of `user` opened.
    fn opened(&self, user: UserId);
    /// A stream of `user` closed.
    fn closed(&self, user: UserId);
}
