//! Waiting on a ring: an adaptive spin, then parking on a doorbell.
//!
//! While the peer is active nobody makes a system call: a receiver finds
//! messages by reading the ring, a writer finds room the same way. Only a
//! side that found nothing for a while parks, and only a parked side costs
//! its peer a wake-up call.
//!
//! # Doorbells
//!
//! Each ring has two doorbell words in its header (see `docs/LAYOUT.md`):
//! the reader's (non-zero while the reader sleeps or is about to) and the
//! writers' (non-zero while a writer waits for room). The handshake is
//! Dekker's: the sleeper stores its doorbell, issues a `SeqCst` fence, and
//! looks at the ring once more before sleeping; the other side publishes
//! its change (a message, or room), issues a `SeqCst` fence, and loads the
//! doorbell. One of the two always sees the other, so a wake-up is never
//! lost, and a side that finds the doorbell at zero makes no system call.
//!
//! Whoever finds the doorbell set swaps it to zero and rings: with a
//! **futex** on the doorbell word itself when the ring has no doorbell fds
//! (a ring used within one process, or between processes without a
//! channel), or by signalling an **eventfd** when the channel attached them.
//! Channels use eventfds because a parked receiver must also wake when its
//! peer dies (the eventfd is polled together with the liveness socket) and
//! because epoll and tokio can wait on an fd but not on a futex. On this
//! machine class both cost the same kernel wake-up (tens of microseconds),
//! which is why the spin before parking matters.
//!
//! # Adaptive spin
//!
//! A waiter spins up to a limit before parking. The limit adapts: when a
//! message arrives during the spin after `t`, the limit grows to at least
//! `2t` (up to [`WaitPolicy::max_spin`]); when the spin ends in parking, it
//! halves. A busy peer is thus caught without a wake-up, and an idle one
//! soon costs no spinning. After a short pure spin the waiter yields the
//! CPU now and then, so a peer sharing its core gets to run; a message that
//! arrives only after a yield that ran someone else counts as a miss, so
//! two processes sharing one core soon stop spinning and hand over through
//! the kernel, which is cheaper there than yielding.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use super::{RingMem, off};
use crate::sys;

/// How long a waiter spins before it parks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// The longest spin; `Duration::ZERO` parks at once (no spinning).
    pub max_spin: Duration,
    /// Adapt the spin to how soon messages arrive (else always `max_spin`).
    pub adaptive: bool,
}

impl WaitPolicy {
    /// Never spin: park as soon as there is nothing to do.
    pub const PARK: WaitPolicy = WaitPolicy {
        max_spin: Duration::ZERO,
        adaptive: false,
    };
    /// Spin without limit: never park (benchmarks of the polling path).
    pub const SPIN: WaitPolicy = WaitPolicy {
        max_spin: Duration::MAX,
        adaptive: false,
    };
}

impl Default for WaitPolicy {
    /// Adaptive, up to 100 µs: longer than a kernel wake-up here (~60 µs
    /// across cores), past which spinning costs more than it saves.
    fn default() -> Self {
        WaitPolicy {
            max_spin: Duration::from_micros(100),
            adaptive: true,
        }
    }
}

/// Pure spinning before yields are mixed in. Long enough that a peer on
/// another core answering within a few microseconds is caught without a
/// system call (a yield costs microseconds on a busy virtual machine), short
/// enough that a peer sharing our core soon gets to run.
const PURE_SPIN: Duration = Duration::from_micros(10);
/// After the pure spin, yield once every this many clock checks.
const YIELD_EVERY: u32 = 4;
/// A yield that took longer than this ran another thread on our core.
const YIELDED_AWAY: Duration = Duration::from_micros(2);
/// The smallest adaptive limit.
const MIN_SPIN_NS: u32 = 1_000;
/// Even with nothing to wait for, a parked side looks again this often: a
/// broken peer that never rings costs latency, never a hang.
pub(super) const MAX_PARK: Duration = Duration::from_millis(250);

/// The current spin limit, in nanoseconds, shared by the handles of one
/// side (atomic so that writer handles on several threads can share it).
#[derive(Debug)]
pub(super) struct SpinLimit(AtomicU32);

