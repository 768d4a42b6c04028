//! Syntax: the pest grammar (`idl.pest`) and the builder from pest pairs to
//! the [`ast`](crate::ast).

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use pest::Parser as _;
use pest::iterators::{Pair, Pairs};

use crate::ast::{
    AttrArg, Attribute, Bound, Const, Enum, Field, File, Ident, Import, IntLit, Item, Literal,
    Member, MemberKind, Outer, Param, Protocol, Scalar, Span, Struct, Type, TypeKind, Unit,
    Variant,
};
use crate::diag::{Builder, Code, Diagnostics, MAX_NESTING};

pub use grammar::{IdlParser, Rule};

mod grammar {
    // pest generates one `Rule` variant per grammar rule; `idl.pest` documents
    // them.
    #![allow(missing_docs)]

    /// The pest parser generated from `idl.pest`.
    #[derive(pest_derive::Parser)]
    #[grammar = "idl.pest"]
    pub struct IdlParser;
}

/// Parses `source` into pest pairs (the `file` rule), comments included.
///
/// Refuses input nested deeper than [`MAX_NESTING`] before pest sees it.
pub fn parse_pairs(source: &str) -> Result<Pairs<'_, Rule>, Diagnostics> {
    parse_pairs_at(Path::new("<input>"), source)
}

pub(crate) fn parse_pairs_at<'s>(
    path: &Path,
    source: &'s str,
) -> Result<Pairs<'s, Rule>, Diagnostics> {
    let b = Builder { path, source };
    let fail = |d| {
        let mut ds = Diagnostics::default();
        ds.add_source(path, source);
        ds.push(d);
        ds
    };
    if let Some(at) = too_deep(source) {
        return Err(fail(
            b.error(
                Code::NestingTooDeep,
                at..at + 1,
                format!("brackets nested more than {MAX_NESTING} levels deep"),
                "too deep here",
            )
            .help("flatten the type with a named struct"),
        ));
    }
    match IdlParser::parse(Rule::file, source) {
        Ok(pairs) => Ok(pairs),
        Err(_) => {
            // Tracking expected literal tokens (`:`, `;`) slows every parse
            // down, so it is only switched on to explain a failure. The switch
            // is process-wide and read when a parse starts: the lock keeps
            // two explanations from switching it off under each other.
            static DETAIL: Mutex<()> = Mutex::new(());
            let guard = DETAIL.lock().unwrap_or_else(PoisonError::into_inner);
            pest::set_error_detail(true);
            let detailed = IdlParser::parse(Rule::file, source);
            pest::set_error_detail(false);
            drop(guard);
            match detailed {
                Ok(pairs) => Ok(pairs),
                Err(e) => Err(fail(syntax_error(&b, &e))),
            }
        }
    }
}

/// Parses one file into its syntax tree.
pub fn parse_source(path: &Path, source: &str) -> Result<File, Diagnostics> {
    let mut pairs = parse_pairs_at(path, source)?;
    let mut items = Vec::new();
    let mut errors = Diagnostics::default();
    let b = Builder { path, source };
    if let Some(file) = pairs.next() {
        for pair in children(file) {
            match build_item(pair, &b) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {}
                Err(d) => errors.push(*d),
            }
        }
    }
    if errors.is_empty() {
        Ok(File {
            path: path.to_path_buf(),
            items,
        })
    } else {
        errors.add_source(path, source);
        Err(errors)
    }
}

/// Where the bracket nesting first exceeds [`MAX_NESTING`], skipping strings
/// and comments. Only an estimate of pest's recursion, but an upper bound: every
/// recursive rule of the grammar opens a bracket.
fn too_deep(source: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'>') => i += 1,
            b'<' | b'[' | b'(' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(i);
                }
            }
            b'>' | b']' | b')' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

