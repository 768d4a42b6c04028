//! The `include_idl!` proc-macro: reads an IDL file at compile time, checks
//! it with `idl-parser` and expands to what `idl-codegen` generates for it.
//!
//! Users reach it as `shm_channel::include_idl!` (shm-channel's default
//! feature `macros`), since the generated code calls into shm-channel:
//!
//! ```ignore
//! // src/lib.rs of a service crate, with `idl/display.idl` beside `Cargo.toml`.
//! shm_channel::include_idl!("idl/display.idl");
//! ```
//!
//! See [`include_idl!`] for what it expands to, and the workspace's
//! `docs/IDL.md` for the language.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::{Parse, ParseStream};

/// Expands an IDL file into Rust items at the call site.
///
/// The path is relative to the calling crate's root (`CARGO_MANIFEST_DIR`),
/// as build scripts see paths; `import`s inside the file are relative to the
/// importing file's folder. The expansion holds the file's types and consts
/// (its imports' too) and one module per protocol (`protocol Display` ->
/// `mod display`), exactly the code that `idlc gen` prints.
///
/// Every IDL file read is anchored with `include_bytes!`, so that editing
/// any of them rebuilds the crate. The macro never panics: a missing file,
/// a bad argument or an invalid IDL file becomes a `compile_error!` at the
/// call, carrying the rendered diagnostics (`FILE:LINE:COL`, the source
/// line and a caret under the fault), with file names as written in the
/// call so that messages do not depend on where the crate sits on disk.
///
/// The async clients need shm-channel's `tokio` feature (on by default);
/// `include_idl!("idl/display.idl", async_client = false)` leaves them out.
/// The network entry points (`connect_url`, `serve_url`) need its `net`
/// feature (on by default); `net = false` leaves them out.
///
/// ```ignore
/// shm_channel::include_idl!("idl/display.idl");
///
/// let biggest = display::CLIENT_TO_SERVER_MAX; // ring maximum, in bytes
/// ```
#[proc_macro]
pub fn include_idl(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = TokenStream::from(input);
    // The generator is tested never to panic; should it still, the user gets
    // an error at the call instead of the compiler's "proc macro panicked".
    let expanded = std::panic::catch_unwind(move || expand(input)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        error(
            Span::call_site(),
            &format!("include_idl!: internal error in the IDL generator (please report): {why}"),
        )
    });
    expanded.into()
}

/// The macro's arguments: a string literal, then options `name = value`,
/// separated by commas (a trailing one allowed).
struct Arg {
    path: syn::LitStr,
    options: idl_codegen::Options,
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        const USAGE: &str = "include_idl! expects one string literal, the path of an IDL file \
             relative to the crate's root: `include_idl!(\"idl/display.idl\")`";
        const OPTIONS: &str = "the options are `async_client = false` (leaves out the async \
             clients, for shm-channel without its `tokio` feature) and `net = false` (leaves out \
             `connect_url` and `serve_url`, for shm-channel without its `net` feature), each at \
             most once";
        if input.is_empty() {
            return Err(syn::Error::new(Span::call_site(), USAGE));
        }
        let path: syn::LitStr = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), USAGE))?;
        let mut options = idl_codegen::Options::default();
        let mut seen: Vec<String> = Vec::new();
        while input.peek(syn::Token![,]) {
            input.parse::<syn::Token![,]>()?;
            if input.is_empty() {
                break;
            }
            if input.peek(syn::LitStr) {
                return Err(input.error(USAGE));
            }
            let name: syn::Ident = input
                .parse()
                .map_err(|e| syn::Error::new(e.span(), OPTIONS))?;
            let key = name.to_string();
            if !["async_client", "net"].contains(&key.as_str()) || seen.contains(&key) {
                return Err(syn::Error::new(name.span(), OPTIONS));
            }
            seen.push(key.clone());
            input
                .parse::<syn::Token![=]>()
                .map_err(|e| syn::Error::new(e.span(), OPTIONS))?;
            let value: syn::LitBool = input
                .parse()
                .map_err(|e| syn::Error::new(e.span(), OPTIONS))?;
            options = if key == "net" {
                options.net(value.value)
            } else {
                options.async_client(value.value)
            };
        }
        if !input.is_empty() {
            return Err(input.error(USAGE));
        }
        Ok(Arg { path, options })
    }
}

