//! [`MemStorage`]: an in-memory directory that knows what a crash keeps.
//!
//! It models a file system the way the journal must assume the worst of one:
//!
//! * File data written by `append` is visible at once, but only what was
//!   covered by `sync` survives [`MemStorage::crash`]. With
//!   [`CrashMode::KeepRandomPrefix`] each file also keeps a random prefix of
//!   its unsynced appended bytes, which is how torn tails are made.
//! * `create`, `rename` and `remove` are directory operations: they survive a
//!   crash only after `sync_dir` (with `KeepRandomPrefix`, a random prefix of
//!   the unsynced ones, in order, survives).
//!
//! Faults are injected on demand: [`MemStorage::fail`] fails the n-th next
//! call of one operation (a failing `append` writes half its data first, as a
//! real short write would; a failing `sync` loses the file's unsynced data,
//! as a write-back error does, so retrying the sync cannot "succeed" into a
//! false durability), [`MemStorage::set_capacity`] makes the disk full
//! (`ErrorKind::StorageFull` after writing what fits) and
//! [`MemStorage::halt_after`] stops the "process" after a number of mutating
//! operations, so a test can crash it at every point of a protocol.
//!
//! `MemStorage` is a cheap handle: clones share one directory. A crash
//! makes every other handle stale (their operations fail), so a journal that
//! was open during the crash cannot write into the world after it.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{check_name, Storage};

/// A storage operation, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageOp {
    /// [`Storage::list`].
    List,
    /// [`Storage::create`].
    Create,
    /// [`Storage::read_at`] and [`Storage::file_len`].
    Read,
    /// [`Storage::append`].
    Append,
    /// [`Storage::sync`].
    Sync,
    /// [`Storage::truncate`].
    Truncate,
    /// [`Storage::rename`].
    Rename,
    /// [`Storage::remove`].
    Remove,
    /// [`Storage::sync_dir`].
    SyncDir,
}

impl StorageOp {
    /// Every operation, in declaration order.
    pub const ALL: [StorageOp; 9] = [
        StorageOp::List,
        StorageOp::Create,
        StorageOp::Read,
        StorageOp::Append,
        StorageOp::Sync,
        StorageOp::Truncate,
        StorageOp::Rename,
        StorageOp::Remove,
        StorageOp::SyncDir,
    ];

    /// True for operations that change the directory or a file.
    pub fn is_mutating(self) -> bool {
        !matches!(self, StorageOp::List | StorageOp::Read)
    }
}

/// What a simulated crash keeps of the state that was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything that was not synced is lost.
    DropUnsynced,
    /// Each file keeps a random prefix of its unsynced appended bytes, and a
    /// random prefix of the unsynced directory operations survives.
    KeepRandomPrefix {
        /// Seed of the choices, for reproducibility.
        seed: u64,
    },
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link { name: String, inode: u64 },
    Unlink { name: String },
    Rename { from: String, to: String },
}

impl DirOp {
    fn apply(&self, dir: &mut BTreeMap<String, u64>) {
        match self {
            DirOp::Link { name, inode } => {
                dir.insert(name.clone(), *inode);
            }
            DirOp::Unlink { name } => {
                dir.remove(name);
            }
            DirOp::Rename { from, to } => {
                if let Some(inode) = dir.remove(from) {
                    dir.insert(to.clone(), inode);
                }
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    generation: u64,
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    dir: BTreeMap<String, u64>,
    durable_dir: BTreeMap<String, u64>,
    dir_log: Vec<DirOp>,
    capacity: Option<u64>,
    faults: Vec<(StorageOp, u64)>,
    halt_after: Option<u64>,
    halted: bool,
    mutating_ops: u64,
}

impl State {
    fn inode(&mut self, name: &str) -> io::Result<&mut Inode> {
        let id = *self.dir.get(name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no such file: {name}"))
        })?;
        Ok(self
            .inodes
            .get_mut(&id)
            .expect("directory entries point at inodes"))
    }

    fn used(&self) -> u64 {
        self.dir
            .values()
            .map(|id| self.inodes[id].data.len() as u64)
            .sum()
    }

    fn collect_garbage(&mut self) {
        let referenced: Vec<u64> = self
            .dir
            .values()
            .chain(self.durable_dir.values())
            .copied()
            .chain(self.dir_log.iter().filter_map(|op| match op {
                DirOp::Link { inode, .. } => Some(*inode),
                _ => None,
            }))
            .collect();
        self.inodes.retain(|id, _| referenced.contains(id));
    }
}

/// SplitMix64: a tiny, seeded generator for crash choices.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..=max`.
    fn up_to(&mut self, max: usize) -> usize {
        (self.next() % (max as u64 + 1)) as usize
    }
}

/// An in-memory [`Storage`] with crash simulation and fault injection.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    shared: Arc<Mutex<State>>,
    generation: u64,
}

