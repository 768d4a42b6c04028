//! Regions: the memory a ring lives in.
//!
//! A ring sees its memory as `[base, base + max_len)`, of which a prefix is accessible and may
//! grow, in place, up to `max_len`. Two implementations:
//!
//! * [`HeapRegion`]: process-local, zeroed heap memory, all accessible from the start. For the
//!   conformance suite, Miri and loom.
//! * [`MemfdRegion`]: a sealed memfd (`F_SEAL_SHRINK | F_SEAL_SEAL`) mapped inside an
//!   address-space reservation of `max_len` plus one guard page that is never mapped, so a
//!   stray access past the maximum faults instead of reading a neighbour. Growth extends the
//!   file (never shrinks it) and maps the new part after the old one: the base never moves and
//!   pointers into the accessible prefix stay valid.

#![allow(
    dead_code,
    reason = "the ring (being written) is the user of this module; until it lands, tests are"
)]

use std::alloc::Layout;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::sys;

/// Why a region could not be created, opened or grown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation that failed, e.g. `"memfd_create"`.
        op: &'static str,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A length above the region's maximum was asked for.
    #[error("{len} bytes requested, but the region's maximum is {max} bytes")]
    TooLarge {
        /// The requested length in bytes.
        len: usize,
        /// The region's maximum in bytes.
        max: usize,
    },
    /// The shared file is shorter than the length the peer published (or than one page, for a
    /// received file): mapping it would fault (`SIGBUS`), so it is refused.
    #[error(
        "the shared file holds {file_len} bytes, fewer than the {len} bytes needed; \
         refusing to map past its end"
    )]
    Truncated {
        /// The length that was needed, in bytes.
        len: usize,
        /// The file's actual length, in bytes.
        file_len: u64,
    },
    /// A received file lacks seals that protect us from its peer.
    #[error(
        "the received shared file lacks the seal(s) {missing}: the peer could shrink it \
         under us"
    )]
    NotSealed {
        /// The missing seals, e.g. `"F_SEAL_SHRINK"`.
        missing: String,
    },
    /// The maximum length is zero or not a multiple of the page size.
    #[error("a region's maximum must be a non-zero multiple of the page size {page}, not {max}")]
    BadMaximum {
        /// The maximum that was asked for, in bytes.
        max: usize,
        /// The page size, in bytes.
        page: usize,
    },
}

impl RegionError {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| RegionError::Io { op, source }
    }
}

/// Where a ring's bytes live. `base()` is valid for `max_len()` bytes of address space, of which
/// `[0, mapped_len())` is readable and writable in this process.
pub(crate) trait Region: Send + Sync {
    /// Start of the ring (page aligned); never moves.
    fn base(&self) -> *mut u8;
    /// The ring's maximum in bytes (a multiple of the page size); the guard page follows it.
    fn max_len(&self) -> usize;
    /// Bytes currently accessible in THIS process (monotonic).
    fn mapped_len(&self) -> usize;
    /// Makes `[0, len)` accessible in this process.
    ///
    /// `grow == true` (a writer making room): extends the shared backing to at least `len`
    /// first (`ftruncate`, never shrink). `grow == false` (a reader following a capacity the
    /// peer published): verifies the backing is at least `len` long (`fstat`) before mapping,
    /// else `Err(RegionError::Truncated)`: never maps past the end of the file (`SIGBUS`).
    /// `len > max_len()` is `Err(RegionError::TooLarge)`. Thread safe: several writer threads
    /// may call it at once.
    fn ensure_mapped(&self, len: usize, grow: bool) -> Result<(), RegionError>;
}

fn check_maximum(max_len: usize) -> Result<usize, RegionError> {
    let page = sys::page_size();
    if max_len == 0 || !max_len.is_multiple_of(page) {
        return Err(RegionError::BadMaximum { max: max_len, page });
    }
    Ok(page)
}

/// `len` rounded up to a multiple of `page` (a power of two); `None` on overflow.
fn round_up(len: usize, page: usize) -> Option<usize> {
    Some(len.checked_add(page - 1)? & !(page - 1))
}

