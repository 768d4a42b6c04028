//! Regenerates the generated sections of `docs/BENCHMARKS.md` and the
//! charts in `docs/bench/` from the last `cargo bench -p benches` run.
//!
//! ```text
//! cargo run -p benches --bin report [-- --criterion DIR] [--page FILE] [--charts DIR]
//! ```
//!
//! criterion's directory defaults to `$CRITERION_HOME`, else
//! `$CARGO_TARGET_DIR/criterion`, else `<workspace>/target/criterion`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use benches::report::{self, Paths};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let criterion = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("criterion"))
        })
        .unwrap_or_else(|| root.join("target").join("criterion"));
    let mut paths = Paths {
        criterion,
        page: root.join("docs").join("BENCHMARKS.md"),
        charts: root.join("docs").join("bench"),
        charts_rel: "bench".to_owned(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("report: {arg} needs a value");
                std::process::exit(2);
            })
        };
        match arg.as_str() {
            "--criterion" => paths.criterion = value().into(),
            "--page" => paths.page = value().into(),
            "--charts" => paths.charts = value().into(),
            "-h" | "--help" => {
                println!("report [--criterion DIR] [--page FILE] [--charts DIR]");
                return;
            }
            other => {
                eprintln!("report: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    // The page links the charts relative to itself.
    if let (Some(page_dir), Ok(charts)) = (
        paths.page.parent(),
        paths.charts.canonicalize().or_else(|_| {
            std::fs::create_dir_all(&paths.charts)?;
            paths.charts.canonicalize()
        }),
    ) && let Ok(page_dir) = page_dir.canonicalize()
        && let Ok(rel) = charts.strip_prefix(&page_dir)
    {
        paths.charts_rel = rel.display().to_string();
    }
    match report::run(&paths) {
        Ok(written) => {
            for path in written {
                println!("report: wrote {}", path.display());
            }
        }
        Err(e) => {
            eprintln!("report: {e}");
            std::process::exit(1);
        }
    }
}
