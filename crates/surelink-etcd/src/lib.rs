//! Receiver groups on etcd: several `surelink` receivers share one durable
//! session, one of them (the *leader*) serving it at a time, so the session
//! survives the loss of the leader's whole machine.
//!
//! Compiled with the `etcd` feature only (the etcd client generates its gRPC
//! code with `protoc` at build time; the default build needs no system
//! package). Driven like this:
//!
//! 1. [`Group::connect`] to the etcd cluster described by an
//!    [`EtcdAccess`] (client URLs, TLS, user and password);
//! 2. [`Group::campaign`]: wait until no member leads, then take the
//!    group's leader key in a transaction, attached to a lease of this
//!    member that a background task keeps alive. It returns a
//!    [`Leadership`]: the lease, the *fencing token* (the leader key's
//!    creation revision, unique to this term) and the group's last
//!    committed checkpoint;
//! 3. hand the [`Leadership`] to a
//!    [`DurableReceiver`](surelink_session::DurableReceiver) as its
//!    [`ReceiverStore`](surelink_session::ReceiverStore): every checkpoint is a transaction that writes the
//!    group's checkpoint key *only if* the leader key still has this term's
//!    creation revision, and the receiver writes its output only while the
//!    lease is known to be alive
//!    ([`ReceiverStore::owned`](surelink_session::ReceiverStore::owned));
//! 4. when the lease is lost (not renewed in time, revoked, etcd out of
//!    reach for longer than the lease), the receiver stops at once with
//!    [`SessionError::Deposed`](surelink_session::SessionError::Deposed): drop the `Leadership` and campaign again.
//!
//! 5. a leader cut off from its sender but not from etcd keeps its lease:
//!    senders report it with [`Group::suspect`], and it watches
//!    [`Leadership::suspicions`]; if one is present and it has heard
//!    nothing from its sender for its own failure-detection time, it ends
//!    the term through a [`StepDown`] handle (the receiver stops at once)
//!    and [`Leadership::resign`]s, then waits for another member to lead
//!    ([`Group::next_leader`]) before campaigning again.
//!
//! 6. a leader that died (or is paused) cannot resign: while a sender
//!    suspects it, the standbys read the remaining TTL of its lease (TTLs
//!    of 2 s or more) or read its *alive key* `alive/TERM`, which a leader
//!    with a shorter lease puts, fenced by its term, at every renewal; once
//!    that shows it has stopped renewing for longer than a leader may own
//!    its term after a renewal, one of them revokes the lease
//!    ([`CampaignEvent::EndedEarly`]) and the campaign goes on at once,
//!    without waiting for etcd to expire it.
//!
//! 7. a leader may serve several sessions of its group at once: the
//!    leadership is the store of the group's own session, and
//!    [`Leadership::open_session`] gives a [`GroupSession`] store for each
//!    further one (its checkpoint in `sessions/NAME`). All of the term's
//!    checkpoints go through one coalescer, which commits whatever the
//!    sessions submitted in one fenced transaction per batch window
//!    ([`Group::with_batch_window`], split beyond [`MAX_TXN_PUTS`] puts),
//!    and answers each session only once the transaction holding its
//!    checkpoint committed ([`Leadership::commit_stats`] counts them).
//!
//! Senders find the leader with [`Group::leader`] and follow it with
//! [`Group::next_leader`] (a watch of the leader key): the leader key's
//! value is the addresses the leader advertises.
//!
//! Keys, under `/surelink/groups/NAME/`: `leader` (the leader's addresses,
//! attached to its lease), `checkpoint` (the last committed checkpoint:
//! one SESSION record of the checkpoint journal's format),
//! `sessions/NAME` (the same, for each further session a leader serves),
//! `alive/TERM` (put at every renewal by a leader whose lease is shorter
//! than 2 s) and
//! `suspicions/TERM/SENDER` (a sender's report that it lost the leader of
//! TERM, attached to a short lease of its own). The design, with
//! diagrams, is in `docs/CHECKPOINTS.md`.

#[cfg(feature = "etcd")]
mod access;
#[cfg(feature = "etcd")]
mod batch;
#[cfg(feature = "etcd")]
mod group;

#[cfg(feature = "etcd")]
pub use access::EtcdAccess;
#[cfg(feature = "etcd")]
pub use batch::{CommitStats, MAX_TXN_PUTS};
#[cfg(feature = "etcd")]
pub use group::{
    CampaignEvent, Group, GroupError, GroupSession, Leader, Leadership, StepDown,
    DEFAULT_BATCH_WINDOW, SUSPICION_TTL,
};