/// Process-local, zeroed, page-aligned heap memory, all of it accessible from the start.
/// No guard page; `ensure_mapped` is a bounds check.
#[derive(Debug)]
pub(crate) struct HeapRegion {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY:
// 1. `HeapRegion` owns its allocation exclusively, like a `Box<[u8]>`; the pointer has no
//    thread-affine state.
// 2. It never reads or writes the memory itself; users access it through `base()` with their
//    own synchronisation (atomics), as they must for shared memory.
unsafe impl Send for HeapRegion {}
// SAFETY: `&HeapRegion` only hands out the base address and fixed lengths; see `Send`.
unsafe impl Sync for HeapRegion {}

impl HeapRegion {
    /// Allocates `max_len` zeroed bytes aligned to the page size. `max_len` must be a non-zero
    /// multiple of the page size.
    pub(crate) fn new(max_len: usize) -> Result<Self, RegionError> {
        let page = check_maximum(max_len)?;
        let layout = Layout::from_size_align(max_len, page)
            .map_err(|_| RegionError::BadMaximum { max: max_len, page })?;
        // SAFETY: `layout` has a non-zero size (`check_maximum` refuses 0).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        Ok(HeapRegion { base, layout })
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY:
        // 1. `base` came from `alloc_zeroed(self.layout)` and is freed only here, once.
        // 2. The region is being dropped, so nobody is handed its base any more; users stop
        //    using pointers into a region before dropping it (as with any owned buffer).
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

impl Region for HeapRegion {
    fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn max_len(&self) -> usize {
        self.layout.size()
    }

    fn mapped_len(&self) -> usize {
        self.layout.size()
    }

    fn ensure_mapped(&self, len: usize, _grow: bool) -> Result<(), RegionError> {
        if len > self.layout.size() {
            return Err(RegionError::TooLarge {
                len,
                max: self.layout.size(),
            });
        }
        Ok(())
    }
}

/// A sealed memfd mapped at the start of a reservation of `max_len` bytes plus a guard page.
#[derive(Debug)]
pub(crate) struct MemfdRegion {
    fd: OwnedFd,
    reservation: sys::Reservation,
    page: usize,
    /// Bytes mapped at the start of the reservation; a page multiple; only grows.
    mapped_len: AtomicUsize,
    /// Serialises the slow path of `ensure_mapped` (fstat, ftruncate, mmap, publish) among
    /// this process's threads. Process-local on purpose: never a lock in shared memory.
    grow_lock: Mutex<()>,
}

impl MemfdRegion {
    /// Creates a memfd named `name` (a label, see `/proc/<pid>/fd`), sized `initial_len`
    /// rounded up to whole pages (at least one), sealed `F_SEAL_SHRINK | F_SEAL_SEAL`, mapped at
    /// the start of a fresh reservation of `max_len` bytes plus the guard page.
    pub(crate) fn create(
        name: &str,
        max_len: usize,
        initial_len: usize,
    ) -> Result<Self, RegionError> {
        let page = check_maximum(max_len)?;
        if initial_len > max_len {
            return Err(RegionError::TooLarge {
                len: initial_len,
                max: max_len,
            });
        }
        // Cannot overflow: initial_len <= max_len, a page multiple. `max` makes it >= 1 page.
        let initial = round_up(initial_len, page).unwrap_or(max_len).max(page);
        let fd = sys::memfd_create(name).map_err(RegionError::io("memfd_create"))?;
        sys::grow_file(fd.as_fd(), initial as u64).map_err(RegionError::io("ftruncate"))?;
        sys::add_seals(fd.as_fd(), sys::REQUIRED_SEALS)
            .map_err(RegionError::io("fcntl(F_ADD_SEALS)"))?;
        Self::map_initial(fd, max_len, page, initial)
    }

    /// Opens a memfd received from a peer: checks that it carries `F_SEAL_SHRINK` and
    /// `F_SEAL_SEAL` (else [`RegionError::NotSealed`]), that it holds at least one page (else
    /// [`RegionError::Truncated`]), and maps what it holds (whole pages, at most `max_len`)
    /// at the start of a fresh reservation of `max_len` bytes plus the guard page.
    ///
    /// A file longer than `max_len` is accepted; only its first `max_len` bytes are ever mapped.
    pub(crate) fn open(fd: OwnedFd, max_len: usize) -> Result<Self, RegionError> {
        let page = check_maximum(max_len)?;
        match sys::check_received_seals(fd.as_fd()) {
            Ok(()) => {}
            Err(sys::SealError::Io(source)) => {
                return Err(RegionError::Io {
                    op: "fcntl(F_GET_SEALS)",
                    source,
                });
            }
            Err(sys::SealError::Missing { missing }) => {
                return Err(RegionError::NotSealed {
                    missing: seal_names(missing),
                });
            }
        }
        let file_len = sys::file_len(fd.as_fd()).map_err(RegionError::io("fstat"))?;
        // Only whole pages that the file holds: a partial last page waits for `ensure_mapped`.
        let whole = usize::try_from(file_len).unwrap_or(usize::MAX) & !(page - 1);
        if whole < page {
            return Err(RegionError::Truncated {
                len: page,
                file_len,
            });
        }
        Self::map_initial(fd, max_len, page, whole.min(max_len))
    }

    fn map_initial(
        fd: OwnedFd,
        max_len: usize,
        page: usize,
        initial: usize,
    ) -> Result<Self, RegionError> {
        let reservation = sys::reserve(max_len).map_err(RegionError::io("mmap(PROT_NONE)"))?;
        sys::map_shared_fixed(&reservation, 0, initial, fd.as_fd(), 0)
            .map_err(RegionError::io("mmap(MAP_SHARED|MAP_FIXED)"))?;
        Ok(MemfdRegion {
            fd,
            reservation,
            page,
            mapped_len: AtomicUsize::new(initial),
            grow_lock: Mutex::new(()),
        })
    }

    /// The memfd, to pass to a peer (it opens it with [`MemfdRegion::open`]).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Memory actually allocated to the shared file (touched pages), in bytes.
    pub(crate) fn allocated_bytes(&self) -> Result<u64, RegionError> {
        sys::allocated_bytes(self.fd.as_fd()).map_err(RegionError::io("fstat"))
    }

    /// The slow path of `ensure_mapped`, under `grow_lock`.
    fn map_more(&self, len: usize, grow: bool) -> Result<(), RegionError> {
        let fd = self.fd.as_fd();
        // Relaxed: only this function, under `grow_lock`, stores `mapped_len`.
        let mapped = self.mapped_len.load(Ordering::Relaxed);
        if len <= mapped {
            return Ok(());
        }
        let max_len = self.reservation.len();
        // `len <= max_len`, a page multiple, so this neither overflows nor passes the maximum.
        let target = round_up(len, self.page).unwrap_or(max_len).min(max_len);
        let file_len = sys::file_len(fd).map_err(RegionError::io("fstat"))?;
        if grow {
            if file_len < target as u64
                && let Err(source) = sys::grow_file(fd, target as u64)
            {
                // Another process may have grown the file in between (our ftruncate then
                // fails as a shrink): fine if it is now long enough.
                let now = sys::file_len(fd).map_err(RegionError::io("fstat"))?;
                if now < target as u64 {
                    return Err(RegionError::Io {
                        op: "ftruncate",
                        source,
                    });
                }
            }
        } else if file_len < len as u64 {
            return Err(RegionError::Truncated { len, file_len });
        }
        // The file now holds at least `len` bytes and cannot shrink (sealed), so every page of
        // `[mapped, target)` lies at least partly inside it: touching it never raises SIGBUS.
        sys::map_shared_fixed(
            &self.reservation,
            mapped,
            target - mapped,
            fd,
            mapped as u64,
        )
        .map_err(RegionError::io("mmap(MAP_SHARED|MAP_FIXED)"))?;
        // SYNC POINT: the new mapping becomes visible to threads that Acquire-load
        // `mapped_len` in `ensure_mapped`/`mapped_len` and then touch `[mapped, target)`.
        self.mapped_len.store(target, Ordering::Release);
        Ok(())
    }
}

impl Region for MemfdRegion {
    fn base(&self) -> *mut u8 {
        self.reservation.base()
    }

    fn max_len(&self) -> usize {
        self.reservation.len()
    }

    fn mapped_len(&self) -> usize {
        // SYNC POINT: pairs with the Release store in `map_more`: the mapping is in place.
        self.mapped_len.load(Ordering::Acquire)
    }

    fn ensure_mapped(&self, len: usize, grow: bool) -> Result<(), RegionError> {
        let max = self.reservation.len();
        if len > max {
            return Err(RegionError::TooLarge { len, max });
        }
        if len <= self.mapped_len() {
            return Ok(());
        }
        // The guarded state is `()`; `mapped_len` and the reservation stay consistent even if
        // a holder panicked, so a poisoned lock is still usable.
        let _guard = self
            .grow_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.map_more(len, grow)
    }
}

/// `"F_SEAL_SHRINK | F_SEAL_SEAL"` for error messages.
fn seal_names(seals: sys::SealFlags) -> String {
    let known = [
        (sys::SealFlags::SEAL, "F_SEAL_SEAL"),
        (sys::SealFlags::SHRINK, "F_SEAL_SHRINK"),
        (sys::SealFlags::GROW, "F_SEAL_GROW"),
        (sys::SealFlags::WRITE, "F_SEAL_WRITE"),
        (sys::SealFlags::FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
    ];
    let names: Vec<&str> = known
        .iter()
        .filter(|(flag, _)| seals.contains(*flag))
        .map(|&(_, name)| name)
        .collect();
    if names.is_empty() {
        format!("{:#x}", seals.bits())
    } else {
        names.join(" | ")
    }
}
