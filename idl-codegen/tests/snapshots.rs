//! Snapshots of `generate_file` for the example IDLs and the corpus file that
//! uses every type (`cargo insta review` after an intended change).
#![forbid(unsafe_code)]

use std::path::Path;

use idl_codegen::generate_file;

/// Generates from `path`, relative to this package, as `idlc gen` would see
/// it from here (so the header names stable relative paths).
fn generated(path: &str) -> String {
    let checked = idl_parser::check_file(Path::new(path))
        .unwrap_or_else(|d| panic!("{path}: {}", d.render(false)));
    generate_file(&checked.model)
}

#[test]
fn display_example() {
    insta::assert_snapshot!(generated("../examples/idl/display.idl"));
}

#[test]
fn geometry_example() {
    insta::assert_snapshot!(generated("../examples/idl/geometry.idl"));
}

#[test]
fn corpus_types() {
    insta::assert_snapshot!(generated("../idl-parser/tests/corpus/valid/types.idl"));
}

#[test]
fn corpus_keywords() {
    insta::assert_snapshot!(generated("../idl-parser/tests/corpus/valid/keywords.idl"));
}

#[test]
fn corpus_protocols() {
    insta::assert_snapshot!(generated("../idl-parser/tests/corpus/valid/protocols.idl"));
}
