//! Runnable demos of shm-channel; see the `[[example]]` targets of this package.
#![forbid(unsafe_code)]
