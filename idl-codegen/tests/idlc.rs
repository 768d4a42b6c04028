//! `idlc` as users run it: the real binary, real files, exit codes, stdout
//! and stderr.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// A fresh directory per test (pid + counter), so tests run in parallel and
/// reruns never see stale files.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("idlc-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write fixture");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `idlc` in `dir` (so that diagnostics name files as given).
fn idlc(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlc"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run idlc")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .expect("idlc exited, not killed by a signal")
}

const GEOMETRY: &str = "\
struct Point {
    x: i32,
    y: i32,
}

struct Rect {
    origin: Point,
    width: u32,
    height: u32,
}
";

const DISPLAY: &str = r#"import "geometry.idl";

enum PixelFormat { Rgba8, Bgra8, Rgb565 = 7 }

@version(2)
@buffer(4 MiB)
protocol Display {
    fn create_surface(size: Rect, format: PixelFormat, title: string<256>) -> u64;
    @queue(8) fn blit(surface: u64, at: Point, pixels: bytes<16 MiB>);
    @queue(64) event vsync(frame: u64, timestamp_ns: u64);
}
"#;

/// Two errors: line 3 col 8 (unknown type) and line 5 col 5 (a field
/// named twice).
const BAD: &str = "struct A {
    a: u8,
    b: Strng,
    c: u8,
    c: u16,
}
";

// ------------------------------------------------------------------ check

#[test]
fn check_valid_files_exits_0_silently() {
    let dir = TempDir::new("check-valid");
    dir.write("geometry.idl", GEOMETRY);
    dir.write("display.idl", DISPLAY);
    let out = idlc(&dir.0, &["check", "display.idl", "geometry.idl"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), "");
}

