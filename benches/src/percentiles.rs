//! Latency percentiles from an HDR histogram, written as JSON beside
//! criterion's own estimates: `<criterion dir>/<group>/<id>/<param>/percentiles.json`,
//! for the report (issue 6) to read next to criterion's `new/estimates.json`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use hdrhistogram::Histogram;

use crate::echo::Result;

/// A histogram of nanoseconds: 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
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
