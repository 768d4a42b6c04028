//! Every case of the `gateway` bench, for real, so it cannot rot: the service
//! and both gateways as processes (this test binary re-executed, as the bench
//! does), then calls of every size by every case's client, each payload
//! written and checked on both sides. No timing is checked.
//!
//! `harness = false`: the binary's `main` must turn into the service or a
//! gateway when re-executed. A watchdog ends a stuck run.
#![forbid(unsafe_code)]

use std::time::Duration;

use benches::echo::Result;
use benches::gateway_peer::{self, GatewayBench, GwCase, MAX_PAYLOAD};

/// The run takes seconds; this only turns a hang into a failure.
const WATCHDOG: Duration = Duration::from_secs(120);

fn run() -> Result<()> {
    let mut bench = GatewayBench::start()?;
    for case in GwCase::ALL {
        for len in [8, MAX_PAYLOAD] {
            bench
                .round_trips(case, len, 10, &mut || {})
                .map_err(|e| format!("{}/{len}: {e}", case.id()))?;
        }
        println!("case {} ... ok", case.id());
    }
    // A payload over the bench's maximum is refused on this side.
    if bench
        .round_trips(GwCase::GwPair, MAX_PAYLOAD + 1, 1, &mut || {})
        .is_ok()
    {
        return Err("a payload over the maximum was accepted".into());
    }
    bench.finish()
}

fn main() {
    if let Some(code) = gateway_peer::serve_if_gateway_peer() {
        std::process::exit(code);
    }
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("gateway_cases: watchdog: no result after {WATCHDOG:?}");
        std::process::exit(2);
    });
    match run() {
        Ok(()) => println!("test gateway_cases ... ok"),
        Err(e) => {
            println!("test gateway_cases ... FAILED: {e}");
            std::process::exit(1);
        }
    }
}
