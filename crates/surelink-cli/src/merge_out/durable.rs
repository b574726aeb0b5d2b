//! `surelink recv --merge --out FILE --state DIR`: the time-ordered merge,
//! durable across restarts.
//!
//! Every sender runs its own durable session (`send --state`), as with
//! `--out-dir --state`, but the session's sink is a *spool*
//! ([`SpoolSink`], in `DIR/SESSION/spool`): each message is written there
//! with its corrected send time and error bound, and checkpointed with the
//! session's watermark before the sender is told it is safe. The merge
//! ([`SpoolMerge`]) reads each spool only up to its last committed
//! checkpoint, so nothing it reads is ever taken back, pushes the records
//! into the sans-IO [`Merge`], and appends what the merge releases to FILE.
//! After each batch it journals its progress ([`MergeProgress`], in
//! `DIR/merge/`): the output's length and, per session, the first message
//! not yet in the output and where its record lies in the spool.
//!
//! After `kill -9` and a restart with the same arguments, the output is cut
//! back to the journaled length, the merge is restored from the journal and
//! re-reads each spool from its cursor, and the sessions' receivers resume
//! their senders: nothing is lost (every message confirmed to a sender is in
//! a spool, and every spool record past a cursor is merged again) and
//! nothing is repeated (the output holds exactly the records before the
//! cursors, and the merge drops message ids below them).
//!
//! A spool is trimmed as the merge consumes it: once a journal record with
//! a session's cursor is durable (fsynced under `--durability always` or
//! `interval`; handed to the OS under `none`), the spool's records before
//! the cursor are freed in place ([`spool::trim`](super::spool::trim)), in
//! steps of [`TRIM_STEP`]. A session that is complete and wholly merged is
//! retired: the journal first records that its files are being removed,
//! then its spool and state are deleted, then the journal forgets it.
//!
//! Driven by the wall clock: [`SpoolMerge`] takes the time as an argument
//! (so the tests run it on virtual time); [`run`] feeds it the host's clock,
//! wakes on spool checkpoints, the merge's next due time and the journal's
//! interval fsync, and stops on Ctrl-C or SIGTERM (or, with `--once`, when
//! the first session is complete), writing out what the merge holds.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use surelink::proto::merge::{Arrival, LatePolicy, Merge, MergeCheckpoint, MergeConfig, Pushed};
use surelink::{Bytes, Endpoint, EndpointConfig};
use surelink_session::{
    Durability, DurableReceiver, DurableSink as _, ReceiverEvent, SessionId, SessionOptions,
};
use tokio::sync::{mpsc, Notify};

use super::encode_record;
use super::progress::{MergeProgress, ProgressJournal, SessionCursor};
use super::spool::{read_records, trim, SpoolProgress, SpoolSink};
use crate::out_dir::wall_clock_us;
use crate::source::Source;
use crate::state::{greet_senders, greeted, Greeting};

/// The merge journal's directory inside the state directory.
const JOURNAL_DIR: &str = "merge";
/// A session's spool file inside its state directory.
const SPOOL_FILE: &str = "spool";
/// A spool is trimmed once this many bytes before its durable cursor are
/// not trimmed yet (small in the tests, so that they trim).
#[cfg(not(test))]
const TRIM_STEP: u64 = 1 << 20;
#[cfg(test)]
const TRIM_STEP: u64 = 4 << 10;

/// The state directory of session `id`.
fn session_dir(state: &Path, id: SessionId) -> PathBuf {
    state.join(id.to_string())
}

/// One session's spool as the merge sees it.
#[derive(Debug)]
struct Spool {
    session: SessionId,
    source: Source,
    progress: Arc<SpoolProgress>,
    /// Spool position up to which records were pushed into the merge.
    read: u64,
    /// Records pushed and not yet out of the merge: id → spool position.
    unreleased: BTreeMap<u64, u64>,
    /// Spool position below which the records were freed.
    trimmed: u64,
    /// The session is complete and settled: its spool will not grow.
    complete: bool,
}

/// The merge over the sessions' spools, with its output file and progress
/// journal; see the [module docs](self). Time is an argument.
#[derive(Debug)]
pub struct SpoolMerge {
    merge: Merge<(Source, Bytes)>,
    spools: BTreeMap<u64, Spool>,
    next_key: u64,
    journal: ProgressJournal,
    output: BufWriter<File>,
    output_path: PathBuf,
    output_len: u64,
    /// Records written since the last journal commit.
    dirty: bool,
    /// Output bytes not yet fsynced (under the interval policy).
    output_unsynced: bool,
    /// The cursors (key → spool position) of the last journal record,
    /// until it is durable.
    unsynced_cursors: Option<BTreeMap<u64, u64>>,
    durability: Durability,
    state: PathBuf,
    wake: Arc<Notify>,
    buf: Vec<u8>,
}