impl SpinLimit {
    pub(super) fn new(policy: &WaitPolicy) -> Self {
        SpinLimit(AtomicU32::new(Self::start(policy)))
    }

    fn start(policy: &WaitPolicy) -> u32 {
        let max = Self::max(policy);
        if policy.adaptive {
            (max / 4).max(MIN_SPIN_NS.min(max))
        } else {
            max
        }
    }

    fn max(policy: &WaitPolicy) -> u32 {
        u32::try_from(policy.max_spin.as_nanos()).unwrap_or(u32::MAX)
    }

    pub(super) fn reset(&self, policy: &WaitPolicy) {
        self.0.store(Self::start(policy), Ordering::Relaxed);
    }

    /// Starts a spin up to the current limit (and `deadline`); `None` when
    /// the limit is zero (never spin).
    pub(super) fn begin(&self, deadline: Option<Instant>) -> Option<Spin> {
        let limit = Duration::from_nanos(u64::from(self.0.load(Ordering::Relaxed)));
        if limit.is_zero() {
            return None;
        }
        let start = Instant::now();
        // None: spin forever (`WaitPolicy::SPIN` without a deadline).
        let mut end = start.checked_add(limit);
        if let Some(d) = deadline {
            end = Some(end.map_or(d, |e| e.min(d)));
        }
        Some(Spin {
            start,
            end,
            round: 0,
            ran_others: false,
        })
    }

    /// `spin` found what it waited for: adapts the limit.
    pub(super) fn found(&self, spin: &Spin, policy: &WaitPolicy) {
        if !policy.adaptive {
            return;
        }
        if spin.ran_others {
            // The peer shares our core and answered only once we yielded:
            // spinning there steals its time, and a kernel wake-up on one
            // core is cheaper than a yield.
            self.on_miss();
        } else {
            self.on_hit(spin.start.elapsed(), policy);
        }
    }

    /// `spin` ran out: adapts the limit.
    pub(super) fn ran_out(&self, policy: &WaitPolicy) {
        if policy.adaptive {
            self.on_miss();
        }
    }

    /// Spins until `ready()` says yes or the limit passes; adapts the limit.
    /// Returns `Some(value)` from `ready` on success.
    pub(super) fn spin<T>(
        &self,
        policy: &WaitPolicy,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let mut spin = self.begin(deadline)?;
        loop {
            if let Some(v) = ready() {
                self.found(&spin, policy);
                return Some(v);
            }
            if let Step::Expired = spin.step() {
                self.ran_out(policy);
                return None;
            }
        }
    }

    /// One burst of `spin` for async waiters, which must not hold their
    /// runtime's thread for long: looks until `ready()` says yes, the spin's
    /// limit passes, or `burst` passes (then the caller yields to its
    /// runtime and calls again with the same `spin`). The limit adapts as
    /// for [`spin`](Self::spin), so the async and blocking waits of one ring
    /// learn together.
    #[cfg_attr(
        not(feature = "tokio"),
        allow(dead_code, reason = "used by the async channel")
    )]
    pub(super) fn burst<T>(
        &self,
        spin: &mut Spin,
        policy: &WaitPolicy,
        burst: Duration,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Burst<T> {
        let until = Instant::now() + burst;
        loop {
            if let Some(v) = ready() {
                self.found(spin, policy);
                return Burst::Ready(v);
            }
            match spin.step() {
                Step::Spun => {}
                Step::Checked(now) if now >= until => return Burst::Again,
                Step::Checked(_) => {}
                Step::Expired => {
                    self.ran_out(policy);
                    return Burst::Expired;
                }
            }
        }
    }

    /// Something arrived after spinning `took`: spin at least twice that.
    fn on_hit(&self, took: Duration, policy: &WaitPolicy) {
        let took = u32::try_from(took.as_nanos()).unwrap_or(u32::MAX);
        let grown = took.saturating_mul(2).min(Self::max(policy));
        self.0.fetch_max(grown, Ordering::Relaxed);
    }

    /// Nothing arrived: halve the spin, down to the floor.
    fn on_miss(&self) {
        let cur = self.0.load(Ordering::Relaxed);
        self.0.store((cur / 2).max(MIN_SPIN_NS), Ordering::Relaxed);
    }
}

