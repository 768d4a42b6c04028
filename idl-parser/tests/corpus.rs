//! The corpus: every valid file checks clean; every invalid file reports
//! exactly the rule its name starts with, snapshotted as rendered text.

use std::path::{Path, PathBuf};

use idl_parser::{CODES, check_file};

fn idl_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idl"))
        .collect();
    v.sort();
    v
}

#[test]
fn valid_corpus_checks_clean() {
    let files = idl_files("tests/corpus/valid");
    assert!(files.len() >= 5, "the valid corpus is missing");
    for f in files {
        if let Err(e) = check_file(&f) {
            panic!("{} should check clean:\n{}", f.display(), e.render(false));
        }
    }
}

/// `e0014_unknown_type.idl` -> `E0014`.
fn expected_code(path: &Path) -> String {
    let stem = path.file_stem().unwrap().to_str().unwrap();
    stem[..5].to_uppercase()
}

#[test]
fn invalid_corpus_one_file_per_rule() {
    let files = idl_files("tests/corpus/invalid");
    let mut covered: Vec<String> = Vec::new();
    for f in &files {
        let code = expected_code(f);
        let err = match check_file(f) {
            Ok(_) => panic!("{} should not check", f.display()),
            Err(e) => e,
        };
        for d in err.iter() {
            assert_eq!(
                d.code.as_str(),
                code,
                "{}: unexpected diagnostic {d}",
                f.display()
            );
        }
        let summary: Vec<String> = err.iter().map(ToString::to_string).collect();
        let snapshot = format!("{}\n\n{}", summary.join("\n"), err.render(false));
        let name = f.file_stem().unwrap().to_str().unwrap().to_string();
        insta::with_settings!({ prepend_module_to_snapshot => true, omit_expression => true }, {
            insta::assert_snapshot!(name, snapshot);
        });
        covered.push(code);
    }
    for (_, code, _) in CODES {
        assert!(
            covered.iter().any(|c| c == code),
            "no invalid corpus file for {code}"
        );
    }
}
