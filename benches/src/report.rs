//! The bench report: reads criterion's estimates, the HDR percentiles, the
//! memory results and each bench's `run.json`, and regenerates the
//! generated sections of `docs/BENCHMARKS.md` and its PNG charts
//! (`cargo run -p benches --bin report`).
//!
//! Only the text between `<!-- report:begin NAME -->` and
//! `<!-- report:end NAME -->` is rewritten (NAME: `run`, `rtt`,
//! `throughput`, `memory`, `targets`); everything else in the page —
//! hand-written sections such as `ring`, `idl_parse` or `stubs`, and the
//! notes that explain the numbers — is kept as it is. A section whose
//! markers are missing is appended at the end of the page with them, and a
//! section whose bench has no results is left untouched.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::echo::{Contender, Result};

/// The reference of every ratio: shm-channel with its default settings.
pub const REFERENCE: &str = "shm-park";
/// Placements in the order the page shows them: (suffix, title).
pub const PLACEMENTS: [(&str, &str); 3] = [
    ("crosscore", "two different cores"),
    ("samecore", "one shared core"),
    ("", "unpinned"),
];

/// One criterion case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The contender's id without the placement (`shm-park`, `memcpy`).
    pub contender: String,
    /// `crosscore`, `samecore` or `` (unpinned).
    pub placement: String,
    /// The message size, bytes.
    pub size: u64,
    /// Criterion's median estimate of one iteration, ns.
    pub median_ns: f64,
    /// Its 95% confidence interval, ns.
    pub median_ci: (f64, f64),
    /// The HDR percentiles (rtt only).
    pub percentiles: Option<Value>,
}

impl Case {
    /// The typical time: the HDR histogram's p50 where the bench recorded
    /// one (rtt), else criterion's median. On a shared machine a few
    /// preempted round trips of milliseconds dominate criterion's
    /// per-sample means, so the p50 of every round trip is the steadier
    /// number to compare.
    pub fn typical_ns(&self) -> f64 {
        self.percentiles
            .as_ref()
            .and_then(|p| p.get("p50"))
            .and_then(Value::as_f64)
            .unwrap_or(self.median_ns)
    }
}

/// All cases of one criterion group, by (placement, contender, size).
#[derive(Debug, Default)]
pub struct Group {
    /// The cases.
    pub cases: BTreeMap<(String, String, u64), Case>,
    /// The group's `run.json`, if the bench wrote one.
    pub run: Option<Value>,
}

impl Group {
    /// The case, if measured.
    pub fn get(&self, placement: &str, contender: &str, size: u64) -> Option<&Case> {
        self.cases
            .get(&(placement.to_owned(), contender.to_owned(), size))
    }

    /// The sizes measured in `placement`, ascending.
    pub fn sizes(&self, placement: &str) -> Vec<u64> {
        let mut sizes: Vec<u64> = self
            .cases
            .values()
            .filter(|c| c.placement == placement)
            .map(|c| c.size)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The contenders measured in `placement`, in the benches' order.
    pub fn contenders(&self, placement: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .cases
            .values()
            .filter(|c| c.placement == placement)
            .map(|c| c.contender.clone())
            .collect();
        ids.sort_by_key(|id| (order(id), id.clone()));
        ids.dedup();
        ids
    }
}

/// Where a contender sorts (and its chart colour): `memcpy` first, then
/// the benches' order.
pub fn order(id: &str) -> usize {
    if id == "memcpy" {
        return 0;
    }
    Contender::ALL
        .iter()
        .position(|c| c.id() == id)
        .map_or(usize::MAX, |i| i + 1)
}

/// Splits a criterion function id into (contender, placement).
pub fn split_id(id: &str) -> (String, String) {
    for suffix in ["crosscore", "samecore"] {
        if let Some(base) = id.strip_suffix(&format!("-{suffix}")) {
            return (base.to_owned(), suffix.to_owned());
        }
    }
    (id.to_owned(), String::new())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()).into())
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut v = v;
    for key in path {
        v = v.get(key)?;
    }
    v.as_f64()
}