/// A spin in progress: what [`SpinLimit::spin`] keeps between two looks,
/// kept across awaits by async waiters (see [`SpinLimit::burst`]).
#[derive(Debug)]
pub(crate) struct Spin {
    start: Instant,
    /// `None`: no end (`WaitPolicy::SPIN` without a deadline).
    end: Option<Instant>,
    round: u32,
    /// Whether a yield gave the CPU away for a while: someone else ran on
    /// our core, likely the peer we wait for.
    ran_others: bool,
}

/// What one pause of a spin did.
enum Step {
    /// A spin hint, no clock read.
    Spun,
    /// Read the clock (this is the time), and maybe yielded the thread.
    #[cfg_attr(
        not(feature = "tokio"),
        allow(dead_code, reason = "used by the async channel")
    )]
    Checked(Instant),
    /// The limit passed.
    Expired,
}

impl Spin {
    /// Pauses after a look that found nothing: a spin hint, and every 32nd
    /// time a look at the clock and, past the pure spin, now and then a
    /// yield of the thread.
    fn step(&mut self) -> Step {
        self.round = self.round.wrapping_add(1);
        if !self.round.is_multiple_of(32) {
            std::hint::spin_loop();
            return Step::Spun;
        }
        let now = Instant::now();
        if self.end.is_some_and(|e| now >= e) {
            return Step::Expired;
        }
        if now - self.start > PURE_SPIN && (self.round / 32).is_multiple_of(YIELD_EVERY) {
            // A peer on the same core runs only if we let it.
            std::thread::yield_now();
            self.ran_others |= now.elapsed() > YIELDED_AWAY;
        }
        Step::Checked(now)
    }
}

/// How a [`SpinLimit::burst`] ended.
#[derive(Debug)]
#[cfg_attr(
    not(feature = "tokio"),
    allow(dead_code, reason = "used by the async channel")
)]
pub(crate) enum Burst<T> {
    /// `ready()` said yes, with this.
    Ready(T),
    /// The burst is over but not the spin: yield, then burst again.
    Again,
    /// The spin's limit passed: park.
    Expired,
}

/// The fds a channel attaches to a ring: what rings the doorbells across
/// processes, and what tells that the peer is gone.
#[derive(Debug)]
pub(super) struct Bells {
    /// Signalled by writers when the reader sleeps.
    pub(super) reader: OwnedFd,
    /// Signalled by the reader when a writer waits for room.
    pub(super) writer: OwnedFd,
    /// The channel's socket (a dup): readable or hung up once the peer is
    /// gone or closing.
    pub(super) liveness: Option<OwnedFd>,
}

/// What this process's handles on one ring did while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WaitStats {
    /// Times a handle went to sleep.
    pub parks: u64,
    /// Sleeps that ended by their timeout rather than a ring or the peer's
    /// death (a caller's deadline, or the periodic look of a sleeper).
    pub park_timeouts: u64,
    /// Wake-ups this process sent to sleepers (a system call each).
    pub rings: u64,
    /// Waits that spun and found their message (or room) before the spin's
    /// limit passed: each a park, and the peer's wake-up call, saved.
    pub spin_hits: u64,
}

/// The counters behind [`WaitStats`].
#[derive(Debug, Default)]
pub(super) struct WaitCounters {
    parks: std::sync::atomic::AtomicU64,
    park_timeouts: std::sync::atomic::AtomicU64,
    rings: std::sync::atomic::AtomicU64,
    spin_hits: std::sync::atomic::AtomicU64,
}

