//! `shmctl`: what shm-channel services are running, and how their channels are doing.
//!
//! ```text
//! shmctl [--runtime-dir DIR] [--json] list
//! shmctl [--runtime-dir DIR] [--json] show NAME
//! shmctl [--runtime-dir DIR] [--json] ping NAME [-c COUNT]
//! ```
//!
//! It only asks the services (a control query on their socket, answered by their accept
//! path); it never maps their rings. Exit status 0 on success, 1 when a service could not be
//! asked (the message says why), 2 on bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;
use shm_channel::control::{self, ChannelStatus, ControlError, RingStatus, ServiceStatus};
use shm_channel::service::default_runtime_dir;

/// Shows live shm-channel services and their channels.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The runtime directory (default: $SHM_CHANNEL_RUNTIME_DIR, $XDG_RUNTIME_DIR/shm-channel
    /// or /tmp/shm-channel-UID).
    #[arg(long, global = true)]
    runtime_dir: Option<PathBuf>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for each service's answer, in milliseconds.
    #[arg(long, global = true, default_value_t = 2000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Live services: name, protocol, versions, pid, uid, number of channels.
    List,
    /// One service and each of its channels.
    Show {
        /// The service name.
        name: String,
    },
    /// Round trips to a service through its accept path (a fresh connection each).
    Ping {
        /// The service name.
        name: String,
        /// How many round trips.
        #[arg(short = 'c', long, default_value_t = 5)]
        count: u32,
    },
}

#[derive(Debug, Serialize)]
struct ServiceRow {
    name: String,
    protocol: String,
    versions: [u32; 2],
    pid: u32,
    uid: u32,
    channels: u32,
}

#[derive(Debug, Serialize)]
struct ErrorRow {
    name: String,
    error: String,
}

#[derive(Debug, Serialize)]
struct ListOut {
    services: Vec<ServiceRow>,
    /// Sockets whose service could not be asked (not stale ones: those are left out).
    errors: Vec<ErrorRow>,
}

#[derive(Debug, Serialize)]
struct RingOut {
    capacity: u64,
    max_size: u64,
    pending_messages: u64,
    used_bytes: u64,
    messages_written: u64,
    messages_read: u64,
    reader_parked: bool,
    writer_waiting: bool,
}

#[derive(Debug, Serialize)]
struct ChannelOut {
    id: u64,
    version: u32,
    peer_pid: u32,
    peer_uid: u32,
    /// Messages the client sent (written to the client-to-server ring).
    messages_received: u64,
    /// Messages the service sent.
    messages_sent: u64,
    /// "parked" (asleep on its doorbell) or "polling" (awake or spinning).
    service_reader: &'static str,
    client_reader: &'static str,
    client_to_server: RingOut,
    server_to_client: RingOut,
}

#[derive(Debug, Serialize)]
struct ShowOut {
    name: String,
    protocol: String,
    versions: [u32; 2],
    pid: u32,
    uid: u32,
    ring_max: [u64; 2],
    live_channels: u32,
    channels: Vec<ChannelOut>,
}