/// Reads `<criterion>/<group>/<id>/<size>/new/estimates.json` (and the
/// `percentiles.json` beside it) for every case of `group`.
pub fn load_group(criterion: &Path, group: &str) -> Result<Group> {
    let mut out = Group::default();
    let dir = criterion.join(group);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    let run = dir.join("run.json");
    if run.exists() {
        out.run = Some(read_json(&run)?);
    }
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() || entry.file_name() == "report" {
            continue;
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        let (contender, placement) = split_id(&id);
        for sized in std::fs::read_dir(entry.path())? {
            let sized = sized?;
            let Ok(size) = sized.file_name().to_string_lossy().parse::<u64>() else {
                continue;
            };
            let estimates = sized.path().join("new").join("estimates.json");
            if !estimates.exists() {
                continue;
            }
            let est = read_json(&estimates)?;
            let median = num(&est, &["median", "point_estimate"])
                .ok_or_else(|| format!("{}: no median", estimates.display()))?;
            let lower = num(&est, &["median", "confidence_interval", "lower_bound"]);
            let upper = num(&est, &["median", "confidence_interval", "upper_bound"]);
            let pct = sized.path().join("percentiles.json");
            let percentiles = if pct.exists() {
                Some(read_json(&pct)?)
            } else {
                None
            };
            out.cases.insert(
                (placement.clone(), contender.clone(), size),
                Case {
                    contender: contender.clone(),
                    placement: placement.clone(),
                    size,
                    median_ns: median,
                    median_ci: (lower.unwrap_or(median), upper.unwrap_or(median)),
                    percentiles,
                },
            );
        }
    }
    Ok(out)
}

/// `8 B`, `64 KiB`, `1 MiB`.
pub fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b.is_multiple_of(1 << 10) => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Three significant digits: `541 ns`, `1.25 µs`, `45.8 ms`.
pub fn time_label(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{} {unit}", sig3(v))
}

/// Bytes per second: `322 MiB/s`, `3.49 GiB/s`.
pub fn rate_label(bytes_per_s: f64) -> String {
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
    let mut v = bytes_per_s;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{} {}", sig3(v), units[i])
}

/// Messages per second: `5.27 M/s`, `812 k/s`.
pub fn count_label(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{} M/s", sig3(per_s / 1e6))
    } else if per_s >= 1e3 {
        format!("{} k/s", sig3(per_s / 1e3))
    } else {
        format!("{} /s", sig3(per_s))
    }
}

fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return "?".to_owned();
    }
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `1.00x`, `83x`.
pub fn ratio_label(r: f64) -> String {
    if !r.is_finite() {
        "?".to_owned()
    } else if r >= 10.0 {
        format!("{r:.0}x")
    } else {
        format!("{r:.2}x")
    }
}

/// The run's machine and settings as a few lines of Markdown.
pub(crate) fn run_lines(name: &str, run: Option<&Value>) -> String {
    let Some(run) = run else {
        return format!("- `{name}`: no `run.json` (an older run)\n");
    };
    let s = |k: &str| run.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    let f = |k: &str| run.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let minutes = (f("end_unix") - f("start_unix")) / 60.0;
    let placements = run
        .get("placements")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let quick = run.get("quick").and_then(Value::as_bool).unwrap_or(false);
    format!(
        "- `{name}`: {} ({} CPUs), Linux {}, {}; {}{}; load average {:.1} at the start, {:.1} at the end; {:.1} minutes\n",
        s("cpu"),
        run.get("cpus").and_then(Value::as_u64).unwrap_or(0),
        s("kernel"),
        s("rustc"),
        if quick { "QUICK=1, " } else { "" },
        if placements.is_empty() {
            "no placements".to_owned()
        } else {
            format!("placements: {placements}")
        },
        f("load_start"),
        f("load_end"),
        minutes,
    )
}

/// The generated `run` section: machine, command, per-bench run lines.
pub fn render_run(rtt: &Group, throughput: &Group, memory: Option<&Value>) -> String {
    let mut md = String::new();
    md.push_str(
        "Command (everything; `QUICK=1` for the short run, about 10 minutes):\n\n\
         ```sh\n\
         cargo bench -p benches\n\
         cargo run -p benches --bin report      # rewrites this page's generated sections and charts\n\
         ```\n\n\
         Measured:\n\n",
    );
    md += &run_lines("rtt", rtt.run.as_ref());
    md += &run_lines("throughput", throughput.run.as_ref());
    md += &run_lines("memory", memory);
    md
}

