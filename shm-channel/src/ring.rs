//! One direction of a channel: a spinlocked, growing, multi-writer ring of
//! variable-sized messages in a shared region.
//!
//! This implements the buffer of the shared-memory channel design note (seed
//! 004): a header with the seed's fields, then messages laid out one after
//! another, each `magic, message id, flags, length, object count` (+ request
//! id) followed by its objects. The byte layout lives in [`shm_layout`]; see
//! `docs/LAYOUT.md`.
//!
//! # Protocol
//!
//! * **Writers** (any number of threads, in any number of processes) take the
//!   header's spinlock, decide where the message goes, write its header with
//!   `ALLOCATED | pid`, advance `WriteOffset`, and drop the lock. They then
//!   fill the message in place without the lock and publish it by storing
//!   `WRITTEN` into its flags with release ordering.
//! * **The reader** (one) reads messages in order from `ReadOffset`; a message
//!   is borrowed in place and its space is released when the view is dropped.
//!   A message still `ALLOCATED` holds the reader back (the order of
//!   reservations is the order of delivery).
//! * **Positions** carry a lap counter. While the reader and the writers are
//!   in the same lap, the unread data is `[read, write)`; when the writers
//!   wrap, they record where the old lap's data ends (`WrapOffset`) and go on
//!   at the first record of the next lap, and the unread data is
//!   `[read, wrap) + [start, write)`. The lap tells the two cases apart
//!   without any "one slot always empty" rule, and lets a message as large
//!   as the whole message area wrap around an empty ring.
//! * **Growth**: the capacity starts at one page and doubles (up to the
//!   maximum) only while the unread data does not wrap, so it never moves:
//!   new space is appended after the data. A writer that wraps instead of
//!   growing would leave the ring small forever; one that grows while the
//!   data wraps would have to move it.
//! * **Crashes**: the spinlock holds the owner's pid; a waiter that spins too
//!   long checks it and takes the lock over from a dead owner (every state
//!   the owner could have left is consistent: `WriteOffset` is stored last).
//!   A message left `ALLOCATED` by a dead writer is skipped by the reader,
//!   which reports it once as [`RecvError::WriterDied`].
//! * **Hostile contents**: every word read from the shared header or a
//!   message header is read once into a local, validated, and only the local
//!   is used; anything inconsistent poisons this end of the ring with
//!   [`Corrupt`] and never leads to an access outside the region.

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;
use shm_layout::{
    LayoutError, MESSAGE_HEADER_SIZE, MessageHeader, MessageView, PAGE_SIZE, RECORD_ALIGN,
    RING_HEADER_SIZE, RING_INITIALIZED, RingHeader, RingPos, align_up, flags, ring as off,
};
use thiserror::Error;

pub use shm_layout::Kind;

use crate::region::{HeapRegion, MemfdRegion, Region, RegionError};

mod wait;
use crate::sys;
use wait::{Bells, Parked, Side, SpinLimit, WaitCounters};
pub(crate) use wait::{Burst, Spin};
pub use wait::{WaitPolicy, WaitStats};

/// How long a waiter spins on a held spinlock before it checks whether the
/// holder is alive. Critical sections are a few dozen instructions (a
/// growth adds an `mmap`), so a millisecond is long.
const LOCK_LIVENESS_CHECK: Duration = Duration::from_millis(1);
/// Skipped (abandoned) records one look at the ring steps over at most.
const MAX_SKIPS_PER_LOOK: usize = 1024;
/// How long a try-reservation waits for a spinlock whose holder lives.
const LOCK_GIVE_UP: Duration = Duration::from_millis(5);
/// How long a message may stay `ALLOCATED` at the head of the ring before
/// the reader checks whether its writer is alive.
const ALLOCATED_LIVENESS_CHECK: Duration = Duration::from_millis(10);

/// What a ring is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Protocol name stored in the header (at most 64 bytes).
    pub protocol_name: String,
    /// Protocol version stored in the header.
    pub protocol_version: u64,
    /// Maximum capacity in bytes, header included; rounded up to whole pages.
    pub max_size: u64,
}

impl RingConfig {
    /// A configuration with this name, version 1, and `max_size` bytes.
    pub fn new(protocol_name: impl Into<String>, max_size: u64) -> Self {
        RingConfig {
            protocol_name: protocol_name.into(),
            protocol_version: 1,
            max_size,
        }
    }
}

/// The ring's contents broke the protocol: a broken or hostile peer wrote
/// them. This end of the ring refuses every later operation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("corrupt ring: {what}")]
pub struct Corrupt {
    what: String,
}

impl Corrupt {
    fn new(what: impl fmt::Display) -> Self {
        Corrupt {
            what: what.to_string(),
        }
    }

    /// What was wrong.
    pub fn what(&self) -> &str {
        &self.what
    }
}

/// What can go wrong looking at the ring's shared state: a broken peer
/// (poisons), or this process running out of resources (does not).
#[derive(Debug)]
enum Fault {
    Corrupt(Corrupt),
    Io(String),
}

impl From<Corrupt> for Fault {
    fn from(c: Corrupt) -> Self {
        Fault::Corrupt(c)
    }
}

impl From<Fault> for TrySendError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Corrupt(c) => TrySendError::Corrupt(c),
            Fault::Io(e) => TrySendError::Io(e),
        }
    }
}

impl From<Fault> for RecvError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Corrupt(c) => RecvError::Corrupt(c),
            Fault::Io(e) => RecvError::Io(e),
        }
    }
}

impl From<Fault> for RingError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Corrupt(c) => RingError::Corrupt(c),
            Fault::Io(e) => RingError::Region(RegionError::Io {
                op: "mmap",
                source: std::io::Error::other(e),
            }),
        }
    }
}

impl From<LayoutError> for Corrupt {
    fn from(e: LayoutError) -> Self {
        Corrupt::new(e)
    }
}

/// Creating or opening a ring failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RingError {
    /// Mapping or sizing the shared memory failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The configuration is invalid (name too long, maximum not usable).
    #[error("invalid ring configuration: {0}")]
    Config(LayoutError),
    /// The ring's header is not a valid, initialised ring of this layout.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// Only one reader may read a ring.
    #[error("this ring already has a reader")]
    ReaderTaken,
    /// Doorbells can be attached once.
    #[error("this ring already has doorbells")]
    DoorbellsAttached,
}

/// Why a message could not be reserved without waiting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// No room now; the reader has not caught up.
    #[error("ring full")]
    Full,
    /// The message can never fit in this ring.
    #[error("message of {size} bytes exceeds the ring's limit of {max} bytes")]
    TooLarge {
        /// The message's size in the ring.
        size: u64,
        /// The largest message the ring can hold.
        max: u64,
    },
    /// Growing the ring failed (out of memory, or mapping limits); the
    /// ring itself is fine and a smaller message may still go through.
    #[error("could not grow the ring: {0}")]
    Io(String),
    /// The ring is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Why a blocking reservation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// No room before the deadline.
    #[error("timed out waiting for room in the ring")]
    Timeout,
    /// `no_queue` was set and there was no room: the message is dropped.
    #[error("ring full: no_queue message dropped")]
    Dropped,
    /// The message can never fit in this ring.
    #[error("message of {size} bytes exceeds the ring's limit of {max} bytes")]
    TooLarge {
        /// The message's size in the ring.
        size: u64,
        /// The largest message the ring can hold.
        max: u64,
    },
    /// The slot's objects do not match what was reserved.
    #[error("message not sent: {0}")]
    Layout(LayoutError),
    /// The reader's process is gone (its channel socket closed).
    #[error("the peer died: nobody will read this message")]
    PeerDied,
    /// Waiting on the doorbell failed (the message was not sent).
    #[error("waiting for room failed: {0}")]
    Wait(String),
    /// Growing the ring failed (out of memory, or mapping limits).
    #[error("could not grow the ring: {0}")]
    Io(String),
    /// The ring is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl From<TrySendError> for SendError {
    fn from(e: TrySendError) -> Self {
        match e {
            TrySendError::Full => SendError::Dropped,
            TrySendError::TooLarge { size, max } => SendError::TooLarge { size, max },
            TrySendError::Corrupt(c) => SendError::Corrupt(c),
            TrySendError::Io(e) => SendError::Io(e),
        }
    }
}

