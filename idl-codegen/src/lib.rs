//! Code generation from the checked IDL model to Rust tokens (will hold the
//! pure `generate(&Model) -> TokenStream` used by `idlc` and `include_idl!`).
#![forbid(unsafe_code)]