fn syntax_error(b: &Builder<'_>, e: &pest::error::Error<Rule>) -> crate::diag::Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let span = match e.location {
        InputLocation::Pos(p) => p..p,
        InputLocation::Span((s, t)) => s..t,
    };
    let rest = b.source.get(span.start..).unwrap_or("");
    // A word is shown whole (`strct`), anything else by its first character.
    let word_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let shown_len = if word_len > 0 {
        word_len
    } else {
        rest.chars().next().map_or(0, char::len_utf8)
    };
    let found = match rest.chars().next() {
        None => "the end of the file".to_string(),
        Some(c) if c.is_whitespace() => "whitespace".to_string(),
        Some(_) => format!("`{}`", &rest[..shown_len]),
    };
    let mut expected: Vec<String> = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => positives
            .iter()
            .filter_map(|r| describe(*r))
            .map(str::to_string)
            .collect(),
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    if let Some(attempts) = e.parse_attempts() {
        for t in attempts.expected_tokens() {
            // pest does not export its token type, only its `Display`:
            // literals print as themselves, ranges as `a..z`.
            let token = t.to_string();
            let range = token.chars().count() == 4 && token.get(1..3) == Some("..");
            // Whitespace and comment openers are possible everywhere:
            // listing them says nothing.
            let noise =
                token.trim().is_empty() || token.starts_with('/') || token == "BUILTIN_RULE";
            if !noise && !range {
                expected.push(format!("`{token}`"));
            }
        }
    }
    let expected = summarize(expected);
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let message = if rest.starts_with('"') {
        "unterminated string: a string ends with `\"` on the same line".to_string()
    } else if rest.starts_with("/*") {
        "unterminated block comment: `/*` needs a `*/`".to_string()
    } else if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", join_or(&expected))
    };
    let end = span.start + shown_len;
    b.error(Code::Syntax, span.start..end, message, "unexpected here")
}

/// Folds the tokens pest expected into what a user thinks of: the item
/// keywords become "an item", the type names "a type", the starts of literals
/// disappear behind "a string" or "an integer".
fn summarize(mut expected: Vec<String>) -> Vec<String> {
    const ITEMS: &[&str] = &["`import`", "`struct`", "`enum`", "`const`", "`protocol`"];
    const TYPES: &[&str] = &[
        "`bool`", "`u8`", "`u16`", "`u32`", "`u64`", "`i8`", "`i16`", "`i32`", "`i64`", "`f32`",
        "`f64`", "`string`", "`bytes`", "`vec`", "`option`", "`result`",
    ];
    const LITERAL_STARTS: &[&str] = &["`\"`", "`-`", "`0x`", "`0b`", "`true`", "`false`", "`_`"];
    let has = |v: &[String], set: &[&str]| v.iter().any(|e| set.contains(&e.as_str()));
    if has(&expected, ITEMS) {
        expected.retain(|e| !ITEMS.contains(&e.as_str()) && e != "`@`");
        expected.push("an item (`import`, `struct`, `enum`, `const`, `protocol`)".into());
        expected.push("an attribute".into());
    }
    if has(&expected, TYPES) || expected.iter().any(|e| e == "a type") {
        expected.retain(|e| !TYPES.contains(&e.as_str()) && e != "`(`" && e != "`[`");
        expected.push("a type".into());
    }
    expected.retain(|e| !LITERAL_STARTS.contains(&e.as_str()));
    expected.sort_unstable();
    expected.dedup();
    expected
}

/// A rule's name in words for "expected ..." messages; `None` hides it.
fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "the end of the file",
        Rule::ident | Rule::attr_name => "a name",
        Rule::kw_import | Rule::kw_struct | Rule::kw_enum | Rule::kw_const | Rule::kw_protocol => {
            "an item (`import`, `struct`, `enum`, `const`, `protocol`)"
        }
        Rule::kw_fn | Rule::method => "`fn`",
        Rule::kw_event | Rule::event => "`event`",
        Rule::doc => "a doc comment",
        Rule::attribute => "an attribute",
        Rule::attr_args => "`(`",
        Rule::attr_arg => "an attribute argument",
        Rule::integer | Rule::number | Rule::minus => "an integer",
        Rule::unit => "a size unit",
        Rule::boolean => "`true` or `false`",
        Rule::string_lit => "a string",
        Rule::field => "a field",
        Rule::variant => "a variant",
        Rule::payload => "`(`",
        Rule::discriminant => "`=`",
        Rule::params => "`(`",
        Rule::param => "a parameter",
        Rule::returns => "`->`",
        Rule::ty
        | Rule::scalar_ty
        | Rule::string_ty
        | Rule::bytes_ty
        | Rule::vec_ty
        | Rule::option_ty
        | Rule::result_ty
        | Rule::array_ty
        | Rule::unit_ty
        | Rule::named_ty => "a type",
        Rule::bound => "a bound (an integer or an integer const)",
        _ => return None,
    })
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The pairs inside `pair` that carry meaning: comments and keywords dropped.
fn children(pair: Pair<'_, Rule>) -> impl Iterator<Item = Pair<'_, Rule>> {
    pair.into_inner().filter(|p| {
        !matches!(
            p.as_rule(),
            Rule::COMMENT
                | Rule::EOI
                | Rule::kw_import
                | Rule::kw_struct
                | Rule::kw_enum
                | Rule::kw_const
                | Rule::kw_protocol
                | Rule::kw_fn
                | Rule::kw_event
                | Rule::kw_string
                | Rule::kw_bytes
                | Rule::kw_vec
                | Rule::kw_option
                | Rule::kw_result
        )
    })
}

fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    s.start()..s.end()
}

