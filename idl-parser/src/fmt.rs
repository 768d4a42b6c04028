//! The canonical formatting of an IDL file: the engine behind `idlc fmt`.
//!
//! [`format_source`] walks the pest parse tree (comments included, as
//! `COMMENT` pairs) and prints it again. The output depends only on the tree
//! and on where line breaks and blank lines stood between its pieces, so
//! formatting is idempotent: `format(format(x)) == format(x)`. It never
//! changes meaning: the same tokens come out in the same order, only the
//! whitespace between them, the separators and the position of a few comments
//! relative to punctuation change.
//!
//! # The canonical form
//!
//! - **Indentation** is 4 spaces per level; lines end with `\n`, the file
//!   with exactly one `\n`; no trailing whitespace (except inside a doc
//!   comment, whose text is kept byte for byte because it reaches rustdoc).
//! - **Items** are separated by exactly one blank line, except in runs of
//!   imports and runs of consts, which keep a blank line between two of them
//!   only where the source had one. Imports come first, in their source
//!   order: an import written after another item moves up, with the
//!   comments directly above it and on its line.
//! - **Docs and attributes** (`///`, `@attr(...)`) each stand on their own
//!   line before their item, field, variant, method or event, docs first as
//!   written, in source order. `@sync fn x();` becomes two lines.
//! - **Bodies** (`struct`, `enum`, `protocol`) always open with ` {` on the
//!   item's line and list one field, variant, method or event per line; an
//!   empty body is `{}`. Inside a body, a blank line between two members is
//!   kept where the source had at least one (several collapse to one); none
//!   right after `{` or before `}`.
//! - **Separators**: fields and variants end with `,` (the last one too);
//!   within a line, lists (parameters, type arguments, attribute arguments)
//!   use `, ` and no trailing comma. `name: Type` has one space after the
//!   colon and none before; `-> T`, `= 7` and `= literal` have one space on
//!   each side; `[T; N]`, `vec<T, N>`, `result<T, E>`, `string<N>` and `()`
//!   have no inner padding.
//! - **Literals** are kept as written (`0x10`, `1_000`, `"text"`), except
//!   that a unit is separated by one space: `16MiB` becomes `16 MiB`.
//! - **Lines are never wrapped**: a long method stays on one line.
//!
//! # Comments
//!
//! Every `//` and `/* */` comment is kept (the test suite checks it over
//! random insertions of comments between any two tokens):
//!
//! - a comment on the same line as the end of an item, member, doc,
//!   attribute, body `{` or another comment stays at the end of that line,
//!   after one space (after a member's `,`);
//! - a comment on a line of its own stays on a line of its own, indented with
//!   its surroundings; a blank line above it is kept where the source had
//!   one; at the top level the comments directly above an item belong to it
//!   and move with it;
//! - a comment inside a one-line construct (between `fn` and `;`, inside a
//!   type, a `const` or a field) is printed inline where it stands among the
//!   construct's parts, on the same side of `:`, `=` and `,` as in the
//!   source; a `//` comment there ends the line, and the construct continues
//!   on the next line, indented one level more (a comma that followed such
//!   a comment moves before it). Inside a type, a comment right after `<`
//!   or `;` is printed before it; and a `//` comment between a body's name
//!   and its `{` goes after the `{`. Nothing else moves.
//!
//! A block comment's text is kept byte for byte (its inner lines are not
//! re-indented); a line comment loses only its trailing whitespace.
//!
//! A file with syntax errors is not formatted: its diagnostics are returned.

use std::path::Path;

use pest::iterators::Pair;

use crate::{Diagnostics, Rule};

/// Formats `source` (the text of the IDL file at `path`) canonically.
///
/// Only the syntax is needed: a file that parses but does not check (an
/// unknown type, say) is still formatted. `path` names the file in
/// diagnostics.
pub fn format_source(path: &Path, source: &str) -> Result<String, Diagnostics> {
    let pairs = crate::parse::parse_pairs_at(path, source)?;
    let mut printer = Printer::new(source);
    for pair in pairs {
        printer.top(pair);
    }
    Ok(printer.finish())
}

/// What the printer writes next to on the current line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Space {
    /// Nothing special: write as is.
    None,
    /// A block comment was just written inline: separate the next word by a
    /// space (unless it is closing punctuation).
    AfterComment,
}