/// Why no message was received.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Nothing arrived before the deadline.
    #[error("timed out waiting for a message")]
    Timeout,
    /// A writer died after reserving a message and before sending it; the
    /// message was skipped. Later messages are still delivered.
    #[error("writer process {pid} died before sending message {message_id}")]
    WriterDied {
        /// The dead writer's pid.
        pid: u32,
        /// The message id it had reserved.
        message_id: u64,
    },
    /// The writers' process is gone (its channel socket closed) and every
    /// message it sent has been received.
    #[error("the peer died")]
    PeerDied,
    /// Waiting on the doorbell failed.
    #[error("waiting for a message failed: {0}")]
    Wait(String),
    /// Mapping the part of the ring the peer grew failed (out of memory,
    /// or mapping limits); the message stays in the ring.
    #[error("could not map the grown ring: {0}")]
    Io(String),
    /// The ring is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// The memory shared by every handle on one ring in this process.
struct RingMem {
    region: Box<dyn Region>,
    /// `region.base()`, read once: the base never moves, and the hot path
    /// should not make a dynamic call per word it touches.
    base: *mut u8,
    /// The maximum capacity, validated at creation/open.
    max_size: u64,
    /// Set when a writer found the ring corrupt.
    poisoned: AtomicBool,
    reader_taken: AtomicBool,
    /// Serialises this process's reservations (see `try_allocate_for_send`).
    local: std::sync::Mutex<()>,
    /// This process's pid, for the spinlock and reservations.
    pid: u32,
    /// Doorbell fds, when a channel attached them (else futexes).
    bells: OnceLock<Bells>,
    /// Adaptive spin of this process's writers waiting for room.
    writer_spin: SpinLimit,
    /// Adaptive spin of the reader waiting for messages.
    reader_spin: SpinLimit,
    stats: WaitCounters,
}

// SAFETY: `RingMem` is `Send` and `Sync` but for its `base` pointer, which
// is a copy of `region.base()`: 1. the region it points into is owned by the
// same `RingMem` (`Region: Send + Sync`), so the pointer is valid wherever
// the region is; 2. every access through it is either atomic or to a range
// reserved by, or published to, exactly one handle (see the SAFETY comments
// of `word`, `record_flags`, `bytes` and `bytes_mut`), which is what makes
// sharing the region between threads sound in the first place.
unsafe impl Send for RingMem {}
// SAFETY: as for `Send` above.
unsafe impl Sync for RingMem {}

impl RingMem {
    /// The header word at `offset`.
    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset < RING_HEADER_SIZE as usize);
        // The header page is mapped from creation/open until the region is
        // dropped, and `self` owns the region; `offset` is a layout constant,
        // 8-aligned inside the header, and the base is page aligned.
        // SAFETY: 1. mapped as long as the reference lives; 2. aligned;
        // 3. header words are only ever accessed atomically, in every process.
        unsafe { AtomicU64::from_ptr(self.base.add(offset).cast::<u64>()) }
    }

    /// A futex word of the header (the doorbells).
    #[allow(dead_code)] // used by the channel's wake-ups
    fn doorbell(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(64) && offset < RING_HEADER_SIZE as usize);
        // SAFETY: as in `word`: mapped for the region's lifetime, aligned,
        // only ever accessed atomically.
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast::<u32>()) }
    }

    /// The flags word of the message at `at`.
    ///
    /// `at` must be a record offset below the mapped length (checked by
    /// callers against a validated position).
    fn record_flags(&self, at: u64) -> &AtomicU64 {
        debug_assert!(
            at.is_multiple_of(RECORD_ALIGN) && at + RECORD_ALIGN <= self.region.mapped_len() as u64
        );
        // Callers pass a validated record offset with `at + 64 <= mapped_len`.
        // While another thread may write the word (from its reservation until
        // the reader releases the record) every access here is atomic; the
        // `&[u8]` views that also cover it exist only between publication and
        // release, when nobody writes it.
        // SAFETY: 1. `at + 16` is mapped for the region's lifetime; 2. `at` is
        // 64-aligned, so the word is 8-aligned; 3. no racing non-atomic access.
        unsafe { AtomicU64::from_ptr(self.base.add(at as usize + 16).cast::<u64>()) }
    }

    /// Bytes `[at, at + len)` of the ring, for reading.
    ///
    /// # Safety
    /// `[at, at + len)` must be inside the mapped length, and no one in this
    /// process may write to it while the returned slice lives (it holds a
    /// published message that only its reader touches).
    unsafe fn bytes(&self, at: u64, len: u64) -> &[u8] {
        debug_assert!(at + len <= self.region.mapped_len() as u64);
        // SAFETY: the caller guarantees the range is mapped and not written
        // concurrently by this process; another process writing it can only
        // change byte values, and every `u8` value is valid.
        unsafe { std::slice::from_raw_parts(self.base.add(at as usize), len as usize) }
    }

    /// Bytes `[at, at + len)` of the ring, for writing a reserved message.
    ///
    /// # Safety
    /// `[at, at + len)` must be inside the mapped length and reserved by the
    /// caller (between `WriteOffset`'s old and new value), so no one else
    /// reads or writes it until it is published.
    #[allow(clippy::mut_from_ref)] // the reservation makes the range exclusively ours
    unsafe fn bytes_mut(&self, at: u64, len: u64) -> &mut [u8] {
        debug_assert!(at + len <= self.region.mapped_len() as u64);
        // SAFETY: the caller owns the reservation of this range, which no
        // other handle in this process reads or writes until published.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(at as usize), len as usize) }
    }

    /// Validated current capacity; maps it in this process if needed.
    fn capacity(&self) -> Result<u64, Fault> {
        // SYNC POINT: acquire pairs with the release of a writer that grew
        // the ring: what it wrote before publishing the capacity is visible.
        let cap = self.word(off::BUFFER_SIZE).load(Ordering::Acquire);
        if cap < PAGE_SIZE || cap > self.max_size || !cap.is_multiple_of(PAGE_SIZE) {
            return Err(Fault::Corrupt(Corrupt::new(format_args!(
                "capacity {cap} outside one page..={}",
                self.max_size
            ))));
        }
        if cap as usize > self.region.mapped_len() {
            self.region
                .ensure_mapped(cap as usize)
                .map_err(|e| match e {
                    // The peer published a capacity its file does not have.
                    RegionError::Truncated { .. } | RegionError::TooLarge { .. } => {
                        Fault::Corrupt(Corrupt::new(format_args!("capacity {cap} not backed: {e}")))
                    }
                    other => Fault::Io(other.to_string()),
                })?;
        }
        Ok(cap)
    }

    /// Takes the writers' spinlock; `None` when a live holder keeps it
    /// past `LOCK_GIVE_UP` (a peer stuck or hostile: the caller reports
    /// "full" rather than hang).
    fn lock(&self) -> Option<SpinGuard<'_>> {
        let lock = self.word(off::SPINLOCK);
        let me = (u64::from(self.pid) << 32) | u64::from(thread_tag());
        let backoff = Backoff::new();
        // The clock is read only once spinning has failed: the uncontended
        // path is one compare-and-swap.
        let mut give_up: Option<Instant> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            // SYNC POINT: acquiring the lock makes the previous holder's
            // header and record-header writes visible.
            match lock.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(SpinGuard { mem: self, me }),
                Err(0) => continue,
                Err(holder) => {
                    if !backoff.is_completed() {
                        backoff.snooze();
                        continue;
                    }
                    std::thread::yield_now();
                    let now = Instant::now();
                    let due = *deadline.get_or_insert(now + LOCK_LIVENESS_CHECK);
                    if now >= *give_up.get_or_insert(now + LOCK_GIVE_UP) {
                        return None;
                    }
                    if now < due {
                        continue;
                    }
                    deadline = Some(now + LOCK_LIVENESS_CHECK);
                    let pid = (holder >> 32) as u32;
                    if pid != self.pid && !sys::pid_alive(pid) {
                        // The holder died in its critical section. Every
                        // state it can have left is consistent (see the
                        // module docs), so take the lock over.
                        if lock
                            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                        {
                            tracing_dead_lock(pid);
                            return Some(SpinGuard { mem: self, me });
                        }
                    }
                }
            }
        }
    }

    fn poison(&self, c: Corrupt) -> Corrupt {
        self.poisoned.store(true, Ordering::Relaxed);
        c
    }

    fn check_poison(&self) -> Result<(), Corrupt> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(Corrupt::new("ring poisoned by an earlier error"));
        }
        Ok(())
    }

    /// Largest message (header + objects) the ring can ever hold.
    fn max_message(&self) -> u64 {
        self.max_size - RING_HEADER_SIZE
    }
}

/// Hook for a log line when a dead lock owner is replaced (kept as a
/// function so the channel can route it to `tracing` later).
fn tracing_dead_lock(_pid: u32) {}

