//! What the activator and shmctl tests share: an echo service that this test binary becomes
//! when re-executed (a service file's command), service files, clients.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shm_channel::event_loop::{Event, EventLoop};
use shm_channel::service::{ClientConfig, CredentialPolicy, Service, ServiceConfig};
use shm_channel::{Channel, Kind};

use crate::support::{CHILD_ENV, ChildGuard, unique_name};

pub const PROTOCOL: &str = "ActEcho";
pub const STEP: Duration = Duration::from_secs(10);
/// A message that makes the echo service exit with [`CRASH_STATUS`].
pub const CRASH: &[u8] = b"crash";
pub const CRASH_STATUS: i32 = 3;
/// The role of a re-executed test binary that serves echo.
pub const ECHO_ROLE: &str = "echo-service";
/// The role of a re-executed test binary that listens on the socket it gets as stdin.
pub const LISTENER_ROLE: &str = "listener";
/// The test function that plays the roles (a no-op in the parent).
pub const ROLE_TEST: &str = "child_roles";
const NAME_ENV: &str = "SHM_ACTIVATOR_TEST_NAME";
const STARTS_ENV: &str = "SHM_ACTIVATOR_TEST_STARTS";
/// A started service ends on its own after this long, so none outlives a crashed test run.
const SERVICE_LIFETIME: Duration = Duration::from_secs(60);

pub fn service_config(name_dir: Option<&Path>) -> ServiceConfig {
    // Root's clients too: the tests run services as uid 65534 for a root client.
    let config = ServiceConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(1 << 16, 1 << 16)
        .credentials(CredentialPolicy::same_uid().allow_uid(0));
    match name_dir {
        Some(d) => config.runtime_dir(d),
        None => config,
    }
}

pub fn client_config(dir: &Path) -> ClientConfig {
    ClientConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(1 << 16, 1 << 16)
        .runtime_dir(dir)
        .timeout(STEP)
}

/// Sends `data` as a request and returns the reply's object 0.
pub fn call(ch: &mut Channel, id: u64, data: &[u8]) -> Result<Vec<u8>, String> {
    ch.send_objects(id, Kind::Request, &[(0, data)], STEP)
        .map_err(|e| e.to_string())?;
    let reply = ch.recv_timeout(STEP).map_err(|e| e.to_string())?;
    Ok(reply.object(0).unwrap_or_default().to_vec())
}

/// Serves echo on `service` until `stop` returns true (checked every 50 ms); a message
/// equal to [`CRASH`] ends the process with [`CRASH_STATUS`] when `crash_exits`.
pub fn serve_echo(service: Service, crash_exits: bool, stop: impl Fn() -> bool) {
    let mut events = EventLoop::new(service).expect("event loop");
    while !stop() {
        match events.next_event(Duration::from_millis(50)) {
            Ok(Some(Event::Message { message, reply, .. })) => {
                let data = message.object(0).unwrap_or_default();
                if crash_exits && data == CRASH {
                    std::process::exit(CRASH_STATUS);
                }
                let _ = reply.send_objects(message.message_id(), Kind::Reply, &[(0, data)], STEP);
            }
            Ok(_) => {}
            Err(e) => eprintln!("echo service: {e}"),
        }
    }
}

/// In a re-executed child: plays its role and exits. Returns in the parent.
pub fn play_role() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    if role == LISTENER_ROLE {
        // Our stdin is a socket the parent bound: listening here makes the kernel record
        // this process (and its uid) as the listener clients see.
        rustix::net::listen(std::io::stdin(), 8).expect("listen");
        println!("listening");
        std::thread::sleep(SERVICE_LIFETIME);
        std::process::exit(0);
    }
    assert_eq!(role, ECHO_ROLE, "unknown role");
    let name = std::env::var(NAME_ENV).expect("name");
    // Count the start before anything can fail: the tests count processes started.
    let starts = std::env::var(STARTS_ENV).expect("starts file");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(starts)
        .expect("starts file");
    writeln!(f, "{}", std::process::id()).expect("write start");
    drop(f);
    // The activator set SHM_CHANNEL_RUNTIME_DIR: the default directory is the test's.
    let service = Service::bind(&name, service_config(None)).expect("bind");
    let born = Instant::now();
    serve_echo(service, true, || born.elapsed() > SERVICE_LIFETIME);
    std::process::exit(0);
}

/// A directory of service files, and where the echo services count their starts.
pub struct Services {
    pub dir: PathBuf,
}

impl Services {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("services"));
        std::fs::create_dir_all(&dir).expect("services dir");
        Services { dir }
    }

    /// Writes `<name>.toml` with `body` as is.
    pub fn write(&self, name: &str, body: &str) {
        std::fs::write(self.dir.join(format!("{name}.toml")), body).expect("service file");
    }

    /// The file of the starts of `name`.
    pub fn starts_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.starts"))
    }

    /// The pids the echo service `name` recorded, one per start.
    pub fn starts(&self, name: &str) -> Vec<u32> {
        std::fs::read_to_string(self.starts_file(name))
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().expect("pid"))
            .collect()
    }

    /// Writes a service file that starts this test binary as an echo service `name`,
    /// running as `uid`, with `extra` TOML lines (restart policy...).
    pub fn write_echo(&self, name: &str, uid: u32, extra: &str) {
        let exe = std::env::current_exe().expect("current_exe");
        let body = format!(
            "command = {exe:?}\n\
             args = [\"--exact\", \"{ROLE_TEST}\", \"--nocapture\", \"--test-threads=1\"]\n\
             uid = {uid}\n\
             protocol = \"{PROTOCOL}\"\n\
             start_timeout_ms = 10000\n\
             {extra}\n\
             [env]\n\
             {CHILD_ENV} = \"{ECHO_ROLE}\"\n\
             {NAME_ENV} = \"{name}\"\n\
             {STARTS_ENV} = {:?}\n",
            self.starts_file(name)
        );
        self.write(name, &body);
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Polls `activator`'s unit `name` every 10 ms until `f` holds for it; fails after the
/// watchdog, saying what the unit was.
pub fn wait_for_unit(
    activator: &shm_activator::Activator,
    name: &str,
    what: &str,
    mut f: impl FnMut(&shm_activator::UnitInfo) -> bool,
) {
    let deadline = Instant::now() + crate::support::WATCHDOG;
    loop {
        let unit = activator.unit(name);
        if unit.as_ref().is_some_and(&mut f) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the unit: {unit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every 10 ms until it is true; fails after the watchdog.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + crate::support::WATCHDOG;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Binds a Unix socket at `path` as this process (root), then has a child running as
/// `uid` make it listen: whoever connects sees that child's credentials. Root only.
pub fn listen_as(path: &Path, uid: u32) -> ChildGuard {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
    let sock = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).expect("socket");
    rustix::net::bind(&sock, &SocketAddrUnix::new(path).expect("address")).expect("bind");
    let mut child = ChildGuard::spawn_with(ROLE_TEST, LISTENER_ROLE, &[], |cmd| {
        use std::os::unix::process::CommandExt;
        cmd.stdin(std::process::Stdio::from(sock)).uid(uid).gid(uid);
    });
    child.wait_for_line("listening");
    child
}
