//! [`FsStorage`]: the journal's files in a real directory.
//!
//! Open file handles are cached per name (append-mode, so writes always go
//! to the end); [`sync`](Storage::sync) is `fdatasync` (which covers the file
//! length) and [`sync_dir`](Storage::sync_dir) fsyncs the directory itself on
//! Unix (elsewhere directory entries are made durable by the OS's own rules).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{check_name, Storage};

/// A [`Storage`] backed by a directory on the real file system.
///
/// One journal per directory: nothing stops two processes from opening the
/// same directory, and they must not.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    handles: HashMap<String, File>,
}

impl FsStorage {
    /// Uses `dir` (created with its parents if missing) as the journal
    /// directory.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(FsStorage {
            dir,
            handles: HashMap::new(),
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    fn handle(&mut self, name: &str) -> io::Result<&mut File> {
        if !self.handles.contains_key(name) {
            let path = self.path(name)?;
            let file = OpenOptions::new().read(true).append(true).open(path)?;
            self.handles.insert(name.to_owned(), file);
        }
        Ok(self.handles.get_mut(name).expect("inserted above"))
    }
}

impl Storage for FsStorage {
    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let path = self.path(name)?;
        self.handles.remove(name);
        File::create(path)?;
        Ok(())
    }

    fn file_len(&mut self, name: &str) -> io::Result<u64> {
        Ok(self.handle(name)?.metadata()?.len())
    }

    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.handle(name)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.handle(name)?.write_all(data)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.handle(name)?.sync_data()
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.handle(name)?.set_len(len)
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let (from_path, to_path) = (self.path(from)?, self.path(to)?);
        self.handles.remove(from);
        self.handles.remove(to);
        fs::rename(from_path, to_path)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let path = self.path(name)?;
        self.handles.remove(name);
        fs::remove_file(path)
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(&self.dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_file_operations() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = FsStorage::open(dir.path().join("j")).unwrap();
        fs.create("a").unwrap();
        fs.append("a", b"hello ").unwrap();
        fs.append("a", b"world").unwrap();
        fs.sync("a").unwrap();
        assert_eq!(fs.file_len("a").unwrap(), 11);
        assert_eq!(fs.read_all("a").unwrap(), b"hello world");
        let mut buf = [0u8; 5];
        assert_eq!(fs.read_at("a", 6, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"world");
        fs.truncate("a", 5).unwrap();
        fs.append("a", b"!").unwrap();
        assert_eq!(fs.read_all("a").unwrap(), b"hello!");
        fs.rename("a", "b").unwrap();
        fs.sync_dir().unwrap();
        assert_eq!(fs.list().unwrap(), vec!["b".to_owned()]);
        assert_eq!(fs.read_all("b").unwrap(), b"hello!");
        fs.create("b").unwrap();
        assert_eq!(fs.file_len("b").unwrap(), 0);
        fs.remove("b").unwrap();
        assert!(fs.list().unwrap().is_empty());
        assert!(fs.create("../x").is_err());
        assert!(fs.read_all("missing").is_err());
    }
}
