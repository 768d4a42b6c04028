//! Memory files: `memfd_create`, seals, size. All safe calls; no `unsafe` needed here.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

/// The seals every ring backing must carry: `F_SEAL_SHRINK` (nobody can make the file shorter,
/// so a mapping checked against its length never raises `SIGBUS`), `F_SEAL_GROW` (nobody can
/// make it longer: its creator sizes it to the ring's maximum once, so a peer cannot make the
/// file, and the memory charged for it, exceed what was agreed) and `F_SEAL_SEAL` (nobody can
/// change the seals any more, e.g. add `F_SEAL_WRITE` behind our back).
pub(crate) const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Seals a received ring backing must NOT carry: both sides write into a ring (the writer its
/// messages, the reader its read position and `CONSUMED` flags), and a writable shared mapping
/// of a file sealed against writing is refused by the kernel.
pub(crate) const FORBIDDEN_SEALS: SealFlags = SealFlags::WRITE.union(SealFlags::FUTURE_WRITE);

/// Creates an anonymous memory file, close-on-exec and sealable, of length 0.
///
/// `name` is only a label shown in `/proc/<pid>/fd` (it need not be unique; at most 249 bytes,
/// no NUL). The file is also made non-executable (`MFD_NOEXEC_SEAL`) on kernels that know that
/// flag (6.3+); older kernels reject the flag with `EINVAL`, and then it is created without.
pub(crate) fn memfd_create(name: &str) -> io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    match rustix::fs::memfd_create(name, flags | MemfdFlags::NOEXEC_SEAL) {
        Err(Errno::INVAL) => rustix::fs::memfd_create(name, flags).map_err(io::Error::from),
        other => other.map_err(io::Error::from),
    }
}

/// Adds `seals` to `fd` (`fcntl(F_ADD_SEALS)`). Seals can only be added, never removed.
pub(crate) fn add_seals(fd: BorrowedFd<'_>, seals: SealFlags) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, seals).map_err(io::Error::from)
}

/// The seals `fd` carries (`fcntl(F_GET_SEALS)`). Fails with `EINVAL` for a file that does not
/// support sealing (not a memfd/shmem file).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<SealFlags> {
    rustix::fs::fcntl_get_seals(fd).map_err(io::Error::from)
}

/// Why a received file descriptor is not acceptable as a ring's backing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    /// The seals could not be read (for instance the fd is not a memfd at all).
    #[error("cannot read the seals of the received file: {0}")]
    Io(#[from] io::Error),
    /// The file lacks some of [`REQUIRED_SEALS`].
    #[error("the received file lacks the seals {missing:?}")]
    Missing {
        /// The required seals that are absent.
        missing: SealFlags,
    },
    /// The file carries some of [`FORBIDDEN_SEALS`].
    #[error("the received file carries the seals {forbidden:?}")]
    Forbidden {
        /// The forbidden seals that are present.
        forbidden: SealFlags,
    },
}

/// Checks that a file descriptor received from a peer carries [`REQUIRED_SEALS`] and none of
/// [`FORBIDDEN_SEALS`]. Without `F_SEAL_SHRINK` the peer could truncate the file while we have
/// it mapped and make our next access raise `SIGBUS`; without `F_SEAL_GROW` it could make the
/// file longer than the ring's maximum (memory nobody agreed to); without `F_SEAL_SEAL` it could
/// still add seals such as `F_SEAL_WRITE` later.
pub(crate) fn check_received_seals(fd: BorrowedFd<'_>) -> Result<(), SealError> {
    let have = seals(fd)?;
    let missing = REQUIRED_SEALS.difference(have);
    if !missing.is_empty() {
        return Err(SealError::Missing { missing });
    }
    let forbidden = have.intersection(FORBIDDEN_SEALS);
    if !forbidden.is_empty() {
        return Err(SealError::Forbidden { forbidden });
    }
    Ok(())
}

/// The length of the file in bytes (`fstat`).
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    u64::try_from(st.st_size).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("fstat reported a negative size {}", st.st_size),
        )
    })
}

/// Makes the file at least `len` bytes long (`ftruncate`), never shorter: a `len` below the
/// current length is refused with `InvalidInput`, and `len` equal to it does nothing.
///
/// The check and the `ftruncate` are not atomic: another process may grow the file in between.
/// On a file sealed with `F_SEAL_SHRINK` the kernel then refuses the now-shrinking `ftruncate`
/// with `EPERM`; callers that race with other growers should re-check [`file_len`] on error.
pub(crate) fn grow_file(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let current = file_len(fd)?;
    if len < current {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to shrink a shared file from {current} to {len} bytes"),
        ));
    }
    if len == current {
        return Ok(());
    }
    rustix::fs::ftruncate(fd, len).map_err(io::Error::from)
}

