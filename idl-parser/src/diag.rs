//! Diagnostics: every error the parser and the checker can report, with a
//! stable code, rendered by `codespan-reporting`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;

/// A stable error code. The numbers never change meaning; new rules get new
/// numbers. [`CODES`] lists them all with a one-line summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Code {
    /// E0001: the text is not valid IDL syntax.
    Syntax,
    /// E0002: brackets nested deeper than [`MAX_NESTING`].
    NestingTooDeep,
    /// E0003: an imported file cannot be read.
    MissingImport,
    /// E0004: files import each other in a cycle.
    ImportCycle,
    /// E0005: two types (structs or enums) share a name.
    DuplicateType,
    /// E0006: two consts share a name.
    DuplicateConst,
    /// E0007: two fields of a struct share a name.
    DuplicateField,
    /// E0008: two variants of an enum share a name.
    DuplicateVariant,
    /// E0009: two parameters of a method or event share a name.
    DuplicateParam,
    /// E0010: two methods or events of a protocol share a name.
    DuplicateMember,
    /// E0011: two methods or events of a protocol share a message id.
    DuplicateMessageId,
    /// E0012: two variants of an enum share a discriminant.
    DuplicateDiscriminant,
    /// E0013: two protocols share a name.
    DuplicateProtocol,
    /// E0014: a type name that is not defined (or not imported).
    UnknownType,
    /// E0015: a bound or size names a const that is not defined.
    UnknownConst,
    /// E0016: a type contains itself without `option` or `vec` in between.
    InfiniteType,
    /// E0017: an attribute the IDL does not know.
    UnknownAttribute,
    /// E0018: the same attribute twice on one declaration.
    DuplicateAttribute,
    /// E0019: an attribute where it has no meaning.
    MisplacedAttribute,
    /// E0020: an attribute's arguments are missing, extra, or of the wrong kind.
    BadAttributeArgument,
    /// E0021: attributes that contradict each other.
    ConflictingAttributes,
    /// E0022: `@async` on a `fn` that returns a value.
    AsyncWithReturn,
    /// E0023: an `event` with a return type.
    EventWithReturn,
    /// E0024: `result` anywhere but as the return type of a `fn`.
    MisplacedResult,
    /// E0025: `()` anywhere but as the `T` of a `result<T, E>`.
    MisplacedUnit,
    /// E0026: a bound of zero.
    ZeroBound,
    /// E0027: a bound or size that names a const which is not an integer.
    NonIntegerBound,
    /// E0028: a bound larger than a `u32` length prefix can describe.
    BoundTooLarge,
    /// E0029: `@version(0)` or `@since(0)`: versions start at 1.
    ZeroVersion,
    /// E0030: `@since(V)` newer than the protocol's `@version`.
    SinceAfterVersion,
    /// E0031: a const's value does not fit its declared type.
    ConstTypeMismatch,
    /// E0032: a protocol name longer than the ring header can store.
    ProtocolNameTooLong,
    /// E0033: an enum discriminant outside `0..=u32::MAX`.
    DiscriminantOutOfRange,
    /// E0034: a size computation overflows 64 bits.
    SizeOverflow,
    /// E0035: a const of a type that is not an integer, `bool` or `string`.
    BadConstType,
    /// E0036: an integer literal too large to represent.
    IntegerTooLarge,
}

