//! The shm-channel IDL: parses `.idl` files into a checked model (will hold the
//! pest grammar, the AST, the checker, ring sizes and diagnostics).
#![forbid(unsafe_code)]
