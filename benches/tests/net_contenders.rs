//! Every contender of the `net` bench, for real, so it cannot rot: a server
//! process per contender (this test binary re-executed, as the bench does),
//! round trips of every size, streamed batches of every size, and for the
//! `rpc-*` contenders calls during a huge message (8 MiB here, 1 GiB in the
//! bench) on the same connection, which the server must read whole. Every
//! byte is written and checked on both sides; a lost, reordered or corrupted
//! message, or a failing server, fails the test. No timing is checked.
//!
//! `harness = false`: the binary's `main` must turn into the server when
//! re-executed. A watchdog ends a stuck run.
#![forbid(unsafe_code)]

use std::time::Duration;

use benches::echo::{Placement, Result};
use benches::net_peer::{self, NetBench, NetContender, Options};

/// The whole run takes seconds; this only turns a hang into a failure.
const WATCHDOG: Duration = Duration::from_secs(120);
/// The huge message: big enough for many frames, small for CI.
const BIG: usize = 8 << 20;

fn run(contender: NetContender) -> Result<()> {
    let big = if contender.is_rpc() { BIG } else { 0 };
    let opts = Options { max: 1 << 20, big };
    let mut client = NetBench::start(contender, Placement::Unpinned, opts)?;
    for len in [8, 1 << 10, 64 << 10] {
        client.round_trips(len, 20, &mut || {})?;
    }
    for (len, count) in [(64 << 10, 20), (1 << 20, 4)] {
        client.stream(len, count)?;
        client.stream(len, 1)?;
    }
    // A length the server was not set up for is refused on this side.
    if client.round_trips(2 << 20, 1, &mut || {}).is_ok() || client.stream(12, 1).is_ok() {
        return Err("a bad length was accepted".into());
    }
    if contender.is_rpc() {
        let mut calls = 0u64;
        client.round_trips_during_big(8, 5, &mut |_| calls += 1)?;
        if calls != 5 {
            return Err(format!("{calls} calls recorded during the huge message, not 5").into());
        }
        // Round trips still work after it, in order.
        client.round_trips(8, 3, &mut || {})?;
    } else if client.round_trips_during_big(8, 1, &mut |_| {}).is_ok() {
        return Err("the bare echo cannot carry a huge message".into());
    }
    // finish() also asks the server how many huge messages it read whole.
    client.finish()
}

fn main() {
    if let Some(code) = net_peer::serve_if_net_peer() {
        std::process::exit(code);
    }
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("net_contenders: watchdog: no result after {WATCHDOG:?}");
        std::process::exit(2);
    });
    let (mut passed, mut failed) = (0, 0);
    for contender in NetContender::ALL {
        let name = contender.id();
        match run(contender) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED: {e}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
