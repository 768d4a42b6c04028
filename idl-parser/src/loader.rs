//! Where sources come from: the filesystem, or memory (tests, fuzzing).

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Reads IDL sources by path. Import paths are joined to the importing
/// file's folder before they get here.
pub trait SourceLoader {
    /// The text of the file at `path`.
    fn load(&self, path: &Path) -> io::Result<String>;
}

/// Reads files from disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsLoader;

impl SourceLoader for FsLoader {
    fn load(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Serves files from a map; paths are compared after lexical normalisation
/// (`a/./b/../c.idl` is `a/c.idl`).
#[derive(Debug, Clone, Default)]
pub struct MemLoader {
    files: HashMap<PathBuf, String>,
}

impl MemLoader {
    /// An empty set of files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file.
    pub fn with(mut self, path: impl AsRef<Path>, source: impl Into<String>) -> Self {
        self.insert(path, source);
        self
    }

    /// Adds (or replaces) a file.
    pub fn insert(&mut self, path: impl AsRef<Path>, source: impl Into<String>) {
        self.files.insert(normalize(path.as_ref()), source.into());
    }
}

impl SourceLoader for MemLoader {
    fn load(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
}

/// Removes `.` and resolves `..` against the preceding component, without
/// touching the filesystem: import cycles are found on these paths.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    out.iter().collect()
}
