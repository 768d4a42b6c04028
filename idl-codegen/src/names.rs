//! Rust names, scalar spellings and doc attributes.

use idl_parser::model::{Scalar, Type};
use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};

pub(crate) fn scalar_type(s: Scalar) -> TokenStream {
    match s {
        Scalar::Bool => quote!(bool),
        Scalar::U8 => quote!(u8),
        Scalar::U16 => quote!(u16),
        Scalar::U32 => quote!(u32),
        Scalar::U64 => quote!(u64),
        Scalar::I8 => quote!(i8),
        Scalar::I16 => quote!(i16),
        Scalar::I32 => quote!(i32),
        Scalar::I64 => quote!(i64),
        Scalar::F32 => quote!(f32),
        Scalar::F64 => quote!(f64),
    }
}

pub(crate) fn scalar_size(s: Scalar) -> u64 {
    match s {
        Scalar::Bool | Scalar::U8 | Scalar::I8 => 1,
        Scalar::U16 | Scalar::I16 => 2,
        Scalar::U32 | Scalar::I32 | Scalar::F32 => 4,
        Scalar::U64 | Scalar::I64 | Scalar::F64 => 8,
    }
}

pub(crate) fn scalar_name(s: Scalar) -> &'static str {
    match s {
        Scalar::Bool => "bool",
        Scalar::U8 => "u8",
        Scalar::U16 => "u16",
        Scalar::U32 => "u32",
        Scalar::U64 => "u64",
        Scalar::I8 => "i8",
        Scalar::I16 => "i16",
        Scalar::I32 => "i32",
        Scalar::I64 => "i64",
        Scalar::F32 => "f32",
        Scalar::F64 => "f64",
    }
}

/// The IDL spelling of a type (bounds as numbers), for fallback docs.
pub(crate) fn idl_type(ty: &Type) -> String {
    let bound = |b: &Option<u64>| b.map(|n| format!("<{n}>")).unwrap_or_default();
    match ty {
        Type::Scalar(s) => scalar_name(*s).to_owned(),
        Type::String(b) => format!("string{}", bound(b)),
        Type::Bytes(b) => format!("bytes{}", bound(b)),
        Type::Array(t, n) => format!("[{}; {n}]", idl_type(t)),
        Type::Vec(t, Some(n)) => format!("vec<{}, {n}>", idl_type(t)),
        Type::Vec(t, None) => format!("vec<{}>", idl_type(t)),
        Type::Option(t) => format!("option<{}>", idl_type(t)),
        Type::Result(t, e) => format!("result<{}, {}>", idl_type(t), idl_type(e)),
        Type::Unit => "()".to_owned(),
        Type::Named(n) => n.clone(),
    }
}

/// An unsuffixed integer literal for a bound: `usize` in every position it
/// takes (`Bounded<T, N>`, `[T; N]`, the bound arguments).
pub(crate) fn usize_lit(n: u64) -> Literal {
    Literal::u64_unsuffixed(n)
}

/// A Rust identifier for an IDL one: keywords raw (`r#type`); the few that
/// cannot be raw (`self`, `Self`, `super`, `crate`, `_`) get a trailing `_`.
pub(crate) fn ident(name: &str) -> Ident {
    match name {
        "self" | "Self" | "super" | "crate" | "_" => format_ident!("{name}_"),
        _ if is_keyword(name) => Ident::new_raw(name, Span::call_site()),
        _ => Ident::new(name, Span::call_site()),
    }
}

pub(crate) fn is_keyword(name: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "as", "break", "const", "continue", "else", "enum", "extern", "false", "fn", "for", "if",
        "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
        "static", "struct", "trait", "true", "type", "unsafe", "use", "where", "while", "async",
        "await", "dyn", "abstract", "become", "box", "do", "final", "macro", "override", "priv",
        "typeof", "unsized", "virtual", "yield", "try", "gen",
    ];
    KEYWORDS.contains(&name)
}

/// `#[allow]` for a type name the IDL spelled other than in Rust's case.
pub(crate) fn type_allows(name: &str) -> Option<TokenStream> {
    let camel = name.starts_with(|c: char| c.is_ascii_uppercase()) && !name.contains('_');
    (!camel).then(|| quote!(#[allow(non_camel_case_types)]))
}

/// The doc of a view type: a link to the owned type, except where its name
/// is a raw identifier (rustdoc cannot resolve links to `r#type`).
pub(crate) fn view_doc(owned: &Ident) -> TokenStream {
    let owned = owned.to_string();
    let link = match owned.strip_prefix("r#") {
        Some(bare) => format!("`{bare}`"),
        None => format!("[`{owned}`]"),
    };
    doc_attr(&format!(
        "The received form of {link}, borrowing its strings, bytes and sequences from the message."
    ))
}

pub(crate) fn doc_attr(line: &str) -> TokenStream {
    let line = format!(" {line}");
    quote!(#[doc = #line])
}

pub(crate) fn docs_or(lines: &[String], fallback: &str) -> TokenStream {
    if lines.iter().all(|l| l.trim().is_empty()) {
        doc_attr(fallback)
    } else {
        docs(lines)
    }
}

/// Doc attributes that rustdoc renders as text and never runs: code fences
/// become `text` fences, and outside fences leading whitespace (which would
/// make an indented code block) is dropped and `<` is escaped (a bare `<T>`
/// would be read as HTML).
pub(crate) fn docs(lines: &[String]) -> TokenStream {
    let mut out = TokenStream::new();
    for line in sanitize_docs(lines) {
        let line = format!(" {line}");
        out.extend(quote!(#[doc = #line]));
    }
    out
}

pub(crate) fn sanitize_docs(lines: &[String]) -> Vec<String> {
    // `/// text` arrives as ` text`: the indentation common to all lines is
    // the comment's, not the author's.
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for line in lines {
        let line = line.get(common..).unwrap_or_default();
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        let is_fence = marker.len() >= 3
            && marker
                .chars()
                .all(|c| c == marker.chars().next().unwrap_or('`'));
        match &fence {
            Some(open) if is_fence && trimmed.trim_end() == open.as_str() => {
                out.push(open.clone());
                fence = None;
            }
            Some(_) => out.push(line.to_owned()),
            None if is_fence => {
                out.push(format!("{marker}text"));
                fence = Some(marker);
            }
            // Up to 3 spaces keep nested lists; 4 would start a code block.
            None => {
                let indent = (line.len() - trimmed.len()).min(3);
                out.push(format!("{:indent$}{}", "", escape_html(trimmed.trim_end())));
            }
        }
    }
    if let Some(open) = fence {
        // An unclosed fence would swallow whatever rustdoc appends.
        out.push(open);
    }
    out
}

/// Escapes `<` outside inline code spans.
pub(crate) fn escape_html(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        match c {
            '`' => in_code = !in_code,
            '<' if !in_code => {
                out.push('\\');
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_escaped() {
        assert_eq!(ident("type").to_string(), "r#type");
        assert_eq!(ident("self").to_string(), "self_");
        assert_eq!(ident("frame").to_string(), "frame");
    }

    #[test]
    fn docs_never_become_code() {
        let lines: Vec<String> = [
            " Text with vec<u8>.",
            "     indented, not code",
            "   - nested list",
            " ```",
            " let x = 1;",
            " ```",
            " ```rust",
            " fn main() {}",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            sanitize_docs(&lines),
            [
                "Text with vec\\<u8>.",
                "   indented, not code",
                "  - nested list",
                "```text",
                "let x = 1;",
                "```",
                "```text",
                "fn main() {}",
                "```",
            ]
        );
    }
}
