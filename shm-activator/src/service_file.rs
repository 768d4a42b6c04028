//! Service files: `<services dir>/<name>.toml`, one per activatable service.
//!
//! ```toml
//! command = "/usr/libexec/display-service"   # required: what starts it
//! args = ["--fast"]                          # optional
//! uid = 1000                                 # required: the uid it must run as
//! gid = 1000                                 # optional: its group (default: uid's group)
//! protocol = "Display"                       # optional, informational
//! env = { RUST_LOG = "info" }                # optional: added to its environment
//! restart = "on-failure"                     # never (default) | on-failure | always
//! max_restarts = 5                           # optional (default 3)
//! restart_backoff_ms = 200                   # first delay; doubles, at most 10 s (default 100)
//! start_timeout_ms = 5000                    # how long it may take to bind (default 5000)
//! ```
//!
//! The file name is the service name (the name a client connects to). Unknown keys are an
//! error, so a misspelt `restrat` is not silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shm_channel::service::validate_name;
use thiserror::Error;

/// When a service that ended is started again without a client asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never: the next client that asks starts it again.
    #[default]
    Never,
    /// When it exits with a non-zero status or is killed by a signal.
    OnFailure,
    /// Whenever it exits.
    Always,
}

/// A parsed service file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// The program to run (a path; a bare name is looked up in `PATH`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The uid it must run as: the activator starts it as this uid, and clients refuse a
    /// listener of any other uid.
    pub uid: u32,
    /// Its group (default: the primary group of `uid` in `/etc/passwd`, else `uid`).
    #[serde(default)]
    pub gid: Option<u32>,
    /// The protocol it serves (shown by tools; the handshake checks the real one).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Variables added to its environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// When to restart it after it ends.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// At most this many restarts in a row (reset when a client activates it again).
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The delay before the first restart; doubled for each further one, at most 10 s.
    #[serde(default = "default_backoff_ms")]
    pub restart_backoff_ms: u64,
    /// How long it may take from being started to listening.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
}

fn default_max_restarts() -> u32 {
    3
}

fn default_backoff_ms() -> u64 {
    100
}

fn default_start_timeout_ms() -> u64 {
    5000
}

/// The longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl ServiceFile {
    /// Parses the text of a service file.
    pub fn parse(text: &str) -> Result<ServiceFile, String> {
        let file: ServiceFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.command.is_empty() {
            return Err("`command` is empty".into());
        }
        if file.start_timeout_ms == 0 {
            return Err("`start_timeout_ms` must be at least 1".into());
        }
        Ok(file)
    }

    /// How long the service may take to bind.
    pub fn start_timeout(&self) -> Duration {
        Duration::from_millis(self.start_timeout_ms)
    }

    /// The delay before restart number `n` (1-based): the backoff doubled `n - 1` times, at
    /// most 10 s.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = Duration::from_millis(self.restart_backoff_ms);
        base.saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(MAX_BACKOFF)
    }

    /// Whether a service that ended with `success` is restarted under this policy.
    pub fn restarts_after(&self, success: bool) -> bool {
        match self.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        }
    }
}

/// Why a service file could not be used.
#[derive(Debug, Error)]
pub enum ServiceFileError {
    /// No file names the service.
    #[error("no service file {}", path.display())]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The name cannot be a service name (so it names no file).
    #[error("{name:?} is not a valid service name: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The file exists but cannot be read or parsed.
    #[error("service file {} is invalid: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads `<dir>/<name>.toml`.
pub fn load(dir: &Path, name: &str) -> Result<ServiceFile, ServiceFileError> {
    validate_name(name).map_err(|reason| ServiceFileError::InvalidName {
        name: name.to_owned(),
        reason,
    })?;
    let path = dir.join(format!("{name}.toml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ServiceFileError::Missing { path });
        }
        Err(e) => {
            return Err(ServiceFileError::Invalid {
                path,
                reason: e.to_string(),
            });
        }
    };
    ServiceFile::parse(&text).map_err(|reason| ServiceFileError::Invalid { path, reason })
}

/// Every service file in `dir`, by name, with the files that could not be used.
pub fn load_all(
    dir: &Path,
) -> std::io::Result<Vec<(String, Result<ServiceFile, ServiceFileError>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let file = entry?.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".toml")) else {
            continue;
        };
        out.push((name.to_owned(), load(dir, name)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The primary group of `uid` from `/etc/passwd`, if listed.
pub(crate) fn primary_gid(uid: u32) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let (_, _, u, g) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        (u.parse::<u32>().ok()? == uid).then(|| g.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_unknown_keys_are_refused() {
        let f = ServiceFile::parse(
            r#"
            command = "/bin/echo-service"
            args = ["-v"]
            uid = 1000
            protocol = "Echo"
            env = { A = "1" }
            restart = "on-failure"
            max_restarts = 2
            restart_backoff_ms = 50
            start_timeout_ms = 1500
            "#,
        )
        .unwrap();
        assert_eq!(f.restart, RestartPolicy::OnFailure);
        assert_eq!(f.args, ["-v"]);
        assert_eq!(f.env["A"], "1");
        assert_eq!(f.start_timeout(), Duration::from_millis(1500));
        assert_eq!(f.backoff(1), Duration::from_millis(50));
        assert_eq!(f.backoff(3), Duration::from_millis(200));
        assert_eq!(f.backoff(40), MAX_BACKOFF);
        assert!(f.restarts_after(false) && !f.restarts_after(true));

        let minimal = ServiceFile::parse("command = \"x\"\nuid = 0").unwrap();
        assert_eq!(minimal.restart, RestartPolicy::Never);
        assert!(!minimal.restarts_after(false));

        let typo = ServiceFile::parse("command = \"x\"\nuid = 0\nrestrat = \"always\"");
        assert!(typo.unwrap_err().contains("restrat"));
        assert!(
            ServiceFile::parse("command = \"x\"")
                .unwrap_err()
                .contains("uid")
        );
        assert!(ServiceFile::parse("command = \"x\"\nuid = 0\nrestart = \"sometimes\"").is_err());
    }

    #[test]
    fn names_that_are_not_service_names_name_no_file() {
        for bad in ["", "../etc/passwd", ".activator", "a/b", &"x".repeat(65)] {
            assert!(matches!(
                load(Path::new("/nonexistent"), bad),
                Err(ServiceFileError::InvalidName { .. })
            ));
        }
        assert!(matches!(
            load(Path::new("/nonexistent"), "ok-name"),
            Err(ServiceFileError::Missing { .. })
        ));
    }
}
