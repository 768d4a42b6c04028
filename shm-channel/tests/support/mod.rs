//! Helpers shared by the integration tests: child processes (the test binary
//! re-executing itself) with a watchdog, unique names, fd and CPU counts;
//! the checked messages of the echo tests (`echo`) and of the ring tests
//! (`ring`).

#![allow(dead_code, reason = "each test file uses a subset")]

pub mod echo;
pub mod ring;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tells a re-executed test binary which child role to play.
pub const CHILD_ENV: &str = "SHM_CHANNEL_TEST_CHILD";
/// How long a child may run before the parent kills it and fails.
pub const WATCHDOG: Duration = Duration::from_secs(20);

/// The role this process plays, when it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// In a child whose handlers panic on purpose: a panic whose message starts with
/// `marker` prints one line, not the default report with its backtrace, so that CI logs
/// show real failures first. Any other panic still gets the default report.
pub fn quiet_expected_panics(marker: &'static str) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        match message {
            Some(m) if m.starts_with(marker) => eprintln!("(an expected handler panic: {m})"),
            _ => default(info),
        }
    }));
}

/// Hand a child the runtime directory and the service name of its test, and
/// a number its role reads (a count, an index).
const DIR_ENV: &str = "SHM_CHANNEL_TEST_DIR";
const NAME_ENV: &str = "SHM_CHANNEL_TEST_NAME";
const NUMBER_ENV: &str = "SHM_CHANNEL_TEST_NUMBER";

/// The `env` of a `ChildGuard` that hands the child `dir`, `name` and
/// `number`.
pub fn service_env(dir: &Path, name: &str, number: u64) -> Vec<(&'static str, String)> {
    vec![
        (DIR_ENV, dir.display().to_string()),
        (NAME_ENV, name.to_owned()),
        (NUMBER_ENV, number.to_string()),
    ]
}

/// In a child: the runtime directory, service name and number that
/// `service_env` handed it.
pub fn child_service_env() -> (PathBuf, String, u64) {
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir env"));
    let name = std::env::var(NAME_ENV).expect("name env");
    let number = std::env::var(NUMBER_ENV)
        .expect("number env")
        .parse()
        .expect("number");
    (dir, name, number)
}

/// A name no other test (of this or another process) uses.
pub fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("shm-channel-itest-{what}-{}-{n}", std::process::id())
}

/// A fresh runtime directory path (created by `Service::bind`, mode 0700).
pub fn runtime_dir() -> PathBuf {
    std::env::temp_dir().join(unique_name("rt"))
}

/// Takes the lock of the tests that must run one after the other within
/// their test binary (those that count the fds of the process).
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// FNV-1a.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc").count()
}

/// Waits (up to the watchdog) for the fd count to come back to `before`:
/// threads that drain children's pipes close them a moment after the
/// children end.
pub fn assert_fds_back_to(before: usize) {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let now = fd_count();
        if now == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fds left behind: {before} before, {now} after"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time of the calling thread, from /proc (utime + stime, in ticks of
/// 10 ms on Linux).
pub fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc");
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A pid that belonged to a process that has exited and been reaped.
pub fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait for true");
    pid
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
        Self::spawn_with(test, role, env, |_| {})
    }

    /// `spawn`, with `configure` given the last word on the command (a uid,
    /// say).
    pub fn spawn_with(
        test: &str,
        role: &str,
        env: &[(&str, String)],
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        configure(&mut cmd);
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

    /// Whether the child is still running (has not exited).
    pub fn is_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
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
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // libtest may have printed "test name ... " on the same line.
                Ok(l) if l.trim_end().ends_with(line) => return,
                Ok(l) => seen.push(l),
                Err(e) => panic!("child never printed {line:?} ({e}); it printed {seen:?}"),
            }
        }
    }

    /// Waits until the child prints a line containing `prefix` and returns what follows it
    /// (or fails after the watchdog).
    pub fn wait_for_prefix(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WATCHDOG;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.1.recv_timeout(left) {
                Ok(l) => match l.split_once(prefix) {
                    Some((_, rest)) => return rest.trim_end().to_owned(),
                    None => seen.push(l),
                },
                Err(e) => panic!("child never printed {prefix:?} ({e}); it printed {seen:?}"),
            }
        }
    }

    /// The stdout lines the child printed since the last look, without waiting.
    pub fn lines_so_far(&mut self) -> Vec<String> {
        self.1.try_iter().collect()
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill9(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("child gone");
        let _ = child.kill();
        child.wait().expect("wait")
    }

    /// Sends SIGKILL, reaps the child and returns the stdout lines not consumed yet, up to
    /// the end of its output (all it printed before it died).
    pub fn kill9_with_output(mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.0.take().expect("child gone");
        let _ = child.kill();
        let status = child.wait().expect("wait");
        let deadline = Instant::now() + WATCHDOG;
        let mut rest = Vec::new();
        // The drain thread hangs up at the end of the pipe.
        while let Ok(l) = self
            .1
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            rest.push(l);
        }
        (status, rest)
    }

    /// Waits for the child to end, killing it and failing after the watchdog.
    pub fn wait(mut self) -> ExitStatus {
        self.wait_status()
    }

    /// `wait`, and the stdout lines not consumed yet.
    pub fn wait_with_output(mut self) -> (ExitStatus, Vec<String>) {
        let status = self.wait_status();
        // The drain thread ends at EOF; give it a moment to pass the last
        // lines on.
        let mut rest = Vec::new();
        while let Ok(l) = self.1.recv_timeout(Duration::from_millis(200)) {
            rest.push(l);
        }
        (status, rest)
    }

    fn wait_status(&mut self) -> ExitStatus {
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

/// Reads the counter `read` every 20 ms until it has stayed put for `quiet` (past its
/// first change from `start`), reached `enough`, or `limit` passed; its last value. For a
/// count that grows while something flows and stops when it is held back.
#[allow(dead_code, reason = "each test crate uses a subset")]
pub fn settled(
    mut read: impl FnMut() -> u64,
    start: u64,
    enough: u64,
    quiet: Duration,
    limit: Duration,
) -> u64 {
    let deadline = Instant::now() + limit;
    let (mut last, mut since) = (start, Instant::now());
    while Instant::now() < deadline && last < enough {
        std::thread::sleep(Duration::from_millis(20));
        let now = read();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if last > start && since.elapsed() >= quiet {
            break;
        }
    }
    last
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
        // The closure panicked (its sender went with it): surface its panic, even if
        // the thread has not quite finished yet.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("finished without sending"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: not finished within {limit:?}")
        }
    }
}

/// A service of `protocol` version 1 in `dir`, rings of at most `ring` bytes each way.
pub fn v1_service_config(protocol: &str, ring: u64, dir: &Path) -> shm_channel::ServiceConfig {
    shm_channel::ServiceConfig::new(protocol, 1..=1)
        .ring_sizes(ring, ring)
        .runtime_dir(dir)
}

/// A client of `protocol` version 1 in `dir`, rings of at most `ring` bytes each way,
/// giving up after `timeout`.
pub fn v1_client_config(
    protocol: &str,
    ring: u64,
    dir: &Path,
    timeout: Duration,
) -> shm_channel::ClientConfig {
    shm_channel::ClientConfig::new(protocol, 1..=1)
        .ring_sizes(ring, ring)
        .runtime_dir(dir)
        .timeout(timeout)
}