#[test]
fn check_invalid_file_exits_1_with_every_diagnostic_located() {
    let dir = TempDir::new("check-invalid");
    dir.write("bad.idl", BAD);
    let out = idlc(&dir.0, &["check", "bad.idl"]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    // Rendered, not just listed: code, FILE:LINE:COL, the line, a caret.
    assert!(err.contains("error[E0014]"), "{err}");
    assert!(err.contains("bad.idl:3:8"), "{err}");
    assert!(err.contains("b: Strng,"), "{err}");
    assert!(err.contains("^^^^^"), "{err}");
    // All errors of the file, not only the first.
    assert!(err.contains("error[E0007]"), "{err}");
    assert!(err.contains("bad.idl:5:5"), "{err}");
    // Not a terminal: no colour codes.
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[test]
fn check_reports_all_files_and_fails_if_one_is_invalid() {
    let dir = TempDir::new("check-several");
    dir.write("geometry.idl", GEOMETRY);
    dir.write("bad.idl", BAD);
    dir.write("bad2.idl", "const X: u8 = 300;\n");
    let out = idlc(&dir.0, &["check", "bad.idl", "geometry.idl", "bad2.idl"]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("bad.idl:3:8"), "{err}");
    assert!(err.contains("bad2.idl:1:"), "{err}");
}

#[test]
fn check_missing_file_exits_2_with_a_clear_message() {
    let dir = TempDir::new("check-missing");
    dir.write("geometry.idl", GEOMETRY);
    let out = idlc(&dir.0, &["check", "geometry.idl", "nope.idl"]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(err.contains("cannot read `nope.idl`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_missing_import_is_a_diagnostic() {
    let dir = TempDir::new("check-import");
    dir.write("a.idl", "import \"missing.idl\";\n");
    let out = idlc(&dir.0, &["check", "a.idl"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("E0003"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::new("usage");
    for args in [
        &["check"][..],
        &[],
        &["sizes"],
        &["fmt", "x.idl", "--check", "--write"],
        &["frobnicate"],
        &["gen"],
        // `--check` compares against OUT, so it needs one.
        &["gen", "x.idl", "--check"],
    ] {
        let out = idlc(&dir.0, args);
        assert_eq!(code(&out), 2, "idlc {args:?}: {}", stderr(&out));
    }
    assert_eq!(code(&idlc(&dir.0, &["--help"])), 0);
}

// ------------------------------------------------------------------ gen

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime")
}

#[test]
fn gen_prints_formatted_code_with_a_header() {
    let dir = TempDir::new("gen-stdout");
    dir.write("geometry.idl", GEOMETRY);
    dir.write("display.idl", DISPLAY);
    let out = idlc(&dir.0, &["gen", "display.idl"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("// @generated by idlc from display.idl, geometry.idl. Do not edit.\n"),
        "{text}"
    );
    // Types of the file and of its imports, and one module per protocol.
    for item in [
        "pub struct Rect {",
        "pub enum PixelFormat {",
        "pub mod display {",
        "pub const BLIT: ::shm_channel::rpc::Method",
    ] {
        assert!(text.contains(item), "missing `{item}` in:\n{text}");
    }
    // prettyplease output: one item per line, indented.
    assert!(
        text.contains("\n    pub const NAME: &str = \"Display\";\n"),
        "{text}"
    );
    assert!(text.contains("pub struct AsyncClient<"), "{text}");
    assert_eq!(stderr(&out), "");
    // `--no-async`: the same without the async client (for shm-channel without `tokio`).
    let out = idlc(&dir.0, &["gen", "display.idl", "--no-async"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let sync_only = stdout(&out);
    assert!(!sync_only.contains("AsyncClient"), "{sync_only}");
    assert!(sync_only.contains("pub struct Client<"), "{sync_only}");
}

#[test]
fn gen_writes_out_only_when_the_content_changes() {
    let dir = TempDir::new("gen-out");
    dir.write("geometry.idl", GEOMETRY);
    let out_path = dir.0.join("geometry.rs");

    let first = idlc(&dir.0, &["gen", "geometry.idl", "-o", "geometry.rs"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert_eq!(stdout(&first), "");
    let printed = stdout(&idlc(&dir.0, &["gen", "geometry.idl"]));
    assert_eq!(std::fs::read_to_string(&out_path).expect("read"), printed);

    let before = mtime(&out_path);
    // Long enough for any filesystem's timestamp granularity to show a write.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = idlc(&dir.0, &["gen", "geometry.idl", "--output", "geometry.rs"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(before, mtime(&out_path), "an up-to-date OUT was rewritten");

    // A changed IDL rewrites it.
    dir.write(
        "geometry.idl",
        &format!("{GEOMETRY}\nconst ZOOM: u8 = 2;\n"),
    );
    let changed = idlc(&dir.0, &["gen", "geometry.idl", "-o", "geometry.rs"]);
    assert_eq!(code(&changed), 0, "{}", stderr(&changed));
    assert!(
        std::fs::read_to_string(&out_path)
            .expect("read")
            .contains("pub const ZOOM: u8 = 2;")
    );
}

#[test]
fn gen_check_reports_stale_and_missing_output() {
    let dir = TempDir::new("gen-check");
    dir.write("geometry.idl", GEOMETRY);
    let out_path = dir.0.join("geometry.rs");
    let check = |dir: &TempDir| {
        idlc(
            &dir.0,
            &["gen", "geometry.idl", "-o", "geometry.rs", "--check"],
        )
    };

    let missing = check(&dir);
    assert_eq!(code(&missing), 1);
    assert!(
        stderr(&missing).contains("geometry.rs"),
        "{}",
        stderr(&missing)
    );
    assert!(!out_path.exists(), "--check must not write");

    assert_eq!(
        code(&idlc(&dir.0, &["gen", "geometry.idl", "-o", "geometry.rs"])),
        0
    );
    let fresh = check(&dir);
    assert_eq!(code(&fresh), 0, "{}", stderr(&fresh));
    assert_eq!(stdout(&fresh), "");
    assert_eq!(stderr(&fresh), "");

    std::fs::write(&out_path, "// edited by hand\n").expect("write");
    let stale = check(&dir);
    assert_eq!(code(&stale), 1);
    let err = stderr(&stale);
    assert!(
        err.contains("geometry.rs") && err.contains("stale"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&out_path).expect("read"),
        "// edited by hand\n",
        "--check must not write"
    );
}

#[test]
fn gen_of_invalid_idl_exits_1_and_writes_nothing() {
    let dir = TempDir::new("gen-invalid");
    dir.write("bad.idl", BAD);
    let out = idlc(&dir.0, &["gen", "bad.idl", "-o", "bad.rs"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("bad.idl:3:8"), "{}", stderr(&out));
    assert!(!dir.0.join("bad.rs").exists());
}

#[test]
fn gen_io_errors_exit_2() {
    let dir = TempDir::new("gen-io");
    dir.write("geometry.idl", GEOMETRY);
    let missing = idlc(&dir.0, &["gen", "nope.idl"]);
    assert_eq!(code(&missing), 2);
    assert!(
        stderr(&missing).contains("cannot read `nope.idl`"),
        "{}",
        stderr(&missing)
    );
    // OUT in a folder that does not exist.
    let unwritable = idlc(&dir.0, &["gen", "geometry.idl", "-o", "no/such/dir/out.rs"]);
    assert_eq!(code(&unwritable), 2, "{}", stderr(&unwritable));
    assert!(
        stderr(&unwritable).contains("cannot write"),
        "{}",
        stderr(&unwritable)
    );
}

// ------------------------------------------------------------------ sizes

/// Sizes computed by hand in the comments (docs/IDL.md explains the rule).
const SIZES: &str = "
struct Point { x: i32, y: i32 }

protocol Counter {
    // request: 48 + (16 + 8) + (16 + 104) = 192, already a multiple of 64
    // reply (u64): 48 + 16 + 8 = 72 -> 128
    fn add(amount: u32, label: string<100>) -> u64;
    // request: 48 + (16 + 8) + (16 + 2008) = 2096 -> 2112, x 4 = 8448
    @queue(4) fn log(at: Point, line: string<2000>);
    // 48 + 16 + 8 = 72 -> 128, x 32 = 4096
    @queue(32) event changed(value: u64);
    // 48 -> 64
    event reset();
}

@buffer(64 KiB)
protocol Buffered {
    fn big(data: bytes<1 MiB>);
}

protocol Unbounded {
    fn put(data: bytes) -> bool;
    event done(ok: bool);
}

protocol OneWay {
    fn ping(n: u8);
}
";

#[test]
fn sizes_json_matches_hand_computation() {
    let dir = TempDir::new("sizes-json");
    dir.write("sizes.idl", SIZES);
    let out = idlc(&dir.0, &["sizes", "sizes.idl", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    // Exactly one JSON value on stdout.
    let value: Value = serde_json::from_str(&text).expect("stdout is one JSON document");
    let expected = json!([
        {
            "protocol": "Counter",
            // max(192, 8448) = 8448 (log); ceil(1.1 x 8448) = 9293;
            // 512 (ring header) + 9293 = 9805 -> 3 pages
            "client_to_server": {"max_bytes": 12288, "decided_by": "log"},
            // ceil(1.1 x 128) + ceil(1.1 x 4096) + ceil(1.1 x 64)
            // = 141 + 4506 + 71 = 4718; 512 + 4718 = 5230 -> 2 pages;
            // the largest term is `changed`
            "server_to_client": {"max_bytes": 8192, "decided_by": "changed"}
        },
        {
            "protocol": "Buffered",
            "client_to_server": {"max_bytes": 65536, "decided_by": "@buffer"},
            "server_to_client": {"max_bytes": 65536, "decided_by": "@buffer"}
        },
        {
            "protocol": "Unbounded",
            // `bytes` without a bound: 1 MiB
            "client_to_server": {"max_bytes": 1048576, "decided_by": "default"},
            // reply 48 + 16 + 1 = 65 -> 128: 141; event the same: 141;
            // 512 + 282 -> 1 page; the reply comes first and ties
            "server_to_client": {"max_bytes": 4096, "decided_by": "put"}
        },
        {
            "protocol": "OneWay",
            "client_to_server": {"max_bytes": 4096, "decided_by": "ping"},
            // nothing travels back: one page
            "server_to_client": {"max_bytes": 4096, "decided_by": "none"}
        }
    ]);
    assert_eq!(value, expected, "{text}");
}

#[test]
fn sizes_table_is_aligned() {
    let dir = TempDir::new("sizes-table");
    dir.write("sizes.idl", SIZES);
    let out = idlc(&dir.0, &["sizes", "sizes.idl"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 2 * 4, "{text}");
    assert!(lines[0].starts_with("protocol"), "{text}");
    assert!(
        lines[1].starts_with("Counter") && lines[1].contains("12288"),
        "{text}"
    );
    assert!(lines[1].ends_with("log"), "{text}");
    assert!(lines[2].ends_with("changed"), "{text}");
    // Every row's "decided by" starts in the same column.
    let column = lines[0].find("decided by").expect("header");
    for line in &lines[1..] {
        assert_eq!(line.as_bytes()[column - 1], b' ', "{text}");
        assert_ne!(line.as_bytes()[column], b' ', "{text}");
    }
}

#[test]
fn sizes_of_an_invalid_file_exits_1() {
    let dir = TempDir::new("sizes-invalid");
    dir.write("bad.idl", BAD);
    let out = idlc(&dir.0, &["sizes", "bad.idl", "--json"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("bad.idl:3:8"));
}

// ------------------------------------------------------------------ fmt

const UNFORMATTED: &str =
    "// points\nstruct Point{x:i32,y:i32}\nprotocol P{@queue(2) fn f(p:Point);}\n";
const FORMATTED: &str = "\
// points
struct Point {
    x: i32,
    y: i32,
}

protocol P {
    @queue(2)
    fn f(p: Point);
}
";

#[test]
fn fmt_prints_the_canonical_form() {
    let dir = TempDir::new("fmt-print");
    let path = dir.write("p.idl", UNFORMATTED);
    let out = idlc(&dir.0, &["fmt", "p.idl"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), FORMATTED);
    // Printing never touches the file.
    assert_eq!(std::fs::read_to_string(path).expect("read"), UNFORMATTED);
}

#[test]
fn fmt_check_accepts_formatted_and_rejects_unformatted() {
    let dir = TempDir::new("fmt-check");
    dir.write("good.idl", FORMATTED);
    dir.write("bad.idl", UNFORMATTED);

    let good = idlc(&dir.0, &["fmt", "good.idl", "--check"]);
    assert_eq!(code(&good), 0, "{}", stderr(&good));
    assert_eq!(stdout(&good), "");
    assert_eq!(stderr(&good), "");

    let bad = idlc(&dir.0, &["fmt", "--check", "bad.idl"]);
    assert_eq!(code(&bad), 1);
    assert_eq!(stdout(&bad), "");
    assert!(stderr(&bad).contains("bad.idl"), "{}", stderr(&bad));
}

#[test]
fn fmt_write_rewrites_only_when_the_content_changes() {
    let dir = TempDir::new("fmt-write");
    let bad = dir.write("bad.idl", UNFORMATTED);
    let good = dir.write("good.idl", FORMATTED);
    let before = std::fs::metadata(&good)
        .and_then(|m| m.modified())
        .expect("mtime");
    // Long enough for any filesystem's timestamp granularity to show a write.
    std::thread::sleep(std::time::Duration::from_millis(20));

    for name in ["bad.idl", "good.idl"] {
        let out = idlc(&dir.0, &["fmt", "-w", name]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
    assert_eq!(std::fs::read_to_string(&bad).expect("read"), FORMATTED);
    let after = std::fs::metadata(&good)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(before, after, "an already formatted file was rewritten");
}

#[test]
fn fmt_syntax_error_exits_1_with_location() {
    let dir = TempDir::new("fmt-syntax");
    dir.write("broken.idl", "struct S {\n    a: u8\n    b: u8\n}\n");
    let out = idlc(&dir.0, &["fmt", "broken.idl"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(
        err.contains("E0001") && err.contains("broken.idl:3:5"),
        "{err}"
    );
}

#[test]
fn fmt_missing_file_exits_2() {
    let dir = TempDir::new("fmt-missing");
    let out = idlc(&dir.0, &["fmt", "--check", "nope.idl"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("cannot read `nope.idl`"),
        "{}",
        stderr(&out)
    );
}
