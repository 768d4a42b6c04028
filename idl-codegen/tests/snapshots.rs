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

/// No doc comment of the generated code can become a doctest: every fence
/// is a `text` fence, and no line outside a fence is indented 4 spaces (an
/// indented code block). Checked on the file whose docs try both.
#[test]
fn docs_never_become_doctests() {
    let code = generated("tests/generated/every_type.idl");
    let mut in_fence = false;
    let mut fences = 0;
    for line in code.lines() {
        let Some(doc) = line.trim_start().strip_prefix("///") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.trim_start().starts_with("```") {
            if !in_fence {
                assert_eq!(doc.trim(), "```text", "{line}");
                fences += 1;
            }
            in_fence = !in_fence;
        } else if !in_fence {
            assert!(!doc.starts_with("    "), "indented code block: {line}");
        }
    }
    assert!(!in_fence, "unclosed fence");
    assert_eq!(fences, 1, "the fixture has one fence");
    assert!(!code.contains("unsafe"), "generated code has no unsafe");
}
