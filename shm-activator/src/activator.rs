//! The activator: answers clients' activation requests, starts services from their files
//! (once, however many clients ask at the same time), and restarts them per their policy.
//!
//! Each service name is a *unit* with a phase:
//!
//! ```text
//! Idle --(a client asks, nothing listens)--> Starting --(it listens)--> Running
//!   ^                                           |                         |
//!   |<-------(it failed: every waiter told)-----+                         | it exited
//!   |<------------------(policy says no restart, or too many)-------------+
//!                                       Backoff <-(policy: restart)-------+
//!                                          |--(delay over)--> Starting
//! ```
//!
//! A supervisor thread per started process owns the `Child`: it polls it (so it can also
//! kill it on shutdown), probes the service's socket with a control ping until it listens,
//! and applies the restart policy when it ends. Requests wait on a condition variable for
//! the phase to move.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shm_channel::activation::{
    ActivationAnswer, ActivationRequest, ActivatorListener, IncomingRequest, PreparedSocket,
    StartFailure,
};
use shm_channel::control::{self, ControlError};
use shm_channel::service::{
    Access, BindError, CredentialPolicy, LISTEN_STDIN_ENV, RUNTIME_DIR_ENV,
};
use tracing::{debug, info, warn};

use crate::service_file::{self, ServiceFile, ServiceFileError};

/// How often a supervisor looks at its child.
const POLL: Duration = Duration::from_millis(10);
/// How long a probe waits for a service's pong before taking "connected" as "listening".
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a client has to send its request once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests served at once; more are told the activator is busy.
const MAX_REQUESTS: usize = 256;

/// How an [`Activator`] is set up.
#[derive(Debug, Clone)]
pub struct ActivatorConfig {
    /// Where services (and the activator's socket) live.
    pub runtime_dir: PathBuf,
    /// Where the service files are.
    pub services_dir: PathBuf,
    /// Who may reach the activator's socket.
    pub access: Access,
    /// Who may ask for services.
    pub policy: CredentialPolicy,
    /// Whether started services' stdout and stderr go to the activator's (else nowhere).
    pub inherit_output: bool,
}

impl ActivatorConfig {
    /// Services from `services_dir`, bound in `runtime_dir`; same-uid clients; output
    /// inherited.
    pub fn new(runtime_dir: impl Into<PathBuf>, services_dir: impl Into<PathBuf>) -> Self {
        ActivatorConfig {
            runtime_dir: runtime_dir.into(),
            services_dir: services_dir.into(),
            access: Access::Owner,
            policy: CredentialPolicy::same_uid(),
            inherit_output: true,
        }
    }
}

/// Where a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Not started by us (it may still run, started by hand).
    Idle,
    /// Started, not listening yet.
    Starting,
    /// Listening.
    Running,
    /// Ended; waiting to be restarted.
    Backoff,
}

/// What the activator knows about one service, for tools and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnitInfo {
    /// Its phase.
    pub phase: Phase,
    /// Processes started for it so far.
    pub starts: u32,
    /// Of those, restarts by policy.
    pub restarts: u32,
    /// The pid of the process running now.
    pub pid: Option<u32>,
    /// How the last process ended: its exit code, or minus its signal.
    pub last_exit: Option<i32>,
    /// Why the last start failed, if one did (it stays after a later success).
    pub failure: Option<String>,
}

struct Unit {
    phase: Phase,
    /// Numbers the starts; a waiter is told the failure of its attempt or a later one.
    attempt: u64,
    failure: Option<(u64, StartFailure)>,
    starts: u32,
    restarts: u32,
    /// Restarts since a client last asked (what `max_restarts` limits).
    restarts_in_row: u32,
    pid: Option<u32>,
    last_exit: Option<i32>,
}

impl Unit {
    fn new() -> Self {
        Unit {
            phase: Phase::Idle,
            attempt: 0,
            failure: None,
            starts: 0,
            restarts: 0,
            restarts_in_row: 0,
            pid: None,
            last_exit: None,
        }
    }
}

struct Inner {
    config: ActivatorConfig,
    units: Mutex<HashMap<String, Unit>>,
    changed: Condvar,
    stop: AtomicBool,
    requests: AtomicUsize,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

/// A running activator: its socket and the services it started. Dropping it (or
/// [`shutdown`](Self::shutdown)) stops answering and kills the services it started.
pub struct Activator {
    inner: Arc<Inner>,
    acceptor: Option<JoinHandle<()>>,
    socket: PathBuf,
}

impl std::fmt::Debug for Activator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activator")
            .field("socket", &self.socket)
            .field("services_dir", &self.inner.config.services_dir)
            .finish_non_exhaustive()
    }
}