type Built<T> = Result<T, Box<crate::diag::Diagnostic>>;

/// The grammar guarantees each rule's shape; a pair that does not fit it is an
/// internal error, reported as a syntax error rather than a panic.
fn shape(b: &Builder<'_>, span: Span) -> Box<crate::diag::Diagnostic> {
    Box::new(b.error(
        Code::Syntax,
        span,
        "internal error: unexpected parse tree shape",
        "here",
    ))
}

fn build_item(pair: Pair<'_, Rule>, b: &Builder<'_>) -> Built<Option<Item>> {
    let span = span_of(&pair);
    Ok(Some(match pair.as_rule() {
        Rule::import => {
            let mut outer = Outer::default();
            let mut path = None;
            for p in children(pair) {
                match p.as_rule() {
                    Rule::string_lit => path = Some((string_value(&p), span_of(&p))),
                    _ => outer_part(p, &mut outer, b)?,
                }
            }
            let (path, path_span) = path.ok_or_else(|| shape(b, span))?;
            Item::Import(Import {
                outer,
                path,
                path_span,
            })
        }
        Rule::struct_def => {
            let (outer, name, fields) = named_block(pair, b, &[Rule::field], build_field)?;
            Item::Struct(Struct {
                outer,
                name,
                fields,
            })
        }
        Rule::enum_def => {
            let (outer, name, variants) = named_block(pair, b, &[Rule::variant], build_variant)?;
            Item::Enum(Enum {
                outer,
                name,
                variants,
            })
        }
        Rule::const_def => {
            let mut outer = Outer::default();
            let mut name = None;
            let mut ty = None;
            let mut value = None;
            for p in children(pair) {
                match p.as_rule() {
                    Rule::ident => name = Some(ident(&p)),
                    Rule::ty => ty = Some(build_type(p, b)?),
                    Rule::integer => value = Some(Literal::Int(int_lit(p))),
                    Rule::boolean => value = Some(Literal::Bool(p.as_str() == "true", span_of(&p))),
                    Rule::string_lit => value = Some(Literal::Str(string_value(&p), span_of(&p))),
                    _ => outer_part(p, &mut outer, b)?,
                }
            }
            match (name, ty, value) {
                (Some(name), Some(ty), Some(value)) => Item::Const(Const {
                    outer,
                    name,
                    ty,
                    value,
                }),
                _ => return Err(shape(b, span)),
            }
        }
        Rule::protocol => {
            let (outer, name, members) =
                named_block(pair, b, &[Rule::method, Rule::event], build_member)?;
            Item::Protocol(Protocol {
                outer,
                name,
                members,
            })
        }
        Rule::EOI | Rule::COMMENT => return Ok(None),
        _ => return Err(shape(b, span)),
    }))
}

