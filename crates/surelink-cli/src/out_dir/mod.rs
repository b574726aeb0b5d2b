//! `surelink recv --out-dir DIR`: each sender's stream in its own file, and
//! an index of the files.
//!
//! Senders are served concurrently. Each connection's messages go, in order,
//! to `DIR/SOURCE-SESSION.bin`: SOURCE is the sender's key fingerprint
//! ([`Source::name`]), SESSION a fresh random id (16 hex digits) per
//! connection. A file is created with `create_new`, so nothing that exists is
//! ever truncated or overwritten.
//!
//! `DIR/index.jsonl` has one JSON object per file:
//!
//! ```text
//! {"source":"1a2b-3c4d-5e6f-7a8b","session":"9f0e…","file":"1a2b-3c4d-5e6f-7a8b-9f0e….bin",
//!  "bytes":1048576,"start_us":1767225600000000,"end_us":1767225601000000,"complete":true}
//! ```
//!
//! `start_us` / `end_us` are this host's wall clock (µs since the Unix epoch)
//! when the sender connected and when its stream ended (`null` while it is
//! being received). `complete` is true only once the sender closed gracefully
//! and the file was synced to disk; `bytes` is then the file's length. A
//! stream still being received, or one whose sender failed, says `false`.
//!
//! With `--state STATE`, every sender's session is durable on its own
//! ([`durable`]): SESSION is then the session's id, and each session keeps
//! its journal in `STATE/SESSION/`.
//!
//! The index is rewritten whole, under a temporary name that is synced and
//! then renamed over it, whenever a sender starts or ends: a crash leaves
//! either the old index or the new one, never a torn one, and it never calls a
//! file complete before its bytes are on disk. A receiver started again on
//! the same directory keeps the entries it finds; those left incomplete by a
//! crash are updated with their file's length.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde_json::{json, Value};
use surelink::{Connection, Endpoint};
use tokio::io::AsyncWriteExt as _;

use crate::ending::{abort_with_reason, Side};
use crate::source::Source;
use crate::stop::{End, Next, Stopping};

pub mod durable;

/// The index file's name inside the directory.
pub const INDEX_FILE: &str = "index.jsonl";

/// One line of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexEntry {
    source: String,
    session: String,
    file: String,
    bytes: u64,
    start_us: u64,
    end_us: Option<u64>,
    complete: bool,
}

impl IndexEntry {
    fn to_json(&self) -> Value {
        json!({
            "source": self.source,
            "session": self.session,
            "file": self.file,
            "bytes": self.bytes,
            "start_us": self.start_us,
            "end_us": self.end_us,
            "complete": self.complete,
        })
    }

    fn from_json(value: &Value) -> Option<Self> {
        Some(IndexEntry {
            source: value.get("source")?.as_str()?.to_owned(),
            session: value.get("session")?.as_str()?.to_owned(),
            file: value.get("file")?.as_str()?.to_owned(),
            bytes: value.get("bytes")?.as_u64()?,
            start_us: value.get("start_us")?.as_u64()?,
            end_us: value.get("end_us").and_then(Value::as_u64),
            complete: value.get("complete")?.as_bool()?,
        })
    }
}

/// The output directory and its index, shared by the connections' tasks.
#[derive(Debug)]
pub struct OutDir {
    dir: PathBuf,
    /// The index's entries by file name.
    entries: Mutex<BTreeMap<String, IndexEntry>>,
}