impl SpoolMerge {
    /// Opens the merge kept in `state`, writing to `output`: with journaled
    /// progress, the output is cut back to its recorded length and the
    /// merge restored; without, the output starts empty. Sessions the
    /// journal marks as being removed are removed now. `wake` is notified
    /// whenever a spool's checkpoint moves.
    pub fn open(
        state: &Path,
        output: &Path,
        config: MergeConfig,
        durability: Durability,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        // The journal first: if it is damaged, nothing else is touched.
        let (journal, progress) = ProgressJournal::open(&state.join(JOURNAL_DIR), durability)?;
        let progress = progress.unwrap_or_default();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(output)
            .with_context(|| format!("cannot open {}", output.display()))?;
        let len = file.metadata()?.len();
        if len < progress.output_len {
            bail!(
                "{} is {len} bytes, shorter than the {} bytes the merge journal in {} records: \
                 it was modified, or lost writes in a power failure",
                output.display(),
                progress.output_len,
                state.display()
            );
        }
        file.set_len(progress.output_len)
            .with_context(|| format!("cannot cut {} back", output.display()))?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))?;
        let checkpoint = MergeCheckpoint {
            next_seq: progress
                .sessions
                .iter()
                .map(|s| (s.key, s.next_id))
                .collect(),
            released_up_to_us: progress.released_up_to_us,
        };
        let mut merge = SpoolMerge {
            merge: Merge::restore(config, &checkpoint),
            spools: BTreeMap::new(),
            next_key: progress.next_key,
            journal,
            output: BufWriter::with_capacity(1 << 20, file),
            output_path: output.to_path_buf(),
            output_len: progress.output_len,
            dirty: false,
            output_unsynced: false,
            unsynced_cursors: None,
            durability,
            state: state.to_path_buf(),
            wake,
            buf: Vec::new(),
        };
        let mut removed = false;
        for cursor in progress.sessions {
            if cursor.removing {
                remove_session_files(&session_dir(state, cursor.session), false);
                removed = true;
                continue;
            }
            merge.spools.insert(
                cursor.key,
                Spool {
                    session: cursor.session,
                    source: cursor.source,
                    progress: SpoolProgress::new(merge.wake.clone()),
                    read: cursor.offset,
                    unreleased: BTreeMap::new(),
                    trimmed: 0,
                    complete: false,
                },
            );
        }
        if removed {
            merge.commit(Instant::now(), true)?;
        }
        Ok(merge)
    }

    /// The sessions the merge knows, each with its spool's progress.
    pub fn sessions(&self) -> Vec<(SessionId, Arc<SpoolProgress>)> {
        self.spools
            .values()
            .map(|s| (s.session, s.progress.clone()))
            .collect()
    }

    /// The spool progress of session `id`, registering it (journaled and
    /// synced before this returns, so a spool is never written before the
    /// merge knows it) if it is new.
    pub fn session(&mut self, id: SessionId, source: Source) -> anyhow::Result<Arc<SpoolProgress>> {
        if let Some(spool) = self.spools.values().find(|s| s.session == id) {
            return Ok(spool.progress.clone());
        }
        let key = self.next_key;
        self.next_key += 1;
        let progress = SpoolProgress::new(self.wake.clone());
        self.spools.insert(
            key,
            Spool {
                session: id,
                source,
                progress: progress.clone(),
                read: 0,
                unreleased: BTreeMap::new(),
                trimmed: 0,
                complete: false,
            },
        );
        self.commit(Instant::now(), true)?;
        Ok(progress)
    }

    /// Session `id` is complete and settled: once its spool is merged, it
    /// is retired ([`retire_merged`](Self::retire_merged)).
    pub fn complete(&mut self, id: SessionId) {
        if let Some(spool) = self.spools.values_mut().find(|s| s.session == id) {
            spool.complete = true;
        }
    }

    /// Pushes every record the spools' committed checkpoints cover and the
    /// merge has not seen into it, at `now_us` (this host's clock).
    pub fn read_spools(&mut self, now_us: u64) -> anyhow::Result<()> {
        let deliver = self.merge.config().late == LatePolicy::Deliver;
        for (&key, spool) in &mut self.spools {
            let committed = spool.progress.committed();
            if committed <= spool.read {
                continue;
            }
            let path = session_dir(&self.state, spool.session).join(SPOOL_FILE);
            let records = read_records(&path, spool.read, committed)
                .with_context(|| format!("cannot read {}", path.display()))?;
            for record in records {
                let arrival = Arrival {
                    source: key,
                    seq: record.id,
                    time_us: record.time_us,
                    error_bound_us: u64::from(record.error_bound_us),
                    payload: (spool.source, record.data),
                };
                match self.merge.push(now_us.max(record.arrived_us), arrival) {
                    Pushed::Held => {}
                    Pushed::Late { .. } if deliver => {}
                    Pushed::Late { .. } | Pushed::Duplicate => continue,
                }
                spool.unreleased.insert(record.id, record.offset);
            }
            spool.read = committed;
        }
        Ok(())
    }

    /// When (this host's clock, µs) the merge releases its next record.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.merge.poll_timeout()
    }

    /// Writes every record due at `now_us` to the output (buffered; see
    /// [`commit`](Self::commit)).
    pub fn poll(&mut self, now_us: u64) -> anyhow::Result<()> {
        while let Some(record) = self.merge.poll(now_us) {
            self.write(&record)?;
        }
        Ok(())
    }

    /// Writes everything the merge holds, in order: no more input will come
    /// before the next restart.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        while let Some(record) = self.merge.flush() {
            self.write(&record)?;
        }
        Ok(())
    }

    fn write(
        &mut self,
        record: &surelink::proto::merge::Merged<(Source, Bytes)>,
    ) -> anyhow::Result<()> {
        self.buf.clear();
        encode_record(record, true, &mut self.buf);
        self.output
            .write_all(&self.buf)
            .with_context(|| format!("cannot write {}", self.output_path.display()))?;
        self.output_len += self.buf.len() as u64;
        if let Some(spool) = self.spools.get_mut(&record.source) {
            spool.unreleased.remove(&record.seq);
        }
        self.dirty = true;
        Ok(())
    }

    /// The progress as of now (after [`commit`](Self::commit) flushed the
    /// output).
    fn progress(&self) -> MergeProgress {
        let checkpoint = self.merge.checkpoint();
        MergeProgress {
            output_len: self.output_len,
            released_up_to_us: checkpoint.released_up_to_us,
            next_key: self.next_key,
            sessions: self
                .spools
                .iter()
                .map(|(&key, s)| {
                    let (next_id, offset) = match s.unreleased.first_key_value() {
                        Some((&id, &offset)) => (id, offset),
                        None => (checkpoint.next_seq.get(&key).copied().unwrap_or(0), s.read),
                    };
                    SessionCursor {
                        key,
                        session: s.session,
                        source: s.source,
                        next_id,
                        offset,
                        removing: false,
                    }
                })
                .collect(),
        }
    }

    /// Journals the progress if records were written since the last time
    /// (always when `sync`): the output is flushed (and fsynced under
    /// [`Durability::Always`] or `sync`), then the record is committed
    /// (fsynced when `sync`). Under the interval policy, fsyncs the output
    /// and then the journal when the interval is due.
    pub fn commit(&mut self, now: Instant, sync: bool) -> anyhow::Result<()> {
        if self.dirty || sync {
            self.sync_output(sync || self.durability == Durability::Always)?;
            let progress = self.progress();
            self.journal.commit(&progress, sync)?;
            self.dirty = false;
            self.unsynced_cursors = Some(
                progress
                    .sessions
                    .iter()
                    .map(|c| (c.key, c.offset))
                    .collect(),
            );
            // As durable as the policy makes anything: trim up to it.
            if sync || !matches!(self.durability, Durability::Interval(_)) {
                self.trim_spools();
            }
        }
        if self.journal.next_sync_at(now).is_some_and(|t| t <= now) {
            self.sync_output(true)?;
            if self.journal.tick(now)? {
                self.trim_spools();
            }
        }
        Ok(())
    }

    /// Frees the spools' records before the cursors of the last journal
    /// record, now durable; a spool that cannot be trimmed keeps them.
    fn trim_spools(&mut self) {
        let Some(cursors) = self.unsynced_cursors.take() else {
            return;
        };
        for (key, offset) in cursors {
            let Some(spool) = self.spools.get_mut(&key) else {
                continue;
            };
            if offset < spool.trimmed + TRIM_STEP {
                continue;
            }
            let path = session_dir(&self.state, spool.session).join(SPOOL_FILE);
            if let Err(e) = trim(&path, spool.trimmed, offset) {
                tracing::debug!(path = %path.display(), error = %e, "cannot trim a spool");
            }
            spool.trimmed = offset;
        }
    }

    fn sync_output(&mut self, fsync: bool) -> anyhow::Result<()> {
        let name = self.output_path.display().to_string();
        self.output
            .flush()
            .with_context(|| format!("cannot write {name}"))?;
        self.output_unsynced |= self.dirty;
        if fsync && self.output_unsynced {
            self.output
                .get_ref()
                .sync_data()
                .with_context(|| format!("cannot sync {name}"))?;
            self.output_unsynced = false;
        }
        Ok(())
    }

    /// When the journal's interval fsync is due, if one is waiting.
    pub fn next_sync_at(&self, now: Instant) -> Option<Instant> {
        self.journal.next_sync_at(now)
    }

    /// Retires every complete session whose spool is wholly in the output:
    /// journals that it is being removed, removes its spool and (unless
    /// `keep_state`) its state, then journals it gone. Returns the
    /// sessions retired.
    pub fn retire_merged(&mut self, keep_state: bool) -> anyhow::Result<Vec<SessionId>> {
        let merged: Vec<u64> = self
            .spools
            .iter()
            .filter(|(_, s)| {
                s.complete && s.unreleased.is_empty() && s.read == s.progress.committed()
            })
            .map(|(&key, _)| key)
            .collect();
        if merged.is_empty() {
            return Ok(Vec::new());
        }
        let mut progress = self.progress();
        for cursor in &mut progress.sessions {
            cursor.removing = merged.contains(&cursor.key);
        }
        self.sync_output(true)?;
        self.journal.commit(&progress, true)?;
        let mut retired = Vec::new();
        for key in merged {
            let spool = self.spools.remove(&key).expect("listed above");
            remove_session_files(&session_dir(&self.state, spool.session), keep_state);
            retired.push(spool.session);
        }
        self.commit(Instant::now(), true)?;
        Ok(retired)
    }

    /// The merge's counters.
    pub fn stats(&self) -> surelink::proto::merge::MergeStats {
        self.merge.stats()
    }
}

