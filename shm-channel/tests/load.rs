//! Load and soak (issue 9): 32 client processes make 100,000 two-way calls each against one
//! server (this process: a `Service`, an `EventLoop` and `rpc::serve_service` on one
//! thread). Every reply is checked (it must carry a value computed from its own call's
//! value), and the server's resident memory and fd count after the run must equal those
//! before it (memory within `RSS_BOUND`, fds exactly).
//!
//! - `SHM_LOAD_CLIENTS` / `SHM_LOAD_CALLS` change the shape (default 32 x 100,000);
//! - `SHM_SOAK_SECS=N` turns it into a soak: the clients call for N seconds each instead of
//!   a fixed count.
//!
//! It prints the calls, the time and the rate, and the server's memory and fds.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use shm_channel::event_loop::EventLoop;
use shm_channel::rpc::{self, Client, EventHub, Method, ServeEnd, ServeOptions};
use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
use support::{ChildGuard, child_role, child_service_env, fd_count, service_env, unique_name};

const PROTOCOL: &str = "LoadTest";
const STEP: Duration = Duration::from_secs(20);
const ECHO: Method = Method::new("echo", 1);
/// A client prints a progress line every this many calls (the parent's watchdog: a line
/// must come within 20 s).
const PROGRESS_EVERY: u64 = 1_000;
/// How much the server's resident memory may grow over the whole run: allocator caches and
/// the event loop's tables settle in the warm-up, so a real leak of even a few bytes per
/// call (3.2 million calls) exceeds it.
const RSS_BOUND: u64 = 8 << 20;
/// Mixed into each reply so an echo of the request would not pass.
const MAGIC: u64 = 0x9e37_79b9_7f4a_7c15;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}")))
}

fn client_config(dir: &Path) -> ClientConfig {
    ClientConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(1 << 16, 1 << 16)
        .runtime_dir(dir)
        .timeout(STEP)
}

/// The reply the server owes to a call carrying (client, seq, value).
fn expected(client: u64, seq: u64, value: u64) -> [u64; 3] {
    [client, seq, value.rotate_left(17) ^ MAGIC]
}

