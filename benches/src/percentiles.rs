//! Latency percentiles from an HDR histogram, written as JSON beside
//! criterion's own estimates: `<criterion dir>/<group>/<id>/<param>/percentiles.json`,
//! for the report (issue 6) to read next to criterion's `new/estimates.json`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::echo::Result;

/// A histogram of nanoseconds: 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// One case's histogram, and whether criterion's warm-up is over.
pub struct Recorder {
    /// Every timed call of the measurement (of the warm-up too until the
    /// measurement starts).
    pub hist: Histogram<u64>,
    last_iters: u64,
    /// Whether the warm-up ended and was dropped from `hist`.
    pub measuring: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder, in the warm-up.
    pub fn new() -> Self {
        Recorder {
            hist: new_histogram(),
            last_iters: 0,
            measuring: false,
        }
    }

    /// Call at the start of each criterion batch of `iters` iterations.
    /// Criterion's warm-up doubles the iteration count; its first sample
    /// asks for fewer: from then on, only the measurement is recorded.
    pub fn start_batch(&mut self, iters: u64) {
        if !self.measuring && iters < self.last_iters {
            self.hist.reset();
            self.measuring = true;
        }
        self.last_iters = iters;
    }

    /// One criterion batch of `iters` calls: `run` makes them, calling the
    /// closure it is given after each one. Returns their total time (for
    /// `iter_custom`); each call's time goes to the histogram.
    pub fn batch(
        &mut self,
        iters: u64,
        run: impl FnOnce(&mut dyn FnMut()) -> Result<()>,
    ) -> Result<Duration> {
        self.start_batch(iters);
        let start = Instant::now();
        let mut prev = start;
        let hist = &mut self.hist;
        // One clock read per call serves both the histogram and criterion's
        // total (the recording itself, a few ns, is included).
        let mut each = || {
            let now = Instant::now();
            hist.saturating_record(u64::try_from((now - prev).as_nanos()).unwrap_or(u64::MAX));
            prev = now;
        };
        run(&mut each)?;
        Ok(prev - start)
    }
}

/// Where criterion writes, found the way criterion finds it: `$CRITERION_HOME`,
/// else `$CARGO_TARGET_DIR/criterion`, else the target directory this bench
/// binary was built into (`<target>/<profile>/deps/<bench>`), which is what
/// criterion's `cargo metadata` lookup yields.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Writes `hist` (nanoseconds) with `notes` (placement, ...) to
/// `<criterion dir>/<group>/<id>/<param>/percentiles.json`; returns the path.
pub fn write(
    group: &str,
    id: &str,
    param: &str,
    hist: &Histogram<u64>,
    notes: &[(&str, String)],
) -> Result<PathBuf> {
    let dir = criterion_dir().join(group).join(id).join(param);
    std::fs::create_dir_all(&dir)?;
    let mut json = serde_json::json!({
        "group": group,
        "id": id,
        "param": param,
        "unit": "ns",
        "count": hist.len(),
        "min": hist.min(),
        "mean": hist.mean(),
        "stdev": hist.stdev(),
        "p50": hist.value_at_quantile(0.50),
        "p90": hist.value_at_quantile(0.90),
        "p99": hist.value_at_quantile(0.99),
        "p99.9": hist.value_at_quantile(0.999),
        "p99.99": hist.value_at_quantile(0.9999),
        "max": hist.max(),
    });
    for (k, v) in notes {
        json[*k] = serde_json::Value::String(v.clone());
    }
    let path = dir.join("percentiles.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    Ok(path)
}