impl Activator {
    /// Binds the activator's socket in the runtime directory and starts answering on a
    /// thread of this process.
    pub fn start(config: ActivatorConfig) -> Result<Activator, BindError> {
        let listener =
            ActivatorListener::bind(&config.runtime_dir, config.access, config.policy.clone())?;
        let socket = listener.path().to_owned();
        info!(socket = %socket.display(), services = %config.services_dir.display(), "activator listening");
        let inner = Arc::new(Inner {
            config,
            units: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            supervisors: Mutex::new(Vec::new()),
        });
        let acceptor = std::thread::Builder::new()
            .name("shm-activator".into())
            .spawn({
                let inner = Arc::clone(&inner);
                move || accept_loop(&inner, &listener)
            })
            .map_err(|source| BindError::Io {
                op: "spawn the activator thread",
                path: socket.clone(),
                source,
            })?;
        Ok(Activator {
            inner,
            acceptor: Some(acceptor),
            socket,
        })
    }

    /// The activator's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the activator knows about `name` (`None`: no client asked for it yet).
    pub fn unit(&self, name: &str) -> Option<UnitInfo> {
        let units = self.inner.lock();
        units.get(name).map(|u| UnitInfo {
            phase: u.phase,
            starts: u.starts,
            restarts: u.restarts,
            pid: u.pid,
            last_exit: u.last_exit,
            failure: u.failure.as_ref().map(|(_, f)| f.to_string()),
        })
    }

