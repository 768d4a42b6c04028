//! `include_idl!` as the compiler runs it (trybuild): invalid IDL, missing
//! files and bad arguments are compile errors carrying the rendered
//! diagnostics; a valid file expands into code that compiles and runs.
//!
//! The expected compiler output is committed beside each case
//! (`tests/ui/*.stderr`); `TRYBUILD=overwrite cargo test -p idl-macros
//! --test ui` regenerates it after a deliberate change.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// trybuild compiles the cases as a crate of its own, in
/// `<target dir>/tests/trybuild/idl-macros/`, and that folder is the
/// `CARGO_MANIFEST_DIR` the macro resolves paths against. The cases name
/// their IDL files as this crate would (`tests/ui/idl/...`), so the files
/// are copied there at the same relative path: the paths in the committed
/// messages are then the ones a user of this crate would see, with nothing
/// machine-specific in them.
fn place_idl_fixtures() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The target folder exactly as trybuild finds it: `cargo metadata`.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version=1", "--no-deps", "--offline"])
        .current_dir(manifest_dir)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let target_dir = metadata["target_directory"]
        .as_str()
        .expect("cargo metadata names the target directory");
    let project = PathBuf::from(target_dir).join("tests/trybuild/idl-macros");
    let from = manifest_dir.join("tests/ui/idl");
    let to = project.join("tests/ui/idl");
    std::fs::create_dir_all(&to).expect("create the fixture folder");
    for entry in std::fs::read_dir(&from).expect("read tests/ui/idl") {
        let path = entry.expect("list tests/ui/idl").path();
        let name = path.file_name().expect("a file name");
        std::fs::copy(&path, to.join(name)).expect("copy an IDL fixture");
    }
}

#[test]
fn include_idl_compile_errors_and_expansion() {
    place_idl_fixtures();
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/bad_idl.rs");
    cases.compile_fail("tests/ui/bad_import.rs");
    cases.compile_fail("tests/ui/missing_file.rs");
    cases.compile_fail("tests/ui/not_a_string.rs");
    cases.compile_fail("tests/ui/no_argument.rs");
    cases.pass("tests/ui/pass_counter.rs");
}
