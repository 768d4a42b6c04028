//! `shm-activator`: starts shm-channel services on demand from service files.
//!
//! ```text
//! shm-activator --services /etc/shm-channel/services [--runtime-dir DIR] [--shared] [-v]
//! ```
//!
//! Listens on `.activator.sock` in the runtime directory (the default one of
//! `shm_channel::service::default_runtime_dir`); runs until SIGINT or SIGTERM, then kills the
//! services it started and exits (after a SIGKILL they live on as orphans). See
//! docs/SERVICES.md.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use shm_activator::{Activator, ActivatorConfig, service_file};
use shm_channel::service::{Access, CredentialPolicy, default_runtime_dir};

/// Starts shm-channel services on demand from service files.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The directory of service files (`<name>.toml`).
    #[arg(long)]
    services: PathBuf,
    /// The runtime directory (default: $SHM_CHANNEL_RUNTIME_DIR, $XDG_RUNTIME_DIR/shm-channel
    /// or /tmp/shm-channel-UID).
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// Let other users reach the activator's socket (the directory may then be 0711).
    #[arg(long)]
    shared: bool,
    /// Also let these uids ask for services (repeatable).
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// Check the service files, print what is wrong, and exit.
    #[arg(long)]
    check: bool,
    /// More logging (-v: debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = if args.verbose > 0 {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let files = match service_file::load_all(&args.services) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "shm-activator: cannot read {}: {e}",
                args.services.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut bad = 0;
    for (name, file) in &files {
        match file {
            Ok(f) => {
                tracing::info!(name, command = %f.command, uid = f.uid, restart = ?f.restart, "service file")
            }
            Err(e) => {
                bad += 1;
                tracing::error!(name, error = %e, "service file skipped");
            }
        }
    }
    if args.check {
        println!("{} service files, {bad} invalid", files.len());
        return if bad == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    let mut policy = CredentialPolicy::same_uid();
    for uid in args.allow_uids {
        policy = policy.allow_uid(uid);
    }
    let mut config = ActivatorConfig::new(
        args.runtime_dir.unwrap_or_else(default_runtime_dir),
        args.services,
    );
    config.policy = policy;
    if args.shared {
        config.access = Access::OtherUsers;
    }
    let activator = match Activator::start(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shm-activator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("shm-activator: cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    activator.wait_for(&stop);
    tracing::info!("stopping: the services started are killed");
    drop(activator);
    ExitCode::SUCCESS
}
