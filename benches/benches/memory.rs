//! Resident memory of a channel sized for 64 MiB messages while it carries
//! small ones (issue 6): shm-channel with rings of a 64 MiB maximum against
//! iceoryx2 with publishers sized for 64 MiB slices, ipc-channel, and a Unix
//! socket as the reference of a process that maps no shared memory at all.
//!
//! Each contender's server (a separate process, as in `rtt`) echoes 20,000
//! round trips of 64 bytes; then the bench reads the server's
//! `/proc/<pid>/status` (VmRSS and its anonymous, file and shared-memory
//! parts, VmSize) and `/proc/<pid>/smaps_rollup` (Pss), and writes them to
//! `<target>/criterion/memory/results.json` for the report. Not a criterion
//! bench: the numbers are sizes, not times.
//!
//! Run: `cargo bench -p benches --bench memory`.
#![forbid(unsafe_code)]

use benches::echo::{self, Client, Contender, Mode, Options, Placement, Result};
use benches::{percentiles, settings};

/// The largest message each channel is set up for.
const MAX: usize = 64 << 20;
/// The small messages it carries.
const LEN: usize = 64;
/// How many.
const ROUND_TRIPS: u64 = 20_000;

const CONTENDERS: [Contender; 4] = [
    Contender::ShmPark,
    Contender::Iceoryx2,
    Contender::IpcChannel,
    Contender::Uds,
];

/// A `Key:   1234 kB` line's number, in KiB.
fn kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn measure(contender: Contender) -> Result<serde_json::Value> {
    let opts = Options {
        ring_max: MAX as u64,
        ..Options::new(Mode::Echo, MAX)
    };
    let mut client = Client::start(contender, Placement::Unpinned, opts)?;
    for _ in 0..ROUND_TRIPS {
        client.round_trip(LEN)?;
    }
    let pid = client.server_pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    client.finish()?;
    let field = |text: &str, key: &str| -> Result<u64> {
        kib(text, key).ok_or_else(|| format!("no {key} in /proc/{pid}").into())
    };
    Ok(serde_json::json!({
        "contender": contender.id(),
        "max_message_bytes": MAX,
        "message_bytes": LEN,
        "round_trips": ROUND_TRIPS,
        "vm_rss_kib": field(&status, "VmRSS")?,
        "rss_anon_kib": field(&status, "RssAnon")?,
        "rss_file_kib": field(&status, "RssFile")?,
        "rss_shmem_kib": field(&status, "RssShmem")?,
        "vm_size_kib": field(&status, "VmSize")?,
        "pss_kib": field(&rollup, "Pss")?,
    }))
}

fn main() {
    // Re-executed as a contender's server: serve, then exit.
    if let Some(code) = echo::serve_if_peer() {
        std::process::exit(code);
    }
    // `cargo bench` passes `--bench`; a filter selects contenders by id.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Err(e) = settings::record_run("memory", false) {
        panic!("memory: recording the run: {e}");
    }
    let mut rows = Vec::new();
    for contender in CONTENDERS {
        if !filter.is_empty() && !filter.iter().any(|f| contender.id().contains(f.as_str())) {
            continue;
        }
        match measure(contender) {
            Ok(row) => {
                eprintln!("memory: {row}");
                rows.push(row);
            }
            Err(e) => panic!("memory: {}: {e}", contender.id()),
        }
    }
    if rows.is_empty() {
        return;
    }
    let dir = percentiles::criterion_dir().join("memory");
    let path = dir.join("results.json");
    let write = || -> Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
        Ok(())
    };
    if let Err(e) = write() {
        panic!("memory: writing {}: {e}", path.display());
    }
    if let Err(e) = settings::record_run("memory", true) {
        panic!("memory: recording the run: {e}");
    }
    eprintln!("memory: -> {}", path.display());
}
