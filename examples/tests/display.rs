//! The display demo, run as a user runs it (its `--quick` form): two real
//! processes, the typed stubs of `include_idl!`, a report, exit status 0.
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
    // target/<profile>/deps/display-<hash> -> target/<profile>/examples/<name>
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

#[test]
fn display_demo_runs_and_reports() {
    let mut child = Command::new(example("display"))
        .arg("--quick")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the display example");
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            // Its server notices the closed channel and exits by itself.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the display example did not finish within {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");
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
        assert!(out.contains(line), "no `{line}` in:\n{out}\nstderr:\n{err}");
    }
    assert_eq!(err, "", "stderr of a successful run");
}
