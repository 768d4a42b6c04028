//! Process identity and liveness.

use rustix::io::Errno;
use rustix::process::Pid;

/// This process's id.
pub(crate) fn pid() -> u32 {
    // A pid is always positive, so the conversion is lossless.
    rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs()
}

/// Whether a process with id `pid` exists and has not exited: `kill(pid, 0)`, where `ESRCH`
/// means dead and `EPERM` (it exists, we may not signal it) means alive; then, for a process
/// that exists, `/proc/<pid>/stat` is read to count a zombie (exited, not yet reaped by its
/// parent) as dead.
///
/// Costs a `kill` and a small `/proc` read: meant for slow paths (after a bounded spin on a
/// lock), not for every operation.
///
/// Caveats, for whoever recovers a lock by the owner's pid:
/// * **pid reuse**: once a process is dead and reaped, the kernel may give its pid to a new,
///   unrelated process, which this function then reports as alive. The answer errs on the
///   side of "alive" (a lock is recovered late, never stolen from a live owner) as long as the
///   recorded pid is of a process that did hold the lock; pairing the pid with the process's
///   start time would close the gap.
/// * **pid namespaces**: pids are only comparable inside one pid namespace. Both processes
///   must share it (true for processes of one container or host), otherwise the pid recorded
///   by the peer names some other process here, or none.
/// * `pid` 0 and pids above `i32::MAX` name no single process (`kill` would address a
///   process group) and are reported as not alive.
/// * Any other error (unexpected) is reported as alive, for the same reason as above.
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Err(Errno::SRCH) => false,
        Ok(()) | Err(_) => !is_zombie(pid),
    }
}

/// Whether `/proc/<pid>/stat` says the process is a zombie (`Z`) or dead (`X`). False when it
/// cannot be read (no `/proc`, or a race with the process going away and being reaped, which
/// the next `kill(pid, 0)` sees).
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": comm may contain spaces and parentheses, so the state is the first
    // field after the LAST ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn own_pid_is_alive() {
        assert_eq!(pid(), std::process::id());
        assert!(pid_alive(pid()));
    }

    #[test]
    fn impossible_pids_are_not_alive() {
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        assert!(!pid_alive(i32::MAX as u32 + 1));
    }

    #[test]
    fn pid_1_exists_even_if_we_may_not_signal_it() {
        // EPERM (unprivileged) or Ok (root / container init we own): alive either way.
        assert!(pid_alive(1));
    }

    #[test]
    fn exited_child_is_dead_before_and_after_reaping() {
        let mut child = Command::new("true").spawn().unwrap();
        let id = child.id();
        // Before `wait`, the exited child is a zombie: it must already count as dead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(id) {
            assert!(
                Instant::now() < deadline,
                "child {id} still alive after 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(child.wait().unwrap().success());
        // Reaped: ESRCH (unless the pid was reused in between, which the caveat allows).
        let _ = pid_alive(id);
    }
}
