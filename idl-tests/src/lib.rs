//! Behaviour tests of the code `idl-codegen` generates, included with
//! `shm_channel::include_idl!` as users do: `idl/everything.idl` uses every
//! type and attribute of the IDL; `idl/versioned_v1.idl` and
//! `idl/versioned_v2.idl` are two versions of one protocol; `idl/delivery.idl`
//! has a method of each network delivery kind. The tests (in `tests/`) serve
//! and call them across two processes over shm, and over TCP (`tests/net.rs`).
#![forbid(unsafe_code)]

/// The stubs of `idl/everything.idl` (and its import `idl/shapes.idl`).
pub mod all {
    shm_channel::include_idl!("idl/everything.idl");
}

/// Version 1 of the `Versioned` protocol.
pub mod v1 {
    shm_channel::include_idl!("idl/versioned_v1.idl");
}

/// Version 2 of the `Versioned` protocol.
pub mod v2 {
    shm_channel::include_idl!("idl/versioned_v2.idl");
}

/// The `Kinds` protocol: a method per network delivery kind.
pub mod delivery {
    shm_channel::include_idl!("idl/delivery.idl");
}
