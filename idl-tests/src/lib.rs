//! Behaviour tests of the code `idl-codegen` generates: `idl/everything.idl`
//! uses every type and attribute of the IDL; `idl/versioned_v1.idl` and
//! `idl/versioned_v2.idl` are two versions of one protocol. The tests (in
//! `tests/`) serve and call them across two processes over shm.
#![forbid(unsafe_code)]

/// The stubs of `idl/everything.idl` (and its import `idl/shapes.idl`).
pub mod all {
    include!(concat!(env!("OUT_DIR"), "/everything.rs"));
}

/// Version 1 of the `Versioned` protocol.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/versioned_v1.rs"));
}

/// Version 2 of the `Versioned` protocol.
pub mod v2 {
    include!(concat!(env!("OUT_DIR"), "/versioned_v2.rs"));
}
