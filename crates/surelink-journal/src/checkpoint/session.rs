//! [`SessionRecord`]: what a restarted endpoint needs to resume its session.

/// Session metadata kept in the journal: the session to resume and the
/// token that proves the right to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionRecord {
    /// The session's id.
    pub session_id: [u8; 16],
    /// The secret presented to the peer to resume the session.
    pub resume_token: [u8; 32],
    /// Opaque information about the peer (its address, key, …), encoded by
    /// the layer above.
    pub peer: Vec<u8>,
}