/// The ratio of `case` to the reference's case of the same placement and
/// size (`case / reference` of the time: above 1 is slower).
fn time_ratio(g: &Group, case: &Case) -> Option<f64> {
    let r = g.get(&case.placement, REFERENCE, case.size)?;
    Some(case.typical_ns() / r.typical_ns())
}

fn placement_title(g: &Group, placement: &str, fallback: &str) -> String {
    g.cases
        .values()
        .find(|c| c.placement == placement)
        .and_then(|c| c.percentiles.as_ref())
        .and_then(|p| p.get("placement"))
        .and_then(Value::as_str)
        .map_or_else(|| fallback.to_owned(), |p| format!("{fallback}: {p}"))
}

/// A table of `contenders` by `sizes`; `cell` renders a case as its value
/// (in bold for shm-channel's own contenders) and what follows it.
fn table(
    g: &Group,
    placement: &str,
    contenders: &[String],
    sizes: &[u64],
    cell: &dyn Fn(&Case) -> (String, String),
) -> String {
    let mut md = String::from("| contender |");
    for s in sizes {
        let _ = write!(md, " {} |", size_label(*s));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(sizes.len()));
    md.push('\n');
    for c in contenders {
        let ours = c.starts_with("shm-") || c.starts_with("gen-");
        let _ = write!(md, "| `{c}` |");
        for s in sizes {
            match g.get(placement, c, *s) {
                Some(case) => {
                    let (value, rest) = cell(case);
                    let value = if ours { format!("**{value}**") } else { value };
                    let _ = write!(md, " {value}{rest} |");
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md
}

/// The generated `rtt` section: per placement, the median round trip with
/// its ratio to [`REFERENCE`], the chart, and the percentiles.
pub fn render_rtt(g: &Group, chart_dir_rel: &str) -> String {
    let mut md = String::new();
    for (placement, title) in PLACEMENTS {
        let contenders = g.contenders(placement);
        if contenders.is_empty() {
            continue;
        }
        let sizes = g.sizes(placement);
        let _ = writeln!(
            md,
            "#### Round trips, {}\n",
            placement_title(g, placement, title)
        );
        let _ = writeln!(
            md,
            "The p50 of every measured round trip (HDR histogram), and its ratio to `{REFERENCE}` (below 1: faster than shm-channel's default). Criterion's median of its per-sample means is in the percentile table below: under load, where a few round trips are preempted for milliseconds, it is far above the p50.\n"
        );
        md += &table(g, placement, &contenders, &sizes, &|case| {
            let r = time_ratio(g, case).map(ratio_label).unwrap_or_default();
            (time_label(case.typical_ns()), format!(" ({r})"))
        });
        let png = chart_name("rtt", placement);
        let _ = writeln!(
            md,
            "\n![Round-trip time by message size, {title}]({chart_dir_rel}/{png})\n"
        );
        let _ = writeln!(
            md,
            "<details><summary>Percentiles (HDR histogram of every measured round trip), {title}</summary>\n"
        );
        md.push_str("| contender | size | median | p50 | p99 | p99.9 | max | round trips |\n");
        md.push_str("|---|---|---|---|---|---|---|---|\n");
        for c in &contenders {
            for s in &sizes {
                let Some(case) = g.get(placement, c, *s) else {
                    continue;
                };
                let Some(p) = &case.percentiles else {
                    continue;
                };
                let q = |k: &str| {
                    p.get(k)
                        .and_then(Value::as_f64)
                        .map_or("?".into(), time_label)
                };
                let _ = writeln!(
                    md,
                    "| `{c}` | {} | {} | {} | {} | {} | {} | {} |",
                    size_label(*s),
                    time_label(case.median_ns),
                    q("p50"),
                    q("p99"),
                    q("p99.9"),
                    q("max"),
                    p.get("count").and_then(Value::as_u64).unwrap_or(0)
                );
            }
        }
        md.push_str("\n</details>\n\n");
    }
    md
}

/// Bytes per second of a throughput case (one iteration = one message).
pub fn bytes_per_s(case: &Case) -> f64 {
    case.size as f64 / (case.median_ns * 1e-9)
}

/// The generated `throughput` section.
pub fn render_throughput(g: &Group, chart_dir_rel: &str) -> String {
    let mut md = String::new();
    for (placement, title) in PLACEMENTS {
        let contenders = g.contenders(placement);
        if contenders.is_empty() {
            continue;
        }
        let sizes = g.sizes(placement);
        let _ = writeln!(md, "#### One-way streaming, {title}\n");
        let _ = writeln!(
            md,
            "Payload bytes per second and messages per second (criterion's median), and the ratio of the rate to `{REFERENCE}` (above 1: faster than shm-channel's default). `memcpy` is one in-process copy of the same bytes.\n"
        );
        md += &table(g, placement, &contenders, &sizes, &|case| {
            let rate = bytes_per_s(case);
            let msgs = count_label(rate / case.size as f64);
            let r = g
                .get(placement, REFERENCE, case.size)
                .map(|r| ratio_label(r.median_ns / case.median_ns))
                .unwrap_or_default();
            (rate_label(rate), format!(", {msgs} ({r})"))
        });
        let png = chart_name("throughput", placement);
        let _ = writeln!(
            md,
            "\n![Throughput by message size, {title}]({chart_dir_rel}/{png})\n"
        );
    }
    md
}

/// The generated `memory` section.
pub fn render_memory(rows: &[Value]) -> String {
    let mut md = String::new();
    md.push_str(
        "| contender | largest message | VmRSS | of which shared memory (RssShmem) | anonymous | Pss | address space (VmSize) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let k = |key: &str| {
            r.get(key)
                .and_then(Value::as_u64)
                .map_or("?".into(), |v| format!("{v} KiB"))
        };
        let max = r
            .get("max_message_bytes")
            .and_then(Value::as_u64)
            .map_or("?".into(), size_label);
        let _ = writeln!(
            md,
            "| `{}` | {max} | {} | {} | {} | {} | {} |",
            r.get("contender").and_then(Value::as_str).unwrap_or("?"),
            k("vm_rss_kib"),
            k("rss_shmem_kib"),
            k("rss_anon_kib"),
            k("pss_kib"),
            k("vm_size_kib"),
        );
    }
    if let Some(r) = rows.first() {
        let _ = writeln!(
            md,
            "\nEach server process after {} round trips of {} bytes (its `/proc/<pid>/status` and `smaps_rollup`).",
            r.get("round_trips").and_then(Value::as_u64).unwrap_or(0),
            r.get("message_bytes").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    md
}

/// One target's table row: `what`, then, if both numbers were measured,
/// `measured(a, b)` and whether `met(a, b)`.
fn verdict(
    what: &str,
    pair: (Option<f64>, Option<f64>),
    measured: impl Fn(f64, f64) -> String,
    met: impl Fn(f64, f64) -> bool,
) -> String {
    let (text, word) = match pair {
        (Some(a), Some(b)) => (
            measured(a, b),
            if met(a, b) { "**met**" } else { "**missed**" },
        ),
        _ => (String::new(), "not measured"),
    };
    format!("| {what} | {text} | {word} |\n")
}

/// The generated `targets` section: the issue's targets, computed from
/// this run's ratios (two cores and one shared core).
pub fn render_targets(rtt: &Group, thr: &Group, memory: &[Value]) -> String {
    let mut md = String::from("| target | measured (same run) | verdict |\n|---|---|---|\n");
    let t = |g: &Group, p: &str, c: &str, s: u64| g.get(p, c, s).map(Case::typical_ns);
    for (placement, title) in PLACEMENTS.iter().take(2) {
        for size in [8, 64] {
            let iox = t(rtt, placement, "iceoryx2", size);
            md += &verdict(
                &format!(
                    "polling round trip ({title}, {}) within 1.5x of `raw-spin` and faster than `iceoryx2`",
                    size_label(size)
                ),
                (
                    t(rtt, placement, "shm-spin", size),
                    t(rtt, placement, "raw-spin", size),
                ),
                |s, r| {
                    let i = iox.map_or("?".into(), |i| {
                        format!("{} ({} of `shm-spin`)", time_label(i), ratio_label(i / s))
                    });
                    format!(
                        "`shm-spin` {} = {} `raw-spin` ({}); `iceoryx2` {i}",
                        time_label(s),
                        ratio_label(s / r),
                        time_label(r),
                    )
                },
                |s, r| s <= 1.5 * r && iox.is_some_and(|i| s < i),
            );
        }
        for park in ["shm-park", "shm-park-nospin"] {
            md += &verdict(
                &format!("`{park}` round trip ({title}, 8 B) at least 2x faster than `uds`"),
                (t(rtt, placement, park, 8), t(rtt, placement, "uds", 8)),
                |p, u| {
                    format!(
                        "`{park}` {}, `uds` {}: `uds` takes {} as long",
                        time_label(p),
                        time_label(u),
                        ratio_label(u / p)
                    )
                },
                |p, u| u >= 2.0 * p,
            );
        }
        for size in [8, 64 << 10] {
            md += &verdict(
                &format!(
                    "generated blocking client at most 10% over the bare channel ({title}, {})",
                    size_label(size)
                ),
                (
                    t(rtt, placement, "gen-blocking", size),
                    t(rtt, placement, "shm-park", size),
                ),
                |gb, p| {
                    format!(
                        "`gen-blocking` {} = {} `shm-park` ({})",
                        time_label(gb),
                        ratio_label(gb / p),
                        time_label(p)
                    )
                },
                |gb, p| gb <= 1.1 * p,
            );
        }
        md += &verdict(
            &format!(
                "64 B streaming ({title}) at least half of a bare single-producer ring (`raw-spin`)"
            ),
            (
                t(thr, placement, "shm-park", 64),
                t(thr, placement, "raw-spin", 64),
            ),
            |p, r| {
                format!(
                    "`shm-park` {}, `raw-spin` {}: {} of it",
                    count_label(1e9 / p),
                    count_label(1e9 / r),
                    ratio_label(r / p)
                )
            },
            |p, r| r / p >= 0.5,
        );
        md += &verdict(
            &format!("1 MiB streaming ({title}) within 2x of one `memcpy` of the bytes"),
            (
                t(thr, placement, "shm-park", 1 << 20),
                t(thr, placement, "memcpy", 1 << 20),
            ),
            |p, m| {
                format!(
                    "`shm-park` {} per message, `memcpy` {}: {}",
                    time_label(p),
                    time_label(m),
                    ratio_label(p / m)
                )
            },
            |p, m| p <= 2.0 * m,
        );
    }
    let shmem = memory
        .iter()
        .find(|r| r.get("contender").and_then(Value::as_str) == Some(REFERENCE))
        .and_then(|r| r.get("rss_shmem_kib"))
        .and_then(Value::as_f64);
    md += &verdict(
        "a channel of a 64 MiB maximum carrying small messages commits a few pages (at most 64 KiB)",
        (shmem, Some(64.0)),
        |kib, _| format!("{kib} KiB of shared memory resident in the `{REFERENCE}` server"),
        |kib, limit| kib <= limit,
    );
    md
}

/// The chart file of `group` in `placement`.
pub fn chart_name(group: &str, placement: &str) -> String {
    if placement.is_empty() {
        format!("{group}-unpinned.png")
    } else {
        format!("{group}-{placement}.png")
    }
}

/// Replaces the text between the markers of `name` in `page` with `body`,
/// or appends the section with its markers (under `heading`) if the page
/// has none.
pub fn splice(page: &str, name: &str, heading: &str, body: &str) -> String {
    let begin = format!("<!-- report:begin {name} -->");
    let end = format!("<!-- report:end {name} -->");
    let block = format!(
        "{begin}\n<!-- generated by `cargo run -p benches --bin report`: edits here are overwritten -->\n\n{}\n{end}",
        body.trim_end()
    );
    if let (Some(b), Some(e)) = (page.find(&begin), page.find(&end))
        && b < e
    {
        return format!("{}{block}{}", &page[..b], &page[e + end.len()..]);
    }
    let mut out = page.trim_end().to_owned();
    let _ = write!(out, "\n\n{heading}\n\n{block}\n");
    out
}

/// Paths the report reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// criterion's output directory.
    pub criterion: PathBuf,
    /// The page.
    pub page: PathBuf,
    /// Where the charts go.
    pub charts: PathBuf,
    /// The charts' directory as the page links it.
    pub charts_rel: String,
}

/// Regenerates the page and the charts; returns what it wrote.
pub fn run(paths: &Paths) -> Result<Vec<PathBuf>> {
    let rtt = load_group(&paths.criterion, "rtt")?;
    let thr = load_group(&paths.criterion, "throughput")?;
    let mem_path = paths.criterion.join("memory").join("results.json");
    let memory: Vec<Value> = if mem_path.exists() {
        read_json(&mem_path)?
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mem_run_path = paths.criterion.join("memory").join("run.json");
    let mem_run = if mem_run_path.exists() {
        Some(read_json(&mem_run_path)?)
    } else {
        None
    };
    let mut written = Vec::new();
    let mut page = std::fs::read_to_string(&paths.page).unwrap_or_else(|_| "# Benchmarks\n".into());
    let net = load_group(&paths.criterion, "net")?;
    let net_ratios_path = paths.criterion.join("net").join("ratios.json");
    let net_ratios: Vec<Value> = if net_ratios_path.exists() {
        read_json(&net_ratios_path)?
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let gateway = load_group(&paths.criterion, "gateway")?;
    if rtt.cases.is_empty()
        && thr.cases.is_empty()
        && memory.is_empty()
        && net.cases.is_empty()
        && gateway.cases.is_empty()
    {
        return Err(format!(
            "no results under {} (run `cargo bench -p benches` first)",
            paths.criterion.display()
        )
        .into());
    }
    if !net.cases.is_empty() {
        page = splice(
            &page,
            "net",
            "## Network (net)",
            &crate::net_report::render_net(&net, &net_ratios),
        );
    }
    if !gateway.cases.is_empty() {
        page = splice(
            &page,
            "gateway",
            "## Gateway (gateway)",
            &crate::gateway_report::render_gateway(&gateway),
        );
    }
    // Only the network benches ran: the other sections keep what they say.
    if rtt.cases.is_empty() && thr.cases.is_empty() && memory.is_empty() {
        std::fs::write(&paths.page, page)?;
        written.push(paths.page.clone());
        return Ok(written);
    }
    page = splice(
        &page,
        "run",
        "## Cross-process benches: machine and command",
        &render_run(&rtt, &thr, mem_run.as_ref()),
    );
    std::fs::create_dir_all(&paths.charts)?;
    type Chart = fn(&Group, &str, &str, &Path) -> Result<bool>;
    let benches: [(&str, &str, &Group, String, Chart); 2] = [
        (
            "rtt",
            "## Round trips (rtt)",
            &rtt,
            render_rtt(&rtt, &paths.charts_rel),
            crate::chart::latency,
        ),
        (
            "throughput",
            "## One-way streaming (throughput)",
            &thr,
            render_throughput(&thr, &paths.charts_rel),
            crate::chart::throughput,
        ),
    ];
    for (name, heading, group, body, chart) in benches {
        if group.cases.is_empty() {
            continue;
        }
        page = splice(&page, name, heading, &body);
        for (placement, title) in PLACEMENTS {
            let path = paths.charts.join(chart_name(name, placement));
            if chart(group, placement, title, &path)? {
                written.push(path);
            }
        }
    }
    if !memory.is_empty() {
        page = splice(&page, "memory", "## Memory", &render_memory(&memory));
    }
    page = splice(
        &page,
        "targets",
        "## Targets",
        &render_targets(&rtt, &thr, &memory),
    );
    std::fs::write(&paths.page, page)?;
    written.push(paths.page.clone());
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_into_contender_and_placement() {
        assert_eq!(
            split_id("shm-spin-crosscore"),
            ("shm-spin".into(), "crosscore".into())
        );
        assert_eq!(
            split_id("raw-spin-samecore"),
            ("raw-spin".into(), "samecore".into())
        );
        assert_eq!(
            split_id("ipc-channel"),
            ("ipc-channel".into(), String::new())
        );
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(8), "8 B");
        assert_eq!(size_label(64 << 10), "64 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(time_label(541.2), "541 ns");
        assert_eq!(time_label(1_250.0), "1.25 µs");
        assert_eq!(time_label(45_800_000.0), "45.8 ms");
        assert_eq!(rate_label(3.49 * 1024.0 * 1024.0 * 1024.0), "3.49 GiB/s");
        assert_eq!(count_label(5_270_000.0), "5.27 M/s");
        assert_eq!(ratio_label(83.4), "83x");
        assert_eq!(ratio_label(1.0), "1.00x");
    }

    #[test]
    fn splice_replaces_only_its_section_and_appends_missing_ones() {
        let page = "# B\n\n## ring\nkept\n\n<!-- report:begin rtt -->\nold\n<!-- report:end rtt -->\n\n## stubs\nalso kept\n";
        let out = splice(page, "rtt", "## rtt", "new table");
        assert!(out.contains("## ring\nkept"));
        assert!(out.contains("## stubs\nalso kept"));
        assert!(out.contains("new table"));
        assert!(!out.contains("old"));
        let again = splice(&out, "rtt", "## rtt", "new table");
        assert_eq!(again, out, "regenerating is stable");
        let appended = splice(&out, "memory", "## Memory", "rows");
        assert!(appended.starts_with(&out.trim_end().to_owned()));
        assert!(appended.contains("## Memory\n\n<!-- report:begin memory -->"));
    }

    /// A criterion directory with two contenders, as the benches leave it.
    fn fixture(dir: &Path) {
        for (id, size, median) in [
            ("shm-park-crosscore", 8, 500.0),
            ("uds-crosscore", 8, 40_000.0),
            ("shm-spin-crosscore", 8, 450.0),
            ("raw-spin-crosscore", 8, 150.0),
            ("iceoryx2-crosscore", 8, 900.0),
        ] {
            let d = dir.join("rtt").join(id).join(size.to_string());
            std::fs::create_dir_all(d.join("new")).unwrap();
            let est = serde_json::json!({"median": {"point_estimate": median,
                "confidence_interval": {"lower_bound": median * 0.9, "upper_bound": median * 1.1}}});
            std::fs::write(d.join("new/estimates.json"), est.to_string()).unwrap();
            let pct = serde_json::json!({"p50": median, "p99": median * 2.0, "p99.9": median * 3.0,
                "max": median * 10.0, "count": 1000, "placement": "client on CPU 0, server on CPU 1"});
            std::fs::write(d.join("percentiles.json"), pct.to_string()).unwrap();
        }
    }

    #[test]
    fn the_report_reads_criterion_output_and_computes_ratios() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fixture(&dir);
        let g = load_group(&dir, "rtt").unwrap();
        assert_eq!(g.sizes("crosscore"), vec![8]);
        assert_eq!(
            g.contenders("crosscore"),
            vec!["raw-spin", "shm-spin", "shm-park", "iceoryx2", "uds"]
        );
        let md = render_rtt(&g, "bench");
        assert!(md.contains("| `uds` | 40.0 µs (80x) |"), "{md}");
        assert!(md.contains("| `shm-park` | **500 ns** (1.00x) |"), "{md}");
        assert!(
            md.contains("| `uds` | 8 B | 40.0 µs | 40.0 µs | 80.0 µs | 120 µs | 400 µs | 1000 |")
        );
        let targets = render_targets(&g, &Group::default(), &[]);
        // 450 / 150 = 3x raw-spin: missed; uds 80x slower than shm-park: met.
        assert!(
            targets.contains(
                "= 3.00x `raw-spin` (150 ns); `iceoryx2` 900 ns (2.00x of `shm-spin`) | **missed**"
            ),
            "{targets}"
        );
        assert!(
            targets.contains("`shm-park` 500 ns, `uds` 40.0 µs: `uds` takes 80x as long | **met**"),
            "{targets}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
