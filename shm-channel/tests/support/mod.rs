//! Helpers shared by the integration tests: child processes (the test binary
//! re-executing itself) with a watchdog, and unique names.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Tells a re-executed test binary which child role to play.
pub const CHILD_ENV: &str = "SHM_CHANNEL_TEST_CHILD";
/// How long a child may run before the parent kills it and fails.
pub const WATCHDOG: Duration = Duration::from_secs(20);

/// The role this process plays, when it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// A name no other test (of this or another process) uses.
pub fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("shm-channel-itest-{what}-{}-{n}", std::process::id())
}

/// A child process that is killed and reaped when dropped (a failed
/// assertion unwinds through here), so no test leaves a process behind.
/// Its stdout is drained by a thread for its whole life (a child may print
/// after the parent stopped listening without dying of EPIPE).
pub struct ChildGuard(Option<Child>, std::sync::mpsc::Receiver<String>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ChildGuard {
    /// Re-executes this test binary to run only `test`, as child `role`,
    /// with its stdout piped to the parent.
    pub fn spawn(test: &str, role: &str, env: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn test child");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader};
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l); // keep draining even when nobody listens
            }
        });
        ChildGuard(Some(child), rx)
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Waits until the child prints `line` on stdout (or fails after the
    /// watchdog).
    pub fn wait_for_line(&mut self, line: &str) {
        let rx = &self.1;
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // libtest may have printed "test name ... " on the same line.
                Ok(l) if l.trim_end().ends_with(line) => return,
                Ok(_) => continue,
                Err(e) => panic!("child never printed {line:?}: {e}"),
            }
        }
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill9(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("child gone");
        let _ = child.kill();
        child.wait().expect("wait")
    }

    /// Waits for the child to end, killing it and failing after the watchdog.
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("child already waited for");
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait();
                panic!("child did not end within {WATCHDOG:?}; killed it: {status:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Runs `f` on a thread and fails the test if it has not finished within
/// `limit` (a hang becomes a failure, not a stuck CI run).
pub fn with_watchdog<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(_) => {
            if handle.is_finished() {
                // The closure panicked: surface its panic.
                match handle.join() {
                    Err(p) => std::panic::resume_unwind(p),
                    Ok(()) => unreachable!("finished without sending"),
                }
            }
            panic!("watchdog: not finished within {limit:?}")
        }
    }
}