/// A small per-thread number, so that two threads of one process never hold
/// the spinlock with the same word.
fn thread_tag() -> u32 {
    use std::cell::Cell;
    static NEXT: AtomicU32 = AtomicU32::new(1);
    thread_local! {
        static TAG: Cell<u32> = const { Cell::new(0) };
    }
    TAG.with(|t| {
        if t.get() == 0 {
            // Never 0: a zero word means "unlocked".
            t.set(NEXT.fetch_add(1, Ordering::Relaxed).max(1));
        }
        t.get()
    })
}

struct SpinGuard<'a> {
    mem: &'a RingMem,
    me: u64,
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        // SYNC POINT: releasing the lock publishes this critical section's
        // writes to the next holder. If the lock was taken over (we were
        // presumed dead), leave the new holder's lock alone. A plain load
        // and store suffice: only the holder stores a free lock, and a
        // takeover happens only from a dead pid, never from a live one.
        let lock = self.mem.word(off::SPINLOCK);
        if lock.load(Ordering::Relaxed) == self.me {
            lock.store(0, Ordering::Release);
        }
    }
}

/// A ring: create it, hand its fd to the peer, take writers and the reader.
///
/// ```
/// use shm_channel::ring::{Ring, RingConfig};
///
/// let ring = Ring::create_memfd("demo", &RingConfig::new("Demo", 1 << 20)).unwrap();
/// let writer = ring.writer();
/// let mut reader = ring.reader().unwrap();
///
/// let mut slot = writer.try_allocate_for_send(24, 7, 1, false).unwrap();
/// slot.push_object(0, b"hello").unwrap();
/// slot.send().unwrap();
///
/// let msg = reader.try_receive().unwrap().unwrap();
/// assert_eq!(msg.message_id(), 7);
/// assert_eq!(msg.object(0), Some(&b"hello"[..]));
/// ```
#[derive(Clone)]
pub struct Ring {
    mem: Arc<RingMem>,
    fd: Option<Arc<MemfdRegionFd>>,
}

/// Keeps the ring's fd reachable to pass to a peer.
struct MemfdRegionFd(OwnedFd);

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("max_size", &self.mem.max_size)
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Creates a ring in a new sealed memfd (shareable with other processes
    /// through [`Ring::fd`]). `name` shows in `/proc/<pid>/fd` only.
    pub fn create_memfd(name: &str, config: &RingConfig) -> Result<Ring, RingError> {
        let max = checked_max(config)?;
        let region = MemfdRegion::create(name, max as usize, PAGE_SIZE as usize)?;
        let fd = region
            .fd()
            .try_clone_to_owned()
            .map_err(|source| RegionError::Io { op: "dup", source })?;
        let ring = Self::init(Box::new(region), config, max)?;
        Ok(Ring {
            fd: Some(Arc::new(MemfdRegionFd(fd))),
            ..ring
        })
    }

    /// Creates a ring in process-local memory (tests, Miri, threads).
    pub fn create_heap(config: &RingConfig) -> Result<Ring, RingError> {
        let max = checked_max(config)?;
        let region = HeapRegion::new(max as usize)?;
        Self::init(Box::new(region), config, max)
    }

    fn init(region: Box<dyn Region>, config: &RingConfig, max: u64) -> Result<Ring, RingError> {
        let header = RingHeader {
            protocol_version: config.protocol_version,
            protocol_name: config.protocol_name.clone(),
            max_size: max,
        };
        let mut bytes = [0u8; RING_HEADER_SIZE as usize];
        header
            .encode(&mut bytes, PAGE_SIZE)
            .map_err(RingError::Config)?;
        let mem = Self::mem(region, max);
        // Copy the encoded header in word by word: the header is only ever
        // accessed atomically once shared. The doorbell block is left alone:
        // it is zero in fresh memory, and its words are 32-bit atomics that
        // must never be accessed with another size.
        let words = off::READER_DOORBELL / 8;
        for (i, chunk) in bytes.chunks_exact(8).enumerate().take(words).skip(1) {
            let value = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            mem.word(i * 8).store(value, Ordering::Relaxed);
        }
        // SYNC POINT: publishing "initialised" last, with release, makes every
        // header field above visible to an opener that acquires it.
        mem.word(off::INITIALIZED)
            .store(RING_INITIALIZED, Ordering::Release);
        Ok(Ring {
            mem: Arc::new(mem),
            fd: None,
        })
    }

    /// Opens a ring created by another process from its memfd. The fd must
    /// carry the shrink, grow and seal seals and back the ring's whole maximum; the header must be initialised and
    /// its maximum must not exceed `max_size` (what this side expects, e.g.
    /// from the IDL). Waits up to `timeout` for the creator to finish
    /// initialising.
    pub fn open_memfd(fd: OwnedFd, max_size: u64, timeout: Duration) -> Result<Ring, RingError> {
        let max = align_up(max_size, PAGE_SIZE).ok_or(RingError::Config(LayoutError::Overflow))?;
        let keep = fd
            .try_clone()
            .map_err(|source| RegionError::Io { op: "dup", source })?;
        let region = MemfdRegion::open(fd, max as usize)?;
        // The file's length is sealed: what it backs now is all it will ever back.
        let backed = region.backed_len() as u64;
        let mem = Self::mem(Box::new(region), max);
        let deadline = Instant::now().checked_add(timeout);
        // SYNC POINT: acquiring "initialised" makes the creator's header
        // writes visible.
        while mem.word(off::INITIALIZED).load(Ordering::Acquire) != RING_INITIALIZED {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Corrupt::new("ring header never initialised").into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // The header up to the doorbells (32-bit atomics the peer may be
        // using: never read them with another size).
        let mut bytes = [0u8; RING_HEADER_SIZE as usize];
        let words = off::READER_DOORBELL / 8;
        for (i, chunk) in bytes.chunks_exact_mut(8).enumerate().take(words) {
            chunk.copy_from_slice(&mem.word(i * 8).load(Ordering::Relaxed).to_le_bytes());
        }
        let header = RingHeader::decode(&bytes, max).map_err(Corrupt::from)?;
        if header.max_size > backed {
            // The ring could grow to a capacity its file does not hold: refuse it now rather
            // than at that growth.
            return Err(RegionError::Truncated {
                len: header.max_size as usize,
                file_len: backed,
            }
            .into());
        }
        let mem = RingMem {
            max_size: header.max_size,
            ..mem
        };
        mem.capacity()?;
        Ok(Ring {
            mem: Arc::new(mem),
            fd: Some(Arc::new(MemfdRegionFd(keep))),
        })
    }

    fn mem(region: Box<dyn Region>, max_size: u64) -> RingMem {
        RingMem {
            base: region.base(),
            region,
            max_size,
            poisoned: AtomicBool::new(false),
            reader_taken: AtomicBool::new(false),
            local: std::sync::Mutex::new(()),
            pid: sys::pid(),
            bells: OnceLock::new(),
            writer_spin: SpinLimit::new(&WaitPolicy::default()),
            reader_spin: SpinLimit::new(&WaitPolicy::default()),
            stats: WaitCounters::default(),
        }
    }

    /// The memfd to pass to the peer (None for a heap ring).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|f| f.0.as_fd())
    }

    /// Attaches eventfd doorbells (and optionally the channel's liveness
    /// socket), so that sleepers in different processes are rung through
    /// fds that `poll`, epoll and tokio can wait on, and wake when the peer
    /// dies. Without them, sleepers park on futexes in the ring header.
    /// `reader` is signalled by writers when the reader sleeps, `writer` by
    /// the reader when writers wait for room; both processes attach the same
    /// eventfds (passed over the channel's socket). Once per ring.
    pub fn attach_doorbells(
        &self,
        reader: OwnedFd,
        writer: OwnedFd,
        liveness: Option<OwnedFd>,
    ) -> Result<(), RingError> {
        self.mem
            .bells
            .set(Bells {
                reader,
                writer,
                liveness,
            })
            .map_err(|_| RingError::DoorbellsAttached)
    }

    /// The eventfd the reader sleeps on, when doorbells are attached: an
    /// event loop polls it to learn that messages may have arrived (arm the
    /// doorbell first: [`RingReader::arm_doorbell`]).
    pub fn reader_doorbell(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.mem.bells.get().map(|b| b.reader.as_fd())
    }

    /// The eventfd writers waiting for room sleep on, when doorbells are
    /// attached (see [`RingWriter::arm_room_doorbell`]).
    pub fn writer_doorbell(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.mem.bells.get().map(|b| b.writer.as_fd())
    }

    /// A writer handle; any number may exist, on any threads.
    pub fn writer(&self) -> RingWriter {
        RingWriter {
            mem: Arc::clone(&self.mem),
            policy: WaitPolicy::default(),
        }
    }

    /// The reader handle. Only one per ring in this process; the channel
    /// makes sure only one process reads a ring.
    pub fn reader(&self) -> Result<RingReader, RingError> {
        if self.mem.reader_taken.swap(true, Ordering::AcqRel) {
            return Err(RingError::ReaderTaken);
        }
        let start = || -> Result<(RingPos, u64), RingError> {
            let read = RingPos::unpack(
                self.mem.word(off::READ_POS).load(Ordering::Acquire),
                self.mem.max_size,
            )
            .ok_or_else(|| Corrupt::new("read offset invalid"))?;
            Ok((read, self.mem.capacity()?))
        };
        let (read, cap) = start().inspect_err(|_| {
            self.mem.reader_taken.store(false, Ordering::Release);
        })?;
        Ok(RingReader {
            mem: Arc::clone(&self.mem),
            read,
            cached_write: read,
            stall: None,
            consumed: self.mem.word(off::CONSUMED_COUNT).load(Ordering::Relaxed),
            policy: WaitPolicy::default(),
            freed: 0,
            cached_cap: cap,
        })
    }

    /// How this process's handles on the ring waited so far.
    pub fn wait_stats(&self) -> WaitStats {
        self.mem.stats.snapshot()
    }

    /// Current capacity in bytes (header included).
    pub fn capacity(&self) -> u64 {
        self.mem.word(off::BUFFER_SIZE).load(Ordering::Relaxed)
    }

    /// Maximum capacity in bytes.
    pub fn max_size(&self) -> u64 {
        self.mem.max_size
    }

    /// Largest message (header and objects) the ring can hold.
    pub fn max_message(&self) -> u64 {
        self.mem.max_message()
    }

    /// Messages reserved and not yet consumed. Approximate after a writer
    /// died between its reservation's steps (the counters may be off by the
    /// messages it had in flight); the positions stay exact.
    pub fn len(&self) -> u64 {
        let sent = self.mem.word(off::MESSAGE_COUNT).load(Ordering::Relaxed);
        let read = self.mem.word(off::CONSUMED_COUNT).load(Ordering::Relaxed);
        sent.wrapping_sub(read)
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the ring's shared counters for monitoring (`shmctl`): plain loads of the
    /// header, no lock, so the numbers of a busy ring may be a moment apart from each other;
    /// positions a broken peer garbled read as 0 used bytes rather than an error.
    pub(crate) fn stat(&self) -> crate::handshake::RingStat {
        let mem = &*self.mem;
        let capacity = self.capacity();
        let load = |o: usize| mem.word(o).load(Ordering::Relaxed);
        let write = RingPos::unpack(load(off::WRITE_POS), capacity);
        let read = RingPos::unpack(load(off::READ_POS), capacity);
        let used_bytes = match (write, read) {
            (Some(w), Some(r)) if w.lap == r.lap => w.offset.saturating_sub(r.offset),
            (Some(w), Some(r)) if r.is_lap_before(w) => {
                // The previous lap's data ends at the wrap offset (when it is sane).
                let wrap = load(off::WRAP_OFFSET);
                let end = if wrap > r.offset && wrap <= capacity {
                    wrap
                } else {
                    capacity
                };
                (end - r.offset) + (w.offset.saturating_sub(RING_HEADER_SIZE))
            }
            _ => 0,
        };
        crate::handshake::RingStat {
            capacity,
            max_size: self.max_size(),
            pending: self.len(),
            used_bytes,
            written: load(off::MESSAGE_COUNT),
            read: load(off::CONSUMED_COUNT),
            reader_parked: mem.doorbell(off::READER_DOORBELL).load(Ordering::Relaxed) != 0,
            writer_waiting: mem.doorbell(off::WRITER_DOORBELL).load(Ordering::Relaxed) != 0,
        }
    }

    /// A handle that does not keep the ring alive (nor its memory mapped, nor its memfd open):
    /// how a service remembers its channels for `shmctl` without outliving them.
    pub(crate) fn downgrade(&self) -> WeakRing {
        WeakRing {
            mem: Arc::downgrade(&self.mem),
        }
    }

    /// Bytes of memory the kernel has allocated for the ring's memfd (None
    /// for a heap ring): what the ring really costs.
    pub fn allocated_bytes(&self) -> Option<u64> {
        self.fd
            .as_ref()
            .and_then(|f| sys::allocated_bytes(std::os::fd::AsFd::as_fd(&f.0)).ok())
    }
}

/// A [`Ring`] that may have been dropped (see [`Ring::downgrade`]).
#[derive(Clone)]
pub(crate) struct WeakRing {
    mem: std::sync::Weak<RingMem>,
}

impl fmt::Debug for WeakRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakRing")
            .field("alive", &(self.mem.strong_count() > 0))
            .finish()
    }
}