/// The docs and attributes, the name and the members of a struct, an enum or
/// a protocol: the children of rule `members` are built by `build`.
fn named_block<T>(
    pair: Pair<'_, Rule>,
    b: &Builder<'_>,
    members: &[Rule],
    build: fn(Pair<'_, Rule>, &Builder<'_>) -> Built<T>,
) -> Built<(Outer, Ident, Vec<T>)> {
    let span = span_of(&pair);
    let mut outer = Outer::default();
    let mut name = None;
    let mut list = Vec::new();
    for p in children(pair) {
        match p.as_rule() {
            Rule::ident => name = Some(ident(&p)),
            rule if members.contains(&rule) => list.push(build(p, b)?),
            _ => outer_part(p, &mut outer, b)?,
        }
    }
    let name = name.ok_or_else(|| shape(b, span))?;
    Ok((outer, name, list))
}

fn outer_part(p: Pair<'_, Rule>, outer: &mut Outer, b: &Builder<'_>) -> Built<()> {
    match p.as_rule() {
        Rule::doc => {
            let text = p.into_inner().next().map_or("", |t| t.as_str());
            // `/// text` carries one conventional space after the slashes.
            let text = text.strip_prefix(' ').unwrap_or(text);
            outer.docs.push(text.trim_end().to_string());
        }
        Rule::attribute => outer.attributes.push(build_attribute(p, b)?),
        _ => return Err(shape(b, span_of(&p))),
    }
    Ok(())
}

fn build_attribute(pair: Pair<'_, Rule>, b: &Builder<'_>) -> Built<Attribute> {
    let span = span_of(&pair);
    let mut name = None;
    let mut args = None;
    for p in children(pair) {
        match p.as_rule() {
            Rule::attr_name => name = Some(ident(&p)),
            Rule::attr_args => {
                let mut list = Vec::new();
                for a in children(p) {
                    let a_span = span_of(&a);
                    let inner = children(a).next().ok_or_else(|| shape(b, a_span.clone()))?;
                    list.push(match inner.as_rule() {
                        Rule::integer => AttrArg::Int(int_lit(inner)),
                        Rule::boolean => AttrArg::Bool(inner.as_str() == "true", span_of(&inner)),
                        Rule::string_lit => AttrArg::Str(string_value(&inner), span_of(&inner)),
                        Rule::ident => AttrArg::Ident(ident(&inner)),
                        _ => return Err(shape(b, a_span)),
                    });
                }
                args = Some(list);
            }
            _ => return Err(shape(b, span_of(&p))),
        }
    }
    let name = name.ok_or_else(|| shape(b, span.clone()))?;
    Ok(Attribute { name, args, span })
}

fn build_field(pair: Pair<'_, Rule>, b: &Builder<'_>) -> Built<Field> {
    let span = span_of(&pair);
    let mut outer = Outer::default();
    let mut name = None;
    let mut ty = None;
    for p in children(pair) {
        match p.as_rule() {
            Rule::ident => name = Some(ident(&p)),
            Rule::ty => ty = Some(build_type(p, b)?),
            _ => outer_part(p, &mut outer, b)?,
        }
    }
    match (name, ty) {
        (Some(name), Some(ty)) => Ok(Field { outer, name, ty }),
        _ => Err(shape(b, span)),
    }
}

fn build_variant(pair: Pair<'_, Rule>, b: &Builder<'_>) -> Built<Variant> {
    let span = span_of(&pair);
    let mut outer = Outer::default();
    let mut name = None;
    let mut payload = None;
    let mut discriminant = None;
    for p in children(pair) {
        match p.as_rule() {
            Rule::ident => name = Some(ident(&p)),
            Rule::payload => {
                let t = children(p).next().ok_or_else(|| shape(b, span.clone()))?;
                payload = Some(build_type(t, b)?);
            }
            Rule::discriminant => {
                let i = children(p).next().ok_or_else(|| shape(b, span.clone()))?;
                discriminant = Some(int_lit(i));
            }
            _ => outer_part(p, &mut outer, b)?,
        }
    }
    let name = name.ok_or_else(|| shape(b, span))?;
    Ok(Variant {
        outer,
        name,
        payload,
        discriminant,
    })
}

