//! `idlc fmt`'s engine ([`idl_parser::fmt::format_source`]): idempotent,
//! meaning-preserving and comment-preserving, over the IDL.md example, the
//! valid corpus and hand-written corner cases.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use idl_parser::fmt::format_source;
use idl_parser::{Code, FsLoader, MemLoader, Rule, SourceLoader, check_source, parse_pairs};
use proptest::prelude::*;

/// The complete example of the pinned IDL.md, verbatim.
const DISPLAY: &str = r#"// display.idl
import "geometry.idl";           // brings Rect, Point into scope

/// Pixel layouts a surface may use.
enum PixelFormat { Rgba8, Bgra8, Rgb565 = 7 }

/// Why a display call failed.
enum DisplayError { NoSuchSurface, OutOfMemory(u64) }

const MAX_TITLE: u32 = 256;

/// Everything a client may ask of the display service.
@version(2)
@buffer(4 MiB)                   // optional: overrides the computed ring size
protocol Display {
    /// Two-way: it returns a value, so the caller gets a reply.
    fn create_surface(size: Rect, format: PixelFormat, title: string<MAX_TITLE>) -> u64;

    /// Two-way with an error type.
    @timeout(250)                // ms; default reply timeout for this call
    fn resize(surface: u64, size: Rect) -> result<(), DisplayError>;

    /// One-way: no return value, returns once queued in the ring.
    @queue(8)
    fn blit(surface: u64, at: Point, pixels: bytes<16 MiB>);

    /// One-way by shape, but the caller waits until the service handled it.
    @sync fn commit(surface: u64);

    /// Lossy: dropped (and reported) rather than waiting when the ring is full.
    @no_queue fn cursor_moved(at: Point);

    /// Only peers speaking version 2 or later know this call.
    @since(2) fn set_gamma(curve: vec<u16, 1024>) -> bool;

    /// Server-to-client events; up to 64 may wait in the ring.
    @queue(64) event vsync(frame: u64, timestamp_ns: u64);
    event surface_lost(surface: u64, reason: option<string<256>>);
}
"#;

const GEOMETRY: &str = "/// A point.\nstruct Point { x: i32, y: i32 }\n\
                        /// A rectangle.\nstruct Rect { origin: Point, width: u32, height: u32 }\n";

/// Comments in every place the grammar lets them stand.
const COMMENTS: &str = r#"/* file header
   spanning lines */

import   "a.idl" ;// after import
// about b
import "b.idl";
struct   Empty{}
struct Shrug /* before brace */ { }
struct   Point{x:i32,y :i32,} // trailing point



// own line before Rect

/// Rect docs
///   indented doc
// between doc and attr
@deprecated /* odd */ @another(1,2,) // attr trailing
struct Rect { // after brace
    origin : Point , // origin
    /* own line block */
    size_w: u32, /* a */ size_h: u32
    // before close
}
enum E{A,B=5,C(vec<u8,16MiB>)=9,
  D(result<(),E>), // d
}
const X:u64=0x10;
const S: string = "hi // not a comment";
protocol P{
  fn a(x: u32, // c1
       y: vec<u8 /* inner */, 4>) -> option<u8>;
  @sync fn b();


  event e(x: [u8; X]) /* before semi */;
  fn c(
  ) -> /* ret */ u8 // after ret
  ;
}
import "late.idl"; // late
// trailing at end
"#;

fn format(path: &Path, source: &str) -> String {
    format_source(path, source)
        .unwrap_or_else(|d| panic!("{} does not format:\n{}", path.display(), d.render(false)))
}

/// Every comment, in order, as the formatter promises to keep it (a line
/// comment may lose trailing whitespace).
fn comments(source: &str) -> Vec<String> {
    let pairs = parse_pairs(source).unwrap_or_else(|d| panic!("{}", d.render(false)));
    pairs
        .flatten()
        .filter(|p| p.as_rule() == Rule::COMMENT)
        .map(|p| {
            let text = p.as_str();
            if text.starts_with("//") {
                text.trim_end()
            } else {
                text
            }
            .to_owned()
        })
        .collect()
}

/// The comments as a multiset: hoisting an import moves its comments.
fn sorted(mut comments: Vec<String>) -> Vec<String> {
    comments.sort();
    comments
}

/// Formatting is idempotent, keeps every comment, and keeps the checked
/// model.
fn assert_formats_well(path: &Path, source: &str, loader: &dyn SourceLoader) -> String {
    let once = format(path, source);
    let twice = format(path, &once);
    assert_eq!(
        twice,
        once,
        "formatting {} is not idempotent",
        path.display()
    );
    assert_eq!(
        sorted(comments(&once)),
        sorted(comments(source)),
        "comments of {} changed",
        path.display()
    );
    let before = check_source(path, source, loader)
        .unwrap_or_else(|d| panic!("{} does not check:\n{}", path.display(), d.render(false)));
    let after = check_source(path, &once, loader).unwrap_or_else(|d| {
        panic!(
            "{} no longer checks once formatted:\n{}\n{once}",
            path.display(),
            d.render(false)
        )
    });
    assert_eq!(
        after.model,
        before.model,
        "formatting {} changed its meaning",
        path.display()
    );
    once
}

