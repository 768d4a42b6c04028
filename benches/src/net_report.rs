//! The `net` section of `docs/BENCHMARKS.md`, from the `net` bench's
//! criterion group (`<criterion>/net`: HDR percentiles of every call case,
//! `run.json`) and its `ratios.json` (streaming rates, every ratio, the
//! targets' verdicts as the bench computed them).
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::{
    Group, PLACEMENTS, rate_label, ratio_label, run_lines, size_label, time_label,
};

/// The contenders in the order the page shows them.
const CONTENDERS: [&str; 5] = ["bare-tcp", "rpc-tcp", "rpc-tcp-lz4", "rpc-tls", "rpc-quic"];

fn rows<'a>(
    ratios: &'a [Value],
    kind: &'a str,
    suffix: &'a str,
) -> impl Iterator<Item = &'a Value> {
    ratios.iter().filter(move |r| {
        r.get("kind").and_then(Value::as_str) == Some(kind)
            && r.get("case")
                .and_then(Value::as_str)
                .is_some_and(|c| crate::report::split_id(c).1 == suffix)
    })
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn verdict(r: &Value) -> &'static str {
    match r.get("met").and_then(Value::as_bool) {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "–",
    }
}

/// The percentile `q` (`p50`, `p99`) of case `id` of size `size`, ns.
fn pct(g: &Group, placement: &str, id: &str, size: u64, q: &str) -> Option<f64> {
    g.get(placement, id, size)?
        .percentiles
        .as_ref()?
        .get(q)?
        .as_f64()
}