fn build_member(pair: Pair<'_, Rule>, b: &Builder<'_>) -> Built<Member> {
    let span = span_of(&pair);
    let kind = if pair.as_rule() == Rule::method {
        MemberKind::Fn
    } else {
        MemberKind::Event
    };
    let mut outer = Outer::default();
    let mut name = None;
    let mut params = Vec::new();
    let mut returns = None;
    for p in children(pair) {
        match p.as_rule() {
            Rule::ident => name = Some(ident(&p)),
            Rule::params => {
                for param in children(p) {
                    let p_span = span_of(&param);
                    let mut it = children(param);
                    match (it.next(), it.next()) {
                        (Some(n), Some(t)) => params.push(Param {
                            name: ident(&n),
                            ty: build_type(t, b)?,
                        }),
                        _ => return Err(shape(b, p_span)),
                    }
                }
            }
            Rule::returns => {
                let t = children(p).next().ok_or_else(|| shape(b, span.clone()))?;
                returns = Some(build_type(t, b)?);
            }
            _ => outer_part(p, &mut outer, b)?,
        }
    }
    let name = name.ok_or_else(|| shape(b, span.clone()))?;
    Ok(Member {
        kind,
        outer,
        name,
        params,
        returns,
        span,
    })
}

fn build_type(pair: Pair<'_, Rule>, b: &Builder<'_>) -> Built<Type> {
    let span = span_of(&pair);
    // `ty` wraps exactly one concrete type rule.
    let inner = if pair.as_rule() == Rule::ty {
        children(pair)
            .next()
            .ok_or_else(|| shape(b, span.clone()))?
    } else {
        pair
    };
    let rule = inner.as_rule();
    let text = inner.as_str();
    let mut parts = children(inner);
    let kind = match rule {
        Rule::scalar_ty => {
            TypeKind::Scalar(Scalar::from_name(text).ok_or_else(|| shape(b, span.clone()))?)
        }
        Rule::string_ty => TypeKind::String(parts.next().map(|p| bound(p, b)).transpose()?),
        Rule::bytes_ty => TypeKind::Bytes(parts.next().map(|p| bound(p, b)).transpose()?),
        Rule::vec_ty => {
            let t = parts.next().ok_or_else(|| shape(b, span.clone()))?;
            let t = build_type(t, b)?;
            TypeKind::Vec(Box::new(t), parts.next().map(|p| bound(p, b)).transpose()?)
        }
        Rule::option_ty => {
            let t = parts.next().ok_or_else(|| shape(b, span.clone()))?;
            TypeKind::Option(Box::new(build_type(t, b)?))
        }
        Rule::result_ty => match (parts.next(), parts.next()) {
            (Some(t), Some(e)) => {
                TypeKind::Result(Box::new(build_type(t, b)?), Box::new(build_type(e, b)?))
            }
            _ => return Err(shape(b, span)),
        },
        Rule::array_ty => match (parts.next(), parts.next()) {
            (Some(t), Some(n)) => TypeKind::Array(Box::new(build_type(t, b)?), bound(n, b)?),
            _ => return Err(shape(b, span)),
        },
        Rule::unit_ty => TypeKind::Unit,
        Rule::named_ty => {
            let n = parts.next().ok_or_else(|| shape(b, span.clone()))?;
            TypeKind::Named(ident(&n))
        }
        _ => return Err(shape(b, span)),
    };
    Ok(Type { kind, span })
}

fn bound(pair: Pair<'_, Rule>, b: &Builder<'_>) -> Built<Bound> {
    let span = span_of(&pair);
    let inner = children(pair)
        .next()
        .ok_or_else(|| shape(b, span.clone()))?;
    Ok(match inner.as_rule() {
        Rule::integer => Bound::Int(int_lit(inner)),
        Rule::ident => Bound::Const(ident(&inner)),
        _ => return Err(shape(b, span)),
    })
}

fn ident(pair: &Pair<'_, Rule>) -> Ident {
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(pair),
    }
}

