//! Byte layout of shm-channel rings, messages and objects.
#![forbid(unsafe_code)]