/// Bytes of memory actually allocated to the file (`st_blocks * 512`), as opposed to its
/// length: pages never touched cost nothing. For memory-usage tests and reports.
pub(crate) fn allocated_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    // `st_blocks` is unsigned on some targets and `c_long` on others; a negative count is
    // impossible, report it as an error rather than wrap.
    #[allow(
        clippy::useless_conversion,
        reason = "the field's type differs by target"
    )]
    let blocks = u64::try_from(st.st_blocks).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, "fstat reported negative blocks")
    })?;
    Ok(blocks.saturating_mul(512))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::sys::test_support::{raw_ftruncate, unique_name, unsealable_memfd};

    #[test]
    fn created_memfd_is_sealable_and_sealed_after_add() {
        let fd = memfd_create(&unique_name("seals")).unwrap();
        assert!(!seals(fd.as_fd()).unwrap().contains(SealFlags::SHRINK));
        grow_file(fd.as_fd(), 8192).unwrap();
        add_seals(fd.as_fd(), REQUIRED_SEALS).unwrap();
        let have = seals(fd.as_fd()).unwrap();
        assert!(
            have.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL),
            "{have:?}"
        );
        check_received_seals(fd.as_fd()).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), 8192);
    }

    #[test]
    fn sealed_memfd_refuses_shrink_and_grow_with_eperm() {
        let fd = memfd_create(&unique_name("shrink")).unwrap();
        grow_file(fd.as_fd(), 8192).unwrap();
        add_seals(fd.as_fd(), REQUIRED_SEALS).unwrap();
        for len in [0, 4096, 8191, 8193, 16384, 1 << 40] {
            let err = raw_ftruncate(fd.as_fd(), len).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(Errno::PERM.raw_os_error()),
                "ftruncate to {len}: {err}"
            );
        }
        let err = grow_file(fd.as_fd(), 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(grow_file(fd.as_fd(), 16384).is_err());
        // Equal length is a no-op.
        grow_file(fd.as_fd(), 8192).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), 8192);
        // F_SEAL_SEAL: no more seals can be added.
        let err = add_seals(fd.as_fd(), SealFlags::GROW).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(Errno::PERM.raw_os_error()),
            "{err}"
        );
    }

    #[test]
    fn check_received_seals_refuses_missing_seals() {
        // Sealable but never sealed.
        let fd = memfd_create(&unique_name("unsealed")).unwrap();
        match check_received_seals(fd.as_fd()) {
            Err(SealError::Missing { missing }) => assert_eq!(missing, REQUIRED_SEALS),
            other => panic!("expected Missing, got {other:?}"),
        }
        // F_SEAL_SEAL without F_SEAL_SHRINK.
        let fd = memfd_create(&unique_name("noshrink")).unwrap();
        add_seals(fd.as_fd(), SealFlags::SEAL | SealFlags::GROW).unwrap();
        match check_received_seals(fd.as_fd()) {
            Err(SealError::Missing { missing }) => assert_eq!(missing, SealFlags::SHRINK),
            other => panic!("expected Missing, got {other:?}"),
        }
        // The seals of the previous version (shrink and seal, growth allowed): the peer could
        // grow the file past the agreed maximum. Refused.
        let fd = memfd_create(&unique_name("nogrow")).unwrap();
        add_seals(fd.as_fd(), SealFlags::SEAL | SealFlags::SHRINK).unwrap();
        match check_received_seals(fd.as_fd()) {
            Err(SealError::Missing { missing }) => assert_eq!(missing, SealFlags::GROW),
            other => panic!("expected Missing, got {other:?}"),
        }
        // A memfd that cannot be sealed at all reports F_SEAL_SEAL set by the kernel, and
        // still lacks F_SEAL_SHRINK and F_SEAL_GROW.
        let fd = unsealable_memfd(&unique_name("unsealable")).unwrap();
        match check_received_seals(fd.as_fd()) {
            Err(SealError::Missing { missing }) => {
                assert_eq!(missing, SealFlags::SHRINK | SealFlags::GROW);
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        // Every required seal, plus one that would make our writable mapping fail.
        for extra in [SealFlags::WRITE, SealFlags::FUTURE_WRITE] {
            let fd = memfd_create(&unique_name("writesealed")).unwrap();
            add_seals(fd.as_fd(), REQUIRED_SEALS | extra).unwrap();
            match check_received_seals(fd.as_fd()) {
                Err(SealError::Forbidden { forbidden }) => assert_eq!(forbidden, extra),
                other => panic!("expected Forbidden, got {other:?}"),
            }
        }
    }

    #[test]
    fn allocated_bytes_counts_touched_pages_only() {
        let fd = memfd_create(&unique_name("alloc")).unwrap();
        grow_file(fd.as_fd(), 64 << 20).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), 64 << 20);
        assert_eq!(allocated_bytes(fd.as_fd()).unwrap(), 0);
    }
}