fn int_lit(pair: Pair<'_, Rule>) -> IntLit {
    let span = span_of(&pair);
    let mut negative = false;
    let mut digits = None;
    let mut unit = None;
    for p in children(pair) {
        match p.as_rule() {
            Rule::minus => negative = true,
            Rule::number => digits = Some(p.as_str().replace('_', "")),
            Rule::unit => {
                unit = Some(match p.as_str() {
                    "KiB" => Unit::KiB,
                    "MiB" => Unit::MiB,
                    "GiB" => Unit::GiB,
                    _ => Unit::B,
                })
            }
            _ => {}
        }
    }
    let magnitude = digits.and_then(|d| {
        if let Some(hex) = d.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).ok()
        } else if let Some(bin) = d.strip_prefix("0b") {
            u64::from_str_radix(bin, 2).ok()
        } else {
            d.parse::<u64>().ok()
        }
    });
    let value = magnitude.and_then(|m| {
        let v = i128::from(m).checked_mul(unit.map_or(1, Unit::factor))?;
        let v = if negative { -v } else { v };
        // Every integer the IDL stores fits in u64 or i64.
        (v >= i128::from(i64::MIN) && v <= i128::from(u64::MAX)).then_some(v)
    });
    IntLit { value, unit, span }
}

/// The value of a string literal, escapes resolved. The grammar only admits
/// valid escapes, but an out-of-range `\u{...}` becomes U+FFFD.
fn string_value(pair: &Pair<'_, Rule>) -> String {
    let raw = pair.as_str();
    let raw = raw.strip_prefix('"').unwrap_or(raw);
    let raw = raw.strip_suffix('"').unwrap_or(raw);
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let hex: String = chars
                    .by_ref()
                    .skip_while(|c| *c == '{')
                    .take_while(|c| *c != '}')
                    .collect();
                let c = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                out.push(c.unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> File {
        match parse_source(Path::new("t.idl"), src) {
            Ok(f) => f,
            Err(e) => panic!("{}", e.render(false)),
        }
    }

    #[test]
    fn keywords_are_whole_words() {
        let f = parse("struct fnord { eventful: u8x, structure: stringy }");
        let Item::Struct(s) = &f.items[0] else {
            panic!()
        };
        assert_eq!(s.name.name, "fnord");
        assert!(matches!(&s.fields[0].ty.kind, TypeKind::Named(n) if n.name == "u8x"));
        assert!(matches!(&s.fields[1].ty.kind, TypeKind::Named(n) if n.name == "stringy"));
    }

    #[test]
    fn comments_are_pairs_and_docs_are_not_comments() {
        let src = "// c\n/// d\n/* b */ struct S {}\n//// not a doc\n";
        let pairs = parse_pairs(src).unwrap();
        let flat: Vec<Rule> = pairs.flatten().map(|p| p.as_rule()).collect();
        assert_eq!(flat.iter().filter(|r| **r == Rule::COMMENT).count(), 3);
        assert_eq!(flat.iter().filter(|r| **r == Rule::doc).count(), 1);
        let f = parse(src);
        let Item::Struct(s) = &f.items[0] else {
            panic!()
        };
        assert_eq!(s.outer.docs, vec!["d".to_string()]);
    }

    #[test]
    fn integers_with_units() {
        let f = parse("const A: u64 = 16 MiB; const B: i32 = -0x10; const C: u32 = 1_000;");
        let vals: Vec<Option<i128>> = f
            .items
            .iter()
            .map(|i| match i {
                Item::Const(Const {
                    value: Literal::Int(l),
                    ..
                }) => l.value,
                _ => None,
            })
            .collect();
        assert_eq!(vals, vec![Some(16 << 20), Some(-16), Some(1000)]);
    }

    #[test]
    fn string_escapes() {
        let f = parse(r#"const S: string = "a\"b\n\u{e9}";"#);
        let Item::Const(Const {
            value: Literal::Str(s, _),
            ..
        }) = &f.items[0]
        else {
            panic!()
        };
        assert_eq!(s, "a\"b\né");
    }

    #[test]
    fn nesting_is_capped() {
        let deep = format!(
            "struct S {{ a: {}u8{} }}",
            "option<".repeat(100),
            ">".repeat(100)
        );
        let e = parse_source(Path::new("t.idl"), &deep).unwrap_err();
        assert_eq!(e.codes(), vec![Code::NestingTooDeep]);
    }

    #[test]
    fn syntax_error_says_what_was_expected() {
        let e = parse_source(Path::new("t.idl"), "struct S { a u8 }").unwrap_err();
        let d = &e.as_slice()[0];
        assert_eq!(d.code, Code::Syntax);
        assert_eq!((d.line, d.col), (1, 14));
    }
}
