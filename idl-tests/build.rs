//! Generates the stubs of every IDL file in `idl/` into `OUT_DIR`.
//! (`idl_codegen`'s own `build.rs` helper and `include_idl!` will replace
//! this once they land.)

use std::path::Path;

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    for name in ["everything", "versioned_v1", "versioned_v2"] {
        let path = Path::new("idl").join(format!("{name}.idl"));
        let checked = match idl_parser::check_file(&path) {
            Ok(c) => c,
            Err(d) => {
                eprintln!("{}", d.render(false));
                std::process::exit(1);
            }
        };
        for file in &checked.files {
            println!("cargo:rerun-if-changed={}", file.display());
        }
        let code = idl_codegen::generate_file(&checked.model);
        let dest = Path::new(&out).join(format!("{name}.rs"));
        if std::fs::read_to_string(&dest).ok().as_deref() != Some(code.as_str()) {
            std::fs::write(&dest, code).expect("write generated code");
        }
    }
}