fn injected(op: StorageOp) -> io::Error {
    io::Error::other(format!("injected fault in {op:?}"))
}

impl MemStorage {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the state for `op`, applying staleness, halts and faults.
    /// Returns the guard and whether an injected fault fires for this call.
    fn begin(&self, op: StorageOp) -> io::Result<(MutexGuard<'_, State>, bool)> {
        let mut state = self.lock();
        if state.generation != self.generation {
            return Err(io::Error::other(
                "stale storage handle: the storage crashed since it was cloned",
            ));
        }
        if state.halted {
            return Err(io::Error::other("storage halted (simulated crash)"));
        }
        if op.is_mutating() {
            if let Some(left) = state.halt_after {
                if left == 0 {
                    state.halted = true;
                    return Err(io::Error::other("storage halted (simulated crash)"));
                }
                state.halt_after = Some(left - 1);
            }
            state.mutating_ops += 1;
        }
        let mut fire = false;
        if let Some(pos) = state.faults.iter().position(|(o, _)| *o == op) {
            if state.faults[pos].1 == 0 {
                state.faults.remove(pos);
                fire = true;
            } else {
                state.faults[pos].1 -= 1;
            }
        }
        Ok((state, fire))
    }

    /// Fails the `(after + 1)`-th next call of `op` (so `after = 0` fails the
    /// very next one), once. A failing `append` writes the first half of its
    /// data before failing; a failing `sync` drops the file's unsynced data
    /// (back to what was last synced); other operations fail without effect.
    pub fn fail(&self, op: StorageOp, after: u64) {
        self.lock().faults.push((op, after));
    }

    /// Disarms every pending injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Limits the total size of all files (`None`: unlimited). An append that
    /// does not fit writes what fits and fails with
    /// [`io::ErrorKind::StorageFull`].
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.lock().capacity = capacity;
    }

    /// Total size of all files.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    /// Lets `n` more mutating operations succeed, then fails every operation
    /// until [`crash`](Self::crash), as if the process had died there.
    pub fn halt_after(&self, n: u64) {
        let mut state = self.lock();
        state.halt_after = Some(n);
        state.halted = false;
    }

    /// True once a [`halt_after`](Self::halt_after) budget ran out.
    pub fn is_halted(&self) -> bool {
        self.lock().halted
    }

    /// Number of mutating operations performed so far (successful or
    /// failed by an injected fault).
    pub fn mutating_ops(&self) -> u64 {
        self.lock().mutating_ops
    }

    /// Simulates a crash (power loss): keeps what was synced, plus what
    /// `mode` allows of what was not; clears faults and halts. Every other
    /// handle to this storage becomes stale; this one stays usable.
    pub fn crash(&mut self, mode: CrashMode) {
        let mut state = self.lock();
        let mut rng = match mode {
            CrashMode::DropUnsynced => None,
            CrashMode::KeepRandomPrefix { seed } => Some(SplitMix(seed)),
        };
        let keep_ops = match &mut rng {
            None => 0,
            Some(rng) => rng.up_to(state.dir_log.len()),
        };
        let mut dir = state.durable_dir.clone();
        for op in &state.dir_log[..keep_ops] {
            op.apply(&mut dir);
        }
        let referenced: Vec<u64> = dir.values().copied().collect();
        let mut inodes = BTreeMap::new();
        for id in referenced {
            let inode = &state.inodes[&id];
            let kept = if inode.data.starts_with(&inode.durable) {
                let extra = inode.data.len() - inode.durable.len();
                let keep = rng.as_mut().map_or(0, |rng| rng.up_to(extra));
                inode.data[..inode.durable.len() + keep].to_vec()
            } else if rng.as_mut().is_some_and(|rng| rng.next() & 1 == 1) {
                inode.data.clone()
            } else {
                inode.durable.clone()
            };
            inodes.insert(
                id,
                Inode {
                    data: kept.clone(),
                    durable: kept,
                },
            );
        }
        state.inodes = inodes;
        state.durable_dir = dir.clone();
        state.dir = dir;
        state.dir_log.clear();
        state.faults.clear();
        state.halt_after = None;
        state.halted = false;
        state.generation += 1;
        let generation = state.generation;
        drop(state);
        self.generation = generation;
    }

    /// An independent copy of this storage as it is now (contents, what is
    /// synced, capacity), without pending faults or halts: to run many
    /// experiments from one starting point.
    pub fn fork(&self) -> MemStorage {
        let mut state = self.lock().clone();
        state.faults.clear();
        state.halt_after = None;
        state.halted = false;
        let generation = state.generation;
        MemStorage {
            shared: Arc::new(Mutex::new(state)),
            generation,
        }
    }

    /// Names of the files, sorted.
    pub fn files(&self) -> Vec<String> {
        self.lock().dir.keys().cloned().collect()
    }

    /// Current contents of a file.
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        let mut state = self.lock();
        state.inode(name).ok().map(|inode| inode.data.clone())
    }

    /// Replaces (or creates) a file with `data`, durably, bypassing faults:
    /// for tests that damage the journal's files.
    pub fn put_file(&self, name: &str, data: &[u8]) {
        let mut state = self.lock();
        let id = match state.dir.get(name) {
            Some(id) => *id,
            None => {
                state.next_inode += 1;
                let id = state.next_inode;
                state.inodes.insert(id, Inode::default());
                state.dir.insert(name.to_owned(), id);
                state.durable_dir.insert(name.to_owned(), id);
                id
            }
        };
        let inode = state.inodes.get_mut(&id).expect("just ensured");
        inode.data = data.to_vec();
        inode.durable = data.to_vec();
    }
}

