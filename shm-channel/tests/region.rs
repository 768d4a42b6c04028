//! Cross-process tests of regions: the guard page, and two processes sharing one ring region
//! (bytes and shared futexes).
//!
//! Regions are crate-private (the ring is their only user), so this test compiles the `sys`
//! and `region` sources into itself with `#[path]` rather than widening the public API. Their
//! unit tests are compiled in too and run here a second time; that is cheap.
//!
//! The test binary re-executes itself (`--exact <test> --nocapture`, through
//! `support::ChildGuard`) with `support::CHILD_ENV` set to tell the child what to do; the
//! parent checks how the child ended. Every child is killed if it has not ended within
//! `support::WATCHDOG`. A child's stdout goes to a pipe the parent does not read; that is
//! fine, since these children print no more than libtest's opening lines.

#![allow(
    dead_code,
    reason = "the included modules carry API this test does not call"
)]

#[path = "../src/region.rs"]
mod region;
mod support;
#[path = "../src/sys/mod.rs"]
mod sys;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use region::{MemfdRegion, Region, RegionError};
use support::{ChildGuard, WATCHDOG, child_role, unique_name};
use sys::WaitOutcome;

/// Path through which a child opens the parent's memfd (`/proc/<pid>/fd/<n>`).
const FD_PATH_ENV: &str = "SHM_CHANNEL_REGION_TEST_FD";

const SIGSEGV: i32 = rustix::process::Signal::SEGV.as_raw();

/// What a guard-page child touches.
#[derive(Clone, Copy)]
enum Touch {
    /// The last byte of the region (`max_len - 1`), fully mapped: must succeed.
    LastValidByte,
    /// The first byte of the guard page (`max_len`): must die of SIGSEGV.
    AfterMax,
    /// The first byte of the guard page of a region opened from a received fd.
    AfterMaxOpened,
    /// The first byte past the mapped prefix of a region that has not grown yet: SIGSEGV.
    PastMappedLen,
}

/// Child side of the guard-page tests: never returns.
fn touch_child(touch: Touch) -> ! {
    // This child is meant to die of SIGSEGV: no core file, please.
    let _ = sys::test_support::disable_core_dumps();
    let max = 16 * sys::page_size();
    let created = MemfdRegion::create(&unique_name("guard"), max, max).expect("create");
    let (region, offset) = match touch {
        Touch::LastValidByte => (created, max - 1),
        Touch::AfterMax => (created, max),
        Touch::AfterMaxOpened => {
            let fd = created.fd().try_clone_to_owned().expect("dup");
            (MemfdRegion::open(fd, max).expect("open"), max)
        }
        Touch::PastMappedLen => {
            let small =
                MemfdRegion::create(&unique_name("guard-small"), max, 0).expect("create small");
            let mapped = small.mapped_len();
            assert!(mapped < max);
            (small, mapped)
        }
    };
    let p = region.base().wrapping_add(offset);
    // SAFETY: NOT sound for the faulting roles, on purpose: this child exists to show that
    // the access faults. For `LastValidByte`, `offset < mapped_len == max_len`, so the byte is
    // mapped read-write and only this thread touches it.
    unsafe {
        p.write_volatile(0x5a);
        assert_eq!(p.read_volatile(), 0x5a);
    }
    // Survived: exit 0 (what the parent expects only for `LastValidByte`).
    std::process::exit(0);
}

fn run_touch_test(test: &str, role: &str, touch: Touch) -> ExitStatus {
    if child_role().as_deref() == Some(role) {
        touch_child(touch);
    }
    ChildGuard::spawn(test, role, &[]).wait()
}

#[test]
fn guard_page_after_max_faults() {
    let status = run_touch_test("guard_page_after_max_faults", "after-max", Touch::AfterMax);
    assert_eq!(status.signal(), Some(SIGSEGV), "{status:?}");
}

#[test]
fn guard_page_of_an_opened_region_faults() {
    let status = run_touch_test(
        "guard_page_of_an_opened_region_faults",
        "after-max-opened",
        Touch::AfterMaxOpened,
    );
    assert_eq!(status.signal(), Some(SIGSEGV), "{status:?}");
}

#[test]
fn unmapped_part_of_the_reservation_faults() {
    let status = run_touch_test(
        "unmapped_part_of_the_reservation_faults",
        "past-mapped",
        Touch::PastMappedLen,
    );
    assert_eq!(status.signal(), Some(SIGSEGV), "{status:?}");
}

#[test]
fn last_valid_byte_is_fine() {
    // The control: the same child touching the last byte inside the maximum exits cleanly, so
    // the SIGSEGV tests above cannot pass by accident.
    let status = run_touch_test(
        "last_valid_byte_is_fine",
        "last-valid",
        Touch::LastValidByte,
    );
    assert!(status.success(), "{status:?}");
}