impl WaitCounters {
    /// A spin found what it waited for.
    pub(super) fn spin_hit(&self) {
        self.spin_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// An async waiter (which sleeps in its runtime, not in [`RingMem::park`])
    /// goes to sleep.
    pub(super) fn parked(&self) {
        self.parks.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> WaitStats {
        WaitStats {
            parks: self.parks.load(Ordering::Relaxed),
            park_timeouts: self.park_timeouts.load(Ordering::Relaxed),
            rings: self.rings.load(Ordering::Relaxed),
            spin_hits: self.spin_hits.load(Ordering::Relaxed),
        }
    }
}

/// How a park ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parked {
    /// Rung, timed out, or spurious: look at the ring again.
    Again,
    /// The liveness socket says the peer is gone.
    PeerGone,
}

/// Which doorbell.
#[derive(Debug, Clone, Copy)]
pub(super) enum Side {
    Reader,
    Writer,
}

impl Side {
    fn offset(self) -> usize {
        match self {
            Side::Reader => off::READER_DOORBELL,
            Side::Writer => off::WRITER_DOORBELL,
        }
    }
}

impl RingMem {
    /// After publishing a change the `side` waits for (a message for the
    /// reader, room for writers): ring its doorbell if it sleeps. Returns
    /// whether it rang.
    pub(super) fn ring(&self, side: Side) -> bool {
        // SYNC POINT (Dekker, with `arm`): our publication, then the fence,
        // then the doorbell load; the sleeper stores its doorbell, fences,
        // then looks at the ring. One of us sees the other.
        fence(Ordering::SeqCst);
        let bell = self.doorbell(side.offset());
        // Whoever rings first clears the doorbell, so a sleep costs one
        // wake-up. Writers count themselves in (`arm`); a ring wakes them
        // all, and each re-arms if it still finds no room.
        let asleep = bell.load(Ordering::Relaxed) != 0 && bell.swap(0, Ordering::Relaxed) != 0;
        if !asleep {
            return false;
        }
        // A failed wake-up cannot be reported to anyone useful here; the
        // sleeper looks again within MAX_PARK regardless.
        self.stats.rings.fetch_add(1, Ordering::Relaxed);
        let _ = match self.bells.get() {
            Some(b) => sys::eventfd_signal(match side {
                Side::Reader => b.reader.as_fd(),
                Side::Writer => b.writer.as_fd(),
            }),
            None => sys::futex_wake(bell, u32::MAX).map(drop),
        };
        true
    }

