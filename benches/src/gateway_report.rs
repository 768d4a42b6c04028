//! The `gateway` section of `docs/BENCHMARKS.md`, from the `gateway` bench's
//! criterion group (`<criterion>/gateway`: HDR percentiles of every case,
//! `run.json`): each case's round trip, and what a gateway pair (or gateway
//! B alone) adds to the direct call, at p50 and p99, with the p50 ratio.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use crate::report::{Group, ratio_label, run_lines, size_label, time_label};

/// The cases in the order the page shows them, with what each is.
const CASES: [(&str, &str); 5] = [
    ("shm-direct", "shm, straight to the service"),
    (
        "net-quic",
        "QUIC to the service's `NetServer` (direct network call)",
    ),
    (
        "net-tls",
        "TCP + TLS 1.3 to the service's `NetServer` (direct network call)",
    ),
    ("gw-b-quic", "QUIC to gateway B, shm to the service"),
    (
        "gw-pair",
        "shm to gateway A, QUIC to gateway B, shm to the service",
    ),
];

/// The comparisons: (case, base, what the difference is).
const ADDED: [(&str, &str, &str); 5] = [
    (
        "gw-pair",
        "net-quic",
        "the gateway pair, against the direct QUIC call",
    ),
    (
        "gw-pair",
        "net-tls",
        "the gateway pair, against the direct TLS call",
    ),
    (
        "gw-pair",
        "shm-direct",
        "the gateway pair, against shm straight to the service",
    ),
    (
        "gw-b-quic",
        "net-quic",
        "gateway B alone, against the direct QUIC call",
    ),
    (
        "gw-pair",
        "gw-b-quic",
        "gateway A (and the shm hop to it), against QUIC to B",
    ),
];

/// The sizes the bench measures.
const SIZES: [u64; 2] = [8, 64 << 10];

/// Percentile `q` (`p50`, `p99`) of `id` at `size`, ns (unpinned).
fn pct(g: &Group, id: &str, size: u64, q: &str) -> Option<f64> {
    g.get("", id, size)?.percentiles.as_ref()?.get(q)?.as_f64()
}

/// The generated `gateway` section.
pub fn render_gateway(g: &Group) -> String {
    let mut md = String::new();
    md.push_str(
        "Command (`QUICK=1`: about a minute; the service and both gateways are separate processes, nothing pinned):\n\n\
         ```sh\n\
         QUICK=1 cargo bench -p benches --bench gateway\n\
         cargo run -p benches --bin report\n\
         ```\n\n",
    );
    md += &run_lines("gateway", g.run.as_ref());
    md.push_str("\nRound trips of the `echo` call: p50 (p99) of every measured call.\n\n");
    md.push_str("| case | path |");
    for size in SIZES {
        let _ = write!(md, " {} |", size_label(size));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(SIZES.len()));
    md.push('\n');
    for (id, what) in CASES {
        let _ = write!(md, "| `{id}` | {what} |");
        for size in SIZES {
            match (pct(g, id, size, "p50"), pct(g, id, size, "p99")) {
                (Some(p50), Some(p99)) => {
                    let _ = write!(md, " {} ({}) |", time_label(p50), time_label(p99));
                }
                _ => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md.push_str(
        "\nAdded latency: the case's percentile minus the base's (each taken over its own calls, \
         so the p99 difference is only indicative), and the ratio of the p50s.\n\n",
    );
    md.push_str("| added by | size | p50 | p99 | p50 ratio |\n|---|---|---|---|---|\n");
    for (case, base, what) in ADDED {
        for size in SIZES {
            let get = |id: &str, q: &str| pct(g, id, size, q);
            let (Some(c50), Some(c99), Some(b50), Some(b99)) = (
                get(case, "p50"),
                get(case, "p99"),
                get(base, "p50"),
                get(base, "p99"),
            ) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {what} (`{case}` − `{base}`) | {} | {} | {} | {} |",
                size_label(size),
                signed_time(c50 - b50),
                signed_time(c99 - b99),
                ratio_label(c50 / b50)
            );
        }
    }
    md
}

/// A difference of times, with its sign when negative.
fn signed_time(ns: f64) -> String {
    if ns < 0.0 {
        format!("−{}", time_label(-ns))
    } else {
        time_label(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Case;

    fn case(id: &str, size: u64, p50: f64, p99: f64) -> ((String, String, u64), Case) {
        (
            (String::new(), id.to_owned(), size),
            Case {
                contender: id.to_owned(),
                placement: String::new(),
                size,
                median_ns: p50,
                median_ci: (p50, p50),
                percentiles: Some(serde_json::json!({ "p50": p50, "p99": p99 })),
            },
        )
    }

    #[test]
    fn the_added_latency_is_the_difference_and_the_ratio() {
        let mut g = Group::default();
        g.cases.extend([
            case("net-quic", 8, 100_000.0, 300_000.0),
            case("gw-pair", 8, 250_000.0, 900_000.0),
            case("shm-direct", 8, 10_000.0, 20_000.0),
        ]);
        let md = render_gateway(&g);
        assert!(
            md.contains("(`gw-pair` − `net-quic`) | 8 B | 150 µs | 600 µs | 2.50x |"),
            "{md}"
        );
        assert!(
            md.contains("(`gw-pair` − `shm-direct`) | 8 B | 240 µs | 880 µs | 25x |"),
            "{md}"
        );
        // Cases not measured show as such; comparisons without both sides are left out.
        assert!(md.contains("| `net-tls` |"), "{md}");
        assert!(!md.contains("`net-tls`) |"), "{md}");
    }
}
