//! Activation between real processes: an in-process activator starts this test binary
//! (re-executed as an echo service) from service files; clients connect through
//! `shm_channel::connect`. Every test has its own runtime and services directories and a
//! watchdog.

#[path = "../../shm-channel/tests/support/mod.rs"]
mod support;

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use shm_activator::{Activator, ActivatorConfig, Phase};
use shm_channel::activation::ActivationError;
use shm_channel::ring::RecvError;
use shm_channel::service::{self, ConnectError, CredentialPolicy, Service};

use common::{
    CRASH, CRASH_STATUS, Services, call, client_config, euid, listen_as, service_config,
    wait_for_unit, wait_until,
};
use support::{runtime_dir, unique_name, with_watchdog};

const LIMIT: Duration = Duration::from_secs(60);

/// Plays the child roles when re-executed (the echo service of the service files).
#[test]
fn child_roles() {
    common::play_role();
}

fn activator(dir: &std::path::Path, services: &Services) -> Activator {
    Activator::start(ActivatorConfig::new(dir, &services.dir)).expect("activator")
}

#[test]
fn eight_concurrent_clients_start_the_service_once() {
    with_watchdog(LIMIT, || {
        let (dir, services) = (runtime_dir(), Services::new());
        let name = unique_name("once");
        services.write_echo(&name, euid(), "");
        let activator = activator(&dir, &services);
        assert!(
            std::fs::metadata(dir.join(format!("{name}.sock"))).is_err(),
            "not running before the first client"
        );

        const CLIENTS: usize = 8;
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (dir, name, barrier) = (dir.clone(), name.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut ch = service::connect(&name, &client_config(&dir))
                        .unwrap_or_else(|e| panic!("client {i}: {e}"));
                    let msg = format!("hello from {i}");
                    let reply = call(&mut ch, 1, msg.as_bytes()).expect("call");
                    assert_eq!(reply, msg.as_bytes());
                    ch.peer().pid
                })
            })
            .collect();
        let pids: Vec<u32> = clients.into_iter().map(|c| c.join().unwrap()).collect();

        let starts = services.starts(&name);
        assert_eq!(
            starts.len(),
            1,
            "started {} times: {starts:?}",
            starts.len()
        );
        assert!(
            pids.iter().all(|&p| p == starts[0]),
            "{pids:?} vs {starts:?}"
        );
        let unit = activator.unit(&name).expect("unit");
        assert_eq!((unit.starts, unit.phase), (1, Phase::Running));
        assert_eq!(unit.pid, Some(starts[0]));
        drop(activator);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn start_failures_each_say_what_happened() {
    with_watchdog(LIMIT, || {
        let (dir, services) = (runtime_dir(), Services::new());
        services.write(
            "missing",
            "command = \"/nonexistent/shm-channel-test-service\"\nuid = 0",
        );
        services.write(
            "quits",
            "command = \"/bin/sh\"\nargs = [\"-c\", \"exit 7\"]\nuid = 0",
        );
        services.write(
            "silent",
            "command = \"/bin/sleep\"\nargs = [\"30\"]\nuid = 0\nstart_timeout_ms = 1000",
        );
        // uid 0 above is a placeholder: each file gets this process's uid.
        for name in ["missing", "quits", "silent"] {
            let path = services.dir.join(format!("{name}.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replace("uid = 0", &format!("uid = {}", euid()))).unwrap();
        }
        let activator = activator(&dir, &services);
        // The client would wait 5 s; each failure comes from the activator well before.
        let config = client_config(&dir).timeout(Duration::from_secs(5));
        let err = |name: &str| match service::connect(name, &config) {
            Ok(_) => panic!("{name} connected"),
            Err(ConnectError::Activation(e)) => {
                println!("{name}: {e}");
                e
            }
            Err(e) => panic!("{name}: not an activation error: {e}"),
        };

        let e = err("missing");
        assert!(
            matches!(&e, ActivationError::CommandMissing { detail, .. }
                if detail.contains("/nonexistent/shm-channel-test-service")),
            "{e:?}"
        );
        let e = err("quits");
        assert!(
            matches!(e, ActivationError::Exited { status: 7, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("exited with status 7"), "{e}");
        let e = err("silent");
        assert!(
            matches!(e, ActivationError::DidNotBind { waited, .. } if waited == Duration::from_secs(1)),
            "{e:?}"
        );
        assert_eq!(activator.unit("silent").unwrap().phase, Phase::Idle);
        let e = err("no-such-service");
        assert!(matches!(e, ActivationError::NoServiceFile { .. }), "{e:?}");
        // Without an activator the same name is just not running.
        drop(activator);
        assert!(matches!(
            service::connect("no-such-service", &config),
            Err(ConnectError::NotRunning { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A client's channel ends when its service crashes; waits for `PeerDied`.
fn crash(ch: &mut shm_channel::Channel) {
    ch.send_objects(9, shm_channel::Kind::Request, &[(0, CRASH)], common::STEP)
        .expect("send crash");
    match ch.recv_timeout(common::STEP) {
        Err(RecvError::PeerDied) => {}
        other => panic!("expected PeerDied, got {other:?}"),
    }
}

#[test]
fn a_crashed_service_is_restarted_per_its_policy() {
    with_watchdog(LIMIT, || {
        let (dir, services) = (runtime_dir(), Services::new());
        let again = unique_name("again");
        let once = unique_name("once");
        services.write_echo(
            &again,
            euid(),
            "restart = \"on-failure\"\nmax_restarts = 2\nrestart_backoff_ms = 50",
        );
        services.write_echo(&once, euid(), "restart = \"never\"");
        let activator = activator(&dir, &services);
        let config = client_config(&dir);

        // on-failure: restarted without any client asking.
        let mut ch = service::connect(&again, &config).expect("connect");
        assert_eq!(call(&mut ch, 1, b"one").unwrap(), b"one");
        let first = ch.peer().pid;
        crash(&mut ch);
        wait_for_unit(&activator, &again, "the restart", |u| {
            u.starts == 2 && u.phase == Phase::Running
        });
        let unit = activator.unit(&again).unwrap();
        assert_eq!((unit.restarts, unit.last_exit), (1, Some(CRASH_STATUS)));
        let mut ch = service::connect(&again, &config).expect("reconnect");
        assert_eq!(call(&mut ch, 2, b"two").unwrap(), b"two");
        assert_ne!(ch.peer().pid, first, "a new process");
        assert_eq!(services.starts(&again).len(), 2);
        // The second restart is the last one (max_restarts = 2): after the third crash it
        // stays down.
        crash(&mut ch);
        wait_until("the second restart", || {
            activator
                .unit(&again)
                .is_some_and(|u| u.starts == 3 && u.phase == Phase::Running)
        });
        let mut ch = service::connect(&again, &config).expect("reconnect");
        crash(&mut ch);
        wait_until("the last exit", || {
            activator
                .unit(&again)
                .is_some_and(|u| u.phase == Phase::Idle && u.pid.is_none())
        });
        let unit = activator.unit(&again).unwrap();
        assert_eq!((unit.starts, unit.restarts), (3, 2));
        assert_eq!(services.starts(&again).len(), 3);

        // never: it stays down until a client asks again.
        let mut ch = service::connect(&once, &config).expect("connect");
        crash(&mut ch);
        wait_until("the exit to be seen", || {
            activator
                .unit(&once)
                .is_some_and(|u| u.phase == Phase::Idle && u.last_exit == Some(CRASH_STATUS))
        });
        assert_eq!(activator.unit(&once).unwrap().starts, 1, "not restarted");
        assert_eq!(services.starts(&once).len(), 1);
        let mut ch = service::connect(&once, &config).expect("activated again");
        assert_eq!(call(&mut ch, 3, b"three").unwrap(), b"three");
        assert_eq!(activator.unit(&once).unwrap().starts, 2);
        drop(activator);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A service of this uid binds a name whose file says another uid: the client, which would
/// trust its own uid, refuses it because the file decides.
#[test]
fn a_listener_of_the_wrong_uid_is_refused_even_when_trusted() {
    with_watchdog(LIMIT, || {
        let (dir, services) = (runtime_dir(), Services::new());
        let name = unique_name("wrong-uid");
        let file_uid = if euid() == 65534 { 65533 } else { 65534 };
        services.write_echo(&name, file_uid, "");
        let _impostor = Service::bind(&name, service_config(Some(&dir))).expect("bind");
        let activator = activator(&dir, &services);
        let config = client_config(&dir).trust(CredentialPolicy::same_uid());
        match service::connect(&name, &config) {
            Err(ConnectError::Impostor {
                expected, actual, ..
            }) => {
                assert_eq!(actual.uid, euid());
                assert!(expected.contains(&format!("uid {file_uid}")), "{expected}");
                assert!(expected.contains("service file"), "{expected}");
            }
            other => panic!("expected Impostor, got {other:?}"),
        }
        // Nothing was started: something listens under the name.
        assert_eq!(activator.unit(&name).unwrap().starts, 0);
        drop(activator);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Skips (with a message) unless root: only root can run a process as another uid.
fn root_or_skip(test: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    println!(
        "SKIPPED {test}: needs root to run a process as another uid (running as uid {})",
        euid()
    );
    false
}

/// Root's service file names uid 0; an impostor running as uid 65534 listens under the name
/// first. The client trusts 65534 as well, yet refuses it: the file's uid decides.
#[test]
fn an_impostor_of_another_uid_is_refused() {
    if !root_or_skip("an_impostor_of_another_uid_is_refused") {
        return;
    }
    with_watchdog(LIMIT, || {
        let (dir, services) = (runtime_dir(), Services::new());
        let name = unique_name("impostor");
        services.write_echo(&name, 0, "");
        let activator = activator(&dir, &services);
        // Bound by root in root's 0700 directory, made to listen by a child of uid 65534.
        let impostor = listen_as(&dir.join(format!("{name}.sock")), 65534);

        let config = client_config(&dir).trust(CredentialPolicy::same_uid().allow_uid(65534));
        match service::connect(&name, &config) {
            Err(ConnectError::Impostor {
                expected, actual, ..
            }) => {
                assert_eq!(actual.uid, 65534);
                assert_eq!(actual.pid, impostor.id());
                assert!(
                    expected.contains("uid 0 (from the service file"),
                    "{expected}"
                );
                println!("refused: uid {} listening, {expected} expected", actual.uid);
            }
            other => panic!("expected Impostor, got {other:?}"),
        }
        assert_eq!(activator.unit(&name).unwrap().starts, 0, "nothing started");
        drop(impostor);
        drop(activator);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Root's activator starts a service whose file says uid 65534: the service runs as 65534
/// though it cannot even enter root's runtime directory (the activator binds its socket and
/// passes it as stdin), clients accept it because the file says so, and a restart binds a
/// fresh socket.
#[test]
fn a_service_runs_as_the_uid_of_its_file() {
    if !root_or_skip("a_service_runs_as_the_uid_of_its_file") {
        return;
    }
    with_watchdog(LIMIT, || {
        use std::os::unix::fs::PermissionsExt;
        let (dir, services) = (runtime_dir(), Services::new());
        let name = unique_name("as-nobody");
        services.write_echo(
            &name,
            65534,
            "restart = \"on-failure\"\nrestart_backoff_ms = 50",
        );
        // The service (uid 65534) records its starts here.
        let starts = services.starts_file(&name);
        std::fs::write(&starts, "").unwrap();
        std::fs::set_permissions(&starts, std::fs::Permissions::from_mode(0o666)).unwrap();
        let activator = activator(&dir, &services);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "root's runtime directory, closed to uid 65534");

        // The default trust (same uid or root) does not list 65534: the file does.
        let config = client_config(&dir);
        let mut ch = service::connect(&name, &config).expect("connect");
        assert_eq!(call(&mut ch, 1, b"one").unwrap(), b"one");
        assert_eq!(ch.peer().uid, 65534);
        assert_eq!(services.starts(&name), [ch.peer().pid]);

        crash(&mut ch);
        wait_for_unit(&activator, &name, "the restart", |u| {
            u.starts == 2 && u.phase == Phase::Running
        });
        let mut ch = service::connect(&name, &config).expect("reconnect");
        assert_eq!(call(&mut ch, 2, b"two").unwrap(), b"two");
        assert_eq!(ch.peer().uid, 65534);
        assert_eq!(services.starts(&name).len(), 2);
        drop(ch);
        drop(activator);
        // The activator removed the socket it bound.
        assert!(!dir.join(format!("{name}.sock")).exists());
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A process of another uid listening at the activator's socket is not asked anything: the
/// client checks the activator against its trust policy first.
#[test]
fn an_activator_of_another_uid_is_not_believed() {
    if !root_or_skip("an_activator_of_another_uid_is_not_believed") {
        return;
    }
    with_watchdog(LIMIT, || {
        let dir = runtime_dir();
        std::fs::create_dir(&dir).expect("runtime dir");
        let fake = listen_as(&dir.join(".activator.sock"), 65534);
        match service::connect("anything", &client_config(&dir)) {
            Err(ConnectError::Activation(ActivationError::UntrustedActivator {
                actual, ..
            })) => {
                assert_eq!((actual.uid, actual.pid), (65534, fake.id()));
            }
            other => panic!("expected UntrustedActivator, got {other:?}"),
        }
        // Without activation, the client does not look for an activator at all.
        assert!(matches!(
            service::connect("anything", &client_config(&dir).activation(false)),
            Err(ConnectError::NotRunning { .. })
        ));
        drop(fake);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
