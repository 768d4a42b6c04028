//! `shmctl` (the real binary) against live services: two services served by event loops on
//! threads of this process, clients with known traffic, and one service started by the
//! activator in another process. Checked through `--json`.

#[path = "../../shm-channel/tests/support/mod.rs"]
mod support;

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use shm_activator::{Activator, ActivatorConfig};
use shm_channel::service::{self, Service, ServiceConfig};

use common::{Services, call, client_config, euid, serve_echo, service_config};
use support::{runtime_dir, unique_name, with_watchdog};

/// Plays the child roles when re-executed (the activated echo service).
#[test]
fn child_roles() {
    common::play_role();
}

/// Runs shmctl with `args`; returns (success, stdout, stderr).
fn shmctl(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shmctl"))
        .arg("--runtime-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run shmctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = shmctl(dir, &all);
    assert!(ok, "shmctl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The channels `shmctl show NAME` lists.
fn channels(dir: &Path, name: &str) -> Vec<Value> {
    match json(dir, &["show", name])
        .get_mut("channels")
        .map(Value::take)
    {
        Some(Value::Array(all)) => all,
        other => panic!("no channel list: {other:?}"),
    }
}

#[test]
fn shmctl_lists_shows_and_pings_live_services() {
    with_watchdog(Duration::from_secs(60), || {
        let dir = runtime_dir();
        let (echo, other) = (unique_name("echo"), unique_name("other"));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (name, config) in [
            (echo.clone(), service_config(Some(&dir))),
            (
                other.clone(),
                ServiceConfig::new("Other", 1..=3)
                    .ring_sizes(1 << 20, 1 << 18)
                    .runtime_dir(&dir),
            ),
        ] {
            let service = Service::bind(&name, config).expect("bind");
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                serve_echo(service, false, || stop.load(Ordering::SeqCst));
            }));
        }
        // Two clients of the echo service: 3 and 5 calls.
        let config = client_config(&dir);
        let mut a = service::connect(&echo, &config).expect("connect a");
        let mut b = service::connect(&echo, &config).expect("connect b");
        for i in 0..3 {
            assert_eq!(call(&mut a, i, b"a").unwrap(), b"a");
        }
        for i in 0..5 {
            assert_eq!(call(&mut b, i, b"bb").unwrap(), b"bb");
        }
        // A service that is gone leaves a stale socket: not listed.
        drop(Service::bind(&unique_name("gone"), service_config(Some(&dir))).expect("bind"));
        std::os::unix::net::UnixListener::bind(dir.join(format!("{}.sock", unique_name("stale"))))
            .expect("stale socket");

        let me = std::process::id();
        let list = json(&dir, &["list"]);
        println!("{list:#}");
        let services = list["services"].as_array().expect("services");
        assert_eq!(services.len(), 2, "{list}");
        assert_eq!(list["errors"].as_array().unwrap().len(), 0, "{list}");
        let row = |name: &str| {
            services
                .iter()
                .find(|s| s["name"] == name)
                .unwrap_or_else(|| panic!("{name} not listed"))
        };
        let e = row(&echo);
        assert_eq!(e["protocol"], common::PROTOCOL);
        assert_eq!(e["versions"], serde_json::json!([1, 1]));
        assert_eq!(e["channels"], 2);
        assert_eq!(
            (e["pid"].as_u64(), e["uid"].as_u64()),
            (Some(me.into()), Some(euid().into()))
        );
        let o = row(&other);
        assert_eq!(
            (o["protocol"].as_str(), o["channels"].as_u64()),
            (Some("Other"), Some(0))
        );
        assert_eq!(o["versions"], serde_json::json!([1, 3]));

        let show = json(&dir, &["show", &echo]);
        println!("{show:#}");
        assert_eq!(show["live_channels"], 2);
        assert_eq!(show["ring_max"], serde_json::json!([65536, 65536]));
        let listed = show["channels"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        for (ch, calls) in [(&a, 3u64), (&b, 5u64)] {
            let c = listed
                .iter()
                .find(|c| c["id"] == ch.id().0)
                .expect("channel listed");
            assert_eq!(c["peer_pid"], me);
            assert_eq!(c["peer_uid"], euid());
            assert_eq!(c["messages_received"], calls);
            assert_eq!(c["messages_sent"], calls);
            for ring in ["client_to_server", "server_to_client"] {
                let r = &c[ring];
                assert_eq!(r["messages_written"], calls, "{ring}");
                assert_eq!(r["max_size"], 65536);
                let cap = r["capacity"].as_u64().unwrap();
                assert!((4096..=65536).contains(&cap), "{ring} capacity {cap}");
            }
            // Every call was answered and read: nothing queued either way.
            assert_eq!(c["client_to_server"]["pending_messages"], 0);
            assert_eq!(c["client_to_server"]["used_bytes"], 0);
            assert_eq!(c["server_to_client"]["messages_read"], calls);
            for side in ["service_reader", "client_reader"] {
                assert!(["parked", "polling"].contains(&c[side].as_str().unwrap()));
            }
        }
        // The idle service's event loop sleeps on both channels: parked, as the loop saw
        // them when the query woke it.
        common::wait_until("the service loop to park", || {
            channels(&dir, &echo)
                .iter()
                .all(|ch| ch["service_reader"] == "parked")
        });
        // A client parked in a receive shows as parked (its reader sleeps on the doorbell).
        let mut c = service::connect(&echo, &config).expect("connect c");
        let c_id = c.id().0;
        let sleeper = std::thread::spawn(move || {
            // Nothing comes: it wakes when the service ends (PeerDied).
            let r = c.recv_timeout(Duration::from_secs(30)).map(|_| ());
            assert_eq!(r, Err(shm_channel::ring::RecvError::PeerDied));
        });
        common::wait_until("the client to park", || {
            channels(&dir, &echo)
                .iter()
                .any(|ch| ch["id"] == c_id && ch["client_reader"] == "parked")
        });
        // A message left unread by the client shows as queued on the server-to-client ring.
        a.send_objects(
            99,
            shm_channel::Kind::Request,
            &[(0, b"unread")],
            common::STEP,
        )
        .unwrap();
        common::wait_until("the echo to be queued", || {
            let all = channels(&dir, &echo);
            let c = all.iter().find(|c| c["id"] == a.id().0).unwrap();
            c["server_to_client"]["pending_messages"] == 1
                && c["server_to_client"]["used_bytes"].as_u64().unwrap() > 0
        });
        // A closed channel leaves the list.
        drop(b);
        common::wait_until("the channel to go", || {
            json(&dir, &["show", &echo])["live_channels"] == 2
        });

        let ping = json(&dir, &["ping", &echo, "-c", "3"]);
        println!("{ping:#}");
        assert_eq!(ping["count"], 3);
        assert_eq!(ping["samples_us"].as_array().unwrap().len(), 3);
        assert_eq!(ping["pid"], me);
        let (min, avg, max) = (
            ping["min_us"].as_f64().unwrap(),
            ping["avg_us"].as_f64().unwrap(),
            ping["max_us"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= avg && avg <= max, "{ping}");

        // Text output for people.
        let (ok, text, _) = shmctl(&dir, &["list"]);
        assert!(
            ok && text.contains(&echo) && text.contains("CHANNELS"),
            "{text}"
        );
        println!("{text}");
        let (ok, text, _) = shmctl(&dir, &["show", &echo]);
        assert!(ok && text.contains("c->s"), "{text}");
        println!("{text}");
        // Errors: a clear message and exit status 1.
        let (ok, _, err) = shmctl(&dir, &["show", "not-running"]);
        assert!(
            !ok && err.contains("no service \"not-running\" is running"),
            "{err}"
        );

        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        sleeper.join().unwrap();
        drop(a);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn shmctl_sees_an_activated_service_in_its_own_process() {
    with_watchdog(Duration::from_secs(60), || {
        let (dir, services) = (runtime_dir(), Services::new());
        let name = unique_name("activated");
        services.write_echo(&name, euid(), "");
        let activator = Activator::start(ActivatorConfig::new(&dir, &services.dir)).unwrap();
        // Not running yet: nothing listed (the activator's own socket is not a service).
        assert_eq!(json(&dir, &["list"])["services"], serde_json::json!([]));
        let mut ch = service::connect(&name, &client_config(&dir)).expect("activated");
        assert_eq!(call(&mut ch, 1, b"x").unwrap(), b"x");
        let list = json(&dir, &["list"]);
        let row = &list["services"][0];
        assert_eq!(row["name"], name.as_str());
        assert_eq!(row["pid"], activator.unit(&name).unwrap().pid.unwrap());
        assert_ne!(row["pid"], std::process::id());
        assert_eq!(row["channels"], 1);
        let show = json(&dir, &["show", &name]);
        assert_eq!(show["channels"][0]["peer_pid"], std::process::id());
        drop(ch);
        drop(activator);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
