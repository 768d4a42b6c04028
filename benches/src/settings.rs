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
