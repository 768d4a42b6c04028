//! Code generation from a `build.rs` script (as `prost-build` and
//! `tonic-build` offer), and reading an IDL file the way `include_idl!` does.
//!
//! ```no_run
//! // build.rs of a service crate; `idl-codegen` is a build-dependency.
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     idl_codegen::build::Builder::new().compile(&["idl/display.idl"])?;
//!     Ok(())
//! }
//! ```
//!
//! and in the crate, where the items should appear:
//!
//! ```ignore
//! include!(concat!(env!("OUT_DIR"), "/display.rs"));
//! ```
//!
//! The file written for `idl/display.idl` is `$OUT_DIR/display.rs`: the IDL
//! file's name with `.rs` for `.idl`. It holds what `include_idl!` expands to
//! (the same [`generate`](crate::generate) output, formatted by prettyplease
//! under an `@generated` header), is only written when its content changes,
//! and every IDL file read (the named ones and their imports) is announced
//! with `cargo:rerun-if-changed`. Announcing files makes cargo rerun the
//! script only when one of them changes, instead of on every change in the
//! package.
//!
//! Paths are relative to the crate's root (`CARGO_MANIFEST_DIR`), as for
//! `include_idl!`, and diagnostics name the files as they were given, so
//! error messages do not depend on where the crate sits on disk.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use idl_parser::model::Model;
use idl_parser::{Diagnostics, SourceLoader};

/// Reads IDL files from disk, relative paths taken from a root folder (a
/// crate's `CARGO_MANIFEST_DIR`) instead of the process's current folder:
/// a compiler or a build script cannot rely on the latter.
#[derive(Debug, Clone)]
pub struct RootLoader {
    root: PathBuf,
}

impl RootLoader {
    /// A loader resolving relative paths against `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RootLoader { root: root.into() }
    }

    /// Where `path` is on disk: `root/path`, or `path` itself when absolute.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
}

impl SourceLoader for RootLoader {
    fn load(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(self.resolve(path))
    }
}

/// A checked IDL file and every file read for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The checked model; its `files` are named as given (relative to the
    /// root when the path given was).
    pub model: Model,
    /// Every file read (the named one first, then its imports), resolved
    /// against the root: what `include_bytes!` and `rerun-if-changed` need.
    pub files: Vec<PathBuf>,
}

/// Reads `path` (relative to `root` unless absolute) and its imports, and
/// checks them. Diagnostics name files as given, not resolved: render them
/// with [`Diagnostics::render`].
pub fn load(root: &Path, path: &Path) -> Result<Loaded, Diagnostics> {
    let loader = RootLoader::new(root);
    let checked = idl_parser::check_file_with(path, &loader)?;
    let files = checked.files.iter().map(|f| loader.resolve(f)).collect();
    Ok(Loaded {
        model: checked.model,
        files,
    })
}

/// Writes `text` to `path` unless the file already holds exactly that; an
/// unchanged file keeps its modification time, so nothing downstream
/// rebuilds. Returns whether it wrote.
pub fn write_if_changed(path: &Path, text: &str) -> io::Result<bool> {
    match std::fs::read(path) {
        Ok(current) if current == text.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::write(path, text)?;
    Ok(true)
}

/// Generates Rust files from IDL files, for `build.rs` (see the module
/// docs).
#[derive(Debug, Clone)]
pub struct Builder {
    out_dir: Option<PathBuf>,
    root: Option<PathBuf>,
    emit_rerun_if_changed: bool,
    options: crate::Options,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// Output into `$OUT_DIR`, paths relative to `$CARGO_MANIFEST_DIR`,
    /// `cargo:rerun-if-changed` printed.
    pub fn new() -> Self {
        Builder {
            out_dir: None,
            root: None,
            emit_rerun_if_changed: true,
            options: crate::Options::default(),
        }
    }

    /// Writes into `dir` instead of `$OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Resolves relative IDL paths against `dir` instead of
    /// `$CARGO_MANIFEST_DIR`.
    pub fn root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.root = Some(dir.into());
        self
    }

    /// Whether to generate each protocol's async client (default: yes). It
    /// needs shm-channel's `tokio` feature; turn it off for a crate that
    /// uses shm-channel without it.
    pub fn async_client(mut self, on: bool) -> Self {
        self.options = self.options.async_client(on);
        self
    }

    /// Whether to generate the network entry points `connect_url` and
    /// `serve_url` (default: yes). They need shm-channel's `net` feature.
    pub fn net(mut self, on: bool) -> Self {
        self.options = self.options.net(on);
        self
    }

    /// Whether [`compile`](Self::compile) prints `cargo:rerun-if-changed`
    /// lines on stdout (default: yes). Turn it off when calling from
    /// something other than a build script.
    pub fn emit_rerun_if_changed(mut self, emit: bool) -> Self {
        self.emit_rerun_if_changed = emit;
        self
    }

    /// Checks each IDL file, writes its code into the output folder (one
    /// `<name>.rs` per IDL file, only when changed) and prints a
    /// `cargo:rerun-if-changed` line for every file read. Nothing is written
    /// unless every file is valid.
    pub fn compile(&self, idls: &[impl AsRef<Path>]) -> Result<Compiled, BuildError> {
        let root = match &self.root {
            Some(root) => root.clone(),
            None => env_dir("CARGO_MANIFEST_DIR")?,
        };
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => env_dir("OUT_DIR")?,
        };
        // Everything is checked before anything is written.
        let mut planned: Vec<(PathBuf, PathBuf, String)> = Vec::new();
        let mut inputs: Vec<PathBuf> = Vec::new();
        for idl in idls {
            let idl = idl.as_ref();
            let loaded = load(&root, idl).map_err(BuildError::Idl)?;
            let out = out_dir.join(output_name(idl)?);
            if let Some((first, _, _)) = planned.iter().find(|(_, o, _)| *o == out) {
                return Err(BuildError::SameOutput {
                    first: first.clone(),
                    second: idl.to_path_buf(),
                    output: out,
                });
            }
            for file in loaded.files {
                if !inputs.contains(&file) {
                    inputs.push(file);
                }
            }
            let code = crate::generate_file_with(&loaded.model, &self.options);
            planned.push((idl.to_path_buf(), out, code));
        }
        std::fs::create_dir_all(&out_dir).map_err(|e| BuildError::io(&out_dir, "create", e))?;
        let mut outputs = Vec::new();
        for (idl, path, code) in planned {
            let written =
                write_if_changed(&path, &code).map_err(|e| BuildError::io(&path, "write", e))?;
            outputs.push(Output { idl, path, written });
        }
        let compiled = Compiled { outputs, inputs };
        if self.emit_rerun_if_changed {
            print!("{}", compiled.rerun_if_changed());
        }
        Ok(compiled)
    }
}

