//! `idlc`: the standalone checker, ring-size calculator and formatter of the
//! shm-channel IDL (`docs/IDL.md`, section "`idlc`").
//!
//! A thin shell over `idl-parser`: every rule lives there, this file only
//! reads files, prints and chooses the exit code.
//!
//! Exit codes, for every subcommand:
//! - `0`: success;
//! - `1`: the IDL is invalid (diagnostics printed on stderr), or
//!   `fmt --check` found the file not canonically formatted, or `gen --check`
//!   found the output file stale;
//! - `2`: a usage error (clap's own exit code) or an I/O error. Where both an
//!   I/O error and invalid IDL occur (`check` over several files), `2` wins:
//!   a file that could not be read was not checked at all.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{self, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use idl_parser::Diagnostics;
use idl_parser::model::Model;
use idl_parser::sizes::RingSize;
use serde::Serialize;

/// Checker, ring-size calculator and formatter for the shm-channel IDL.
#[derive(Debug, Parser)]
#[command(
    name = "idlc",
    version,
    about = "Checker, ring-size calculator and formatter for the shm-channel IDL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check IDL files (and their imports); print every diagnostic.
    ///
    /// Exits 0 when every file is valid, 1 when one is not, 2 when a file
    /// cannot be read.
    Check {
        /// The `.idl` files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Generate the Rust code of an IDL file (what `include_idl!` expands
    /// to), formatted, on stdout or into OUT.
    Gen {
        /// The `.idl` file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Write the code into this file (only when its content changes)
        /// instead of printing it.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Write nothing; exit 1 when OUT is not what `gen` would write.
        #[arg(long, requires = "output")]
        check: bool,
        /// Leave out the async clients (for a crate that uses shm-channel
        /// without its `tokio` feature).
        #[arg(long)]
        no_async: bool,
        /// Leave out the network entry points `connect_url` and `serve_url`
        /// (for a crate that uses shm-channel without its `net` feature).
        #[arg(long)]
        no_net: bool,
    },
    /// Print each protocol's ring maxima, per direction, and which message
    /// decided each.
    Sizes {
        /// The `.idl` file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print one JSON array, an object per protocol, instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the canonical formatting of an IDL file on stdout.
    Fmt {
        /// The `.idl` file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print nothing; exit 1 when the file is not canonically formatted.
        #[arg(long, conflicts_with = "write")]
        check: bool,
        /// Rewrite the file in place (only when its content changes) instead
        /// of printing it.
        #[arg(short, long)]
        write: bool,
    },
}

/// Why a command did not succeed; decides the exit code.
#[derive(Debug)]
enum Failure {
    /// Invalid IDL or an unformatted file: exit 1. What to say was printed.
    Rejected,
    /// A file or stream could not be read or written: exit 2.
    Io(String),
}

impl Failure {
    fn io(path: &Path, what: &str, error: &io::Error) -> Self {
        Failure::Io(format!("{what} `{}`: {error}", path.display()))
    }
}

fn main() -> ExitCode {
    // Usage errors exit with clap's code 2 (and `--help` with 0) from here.
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { files } => check(&files),
        Command::Gen {
            file,
            output,
            check,
            no_async,
            no_net,
        } => {
            let opts = idl_codegen::Options::default()
                .async_client(!no_async)
                .net(!no_net);
            generate(&file, output.as_deref(), check, &opts)
        }
        Command::Sizes { file, json } => sizes(&file, json),
        Command::Fmt { file, check, write } => fmt(&file, check, write),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rejected) => ExitCode::from(1),
        Err(Failure::Io(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// `idlc check FILE...`: every file is checked, even after a failure, so
/// that one run reports everything.
fn check(files: &[PathBuf]) -> Result<(), Failure> {
    let mut unreadable = 0usize;
    let mut invalid = false;
    for file in files {
        match load_model(file) {
            Ok(_) => {}
            Err(Failure::Rejected) => invalid = true,
            Err(Failure::Io(message)) => {
                // Said now, in order with the other files' diagnostics.
                eprintln!("error: {message}");
                unreadable += 1;
            }
        }
    }
    if unreadable > 0 {
        Err(Failure::Io(format!(
            "{unreadable} of {} file(s) could not be checked",
            files.len()
        )))
    } else if invalid {
        Err(Failure::Rejected)
    } else {
        Ok(())
    }
}

/// `idlc gen FILE [-o OUT] [--check] [--no-async] [--no-net]`.
fn generate(
    file: &Path,
    output: Option<&Path>,
    check: bool,
    opts: &idl_codegen::Options,
) -> Result<(), Failure> {
    let model = load_model(file)?;
    let code = idl_codegen::generate_file_with(&model, opts);
    let Some(out) = output else {
        return print_stdout(&code);
    };
    let current = match std::fs::read_to_string(out) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Failure::io(out, "cannot read", &e)),
    };
    if current.as_deref() == Some(code.as_str()) {
        return Ok(());
    }
    if check {
        let why = if current.is_some() {
            "is stale"
        } else {
            "does not exist"
        };
        eprintln!(
            "{}: {why}; `idlc gen {} -o {}` regenerates it",
            out.display(),
            file.display(),
            out.display()
        );
        return Err(Failure::Rejected);
    }
    // Only a changed file is written: an unchanged mtime spares rebuilds.
    std::fs::write(out, code).map_err(|e| Failure::io(out, "cannot write", &e))
}

/// `idlc sizes FILE [--json]`.
fn sizes(file: &Path, json: bool) -> Result<(), Failure> {
    let model = load_model(file)?;
    let text = if json {
        sizes_json(&model)
    } else {
        sizes_table(&model)
    };
    print_stdout(&text)
}

/// One protocol in `idlc sizes --json`, field names as IDL.md pins them.
#[derive(Serialize)]
struct JsonProtocol<'m> {
    protocol: &'m str,
    client_to_server: JsonRing,
    server_to_client: JsonRing,
}

