//! Channels under load between two real processes: 100,000 messages of
//! random sizes from 1 byte to 1 MiB echoed with checksums, the server
//! echoing zero-copy from its receive ring into its send ring, both sides
//! blocking (spin, then park) rather than polling.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shm_channel::ring::RecvError;
use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
use shm_channel::{Channel, Kind};
use support::{ChildGuard, child_role, unique_name, with_watchdog};

const PROTOCOL: &str = "BigEcho";
/// Messages of the big echo.
const MESSAGES: u64 = 100_000;
/// Largest payload.
const MAX_PAYLOAD: usize = 1 << 20;
/// Messages the client keeps in flight. The rings hold a window of the
/// largest messages both ways, so neither side can block the other.
const WINDOW: u64 = 8;
const RING: u64 = 16 << 20;
const STEP: Duration = Duration::from_secs(30);
const DIR_ENV: &str = "SHM_CHANNEL_BIG_ECHO_DIR";
const NAME_ENV: &str = "SHM_CHANNEL_BIG_ECHO_NAME";

/// Payload bytes: one buffer, messages are slices of it at varying offsets.
fn source() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..2 * MAX_PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The payload of message `seq`: log-uniform length in 1 ..= 1 MiB, so
/// small and large messages both come often.
fn payload(src: &[u8], seq: u64) -> &[u8] {
    let h = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    let exp = (h % 20_001) as f64 / 1000.0; // 0.0 ..= 20.0
    let len = (2f64.powf(exp) as usize).clamp(1, MAX_PAYLOAD);
    let start = (h as usize / 7) % MAX_PAYLOAD;
    &src[start..start + len]
}

/// A checksum over 8-byte words (fast enough for gigabytes in a test).
fn checksum(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    let mut h = data.len() as u64;
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap()))
            .wrapping_mul(0x100_0000_01b3)
            .rotate_left(17);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn dir_and_name() -> (PathBuf, String) {
    (
        PathBuf::from(std::env::var(DIR_ENV).unwrap()),
        std::env::var(NAME_ENV).unwrap(),
    )
}

fn service_config(dir: &Path) -> ServiceConfig {
    ServiceConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(RING, RING)
        .runtime_dir(dir)
}

/// The server: echoes every message back, zero-copy (from the receive ring
/// straight into the send ring), until the client is gone.
#[test]
fn big_echo_server() {
    if child_role().as_deref() != Some("big-echo-server") {
        return;
    }
    let (dir, name) = dir_and_name();
    let mut svc = Service::bind(&name, service_config(&dir)).unwrap();
    println!("ready");
    let mut ch = svc.accept_timeout(STEP).unwrap();
    let tx = ch.tx().clone();
    let mut echoed = 0u64;
    loop {
        let m = match ch.rx().receive_timeout(STEP) {
            Ok(m) => m,
            Err(RecvError::PeerDied) => break,
            Err(e) => panic!("server receive: {e}"),
        };
        let objects: Vec<(u64, &[u8])> = m
            .objects()
            .map(|o| o.map(|o| (o.id, o.data)).unwrap())
            .collect();
        tx.send_objects(m.message_id(), Kind::Reply, &objects, STEP)
            .unwrap();
        echoed += 1;
    }
    println!("echoed {echoed}");
}

fn client(ch: &mut Channel, src: &[u8]) -> (u64, Duration) {
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut next_send = 0;
    for expect in 0..MESSAGES {
        while next_send < MESSAGES && next_send < expect + WINDOW {
            let data = payload(src, next_send);
            ch.send_objects(
                next_send,
                Kind::Request,
                &[(0, data), (1, &checksum(data).to_le_bytes())],
                STEP,
            )
            .unwrap();
            next_send += 1;
        }
        let m = ch.recv_timeout(STEP).unwrap();
        assert_eq!(m.message_id(), expect, "echo out of order");
        assert_eq!(m.kind(), Kind::Reply);
        let data = m.object(0).unwrap();
        let sum = u64::from_le_bytes(m.object(1).unwrap().try_into().unwrap());
        assert_eq!(checksum(data), sum, "message {expect} damaged");
        assert_eq!(data.len(), payload(src, expect).len());
        bytes += 2 * data.len() as u64;
    }
    (bytes, start.elapsed())
}

#[test]
fn echo_100k_messages_of_1_byte_to_1_mib_with_checksums() {
    if child_role().is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("big-echo"));
    let name = unique_name("bigecho");
    let mut server = ChildGuard::spawn(
        "big_echo_server",
        "big-echo-server",
        &[
            (DIR_ENV, dir.display().to_string()),
            (NAME_ENV, name.clone()),
        ],
    );
    server.wait_for_line("ready");
    let src = source();
    let (bytes, took) = with_watchdog(Duration::from_secs(600), move || {
        let config = ClientConfig::new(PROTOCOL, 1..=1)
            .ring_sizes(RING, RING)
            .runtime_dir(&dir)
            .timeout(STEP);
        let mut ch = service::connect(&name, &config).unwrap();
        let result = client(&mut ch, &src);
        let (c2s, s2c) = (ch.tx_ring().capacity(), ch.rx_ring().capacity());
        eprintln!("ring capacities after the run: {c2s} B up, {s2c} B down (max {RING})");
        result
    });
    eprintln!(
        "{MESSAGES} messages, {:.1} GiB both ways in {took:?}: {:.2} GiB/s",
        bytes as f64 / (1u64 << 30) as f64,
        bytes as f64 / (1u64 << 30) as f64 / took.as_secs_f64()
    );
    assert!(server.wait().success());
}
