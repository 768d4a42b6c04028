//! The build-script route to generated code (`examples/tests/build_script.rs`
//! checks it against `include_idl!`): `idl/kv.idl` becomes
//! `$OUT_DIR/kv.rs`, rewritten only when it changes, and cargo reruns this
//! script only when `kv.idl` changes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    idl_codegen::build::Builder::new().compile(&["idl/kv.idl"])?;
    Ok(())
}