#[derive(Serialize)]
struct JsonRing {
    max_bytes: u64,
    decided_by: String,
}

impl From<&RingSize> for JsonRing {
    fn from(ring: &RingSize) -> Self {
        JsonRing {
            max_bytes: ring.max_bytes,
            decided_by: ring.decided_by.to_string(),
        }
    }
}

fn sizes_json(model: &Model) -> String {
    let protocols: Vec<JsonProtocol<'_>> = model
        .protocols
        .iter()
        .map(|p| JsonProtocol {
            protocol: &p.name,
            client_to_server: (&p.ring_sizes.client_to_server).into(),
            server_to_client: (&p.ring_sizes.server_to_client).into(),
        })
        .collect();
    // Serialising plain structs of strings and integers cannot fail; the
    // fallback keeps the promise of printing one JSON array regardless.
    let mut text = serde_json::to_string(&protocols).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}

/// The human form: one row per protocol and direction, columns aligned.
fn sizes_table(model: &Model) -> String {
    let header = ["protocol", "direction", "max bytes", "", "decided by"];
    let mut rows: Vec<[String; 5]> = Vec::new();
    for p in &model.protocols {
        for (direction, ring) in [
            ("client -> server", &p.ring_sizes.client_to_server),
            ("server -> client", &p.ring_sizes.server_to_client),
        ] {
            rows.push([
                p.name.clone(),
                direction.to_owned(),
                ring.max_bytes.to_string(),
                format!("({})", human_bytes(ring.max_bytes)),
                ring.decided_by.to_string(),
            ]);
        }
    }
    if rows.is_empty() {
        return "no protocol in this file\n".to_owned();
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            // Numbers align right, so that their magnitudes line up.
            let _ = match i {
                2 => write!(line, "{cell:>width$}  "),
                _ => write!(line, "{cell:<width$}  "),
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `4096` -> `4 KiB`; exact multiples only, else bytes.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} B")
}

/// `idlc fmt FILE [--check | --write]`.
fn fmt(file: &Path, check: bool, write: bool) -> Result<(), Failure> {
    let source = read(file)?;
    let formatted = match idl_parser::fmt::format_source(file, &source) {
        Ok(formatted) => formatted,
        Err(diagnostics) => {
            print_diagnostics(&diagnostics);
            return Err(Failure::Rejected);
        }
    };
    if check {
        if formatted == source {
            return Ok(());
        }
        eprintln!(
            "{}: not canonically formatted (`idlc fmt --write` fixes it)",
            file.display()
        );
        return Err(Failure::Rejected);
    }
    if write {
        // Never touch a file whose content does not change: its mtime would
        // make build tools redo work for nothing.
        if formatted != source {
            std::fs::write(file, formatted).map_err(|e| Failure::io(file, "cannot write", &e))?;
        }
        return Ok(());
    }
    print_stdout(&formatted)
}

/// Reads and checks `file`; diagnostics are printed here.
fn load_model(file: &Path) -> Result<Model, Failure> {
    let source = read(file)?;
    match idl_parser::check_source(file, &source, &idl_parser::FsLoader) {
        Ok(checked) => Ok(checked.model),
        Err(diagnostics) => {
            print_diagnostics(&diagnostics);
            Err(Failure::Rejected)
        }
    }
}

fn read(file: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|e| Failure::io(file, "cannot read", &e))
}

/// Renders diagnostics on stderr, in colour when stderr is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>).
fn print_diagnostics(diagnostics: &Diagnostics) {
    let color =
        io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let text = diagnostics.render(color);
    let mut stderr = io::stderr().lock();
    // Nothing better can be done when stderr itself is gone; the exit code
    // still says what happened.
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        // `idlc fmt x.idl | head` closing the pipe is not an error of ours.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::io(Path::new("<stdout>"), "cannot write to", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_exact_units() {
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(1 << 20), "1 MiB");
        assert_eq!(human_bytes(12288), "12 KiB");
        assert_eq!(human_bytes(100), "100 B");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