#[derive(Debug, Serialize)]
struct PingOut {
    name: String,
    pid: u32,
    uid: u32,
    count: u32,
    /// Query sent to answer received, microseconds.
    min_us: f64,
    avg_us: f64,
    max_us: f64,
    /// Connect included, microseconds.
    avg_total_us: f64,
    samples_us: Vec<f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dir = args.runtime_dir.clone().unwrap_or_else(default_runtime_dir);
    let timeout = Duration::from_millis(args.timeout_ms);
    let result = match &args.command {
        Cmd::List => list(&dir, timeout, args.json),
        Cmd::Show { name } => show(&dir, name, timeout, args.json),
        Cmd::Ping { name, count } => ping(&dir, name, *count, timeout, args.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("shmctl: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn list(dir: &Path, timeout: Duration, json: bool) -> Result<(), String> {
    let names = match control::list_names(dir) {
        Ok(n) => n,
        // No directory: nothing ever ran here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut out = ListOut {
        services: Vec::new(),
        errors: Vec::new(),
    };
    for name in names {
        match control::status(dir, &name, timeout) {
            Ok(s) => out.services.push(ServiceRow {
                name: s.name,
                protocol: s.protocol,
                versions: [*s.versions.start(), *s.versions.end()],
                pid: s.credentials.pid,
                uid: s.credentials.uid,
                channels: s.live_channels,
            }),
            // A stale socket: its service is gone.
            Err(ControlError::NotRunning { .. }) => {}
            Err(e) => out.errors.push(ErrorRow {
                name,
                error: e.to_string(),
            }),
        }
    }
    if json {
        return print_json(&out);
    }
    let w = out
        .services
        .iter()
        .map(|s| s.name.len())
        .chain(out.errors.iter().map(|e| e.name.len()))
        .chain([4])
        .max()
        .unwrap_or(4);
    println!(
        "{:<w$}  {:<16} {:<9} {:>8} {:>6} {:>8}",
        "NAME", "PROTOCOL", "VERSIONS", "PID", "UID", "CHANNELS"
    );
    for s in &out.services {
        println!(
            "{:<w$}  {:<16} {:<9} {:>8} {:>6} {:>8}",
            s.name,
            s.protocol,
            format!("{}..={}", s.versions[0], s.versions[1]),
            s.pid,
            s.uid,
            s.channels
        );
    }
    for e in &out.errors {
        println!("{:<w$}  ({})", e.name, e.error);
    }
    Ok(())
}

fn ring_out(r: &RingStatus) -> RingOut {
    RingOut {
        capacity: r.capacity,
        max_size: r.max_size,
        pending_messages: r.pending_messages,
        used_bytes: r.used_bytes,
        messages_written: r.messages_written,
        messages_read: r.messages_read,
        reader_parked: r.reader_parked,
        writer_waiting: r.writer_waiting,
    }
}

fn parked(p: bool) -> &'static str {
    if p { "parked" } else { "polling" }
}

fn channel_out(c: &ChannelStatus) -> ChannelOut {
    ChannelOut {
        id: c.id.0,
        version: c.version,
        peer_pid: c.peer_pid,
        peer_uid: c.peer_uid,
        messages_received: c.client_to_server.messages_written,
        messages_sent: c.server_to_client.messages_written,
        service_reader: parked(c.client_to_server.reader_parked),
        client_reader: parked(c.server_to_client.reader_parked),
        client_to_server: ring_out(&c.client_to_server),
        server_to_client: ring_out(&c.server_to_client),
    }
}

fn show_out(s: &ServiceStatus) -> ShowOut {
    ShowOut {
        name: s.name.clone(),
        protocol: s.protocol.clone(),
        versions: [*s.versions.start(), *s.versions.end()],
        pid: s.credentials.pid,
        uid: s.credentials.uid,
        ring_max: [s.ring_max.0, s.ring_max.1],
        live_channels: s.live_channels,
        channels: s.channels.iter().map(channel_out).collect(),
    }
}

fn show(dir: &Path, name: &str, timeout: Duration, json: bool) -> Result<(), String> {
    let s = control::status(dir, name, timeout).map_err(|e| e.to_string())?;
    let out = show_out(&s);
    if json {
        return print_json(&out);
    }
    println!(
        "{}: protocol {} versions {}..={}, pid {}, uid {}, rings up to {} / {} bytes, {} channel(s)",
        out.name,
        out.protocol,
        out.versions[0],
        out.versions[1],
        out.pid,
        out.uid,
        out.ring_max[0],
        out.ring_max[1],
        out.live_channels
    );
    if out.channels.is_empty() {
        return Ok(());
    }
    println!(
        "{:>4} {:>3} {:>8} {:>6}  {:<5} {:>9} {:>9} {:>6} {:>9} {:>10} {:>10}  READER",
        "ID", "VER", "PEER", "UID", "RING", "CAPACITY", "MAX", "QUEUED", "BYTES", "WRITTEN", "READ"
    );
    for c in &out.channels {
        for (dir_name, r, reader) in [
            ("c->s", &c.client_to_server, c.service_reader),
            ("s->c", &c.server_to_client, c.client_reader),
        ] {
            println!(
                "{:>4} {:>3} {:>8} {:>6}  {:<5} {:>9} {:>9} {:>6} {:>9} {:>10} {:>10}  {}{}",
                c.id,
                c.version,
                c.peer_pid,
                c.peer_uid,
                dir_name,
                r.capacity,
                r.max_size,
                r.pending_messages,
                r.used_bytes,
                r.messages_written,
                r.messages_read,
                reader,
                if r.writer_waiting {
                    " (writer waits for room)"
                } else {
                    ""
                }
            );
        }
    }
    if out.live_channels as usize > out.channels.len() {
        println!(
            "({} more channels not listed)",
            out.live_channels as usize - out.channels.len()
        );
    }
    Ok(())
}

fn ping(dir: &Path, name: &str, count: u32, timeout: Duration, json: bool) -> Result<(), String> {
    if count == 0 {
        return Err("--count must be at least 1".into());
    }
    let mut samples = Vec::new();
    let mut totals = Vec::new();
    let mut who = None;
    for _ in 0..count {
        let p = control::ping(dir, name, timeout).map_err(|e| e.to_string())?;
        samples.push(p.round_trip.as_secs_f64() * 1e6);
        totals.push(p.total.as_secs_f64() * 1e6);
        who = Some(p.credentials);
    }
    let who = who.ok_or("no ping made")?;
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let out = PingOut {
        name: name.to_owned(),
        pid: who.pid,
        uid: who.uid,
        count,
        min_us: samples.iter().copied().fold(f64::INFINITY, f64::min),
        avg_us: avg(&samples),
        max_us: samples.iter().copied().fold(0.0, f64::max),
        avg_total_us: avg(&totals),
        samples_us: samples,
    };
    if json {
        return print_json(&out);
    }
    println!(
        "{name} (pid {}, uid {}): {count} round trips, min {:.1} µs, avg {:.1} µs, max {:.1} µs \
         (with connect: avg {:.1} µs)",
        out.pid, out.uid, out.min_us, out.avg_us, out.max_us, out.avg_total_us
    );
    Ok(())
}
