//! shm-channel: typed IPC at memory speed.