fn words(data: &[u8]) -> Option<[u64; 3]> {
    let w = |i: usize| {
        Some(u64::from_le_bytes(
            data.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    if data.len() != 24 {
        return None;
    }
    Some([w(0)?, w(1)?, w(2)?])
}

fn bytes_of(w: [u64; 3]) -> [u8; 24] {
    let mut out = [0u8; 24];
    for (i, v) in w.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Makes calls until `calls` are done (or, soaking, until `until`), checking every reply.
/// Returns the calls made.
fn run_client(
    client: &mut Client<shm_channel::Channel>,
    me: u64,
    calls: u64,
    until: Option<Instant>,
    mut progress: impl FnMut(u64),
) -> u64 {
    // A per-call value nobody can guess from the sequence number alone.
    let mut value = me.wrapping_mul(MAGIC) | 1;
    let mut seq = 0u64;
    loop {
        let more = match until {
            Some(t) => Instant::now() < t,
            None => seq < calls,
        };
        if !more {
            return seq;
        }
        value ^= value << 13;
        value ^= value >> 7;
        value ^= value << 17;
        let request = bytes_of([me, seq, value]);
        let reply = client
            .call(&ECHO, &[(0, &request)], STEP, |m| {
                m.object(0).and_then(words).ok_or_else(|| "no reply".into())
            })
            .unwrap_or_else(|e| panic!("client {me}: call {seq} failed: {e}"));
        assert_eq!(
            reply,
            expected(me, seq, value),
            "client {me}: wrong reply to call {seq}"
        );
        seq += 1;
        if seq.is_multiple_of(PROGRESS_EVERY) {
            progress(seq);
        }
    }
}

#[test]
fn load_child() {
    let Some(role) = child_role() else { return };
    assert_eq!(role, "client");
    let (dir, name, me) = child_service_env();
    let calls = env_u64("SHM_LOAD_CALLS", 100_000);
    let until = std::env::var("SHM_SOAK_SECS")
        .ok()
        .map(|s| Instant::now() + Duration::from_secs(s.parse().expect("SHM_SOAK_SECS")));
    let mut client = Client::new(service::connect(&name, &client_config(&dir)).expect("connect"));
    println!("connected");
    let done = run_client(&mut client, me, calls, until, |n| {
        println!("progress {}", n / PROGRESS_EVERY);
    });
    println!("done {done}");
}

/// Resident memory of this process, in bytes (`/proc/self/statm`, second field).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc");
    let pages: u64 = statm
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm");
    pages * 4096
}

#[test]
fn load_32_clients_x_100k_calls() {
    if child_role().is_some() {
        return;
    }
    let clients = env_u64("SHM_LOAD_CLIENTS", 32);
    let calls = env_u64("SHM_LOAD_CALLS", 100_000);
    let soak = std::env::var("SHM_SOAK_SECS").ok();
    let dir = std::env::temp_dir().join(unique_name("load-rt"));
    let name = unique_name("load");
    let config = ServiceConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(1 << 16, 1 << 16)
        .runtime_dir(&dir)
        .max_pending_handshakes(64);
    let service = Service::bind(&name, config).expect("bind");

    // The server: one thread, every client on it.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let hub = EventHub::new();
    let server = {
        let (stop, served, hub) = (Arc::clone(&stop), Arc::clone(&served), hub.clone());
        thread::spawn(move || {
            let mut event_loop = EventLoop::new(service).expect("event loop");
            let opts = ServeOptions {
                stop: Some(stop),
                ..ServeOptions::default()
            };
            rpc::serve_service(
                &mut event_loop,
                &hub,
                |req, resp| {
                    let Some([c, s, v]) = req.object(0).and_then(words) else {
                        return Err(rpc::HandlerError::Failed("bad request".into()));
                    };
                    served.fetch_add(1, Ordering::Relaxed);
                    resp.reply(&[(0, &bytes_of(expected(c, s, v)))])
                },
                &opts,
            )
        })
    };

    // Warm-up over a real connection, so the start figures include what the first
    // connection allocates once (tables, allocator arenas).
    {
        let mut warm = Client::new(service::connect(&name, &client_config(&dir)).expect("connect"));
        run_client(&mut warm, 1 << 40, 2_000, None, |_| {});
    }
    wait_until(|| hub.clients().is_empty(), "the warm-up client to be gone");
    let (rss_start, fds_start) = (rss(), fd_count());

    let started = Instant::now();
    let mut children: Vec<ChildGuard> = (0..clients)
        .map(|i| {
            let mut env = service_env(&dir, &name, i);
            env.push(("SHM_LOAD_CALLS", calls.to_string()));
            if let Some(s) = &soak {
                env.push(("SHM_SOAK_SECS", s.clone()));
            }
            ChildGuard::spawn("load_child", "client", &env)
        })
        .collect();
    let mut total = 0u64;
    for child in &mut children {
        child.wait_for_line("connected");
    }
    match &soak {
        // Each progress line must come within the watchdog: a stuck client fails the test.
        None => {
            for child in &mut children {
                for k in 1..=calls / PROGRESS_EVERY {
                    child.wait_for_line(&format!("progress {k}"));
                }
            }
        }
        Some(secs) => thread::sleep(Duration::from_secs(secs.parse().expect("SHM_SOAK_SECS"))),
    }
    for child in children {
        let (status, lines) = child.wait_with_output();
        assert!(status.success(), "a client failed: {status:?} {lines:?}");
        let done: u64 = lines
            .iter()
            .rev()
            .find_map(|l| l.trim_end().rsplit_once("done ").map(|(_, n)| n.to_owned()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no 'done' line in {lines:?}"));
        if soak.is_none() {
            assert_eq!(done, calls);
        }
        total += done;
    }
    let elapsed = started.elapsed();
    wait_until(|| hub.clients().is_empty(), "every client to be gone");
    assert_eq!(
        served.load(Ordering::Relaxed),
        total + 2_000,
        "the server served a different number of calls than the clients made"
    );
    // The server is idle now, every client gone: what it holds is what it keeps.
    wait_until(|| fd_count() == fds_start, "the server's fds to be back");
    let (rss_end, fds_end) = (rss(), fd_count());
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        server.join().expect("server").expect("serve"),
        ServeEnd::Stopped
    );
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "load: {clients} clients, {total} calls in {elapsed:.1?} ({:.0} calls/s); server RSS \
         {} KiB -> {} KiB, fds {fds_start} -> {fds_end}",
        total as f64 / elapsed.as_secs_f64(),
        rss_start >> 10,
        rss_end >> 10,
    );
    assert_eq!(fds_end, fds_start, "fds");
    assert!(
        rss_end <= rss_start + RSS_BOUND,
        "the server's RSS grew from {rss_start} to {rss_end} bytes (bound {RSS_BOUND})"
    );
}

/// Waits up to 20 s for `cond`.
fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}