    /// Announces that `side` is about to sleep. The caller must look at the
    /// ring once more after this, then [`park`](Self::park), then
    /// [`disarm`](Self::disarm) (exactly once per `arm`).
    pub(super) fn arm(&self, side: Side) {
        let bell = self.doorbell(side.offset());
        match side {
            Side::Reader => bell.store(1, Ordering::Relaxed),
            Side::Writer => {
                bell.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SYNC POINT (Dekker, with `ring`): see there.
        fence(Ordering::SeqCst);
    }

    /// Takes `side` out of its doorbell (it did not sleep after all, or
    /// woke up).
    pub(super) fn disarm(&self, side: Side) {
        let bell = self.doorbell(side.offset());
        match side {
            Side::Reader => bell.store(0, Ordering::Relaxed),
            Side::Writer => {
                // A hostile peer may have zeroed it: never wrap below zero.
                let _ =
                    bell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
            }
        }
    }

    /// Sleeps until rung, the timeout (capped at [`MAX_PARK`]), or the peer
    /// is gone. Call [`arm`](Self::arm) first, [`disarm`](Self::disarm) after.
    pub(super) fn park(&self, side: Side, timeout: Option<Duration>) -> io::Result<Parked> {
        let timeout = Some(timeout.map_or(MAX_PARK, |t| t.min(MAX_PARK)));
        let bell = self.doorbell(side.offset());
        self.stats.parked();
        let timed_out = || {
            self.stats.park_timeouts.fetch_add(1, Ordering::Relaxed);
        };
        let Some(bells) = self.bells.get() else {
            // Sleeps only while the doorbell still shows us armed; a ring
            // (swap to 0) or another writer arming makes it return at once.
            let armed = bell.load(Ordering::Relaxed);
            if armed != 0 && sys::futex_wait(bell, armed, timeout)? == sys::WaitOutcome::TimedOut {
                timed_out();
            }
            return Ok(Parked::Again);
        };
        let mine: BorrowedFd<'_> = match side {
            Side::Reader => bells.reader.as_fd(),
            Side::Writer => bells.writer.as_fd(),
        };
        let gone = match &bells.liveness {
            Some(sock) => {
                let [rung, live] = sys::wait_any([mine, sock.as_fd()], timeout)?;
                if rung.readable {
                    sys::eventfd_drain(mine)?;
                }
                let gone = live.readable || live.hangup;
                if !rung.readable && !gone {
                    timed_out();
                }
                gone
            }
            None => {
                let [rung] = sys::wait_any([mine], timeout)?;
                if rung.readable {
                    sys::eventfd_drain(mine)?;
                } else {
                    timed_out();
                }
                false
            }
        };
        Ok(if gone {
            Parked::PeerGone
        } else {
            Parked::Again
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_limit_adapts() {
        let policy = WaitPolicy::default();
        let s = SpinLimit::new(&policy);
        let start = s.0.load(Ordering::Relaxed);
        assert_eq!(start, 25_000);
        // Nothing arrives: the limit halves, down to the floor.
        assert!(s.spin(&policy, None, || None::<()>).is_none());
        assert_eq!(s.0.load(Ordering::Relaxed), 12_500);
        for _ in 0..20 {
            s.spin(&policy, None, || None::<()>);
        }
        assert_eq!(s.0.load(Ordering::Relaxed), MIN_SPIN_NS);
        // Something arrives at once: the limit does not shrink (it may grow
        // by twice the time the first look took, which is not zero).
        assert_eq!(s.spin(&policy, None, || Some(5)), Some(5));
        assert!(s.0.load(Ordering::Relaxed) >= MIN_SPIN_NS);
        // Never spin.
        let park = SpinLimit::new(&WaitPolicy::PARK);
        let mut calls = 0;
        assert!(
            park.spin(&WaitPolicy::PARK, None, || {
                calls += 1;
                None::<()>
            })
            .is_none()
        );
        assert_eq!(calls, 0);
    }

    #[test]
    fn limit_grows_to_twice_the_arrival_time_up_to_the_maximum() {
        let policy = WaitPolicy::default();
        let s = SpinLimit::new(&policy);
        s.on_miss();
        s.on_miss();
        assert_eq!(s.0.load(Ordering::Relaxed), 6_250);
        s.on_hit(Duration::from_micros(30), &policy);
        assert_eq!(s.0.load(Ordering::Relaxed), 60_000);
        s.on_hit(Duration::from_micros(10), &policy);
        assert_eq!(
            s.0.load(Ordering::Relaxed),
            60_000,
            "a quick arrival keeps the limit"
        );
        s.on_hit(Duration::from_secs(1), &policy);
        assert_eq!(s.0.load(Ordering::Relaxed), 100_000, "capped at max_spin");
    }

    #[test]
    fn bursts_resume_one_spin_and_learn_like_the_blocking_spin() {
        // A limit far beyond any burst: bursts end, the spin does not.
        let long = WaitPolicy {
            max_spin: Duration::from_secs(3600),
            adaptive: false,
        };
        let s = SpinLimit::new(&long);
        let mut spin = s.begin(None).expect("a spin");
        let mut looks = 0;
        for _ in 0..3 {
            let got = s.burst(&mut spin, &long, Duration::from_micros(1), || {
                looks += 1;
                None::<()>
            });
            assert!(matches!(got, Burst::Again), "{got:?}");
        }
        assert!(
            looks >= 3 * 32,
            "every burst looks until it reads the clock"
        );
        let got = s.burst(&mut spin, &long, Duration::from_secs(3600), || Some(7));
        assert!(matches!(got, Burst::Ready(7)), "{got:?}");
        // A limit shorter than the burst: the spin runs out, and an adaptive
        // limit halves, as after a blocking spin that parks.
        let policy = WaitPolicy::default();
        let s = SpinLimit::new(&policy);
        let mut spin = s.begin(None).expect("a spin");
        let got = s.burst(&mut spin, &policy, Duration::from_secs(3600), || None::<()>);
        assert!(matches!(got, Burst::Expired), "{got:?}");
        assert_eq!(s.0.load(Ordering::Relaxed), 12_500);
        // A spin that never starts: `PARK`.
        assert!(SpinLimit::new(&WaitPolicy::PARK).begin(None).is_none());
    }
}