impl OutDir {
    /// Opens (creating it if needed) `dir`, keeping the entries of an index
    /// already there; entries a crash left incomplete get their file's length.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        let index = dir.join(INDEX_FILE);
        let mut entries = BTreeMap::new();
        match std::fs::read_to_string(&index) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
                    let entry = serde_json::from_str::<Value>(line)
                        .ok()
                        .as_ref()
                        .and_then(IndexEntry::from_json)
                        .with_context(|| {
                            format!("{} line {}: not an index entry", index.display(), n + 1)
                        })?;
                    entries.insert(entry.file.clone(), entry);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", index.display())),
        }
        for entry in entries.values_mut().filter(|e| !e.complete) {
            if let Ok(meta) = std::fs::metadata(dir.join(&entry.file)) {
                entry.bytes = meta.len();
            }
        }
        let out = OutDir {
            dir: dir.to_path_buf(),
            entries: Mutex::new(entries),
        };
        out.write_index(&out.lock())?;
        Ok(Arc::new(out))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, IndexEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites the index: a synced temporary file renamed over it.
    fn write_index(&self, entries: &BTreeMap<String, IndexEntry>) -> anyhow::Result<()> {
        let index = self.dir.join(INDEX_FILE);
        let mut temp = tempfile::Builder::new()
            .prefix(".index.")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .with_context(|| format!("cannot create a file in {}", self.dir.display()))?;
        let mut text = String::new();
        for entry in entries.values() {
            text.push_str(&entry.to_json().to_string());
            text.push('\n');
        }
        temp.write_all(text.as_bytes())
            .and_then(|()| temp.as_file().sync_all())
            .with_context(|| format!("cannot write {}", index.display()))?;
        temp.persist(&index)
            .with_context(|| format!("cannot rename the new index to {}", index.display()))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            // The rename itself is durable once the directory is synced.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Creates a new source's file and adds its (incomplete) entry.
    fn start(&self, source: Source, session: &str) -> anyhow::Result<(tokio::fs::File, String)> {
        let file = file_name(source, session);
        let path = self.dir.join(&file);
        let handle = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        self.record_start(source, session, &file)?;
        Ok((tokio::fs::File::from_std(handle), file))
    }

    /// Adds an incomplete entry for `file` unless the index has one.
    fn record_start(&self, source: Source, session: &str, file: &str) -> anyhow::Result<()> {
        let mut entries = self.lock();
        if entries.contains_key(file) {
            return Ok(());
        }
        entries.insert(
            file.to_owned(),
            IndexEntry {
                source: source.name(),
                session: session.to_owned(),
                file: file.to_owned(),
                bytes: 0,
                start_us: wall_clock_us(),
                end_us: None,
                complete: false,
            },
        );
        self.write_index(&entries)
    }

    /// Records the end of a source's stream.
    fn finish(&self, file: &str, bytes: u64, complete: bool) -> anyhow::Result<()> {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(file) {
            entry.bytes = bytes;
            entry.end_us = Some(wall_clock_us());
            entry.complete = complete;
        }
        self.write_index(&entries)
    }

    /// The file the index lists for `session`, if any.
    fn file_of_session(&self, session: &str) -> Option<String> {
        self.lock()
            .values()
            .find(|e| e.session == session)
            .map(|e| e.file.clone())
    }

    /// The path of a file in the directory.
    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// The file of `source`'s session `session`.
fn file_name(source: Source, session: &str) -> String {
    format!("{}-{session}.bin", source.name())
}

/// This host's wall clock, µs since the Unix epoch (the clock of the
/// connections' corrected times).
pub(crate) fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Serves senders concurrently, each into its own file, until the stop (a
/// signal or, with `once`, the first sender's end; see
/// [`crate::stop::serve_concurrently`]). A sender still connected at the
/// stop has what its connection held written and its file listed as
/// incomplete.
pub async fn serve(endpoint: &Endpoint, out: Arc<OutDir>, once: bool) -> anyhow::Result<()> {
    crate::stop::serve_concurrently(endpoint, once, |conn, stopping| {
        let out = out.clone();
        async move {
            let remote = conn.remote_addr();
            let result = receive_source(&conn, &out, stopping).await;
            match &result {
                Ok(End::Finished) => tracing::info!(%remote, "sender finished"),
                Ok(End::Stopped) => tracing::info!(%remote, "sender still connected at the stop"),
                Err(e) => tracing::warn!(%remote, "sender failed: {e:#}"),
            }
            result
        }
    })
    .await
}

/// Writes one connection's messages to a new file of its source, then
/// records the outcome in the index.
async fn receive_source(
    conn: &Connection,
    out: &OutDir,
    mut stopping: Stopping,
) -> anyhow::Result<End> {
    let source = Source::of(conn);
    let session = format!("{:016x}", rand::RngCore::next_u64(&mut rand::rngs::OsRng));
    let (file, name) = match out.start(source, &session) {
        Ok(started) => started,
        Err(e) => {
            abort_with_reason(conn, Side::Receiver, &e);
            return Err(e);
        }
    };
    eprintln!(
        "surelink recv: sender {} ({}): writing {}",
        source.name(),
        conn.remote_addr(),
        out.path(&name).display()
    );
    let mut writer = tokio::io::BufWriter::new(file);
    let mut bytes = 0u64;
    let received = async {
        loop {
            let msg = match stopping.next(conn).await? {
                Next::Message(msg) => msg,
                Next::End(end) => return anyhow::Ok(end),
            };
            crate::state::refuse_session(conn, &msg)?;
            writer
                .write_all(&msg.data)
                .await
                .with_context(|| format!("cannot write {name}"))?;
            bytes += msg.data.len() as u64;
        }
    }
    .await;
    let written = async {
        writer.flush().await?;
        writer.get_mut().sync_all().await
    }
    .await
    .with_context(|| format!("cannot write {name}"));
    let result = received.and_then(|end| written.map(|()| end));
    if let Err(e) = &result {
        abort_with_reason(conn, Side::Receiver, e);
    }
    let complete = matches!(result, Ok(End::Finished));
    out.finish(&name, bytes, complete)?;
    eprintln!(
        "surelink recv: sender {}: {} ({bytes} bytes) {}",
        source.name(),
        name,
        if complete { "complete" } else { "incomplete" }
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_survives_a_reopen_and_marks_interrupted_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutDir::open(dir.path()).unwrap();
        let source = Source { id: [1; 8] };
        let (_file, done) = out.start(source, "00000000000000aa").unwrap();
        std::fs::write(out.path(&done), b"hello").unwrap();
        out.finish(&done, 5, true).unwrap();
        let (_file, torn) = out.start(source, "00000000000000bb").unwrap();
        std::fs::write(out.path(&torn), b"par").unwrap();
        drop(out);

        // As after a crash: the second file was never finished.
        let out = OutDir::open(dir.path()).unwrap();
        let entries = out.lock().clone();
        assert_eq!(entries.len(), 2);
        assert!(entries[&done].complete);
        assert_eq!(entries[&done].bytes, 5);
        assert!(!entries[&torn].complete);
        assert_eq!(entries[&torn].bytes, 3);
        assert_eq!(entries[&torn].end_us, None);
        let text = std::fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2);
        // An existing file is never overwritten.
        assert!(out.start(source, "00000000000000aa").is_err());
    }
}
