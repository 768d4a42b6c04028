//! Address-space reservations with a guard page, and shared file mappings placed inside them.

use std::ffi::c_void;
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError};

use rustix::mm::{MapFlags, ProtFlags};

/// The size of a memory page in bytes (from the auxiliary vector; cheap).
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// A range of address space owned by this process: `len()` usable bytes, initially
/// inaccessible (`PROT_NONE`), followed by one guard page that is never made accessible.
///
/// Files are mapped into it with [`map_shared_fixed`], at fixed addresses, so the base never
/// moves. Dropping it unmaps the whole range, guard page included.
#[derive(Debug)]
pub(crate) struct Reservation {
    /// Start of the range; came from `mmap` for `len + page` bytes.
    base: NonNull<u8>,
    /// Usable bytes (a multiple of the page size); the guard page follows.
    len: usize,
    /// The page size at reservation time: the size of the guard page.
    page: usize,
    /// Every byte at or above this offset has never been mapped by [`map_shared_fixed`], so
    /// nobody can hold a pointer to accessible memory there. Only grows.
    mapped_end: Mutex<usize>,
}

// Soundness:
// 1. `Reservation` owns its address range exclusively, like a `Box<[u8]>` owns its buffer;
//    the raw pointer is only an address, with no thread-affine state behind it.
// 2. The only mutation, `mapped_end`, is behind a `Mutex`.
// SAFETY: sound for the reasons given just above.
unsafe impl Send for Reservation {}
// SAFETY: `&Reservation` only exposes the base address (a copy), the lengths, and
// `map_shared_fixed`, which serialises on the internal `Mutex`; see the `Send` impl.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// The first byte of the range (page aligned). Valid for `len()` bytes of address space;
    /// only the parts mapped with [`map_shared_fixed`] are accessible.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The usable length (excluding the guard page).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The offset below which [`map_shared_fixed`] has mapped (with possible holes if callers
    /// skipped ranges); nothing at or above it is accessible.
    pub(crate) fn mapped_end(&self) -> usize {
        *self
            .mapped_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reserves `len` bytes of address space plus one guard page after them:
/// `mmap(NULL, len + page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)`.
/// Costs no memory and no commit charge. `len` must be a non-zero multiple of the page size.
pub(crate) fn reserve(len: usize) -> io::Result<Reservation> {
    let page = page_size();
    if len == 0 || !len.is_multiple_of(page) {
        return Err(invalid(format!(
            "reservation length {len} is not a non-zero multiple of the page size {page}"
        )));
    }
    let total = len
        .checked_add(page)
        .ok_or_else(|| invalid(format!("reservation length {len} overflows")))?;
    // Soundness:
    // 1. The address hint is null, so the kernel picks a fresh range that overlaps no existing
    //    mapping: no memory anybody uses is affected.
    // 2. The new range is `PROT_NONE`, so no Rust code can access it until it is mapped again.
    // SAFETY: sound for the reasons given just above.
    let ptr = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            total,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    let base = NonNull::new(ptr.cast::<u8>())
        .ok_or_else(|| io::Error::other("mmap returned a null reservation"))?;
    Ok(Reservation {
        base,
        len,
        page,
        mapped_end: Mutex::new(0),
    })
}

/// Maps `len` bytes of `fd` starting at `file_offset`, shared and read-write, at
/// `reservation.base() + offset` (`mmap(MAP_SHARED | MAP_FIXED, PROT_READ | PROT_WRITE)`).
///
/// Refused with `InvalidInput` unless: `len > 0`; `offset`, `len` and `file_offset` are page
/// aligned; `[offset, offset + len)` lies inside the usable length (never the guard page); and
/// `offset` is at or above every range mapped before into this reservation, so the call never
/// replaces memory that somebody may be using. Ranges are thus mapped in increasing order;
/// a skipped hole stays inaccessible forever.
///
/// The caller is responsible for the file being at least `file_offset + len` bytes long (up to
/// the page that contains its end) before touching the mapping, and for it staying so
/// (`F_SEAL_SHRINK`): touching a page wholly past the end of the file raises `SIGBUS`.
pub(crate) fn map_shared_fixed(
    reservation: &Reservation,
    offset: usize,
    len: usize,
    fd: BorrowedFd<'_>,
    file_offset: u64,
) -> io::Result<()> {
    let page = reservation.page;
    let aligned_file_offset = usize::try_from(file_offset).is_ok_and(|o| o.is_multiple_of(page));
    if len == 0 || !offset.is_multiple_of(page) || !len.is_multiple_of(page) || !aligned_file_offset
    {
        return Err(invalid(format!(
            "mapping of {len} bytes at offset {offset} (file offset {file_offset}) is not a \
             non-empty page-aligned range (page size {page})"
        )));
    }
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= reservation.len)
        .ok_or_else(|| {
            invalid(format!(
                "mapping of {len} bytes at offset {offset} does not fit the reservation's {} \
                 usable bytes",
                reservation.len
            ))
        })?;
    let mut mapped_end = reservation
        .mapped_end
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if offset < *mapped_end {
        return Err(invalid(format!(
            "mapping at offset {offset} would replace memory already mapped below {}",
            *mapped_end
        )));
    }
    // In bounds: `offset + len <= reservation.len`, checked above.
    let addr = reservation.base().wrapping_add(offset).cast::<c_void>();
    // Soundness:
    // 1. `[addr, addr + len)` lies inside the reservation (checked above), which this process
    //    owns and which no other code maps into, so MAP_FIXED replaces only our own
    //    placeholder pages, never a mapping of somebody else in the process.
    // 2. `offset >= mapped_end` (checked under the lock, held until `mapped_end` is updated):
    //    no page of the range was ever accessible, so no pointer or reference in use can observe
    //    the replacement.
    // 3. `addr` is page aligned (base from mmap, `offset` a page multiple) and derived from the
    //    reservation's base pointer, so it has the provenance of the whole range.
    // 4. The guard page, at `reservation.len`, is outside the range.
    // SAFETY: sound for the reasons given just above.
    let got = unsafe {
        rustix::mm::mmap(
            addr,
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED | MapFlags::FIXED,
            fd,
            file_offset,
        )
    }?;
    if got != addr {
        // MAP_FIXED either maps at `addr` or fails; anything else is a kernel contract breach.
        return Err(io::Error::other(format!(
            "mmap(MAP_FIXED) mapped at {got:p} instead of {addr:p}"
        )));
    }
    *mapped_end = end;
    Ok(())
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // `len + page` did not overflow when the reservation was made.
        let total = self.len + self.page;
        // Soundness:
        // 1. `base` and `total` are exactly the range `mmap` returned in `reserve`; the only
        //    mappings placed inside it since are our own `map_shared_fixed` ones, so unmapping
        //    it affects no memory owned by anybody else.
        // 2. We are being dropped: the owner (a region) no longer hands out the base, and the
        //    contract of `sys` makes users stop using pointers into the range before that.
        // SAFETY: sound for the reasons given just above.
        let res = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), total) };
        // munmap of a range we mapped cannot fail; nothing useful to do in drop if it does.
        debug_assert!(res.is_ok(), "munmap failed: {res:?}");
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::sys::{grow_file, memfd_create};

    #[test]
    fn reserve_checks_length() {
        let page = page_size();
        assert!(page >= 4096 && page.is_power_of_two());
        assert_eq!(reserve(0).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            reserve(page + 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            reserve(usize::MAX - page + 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let r = reserve(16 * page).unwrap();
        assert_eq!(r.len(), 16 * page);
        assert!((r.base() as usize).is_multiple_of(page));
        assert_eq!(r.mapped_end(), 0);
    }

    #[test]
    fn map_shared_fixed_checks_bounds_and_order() {
        let page = page_size();
        let fd = memfd_create(&crate::sys::test_support::unique_name("map")).unwrap();
        grow_file(fd.as_fd(), 4 * page as u64).unwrap();
        let r = reserve(4 * page).unwrap();
        let e = |res: io::Result<()>| res.unwrap_err().kind();
        // Unaligned offset, length, file offset; empty.
        assert_eq!(
            e(map_shared_fixed(&r, 1, page, fd.as_fd(), 0)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            e(map_shared_fixed(&r, 0, 1, fd.as_fd(), 0)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            e(map_shared_fixed(&r, 0, page, fd.as_fd(), 1)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            e(map_shared_fixed(&r, 0, 0, fd.as_fd(), 0)),
            io::ErrorKind::InvalidInput
        );
        // Into the guard page, or overflowing.
        assert_eq!(
            e(map_shared_fixed(&r, 0, 5 * page, fd.as_fd(), 0)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            e(map_shared_fixed(&r, 4 * page, page, fd.as_fd(), 0)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            e(map_shared_fixed(
                &r,
                usize::MAX - page + 1,
                page,
                fd.as_fd(),
                0
            )),
            io::ErrorKind::InvalidInput
        );
        map_shared_fixed(&r, 0, page, fd.as_fd(), 0).unwrap();
        assert_eq!(r.mapped_end(), page);
        // Never over an existing mapping.
        assert_eq!(
            e(map_shared_fixed(&r, 0, page, fd.as_fd(), 0)),
            io::ErrorKind::InvalidInput
        );
        map_shared_fixed(&r, page, 3 * page, fd.as_fd(), page as u64).unwrap();
        assert_eq!(r.mapped_end(), 4 * page);
        // The two mappings are one contiguous view of the file.
        let p = r.base();
        // SAFETY: [0, 4 pages) of the reservation is mapped read-write onto a 4-page file, and
        // nothing else accesses this fresh private mapping.
        unsafe {
            p.add(page - 1).write(7);
            p.add(page).write(8);
            p.add(4 * page - 1).write(9);
            assert_eq!(p.add(page - 1).read(), 7);
            assert_eq!(p.add(page).read(), 8);
        }
        // A second, independent reservation mapping the same file sees the same bytes.
        let r2 = reserve(4 * page).unwrap();
        map_shared_fixed(&r2, 0, 4 * page, fd.as_fd(), 0).unwrap();
        // SAFETY: [0, 4 pages) of `r2` is mapped onto the same 4-page file.
        unsafe {
            assert_eq!(r2.base().add(page).read(), 8);
            assert_eq!(r2.base().add(4 * page - 1).read(), 9);
        }
    }
}
