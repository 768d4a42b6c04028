//! `check_source` never panics: not on arbitrary strings, not on random
//! byte mutations of the corpus, not on deep nesting.

use std::path::{Path, PathBuf};

use idl_parser::{MemLoader, check_source, parse_pairs};
use proptest::prelude::*;

/// The corpus, as (path, text), loaded once per test.
fn corpus() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for dir in [
        "tests/corpus/valid",
        "tests/corpus/invalid",
        "tests/corpus/invalid/helpers",
    ] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "idl") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
    }
    out.sort();
    out
}

/// A loader holding the whole corpus, so that imports resolve.
fn loader(files: &[(PathBuf, String)]) -> MemLoader {
    let mut l = MemLoader::new();
    for (p, t) in files {
        l.insert(p, t.clone());
    }
    l
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to the grammar, plus anything at all.
    let byte = prop_oneof![
        prop::sample::select(b"{}[]()<>;:,=@/*\"\\-_ \n0aZ".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Replace(i, b)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        match *e {
            Edit::Insert(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.insert(i, b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes.remove(i);
            }
            Edit::Replace(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            _ => {}
        }
    }
    // The API takes `&str`: invalid UTF-8 never reaches it.
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings(s in any::<String>()) {
        let _ = check_source(Path::new("fuzz.idl"), &s, &MemLoader::new());
    }

    #[test]
    fn idl_like_strings(s in "[a-z_@(){}<>\\[\\];:,=\"/* \n0-9-]{0,200}") {
        let _ = check_source(Path::new("fuzz.idl"), &s, &MemLoader::new());
    }

    #[test]
    fn mutated_corpus(pick in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..8)) {
        let files = corpus();
        let (path, text) = &files[pick.index(files.len())];
        let mutated = apply(text, &edits);
        let l = loader(&files);
        let result = check_source(path, &mutated, &l);
        if let Err(e) = result {
            // Rendering must not panic either, and every error has a code.
            let text = e.render(false);
            prop_assert!(text.contains("error[E0"));
        }
        let _ = parse_pairs(&mutated);
    }
}

#[test]
fn deep_nesting_is_a_diagnostic_not_a_stack_overflow() {
    for open in ["option<", "[", "vec<", "(", "{"] {
        let src = format!("struct S {{ a: {} }}", open.repeat(100_000));
        let e = check_source(Path::new("deep.idl"), &src, &MemLoader::new()).unwrap_err();
        assert!(!e.is_empty());
    }
    // Deep but balanced, within the cap: fine.
    let src = format!(
        "struct S {{ a: {}u8{} }}",
        "option<".repeat(60),
        ">".repeat(60)
    );
    check_source(Path::new("ok.idl"), &src, &MemLoader::new()).unwrap();
}

#[test]
fn long_chains_do_not_recurse() {
    // 20,000 structs each containing the next, and a cycle through all.
    let n = 20_000;
    let mut src = String::new();
    for i in 0..n {
        src.push_str(&format!("struct S{i} {{ next: S{} }}\n", (i + 1) % n));
    }
    let e = check_source(Path::new("chain.idl"), &src, &MemLoader::new()).unwrap_err();
    assert_eq!(e.codes(), [idl_parser::Code::InfiniteType]);
    // And a long import chain.
    let mut l = MemLoader::new();
    for i in 0..2_000 {
        l.insert(format!("f{i}.idl"), format!("import \"f{}.idl\";", i + 1));
    }
    l.insert("f2000.idl", "struct End { x: u8 }");
    check_source(Path::new("f0.idl"), "import \"f1.idl\";", &l).unwrap();
}