/// The generated `net` section: command, machine and load, then per
/// placement the round trips, the streaming rates, the call during the huge
/// transfer, QUIC against TCP, and the targets.
pub fn render_net(g: &Group, ratios: &[Value]) -> String {
    let mut md = String::new();
    md.push_str(
        "Command (`QUICK=1`: about two minutes; the full run adds the unpinned placement and longer samples):\n\n\
         ```sh\n\
         QUICK=1 cargo bench -p benches --bench net\n\
         cargo run -p benches --bin report\n\
         ```\n\n",
    );
    md += &run_lines("net", g.run.as_ref());
    if let Some(run) = &g.run {
        let la = |k: &str| run.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        let _ = writeln!(
            md,
            "- load average (1, 5, 15 minutes, as `uptime` prints it): `{}` at the start, `{}` at the end",
            la("loadavg_start"),
            la("loadavg_end")
        );
    }
    md.push('\n');
    for (suffix, title) in PLACEMENTS {
        let placement = suffix;
        let any = CONTENDERS
            .iter()
            .any(|c| g.get(placement, &format!("rtt-{c}"), 8).is_some());
        if !any && rows(ratios, "throughput", suffix).next().is_none() {
            continue;
        }
        let _ = writeln!(md, "#### Network, {title}\n");
        // Round trips.
        md.push_str(
            "Round trips: p50 (p99) of every measured call, and the p50's ratio to `bare-tcp`.\n\n",
        );
        md.push_str("| contender | 8 B | 1 KiB | 64 KiB |\n|---|---|---|---|\n");
        for c in CONTENDERS {
            let id = format!("rtt-{c}");
            let _ = write!(md, "| `{c}` |");
            for size in [8u64, 1 << 10, 64 << 10] {
                let (Some(p50), Some(p99)) = (
                    pct(g, placement, &id, size, "p50"),
                    pct(g, placement, &id, size, "p99"),
                ) else {
                    md.push_str(" – |");
                    continue;
                };
                let bare = pct(g, placement, "rtt-bare-tcp", size, "p50");
                let r = match bare {
                    Some(b) if c != "bare-tcp" => format!(", {}", ratio_label(p50 / b)),
                    _ => String::new(),
                };
                let _ = write!(md, " {} ({}){r} |", time_label(p50), time_label(p99));
            }
            md.push('\n');
        }
        // Streaming.
        md.push_str("\nOne-way streaming: payload bytes per second over the measurement, and the ratio to `bare-tcp`.\n\n");
        md.push_str("| contender | 64 KiB | 1 MiB |\n|---|---|---|\n");
        let thr: Vec<&Value> = rows(ratios, "throughput", suffix).collect();
        let bare_rate = |size: u64| {
            thr.iter()
                .find(|r| r.get("size").and_then(Value::as_u64) == Some(size))
                .map(|r| f(r, "base_value"))
        };
        let _ = write!(md, "| `bare-tcp` |");
        for size in [64u64 << 10, 1 << 20] {
            match bare_rate(size) {
                Some(b) => {
                    let _ = write!(md, " {} |", rate_label(b));
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
        for c in &CONTENDERS[1..] {
            let _ = write!(md, "| `{c}` |");
            for size in [64u64 << 10, 1 << 20] {
                let row = thr.iter().find(|r| {
                    r.get("size").and_then(Value::as_u64) == Some(size)
                        && crate::report::split_id(s(r, "case")).0 == format!("thr-{c}")
                });
                match row {
                    Some(r) => {
                        let _ = write!(
                            md,
                            " {}, {} |",
                            rate_label(f(r, "value")),
                            ratio_label(f(r, "ratio"))
                        );
                    }
                    None => md.push_str(" – |"),
                }
            }
            md.push('\n');
        }
        // The call during the huge transfer.
        let busy: Vec<&Value> = rows(ratios, "busy", suffix).collect();
        if !busy.is_empty() {
            let big = busy
                .iter()
                .find_map(|r| r.get("big_message_bytes").and_then(Value::as_u64))
                .unwrap_or(0);
            let _ = writeln!(
                md,
                "\nThe 8-byte call while a {} one-way message is being written on the same connection, against the idle call (p50; target at most {}x):\n",
                size_label(big),
                3
            );
            md.push_str("| contender | idle p50 | busy p50 | busy p99 | ratio | target |\n|---|---|---|---|---|---|\n");
            for r in &busy {
                let case = crate::report::split_id(s(r, "case")).0;
                let c = case.trim_start_matches("busy-");
                let p99 = pct(g, placement, &case, 8, "p99").map_or("?".to_owned(), time_label);
                let _ = writeln!(
                    md,
                    "| `{c}` | {} | {} | {p99} | {} | {} |",
                    time_label(f(r, "base_value")),
                    time_label(f(r, "value")),
                    ratio_label(f(r, "ratio")),
                    verdict(r)
                );
            }
        }
        // QUIC against TCP.
        let q_rtt: Vec<&Value> = rows(ratios, "quic_vs_tcp_rtt", suffix).collect();
        let q_thr: Vec<&Value> = rows(ratios, "quic_vs_tcp_throughput", suffix).collect();
        if !q_rtt.is_empty() || !q_thr.is_empty() {
            md.push_str("\nQUIC against TCP (the same RPC client, same run): round-trip p50 and streaming rate, QUIC / TCP.\n\n");
            md.push_str("| what | size | TCP | QUIC | QUIC / TCP |\n|---|---|---|---|---|\n");
            for r in &q_rtt {
                let _ = writeln!(
                    md,
                    "| round trip | {} | {} | {} | {} |",
                    size_label(r.get("size").and_then(Value::as_u64).unwrap_or(0)),
                    time_label(f(r, "base_value")),
                    time_label(f(r, "value")),
                    ratio_label(f(r, "ratio"))
                );
            }
            for r in &q_thr {
                let _ = writeln!(
                    md,
                    "| streaming | {} | {} | {} | {} |",
                    size_label(r.get("size").and_then(Value::as_u64).unwrap_or(0)),
                    rate_label(f(r, "base_value")),
                    rate_label(f(r, "value")),
                    ratio_label(f(r, "ratio"))
                );
            }
        }
        // Targets.
        md.push_str("\nTargets:\n\n| target | measured | verdict |\n|---|---|---|\n");
        for r in ratios.iter().filter(|r| {
            r.get("met").is_some_and(|m| !m.is_null())
                && crate::report::split_id(s(r, "case")).1 == suffix
        }) {
            let what = match s(r, "kind") {
                "throughput" => format!(
                    "`{}` streaming {} at least 80% of `bare-tcp`",
                    crate::report::split_id(s(r, "case"))
                        .0
                        .trim_start_matches("thr-"),
                    size_label(r.get("size").and_then(Value::as_u64).unwrap_or(0))
                ),
                "busy" => format!(
                    "`{}` small call during the huge transfer at most 3x idle",
                    crate::report::split_id(s(r, "case"))
                        .0
                        .trim_start_matches("busy-")
                ),
                other => other.to_owned(),
            };
            let _ = writeln!(
                md,
                "| {what} | {} | {} |",
                ratio_label(f(r, "ratio")),
                verdict(r)
            );
        }
        for r in rows(ratios, "error", suffix) {
            let _ = writeln!(md, "- **failed**: `{}`: {}", s(r, "case"), s(r, "error"));
        }
        md.push('\n');
    }
    md
}