/// A small line-oriented printer: words, forced line breaks, indentation.
struct Printer<'s> {
    source: &'s str,
    out: String,
    /// Indentation level of the member being printed.
    indent: usize,
    /// Indentation of the next line when a `//` comment breaks a one-line
    /// construct.
    continuation: usize,
    /// Whether nothing has been written on the current line yet.
    at_line_start: bool,
    space: Space,
}

impl<'s> Printer<'s> {
    fn new(source: &'s str) -> Self {
        Printer {
            source,
            out: String::with_capacity(source.len() + source.len() / 8),
            indent: 0,
            continuation: 0,
            at_line_start: true,
            space: Space::None,
        }
    }

    fn finish(mut self) -> String {
        self.end_line();
        // Blank lines at the end of the file are not kept.
        while self.out.ends_with("\n\n") {
            self.out.pop();
        }
        if self.out == "\n" {
            self.out.clear();
        }
        self.out
    }

    // ------------------------------------------------------------ low level

    /// Writes `text` on the current line, indenting a fresh line.
    fn word(&mut self, text: &str) {
        if self.at_line_start {
            for _ in 0..self.indent {
                self.out.push_str("    ");
            }
            self.at_line_start = false;
        } else if self.space == Space::AfterComment
            && !matches!(
                text.as_bytes().first(),
                Some(b' ' | b',' | b':' | b';' | b')' | b'>' | b']')
            )
        {
            self.out.push(' ');
        }
        self.space = Space::None;
        self.out.push_str(text);
    }

    /// Separates the next word by one space, unless the line is empty or
    /// already ends with one.
    fn space(&mut self) {
        if !self.at_line_start && !self.out.ends_with(' ') {
            self.out.push(' ');
        }
        self.space = Space::None;
    }

    /// Ends the current line, if anything is on it.
    fn end_line(&mut self) {
        if !self.at_line_start {
            // No trailing whitespace, except in a doc comment: its text
            // reaches rustdoc and is kept byte for byte.
            let line_start = self.out.rfind('\n').map_or(0, |i| i + 1);
            if !self.out[line_start..].trim_start().starts_with("///") {
                let kept = self.out.trim_end_matches([' ', '\t']).len();
                self.out.truncate(kept);
            }
            self.out.push('\n');
            self.at_line_start = true;
        }
        self.space = Space::None;
    }

