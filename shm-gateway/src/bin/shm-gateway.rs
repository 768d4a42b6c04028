//! `shm-gateway`: shm-channel services across machines.
//!
//! ```text
//! shm-gateway run --config gateway.toml [-v]     # until SIGINT / SIGTERM
//! shm-gateway check --config gateway.toml        # parse, check, load the certificates
//! shm-gateway stats --control /path/to/control.sock
//! shm-gateway make-certs --dir certs a.example b.example
//! ```
//!
//! See docs/NETWORK.md ("Gateway") for a two-machine walk-through.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use shm_gateway::{Config, Gateway};

/// Forwards shm-channel services between machines over QUIC or TCP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gateway until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// More logging (-v: debug, -vv: trace).
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Checks a configuration file (and that its certificates load), then exits.
    Check {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Prints the counters of a running gateway (its `[gateway] control` socket).
    Stats {
        /// The control socket.
        #[arg(long)]
        control: PathBuf,
    },
    /// Makes a CA (`ca.pem`) and, per name, a certificate it signs (`NAME.pem`, `NAME.key`).
    MakeCerts {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "shm-gateway CA")]
        ca_name: String,
        /// The names (DNS names of the gateways and clients).
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Args::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Run { config, verbose } => {
            let level = match verbose {
                0 => tracing::Level::INFO,
                1 => tracing::Level::DEBUG,
                _ => tracing::Level::TRACE,
            };
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| e.to_string())?;
            }
            let gateway = Gateway::start(config).map_err(|e| e.to_string())?;
            // Tests and scripts wait for this line.
            println!("shm-gateway: ready");
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::info!("stopping; counters:\n{}", gateway.stats());
            Ok(())
        }
        Command::Check { config } => {
            let c = Config::load(&config).map_err(|e| e.to_string())?;
            if let Some(t) = &c.tls {
                shm_gateway::pki::load_identity(&t.cert, &t.key).map_err(|e| e.to_string())?;
                shm_gateway::pki::load_certs(&t.ca).map_err(|e| e.to_string())?;
            }
            println!(
                "{}: ok ({} exports, {} imports)",
                config.display(),
                c.export.len(),
                c.import.len()
            );
            Ok(())
        }
        Command::Stats { control } => {
            let stats = shm_gateway::control::query(&control)?;
            print!("{stats}");
            Ok(())
        }
        Command::MakeCerts {
            dir,
            ca_name,
            names,
        } => {
            let made = shm_gateway::pki::make_certs(&ca_name, &names).map_err(|e| e.to_string())?;
            made.write(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            println!("wrote {}/ca.pem and a .pem + .key per name", dir.display());
            Ok(())
        }
    }
}