/// Removes a merged session's spool and, unless `keep_state`, its state
/// directory; a failure is reported, not fatal (its data is in the output).
fn remove_session_files(dir: &Path, keep_state: bool) {
    let spool = dir.join(SPOOL_FILE);
    if let Err(e) = std::fs::remove_file(&spool) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!(
                "surelink recv: warning: cannot remove {}: {e}",
                spool.display()
            );
        }
    }
    if !keep_state && dir.exists() {
        let _ = crate::state::remove_state(dir, "recv");
    }
}

/// What `recv --merge --out FILE --state DIR` needs.
pub struct DurableMergePlan {
    /// The merged output file.
    pub output: PathBuf,
    /// The state directory: the merge journal and one directory per session.
    pub state: PathBuf,
    /// The merge's window and late policy.
    pub merge: MergeConfig,
    /// Session options (durability, checkpoint interval).
    pub options: SessionOptions,
    /// The addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// The endpoint's configuration.
    pub config: EndpointConfig,
    /// Exit once the first session is complete.
    pub once: bool,
    /// Keep a merged session's state directory (its spool goes).
    pub keep_state: bool,
}

/// A session's end, as its receiver task reports it: its id, the outcome,
/// and whether it is complete.
type SessionEnd = (SessionId, anyhow::Result<()>, bool);

