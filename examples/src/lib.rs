//! Runnable demos of shm-channel; see the `[[example]]` targets of this package.
//!
//! What the two-process demos share: running their own executable again as
//! the server ([`ServerGuard`]) and connecting once it is up ([`connect`]).
#![forbid(unsafe_code)]

use std::error::Error;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shm_channel::service::ConnectError;

/// The errors the demos report.
pub type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The server process; killed and reaped if dropped before it exited.
#[derive(Debug)]
pub struct ServerGuard(Option<Child>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ServerGuard {
    /// Runs this executable again with `args` (which make it the server).
    /// It inherits stderr, so that its errors show up in the demo's output.
    pub fn spawn_self(args: &[&str]) -> Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(ServerGuard(Some(child)))
    }

    /// The process, while it runs.
    pub fn child(&mut self) -> Result<&mut Child> {
        self.0.as_mut().ok_or_else(|| "the server is gone".into())
    }

    /// Waits for the server to exit; fails unless it succeeded in time.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child()?.try_wait()? {
                self.0 = None;
                if status.success() {
                    return Ok(());
                }
                return Err(format!("the server failed ({status})").into());
            }
            if Instant::now() >= deadline {
                return Err(format!("the server did not exit within {timeout:?}").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Calls `connect` until the server has bound its service (`NotRunning`
/// until then), giving up after `timeout` or when the server exits.
pub fn connect<T>(
    server: &mut ServerGuard,
    timeout: Duration,
    mut connect: impl FnMut() -> Result<T, ConnectError>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect() {
            Ok(connected) => return Ok(connected),
            Err(ConnectError::NotRunning { .. }) => {
                if let Some(status) = server.child()?.try_wait()? {
                    return Err(format!("the server exited before serving ({status})").into());
                }
                if Instant::now() >= deadline {
                    return Err(format!("the server did not come up in {timeout:?}").into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