/// Every code with its number and a one-line summary, in order: what
/// `idlc` can list and what the crate docs tabulate.
pub const CODES: &[(Code, &str, &str)] = &[
    (Code::Syntax, "E0001", "syntax error"),
    (Code::NestingTooDeep, "E0002", "brackets nested too deeply"),
    (
        Code::MissingImport,
        "E0003",
        "imported file not found or unreadable",
    ),
    (Code::ImportCycle, "E0004", "import cycle"),
    (Code::DuplicateType, "E0005", "duplicate type name"),
    (Code::DuplicateConst, "E0006", "duplicate const name"),
    (Code::DuplicateField, "E0007", "duplicate field name"),
    (Code::DuplicateVariant, "E0008", "duplicate variant name"),
    (Code::DuplicateParam, "E0009", "duplicate parameter name"),
    (
        Code::DuplicateMember,
        "E0010",
        "duplicate method or event name",
    ),
    (Code::DuplicateMessageId, "E0011", "duplicate message id"),
    (
        Code::DuplicateDiscriminant,
        "E0012",
        "duplicate enum discriminant",
    ),
    (Code::DuplicateProtocol, "E0013", "duplicate protocol name"),
    (Code::UnknownType, "E0014", "unknown type"),
    (Code::UnknownConst, "E0015", "unknown const"),
    (
        Code::InfiniteType,
        "E0016",
        "recursive type without indirection",
    ),
    (Code::UnknownAttribute, "E0017", "unknown attribute"),
    (Code::DuplicateAttribute, "E0018", "duplicated attribute"),
    (
        Code::MisplacedAttribute,
        "E0019",
        "attribute in the wrong place",
    ),
    (
        Code::BadAttributeArgument,
        "E0020",
        "bad attribute argument",
    ),
    (
        Code::ConflictingAttributes,
        "E0021",
        "conflicting attributes",
    ),
    (
        Code::AsyncWithReturn,
        "E0022",
        "`@async` on a fn with a return",
    ),
    (Code::EventWithReturn, "E0023", "event with a return"),
    (
        Code::MisplacedResult,
        "E0024",
        "`result` outside a return type",
    ),
    (Code::MisplacedUnit, "E0025", "`()` outside `result<(), E>`"),
    (Code::ZeroBound, "E0026", "zero bound"),
    (Code::NonIntegerBound, "E0027", "non-integer bound"),
    (Code::BoundTooLarge, "E0028", "bound too large"),
    (Code::ZeroVersion, "E0029", "version 0"),
    (
        Code::SinceAfterVersion,
        "E0030",
        "`@since` after the protocol's version",
    ),
    (
        Code::ConstTypeMismatch,
        "E0031",
        "const value does not match its type",
    ),
    (
        Code::ProtocolNameTooLong,
        "E0032",
        "protocol name longer than 64 bytes",
    ),
    (
        Code::DiscriminantOutOfRange,
        "E0033",
        "discriminant out of range",
    ),
    (Code::SizeOverflow, "E0034", "size overflows 64 bits"),
    (
        Code::BadConstType,
        "E0035",
        "const of a type that cannot be a const",
    ),
    (Code::IntegerTooLarge, "E0036", "integer literal too large"),
];

/// How deep brackets (`<`, `[`, `(`, `{`) may nest before the parser refuses
/// the input: pest recurses once per level, and a stack overflow is not a
/// diagnostic.
pub const MAX_NESTING: usize = 64;

impl Code {
    /// The stable code, e.g. `"E0014"`.
    pub fn as_str(self) -> &'static str {
        CODES
            .iter()
            .find(|(c, _, _)| *c == self)
            .map_or("E????", |(_, s, _)| s)
    }

    /// The one-line summary of the rule.
    pub fn summary(self) -> &'static str {
        CODES
            .iter()
            .find(|(c, _, _)| *c == self)
            .map_or("", |(_, _, s)| s)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secondary place that explains a diagnostic (e.g. the first definition
/// of a duplicated name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The file the span points into.
    pub file: PathBuf,
    /// Byte range in that file.
    pub span: Range<usize>,
    /// What this place has to do with the error.
    pub message: String,
}

/// One error, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The stable code.
    pub code: Code,
    /// What is wrong, in plain words.
    pub message: String,
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line of the start of `span`.
    pub line: usize,
    /// 1-based column (in characters) of the start of `span`.
    pub col: usize,
    /// Byte range of the offending text in `file`.
    pub span: Range<usize>,
    /// Text under the caret.
    pub label: String,
    /// Other places worth showing.
    pub labels: Vec<Label>,
    /// How to fix it, where there is a fix to suggest.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COL: error[E0014]: message`: one line, for logs and tests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error[{}]: {}",
            self.file.display(),
            self.line,
            self.col,
            self.code,
            self.message
        )
    }
}

/// Every diagnostic found, with the sources needed to render them. As an
/// error, it displays as [`Diagnostics::render`] without colour.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render(false))]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
    sources: Vec<(PathBuf, String)>,
}

