//! Regions: the memory a ring lives in.
//!
//! A ring sees its memory as `[base, base + max_len)`, of which a prefix is accessible and may
//! grow, in place, up to `max_len`. Two implementations:
//!
//! * [`HeapRegion`]: process-local, zeroed heap memory, all accessible from the start. For the
//!   conformance suite, Miri and loom.
//! * [`MemfdRegion`]: a memfd of `max_len` bytes sealed at that length (`F_SEAL_SHRINK |
//!   F_SEAL_GROW | F_SEAL_SEAL`: untouched pages cost nothing), mapped inside an address-space
//!   reservation of `max_len` plus one guard page that is never mapped, so a stray access past
//!   the maximum faults instead of reading a neighbour. Growth maps more of the file after what
//!   is mapped: the base never moves and pointers into the accessible prefix stay valid.

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
        "the received shared file lacks the seal(s) {missing}: the peer could change its \
         length under us"
    )]
    NotSealed {
        /// The missing seals, e.g. `"F_SEAL_SHRINK | F_SEAL_GROW"`.
        missing: String,
    },
    /// A received file is sealed against writing, which a ring needs on both sides.
    #[error("the received shared file is sealed against writing ({seals}): it cannot carry a ring")]
    WriteSealed {
        /// The write seals it carries, e.g. `"F_SEAL_WRITE"`.
        seals: String,
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
    /// Makes `[0, len)` accessible in this process (a writer growing the ring, or a reader
    /// following a capacity the peer published). Never maps past the end of the shared file
    /// (which would raise `SIGBUS`): a `len` the file does not back is
    /// `Err(RegionError::Truncated)`, and `len > max_len()` is `Err(RegionError::TooLarge)`.
    /// Thread safe: several threads may call it at once.
    fn ensure_mapped(&self, len: usize) -> Result<(), RegionError>;
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

// `HeapRegion` owns its allocation exclusively, like a `Box<[u8]>`, and never reads or
// writes the memory itself: users access it through `base()` with their own synchronisation.
// SAFETY: 1. the pointer has no thread-affine state; 2. all access is the users' (atomics).
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
        // The region is being dropped: users stop using pointers into it before that.
        // SAFETY: 1. `base` came from `alloc_zeroed(self.layout)`; 2. it is freed here, once;
        // 3. no pointer into it is used any more.
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

    fn ensure_mapped(&self, len: usize) -> Result<(), RegionError> {
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
///
/// The file's length never changes once it is shared: its creator sizes it to the maximum and
/// seals it (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), and a receiver refuses a file without
/// those seals. Pages never touched cost nothing (neither memory nor commit charge: memfds
/// allocate on first touch), so a ring of a 64 MiB maximum that carries small messages holds a
/// few pages. What grows is the mapping: only the prefix the ring uses is mapped, so an access
/// past it faults.
#[derive(Debug)]
pub(crate) struct MemfdRegion {
    fd: OwnedFd,
    reservation: sys::Reservation,
    page: usize,
    /// The whole pages of the file that lie inside the reservation: `ensure_mapped` never maps
    /// past them. Fixed: the file's length is sealed.
    backed_len: usize,
    /// Bytes mapped at the start of the reservation; a page multiple; only grows.
    mapped_len: AtomicUsize,
    /// Serialises the slow path of `ensure_mapped` (mmap, publish) among this process's
    /// threads. Process-local on purpose: never a lock in shared memory.
    grow_lock: Mutex<()>,
}

impl MemfdRegion {
    /// Creates a memfd named `name` (a label, see `/proc/<pid>/fd`) of `max_len` bytes, sealed
    /// `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, and maps its first `initial_len` bytes
    /// (rounded up to whole pages, at least one) at the start of a fresh reservation of `max_len`
    /// bytes plus the guard page.
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
        sys::grow_file(fd.as_fd(), max_len as u64).map_err(RegionError::io("ftruncate"))?;
        sys::add_seals(fd.as_fd(), sys::REQUIRED_SEALS)
            .map_err(RegionError::io("fcntl(F_ADD_SEALS)"))?;
        Self::map_initial(fd, max_len, page, max_len, initial)
    }

    /// Opens a memfd received from a peer: checks that it carries `F_SEAL_SHRINK`,
    /// `F_SEAL_GROW` and `F_SEAL_SEAL` (else [`RegionError::NotSealed`]) and no write seal (else
    /// [`RegionError::WriteSealed`]), that it holds at least one page (else
    /// [`RegionError::Truncated`]), and maps its first page at the start of a fresh reservation
    /// of `max_len` bytes plus the guard page.
    ///
    /// A file longer than `max_len` is accepted; only its first `max_len` bytes are ever mapped.
    /// A shorter one is accepted too (the peer may have agreed to a smaller maximum):
    /// [`MemfdRegion::backed_len`] tells how much of it may be mapped.
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
            Err(sys::SealError::Forbidden { forbidden }) => {
                return Err(RegionError::WriteSealed {
                    seals: seal_names(forbidden),
                });
            }
        }
        // Read once: the seals make it final.
        let file_len = sys::file_len(fd.as_fd()).map_err(RegionError::io("fstat"))?;
        // Only whole pages: a partial last page would never fill up (the length is sealed).
        let whole = usize::try_from(file_len).unwrap_or(usize::MAX) & !(page - 1);
        if whole < page {
            return Err(RegionError::Truncated {
                len: page,
                file_len,
            });
        }
        Self::map_initial(fd, max_len, page, whole.min(max_len), page)
    }

    fn map_initial(
        fd: OwnedFd,
        max_len: usize,
        page: usize,
        backed_len: usize,
        initial: usize,
    ) -> Result<Self, RegionError> {
        let reservation = sys::reserve(max_len).map_err(RegionError::io("mmap(PROT_NONE)"))?;
        sys::map_shared_fixed(&reservation, 0, initial, fd.as_fd(), 0)
            .map_err(RegionError::io("mmap(MAP_SHARED|MAP_FIXED)"))?;
        Ok(MemfdRegion {
            fd,
            reservation,
            page,
            backed_len,
            mapped_len: AtomicUsize::new(initial),
            grow_lock: Mutex::new(()),
        })
    }

    /// The memfd, to pass to a peer (it opens it with [`MemfdRegion::open`]).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How many bytes of the reservation the file backs (whole pages, at most `max_len`): the
    /// most `ensure_mapped` will ever map.
    pub(crate) fn backed_len(&self) -> usize {
        self.backed_len
    }

    /// Memory actually allocated to the shared file (touched pages), in bytes.
    pub(crate) fn allocated_bytes(&self) -> Result<u64, RegionError> {
        sys::allocated_bytes(self.fd.as_fd()).map_err(RegionError::io("fstat"))
    }

    /// The slow path of `ensure_mapped`, under `grow_lock`.
    fn map_more(&self, len: usize) -> Result<(), RegionError> {
        // Relaxed: only this function, under `grow_lock`, stores `mapped_len`.
        let mapped = self.mapped_len.load(Ordering::Relaxed);
        if len <= mapped {
            return Ok(());
        }
        if len > self.backed_len {
            return Err(RegionError::Truncated {
                len,
                file_len: self.backed_len as u64,
            });
        }
        // `len <= backed_len`, a page multiple, so this neither overflows nor passes it.
        let target = round_up(len, self.page)
            .unwrap_or(self.backed_len)
            .min(self.backed_len);
        // The file holds `backed_len` bytes and its length is sealed, so every page of
        // `[mapped, target)` lies inside it: touching it never raises SIGBUS.
        sys::map_shared_fixed(
            &self.reservation,
            mapped,
            target - mapped,
            self.fd.as_fd(),
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

    fn ensure_mapped(&self, len: usize) -> Result<(), RegionError> {
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
        self.map_more(len)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sys::test_support::unique_name;

    fn page() -> usize {
        sys::page_size()
    }

    /// Writes `bytes` at `offset` of the region (must be mapped).
    fn write(region: &dyn Region, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= region.mapped_len());
        // SAFETY: the range is inside the mapped prefix (asserted), and the test accesses the
        // region from this thread only.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.base().add(offset), bytes.len())
        }
    }

    /// Reads `len` bytes at `offset` of the region (must be mapped).
    fn read(region: &dyn Region, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= region.mapped_len());
        let mut out = vec![0; len];
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(region.base().add(offset), out.as_mut_ptr(), len) };
        out
    }

    #[test]
    fn regions_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HeapRegion>();
        assert_send_sync::<MemfdRegion>();
        assert_send_sync::<RegionError>();
    }

    #[test]
    fn bad_maximum_is_refused() {
        for max in [0, 1, page() + 1] {
            assert!(matches!(
                HeapRegion::new(max),
                Err(RegionError::BadMaximum { .. })
            ));
            assert!(matches!(
                MemfdRegion::create(&unique_name("badmax"), max, 0),
                Err(RegionError::BadMaximum { .. })
            ));
        }
        let fd = sys::memfd_create(&unique_name("badmax-open")).unwrap();
        assert!(matches!(
            MemfdRegion::open(fd, 3),
            Err(RegionError::BadMaximum { .. })
        ));
    }

    #[test]
    fn heap_region_is_zeroed_aligned_and_bounds_checked() {
        let max = 16 * page();
        let r = HeapRegion::new(max).unwrap();
        assert!((r.base() as usize).is_multiple_of(page()));
        assert_eq!((r.max_len(), r.mapped_len()), (max, max));
        assert!(read(&r, 0, max).iter().all(|&b| b == 0));
        r.ensure_mapped(max).unwrap();
        r.ensure_mapped(1).unwrap();
        match r.ensure_mapped(max + 1) {
            Err(RegionError::TooLarge { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        write(&r, max - 3, b"end");
        assert_eq!(read(&r, max - 3, 3), b"end");
    }

    #[test]
    fn created_memfd_region_is_sealed_at_its_maximum_and_maps_little() {
        let max = 64 * page();
        let r = MemfdRegion::create(&unique_name("create"), max, 0).unwrap();
        let seals = sys::seals(r.fd()).unwrap();
        assert!(seals.contains(sys::REQUIRED_SEALS), "{seals:?}");
        assert!(seals.contains(sys::SealFlags::GROW), "{seals:?}");
        assert_eq!(r.max_len(), max);
        assert_eq!(r.mapped_len(), page());
        assert_eq!(r.backed_len(), max);
        assert_eq!(sys::file_len(r.fd()).unwrap(), max as u64);
        assert!((r.base() as usize).is_multiple_of(page()));
        // Odd initial lengths round up to whole pages.
        let r = MemfdRegion::create(&unique_name("create-odd"), max, page() + 1).unwrap();
        assert_eq!(r.mapped_len(), 2 * page());
        assert!(matches!(
            MemfdRegion::create(&unique_name("create-big"), max, max + 1),
            Err(RegionError::TooLarge { .. })
        ));
    }

    /// Issue 9: the peer that received a region's memfd can neither shrink it (our next access
    /// would raise SIGBUS) nor grow it past the agreed maximum (memory nobody agreed to), nor
    /// change its seals.
    #[test]
    fn a_peer_can_neither_grow_nor_shrink_a_created_region() {
        let max = 16 * page();
        let r = MemfdRegion::create(&unique_name("fixed"), max, 0).unwrap();
        let peer = r.fd().try_clone_to_owned().unwrap();
        for len in [0, 1, page() as u64, max as u64 - 1, max as u64 + 1, 1 << 40] {
            let err = sys::test_support::raw_ftruncate(peer.as_fd(), len).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(libc_eperm()),
                "ftruncate to {len}: {err}"
            );
        }
        assert!(sys::add_seals(peer.as_fd(), sys::SealFlags::WRITE).is_err());
        assert_eq!(sys::file_len(r.fd()).unwrap(), max as u64);
        // The whole maximum is usable, and only the touched pages are allocated.
        r.ensure_mapped(max).unwrap();
        write(&r, max - 1, b"!");
        assert_eq!(r.allocated_bytes().unwrap(), page() as u64);
    }

    fn libc_eperm() -> i32 {
        rustix::io::Errno::PERM.raw_os_error()
    }

    #[test]
    fn open_refuses_unsealed_and_half_sealed_files() {
        let max = 16 * page();
        // Sealable, never sealed.
        let fd = sys::memfd_create(&unique_name("unsealed")).unwrap();
        sys::grow_file(fd.as_fd(), page() as u64).unwrap();
        match MemfdRegion::open(fd, max) {
            Err(RegionError::NotSealed { missing }) => {
                assert_eq!(missing, "F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW");
            }
            other => panic!("expected NotSealed, got {other:?}"),
        }
        // F_SEAL_SEAL without F_SEAL_SHRINK.
        let fd = sys::memfd_create(&unique_name("noshrink")).unwrap();
        sys::grow_file(fd.as_fd(), page() as u64).unwrap();
        sys::add_seals(fd.as_fd(), sys::SealFlags::SEAL | sys::SealFlags::GROW).unwrap();
        match MemfdRegion::open(fd, max) {
            Err(e @ RegionError::NotSealed { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("F_SEAL_SHRINK") && !msg.contains("F_SEAL_SEAL"),
                    "{msg}"
                );
            }
            other => panic!("expected NotSealed, got {other:?}"),
        }
        // Growable (the seals of the previous version): refused.
        let fd = sys::memfd_create(&unique_name("growable")).unwrap();
        sys::grow_file(fd.as_fd(), max as u64).unwrap();
        sys::add_seals(fd.as_fd(), sys::SealFlags::SEAL | sys::SealFlags::SHRINK).unwrap();
        match MemfdRegion::open(fd, max) {
            Err(e @ RegionError::NotSealed { .. }) => {
                assert!(
                    e.to_string().contains("lacks the seal(s) F_SEAL_GROW"),
                    "{e}"
                );
            }
            other => panic!("expected NotSealed, got {other:?}"),
        }
        // Sealed against writing: our writable mapping would fail; refused by name.
        let fd = sys::memfd_create(&unique_name("writesealed")).unwrap();
        sys::grow_file(fd.as_fd(), max as u64).unwrap();
        sys::add_seals(fd.as_fd(), sys::REQUIRED_SEALS | sys::SealFlags::WRITE).unwrap();
        match MemfdRegion::open(fd, max) {
            Err(e @ RegionError::WriteSealed { .. }) => {
                assert!(e.to_string().contains("F_SEAL_WRITE"), "{e}");
            }
            other => panic!("expected WriteSealed, got {other:?}"),
        }
        // Not a memfd at all: the seals cannot even be read.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(matches!(
            MemfdRegion::open(OwnedFd::from(file), max),
            Err(RegionError::Io { .. })
        ));
    }

    #[test]
    fn open_refuses_a_file_shorter_than_a_page() {
        let fd = sys::memfd_create(&unique_name("short")).unwrap();
        sys::grow_file(fd.as_fd(), 100).unwrap();
        sys::add_seals(fd.as_fd(), sys::REQUIRED_SEALS).unwrap();
        match MemfdRegion::open(fd, 16 * page()) {
            Err(RegionError::Truncated { len, file_len }) => {
                assert_eq!((len, file_len), (page(), 100));
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn open_maps_at_most_the_maximum_of_a_longer_file() {
        let r = MemfdRegion::create(&unique_name("long"), 8 * page(), 8 * page()).unwrap();
        let opened = MemfdRegion::open(r.fd().try_clone_to_owned().unwrap(), 4 * page()).unwrap();
        assert_eq!(
            (opened.max_len(), opened.mapped_len(), opened.backed_len()),
            (4 * page(), page(), 4 * page())
        );
        opened.ensure_mapped(4 * page()).unwrap();
        assert!(matches!(
            opened.ensure_mapped(4 * page() + 1),
            Err(RegionError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_shorter_file_is_mapped_only_as_far_as_it_reaches() {
        // The peer's file is shorter than our maximum, and its last page is partial: only its
        // whole pages are ever mapped (its length is sealed, so a partial page never fills).
        let max = 16 * page();
        let fd = sys::memfd_create(&unique_name("shorter")).unwrap();
        sys::grow_file(fd.as_fd(), 4 * page() as u64 + 100).unwrap();
        sys::add_seals(fd.as_fd(), sys::REQUIRED_SEALS).unwrap();
        let r = MemfdRegion::open(fd, max).unwrap();
        assert_eq!(r.backed_len(), 4 * page());
        r.ensure_mapped(4 * page()).unwrap();
        for len in [4 * page() + 1, 8 * page()] {
            match r.ensure_mapped(len) {
                Err(RegionError::Truncated { len: l, file_len }) => {
                    assert_eq!((l, file_len), (len, 4 * page() as u64));
                }
                other => panic!("expected Truncated, got {other:?}"),
            }
        }
        assert_eq!(r.mapped_len(), 4 * page());
    }

    #[test]
    fn writer_growth_is_seen_by_a_second_mapping_of_the_same_file() {
        let max = 64 * page();
        let writer = MemfdRegion::create(&unique_name("grow"), max, 0).unwrap();
        write(&writer, 0, b"first page");
        let reader = MemfdRegion::open(writer.fd().try_clone_to_owned().unwrap(), max).unwrap();
        assert_ne!(reader.base(), writer.base());
        assert_eq!(reader.mapped_len(), page());
        assert_eq!(read(&reader, 0, 10), b"first page");

        let base_before = writer.base();
        writer.ensure_mapped(4 * page()).unwrap();
        assert_eq!(writer.base(), base_before, "growth must not move the base");
        assert_eq!(writer.mapped_len(), 4 * page());
        assert_eq!(sys::file_len(writer.fd()).unwrap(), max as u64);
        write(&writer, 4 * page() - 9, b"last page");
        assert_eq!(
            read(&writer, 0, 10),
            b"first page",
            "old data stays in place"
        );

        reader.ensure_mapped(4 * page()).unwrap();
        assert_eq!(reader.mapped_len(), 4 * page());
        assert_eq!(read(&reader, 4 * page() - 9, 9), b"last page");
        // And the other way round.
        write(&reader, 2 * page(), b"reply");
        assert_eq!(read(&writer, 2 * page(), 5), b"reply");

        // Lengths that are not page multiples are rounded up; smaller ones are no-ops.
        writer.ensure_mapped(5 * page() + 1).unwrap();
        assert_eq!(writer.mapped_len(), 6 * page());
        writer.ensure_mapped(page()).unwrap();
        assert_eq!(writer.mapped_len(), 6 * page());
        assert!(matches!(
            writer.ensure_mapped(max + 1),
            Err(RegionError::TooLarge { .. })
        ));
        writer.ensure_mapped(max).unwrap();
        write(&writer, max - 1, b"!");
    }

    #[test]
    fn concurrent_growth_from_several_threads() {
        let max = 256 * page();
        let r = Arc::new(MemfdRegion::create(&unique_name("threads"), max, 0).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    for step in 1..=64 {
                        let len = (step * 4 - t) * page();
                        r.ensure_mapped(len).unwrap();
                        assert!(r.mapped_len() >= len);
                        // Touch the last byte we asked for: it must be mapped now.
                        // `4 * step - t` differs for each `t` (mod 4): one writer per byte.
                        // SAFETY: `len <= mapped_len` (asserted), mapped while `r` lives, and
                        // each byte is written by one thread only and read by none.
                        unsafe { r.base().add(len - 1).write_volatile(1) };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.mapped_len(), max);
        assert_eq!(sys::file_len(r.fd()).unwrap(), max as u64);
    }

    #[test]
    fn a_large_maximum_costs_only_touched_pages() {
        let max = 64 << 20;
        let r = MemfdRegion::create(&unique_name("small"), max, 0).unwrap();
        assert_eq!(r.mapped_len(), page());
        write(&r, 0, &vec![0xa5; page()]);
        let allocated = r.allocated_bytes().unwrap();
        eprintln!("64 MiB-max region, one page written: {allocated} bytes allocated");
        assert!(allocated >= page() as u64, "{allocated}");
        assert!(allocated <= 2 * page() as u64, "{allocated}");
    }

    #[test]
    fn errors_have_clear_messages() {
        let e = RegionError::TooLarge { len: 10, max: 4 };
        assert_eq!(
            e.to_string(),
            "10 bytes requested, but the region's maximum is 4 bytes"
        );
        let e = RegionError::Io {
            op: "ftruncate",
            source: io::Error::from_raw_os_error(1),
        };
        assert!(e.to_string().starts_with("ftruncate failed: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