impl WeakRing {
    /// The ring, if someone still holds it. The result carries no memfd (it only reads
    /// its own header), so it cannot be passed to a peer.
    pub(crate) fn upgrade(&self) -> Option<Ring> {
        self.mem.upgrade().map(|mem| Ring { mem, fd: None })
    }

    /// Whether someone still holds the ring.
    pub(crate) fn is_alive(&self) -> bool {
        self.mem.strong_count() > 0
    }
}

fn checked_max(config: &RingConfig) -> Result<u64, RingError> {
    let max = align_up(config.max_size.max(PAGE_SIZE), PAGE_SIZE)
        .ok_or(RingError::Config(LayoutError::Overflow))?;
    // Validate the whole header before any memory is reserved for it.
    let header = RingHeader {
        protocol_version: config.protocol_version,
        protocol_name: config.protocol_name.clone(),
        max_size: max,
    };
    let mut scratch = [0u8; RING_HEADER_SIZE as usize];
    header
        .encode(&mut scratch, PAGE_SIZE)
        .map_err(RingError::Config)?;
    Ok(max)
}

/// Sends into a ring. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct RingWriter {
    mem: Arc<RingMem>,
    policy: WaitPolicy,
}

impl fmt::Debug for RingWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingWriter").finish_non_exhaustive()
    }
}

/// Where the unread data lies, from a read position, the write position,
/// the capacity and the wrap offset: (same lap, end of the free space after
/// the write position, read position). An inconsistency names itself.
fn judge(
    read_word: u64,
    write: RingPos,
    cap: u64,
    wrap: u64,
) -> Result<(bool, u64, RingPos), &'static str> {
    let read = RingPos::unpack(read_word, cap).ok_or("read offset invalid")?;
    if read.lap == write.lap {
        if read.offset > write.offset {
            return Err("read offset ahead of write offset");
        }
        Ok((true, cap, read))
    } else if read.is_lap_before(write) {
        if wrap > cap || read.offset > wrap || (write.offset > read.offset && read.offset != wrap) {
            return Err("wrap offset inconsistent");
        }
        // Reader done with the old lap but not yet in this one: the data is
        // [start, write) and the space after it is free to the end.
        Ok((
            false,
            if read.offset == wrap {
                cap
            } else {
                read.offset
            },
            read,
        ))
    } else {
        Err("read and write offsets more than a lap apart")
    }
}

/// Loads the reader's position (under the lock) and shares it with the
/// other writers as their new lower bound.
fn reload_read(mem: &RingMem) -> u64 {
    // SYNC POINT: acquiring ReadOffset means the reader is done with every
    // byte before it, so we may overwrite them.
    let word = mem.word(off::READ_POS).load(Ordering::Acquire);
    mem.word(off::READ_CACHE).store(word, Ordering::Relaxed);
    word
}

/// Where a reservation goes, decided under the lock.
struct Placement {
    at: u64,
    new_write: RingPos,
    wrap: Option<u64>,
}

