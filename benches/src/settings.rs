//! Run settings shared by the benches: the quick path and the placements.
//!
//! `QUICK=1` (any value but empty or `0`) shortens every case, so that
//! `QUICK=1 cargo bench -p benches` runs everything in a few minutes; the
//! full run takes longer samples and adds the unpinned placement.
//! `BENCH_PLACEMENTS` (comma-separated `unpinned`, `crosscore`, `samecore`)
//! overrides the placements.
#![forbid(unsafe_code)]

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};

use crate::echo::{Placement, Result};

/// Whether `QUICK` asks for the short run.
pub fn quick() -> bool {
    std::env::var("QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Criterion's sample count, warm-up and measurement time per case.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Samples per case (criterion's minimum is 10).
    pub samples: usize,
    /// Warm-up time per case.
    pub warm_up: Duration,
    /// Measurement time per case.
    pub measurement: Duration,
}

/// The timing of the cross-process benches: two cores shared with other
/// work, so few, long-enough samples; shorter with [`quick`].
pub fn timing() -> Timing {
    if quick() {
        Timing {
            samples: 10,
            warm_up: Duration::from_millis(300),
            measurement: Duration::from_millis(1000),
        }
    } else {
        Timing {
            samples: 20,
            warm_up: Duration::from_secs(1),
            measurement: Duration::from_secs(3),
        }
    }
}

/// The placements to run: `BENCH_PLACEMENTS`, else all three (the quick
/// run: the two pinned ones).
pub fn placements() -> Result<Vec<Placement>> {
    let list = std::env::var("BENCH_PLACEMENTS").unwrap_or_else(|_| {
        if quick() {
            "crosscore,samecore".to_owned()
        } else {
            "unpinned,crosscore,samecore".to_owned()
        }
    });
    Placement::parse_list(&list)
}

/// A criterion group with [`timing`]'s settings.
pub fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let timing = timing();
    let mut group = c.benchmark_group(name);
    group
        .sample_size(timing.samples)
        .warm_up_time(timing.warm_up)
        .measurement_time(timing.measurement);
    group
}

/// The machine, as the report prints it: CPU model, CPUs, kernel, rustc.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    serde_json::json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "kernel": kernel,
        "rustc": rustc,
    })
}

/// The load average over the last minute.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The load averages over 1, 5 and 15 minutes, as `uptime` prints them.
pub fn load_averages() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Records the run of bench `group` beside its results,
/// `<criterion dir>/<group>/run.json`: the machine, the settings and the
/// load average; call with `done == false` before the cases and `true`
/// after them (adds the end's load and the duration).
pub fn record_run(group: &str, done: bool) -> Result<()> {
    let dir = crate::percentiles::criterion_dir().join(group);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("run.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut run = if done {
        serde_json::from_str(&std::fs::read_to_string(&path)?)?
    } else {
        let mut run = machine();
        run["quick"] = quick().into();
        run["placements"] = placements()?
            .iter()
            .map(|p| p.describe())
            .collect::<Vec<_>>()
            .into();
        run["args"] = std::env::args().skip(1).collect::<Vec<_>>().into();
        run["start_unix"] = now.into();
        run["load_start"] = load_average().into();
        run["loadavg_start"] = load_averages().into();
        run
    };
    if done {
        run["end_unix"] = now.into();
        run["load_end"] = load_average().into();
        run["loadavg_end"] = load_averages().into();
    }
    std::fs::write(&path, serde_json::to_string_pretty(&run)? + "\n")?;
    Ok(())
}