/// The word at `offset` of a mapped region, as an atomic.
fn word(region: &MemfdRegion, offset: usize) -> &AtomicU32 {
    assert!(offset.is_multiple_of(4) && offset + 4 <= region.mapped_len());
    // Soundness:
    // 1. The 4 bytes are inside the mapped prefix (asserted), which stays mapped as long as
    //    `region` lives, and the returned reference borrows `region`.
    // 2. `base` is page aligned and `offset` a multiple of 4: aligned for `AtomicU32`.
    // 3. Both processes access these bytes only through atomics (and futex syscalls).
    // SAFETY: sound for the reasons given just above.
    unsafe { &*region.base().add(offset).cast::<AtomicU32>() }
}

/// Offsets of the words of the cross-process test, and where the pattern goes.
const PARENT_WORD: usize = 0;
const CHILD_WORD: usize = 64;
const PATTERN: &[u8] = b"written by the parent in the fourth page";

/// Child side: opens the parent's memfd through /proc, checks the bytes, answers through a
/// shared futex, and waits for the parent's go through another.
fn sharing_child() -> ! {
    let run = || -> Result<(), String> {
        let path = std::env::var(FD_PATH_ENV).map_err(|e| format!("{FD_PATH_ENV}: {e}"))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        let page = sys::page_size();
        let max = 16 * page;
        let fd = OwnedFd::from(file);
        // The hostile part first: this process holds the parent's memfd and tries to change its
        // length both ways. The seals make the kernel refuse both.
        for len in [0, page as u64, max as u64 + page as u64, 1 << 40] {
            match rustix::fs::ftruncate(&fd, len) {
                Err(rustix::io::Errno::PERM) => {}
                other => return Err(format!("ftruncate to {len}: {other:?}, not EPERM")),
            }
        }
        let region = MemfdRegion::open(fd, max).map_err(|e| e.to_string())?;
        if region.mapped_len() != page {
            return Err(format!(
                "mapped {} bytes on open, expected one page",
                region.mapped_len()
            ));
        }
        match region.ensure_mapped(max + 1) {
            Err(RegionError::TooLarge { .. }) => {}
            other => return Err(format!("expected TooLarge, got {other:?}")),
        }
        region.ensure_mapped(4 * page).map_err(|e| e.to_string())?;
        let at = 3 * page;
        // SAFETY: [3 pages, 3 pages + PATTERN.len()) is inside the 4 mapped pages; the parent
        // wrote it before spawning us and does not write it again.
        let seen = unsafe { std::slice::from_raw_parts(region.base().add(at), PATTERN.len()) };
        if seen != PATTERN {
            return Err(format!("pattern mismatch: {seen:?}"));
        }
        let mine = word(&region, CHILD_WORD);
        mine.store(sys::pid(), Ordering::Release);
        sys::futex_wake(mine, u32::MAX).map_err(|e| e.to_string())?;
        let go = word(&region, PARENT_WORD);
        let deadline = Instant::now() + WATCHDOG;
        while go.load(Ordering::Acquire) == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no go from the parent within the watchdog".into());
            }
            sys::futex_wait(go, 0, Some(left)).map_err(|e| e.to_string())?;
        }
        // The parent grew the ring meanwhile: follow it.
        region.ensure_mapped(8 * page).map_err(|e| e.to_string())?;
        let last = word(&region, 8 * page - 4);
        if last.load(Ordering::Acquire) != 0xfeed {
            return Err("grown part not shared".into());
        }
        Ok(())
    };
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("child: {e}");
            std::process::exit(3)
        }
    }
}

#[test]
fn two_processes_share_bytes_growth_and_futexes() {
    if child_role().as_deref() == Some("sharing") {
        sharing_child();
    }
    let page = sys::page_size();
    let max = 16 * page;
    let region = MemfdRegion::create(&unique_name("share"), max, 4 * page).expect("create");
    // SAFETY: [3 pages, 3 pages + PATTERN.len()) is inside the 4 mapped pages; no other thread
    // or process uses the region yet.
    unsafe {
        std::ptr::copy_nonoverlapping(PATTERN.as_ptr(), region.base().add(3 * page), PATTERN.len());
    }
    let fd_path = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        region.fd().as_raw_fd()
    );
    let child = ChildGuard::spawn(
        "two_processes_share_bytes_growth_and_futexes",
        "sharing",
        &[(FD_PATH_ENV, fd_path)],
    );

    // Park on the child's word until it writes its pid there and wakes us.
    let childs = word(&region, CHILD_WORD);
    let deadline = Instant::now() + WATCHDOG;
    let mut parked = 0;
    while childs.load(Ordering::Acquire) == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "child never answered");
        if sys::futex_wait(childs, 0, Some(left)).expect("futex_wait") == WaitOutcome::Woken {
            parked += 1;
        }
    }
    assert_eq!(childs.load(Ordering::Acquire), child.id());
    // The child's attempts to change the file's length all failed.
    assert_eq!(sys::file_len(region.fd()).expect("fstat"), max as u64);
    eprintln!("parent woken through a shared futex {parked} time(s)");

    region.ensure_mapped(8 * page).expect("grow");
    word(&region, 8 * page - 4).store(0xfeed, Ordering::Release);
    let go = word(&region, PARENT_WORD);
    go.store(1, Ordering::Release);
    sys::futex_wake(go, u32::MAX).expect("futex_wake");

    let status = child.wait();
    assert!(status.success(), "child failed: {status:?}");
}