impl RingWriter {
    /// Reserves room for a message whose objects take `size` bytes (the sum
    /// of [`shm_layout::object_size`] of each object), without waiting.
    ///
    /// `no_queue` messages never make the ring grow; they fail with `Full`
    /// where a normal message would wait or grow.
    pub fn try_allocate_for_send(
        &self,
        size: u64,
        message_id: u64,
        obj_count: u64,
        no_queue: bool,
    ) -> Result<Slot<'_>, TrySendError> {
        let mem = &*self.mem;
        mem.check_poison()?;
        let length = MESSAGE_HEADER_SIZE.checked_add(size);
        let record = length.and_then(|l| align_up(l, RECORD_ALIGN));
        let (Some(length), Some(record)) = (length, record) else {
            return Err(TrySendError::TooLarge {
                size: u64::MAX,
                max: mem.max_message(),
            });
        };
        if record > mem.max_message() {
            return Err(TrySendError::TooLarge {
                size: length,
                max: mem.max_message(),
            });
        }
        // This process's writers also serialise on a local mutex: the shared
        // spinlock is peer-writable, and a peer that cleared it under us
        // must not make two of our threads reserve the same bytes.
        let _local = mem.local.lock().unwrap_or_else(|e| e.into_inner());
        let guard = mem.lock().ok_or(TrySendError::Full)?;
        let place = self.place(&guard, record, no_queue).map_err(|e| match e {
            TrySendError::Corrupt(c) => TrySendError::Corrupt(mem.poison(c)),
            other => other,
        })?;
        // Write the header of the reservation, then publish the new write
        // position: a reader never looks past `WriteOffset`, so it sees the
        // header complete.
        let header = MessageHeader {
            message_id,
            flags: flags::ALLOCATED | (u64::from(mem.pid) << flags::PID_SHIFT),
            length,
            object_count: obj_count,
            request_id: 0,
        };
        let mut bytes = [0u8; MESSAGE_HEADER_SIZE as usize];
        // Cannot fail: the buffer is exactly a header long.
        let _ = header.encode(&mut bytes);
        // Soundness: `place` reserved [at, at + record) inside the validated and
        // mapped capacity; it is free space that no reader reads (it lies
        // outside [ReadOffset, WriteOffset)) and no other writer owns (we
        // hold the lock and have not released the range yet).
        // SAFETY: sound for the reasons given just above.
        let head = unsafe { mem.bytes_mut(place.at, MESSAGE_HEADER_SIZE) };
        head[..16].copy_from_slice(&bytes[..16]);
        head[24..].copy_from_slice(&bytes[24..]);
        mem.record_flags(place.at)
            .store(header.flags, Ordering::Relaxed);
        if let Some(wrap) = place.wrap {
            mem.word(off::WRAP_OFFSET).store(wrap, Ordering::Relaxed);
        }
        let count = mem.word(off::MESSAGE_COUNT);
        count.store(
            count.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        // SYNC POINT: releasing the write position publishes the record
        // header, the capacity and the wrap offset to the reader, which
        // acquires it.
        mem.word(off::WRITE_POS)
            .store(place.new_write.pack(), Ordering::Release);
        drop(guard);
        Ok(Slot {
            mem,
            at: place.at,
            size,
            cursor: 0,
            written: 0,
            object_count: obj_count,
            message_id,
            kind: Kind::Raw,
            no_queue,
            app_flags: 0,
            sent: false,
        })
    }

    /// Decides where a record of `record` bytes goes (under the lock).
    fn place(
        &self,
        _guard: &SpinGuard<'_>,
        record: u64,
        no_queue: bool,
    ) -> Result<Placement, TrySendError> {
        let mem = &*self.mem;
        let mut cap = mem.capacity()?;
        let write = RingPos::unpack(mem.word(off::WRITE_POS).load(Ordering::Relaxed), cap)
            .ok_or_else(|| Corrupt::new("write offset invalid"))?;
        let wrap = mem.word(off::WRAP_OFFSET).load(Ordering::Relaxed);
        let mut read_word = mem.word(off::READ_CACHE).load(Ordering::Relaxed);
        let mut fresh = false;
        loop {
            // Only a freshly loaded read position may condemn the ring: the
            // cache is a lower bound that a writer which died mid-update, or
            // a hostile peer, may have left inconsistent.
            let (same_lap, limit, read) = match judge(read_word, write, cap, wrap) {
                Ok(state) => state,
                Err(what) if fresh => return Err(Corrupt::new(what).into()),
                Err(_) => {
                    read_word = reload_read(mem);
                    fresh = true;
                    continue;
                }
            };
            if write.offset + record <= limit {
                return Ok(Placement {
                    at: write.offset,
                    new_write: RingPos {
                        lap: write.lap,
                        offset: write.offset + record,
                    },
                    wrap: None,
                });
            }
            // Growth appends after the data, so only while it does not wrap,
            // and only if the record then fits after the write position.
            let can_grow = limit == cap
                && !no_queue
                && cap < mem.max_size
                && write.offset + record <= mem.max_size;
            // Wrap rather than grow, so a ring whose reader keeps up stays
            // small; but grow when the unread data (with this record) would
            // fill more than a quarter of the ring: once the data wraps the
            // ring cannot grow until the reader catches up, so a burst would
            // find it full at its small capacity.
            let unread = if same_lap {
                write.offset - read.offset
            } else {
                write.offset - RING_HEADER_SIZE
            };
            let crowded = unread + record > (cap - RING_HEADER_SIZE) / 4;
            // Wrap only from the reader's lap (so one wrap offset is
            // enough), and only over space the reader is done with.
            let empty = read == write;
            if !(can_grow && crowded)
                && same_lap
                && RING_HEADER_SIZE + record <= cap
                && (empty || RING_HEADER_SIZE + record <= read.offset)
            {
                let start = write.next_lap();
                return Ok(Placement {
                    at: start.offset,
                    new_write: RingPos {
                        lap: start.lap,
                        offset: start.offset + record,
                    },
                    wrap: Some(write.offset),
                });
            }
            if !fresh {
                // The cached read position may be stale: look at the reader's.
                read_word = reload_read(mem);
                fresh = true;
                continue;
            }
            if can_grow {
                let mut new_cap = (cap * 2).min(mem.max_size);
                while new_cap < mem.max_size && write.offset + record > new_cap {
                    new_cap = (new_cap * 2).min(mem.max_size);
                }
                mem.region
                    .ensure_mapped(new_cap as usize)
                    .map_err(|e| TrySendError::Io(e.to_string()))?;
                // SYNC POINT: release pairs with the reader's acquire in
                // `capacity`: our writes so far come before the new capacity.
                mem.word(off::BUFFER_SIZE).store(new_cap, Ordering::Release);
                cap = new_cap;
                continue;
            }
            return Err(TrySendError::Full);
        }
    }

    /// Reserves room, waiting up to `timeout` for the reader to make some:
    /// spins (see [`WaitPolicy`]), then parks until the reader rings. A
    /// `no_queue` message never waits: it fails at once with
    /// [`SendError::Dropped`].
    pub fn allocate_for_send_timeout(
        &self,
        size: u64,
        message_id: u64,
        obj_count: u64,
        no_queue: bool,
        timeout: Duration,
    ) -> Result<Slot<'_>, SendError> {
        // The fast path reads no clock.
        match self.try_allocate_for_send(size, message_id, obj_count, no_queue) {
            Ok(slot) => return Ok(slot),
            Err(TrySendError::Full) if !no_queue => {}
            Err(e) => return Err(SendError::from(e)),
        }
        let deadline = Instant::now().checked_add(timeout);
        let attempt = || match self.try_allocate_for_send(size, message_id, obj_count, no_queue) {
            Ok(slot) => Some(Ok(slot)),
            // A failed attempt may itself have waited (up to LOCK_GIVE_UP on
            // a spinlock a live peer holds): look at the deadline after each
            // one, not only every few spins.
            Err(TrySendError::Full) if deadline.is_some_and(|d| Instant::now() >= d) => {
                Some(Err(SendError::Timeout))
            }
            Err(TrySendError::Full) if !no_queue => None,
            Err(e) => Some(Err(SendError::from(e))),
        };
        loop {
            if let Some(done) = attempt() {
                return done;
            }
            if let Some(done) = self.mem.writer_spin.spin(&self.policy, deadline, attempt) {
                self.mem.stats.spin_hit();
                return done;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(SendError::Timeout),
                },
                None => None,
            };
            self.mem.arm(Side::Writer);
            let done = attempt();
            let parked = if done.is_none() {
                self.mem.park(Side::Writer, left)
            } else {
                Ok(Parked::Again)
            };
            self.mem.disarm(Side::Writer);
            if let Some(done) = done {
                return done;
            }
            match parked {
                Ok(Parked::Again) => {}
                Ok(Parked::PeerGone) => return Err(SendError::PeerDied),
                Err(e) => return Err(SendError::Wait(e.to_string())),
            }
        }
    }

    /// For event loops and async code: announces a writer about to wait
    /// for room on [`Ring::writer_doorbell`]. Try to reserve once more
    /// after this (the reader may have freed room meanwhile), wait only if
    /// that fails, and call [`disarm_room_doorbell`](Self::disarm_room_doorbell)
    /// exactly once afterwards.
    pub fn arm_room_doorbell(&self) {
        self.mem.arm(Side::Writer);
    }

    /// Takes this writer out of the room doorbell (see
    /// [`arm_room_doorbell`](Self::arm_room_doorbell)).
    pub fn disarm_room_doorbell(&self) {
        self.mem.disarm(Side::Writer);
    }

    /// Sets how this handle waits for room (default: adaptive spin up to
    /// 100 µs, then park).
    pub fn set_wait_policy(&mut self, policy: WaitPolicy) {
        self.policy = policy;
        self.mem.writer_spin.reset(&policy);
    }

    /// Reserves room, waiting as long as it takes (see
    /// [`allocate_for_send_timeout`](Self::allocate_for_send_timeout)).
    pub fn allocate_for_send(
        &self,
        size: u64,
        message_id: u64,
        obj_count: u64,
        no_queue: bool,
    ) -> Result<Slot<'_>, SendError> {
        self.allocate_for_send_timeout(size, message_id, obj_count, no_queue, Duration::MAX)
    }

    /// Sends one message made of `objects` (id, data), copying them in;
    /// waits up to `timeout` for room.
    pub fn send_objects(
        &self,
        message_id: u64,
        kind: Kind,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> Result<(), SendError> {
        let size = objects.iter().try_fold(0u64, |acc, (_, d)| {
            acc.checked_add(shm_layout::object_size(d.len() as u64)?)
        });
        let size = size.ok_or(SendError::TooLarge {
            size: u64::MAX,
            max: self.mem.max_message(),
        })?;
        let mut slot =
            self.allocate_for_send_timeout(size, message_id, objects.len() as u64, false, timeout)?;
        slot.set_kind(kind);
        for (id, data) in objects {
            slot.push_object(*id, data).map_err(SendError::Layout)?;
        }
        slot.send()
    }

    /// Largest message (header and objects) the ring can hold.
    pub fn max_message(&self) -> u64 {
        self.mem.max_message()
    }
}

