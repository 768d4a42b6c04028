//! The shm-channel IDL: parses `.idl` files into a checked [`Model`].
//!
//! Parse (pest, [`parse_pairs`] / [`parse_source`]) → AST with spans
//! ([`ast`]) → imports resolved and every rule checked ([`check_file`] /
//! [`check_source`]) → a span-free [`model::Model`] with ring sizes
//! ([`sizes`]) that `idl-codegen` turns into Rust. Every error is a
//! [`Diagnostic`] with a stable code, rendered by `codespan-reporting`.
//!
//! ```
//! use std::path::Path;
//! use idl_parser::{MemLoader, check_source};
//!
//! let src = "protocol Echo { fn echo(text: string<64>) -> string<64>; }";
//! let checked = check_source(Path::new("echo.idl"), src, &MemLoader::new()).unwrap();
//! let echo = &checked.model.protocols[0];
//! assert_eq!(echo.methods[0].name, "echo");
//! assert_eq!(echo.ring_sizes.client_to_server.max_bytes, 4096);
//!
//! let err = check_source(Path::new("bad.idl"), "struct S { a: Strng }", &MemLoader::new())
//!     .unwrap_err();
//! assert!(err.render(false).contains("error[E0014]: unknown type `Strng`"));
//! ```
//!
//! # Layers
//!
//! The byte layout of rings and messages (header sizes, alignment, page
//! rounding) has one home: the `shm-layout` crate, which depends on nothing
//! of ours. This crate uses it to compute ring sizes, the runtime
//! (`shm-channel`) uses it to read and write rings, and neither IDL crate
//! depends on the runtime — so `shm-channel` can re-export `include_idl!`
//! without a dependency cycle, and no number is written down twice.
//!
//! # Error codes
//!
//! | code | rule |
//! |---|---|
//! | E0001 | syntax error |
//! | E0002 | brackets nested more than [`MAX_NESTING`] levels deep |
//! | E0003 | an imported file cannot be read |
//! | E0004 | files import each other in a cycle (the cycle is named: `a.idl -> b.idl -> a.idl`) |
//! | E0005 | two types (structs/enums, across all files) share a name |
//! | E0006 | two consts share a name |
//! | E0007 | two fields of a struct share a name |
//! | E0008 | two variants of an enum share a name |
//! | E0009 | two parameters of a `fn` or `event` share a name |
//! | E0010 | two members (`fn`s and `event`s) of a protocol share a name |
//! | E0011 | two members of a protocol share a message id |
//! | E0012 | two variants of an enum share a discriminant |
//! | E0013 | two protocols share a name |
//! | E0014 | unknown type (with "did you mean" when a known name is close) |
//! | E0015 | a bound or size names an unknown const |
//! | E0016 | a type contains itself without `option` or `vec` in between |
//! | E0017 | unknown attribute |
//! | E0018 | the same attribute twice on one declaration |
//! | E0019 | an attribute where it has no meaning (see IDL.md's table) |
//! | E0020 | an attribute's arguments are missing, extra, zero or of the wrong kind |
//! | E0021 | contradicting attributes (`@sync` + `@async`, `@queue` + `@no_queue`, two delivery kinds) |
//! | E0022 | `@async` on a `fn` that returns a value |
//! | E0023 | an `event` with a return type |
//! | E0024 | `result` anywhere but as a `fn`'s return type |
//! | E0025 | `()` anywhere but as the `T` of `result<T, E>` |
//! | E0026 | a bound of zero (`string<0>`, `[T; 0]`, `vec<T, 0>`) |
//! | E0027 | a bound or size naming a `bool` or `string` const |
//! | E0028 | a bound above `u32::MAX` (lengths are `u32` on the wire) |
//! | E0029 | `@version(0)` or `@since(0)` |
//! | E0030 | `@since(V)` with `V` above the protocol's `@version` |
//! | E0031 | a const's value does not fit its type (`const X: u8 = 300;`) |
//! | E0032 | a protocol name longer than 64 bytes (the ring header stores at most 64) |
//! | E0033 | an enum discriminant outside `0..=u32::MAX` |
//! | E0034 | a message or ring size overflows 64 bits |
//! | E0035 | a const of a type other than an integer, `bool` or `string` |
//! | E0036 | an integer literal too large for 64 bits |
//!
//! The same table is [`CODES`], for tools that list it.
#![forbid(unsafe_code)]

pub mod ast;
mod check;
mod diag;
pub mod fmt;
mod loader;
pub mod model;
mod parse;
pub mod sizes;

use std::path::{Path, PathBuf};

pub use diag::{CODES, Code, Diagnostic, Diagnostics, Label, MAX_NESTING};
pub use loader::{FsLoader, MemLoader, SourceLoader};
pub use model::Model;
pub use parse::{IdlParser, Rule, parse_pairs, parse_source};
pub use sizes::RingSizes;

/// A file that passed every check, and what it took to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The checked model.
    pub model: Model,
    /// Every file read (the checked one first), for `include_bytes!` and
    /// `rerun-if-changed`.
    pub files: Vec<PathBuf>,
}

/// Reads `path` and its imports from disk and checks them.
pub fn check_file(path: &Path) -> Result<Checked, Diagnostics> {
    check_file_with(path, &FsLoader)
}

/// Reads `path` and its imports through `loader` and checks them. A `path`
/// that cannot be read is a diagnostic (E0003), like a missing import.
pub fn check_file_with(path: &Path, loader: &dyn SourceLoader) -> Result<Checked, Diagnostics> {
    match loader.load(path) {
        Ok(source) => check_source(path, &source, loader),
        Err(e) => Err(check::unreadable(path, &e)),
    }
}

/// Checks `source` (the text of `path`); imports are read with `loader`,
/// relative to `path`'s folder.
pub fn check_source(
    path: &Path,
    source: &str,
    loader: &dyn SourceLoader,
) -> Result<Checked, Diagnostics> {
    check::check(path, source, loader)
}
