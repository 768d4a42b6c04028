//! The examples, run as a user runs them (the display demo in its `--quick`
//! form): two real processes each, the typed stubs of `include_idl!`,
//! exit status 0 and the expected report.
//!
//! `cargo test` builds the examples next to the test binaries
//! (`target/<profile>/examples/`); this test runs the one it finds there.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: the quick run takes well under a second on an idle machine.
const WATCHDOG: Duration = Duration::from_secs(120);

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/run-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary sits in target/<profile>/deps");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test -p examples` (which builds the examples), \
         or `cargo build --example {name}` first",
        path.display()
    );
    path
}

/// Runs example `name` with `args` under a watchdog; its stdout, once it
/// exited successfully with nothing on stderr.
fn run(name: &str, args: &[&str]) -> String {
    let mut child = Command::new(example(name))
        .args(args)
        .stdin(Stdio::null())
        // No logs on stderr (the display demo prints them when asked).
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    // Read both pipes on threads, so a chatty child never blocks on them.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            // Its server notices the closed channel and exits by itself.
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} did not finish within {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");
    assert_eq!(err, "", "stderr of a successful run; stdout:\n{out}");
    out
}

#[test]
fn display_demo_runs_and_reports() {
    let out = run("display", &["--quick"]);
    for line in [
        "protocol Display version 2",
        "Remote(NoSuchSurface), as expected",
        "Remote(OutOfMemory(1073741824)), as expected",
        "TooLarge { size: ",
        "surface_lost event (no surface ",
        "calls per second",
        "round trip p50",
        "round trip p99",
        "frames: 8 x 3.0 MiB written in place, committed, vsync'd",
        "MiB/s",
        "client -> server       4.0 MiB (@buffer; 4.0 MiB)",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
}

/// The same demo over TCP (`--url`): the same calls, errors, frames and events
/// through the same generated stubs, the server process on `serve_url`.
#[test]
fn display_demo_runs_over_tcp() {
    let out = run("display", &["--url", "tcp://127.0.0.1:0", "--quick"]);
    for line in [
        "over tcp://127.0.0.1:",
        "protocol Display version 2",
        "Remote(NoSuchSurface), as expected",
        "Remote(OutOfMemory(1073741824)), as expected",
        // The network refuses what the ring would (the IDL's maximum, 4 MiB).
        "TooLarge { size: ",
        "max: 4194304 }",
        "surface_lost event (no surface ",
        "calls per second",
        "round trip p50",
        "frames: 8 x 3.0 MiB written in place, committed, vsync'd",
        "client -> server       4.0 MiB (@buffer; no ring: network)",
        // The client's net counters, at the end.
        "network counters (client):",
        "connections_opened   1",
        "dropped_refused ",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
}

#[test]
fn kv_example_runs() {
    let out = run("kv", &[]);
    for line in [
        "put color = green  -> replaced: true",
        "get color          -> green",
        "get weight         -> NotFound",
        "list               -> logo (16384 bytes)",
        "delete size again  -> NotFound",
        "event              -> size Deleted",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
}