/// A reserved message being written in place. [`send`](Slot::send)
/// publishes it; dropping it unsent publishes it as skipped, so the reader
/// never waits for it.
pub struct Slot<'a> {
    mem: &'a RingMem,
    at: u64,
    /// Bytes of the object area. Kept as a length, not a `&mut [u8]`: a
    /// reference held across `send` would still be live (and, under Rust's
    /// aliasing rules, exclusive) while the reader reads the published bytes.
    /// `&mut [u8]` is made only inside `object_mut` / `raw_payload`, tied to
    /// their `&mut self` borrow.
    size: u64,
    cursor: u64,
    written: u64,
    object_count: u64,
    message_id: u64,
    kind: Kind,
    no_queue: bool,
    app_flags: u64,
    sent: bool,
}

impl fmt::Debug for Slot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("message_id", &self.message_id)
            .field("size", &self.size)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl Slot<'_> {
    /// Sets the kind (default [`Kind::Raw`]).
    pub fn set_kind(&mut self, kind: Kind) {
        self.kind = kind;
    }

    /// Sets the request id that matches a reply to its request.
    pub fn set_request_id(&mut self, request_id: u64) {
        // SAFETY: the header's request id word belongs to this reservation
        // until it is published (see `try_allocate_for_send`).
        let head = unsafe { self.mem.bytes_mut(self.at + 40, 8) };
        head.copy_from_slice(&request_id.to_le_bytes());
    }

    /// Sets the RPC layer's flag bits (bits 16..32; others are ignored).
    pub fn set_app_flags(&mut self, bits: u64) {
        self.app_flags = bits & flags::APP_MASK;
    }

    /// The message id.
    pub fn message_id(&self) -> u64 {
        self.message_id
    }

    /// Appends an object of `len` bytes and returns its data to fill in place
    /// (its padding is already zeroed).
    pub fn object_mut(&mut self, id: u64, len: u64) -> Result<&mut [u8], LayoutError> {
        let size = shm_layout::object_size(len).ok_or(LayoutError::Overflow)?;
        let available = self.size - self.cursor;
        if size > available || self.written >= self.object_count {
            return Err(LayoutError::NoSpace {
                needed: size,
                available,
            });
        }
        let start = self.at + MESSAGE_HEADER_SIZE + self.cursor;
        // Soundness: [start, start + size) lies inside this slot's object area
        // (`cursor + size <= self.size`), which `try_allocate_for_send`
        // reserved for this slot alone until it is published; the returned
        // slice borrows `self` mutably, so it ends before `send` publishes.
        // SAFETY: sound for the reasons given just above.
        let obj = unsafe { self.mem.bytes_mut(start, size) };
        obj[..8].copy_from_slice(&id.to_le_bytes());
        obj[8..16].copy_from_slice(&len.to_le_bytes());
        obj[16 + len as usize..].fill(0);
        self.cursor += size;
        self.written += 1;
        Ok(&mut obj[16..16 + len as usize])
    }

    /// Appends an object, copying `data`.
    pub fn push_object(&mut self, id: u64, data: &[u8]) -> Result<(), LayoutError> {
        self.object_mut(id, data.len() as u64)?
            .copy_from_slice(data);
        Ok(())
    }

    /// The reserved object area, to encode objects by hand (the caller then
    /// owns the layout: it must hold exactly the reserved objects, with
    /// headers and zero padding). Marks the whole area as written.
    pub fn raw_payload(&mut self) -> &mut [u8] {
        self.cursor = self.size;
        self.written = self.object_count;
        // SAFETY: the object area [at + 48, at + 48 + size) was reserved for
        // this slot alone until it is published; the slice borrows `self`
        // mutably, so it ends before `send` publishes.
        unsafe { self.mem.bytes_mut(self.at + MESSAGE_HEADER_SIZE, self.size) }
    }

    /// Publishes the message. Fails (and publishes it as skipped) when the
    /// objects written do not fill the reservation exactly.
    pub fn send(mut self) -> Result<(), SendError> {
        if self.cursor != self.size || self.written != self.object_count {
            let err = LayoutError::ObjectCount {
                count: self.object_count,
                found: self.written,
                length: MESSAGE_HEADER_SIZE + self.cursor,
            };
            return Err(SendError::Layout(err)); // Drop publishes it as skipped.
        }
        let mut word = flags::WRITTEN | self.kind.to_flags() | self.app_flags;
        if self.no_queue {
            word |= flags::NO_QUEUE;
        }
        self.sent = true;
        // SYNC POINT: release publishes the message's bytes to the reader,
        // which acquires the flags.
        self.mem
            .record_flags(self.at)
            .store(word, Ordering::Release);
        self.mem.ring(Side::Reader);
        Ok(())
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.sent {
            // SYNC POINT: as in `send`; the reader skips the record.
            self.mem
                .record_flags(self.at)
                .store(flags::WRITTEN | flags::SKIP, Ordering::Release);
            self.mem.ring(Side::Reader);
        }
    }
}

/// Reads a ring. One per ring; `Send`, not `Sync`.
pub struct RingReader {
    mem: Arc<RingMem>,
    /// Our read position: the truth (the shared word is only published).
    read: RingPos,
    /// Last write position seen; reloaded only when we catch up with it.
    cached_write: RingPos,
    /// A message stuck `ALLOCATED` at the head: (offset, since).
    stall: Option<(u64, Instant)>,
    consumed: u64,
    policy: WaitPolicy,
    /// Bytes released since writers were last rung.
    freed: u64,
    /// Capacity validated when `cached_write` was loaded.
    cached_cap: u64,
}

impl fmt::Debug for RingReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingReader")
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        // The ring may be read again, by a new reader of this process.
        self.mem.reader_taken.store(false, Ordering::Release);
    }
}

/// What sits at the read position.
enum Head {
    Empty,
    Pending { at: u64, limit: u64 },
    Ready { at: u64, limit: u64, flags: u64 },
}