impl Diagnostics {
    /// The diagnostics, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    /// The diagnostics as a slice.
    pub fn as_slice(&self) -> &[Diagnostic] {
        &self.items
    }

    /// How many diagnostics there are.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The codes, in order; handy in tests.
    pub fn codes(&self) -> Vec<Code> {
        self.items.iter().map(|d| d.code).collect()
    }

    /// Renders every diagnostic as `rustc` does: header with the code,
    /// `FILE:LINE:COL`, the source line with a caret, and `help:`. ANSI colours
    /// only when `color` is true.
    pub fn render(&self, color: bool) -> String {
        let mut files = SimpleFiles::new();
        let ids: Vec<(PathBuf, usize)> = self
            .sources
            .iter()
            .map(|(p, s)| (p.clone(), files.add(p.display().to_string(), s.clone())))
            .collect();
        let id_of = |p: &Path| ids.iter().find(|(q, _)| q == p).map(|(_, id)| *id);
        let config = term::Config::default();
        let mut out = String::new();
        for d in &self.items {
            let Some(file) = id_of(&d.file) else {
                // No source to show: the one-line form still says everything.
                out.push_str(&d.to_string());
                out.push('\n');
                continue;
            };
            let mut labels = vec![cs::Label::primary(file, d.span.clone()).with_message(&d.label)];
            for l in &d.labels {
                if let Some(id) = id_of(&l.file) {
                    labels.push(cs::Label::secondary(id, l.span.clone()).with_message(&l.message));
                }
            }
            let mut diag = cs::Diagnostic::error()
                .with_code(d.code.as_str())
                .with_message(&d.message)
                .with_labels(labels);
            if let Some(help) = &d.help {
                diag = diag.with_notes(vec![format!("help: {help}")]);
            }
            if color {
                let mut buffer = term::termcolor::Buffer::ansi();
                match term::emit_to_write_style(&mut buffer, &config, &files, &diag) {
                    Ok(()) => out.push_str(&String::from_utf8_lossy(buffer.as_slice())),
                    Err(_) => {
                        out.push_str(&d.to_string());
                        out.push('\n');
                    }
                }
            } else {
                let mut s = String::new();
                match term::emit_to_string(&mut s, &config, &files, &diag) {
                    Ok(()) => out.push_str(&s),
                    Err(_) => {
                        out.push_str(&d.to_string());
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// Adds the source of a file so diagnostics in it can show their lines.
    pub(crate) fn add_source(&mut self, path: &Path, source: &str) {
        if !self.sources.iter().any(|(p, _)| p == path) {
            self.sources.push((path.to_path_buf(), source.to_string()));
        }
    }

    pub(crate) fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }
}

/// Builds diagnostics against one file's source.
pub(crate) struct Builder<'a> {
    pub(crate) path: &'a Path,
    pub(crate) source: &'a str,
}

impl Builder<'_> {
    pub(crate) fn error(
        &self,
        code: Code,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Diagnostic {
        let span = clamp(self.source, span);
        let (line, col) = line_col(self.source, span.start);
        Diagnostic {
            code,
            message: message.into(),
            file: self.path.to_path_buf(),
            line,
            col,
            span,
            label: label.into(),
            labels: Vec::new(),
            help: None,
        }
    }
}

impl Diagnostic {
    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Keeps a span inside the source and on character boundaries, so the
/// renderer never sees an impossible range.
fn clamp(source: &str, span: Range<usize>) -> Range<usize> {
    let mut start = span.start.min(source.len());
    while !source.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = span.end.clamp(start, source.len());
    while !source.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let src = "ab\né x\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 3), (2, 1));
        // `é` is two bytes but one column.
        assert_eq!(line_col(src, 6), (2, 3));
    }

    #[test]
    fn spans_are_clamped_to_the_source() {
        assert_eq!(clamp("aé", 2..9), 1..3);
        assert_eq!(clamp("abc", 5..7), 3..3);
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (code, text, _) in CODES {
            assert!(seen.insert(text), "{text} twice");
            assert_eq!(code.to_string(), *text);
        }
    }
}