    /// Every unit, by name.
    pub fn units(&self) -> Vec<(String, UnitInfo)> {
        let mut names: Vec<String> = self.inner.lock().keys().cloned().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.unit(&n).map(|u| (n, u)))
            .collect()
    }

    /// Stops answering, kills the services it started and waits for its threads.
    pub fn shutdown(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.changed.notify_all();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let supervisors = std::mem::take(
            &mut *self
                .inner
                .supervisors
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for s in supervisors {
            let _ = s.join();
        }
    }

    /// Serves until `stop` is set (the daemon's main loop).
    pub fn wait_for(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) && !self.inner.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Unit>> {
        // A panic elsewhere leaves the map consistent (every update is a few assignments).
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn accept_loop(inner: &Arc<Inner>, listener: &ActivatorListener) {
    while !inner.stopping() {
        let incoming = match listener.accept_timeout(Duration::from_millis(100)) {
            Ok(Some(i)) => i,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "accepting on the activator socket failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if inner.requests.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS {
            inner.requests.fetch_sub(1, Ordering::SeqCst);
            busy(incoming);
            continue;
        }
        let worker = Arc::clone(inner);
        let spawned = std::thread::Builder::new()
            .name("shm-activator-request".into())
            .spawn(move || {
                serve(&worker, incoming);
                worker.requests.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            inner.requests.fetch_sub(1, Ordering::SeqCst);
            warn!(error = %e, "cannot spawn a request thread");
        }
    }
}

fn busy(incoming: IncomingRequest) {
    if let Ok(req) = incoming.read(Duration::from_millis(100)) {
        let _ = req.answer(&ActivationAnswer::Failed(StartFailure::CannotStart(
            "the activator is busy (too many requests at once); try again".into(),
        )));
    }
}

fn serve(inner: &Arc<Inner>, incoming: IncomingRequest) {
    let peer = *incoming.peer();
    let req = match incoming.read(REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            debug!(%peer, error = %e, "unreadable activation request");
            return;
        }
    };
    let answer = resolve(inner, &req);
    debug!(name = req.name(), %peer, ?answer, "activation request answered");
    if let Err(e) = req.answer(&answer) {
        debug!(error = %e, "the client left before its answer");
    }
}

/// Decides the answer to one request, starting the service if needed.
fn resolve(inner: &Arc<Inner>, req: &ActivationRequest) -> ActivationAnswer {
    let name = req.name();
    let file = match service_file::load(&inner.config.services_dir, name) {
        Ok(f) => f,
        Err(ServiceFileError::Missing { .. } | ServiceFileError::InvalidName { .. }) => {
            return ActivationAnswer::Unknown;
        }
        Err(e) => {
            warn!(name, error = %e, "unusable service file");
            return ActivationAnswer::Failed(StartFailure::CannotStart(e.to_string()));
        }
    };
    let deadline = Instant::now().checked_add(req.wait());
    let mut mine: Option<u64> = None;
    let mut units = inner.lock();
    loop {
        if inner.stopping() {
            return ActivationAnswer::Failed(StartFailure::CannotStart(
                "the activator is shutting down".into(),
            ));
        }
        let unit = units.entry(name.to_owned()).or_insert_with(Unit::new);
        if let (Some(m), Some((a, f))) = (mine, &unit.failure)
            && *a >= m
        {
            return ActivationAnswer::Failed(f.clone());
        }
        match unit.phase {
            Phase::Running => {
                return ActivationAnswer::Ready {
                    uid: file.uid,
                    pid: unit.pid,
                };
            }
            Phase::Starting | Phase::Backoff => {
                mine.get_or_insert(unit.attempt);
            }
            Phase::Idle => {
                // Something may listen already: started by hand, or an impostor (the client
                // checks the uid either way). Probe without the lock.
                drop(units);
                if listening(&inner.config.runtime_dir, name) {
                    return ActivationAnswer::Ready {
                        uid: file.uid,
                        pid: None,
                    };
                }
                units = inner.lock();
                let unit = units.entry(name.to_owned()).or_insert_with(Unit::new);
                if unit.phase == Phase::Idle {
                    unit.attempt += 1;
                    unit.phase = Phase::Starting;
                    unit.restarts_in_row = 0;
                    mine = Some(unit.attempt);
                    if let Err(e) = spawn_supervisor(inner, name, &file, unit.attempt) {
                        warn!(name, error = %e, "cannot spawn a supervisor thread");
                        unit.phase = Phase::Idle;
                        let failure = StartFailure::CannotStart(format!(
                            "the activator cannot spawn a thread: {e}"
                        ));
                        unit.failure = Some((unit.attempt, failure));
                    }
                }
                continue;
            }
        }
        if req.client_gone() {
            return ActivationAnswer::Failed(StartFailure::CannotStart("the client left".into()));
        }
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // The client gives up at the same moment; it reports its own timeout.
                    return ActivationAnswer::Failed(StartFailure::DidNotBind(req.wait()));
                }
                left.min(Duration::from_millis(100))
            }
            None => Duration::from_millis(100),
        };
        units = inner
            .changed
            .wait_timeout(units, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Whether something listens under `name` (a control ping answered, or at least a
/// connection taken).
fn listening(dir: &Path, name: &str) -> bool {
    !matches!(
        control::ping(dir, name, PROBE_TIMEOUT),
        Err(ControlError::NotRunning { .. } | ControlError::InvalidName { .. })
    )
}

/// Starts the thread that runs attempt `attempt` of `name` (called with the units locked).
fn spawn_supervisor(
    inner: &Arc<Inner>,
    name: &str,
    file: &ServiceFile,
    attempt: u64,
) -> io::Result<()> {
    let worker = Arc::clone(inner);
    let (owned, file) = (name.to_owned(), file.clone());
    let handle = std::thread::Builder::new()
        .name(format!("supervise-{name}"))
        .spawn(move || supervise(&worker, &owned, &file, attempt))?;
    let mut supervisors = inner.supervisors.lock().unwrap_or_else(|p| p.into_inner());
    supervisors.retain(|h| !h.is_finished());
    supervisors.push(handle);
    Ok(())
}

/// The exit status as one number: the code, or minus the signal.
fn exit_number(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| -status.signal().unwrap_or(0))
}

/// Runs a service: start, wait until it listens, watch it, restart it per its policy.
fn supervise(inner: &Arc<Inner>, name: &str, file: &ServiceFile, mut attempt: u64) {
    let set = |f: &mut dyn FnMut(&mut Unit)| {
        let mut units = inner.lock();
        if let Some(u) = units.get_mut(name) {
            f(u);
        }
        drop(units);
        inner.changed.notify_all();
    };
    let fail = |attempt: u64, failure: StartFailure| {
        warn!(name, ?failure, "activation failed");
        set(&mut |u: &mut Unit| {
            u.phase = Phase::Idle;
            u.pid = None;
            u.failure = Some((attempt, failure.clone()));
        });
    };
    // The socket bound for a service of another uid: kept (and the name held) for as long
    // as this supervises it, rebound for each start.
    let mut socket = None;
    loop {
        let mut child = match spawn(inner, name, file, &mut socket) {
            Ok(c) => c,
            Err(failure) => return fail(attempt, failure),
        };
        let pid = child.id();
        info!(name, pid, attempt, "service started");
        set(&mut |u: &mut Unit| {
            u.starts += 1;
            u.pid = Some(pid);
        });
        // Until it listens.
        let deadline = Instant::now() + file.start_timeout();
        let bound = loop {
            if inner.stopping() {
                return stop_child(&mut child);
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    let n = exit_number(status);
                    set(&mut |u: &mut Unit| u.last_exit = Some(n));
                    break Err(StartFailure::Exited(n));
                }
                Ok(None) => {}
                Err(e) => warn!(name, error = %e, "waiting for the service failed"),
            }
            if listening(&inner.config.runtime_dir, name) {
                break Ok(());
            }
            if Instant::now() >= deadline {
                stop_child(&mut child);
                break Err(StartFailure::DidNotBind(file.start_timeout()));
            }
            std::thread::sleep(POLL);
        };
        if let Err(failure) = bound {
            return fail(attempt, failure);
        }
        info!(name, pid, "service listening");
        set(&mut |u: &mut Unit| u.phase = Phase::Running);
        // Until it ends.
        let status = loop {
            if inner.stopping() {
                return stop_child(&mut child);
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => {
                    warn!(name, error = %e, "waiting for the service failed");
                    std::thread::sleep(POLL);
                }
            }
        };
        let n = exit_number(status);
        let mut restart_no = None;
        set(&mut |u: &mut Unit| {
            u.last_exit = Some(n);
            u.pid = None;
            if file.restarts_after(status.success()) && u.restarts_in_row < file.max_restarts {
                u.restarts_in_row += 1;
                u.restarts += 1;
                u.phase = Phase::Backoff;
                restart_no = Some(u.restarts_in_row);
            } else {
                u.phase = Phase::Idle;
            }
        });
        let Some(n_restart) = restart_no else {
            info!(
                name,
                status = n,
                "service ended; not restarting (policy {:?})",
                file.restart
            );
            return;
        };
        let delay = file.backoff(n_restart);
        warn!(
            name,
            status = n,
            ?delay,
            restart = n_restart,
            "service ended; restarting"
        );
        // Sleep, but wake for a shutdown.
        let until = Instant::now() + delay;
        let mut units = inner.lock();
        while !inner.stopping() && Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            units = inner
                .changed
                .wait_timeout(units, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if inner.stopping() {
            return;
        }
        let Some(u) = units.get_mut(name) else { return };
        u.attempt += 1;
        u.phase = Phase::Starting;
        attempt = u.attempt;
        drop(units);
        inner.changed.notify_all();
    }
}

/// Starts the service's command as its uid. For another uid than ours, binds its socket
/// first (in `socket`, or again there for a restart) and passes it as stdin
/// (`PreparedSocket`): the service may not be able to enter our runtime directory, and it
/// must be the one listening.
fn spawn(
    inner: &Inner,
    name: &str,
    file: &ServiceFile,
    socket: &mut Option<PreparedSocket>,
) -> Result<Child, StartFailure> {
    let mut cmd = Command::new(&file.command);
    cmd.args(&file.args)
        .envs(&file.env)
        .env(RUNTIME_DIR_ENV, &inner.config.runtime_dir)
        .stdin(Stdio::null());
    if !inner.config.inherit_output {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let me = rustix::process::geteuid().as_raw();
    if file.uid != me {
        if me != 0 {
            return Err(StartFailure::CannotStart(format!(
                "the service must run as uid {}, and the activator (uid {me}) is not root",
                file.uid
            )));
        }
        let gid = file
            .gid
            .or_else(|| service_file::primary_gid(file.uid))
            .unwrap_or(file.uid);
        // As root, std drops the supplementary groups before setuid.
        cmd.uid(file.uid).gid(gid);
        let cannot =
            |e: BindError| StartFailure::CannotStart(format!("cannot bind its socket: {e}"));
        let prepared = match socket {
            Some(s) => {
                s.rebind().map_err(cannot)?;
                s
            }
            None => socket.insert(
                PreparedSocket::bind(&inner.config.runtime_dir, name, inner.config.access)
                    .map_err(cannot)?,
            ),
        };
        if let Some(stdin) = prepared.take_stdin() {
            cmd.stdin(stdin).env(LISTEN_STDIN_ENV, name);
        }
    }
    // Its own process group: stopping it stops whatever it started too (a shell wrapper's
    // children), and a Ctrl-C meant for the activator does not reach it directly.
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => StartFailure::CommandMissing(format!("{}: {e}", file.command)),
        io::ErrorKind::PermissionDenied => {
            StartFailure::CommandMissing(format!("{}: not executable: {e}", file.command))
        }
        _ => StartFailure::CannotStart(format!("starting {} failed: {e}", file.command)),
    })?;
    Ok(child)
}

/// Kills the service's process group (it leads it; not reaped yet, so the group id is still
/// its own), then reaps it.
fn stop_child(child: &mut Child) {
    let group = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pgid) = group {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}