/// Runs `recv --merge --out FILE --state DIR`.
pub async fn run(plan: DurableMergePlan) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plan.state)
        .with_context(|| format!("cannot create {}", plan.state.display()))?;
    let wake = Arc::new(Notify::new());
    let mut merge = SpoolMerge::open(
        &plan.state,
        &plan.output,
        plan.merge,
        plan.options.durability,
        wake.clone(),
    )?;
    remove_stale_sessions(&plan.state, &merge.sessions(), plan.keep_state)?;
    let mut config = plan.config.clone();
    config.protocol.reset_secret = Some(crate::state::reset_secret(&plan.state)?);
    let endpoint = Endpoint::bind_many(&plan.listen, config)
        .with_context(|| format!("cannot listen on {:?}", plan.listen))?;
    let _metrics = crate::metrics::watch(crate::metrics::Source::Endpoint(endpoint.clone()));
    for addr in endpoint.local_addrs() {
        eprintln!("surelink recv: listening on {addr}");
    }
    crate::security::announce_receiver(&endpoint);
    crate::security::spawn_handshake_log(&endpoint);

    // Dropped (so the acceptor aborted) when this returns.
    let (acceptor, mut greetings) = greet_senders(&endpoint, plan.options.handshake_timeout);
    let (done_tx, mut done) = mpsc::channel::<SessionEnd>(16);
    let mut sessions: HashMap<SessionId, mpsc::Sender<Greeting>> = HashMap::new();
    // The sessions of the previous run are resumed at once: their spools'
    // checkpoints are what the merge may read.
    for (id, progress) in merge.sessions() {
        let tx = open_session(&plan, id, progress, done_tx.clone())?;
        sessions.insert(id, tx);
    }
    let stop = crate::shutdown::signal();
    tokio::pin!(stop);
    let mut failure = None;
    loop {
        let now = Instant::now();
        let due = merge
            .poll_timeout()
            .map(|us| now + std::time::Duration::from_micros(us.saturating_sub(wall_clock_us())));
        let sync_due = merge.next_sync_at(now);
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some((id, result, complete)) = done.recv() => {
                sessions.remove(&id);
                if complete {
                    merge.complete(id);
                }
                match result {
                    Ok(()) if plan.once && complete => break,
                    Ok(()) => {}
                    Err(e) if plan.once => {
                        failure = Some(e);
                        break;
                    }
                    Err(e) => eprintln!("surelink recv: session {id} failed: {e:#}"),
                }
            }
            greeting = greetings.recv() => {
                let Some((conn, hello)) = greeted(greeting)? else { continue };
                let id = hello.session_id;
                let session = match sessions.get(&id) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => {
                        let source = Source::of(&conn);
                        let opened = merge
                            .session(id, source)
                            .and_then(|progress| open_session(&plan, id, progress, done_tx.clone()));
                        match opened {
                            Ok(tx) => {
                                sessions.insert(id, tx.clone());
                                tx
                            }
                            Err(e) => {
                                conn.abort(&format!("receiver: {e:#}"));
                                eprintln!("surelink recv: session {id}: {e:#}");
                                continue;
                            }
                        }
                    }
                };
                if let Err(mpsc::error::SendError((conn, _))) = session.send((conn, Ok(hello))).await {
                    conn.abort("the session has just ended here; try again");
                }
            }
            () = wake.notified() => {}
            () = tokio::time::sleep_until(due.unwrap_or(now).into()), if due.is_some() => {}
            () = tokio::time::sleep_until(sync_due.unwrap_or(now).into()), if sync_due.is_some() => {}
        }
        let now_us = wall_clock_us();
        merge.read_spools(now_us)?;
        merge.poll(now_us)?;
        merge.commit(Instant::now(), false)?;
        for id in merge.retire_merged(plan.keep_state)? {
            eprintln!("surelink recv: session {id} merged completely");
        }
    }
    drop(acceptor);
    // What the spools' checkpoints cover is part of the merge.
    merge.read_spools(wall_clock_us())?;
    merge.flush()?;
    merge.commit(Instant::now(), true)?;
    merge.retire_merged(plan.keep_state)?;
    super::report_counts(&merge.stats());
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Removes what is left of sessions the journal no longer lists (retired
/// before a crash could finish removing them): their spools, and their
/// state unless `keep_state`. Only directories named like a session id.
fn remove_stale_sessions(
    state: &Path,
    known: &[(SessionId, Arc<SpoolProgress>)],
    keep_state: bool,
) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(state).with_context(|| format!("cannot read {}", state.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_session = name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_session
            && entry.path().is_dir()
            && !known.iter().any(|(id, _)| id.to_string() == name)
        {
            remove_session_files(&entry.path(), keep_state);
        }
    }
    Ok(())
}

/// Opens session `id`'s journal and spool, publishes the spool's committed
/// position, and starts its receiver; returns where to hand it connections.
/// Its end is sent on `done`.
fn open_session(
    plan: &DurableMergePlan,
    id: SessionId,
    progress: Arc<SpoolProgress>,
    done: mpsc::Sender<SessionEnd>,
) -> anyhow::Result<mpsc::Sender<Greeting>> {
    let dir = session_dir(&plan.state, id);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(SPOOL_FILE);
    let sink = SpoolSink::open(&path, progress.clone())
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut rx = DurableReceiver::open_dir(&dir, sink, plan.options.clone())
        .map_err(|e| crate::state::state_error(e, &dir, crate::state::Role::Receiver))?;
    // Restored to its checkpoint (or, with no session yet, nothing to read).
    progress.set(if rx.session_id().is_some() {
        rx.sink().position()
    } else {
        0
    });
    let (tx, mut greetings) = mpsc::channel::<Greeting>(4);
    tokio::spawn(async move {
        let served = rx
            .run_hellos(&mut greetings, |event| report(&event, id))
            .await
            .map_err(anyhow::Error::new);
        let complete = rx.is_complete();
        drop(rx);
        let _ = done.send((id, served, complete)).await;
    });
    Ok(tx)
}

/// One stderr line per decision of a session's receiver.
fn report(event: &ReceiverEvent, id: SessionId) {
    match event {
        ReceiverEvent::Accepted { remote, accepted } => eprintln!(
            "surelink recv: session {id} {} by {remote}: spooled up to message {}",
            if accepted.new_session {
                "started"
            } else {
                "resumed"
            },
            accepted.next.values().sum::<u64>()
        ),
        ReceiverEvent::Refused { remote, error } => {
            eprintln!("surelink recv: refused a sender from {remote}: {error}");
        }
        ReceiverEvent::ConnectionEnded { remote, error } => eprintln!(
            "surelink recv: the connection from {remote} ended ({error}); \
             waiting for the sender to come back"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    //! The durable merge on virtual time: eight sources with clock offsets
    //! of ±5 s and drifts of ±100 ppm (corrected by an estimate that is off
    //! by up to 1.5 ms and 2 ppm), their sessions' spools checkpointed every
    //! 20 ms, and the receiver killed at seeded points and reopened from
    //! its journal.

    use super::*;
    use rand::{Rng as _, SeedableRng as _};
    use surelink_session::{Delivery, DurableSink};

    const SOURCES: u64 = 8;
    /// The receiver's clock at the start, µs since the Unix epoch.
    const T0: u64 = 1_767_225_600_000_000;
    const PERIOD_US: u64 = 10_000;
    const DURATION_US: u64 = 2_000_000;
    const CHECKPOINT_US: u64 = 20_000;
    const STEP_US: u64 = 1_000;
    /// The estimate's error bound the sources report, µs.
    const BOUND_US: u64 = 3_000;

    /// A message as its source sent it and as its session delivered it.
    struct Sent {
        source: usize,
        id: u64,
        true_us: u64,
        corrected_us: u64,
        arrived_us: u64,
    }

    /// Every source's messages, in each source's order.
    fn traffic(seed: u64) -> Vec<Vec<Sent>> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        (0..SOURCES as usize)
            .map(|i| {
                let offset_us = -5_000_000.0 + i as f64 * 10_000_000.0 / 7.0;
                let drift = (-100.0 + i as f64 * 200.0 / 7.0) * 1e-6;
                let offset_err = rng.gen_range(-1_500.0..1_500.0);
                let drift_err = rng.gen_range(-2.0..2.0) * 1e-6;
                let mut last_arrival = 0;
                (0..DURATION_US / PERIOD_US)
                    .map(|id| {
                        let true_us = T0 + id * PERIOD_US + i as u64 * 1_000;
                        let elapsed = (true_us - T0) as f64;
                        // The source's clock, and the receiver's mapping of it.
                        let reading = elapsed + offset_us + drift * elapsed;
                        let estimated =
                            (reading - offset_us - offset_err) / (1.0 + drift + drift_err);
                        let corrected_us = (T0 as f64 + estimated).round() as u64;
                        let mut transit = rng.gen_range(1_000..15_000);
                        if rng.gen_bool(0.02) {
                            transit += 30_000; // a retransmission
                        }
                        last_arrival = (true_us + transit).max(last_arrival);
                        Sent {
                            source: i,
                            id,
                            true_us,
                            corrected_us,
                            arrived_us: last_arrival,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// One receiver run's view of a source: its session's spool.
    struct Session {
        id: SessionId,
        sink: Option<SpoolSink>,
        /// Messages spooled and checkpointed.
        spooled: usize,
    }

    fn config() -> MergeConfig {
        MergeConfig {
            window_us: 100_000,
            late: LatePolicy::Deliver,
        }
    }

    fn open(state: &Path) -> SpoolMerge {
        SpoolMerge::open(
            state,
            &state.join("merged.bin"),
            config(),
            Durability::None,
            Arc::default(),
        )
        .unwrap()
    }

    /// Runs the merge over `traffic` on virtual time, killing the receiver
    /// just before each step in `crashes`; returns the merged output.
    fn run(traffic: &[Vec<Sent>], crashes: &[u64]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let mut merge = open(state);
        let mut sessions: Vec<Session> = (0..traffic.len())
            .map(|i| Session {
                id: SessionId([i as u8 + 1; 16]),
                sink: None,
                spooled: 0,
            })
            .collect();
        let end = T0 + DURATION_US + 200_000;
        let mut step = 0u64;
        let mut now_us = T0;
        while now_us < end {
            if crashes.contains(&step) {
                // kill -9: the merge's memory is gone; the output may hold
                // bytes past the journal, even half a record.
                drop(merge);
                let mut out = OpenOptions::new()
                    .append(true)
                    .open(state.join("merged.bin"))
                    .unwrap();
                out.write_all(b"torn record").unwrap();
                merge = open(state);
                // The sessions' receivers reopen their spools at the checkpoint.
                let known = merge.sessions();
                for session in &mut sessions {
                    session.sink = None;
                    if let Some((_, progress)) = known.iter().find(|(id, _)| *id == session.id) {
                        let path = session_dir(state, session.id).join(SPOOL_FILE);
                        let mut sink = SpoolSink::open(&path, progress.clone()).unwrap();
                        let position = sink.position();
                        sink.restore(position).unwrap();
                        progress.set(position);
                        session.sink = Some(sink);
                        // A complete session's receiver says so again.
                        if session.spooled == traffic[0].len() {
                            merge.complete(session.id);
                        }
                    }
                }
            }
            if (now_us - T0) % CHECKPOINT_US == 0 {
                for (session, sent) in sessions.iter_mut().zip(traffic) {
                    let arrived = sent[session.spooled..]
                        .iter()
                        .take_while(|m| m.arrived_us <= now_us)
                        .count();
                    if arrived == 0 {
                        continue;
                    }
                    if session.sink.is_none() {
                        let source = Source {
                            id: [sent[0].source as u8 + 1; 8],
                        };
                        let progress = merge.session(session.id, source).unwrap();
                        let dir = session_dir(state, session.id);
                        std::fs::create_dir_all(&dir).unwrap();
                        let mut sink = SpoolSink::open(&dir.join(SPOOL_FILE), progress).unwrap();
                        sink.restore(0).unwrap();
                        session.sink = Some(sink);
                    }
                    let sink = session.sink.as_mut().expect("opened above");
                    for m in &sent[session.spooled..session.spooled + arrived] {
                        let delivery = Delivery {
                            channel: 0,
                            id: m.id,
                            source_time_us: m.corrected_us,
                            arrived_us: m.arrived_us,
                            error_bound_us: Some(BOUND_US),
                        };
                        // Sizes vary, and spools grow past a few trim steps.
                        let payload = format!(
                            "source {} message {} {}",
                            m.source,
                            m.id,
                            "x".repeat((m.id * 37 % 400) as usize)
                        );
                        sink.write_delivery(&delivery, payload.as_bytes()).unwrap();
                    }
                    sink.flush().unwrap();
                    let position = sink.position();
                    sink.committed(position);
                    session.spooled += arrived;
                    if session.spooled == sent.len() {
                        merge.complete(session.id);
                    }
                }
            }
            merge.read_spools(now_us).unwrap();
            merge.poll(now_us).unwrap();
            merge.commit(Instant::now(), false).unwrap();
            merge.retire_merged(false).unwrap();
            now_us += STEP_US;
            step += 1;
        }
        merge.flush().unwrap();
        merge.commit(Instant::now(), true).unwrap();
        assert!(
            merge.sessions().is_empty(),
            "every session is retired once merged"
        );
        drop(merge);
        std::fs::read(state.join("merged.bin")).unwrap()
    }

    /// (source id byte, sequence, corrected time, bound, late by) of each record.
    fn records(mut bytes: &[u8]) -> Vec<(u8, u64, u64, u64, u32)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let field = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
            let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            let len = word(32) as usize;
            out.push((bytes[0], field(8), field(16), u64::from(word(24)), word(28)));
            bytes = &bytes[super::super::RECORD_HEADER_LEN + len..];
        }
        out
    }

    #[test]
    fn a_merge_killed_at_many_points_ends_byte_identical_to_an_uninterrupted_one() {
        for seed in 0..3 {
            let traffic = traffic(seed);
            let reference = run(&traffic, &[]);
            let merged = records(&reference);

            // Every message once, none late, in corrected-time order, and
            // every pair ordered within the sum of its error bounds.
            let total: usize = traffic.iter().map(Vec::len).sum();
            assert_eq!(merged.len(), total);
            let mut seen = std::collections::HashSet::new();
            let mut newest_true = 0u64;
            let mut newest_true_bound = 0u64;
            for pair in merged.windows(2) {
                assert!(pair[0].2 <= pair[1].2, "out of corrected-time order");
            }
            for &(source, seq, time_us, bound, late) in &merged {
                assert!(seen.insert((source, seq)), "repeated: {source} {seq}");
                assert_eq!(late, 0, "no message is late with this window");
                let sent = &traffic[usize::from(source - 1)][seq as usize];
                assert!(sent.true_us.abs_diff(time_us) <= bound);
                assert!(newest_true <= sent.true_us + bound + newest_true_bound);
                if sent.true_us >= newest_true {
                    (newest_true, newest_true_bound) = (sent.true_us, bound);
                }
            }

            // Killed at 12 seeded points: the same bytes.
            let mut rng = rand::rngs::SmallRng::seed_from_u64(1_000 + seed);
            let steps = (DURATION_US + 200_000) / STEP_US;
            let mut crashes: Vec<u64> = (0..12).map(|_| rng.gen_range(1..steps)).collect();
            crashes.sort_unstable();
            assert!(
                run(&traffic, &crashes) == reference,
                "seed {seed}: killed at steps {crashes:?}, the output differs"
            );
        }
    }

    #[test]
    fn a_spool_is_trimmed_as_the_merge_consumes_it() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let mut merge = open(state);
        let id = SessionId([9; 16]);
        let progress = merge.session(id, Source { id: [9; 8] }).unwrap();
        let path = session_dir(state, id).join(SPOOL_FILE);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut sink = SpoolSink::open(&path, progress).unwrap();
        let mut spool = |merge: &mut SpoolMerge, ids: std::ops::Range<u64>| {
            for id in ids {
                let delivery = Delivery {
                    channel: 0,
                    id,
                    source_time_us: T0 + id,
                    arrived_us: T0 + id,
                    error_bound_us: Some(10),
                };
                sink.write_delivery(&delivery, &[id as u8; 16 << 10])
                    .unwrap();
            }
            sink.flush().unwrap();
            sink.committed(sink.position());
            merge.read_spools(T0 + 1_000_000).unwrap();
            merge.poll(T0 + 1_000_000).unwrap();
            merge.commit(Instant::now(), false).unwrap();
        };
        spool(&mut merge, 0..64);
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.len() > 1 << 20);
        assert!(
            meta.blocks() * 512 < 64 << 10,
            "{} bytes still allocated of {}",
            meta.blocks() * 512,
            meta.len()
        );
        // Positions are kept: records after the hole read as before.
        spool(&mut merge, 64..70);
        merge.complete(id);
        merge.retire_merged(false).unwrap();
        drop(merge);
        let output = std::fs::read(state.join("merged.bin")).unwrap();
        let ids: Vec<u64> = records(&output).iter().map(|r| r.1).collect();
        assert_eq!(ids, (0..70).collect::<Vec<_>>());
    }

    #[test]
    fn a_damaged_merge_journal_is_an_error_that_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let mut merge = open(state);
        merge
            .session(SessionId([1; 16]), Source { id: [1; 8] })
            .unwrap();
        drop(merge);
        std::fs::write(state.join("merged.bin"), b"merged records").unwrap();
        for entry in std::fs::read_dir(state.join(JOURNAL_DIR)).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 3;
            bytes[last] ^= 0xff;
            bytes.extend_from_slice(&[0x5a; 64]);
            std::fs::write(&path, bytes).unwrap();
        }
        let err = SpoolMerge::open(
            state,
            &state.join("merged.bin"),
            config(),
            Durability::None,
            Arc::default(),
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("merge journal") && text.contains("damaged"),
            "{text}"
        );
        assert_eq!(
            std::fs::read(state.join("merged.bin")).unwrap(),
            b"merged records"
        );
    }
}