fn display_loader() -> MemLoader {
    MemLoader::new()
        .with("geometry.idl", GEOMETRY)
        .with("display.idl", DISPLAY)
}

#[test]
fn idl_md_example_snapshot() {
    let formatted = assert_formats_well(Path::new("display.idl"), DISPLAY, &display_loader());
    assert_eq!(
        comments(&formatted),
        comments(DISPLAY),
        "comments out of order"
    );
    insta::assert_snapshot!("display", formatted);
}

/// Every `.idl` file under `dir`, recursively, sorted.
fn idl_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "idl") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn valid_corpus() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid");
    let files: Vec<_> = idl_files(&dir)
        .into_iter()
        .map(|p| {
            let source = std::fs::read_to_string(&p).expect("corpus file is readable");
            (p, source)
        })
        .collect();
    // A vacuous pass would hide a moved or emptied corpus.
    assert!(!files.is_empty(), "no .idl file under {}", dir.display());
    files
}

#[test]
fn corpus_formatting_is_idempotent_and_keeps_meaning() {
    for (path, source) in valid_corpus() {
        assert_formats_well(&path, &source, &FsLoader);
    }
}

/// Whether the byte at an offset of `source` lies in a comment, a doc or a
/// string, where whitespace is content rather than layout. Nothing is, when
/// `source` does not parse.
fn protected(source: &str) -> impl Fn(usize) -> bool {
    let spans: Vec<(usize, usize)> = parse_pairs(source)
        .map(|pairs| {
            pairs
                .flatten()
                .filter(|p| matches!(p.as_rule(), Rule::COMMENT | Rule::doc | Rule::string_lit))
                .map(|p| (p.as_span().start(), p.as_span().end()))
                .collect()
        })
        .unwrap_or_default();
    move |i| spans.iter().any(|&(s, e)| s <= i && i < e)
}