impl RingReader {
    /// The next message, if one is complete; never waits.
    pub fn try_receive(&mut self) -> Result<Option<Message<'_>>, RecvError> {
        match self.poll_once()? {
            Some((at, len, flags)) => self.message(at, len, flags).map(Some),
            None => Ok(None),
        }
    }

    /// Whether a complete message waits at the head, without consuming it.
    /// (Messages abandoned unsent are skipped on the way, as by a receive.)
    pub fn peek(&mut self) -> Result<bool, RecvError> {
        Ok(self.poll_once()?.is_some())
    }

    /// One look at the ring: the next complete message's place, if any.
    /// A corrupt ring poisons this reader.
    fn poll_once(&mut self) -> Result<Option<(u64, u64, u64)>, RecvError> {
        self.mem.check_poison()?;
        match self.try_receive_at() {
            Err(RecvError::Corrupt(c)) => Err(RecvError::Corrupt(self.mem.poison(c))),
            other => other,
        }
    }

    /// Borrows the validated message at `at` for as long as `self` is
    /// borrowed.
    fn message(&mut self, at: u64, len: u64, flags: u64) -> Result<Message<'_>, RecvError> {
        // Soundness: `try_receive_at` validated that [at, at + len) lies inside
        // the published, mapped data, which this process never writes
        // (writers only write reservations, outside the unread data). The
        // slice lives only for this validation.
        // SAFETY: sound for the reasons given just above.
        let bytes = unsafe { self.mem.bytes(at, len) };
        let header = MessageView::parse(bytes)
            .map(|v| *v.header())
            .map_err(|e| {
                RecvError::Corrupt(
                    self.mem
                        .poison(Corrupt::new(format_args!("message at {at}: {e}"))),
                )
            })?;
        Ok(Message {
            reader: self,
            at,
            len,
            flags,
            header,
        })
    }

    /// Finds the next complete message: (offset, length, flags).
    fn try_receive_at(&mut self) -> Result<Option<(u64, u64, u64)>, RecvError> {
        // A flood of skipped records must not keep a non-blocking call busy
        // forever: after this many, report "nothing yet" (the caller looks
        // again).
        for _ in 0..MAX_SKIPS_PER_LOOK {
            match self.head()? {
                Head::Empty => return Ok(None),
                Head::Pending { at, limit } => return self.check_stalled_writer(at, limit),
                Head::Ready { at, limit, flags } => {
                    self.stall = None;
                    // SAFETY: [at, at + 48) is inside the validated published
                    // data (`head` checked at + 64 <= limit <= capacity).
                    let head = unsafe { self.mem.bytes(at, MESSAGE_HEADER_SIZE) };
                    let len = u64::from_le_bytes(head[24..32].try_into().unwrap_or([0; 8]));
                    let avail = limit - at;
                    if !(MESSAGE_HEADER_SIZE..=avail).contains(&len) {
                        return Err(Corrupt::new(format_args!(
                            "message at {at}: length {len} outside {MESSAGE_HEADER_SIZE}..={avail}"
                        ))
                        .into());
                    }
                    if flags & flags::SKIP != 0 {
                        self.advance(at, len);
                        continue;
                    }
                    return Ok(Some((at, len, flags)));
                }
            }
        }
        Ok(None)
    }

    /// Looks at the read position without consuming.
    fn head(&mut self) -> Result<Head, RecvError> {
        // At most twice: once more after stepping into the next lap.
        loop {
            let mem = &*self.mem;
            let mut write = self.cached_write;
            if write == self.read {
                // SYNC POINT: acquiring WriteOffset makes the record headers,
                // capacity and wrap offset the writers published visible.
                let word = mem.word(off::WRITE_POS).load(Ordering::Acquire);
                // The capacity only grows, and only matters for what lies
                // below the write position: reload it with the write
                // position, never per message (it shares the writers' busy
                // cache line).
                let cap = mem.capacity()?;
                write = RingPos::unpack(word, cap)
                    .ok_or_else(|| Corrupt::new("write offset invalid"))?;
                self.cached_write = write;
                self.cached_cap = cap;
                if write == self.read {
                    return Ok(Head::Empty);
                }
            }
            let cap = self.cached_cap;
            let limit = if write.lap == self.read.lap {
                if write.offset < self.read.offset {
                    return Err(Corrupt::new("write offset behind read offset").into());
                }
                write.offset
            } else if self.read.is_lap_before(write) {
                let wrap = mem.word(off::WRAP_OFFSET).load(Ordering::Relaxed);
                if wrap > cap || wrap < self.read.offset || !wrap.is_multiple_of(RECORD_ALIGN) {
                    return Err(Corrupt::new(format_args!("wrap offset {wrap} invalid")).into());
                }
                if wrap == self.read.offset {
                    // Step into the writers' lap (they are in it: one look
                    // more finds the data there).
                    self.read = self.read.next_lap();
                    self.publish_read();
                    continue;
                }
                wrap
            } else {
                return Err(Corrupt::new("write offset more than a lap ahead").into());
            };
            let at = self.read.offset;
            if at + RECORD_ALIGN > limit || limit > cap {
                return Err(Corrupt::new(format_args!(
                    "message at {at} beyond the data end {limit}"
                ))
                .into());
            }
            // SYNC POINT: acquiring WRITTEN makes the message's bytes visible.
            let flags = mem.record_flags(at).load(Ordering::Acquire);
            return if flags & flags::WRITTEN != 0 {
                Ok(Head::Ready { at, limit, flags })
            } else if flags & flags::ALLOCATED != 0 {
                Ok(Head::Pending { at, limit })
            } else {
                Err(Corrupt::new(format_args!(
                    "message at {at} neither allocated nor written (flags {flags:#x})"
                ))
                .into())
            };
        }
    }

    /// The head message is still being written. After a while, check that
    /// its writer lives; skip and report it if not.
    fn check_stalled_writer(
        &mut self,
        at: u64,
        limit: u64,
    ) -> Result<Option<(u64, u64, u64)>, RecvError> {
        let now = Instant::now();
        match self.stall {
            Some((stalled_at, since)) if stalled_at == at => {
                if now.duration_since(since) < ALLOCATED_LIVENESS_CHECK {
                    return Ok(None);
                }
            }
            _ => {
                self.stall = Some((at, now));
                return Ok(None);
            }
        }
        self.stall = Some((at, now));
        let word = self.mem.record_flags(at).load(Ordering::Acquire);
        let pid = (word >> flags::PID_SHIFT) as u32;
        if word & flags::WRITTEN != 0 || pid == self.mem.pid || sys::pid_alive(pid) {
            return Ok(None);
        }
        // SAFETY: as in `try_receive_at`: the header lies inside the
        // published data (validated by `head` just before).
        let head = unsafe { self.mem.bytes(at, MESSAGE_HEADER_SIZE) };
        let message_id = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0; 8]));
        let len = u64::from_le_bytes(head[24..32].try_into().unwrap_or([0; 8]));
        if !(MESSAGE_HEADER_SIZE..=limit - at).contains(&len) {
            return Err(
                Corrupt::new(format_args!("abandoned message at {at}: bad length {len}")).into(),
            );
        }
        self.stall = None;
        self.advance(at, len);
        Err(RecvError::WriterDied { pid, message_id })
    }

    /// Moves past the message at `at` and publishes the new read position.
    fn advance(&mut self, at: u64, len: u64) {
        // `len` was validated against the data end, so this stays inside it.
        let record = align_up(len, RECORD_ALIGN).unwrap_or(RECORD_ALIGN);
        self.read.offset = at + record;
        self.consumed = self.consumed.wrapping_add(1);
        self.mem
            .word(off::CONSUMED_COUNT)
            .store(self.consumed, Ordering::Relaxed);
        self.publish_read();
        self.freed = self.freed.saturating_add(record);
        // Writers waiting for room are looked for (a fence and a load) and
        // rung once a quarter of the ring is free again, or when it is
        // empty: not for every message, which would cost a fence per
        // message, and a kernel wake-up per message while the ring is full.
        // A writer that armed after our last look is found at the next one
        // (the ring drains to empty at the latest).
        if self.freed >= self.cached_cap / 4 || self.read == self.cached_write {
            self.freed = 0;
            self.mem.ring(Side::Writer);
        }
    }

    fn publish_read(&self) {
        // SYNC POINT: releasing ReadOffset tells writers we are done with
        // every byte before it.
        self.mem
            .word(off::READ_POS)
            .store(self.read.pack(), Ordering::Release);
    }

    /// The next message, waiting up to `timeout`: spins (see
    /// [`WaitPolicy`]), then parks until a writer rings. With a channel's
    /// liveness socket attached, returns [`RecvError::PeerDied`] once the
    /// peer is gone and every message it sent has been received.
    pub fn receive_timeout(&mut self, timeout: Duration) -> Result<Message<'_>, RecvError> {
        // The fast path reads no clock and clones nothing.
        if let Some((at, len, flags)) = self.poll_once()? {
            return self.message(at, len, flags);
        }
        let deadline = Instant::now().checked_add(timeout);
        let mem = Arc::clone(&self.mem);
        let policy = self.policy;
        let found = loop {
            if let Some(found) = self.poll_once()? {
                break found;
            }
            if let Some(found) = mem
                .reader_spin
                .spin(&policy, deadline, || self.poll_once().transpose())
            {
                mem.stats.spin_hit();
                break found?;
            }
            let mut left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(RecvError::Timeout),
                },
                None => None,
            };
            if self.stall.is_some() {
                // A writer may have died mid-message: look again soon.
                left = Some(left.map_or(ALLOCATED_LIVENESS_CHECK, |l| {
                    l.min(ALLOCATED_LIVENESS_CHECK)
                }));
            }
            mem.arm(Side::Reader);
            let found = self.poll_once();
            let parked = match found {
                Ok(None) => mem.park(Side::Reader, left),
                _ => Ok(Parked::Again),
            };
            mem.disarm(Side::Reader);
            if let Some(found) = found? {
                break found;
            }
            match parked {
                Ok(Parked::Again) => {}
                Ok(Parked::PeerGone) => match self.poll_once()? {
                    // What the peer sent before it went is still delivered.
                    Some(found) => break found,
                    None => return Err(RecvError::PeerDied),
                },
                Err(e) => return Err(RecvError::Wait(e.to_string())),
            }
        };
        let (at, len, flags) = found;
        self.message(at, len, flags)
    }

    /// Sets how this reader waits (default: adaptive spin up to 100 µs,
    /// then park).
    pub fn set_wait_policy(&mut self, policy: WaitPolicy) {
        self.policy = policy;
        self.mem.reader_spin.reset(&policy);
    }

    /// For event loops: announces that this reader is about to wait on
    /// [`Ring::reader_doorbell`]. Returns `false` (and disarms) when a
    /// message is already there: receive it instead of waiting. After the
    /// wait, call [`disarm_doorbell`](Self::disarm_doorbell).
    pub fn arm_doorbell(&mut self) -> Result<bool, RecvError> {
        self.mem.arm(Side::Reader);
        match self.poll_once() {
            Ok(None) => Ok(true),
            other => {
                self.mem.disarm(Side::Reader);
                other.map(|_| false)
            }
        }
    }

    /// Takes the reader out of its doorbell (see
    /// [`arm_doorbell`](Self::arm_doorbell)).
    pub fn disarm_doorbell(&mut self) {
        self.mem.disarm(Side::Reader);
    }

    /// For async code: starts the adaptive spin that
    /// [`receive`](Self::receive) does before parking (see [`WaitPolicy`]);
    /// `None` when it parks at once. Drive it with
    /// [`spin_burst`](Self::spin_burst).
    #[cfg_attr(
        not(feature = "tokio"),
        allow(dead_code, reason = "used by the async channel")
    )]
    pub(crate) fn start_spin(&self) -> Option<Spin> {
        self.mem.reader_spin.begin(None)
    }

    /// For async code: one burst (at most `burst` long) of `spin`, looking
    /// at the ring until a complete message is there ([`Burst::Ready`]; not
    /// consumed: receive it). Learns from the outcome as the blocking spin
    /// does (both share the limit).
    #[cfg_attr(
        not(feature = "tokio"),
        allow(dead_code, reason = "used by the async channel")
    )]
    pub(crate) fn spin_burst(
        &mut self,
        spin: &mut Spin,
        burst: Duration,
    ) -> Result<Burst<()>, RecvError> {
        let mem = Arc::clone(&self.mem);
        let policy = self.policy;
        let got = mem.reader_spin.burst(spin, &policy, burst, || {
            self.poll_once().map(|found| found.map(drop)).transpose()
        });
        Ok(match got {
            Burst::Ready(found) => {
                found?;
                mem.stats.spin_hit();
                Burst::Ready(())
            }
            Burst::Again => Burst::Again,
            Burst::Expired => Burst::Expired,
        })
    }

    /// For async code, after [`arm_doorbell`](Self::arm_doorbell) said to
    /// wait: counts the sleep in [`WaitStats::parks`] (the runtime sleeps,
    /// not [`Ring`]'s park).
    #[cfg_attr(
        not(feature = "tokio"),
        allow(dead_code, reason = "used by the async channel")
    )]
    pub(crate) fn note_park(&self) {
        self.mem.stats.parked();
    }

    /// The next message, waiting as long as it takes.
    pub fn receive(&mut self) -> Result<Message<'_>, RecvError> {
        self.receive_timeout(Duration::MAX)
    }
}