fn expand(input: TokenStream) -> TokenStream {
    let arg = match syn::parse2::<Arg>(input) {
        Ok(arg) => arg,
        Err(e) => return e.to_compile_error(),
    };
    let span = arg.path.span();
    let path = PathBuf::from(arg.path.value());
    if path.as_os_str().is_empty() {
        return error(span, "include_idl!: the path is empty; name an `.idl` file");
    }
    let Some(root) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return error(
            span,
            "include_idl!: CARGO_MANIFEST_DIR is not set (the path is relative to the crate's \
             root, which only cargo tells)",
        );
    };
    let loaded = match idl_codegen::build::load(Path::new(&root), &path) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            // rustc prints the first line after `error: `; the rendered
            // diagnostics follow, each with its own `error[E....]` header.
            let count = match diagnostics.len() {
                1 => "an error".to_owned(),
                n => format!("{n} errors"),
            };
            let heading = format!("include_idl!: {count} in `{}`", path.display());
            return error(span, &format!("{heading}\n\n{}", diagnostics.render(false)));
        }
    };
    let mut anchors = TokenStream::new();
    for file in &loaded.files {
        let Some(file) = file.to_str() else {
            return error(
                span,
                &format!(
                    "include_idl!: `{}` is not valid UTF-8; `include_bytes!` cannot name it",
                    file.display()
                ),
            );
        };
        anchors.extend(quote! { const _: &[u8] = include_bytes!(#file); });
    }
    let code = idl_codegen::generate_with(&loaded.model, &arg.options);
    quote! {
        #code
        #anchors
    }
}

/// `compile_error!(message)` located at `span`.
fn error(span: Span, message: &str) -> TokenStream {
    syn::Error::new(span, message).to_compile_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn expansion_is_the_generated_code_plus_an_anchor_per_file_read() {
        let out = expand(quote!("tests/ui/idl/counter.idl")).to_string();
        let loaded =
            idl_codegen::build::load(&manifest_dir(), Path::new("tests/ui/idl/counter.idl"))
                .expect("the fixture is valid");
        assert!(out.starts_with(&idl_codegen::generate(&loaded.model).to_string()));
        // The file and its import, by absolute path, so that rustc records
        // them as dependencies of the crate whatever its working folder.
        for name in ["counter.idl", "shapes.idl"] {
            let path = manifest_dir().join("tests/ui/idl").join(name);
            assert!(path.is_absolute());
            let wanted = format!("include_bytes ! ({:?})", path.to_str().unwrap());
            assert!(out.contains(&wanted), "no `{wanted}` in {out}");
        }
        assert_eq!(out.matches("include_bytes !").count(), 2, "{out}");
    }

    #[test]
    fn async_clients_can_be_left_out() {
        let with = expand(quote!("tests/ui/idl/counter.idl")).to_string();
        assert!(with.contains("pub struct AsyncClient"), "{with}");
        let without = expand(quote!("tests/ui/idl/counter.idl", async_client = false,)).to_string();
        assert!(!without.contains("AsyncClient"), "{without}");
        assert!(without.contains("pub struct Client"), "{without}");
        for bad in [
            quote!("tests/ui/idl/counter.idl", async_client = 1),
            quote!("tests/ui/idl/counter.idl", sync_client = false),
            quote!(
                "tests/ui/idl/counter.idl",
                async_client = false,
                async_client = true
            ),
            quote!("tests/ui/idl/counter.idl", async_client),
            quote!("tests/ui/idl/counter.idl", net = false, net = false),
        ] {
            let out = expand(bad.clone()).to_string();
            assert!(out.contains("compile_error"), "{bad} gave {out}");
        }
    }

    #[test]
    fn network_entry_points_can_be_left_out() {
        let with = expand(quote!("tests/ui/idl/counter.idl")).to_string();
        assert!(with.contains("fn connect_url"), "{with}");
        assert!(with.contains("fn serve_url"), "{with}");
        let without = expand(quote!(
            "tests/ui/idl/counter.idl",
            net = false,
            async_client = false
        ))
        .to_string();
        assert!(!without.contains("shm_channel :: net"), "{without}");
        assert!(!without.contains("AsyncClient"), "{without}");
    }

    #[test]
    fn a_trailing_comma_is_accepted() {
        let out = expand(quote!("tests/ui/idl/counter.idl",)).to_string();
        assert!(!out.contains("compile_error"), "{out}");
        assert!(out.contains("pub mod counter"), "{out}");
    }

    #[test]
    fn every_failure_is_a_compile_error_never_a_panic() {
        for input in [
            quote!(),
            quote!(42),
            quote!(""),
            quote!("tests/ui/idl/typo.idl"),
            quote!("tests/ui/idl/no_such_file.idl"),
            quote!("tests/ui"),
            quote!("a.idl" "b.idl"),
            quote!(r"tests/ui/idl/bad_import.idl"),
        ] {
            let out = expand(input.clone()).to_string();
            assert!(out.contains("compile_error"), "{input} gave {out}");
            assert!(!out.contains("include_bytes"), "{input} gave {out}");
        }
    }

    #[test]
    fn diagnostics_name_files_as_written_and_have_no_colours() {
        let out = expand(quote!("tests/ui/idl/typo.idl")).to_string();
        assert!(out.contains("tests/ui/idl/typo.idl:5:11"), "{out}");
        assert!(!out.contains('\u{1b}'), "ANSI escape in {out}");
        let root = manifest_dir();
        assert!(!out.contains(root.to_str().unwrap()), "{out}");
    }
}
