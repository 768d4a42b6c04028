//! The IDL parser and checker over arbitrary text. A NUL splits the input
//! into the root file and a second file `other.idl` the root may import, so
//! the import path is exercised too. The parser caps nesting, so deep
//! brackets must give a diagnostic, not a stack overflow.
#![no_main]

use idl_parser::MemLoader;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    let (root, other) = text.split_once('\0').unwrap_or((text, ""));
    let loader = MemLoader::new()
        .with("/fuzz/other.idl", other)
        .with("/fuzz/main.idl", root);
    let _ = idl_parser::check_source(Path::new("/fuzz/main.idl"), root, &loader);
});