/// A received message, borrowed in place from the ring. Dropping it marks it
/// consumed and frees its space.
///
/// Everything borrowed from a message borrows the message itself, so no
/// slice can outlive it (its space is reused once it is dropped):
///
/// ```compile_fail
/// # use shm_channel::{Kind, Ring, RingConfig};
/// # let ring = Ring::create_heap(&RingConfig::new("Doc", 1 << 16)).unwrap();
/// # let mut reader = ring.reader().unwrap();
/// let data: &[u8] = {
///     let m = reader.try_receive().unwrap().unwrap();
///     m.object(0).unwrap() // error: `m` does not live long enough
/// };
/// ```
pub struct Message<'a> {
    reader: &'a mut RingReader,
    at: u64,
    len: u64,
    flags: u64,
    /// The header as validated on receipt. No slice is kept: one held by
    /// the message would still be live while `Drop` releases the space.
    header: MessageHeader,
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("message_id", &self.message_id())
            .field("len", &self.len)
            .field("objects", &self.header.object_count)
            .finish()
    }
}

impl Message<'_> {
    /// The message id.
    pub fn message_id(&self) -> u64 {
        self.header.message_id
    }

    /// The request id (0 where none).
    pub fn request_id(&self) -> u64 {
        self.header.request_id
    }

    /// The kind, as sent.
    pub fn kind(&self) -> Kind {
        Kind::from_flags(self.flags).unwrap_or(Kind::Raw)
    }

    /// The flags word as published.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// The whole message (header and objects), borrowed from the ring.
    pub fn bytes(&self) -> &[u8] {
        // Soundness: [at, at + len) was validated inside the published, mapped
        // data when the message was received; it is released (the read
        // position moves past it) only when `self` is dropped, and the slice
        // borrows `self`; this process never writes published messages.
        // SAFETY: sound for the reasons given just above.
        unsafe { self.reader.mem.bytes(self.at, self.len) }
    }

    /// The validated view: header and objects.
    pub fn view(&self) -> MessageView<'_> {
        MessageView::from_validated(self.header, self.bytes())
    }

    /// The objects, in order.
    pub fn objects(&self) -> shm_layout::ObjectIter<'_> {
        self.view().objects()
    }

    /// The data of the first object with this id.
    pub fn object(&self, id: u64) -> Option<&[u8]> {
        self.view().object(id)
    }
}

impl Drop for Message<'_> {
    fn drop(&mut self) {
        // The reader owns the record until it advances: a plain store.
        self.reader
            .mem
            .record_flags(self.at)
            .store(self.flags | flags::CONSUMED, Ordering::Relaxed);
        self.reader.advance(self.at, self.len);
    }
}

/// Hooks for the crash tests; not part of the API.
#[doc(hidden)]
pub mod testing {
    use std::os::fd::{BorrowedFd, OwnedFd};
    use std::sync::atomic::AtomicU64;

    use crate::region::{MemfdRegion, Region, RegionError};
    use crate::sys;

    /// Takes the writers' spinlock and never releases it, as a writer that
    /// dies inside its critical section would.
    pub fn hold_spinlock_forever(writer: &super::RingWriter) {
        if let Some(guard) = writer.mem.lock() {
            std::mem::forget(guard);
        }
    }

    /// One page of shared memory seen as 512 atomic words, with no ring
    /// protocol: the `raw-spin` benchmark's cache-line ping-pong, the
    /// physical limit the ring is measured against.
    pub struct SharedWords {
        region: MemfdRegion,
    }

    impl SharedWords {
        /// Words in the page.
        pub const LEN: usize = 512;

        /// A new page in a sealed memfd.
        pub fn create(name: &str) -> Result<Self, RegionError> {
            let page = sys::page_size();
            Ok(SharedWords {
                region: MemfdRegion::create(name, page, page)?,
            })
        }

        /// The page of another process, from its memfd.
        pub fn open(fd: OwnedFd) -> Result<Self, RegionError> {
            Ok(SharedWords {
                region: MemfdRegion::open(fd, sys::page_size())?,
            })
        }

        /// The memfd, to give to the peer.
        pub fn fd(&self) -> BorrowedFd<'_> {
            self.region.fd()
        }

        /// Word `i` (`i < LEN`), or `None` past the page.
        pub fn word(&self, i: usize) -> Option<&AtomicU64> {
            if i >= Self::LEN || (i + 1) * 8 > self.region.mapped_len() {
                return None;
            }
            // Soundness: 1. `i` is checked to lie inside the mapped page, which
            // stays mapped as long as `self.region` (the reference borrows
            // `self`); 2. the page is aligned and `i * 8` is a multiple of 8;
            // 3. the words are only ever accessed atomically, in every
            // process.
            // SAFETY: sound for the reasons given just above.
            Some(unsafe { AtomicU64::from_ptr(self.region.base().add(i * 8).cast::<u64>()) })
        }
    }
}

#[cfg(test)]
mod tests;
