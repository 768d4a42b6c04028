//! Every bench contender, for real: a server process per contender (this
//! test binary re-executed, as the benches do), round trips of every rtt
//! size and streamed batches of every throughput size, each message written
//! and checked byte for byte on both sides. A contender that loses,
//! reorders or corrupts a message, or whose server fails, fails the test.
//! No timing is checked.
//!
//! `harness = false`: the binary's `main` must turn into the server when
//! re-executed. A watchdog ends a stuck run.
#![forbid(unsafe_code)]

use std::time::Duration;

use benches::echo::{self, Client, Contender, Mode, Options, Placement, Result};

/// The whole run is far shorter; this only turns a hang into a failure.
const WATCHDOG: Duration = Duration::from_secs(300);

fn echo_all_sizes(contender: Contender, placement: Placement) -> Result<()> {
    let sizes = [8, 64, 1 << 10, 64 << 10];
    let mut client = Client::start(contender, placement, Options::new(Mode::Echo, 64 << 10))?;
    for len in sizes {
        for _ in 0..20 {
            client.round_trip(len)?;
        }
    }
    // A length the server was not set up for is refused on this side.
    if client.round_trip(65 << 10).is_ok() || client.round_trip(12).is_ok() {
        return Err("a bad length was accepted".into());
    }
    client.finish()
}

fn stream_all_sizes(contender: Contender, placement: Placement) -> Result<()> {
    let sizes = [(64, 500), (4 << 10, 50), (64 << 10, 10), (1 << 20, 4)];
    let mut client = Client::start(contender, placement, Options::new(Mode::Stream, 1 << 20))?;
    for (len, count) in sizes {
        client.stream(len, count)?;
        client.stream(len, 1)?;
    }
    client.finish()
}

fn main() {
    if let Some(code) = echo::serve_if_peer() {
        std::process::exit(code);
    }
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("contenders: watchdog: no result after {WATCHDOG:?}");
        std::process::exit(2);
    });
    let placements = Placement::parse_list("unpinned,samecore").expect("placements");
    let (mut passed, mut failed) = (0, 0);
    for placement in placements {
        let before = echo::pin_client(placement).expect("pinning the client");
        for contender in Contender::ALL {
            for (what, run) in [
                (
                    "echo",
                    echo_all_sizes as fn(Contender, Placement) -> Result<()>,
                ),
                ("stream", stream_all_sizes),
            ] {
                let name = format!("{}{} {what}", contender.id(), placement.suffix());
                match run(contender, placement) {
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
        }
        echo::restore_affinity(before).expect("restoring the CPU affinity");
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