/// The name of the file written for `idl`: `display.idl` -> `display.rs`.
fn output_name(idl: &Path) -> Result<String, BuildError> {
    match idl.file_stem().and_then(|s| s.to_str()) {
        Some(stem) if !stem.is_empty() => Ok(format!("{stem}.rs")),
        _ => Err(BuildError::BadName(idl.to_path_buf())),
    }
}

fn env_dir(var: &'static str) -> Result<PathBuf, BuildError> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .ok_or(BuildError::NoEnv(var))
}

/// What [`Builder::compile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// One per IDL file given, in order.
    pub outputs: Vec<Output>,
    /// Every IDL file read, resolved against the root, without repeats.
    pub inputs: Vec<PathBuf>,
}

impl Compiled {
    /// The `cargo:rerun-if-changed=PATH` lines for [`inputs`](Self::inputs),
    /// one per line.
    pub fn rerun_if_changed(&self) -> String {
        self.inputs
            .iter()
            .map(|f| format!("cargo:rerun-if-changed={}\n", f.display()))
            .collect()
    }
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The IDL file, as given.
    pub idl: PathBuf,
    /// The Rust file.
    pub path: PathBuf,
    /// Whether it was written (false: it already held this code).
    pub written: bool,
}

/// Why [`Builder::compile`] failed. `Debug` prints the same text as
/// `Display`, so that a build script returning it from `main` shows the
/// rendered diagnostics, not an escaped string.
pub enum BuildError {
    /// An IDL file is invalid or cannot be read.
    Idl(Diagnostics),
    /// An output file or folder cannot be written.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done (`"write"`, `"create"`).
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Two IDL files would write the same output file.
    SameOutput {
        /// The IDL file given first.
        first: PathBuf,
        /// The IDL file given later.
        second: PathBuf,
        /// The output both would write.
        output: PathBuf,
    },
    /// An IDL path with no file name to derive the output's from.
    BadName(PathBuf),
    /// An environment variable cargo sets for build scripts is missing (not
    /// running under cargo: set [`Builder::root`] and [`Builder::out_dir`]).
    NoEnv(&'static str),
}

impl BuildError {
    fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Idl(diagnostics) => write!(f, "{}", diagnostics.render(false)),
            BuildError::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} `{}`: {source}", path.display()),
            BuildError::SameOutput {
                first,
                second,
                output,
            } => write!(
                f,
                "`{}` and `{}` would both be generated into `{}`: rename one of them",
                first.display(),
                second.display(),
                output.display()
            ),
            BuildError::BadName(path) => {
                write!(
                    f,
                    "`{}` has no file name to name its output",
                    path.display()
                )
            }
            BuildError::NoEnv(var) => write!(
                f,
                "`{var}` is not set: not running in a build script? (set the builder's root and out_dir)"
            ),
        }
    }
}

impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Idl(diagnostics) => Some(diagnostics),
            BuildError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