    /// Ends the current line and adds one blank line.
    fn blank_line(&mut self) {
        self.end_line();
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    /// Whether the source between `from` and `to` holds a line break.
    fn breaks(&self, from: usize, to: usize) -> bool {
        self.newlines(from, to) > 0
    }

    /// Line breaks in the source between `from` and `to`.
    fn newlines(&self, from: usize, to: usize) -> usize {
        self.source
            .get(from.min(to)..to)
            .map_or(0, |gap| gap.bytes().filter(|&b| b == b'\n').count())
    }

    /// Writes a comment at the end of the current line (one space before).
    /// A `//` comment ends the line; after a one-line block comment the line
    /// stays open for another trailing comment, and whatever comes next
    /// starts a new line.
    fn trailing_comment(&mut self, comment: &Pair<'_, Rule>) {
        let text = comment_text(comment);
        self.space();
        self.word(text);
        if ends_line(text) {
            self.end_line();
        }
    }

    /// Writes a comment at the start of a line of its own, at the current
    /// indentation. After a one-line block comment the line stays open, so
    /// that a comment that followed it on the same line still does.
    fn own_line_comment(&mut self, comment: &Pair<'_, Rule>) {
        let text = comment_text(comment);
        self.end_line();
        self.word(text);
        if ends_line(text) {
            self.end_line();
        }
    }

    /// Writes a comment inside a one-line construct. A `//` comment (or a
    /// block comment spanning lines) ends the line; the construct goes on at
    /// the continuation indentation.
    fn inline_comment(&mut self, comment: &Pair<'_, Rule>) {
        let text = comment_text(comment);
        if !self.at_line_start
            && !matches!(self.out.as_bytes().last(), Some(b' ' | b'(' | b'<' | b'['))
        {
            self.out.push(' ');
        }
        self.space = Space::None;
        self.word(text);
        if ends_line(text) {
            self.end_line();
            self.indent = self.continuation;
        } else {
            self.space = Space::AfterComment;
        }
    }

    // ------------------------------------------------------------ top level

    fn top(&mut self, pair: Pair<'s, Rule>) {
        match pair.as_rule() {
            Rule::file => self.file(pair),
            Rule::EOI => {}
            _ => self.item(pair),
        }
    }

    /// The file: groups of (comments directly above, item, trailing comment),
    /// imports hoisted to the front.
    fn file(&mut self, file: Pair<'s, Rule>) {
        let groups = group_top_level(self.source, file);
        let (imports, others): (Vec<_>, Vec<_>) = groups
            .into_iter()
            .partition(|g| g.item.as_ref().is_some_and(|i| i.as_rule() == Rule::import));
        let mut previous: Option<Rule> = None;
        for group in imports.into_iter().chain(others) {
            let rule = group.item.as_ref().map(Pair::as_rule);
            match previous {
                None => {}
                // Runs of imports, and of consts, keep their grouping.
                Some(same @ (Rule::import | Rule::const_def)) if rule == Some(same) => {
                    if group.blank_before {
                        self.blank_line();
                    } else {
                        self.end_line();
                    }
                }
                Some(_) => self.blank_line(),
            }
            self.group(group);
            previous = Some(rule.unwrap_or(Rule::COMMENT));
        }
    }

    fn group(&mut self, group: Group<'s>) {
        let mut last_end: Option<usize> = None;
        for comment in &group.comments {
            match last_end.map(|end| self.newlines(end, comment.as_span().start())) {
                Some(0) => self.trailing_comment(comment),
                Some(1) | None => self.own_line_comment(comment),
                Some(_) => {
                    self.blank_line();
                    self.own_line_comment(comment);
                }
            }
            last_end = Some(comment.as_span().end());
        }
        if let Some(item) = group.item {
            let start = item.as_span().start();
            if let Some(end) = last_end
                && self.newlines(end, start) > 1
            {
                self.blank_line();
            }
            self.end_line();
            self.item(item);
        }
        for comment in &group.trailing {
            self.trailing_comment(comment);
        }
        self.end_line();
    }

    fn item(&mut self, item: Pair<'s, Rule>) {
        match item.as_rule() {
            Rule::import => self.import(item),
            Rule::struct_def | Rule::enum_def | Rule::protocol => self.body_item(item),
            Rule::const_def => self.const_def(item),
            Rule::COMMENT => self.own_line_comment(&item),
            _ => self.verbatim(&item),
        }
    }

    /// A construct this printer does not know (a grammar newer than this
    /// file): printed as written, which is always correct if not canonical.
    fn verbatim(&mut self, pair: &Pair<'s, Rule>) {
        self.word(pair.as_str().trim_end());
    }

    // ------------------------------------------------------------ items

    /// Docs, attributes and the comments among them, one per line; returns
    /// the remaining children (from the keyword or name on) with their
    /// comments.
    fn prefix(&mut self, pair: Pair<'s, Rule>) -> Vec<Pair<'s, Rule>> {
        let mut rest = Vec::new();
        let mut last_end: Option<usize> = None;
        let mut in_prefix = true;
        let indent = self.indent;
        self.continuation = indent + 1;
        for child in pair.into_inner() {
            if in_prefix {
                match child.as_rule() {
                    Rule::doc => {
                        self.end_line();
                        self.word(child.as_str().trim_end_matches(['\r', '\n']));
                        last_end = Some(child.as_span().end());
                        continue;
                    }
                    Rule::attribute => {
                        self.end_line();
                        self.attribute(child.clone());
                        self.indent = indent;
                        last_end = Some(child.as_span().end());
                        continue;
                    }
                    Rule::COMMENT => {
                        let start = child.as_span().start();
                        match last_end {
                            Some(end) if !self.breaks(end, start) => self.trailing_comment(&child),
                            _ => self.own_line_comment(&child),
                        }
                        last_end = Some(child.as_span().end());
                        continue;
                    }
                    _ => in_prefix = false,
                }
            }
            rest.push(child);
        }
        self.end_line();
        rest
    }

    fn import(&mut self, item: Pair<'s, Rule>) {
        let indent = self.indent;
        let rest = self.prefix(item);
        let mut first = true;
        for child in rest {
            match child.as_rule() {
                Rule::COMMENT => self.inline_comment(&child),
                Rule::kw_import => self.word("import"),
                _ => {
                    if first {
                        self.space();
                        first = false;
                    }
                    self.word(child.as_str());
                }
            }
        }
        self.word(";");
        self.indent = indent;
    }

    fn const_def(&mut self, item: Pair<'s, Rule>) {
        let indent = self.indent;
        let rest = self.prefix(item);
        let leads = [
            Lead::None,
            Lead::Space,
            Lead::Punct(':', ": "),
            Lead::Punct('=', " = "),
        ];
        self.sequence(rest, &leads, |p, index, child| match index {
            0 => p.word("const"),
            1 => p.word(child.as_str()),
            2 => p.ty(child),
            _ => p.literal(child),
        });
        self.word(";");
        self.indent = indent;
    }

    /// Prints the parts of a one-line construct with their lead-ins
    /// (`leads[i]` before part `i`). A comment found in the source after a
    /// lead-in's punctuation is printed after it, so that comments keep
    /// their side of `:` and `=`.
    fn sequence(
        &mut self,
        children: Vec<Pair<'s, Rule>>,
        leads: &[Lead],
        mut part: impl FnMut(&mut Self, usize, Pair<'s, Rule>),
    ) {
        let mut index = 0;
        let mut prev_end: Option<usize> = None;
        let mut led = false;
        for child in children {
            let span = child.as_span();
            if child.as_rule() == Rule::COMMENT {
                if let (false, Some(Lead::Punct(c, text)), Some(end)) =
                    (led, leads.get(index), prev_end)
                    && self
                        .source
                        .get(end..span.start())
                        .is_some_and(|gap| gap.contains(*c))
                {
                    self.word(text.trim_end());
                    led = true;
                }
                self.inline_comment(&child);
            } else {
                match leads.get(index) {
                    Some(Lead::Space) => self.space(),
                    Some(Lead::Punct(_, _)) if led => self.space(),
                    Some(Lead::Punct(_, text)) => self.word(text),
                    Some(Lead::None) | None => {}
                }
                part(self, index, child);
                index += 1;
                led = false;
            }
            prev_end = Some(span.end());
        }
    }

    /// `struct`, `enum` and `protocol`: a header line, then one member per
    /// line.
    fn body_item(&mut self, item: Pair<'s, Rule>) {
        let rule = item.as_rule();
        let item_end = item.as_span().end();
        let indent = self.indent;
        let rest = self.prefix(item);
        let mut children = rest.into_iter().peekable();
        // The header: keyword and name, with any comments between them.
        let mut header_end = 0;
        let mut named = false;
        while let Some(child) = children.peek() {
            match child.as_rule() {
                Rule::COMMENT if named => break,
                Rule::COMMENT => self.inline_comment(child),
                Rule::kw_struct | Rule::kw_enum | Rule::kw_protocol => {
                    self.word(child.as_str());
                }
                Rule::ident => {
                    self.space();
                    self.word(child.as_str());
                    named = true;
                }
                _ => break,
            }
            header_end = child.as_span().end();
            children.next();
        }
        self.indent = indent;
        let mut entries: Vec<_> = children.collect();
        // One-line block comments before the `{` stay before it.
        let before_brace = entries
            .iter()
            .take_while(|e| {
                e.as_rule() == Rule::COMMENT
                    && is_inline_block(e)
                    && !self
                        .source
                        .get(header_end..e.as_span().start())
                        .is_some_and(|g| g.contains('{'))
            })
            .count();
        for comment in entries.drain(..before_brace) {
            header_end = comment.as_span().end();
            self.inline_comment(&comment);
        }
        self.space();
        if entries.is_empty() {
            self.word("{}");
            return;
        }
        self.word("{");
        // Where the `{` stands: comments before it move after it. The gaps
        // between consecutive children hold no comment (comments are
        // children), so the first `{` found in a gap is the brace.
        let mut open = item_end;
        let mut gap_start = header_end;
        for entry in &entries {
            let start = entry.as_span().start();
            if let Some(i) = self
                .source
                .get(gap_start..start)
                .and_then(|gap| gap.find('{'))
            {
                open = gap_start + i + 1;
                break;
            }
            gap_start = entry.as_span().end();
        }
        let mut last_end = open;
        let mut first = true;
        self.indent = indent + 1;
        for entry in entries {
            let span = entry.as_span();
            if entry.as_rule() == Rule::COMMENT {
                if span.start() < open || !self.breaks(last_end, span.start()) {
                    if self.at_line_start {
                        self.own_line_comment(&entry);
                    } else {
                        self.trailing_comment(&entry);
                    }
                } else {
                    if !first && self.newlines(last_end, span.start()) > 1 {
                        self.blank_line();
                    }
                    self.own_line_comment(&entry);
                }
            } else {
                if !first && self.newlines(last_end, span.start()) > 1 {
                    self.blank_line();
                }
                self.end_line();
                self.member(entry, rule);
            }
            first = false;
            last_end = span.end().max(open);
        }
        self.indent = indent;
        self.end_line();
        self.word("}");
    }

    fn member(&mut self, member: Pair<'s, Rule>, container: Rule) {
        let indent = self.indent;
        match member.as_rule() {
            Rule::field => self.field(member),
            Rule::variant => self.variant(member),
            Rule::method | Rule::event => self.method(member),
            _ => self.verbatim(&member),
        }
        self.indent = indent;
        if matches!(container, Rule::struct_def | Rule::enum_def) {
            self.word(",");
        }
    }

    fn field(&mut self, field: Pair<'s, Rule>) {
        let rest = self.prefix(field);
        self.name_and_type(rest);
    }

    /// `name: Type`, for fields and parameters.
    fn name_and_type(&mut self, children: Vec<Pair<'s, Rule>>) {
        let leads = [Lead::None, Lead::Punct(':', ": ")];
        self.sequence(children, &leads, |p, index, child| match index {
            0 => p.word(child.as_str()),
            _ => p.ty(child),
        });
    }

    fn variant(&mut self, variant: Pair<'s, Rule>) {
        let rest = self.prefix(variant);
        for child in rest {
            match child.as_rule() {
                Rule::COMMENT => self.inline_comment(&child),
                Rule::ident => self.word(child.as_str()),
                Rule::payload => {
                    self.word("(");
                    for inner in child.into_inner() {
                        match inner.as_rule() {
                            Rule::COMMENT => self.inline_comment(&inner),
                            _ => self.ty(inner),
                        }
                    }
                    self.word(")");
                }
                Rule::discriminant => {
                    self.word(" = ");
                    for inner in child.into_inner() {
                        match inner.as_rule() {
                            Rule::COMMENT => self.inline_comment(&inner),
                            _ => self.integer(inner),
                        }
                    }
                }
                _ => self.verbatim(&child),
            }
        }
    }

    /// `fn` and `event`: `kw name(params) -> T;`.
    fn method(&mut self, method: Pair<'s, Rule>) {
        let rest = self.prefix(method);
        for child in rest {
            match child.as_rule() {
                Rule::COMMENT => self.inline_comment(&child),
                Rule::kw_fn | Rule::kw_event => self.word(child.as_str()),
                Rule::ident => {
                    self.space();
                    self.word(child.as_str());
                }
                Rule::params => self.list("(", child, ")", Self::param),
                Rule::returns => {
                    self.word(" -> ");
                    for inner in child.into_inner() {
                        match inner.as_rule() {
                            Rule::COMMENT => self.inline_comment(&inner),
                            _ => self.ty(inner),
                        }
                    }
                }
                _ => self.verbatim(&child),
            }
        }
        self.word(";");
    }

    fn param(&mut self, param: Pair<'s, Rule>) {
        self.name_and_type(param.into_inner().collect());
    }

    /// `open a, b, c close`, comments kept after the element they follow.
    fn list(
        &mut self,
        open: &str,
        pair: Pair<'s, Rule>,
        close: &str,
        mut element: impl FnMut(&mut Self, Pair<'s, Rule>),
    ) {
        self.word(open);
        let (leading, elements) = split_comments(pair);
        for comment in &leading {
            self.inline_comment(comment);
        }
        self.separated(elements, |p, e| element(p, e));
        self.word(close);
    }

    /// Elements separated by `, `: the comma goes right after its element,
    /// before the comments that follow it, so that a `//` comment never
    /// pushes a comma to the start of the next line.
    fn separated(
        &mut self,
        elements: Vec<(Pair<'s, Rule>, Vec<Pair<'s, Rule>>)>,
        mut element: impl FnMut(&mut Self, Pair<'s, Rule>),
    ) {
        let count = elements.len();
        for (i, (pair, comments)) in elements.into_iter().enumerate() {
            let mut end = pair.as_span().end();
            element(self, pair);
            let mut comma = i + 1 == count;
            for comment in &comments {
                let start = comment.as_span().start();
                let before_comma = !self.source.get(end..start).is_some_and(|g| g.contains(','));
                // A one-line block comment written before the comma stays
                // there; a `//` comment would swallow it, so the comma goes
                // first.
                if !(comma || before_comma && is_inline_block(comment)) {
                    self.word(",");
                    comma = true;
                }
                self.inline_comment(comment);
                end = comment.as_span().end();
            }
            if !comma {
                self.word(",");
            }
            if i + 1 < count {
                self.space();
            }
        }
    }

    fn attribute(&mut self, attribute: Pair<'s, Rule>) {
        self.word("@");
        for child in attribute.into_inner() {
            match child.as_rule() {
                Rule::COMMENT => self.inline_comment(&child),
                Rule::attr_name => self.word(child.as_str()),
                Rule::attr_args => self.list("(", child, ")", Self::attr_arg),
                _ => self.verbatim(&child),
            }
        }
    }

    fn attr_arg(&mut self, arg: Pair<'s, Rule>) {
        for child in arg.into_inner() {
            match child.as_rule() {
                Rule::COMMENT => self.inline_comment(&child),
                Rule::integer => self.integer(child),
                _ => self.word(child.as_str()),
            }
        }
    }

    // ------------------------------------------------------------ types and literals

    fn ty(&mut self, ty: Pair<'s, Rule>) {
        match ty.as_rule() {
            Rule::ty => {
                for child in ty.into_inner() {
                    match child.as_rule() {
                        Rule::COMMENT => self.inline_comment(&child),
                        _ => self.ty(child),
                    }
                }
            }
            Rule::scalar_ty | Rule::named_ty => self.word(ty.as_str().trim()),
            Rule::unit_ty => {
                self.word("(");
                for child in ty.into_inner() {
                    self.inline_comment(&child);
                }
                self.word(")");
            }
            Rule::string_ty | Rule::bytes_ty | Rule::vec_ty | Rule::option_ty | Rule::result_ty => {
                // The keyword, then `<arguments>` if any.
                let (leading, mut parts) = split_comments(ty);
                for comment in &leading {
                    self.inline_comment(comment);
                }
                let arguments = if parts.is_empty() {
                    Vec::new()
                } else {
                    parts.split_off(1)
                };
                for (keyword, comments) in parts {
                    self.word(keyword.as_str());
                    for comment in &comments {
                        self.inline_comment(comment);
                    }
                }
                if !arguments.is_empty() {
                    self.word("<");
                    self.separated(arguments, Self::ty_or_bound);
                    self.word(">");
                }
            }
            Rule::array_ty => {
                self.word("[");
                let mut index = 0;
                for child in ty.into_inner() {
                    if child.as_rule() == Rule::COMMENT {
                        self.inline_comment(&child);
                        continue;
                    }
                    if index > 0 {
                        self.word("; ");
                    }
                    self.ty_or_bound(child);
                    index += 1;
                }
                self.word("]");
            }
            _ => self.verbatim(&ty),
        }
    }

    fn ty_or_bound(&mut self, pair: Pair<'s, Rule>) {
        if pair.as_rule() == Rule::bound {
            for child in pair.into_inner() {
                match child.as_rule() {
                    Rule::COMMENT => self.inline_comment(&child),
                    Rule::integer => self.integer(child),
                    _ => self.word(child.as_str()),
                }
            }
        } else {
            self.ty(pair);
        }
    }

    fn literal(&mut self, literal: Pair<'s, Rule>) {
        match literal.as_rule() {
            Rule::integer => self.integer(literal),
            _ => self.word(literal.as_str()),
        }
    }

    /// `-`, digits as written, then ` UNIT`.
    fn integer(&mut self, integer: Pair<'s, Rule>) {
        for child in integer.into_inner() {
            match child.as_rule() {
                Rule::COMMENT => self.inline_comment(&child),
                Rule::unit => {
                    self.space();
                    self.word(child.as_str());
                }
                _ => self.word(child.as_str()),
            }
        }
    }
}

/// Whether `comment` is a block comment on one line (it can stand inside
/// a line without ending it).
fn is_inline_block(comment: &Pair<'_, Rule>) -> bool {
    let text = comment.as_str();
    text.starts_with("/*") && !text.contains('\n')
}

/// What comes before a part of a one-line construct (see
/// [`Printer::sequence`]).
#[derive(Clone, Copy)]
enum Lead {
    /// Nothing.
    None,
    /// One space.
    Space,
    /// A literal of the grammar, and how it is printed.
    Punct(char, &'static str),
}

/// A line comment without its trailing whitespace (and `\r`), or a block
/// comment as written.
fn comment_text<'s>(comment: &Pair<'s, Rule>) -> &'s str {
    let text = comment.as_str();
    if text.starts_with("//") {
        text.trim_end()
    } else {
        text
    }
}

/// Whether nothing may follow `text` (a comment) on its line: a line
/// comment, or a block comment that spans lines.
fn ends_line(text: &str) -> bool {
    text.starts_with("//") || text.contains('\n')
}

/// The children of `pair`: the comments before the first other child, then
/// each other child with the comments that follow it.
#[allow(clippy::type_complexity)] // a local shape, named by the doc above
fn split_comments<'s>(
    pair: Pair<'s, Rule>,
) -> (
    Vec<Pair<'s, Rule>>,
    Vec<(Pair<'s, Rule>, Vec<Pair<'s, Rule>>)>,
) {
    let mut leading = Vec::new();
    let mut parts: Vec<(Pair<'s, Rule>, Vec<Pair<'s, Rule>>)> = Vec::new();
    for child in pair.into_inner() {
        if child.as_rule() == Rule::COMMENT {
            match parts.last_mut() {
                Some((_, comments)) => comments.push(child),
                None => leading.push(child),
            }
        } else {
            parts.push((child, Vec::new()));
        }
    }
    (leading, parts)
}

/// A top-level item with the comments that belong to it.
struct Group<'s> {
    /// Own-line comments directly above the item (or at the end of the file,
    /// with no item).
    comments: Vec<Pair<'s, Rule>>,
    /// Whether the source had a blank line before the group.
    blank_before: bool,
    item: Option<Pair<'s, Rule>>,
    /// Comments on the item's last line.
    trailing: Vec<Pair<'s, Rule>>,
}

/// Splits the file's children into groups: each item takes the own-line
/// comments above it and the comments on its last line.
fn group_top_level<'s>(source: &str, file: Pair<'s, Rule>) -> Vec<Group<'s>> {
    let newlines = |from: usize, to: usize| {
        source
            .get(from.min(to)..to)
            .map_or(0, |gap| gap.bytes().filter(|&b| b == b'\n').count())
    };
    let mut groups: Vec<Group<'s>> = Vec::new();
    let mut current = Group {
        comments: Vec::new(),
        blank_before: false,
        item: None,
        trailing: Vec::new(),
    };
    let mut last_end: Option<usize> = None;
    for child in file.into_inner() {
        let span = child.as_span();
        match child.as_rule() {
            Rule::EOI => {}
            Rule::COMMENT => {
                // On the line where the previous item ended: it trails it.
                let trails = current.comments.is_empty()
                    && last_end.is_some_and(|end| newlines(end, span.start()) == 0)
                    && groups.last().is_some();
                if trails {
                    if let Some(previous) = groups.last_mut() {
                        previous.trailing.push(child);
                    }
                } else {
                    if current.comments.is_empty() {
                        current.blank_before =
                            last_end.is_some_and(|end| newlines(end, span.start()) > 1);
                    }
                    current.comments.push(child);
                }
                last_end = Some(span.end());
            }
            _ => {
                if current.comments.is_empty() {
                    current.blank_before =
                        last_end.is_some_and(|end| newlines(end, span.start()) > 1);
                }
                current.item = Some(child);
                last_end = Some(span.end());
                groups.push(std::mem::replace(
                    &mut current,
                    Group {
                        comments: Vec::new(),
                        blank_before: false,
                        item: None,
                        trailing: Vec::new(),
                    },
                ));
            }
        }
    }
    if !current.comments.is_empty() {
        groups.push(current);
    }
    groups
}