/// Changes every run of spaces and tabs (outside comments, docs and
/// strings) to another non-empty run, and indents lines differently: the
/// canonical form must not care.
fn reindent(source: &str, mut choice: impl FnMut() -> usize) -> String {
    let is_protected = protected(source);
    const RUNS: [&str; 4] = [" ", "\t", "   ", " \t "];
    let mut out = String::with_capacity(source.len() * 2);
    let mut chars = source.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if (c == ' ' || c == '\t') && !is_protected(i) {
            while chars
                .next_if(|&(j, c)| (c == ' ' || c == '\t') && !is_protected(j))
                .is_some()
            {}
            out.push_str(RUNS[choice() % RUNS.len()]);
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn corpus_reindented_formats_the_same() {
    for (path, source) in valid_corpus() {
        let mut n = 0;
        let messy = reindent(&source, || {
            n += 1;
            n
        });
        assert_eq!(
            format(&path, &messy),
            format(&path, &source),
            "{}",
            path.display()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the horizontal whitespace, the IDL.md example formats to the
    /// same text.
    #[test]
    fn horizontal_whitespace_does_not_matter(choices in proptest::collection::vec(0usize..4, 1..64)) {
        let mut i = 0;
        let messy = reindent(DISPLAY, || {
            i += 1;
            choices[i % choices.len()]
        });
        let path = Path::new("display.idl");
        prop_assert_eq!(format(path, &messy), format(path, DISPLAY));
    }
}

/// Inserts, at the whitespace positions picked by `picks` (outside
/// comments, docs and strings), a block comment, a line comment or line
/// breaks: all of them places where the grammar lets a comment stand.
fn sprinkle(source: &str, picks: &[(usize, usize)]) -> String {
    let is_protected = protected(source);
    let spots: Vec<usize> = source
        .char_indices()
        .filter(|&(i, c)| c.is_ascii_whitespace() && !is_protected(i))
        .map(|(i, _)| i)
        .collect();
    let mut chosen: Vec<(usize, usize)> = picks
        .iter()
        .map(|&(spot, kind)| (spots[spot % spots.len()], kind))
        .collect();
    chosen.sort();
    let mut out = String::with_capacity(source.len() + 16 * picks.len());
    let mut at = 0;
    for (n, (spot, kind)) in chosen.into_iter().enumerate() {
        out.push_str(&source[at..spot]);
        at = spot;
        match kind % 4 {
            0 => out.push_str(&format!(" /* c{n} */ ")),
            1 => out.push_str(&format!(" // c{n}\n")),
            2 => out.push('\n'),
            _ => out.push_str("\n\n"),
        }
    }
    out.push_str(&source[at..]);
    out
}

/// Formats `noisy`; the result must format to itself and keep every
/// comment of `noisy`.
fn format_stably(path: &Path, noisy: &str) -> Result<String, TestCaseError> {
    let once = format(path, noisy);
    prop_assert_eq!(&format(path, &once), &once, "not idempotent for\n{}", noisy);
    prop_assert_eq!(sorted(comments(&once)), sorted(comments(noisy)));
    Ok(once)
}

/// `noisy` checks, and `once`, its formatted text, checks to the same model.
fn keeps_meaning(
    path: &Path,
    noisy: &str,
    once: &str,
    loader: &dyn SourceLoader,
) -> Result<(), TestCaseError> {
    let before = check_source(path, noisy, loader).map(|c| c.model);
    let after = check_source(path, once, loader).map(|c| c.model);
    prop_assert!(before.is_ok(), "the mutation broke the meaning:\n{}", noisy);
    prop_assert_eq!(after, before);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Comments and line breaks anywhere between tokens: formatting stays
    /// idempotent, keeps every comment and keeps the meaning.
    #[test]
    fn comments_anywhere_keep_formatting_stable(
        picks in proptest::collection::vec((0usize..10_000, 0usize..4), 1..12),
    ) {
        let path = Path::new("display.idl");
        let noisy = sprinkle(DISPLAY, &picks);
        prop_assert!(parse_pairs(&noisy).is_ok(), "the mutation broke the syntax:\n{}", noisy);
        let once = format_stably(path, &noisy)?;
        keeps_meaning(path, &noisy, &once, &display_loader())?;
    }

    /// The same over every file of the valid corpus.
    #[test]
    fn comments_anywhere_in_the_corpus(
        file in 0usize..1000,
        picks in proptest::collection::vec((0usize..10_000, 0usize..4), 1..12),
    ) {
        let corpus = valid_corpus();
        let (path, source) = &corpus[file % corpus.len()];
        let noisy = sprinkle(source, &picks);
        let once = format_stably(path, &noisy)?;
        keeps_meaning(path, &noisy, &once, &FsLoader)?;
    }

    /// The same over the hand-written comment corner cases (syntax only:
    /// that file does not check).
    #[test]
    fn comments_anywhere_in_corner_cases(
        picks in proptest::collection::vec((0usize..10_000, 0usize..4), 1..12),
    ) {
        let path = Path::new("comments.idl");
        let noisy = sprinkle(COMMENTS, &picks);
        format_stably(path, &noisy)?;
    }
}

#[test]
fn comments_survive_where_they_stand() {
    let path = Path::new("comments.idl");
    let once = format(path, COMMENTS);
    assert_eq!(format(path, &once), once, "not idempotent");
    assert_eq!(sorted(comments(&once)), sorted(comments(COMMENTS)));
    // In order, but for the one that moved up with its import.
    let moved = |mut c: Vec<String>| {
        c.retain(|c| c != "// late");
        c
    };
    assert_eq!(moved(comments(&once)), moved(comments(COMMENTS)));
    insta::assert_snapshot!("comments", once);
}

#[test]
fn messy_input_becomes_canonical() {
    let messy = "import \"g.idl\";struct  S{a:u8,b : vec<u8,4,>,}\n\n\n\
                 enum K{A=1,B(option<S,>)} const C:u32=16MiB;\n\
                 @version(3) protocol P{@queue(2,) fn f(s:S,k:K,)->result<(),K>;event e();}";
    let expected = "\
import \"g.idl\";

struct S {
    a: u8,
    b: vec<u8, 4>,
}

enum K {
    A = 1,
    B(option<S>),
}

const C: u32 = 16 MiB;

@version(3)
protocol P {
    @queue(2)
    fn f(s: S, k: K) -> result<(), K>;
    event e();
}
";
    assert_eq!(format(Path::new("messy.idl"), messy), expected);
}

#[test]
fn literals_are_kept_as_written() {
    let source = "const A: u32 = 0x10;\n\nconst B: u64 = 1_000 KiB;\n\nconst C: i32 = -3;\n\n\
                  const D: bool = true;\n\nconst E: string = \"a \\\"b\\\"\";\n";
    assert_eq!(format(Path::new("lit.idl"), source), source);
}

#[test]
fn crlf_input_formats_to_lf() {
    let crlf = DISPLAY.replace('\n', "\r\n");
    let path = Path::new("display.idl");
    let formatted = format(path, &crlf);
    assert!(!formatted.contains('\r'));
    assert_eq!(formatted, format(path, DISPLAY));
}

#[test]
fn empty_and_comment_only_files() {
    let path = Path::new("x.idl");
    assert_eq!(format(path, ""), "");
    assert_eq!(format(path, "\n\n  \n"), "");
    assert_eq!(
        format(path, "  // only a comment  \n\n"),
        "// only a comment\n"
    );
}

#[test]
fn syntax_errors_are_diagnostics_not_output() {
    let path = Path::new("broken.idl");
    let diagnostics = format_source(path, "struct S { a: u8 ").expect_err("unterminated struct");
    assert_eq!(diagnostics.codes(), vec![Code::Syntax]);
    let first = diagnostics.iter().next().expect("one diagnostic");
    assert_eq!(first.file, path);
    assert_eq!((first.line, first.col), (1, 18));
}

#[test]
fn unchecked_but_parsable_files_are_formatted() {
    // Formatting needs only the syntax: an unknown type is the checker's
    // business.
    let source = "struct S {\n    a: Strng,\n}\n";
    assert_eq!(format(Path::new("s.idl"), source), source);
}