impl Storage for MemStorage {
    fn list(&mut self) -> io::Result<Vec<String>> {
        let (state, fire) = self.begin(StorageOp::List)?;
        if fire {
            return Err(injected(StorageOp::List));
        }
        Ok(state.dir.keys().cloned().collect())
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        check_name(name)?;
        let (mut state, fire) = self.begin(StorageOp::Create)?;
        if fire {
            return Err(injected(StorageOp::Create));
        }
        if let Ok(inode) = state.inode(name) {
            inode.data.clear();
            return Ok(());
        }
        state.next_inode += 1;
        let id = state.next_inode;
        state.inodes.insert(id, Inode::default());
        state.dir.insert(name.to_owned(), id);
        state.dir_log.push(DirOp::Link {
            name: name.to_owned(),
            inode: id,
        });
        Ok(())
    }

    fn file_len(&mut self, name: &str) -> io::Result<u64> {
        let (mut state, fire) = self.begin(StorageOp::Read)?;
        if fire {
            return Err(injected(StorageOp::Read));
        }
        Ok(state.inode(name)?.data.len() as u64)
    }

    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let (mut state, fire) = self.begin(StorageOp::Read)?;
        if fire {
            return Err(injected(StorageOp::Read));
        }
        let data = &state.inode(name)?.data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let (mut state, fire) = self.begin(StorageOp::Append)?;
        let room = match state.capacity {
            Some(cap) => cap.saturating_sub(state.used()),
            None => u64::MAX,
        };
        let inode = state.inode(name)?;
        if fire {
            inode.data.extend_from_slice(&data[..data.len() / 2]);
            return Err(injected(StorageOp::Append));
        }
        if (data.len() as u64) > room {
            inode.data.extend_from_slice(&data[..room as usize]);
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ));
        }
        inode.data.extend_from_slice(data);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let (mut state, fire) = self.begin(StorageOp::Sync)?;
        let inode = state.inode(name)?;
        if fire {
            // As with a real write-back error, the unsynced data is gone: a
            // later successful sync must not make it look durable.
            inode.data = inode.durable.clone();
            return Err(injected(StorageOp::Sync));
        }
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let (mut state, fire) = self.begin(StorageOp::Truncate)?;
        let inode = state.inode(name)?;
        if fire {
            return Err(injected(StorageOp::Truncate));
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        inode.data.resize(len, 0);
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        check_name(to)?;
        let (mut state, fire) = self.begin(StorageOp::Rename)?;
        state.inode(from)?;
        if fire {
            return Err(injected(StorageOp::Rename));
        }
        let op = DirOp::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        op.apply(&mut state.dir);
        state.dir_log.push(op);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let (mut state, fire) = self.begin(StorageOp::Remove)?;
        state.inode(name)?;
        if fire {
            return Err(injected(StorageOp::Remove));
        }
        let op = DirOp::Unlink {
            name: name.to_owned(),
        };
        op.apply(&mut state.dir);
        state.dir_log.push(op);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let (mut state, fire) = self.begin(StorageOp::SyncDir)?;
        if fire {
            return Err(injected(StorageOp::SyncDir));
        }
        state.durable_dir = state.dir.clone();
        state.dir_log.clear();
        state.collect_garbage();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_drops_unsynced_data_and_entries() {
        let mut s = MemStorage::new();
        s.create("a").unwrap();
        s.append("a", b"durable").unwrap();
        s.sync("a").unwrap();
        s.sync_dir().unwrap();
        s.append("a", b"-lost").unwrap();
        s.create("b").unwrap();
        s.append("b", b"x").unwrap();
        s.sync("b").unwrap(); // data synced, but the entry is not
        s.crash(CrashMode::DropUnsynced);
        assert_eq!(s.files(), vec!["a".to_owned()]);
        assert_eq!(s.file("a").unwrap(), b"durable");
    }

    #[test]
    fn random_prefix_keeps_a_prefix() {
        for seed in 0..50 {
            let mut s = MemStorage::new();
            s.create("a").unwrap();
            s.sync_dir().unwrap();
            s.append("a", b"0123").unwrap();
            s.sync("a").unwrap();
            s.append("a", b"456789").unwrap();
            s.crash(CrashMode::KeepRandomPrefix { seed });
            let data = s.file("a").unwrap();
            assert!(data.len() >= 4);
            assert!(b"0123456789".starts_with(&data));
        }
    }

    #[test]
    fn rename_and_remove_need_sync_dir() {
        let mut s = MemStorage::new();
        s.create("a").unwrap();
        s.append("a", b"1").unwrap();
        s.sync("a").unwrap();
        s.sync_dir().unwrap();
        s.rename("a", "b").unwrap();
        s.crash(CrashMode::DropUnsynced);
        assert_eq!(s.files(), vec!["a".to_owned()]);
        s.rename("a", "b").unwrap();
        s.sync_dir().unwrap();
        s.remove("b").unwrap();
        s.crash(CrashMode::DropUnsynced);
        assert_eq!(s.files(), vec!["b".to_owned()]);
        assert_eq!(s.file("b").unwrap(), b"1");
    }

    #[test]
    fn faults_fire_once_at_the_chosen_call() {
        let mut s = MemStorage::new();
        s.create("a").unwrap();
        s.fail(StorageOp::Append, 1);
        s.append("a", b"ok").unwrap();
        let err = s.append("a", b"abcd").unwrap_err();
        assert!(err.to_string().contains("injected"));
        assert_eq!(s.file("a").unwrap(), b"okab"); // a short write
        s.append("a", b"!").unwrap();
        s.sync("a").unwrap();
        s.append("a", b"?").unwrap();
        s.fail(StorageOp::Sync, 0);
        assert!(s.sync("a").is_err());
        assert_eq!(s.file("a").unwrap(), b"okab!", "unsynced data lost");
        s.sync("a").unwrap();
    }

    #[test]
    fn full_disk_writes_what_fits() {
        let mut s = MemStorage::new();
        s.create("a").unwrap();
        s.set_capacity(Some(5));
        let err = s.append("a", b"1234567").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(s.file("a").unwrap(), b"12345");
        s.truncate("a", 2).unwrap();
        s.append("a", b"abc").unwrap();
        assert_eq!(s.used_bytes(), 5);
    }

    #[test]
    fn halt_stops_everything_until_crash() {
        let mut s = MemStorage::new();
        let mut other = s.clone();
        s.halt_after(1);
        other.create("a").unwrap();
        assert!(other.append("a", b"x").is_err());
        assert!(other.list().is_err());
        assert!(s.is_halted());
        s.crash(CrashMode::DropUnsynced);
        assert!(other.list().is_err(), "stale handle");
        assert!(s.list().unwrap().is_empty());
    }
}
