//! `docs/IDL.md` stays true: every ` ```idl ` block checks clean, the
//! formatting example is what `idlc fmt` prints, and the `idlc sizes` output
//! shown for the worked example is what `idlc` prints.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use idl_parser::{MemLoader, check_source};

fn guide() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/IDL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bodies of the fenced blocks of `language`, in order.
fn blocks(text: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("unterminated code block");
        out.push(body[..end].to_owned());
        rest = &body[end..];
    }
    out
}

/// A block's file name: its first line when that is `// name.idl`.
fn name_of(block: &str, index: usize) -> PathBuf {
    block
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("// "))
        .filter(|n| n.ends_with(".idl") && !n.contains(' '))
        .map_or_else(|| PathBuf::from(format!("block{index}.idl")), PathBuf::from)
}

#[test]
fn every_idl_block_checks_clean() {
    let guide = guide();
    let idl = blocks(&guide, "idl");
    assert!(idl.len() >= 6, "the guide lost its examples");
    // Blocks named like files may import each other (the tour does).
    let mut loader = MemLoader::new();
    for (i, block) in idl.iter().enumerate() {
        loader.insert(name_of(block, i), block.as_str());
    }
    for (i, block) in idl.iter().enumerate() {
        let path = name_of(block, i);
        if let Err(d) = check_source(&path, block, &loader) {
            panic!(
                "docs/IDL.md block {i} does not check:\n{}\n{block}",
                d.render(false)
            );
        }
    }
}

#[test]
fn formatting_example_is_what_fmt_prints() {
    let guide = guide();
    let idl = blocks(&guide, "idl");
    let before = idl
        .iter()
        .find(|b| b.starts_with("// before\n"))
        .expect("a `// before` block");
    let after = idl
        .iter()
        .find(|b| b.starts_with("// after\n"))
        .expect("an `// after` block");
    let strip = |b: &str| {
        b.split_once('\n')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default()
    };
    let formatted = idl_parser::fmt::format_source(Path::new("before.idl"), &strip(before))
        .unwrap_or_else(|d| panic!("{}", d.render(false)));
    assert_eq!(formatted, strip(after));
}

#[test]
fn worked_example_sizes_are_what_idlc_prints() {
    let guide = guide();
    let counter = blocks(&guide, "idl")
        .into_iter()
        .find(|b| b.contains("protocol Counter"))
        .expect("the worked example");
    let dir = std::env::temp_dir().join(format!("idlc-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("counter.idl"), &counter).expect("write");

    // Each `$ idlc sizes counter.idl ...` console block: the command, then
    // exactly what it prints.
    let sessions: Vec<String> = blocks(&guide, "console")
        .into_iter()
        .filter(|b| b.starts_with("$ idlc sizes counter.idl"))
        .collect();
    assert!(sessions.len() >= 2, "the guide lost its sizes examples");
    for session in sessions {
        let (command, shown) = session.split_once('\n').expect("command line");
        let args: Vec<&str> = command.trim_start_matches("$ idlc ").split(' ').collect();
        let out = Command::new(env!("CARGO_BIN_EXE_idlc"))
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run idlc");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), shown, "`{command}`");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_error_code_is_documented() {
    let guide = guide();
    for (_, code, _) in idl_parser::CODES {
        assert!(
            guide.contains(&format!("| {code} |")),
            "docs/IDL.md does not list {code}"
        );
    }
}

/// The Rust excerpts of "What each construct becomes in Rust" (blocks that
/// start with `// generated from NAME.idl`) are real generated code: every
/// line shown, except `// ...` elisions, is a line of the code generated
/// from the guide's `NAME.idl` block, in the order shown.
#[test]
fn rust_excerpts_are_the_generated_code() {
    let guide = guide();
    let idl = blocks(&guide, "idl");
    let mut loader = MemLoader::new();
    for (i, block) in idl.iter().enumerate() {
        loader.insert(name_of(block, i), block.as_str());
    }
    let excerpts: Vec<String> = blocks(&guide, "rust")
        .into_iter()
        .filter(|b| b.starts_with("// generated from "))
        .collect();
    assert!(excerpts.len() >= 7, "the guide lost its Rust excerpts");
    for excerpt in excerpts {
        let (first, body) = excerpt.split_once('\n').expect("a body");
        let name = first.trim_start_matches("// generated from ").trim();
        let source = idl
            .iter()
            .enumerate()
            .find(|(i, b)| name_of(b, *i) == Path::new(name))
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no `// {name}` block in the guide"));
        let model = check_source(Path::new(name), &source, &loader)
            .unwrap_or_else(|d| panic!("{}", d.render(false)))
            .model;
        let code = idl_codegen::generate_file(&model);
        let mut generated = code.lines().map(str::trim);
        for line in body.lines().map(str::trim) {
            if line.is_empty() || line == "// ..." {
                continue;
            }
            assert!(
                generated.any(|g| g == line),
                "`{line}` (excerpt of {name}) is not in the generated code, \
                 or not in this order; the excerpt:\n{excerpt}\nthe code:\n{code}"
            );
        }
    }
}
