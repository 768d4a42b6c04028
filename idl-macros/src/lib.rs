//! The `include_idl!` proc-macro (will expand an IDL file into typed clients,
//! a server trait and events through idl-parser and idl-codegen).
#![forbid(unsafe_code)]
