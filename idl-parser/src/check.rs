//! Import resolution, every semantic rule, and the checked model.
//!
//! Checking never stops at the first error: each rule reports and moves on.
//! A name that failed to resolve is *poisoned*: whatever depends on it is not
//! checked further, so one mistake gives one diagnostic, not a cascade.
//! Nothing here recurses on the input's length: import chains and type
//! graphs are walked with explicit stacks; only type expressions recurse, and
//! the parser caps their nesting.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::ast::{
    self, AttrArg, Attribute, Bound, Ident, Item, Literal, MemberKind, Span, TypeKind,
};
use crate::diag::{Builder, Code, Diagnostic, Diagnostics};
use crate::loader::{SourceLoader, normalize};
use crate::model::{self, ConstValue, Delivery, Kind, Type};
use crate::sizes::{self, Max, Traffic};
use crate::{Checked, parse};

/// E0003 for a root file that cannot be read at all.
pub(crate) fn unreadable(path: &Path, e: &std::io::Error) -> Diagnostics {
    let mut ds = Diagnostics::default();
    ds.push(Diagnostic {
        code: Code::MissingImport,
        message: format!("cannot read `{}`: {}", path.display(), io_reason(e)),
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        span: 0..0,
        label: String::new(),
        labels: Vec::new(),
        help: None,
    });
    ds
}

/// Why a file could not be read, without the OS error number (which
/// differs between systems and would make diagnostics unstable).
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::InvalidData => "not valid UTF-8".into(),
        _ => e.to_string(),
    }
}

/// One file read while checking.
struct Loaded {
    path: PathBuf,
    source: String,
    /// `None` when the file has syntax errors.
    ast: Option<ast::File>,
    /// For each `import` item, in order: the file it names, if it was read.
    imports: Vec<Option<usize>>,
    /// An import of this file could not be parsed or read: unknown names
    /// here may be defined there, so they are not reported.
    poisoned_import: bool,
}

pub(crate) fn check(
    path: &Path,
    source: &str,
    loader: &dyn SourceLoader,
) -> Result<Checked, Diagnostics> {
    let mut cx = Cx {
        files: Vec::new(),
        diags: Vec::new(),
    };
    let order = cx.load(path, source, loader);
    let scope = Scope::build(&mut cx, &order);
    let model = cx.check_all(&scope, &order);
    if cx.diags.is_empty()
        && let Some(model) = model
    {
        let files = model.files.clone();
        return Ok(Checked { model, files });
    }
    let mut out = Diagnostics::default();
    for f in &cx.files {
        out.add_source(&f.path, &f.source);
    }
    // Files in the order they were read (the checked one first), each top
    // to bottom: the order a reader fixes them in.
    cx.diags.sort_by_key(|(f, d)| (*f, d.span.start));
    for (_, d) in cx.diags {
        out.push(d);
    }
    if out.is_empty() {
        // Unreachable by construction (no model is only possible after an
        // error), but an empty error would be worse than a vague one.
        out.push(Builder { path, source }.error(
            Code::Syntax,
            0..0,
            "internal error: no model",
            "",
        ));
    }
    Err(out)
}

struct Cx {
    files: Vec<Loaded>,
    /// (file index, diagnostic), sorted by both before they are returned.
    diags: Vec<(usize, Diagnostic)>,
}

impl Cx {
    /// Reports an error with a fix to suggest.
    #[allow(clippy::too_many_arguments)]
    fn err_help(
        &mut self,
        file: usize,
        code: Code,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.err(file, code, span, message, label).help = Some(help.into());
    }

    fn err(
        &mut self,
        file: usize,
        code: Code,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> &mut Diagnostic {
        let f = &self.files[file];
        let d = Builder {
            path: &f.path,
            source: &f.source,
        }
        .error(code, span, message, label);
        self.diags.push((file, d));
        let last = self.diags.len() - 1;
        &mut self.diags[last].1
    }

    /// Reads the root and, depth first, every import. Returns the files in
    /// post-order (imports before importers, the root last).
    fn load(&mut self, path: &Path, source: &str, loader: &dyn SourceLoader) -> Vec<usize> {
        let ast = self.parse(path, source);
        self.files.push(Loaded {
            path: path.to_path_buf(),
            source: source.to_string(),
            ast,
            imports: Vec::new(),
            poisoned_import: false,
        });
        let mut order = Vec::new();
        let mut done = vec![false];
        // (file, index of the next import to follow)
        let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
        while let Some(&mut (f, ref mut next)) = stack.last_mut() {
            let imports: Vec<(String, Span)> = self.files[f]
                .ast
                .iter()
                .flat_map(|a| &a.items)
                .filter_map(|i| match i {
                    Item::Import(imp) => Some((imp.path.clone(), imp.path_span.clone())),
                    _ => None,
                })
                .collect();
            let Some((rel, span)) = imports.get(*next).cloned() else {
                done[f] = true;
                order.push(f);
                stack.pop();
                continue;
            };
            *next += 1;
            let base = self.files[f]
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let target = normalize(&base.join(&rel));
            if let Some(t) = self.files.iter().position(|l| normalize(&l.path) == target) {
                self.files[f].imports.push(Some(t));
                if self.files[t].ast.is_none() {
                    self.files[f].poisoned_import = true;
                }
                if !done[t] {
                    // `t` is on the stack: this import closes a cycle.
                    let from = stack.iter().position(|(s, _)| *s == t).unwrap_or(0);
                    let mut chain: Vec<String> = stack[from..]
                        .iter()
                        .map(|(s, _)| self.files[*s].path.display().to_string())
                        .collect();
                    chain.push(self.files[t].path.display().to_string());
                    let chain = chain.join(" -> ");
                    self.err_help(
                        f,
                        Code::ImportCycle,
                        span,
                        format!("import cycle: {chain}"),
                        "this import closes the cycle",
                        "move the shared declarations into a file that imports neither",
                    );
                }
                continue;
            }
            match loader.load(&target) {
                Err(e) => {
                    self.files[f].imports.push(None);
                    self.files[f].poisoned_import = true;
                    let shown = target.display();
                    let why = io_reason(&e);
                    self.err_help(
                        f,
                        Code::MissingImport,
                        span,
                        format!("cannot read imported file `{shown}`: {why}"),
                        "imported here",
                        "import paths are relative to the folder of the importing file",
                    );
                }
                Ok(src) => {
                    let ast = self.parse(&target, &src);
                    let bad = ast.is_none();
                    self.files.push(Loaded {
                        path: target,
                        source: src,
                        ast,
                        imports: Vec::new(),
                        poisoned_import: false,
                    });
                    done.push(false);
                    let t = self.files.len() - 1;
                    self.files[f].imports.push(Some(t));
                    if bad {
                        self.files[f].poisoned_import = true;
                    }
                    stack.push((t, 0));
                }
            }
        }
        order
    }

    fn parse(&mut self, path: &Path, source: &str) -> Option<ast::File> {
        match parse::parse_source(path, source) {
            Ok(f) => Some(f),
            Err(ds) => {
                // The file is not in `self.files` yet; its index is the next.
                let idx = self.files.len();
                for d in ds.iter() {
                    self.diags.push((idx, d.clone()));
                }
                None
            }
        }
    }
}

/// Where a declaration lives.
#[derive(Clone, Copy)]
struct DeclRef {
    file: usize,
    item: usize,
}

/// Every type and const name, and which file sees which.
struct Scope {
    types: HashMap<String, DeclRef>,
    consts: HashMap<String, DeclRef>,
    /// Per file: the files whose declarations it sees (itself and its direct
    /// imports).
    visible: Vec<HashSet<usize>>,
}

/// The two namespaces a file declares names in.
#[derive(Clone, Copy)]
enum NameKind {
    Type,
    Const,
}

impl NameKind {
    fn word(self) -> &'static str {
        match self {
            NameKind::Type => "type",
            NameKind::Const => "const",
        }
    }

    fn other(self) -> NameKind {
        match self {
            NameKind::Type => NameKind::Const,
            NameKind::Const => NameKind::Type,
        }
    }
}

impl Scope {
    fn names(&self, kind: NameKind) -> &HashMap<String, DeclRef> {
        match kind {
            NameKind::Type => &self.types,
            NameKind::Const => &self.consts,
        }
    }

    fn build(cx: &mut Cx, order: &[usize]) -> Scope {
        let mut scope = Scope {
            types: HashMap::new(),
            consts: HashMap::new(),
            visible: Vec::new(),
        };
        for (i, f) in cx.files.iter().enumerate() {
            let mut v: HashSet<usize> = f.imports.iter().flatten().copied().collect();
            v.insert(i);
            scope.visible.push(v);
        }
        let mut dups = Vec::new();
        for &f in order {
            let Some(ast) = &cx.files[f].ast else {
                continue;
            };
            for (i, item) in ast.items.iter().enumerate() {
                let (map, name, code, what) = match item {
                    Item::Struct(s) => (&mut scope.types, &s.name, Code::DuplicateType, "type"),
                    Item::Enum(e) => (&mut scope.types, &e.name, Code::DuplicateType, "type"),
                    Item::Const(c) => (&mut scope.consts, &c.name, Code::DuplicateConst, "const"),
                    _ => continue,
                };
                match map.get(&name.name) {
                    Some(first) => dups.push((f, name.clone(), *first, code, what)),
                    None => {
                        map.insert(name.name.clone(), DeclRef { file: f, item: i });
                    }
                }
            }
        }
        for (f, name, first, code, what) in dups {
            let first_span = decl_name(cx, first)
                .map(|n| n.span.clone())
                .unwrap_or_default();
            let first_path = cx.files[first.file].path.clone();
            cx.err(
                f,
                code,
                name.span.clone(),
                format!("the {what} `{}` is defined twice", name.name),
                "defined again here",
            )
            .labels
            .push(crate::diag::Label {
                file: first_path,
                span: first_span,
                message: "first defined here".into(),
            });
        }
        scope
    }
}

fn decl_name(cx: &Cx, d: DeclRef) -> Option<&Ident> {
    match cx.files[d.file].ast.as_ref()?.items.get(d.item)? {
        Item::Struct(s) => Some(&s.name),
        Item::Enum(e) => Some(&e.name),
        Item::Const(c) => Some(&c.name),
        _ => None,
    }
}

/// Where a type stands: `result` and `()` are only allowed in some places.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// The return type of a `fn`.
    Return,
    /// The `T` of a `result<T, E>`.
    ResultOk,
    /// Anywhere else.
    Other,
}

/// A const after its value was checked.
#[derive(Clone)]
struct ConstInfo {
    /// `None` when the const itself is in error (poisoned).
    value: Option<ConstValue>,
}

const KNOWN_ATTRS: &[&str] = &[
    "version",
    "buffer",
    "sync",
    "async",
    "queue",
    "no_queue",
    "timeout",
    "since",
    "id",
    "ordered",
    "one_shot",
    "idempotent",
];

const BUILTIN_TYPES: &[&str] = &[
    "bool", "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f32", "f64", "string", "bytes",
    "vec", "option", "result",
];

/// What a declaration is, for "attribute in the wrong place" messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Import,
    Struct,
    Enum,
    Const,
    Field,
    Variant,
    Protocol,
    OneWayFn,
    TwoWayFn,
    Event,
}

impl Target {
    fn describe(self) -> &'static str {
        match self {
            Target::Import => "an import",
            Target::Struct => "a struct",
            Target::Enum => "an enum",
            Target::Const => "a const",
            Target::Field => "a field",
            Target::Variant => "a variant",
            Target::Protocol => "a protocol",
            Target::OneWayFn => "a one-way fn",
            Target::TwoWayFn => "a two-way fn",
            Target::Event => "an event",
        }
    }
}

/// Where each attribute may stand (IDL.md's table).
fn attr_allowed(name: &str, t: Target) -> Option<&'static str> {
    use Target::*;
    let ok = match name {
        "version" | "buffer" => t == Protocol,
        "sync" | "async" => t == OneWayFn,
        "queue" | "no_queue" => matches!(t, OneWayFn | Event),
        // A one-way fn made two-way by `@sync` is checked as two-way.
        "timeout" => t == TwoWayFn,
        "since" | "id" => matches!(t, OneWayFn | TwoWayFn | Event),
        "ordered" | "one_shot" | "idempotent" => matches!(t, OneWayFn | TwoWayFn),
        _ => return None,
    };
    if ok {
        return None;
    }
    Some(match name {
        "version" | "buffer" => "a protocol",
        "sync" | "async" => "a one-way fn (one without `-> T`)",
        "queue" | "no_queue" => "a one-way fn or an event",
        "timeout" => "a two-way fn (one with `-> T`, or marked `@sync`)",
        "since" | "id" => "a fn or an event",
        _ => "a fn",
    })
}

/// Attributes of one declaration, after placement and argument checks.
#[derive(Default)]
struct Attrs {
    version: Option<u32>,
    buffer: Option<u64>,
    sync: Option<Span>,
    is_async: Option<Span>,
    queue: Option<(u32, Span)>,
    no_queue: Option<Span>,
    timeout: Option<u64>,
    since: Option<(u32, Span)>,
    id: Option<u32>,
    delivery: Option<(Delivery, Span)>,
}

impl Cx {
    fn check_all(&mut self, scope: &Scope, order: &[usize]) -> Option<model::Model> {
        let consts = self.check_consts(scope, order);
        let types = self.check_types(scope, &consts, order);
        let sizes = self.type_sizes(scope, &types, order);
        let mut protocols = Vec::new();
        for &f in order {
            let Some(ast) = self.files[f].ast.clone() else {
                continue;
            };
            let mut seen: HashMap<String, Span> = HashMap::new();
            for item in &ast.items {
                match item {
                    Item::Protocol(p) => {
                        if let Some(first) = seen.get(&p.name.name) {
                            let path = self.files[f].path.clone();
                            let first = first.clone();
                            self.err(
                                f,
                                Code::DuplicateProtocol,
                                p.name.span.clone(),
                                format!("the protocol `{}` is defined twice", p.name.name),
                                "defined again here",
                            )
                            .labels
                            .push(crate::diag::Label {
                                file: path,
                                span: first,
                                message: "first defined here".into(),
                            });
                        } else {
                            seen.insert(p.name.name.clone(), p.name.span.clone());
                        }
                        let checked = self.check_protocol(f, p, scope, &consts, &sizes);
                        // Only the root file's protocols are part of the model.
                        if f == 0 {
                            protocols.push(checked);
                        }
                    }
                    Item::Import(imp) => {
                        self.check_attrs(f, &imp.outer, Target::Import, scope, &consts);
                    }
                    _ => {}
                }
            }
        }
        if !self.diags.is_empty() {
            return None;
        }
        let protocols: Option<Vec<_>> = protocols.into_iter().collect();
        let mut model_types = Vec::new();
        let mut model_consts = Vec::new();
        for &f in order {
            let Some(ast) = self.files[f].ast.clone() else {
                continue;
            };
            for item in &ast.items {
                match item {
                    Item::Struct(s) => {
                        let Some(Resolved::Struct(fields)) = types.get(&s.name.name) else {
                            return None;
                        };
                        model_types.push(model::TypeDef::Struct(model::Struct {
                            name: s.name.name.clone(),
                            docs: s.outer.docs.clone(),
                            file: self.files[f].path.clone(),
                            fields: fields.clone()?,
                            max_size: sizes.get(&s.name.name).and_then(|m| m.bytes()),
                        }));
                    }
                    Item::Enum(e) => {
                        let Some(Resolved::Enum(variants)) = types.get(&e.name.name) else {
                            return None;
                        };
                        model_types.push(model::TypeDef::Enum(model::Enum {
                            name: e.name.name.clone(),
                            docs: e.outer.docs.clone(),
                            file: self.files[f].path.clone(),
                            variants: variants.clone()?,
                            max_size: sizes.get(&e.name.name).and_then(|m| m.bytes()),
                        }));
                    }
                    Item::Const(c) => {
                        let info = consts.get(&c.name.name)?;
                        let ty = self.resolve_quiet(f, &c.ty, scope, &consts)?;
                        model_consts.push(model::Const {
                            name: c.name.name.clone(),
                            docs: c.outer.docs.clone(),
                            ty,
                            value: info.value.clone()?,
                        });
                    }
                    _ => {}
                }
            }
        }
        let mut files = vec![self.files[0].path.clone()];
        files.extend(self.files.iter().skip(1).map(|f| f.path.clone()));
        Some(model::Model {
            files,
            protocols: protocols?,
            types: model_types,
            consts: model_consts,
        })
    }

    // ------------------------------------------------------------ consts

    fn check_consts(&mut self, scope: &Scope, order: &[usize]) -> HashMap<String, ConstInfo> {
        let mut out = HashMap::new();
        // Values first: a const's value is a literal and depends on nothing.
        let mut pending_bounds = Vec::new();
        for &f in order {
            let Some(ast) = self.files[f].ast.clone() else {
                continue;
            };
            for (i, item) in ast.items.iter().enumerate() {
                let Item::Const(c) = item else { continue };
                let is_first = scope
                    .consts
                    .get(&c.name.name)
                    .is_some_and(|d| d.file == f && d.item == i);
                let value = self.const_value(f, c);
                if let (Some(ConstValue::Str(_)), TypeKind::String(Some(_))) = (&value, &c.ty.kind)
                {
                    pending_bounds.push((f, c.clone()));
                }
                if is_first {
                    out.insert(c.name.name.clone(), ConstInfo { value });
                }
            }
        }
        // Then string bounds, which may name other consts.
        for (f, c) in pending_bounds {
            let TypeKind::String(Some(b)) = &c.ty.kind else {
                continue;
            };
            let Some(n) = self.bound(f, b, scope, &out) else {
                continue;
            };
            if let Literal::Str(s, span) = &c.value
                && s.len() as u64 > n
            {
                self.err_help(
                    f,
                    Code::ConstTypeMismatch,
                    span.clone(),
                    format!(
                        "the string is {} bytes long, but `{}` holds at most {n}",
                        s.len(),
                        c.name.name
                    ),
                    "too long",
                    format!("shorten it, or raise the bound of `{}`", c.name.name),
                );
                if let Some(info) = out.get_mut(&c.name.name) {
                    info.value = None;
                }
            }
        }
        out
    }

    fn const_value(&mut self, f: usize, c: &ast::Const) -> Option<ConstValue> {
        let ty_text = self.text(f, &c.ty.span);
        match (&c.ty.kind, &c.value) {
            (TypeKind::Scalar(s), Literal::Int(lit)) if s.int_range().is_some() => {
                let (lo, hi) = s.int_range()?;
                let v = self.int_value(f, lit)?;
                if v < lo || v > hi {
                    self.err_help(
                        f,
                        Code::ConstTypeMismatch,
                        lit.span.clone(),
                        format!("{v} does not fit in `{}` ({lo}..={hi})", s.name()),
                        "out of range",
                        "use a wider integer type",
                    );
                    return None;
                }
                Some(ConstValue::Int(v))
            }
            (TypeKind::Scalar(ast::Scalar::Bool), Literal::Bool(b, _)) => {
                Some(ConstValue::Bool(*b))
            }
            (TypeKind::String(_), Literal::Str(s, _)) => Some(ConstValue::Str(s.clone())),
            (TypeKind::Scalar(ast::Scalar::F32 | ast::Scalar::F64), _)
            | (
                TypeKind::Bytes(_)
                | TypeKind::Array(..)
                | TypeKind::Vec(..)
                | TypeKind::Option(_)
                | TypeKind::Result(..)
                | TypeKind::Unit
                | TypeKind::Named(_),
                _,
            ) => {
                self.err_help(
                    f,
                    Code::BadConstType,
                    c.ty.span.clone(),
                    format!("a const cannot have the type `{ty_text}`"),
                    "not an integer, `bool` or `string`",
                    "consts are integers (`u8`..`i64`), `bool` or `string`",
                );
                None
            }
            (_, lit) => {
                let found = match lit {
                    Literal::Int(_) => "an integer",
                    Literal::Bool(..) => "a bool",
                    Literal::Str(..) => "a string",
                };
                self.err(
                    f,
                    Code::ConstTypeMismatch,
                    lit.span(),
                    format!(
                        "`{}` is declared `{ty_text}` but its value is {found}",
                        c.name.name
                    ),
                    format!("expected a value of type `{ty_text}`"),
                );
                None
            }
        }
    }

    fn text(&self, f: usize, span: &Span) -> String {
        self.files[f]
            .source
            .get(span.clone())
            .unwrap_or("")
            .to_string()
    }

    fn int_value(&mut self, f: usize, lit: &ast::IntLit) -> Option<i128> {
        if lit.value.is_none() {
            self.err(
                f,
                Code::IntegerTooLarge,
                lit.span.clone(),
                "this integer does not fit in 64 bits",
                "too large",
            );
        }
        lit.value
    }

    /// An integer written as a literal or a const name (bounds, sizes,
    /// attribute arguments).
    fn int_or_const(
        &mut self,
        f: usize,
        b: &Bound,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
    ) -> Option<i128> {
        match b {
            Bound::Int(lit) => self.int_value(f, lit),
            Bound::Const(name) => {
                self.lookup(f, name, NameKind::Const, scope)?;
                match consts.get(&name.name).and_then(|c| c.value.clone())? {
                    ConstValue::Int(v) => Some(v),
                    other => {
                        let kind = if matches!(other, ConstValue::Bool(_)) {
                            "a bool"
                        } else {
                            "a string"
                        };
                        self.err_help(
                            f,
                            Code::NonIntegerBound,
                            name.span.clone(),
                            format!("`{}` is {kind}, not an integer", name.name),
                            "used as a bound here",
                            "bounds and sizes need an integer const",
                        );
                        None
                    }
                }
            }
        }
    }

    /// A bound: at least 1, at most `u32::MAX` (lengths are `u32`).
    fn bound(
        &mut self,
        f: usize,
        b: &Bound,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
    ) -> Option<u64> {
        let v = self.int_or_const(f, b, scope, consts)?;
        if v <= 0 {
            let message = format!("a bound must be at least 1, this one is {v}");
            let help = "an empty string, bytes, array or vec carries nothing: \
                        remove it, or use a bound of 1 or more";
            self.err_help(f, Code::ZeroBound, b.span(), message, "zero bound", help);
            return None;
        }
        if v > i128::from(u32::MAX) {
            self.err_help(
                f,
                Code::BoundTooLarge,
                b.span(),
                format!(
                    "the bound {v} is larger than {} (lengths are `u32` on the wire)",
                    u32::MAX
                ),
                "too large",
                "use an unbounded `string`, `bytes` or `vec<T>`",
            );
            return None;
        }
        u64::try_from(v).ok()
    }

    // ------------------------------------------------------------ types

    /// Resolves a type as written; reports every error in it. `None` when
    /// something in it is wrong (poisoned).
    fn resolve(
        &mut self,
        f: usize,
        t: &ast::Type,
        pos: Pos,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
    ) -> Option<Type> {
        match &t.kind {
            TypeKind::Scalar(s) => Some(Type::Scalar(*s)),
            TypeKind::String(b) => {
                let n = b.as_ref().map(|b| self.bound(f, b, scope, consts));
                match n {
                    Some(None) => None,
                    n => Some(Type::String(n.flatten())),
                }
            }
            TypeKind::Bytes(b) => {
                let n = b.as_ref().map(|b| self.bound(f, b, scope, consts));
                match n {
                    Some(None) => None,
                    n => Some(Type::Bytes(n.flatten())),
                }
            }
            TypeKind::Array(inner, b) => {
                let inner = self.resolve(f, inner, Pos::Other, scope, consts);
                let n = self.bound(f, b, scope, consts);
                Some(Type::Array(Box::new(inner?), n?))
            }
            TypeKind::Vec(inner, b) => {
                let inner = self.resolve(f, inner, Pos::Other, scope, consts);
                let n = b.as_ref().map(|b| self.bound(f, b, scope, consts));
                let n = match n {
                    Some(None) => return None,
                    n => n.flatten(),
                };
                Some(Type::Vec(Box::new(inner?), n))
            }
            TypeKind::Option(inner) => Some(Type::Option(Box::new(self.resolve(
                f,
                inner,
                Pos::Other,
                scope,
                consts,
            )?))),
            TypeKind::Result(ok, err) => {
                if pos != Pos::Return {
                    let message = "`result` is only allowed as the return type of a fn";
                    let help = "a value that may fail belongs in an enum, \
                                e.g. `enum Outcome { Ok(T), Err(E) }`";
                    self.err_help(
                        f,
                        Code::MisplacedResult,
                        t.span.clone(),
                        message,
                        "not a return type",
                        help,
                    );
                }
                let ok = self.resolve(f, ok, Pos::ResultOk, scope, consts);
                let err = self.resolve(f, err, Pos::Other, scope, consts);
                if pos != Pos::Return {
                    return None;
                }
                Some(Type::Result(Box::new(ok?), Box::new(err?)))
            }
            TypeKind::Unit => {
                if pos != Pos::ResultOk {
                    let d = self.err(
                        f,
                        Code::MisplacedUnit,
                        t.span.clone(),
                        "`()` is only allowed as the `T` of `result<T, E>`",
                        "not allowed here",
                    );
                    if pos == Pos::Return {
                        let help = "for a call that waits for completion without a value, \
                                    write `@sync fn` without a return type";
                        d.help = Some(help.into());
                    }
                    return None;
                }
                Some(Type::Unit)
            }
            TypeKind::Named(name) => {
                self.lookup(f, name, NameKind::Type, scope)?;
                Some(Type::Named(name.name.clone()))
            }
        }
    }

    /// Finds the declaration a type or const name stands for, as file `f`
    /// sees it. `None`, with a diagnostic, when it is not declared or its
    /// file is not imported; `None` without one when `f` has an import that
    /// failed, since the name may well be declared there.
    fn lookup(&mut self, f: usize, name: &Ident, kind: NameKind, scope: &Scope) -> Option<DeclRef> {
        let what = kind.word();
        let code = match kind {
            NameKind::Type => Code::UnknownType,
            NameKind::Const => Code::UnknownConst,
        };
        let Some(&decl) = scope.names(kind).get(&name.name) else {
            if self.files[f].poisoned_import {
                return None;
            }
            let candidates = visible_names(scope, f, kind);
            let d = self.err(
                f,
                code,
                name.span.clone(),
                format!("unknown {what} `{}`", name.name),
                "not defined",
            );
            let other = kind.other();
            if scope.names(other).contains_key(&name.name) {
                let other = other.word();
                d.help = Some(format!("`{}` is a {other}, not a {what}", name.name));
            } else if let Some(s) = suggest(&name.name, candidates.iter().map(String::as_str)) {
                d.help = Some(format!("did you mean `{s}`?"));
            }
            return None;
        };
        if !scope.visible[f].contains(&decl.file) {
            let where_ = self.files[decl.file].path.display().to_string();
            self.err_help(
                f,
                code,
                name.span.clone(),
                format!("unknown {what} `{}`", name.name),
                "not imported",
                format!("`{}` is defined in `{where_}`: import that file", name.name),
            );
            return None;
        }
        Some(decl)
    }

    /// Resolves a type that was already checked (no new diagnostics).
    fn resolve_quiet(
        &mut self,
        f: usize,
        t: &ast::Type,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
    ) -> Option<Type> {
        let before = self.diags.len();
        let r = self.resolve(f, t, Pos::Other, scope, consts);
        self.diags.truncate(before);
        r
    }

    fn check_types(
        &mut self,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
        order: &[usize],
    ) -> HashMap<String, Resolved> {
        let mut out = HashMap::new();
        for &f in order {
            let Some(ast) = self.files[f].ast.clone() else {
                continue;
            };
            for (i, item) in ast.items.iter().enumerate() {
                let is_first = |name: &Ident| {
                    scope
                        .types
                        .get(&name.name)
                        .is_some_and(|d| d.file == f && d.item == i)
                };
                match item {
                    Item::Struct(s) => {
                        self.check_attrs(f, &s.outer, Target::Struct, scope, consts);
                        let mut seen: HashMap<&str, Span> = HashMap::new();
                        let mut fields = Some(Vec::new());
                        for field in &s.fields {
                            self.check_attrs(f, &field.outer, Target::Field, scope, consts);
                            self.check_unique(
                                f,
                                &mut seen,
                                &field.name,
                                Code::DuplicateField,
                                &format!("struct `{}` has two fields named", s.name.name),
                            );
                            let ty = self.resolve(f, &field.ty, Pos::Other, scope, consts);
                            match (ty, &mut fields) {
                                (Some(ty), Some(v)) => v.push(model::Field {
                                    name: field.name.name.clone(),
                                    docs: field.outer.docs.clone(),
                                    ty,
                                }),
                                _ => fields = None,
                            }
                        }
                        if is_first(&s.name) {
                            out.insert(s.name.name.clone(), Resolved::Struct(fields));
                        }
                    }
                    Item::Enum(e) => {
                        self.check_attrs(f, &e.outer, Target::Enum, scope, consts);
                        let variants = self.check_enum(f, e, scope, consts);
                        if is_first(&e.name) {
                            out.insert(e.name.name.clone(), Resolved::Enum(variants));
                        }
                    }
                    Item::Const(c) => {
                        self.check_attrs(f, &c.outer, Target::Const, scope, consts);
                        // The const's own type: bounds inside it were
                        // checked with its value; other shapes got E0035.
                    }
                    _ => {}
                }
            }
        }
        out
    }

    fn check_enum(
        &mut self,
        f: usize,
        e: &ast::Enum,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
    ) -> Option<Vec<model::Variant>> {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        let mut discs: HashMap<u32, (String, Span)> = HashMap::new();
        let mut variants = Some(Vec::new());
        // The next implicit discriminant; `None` after an error or past u32::MAX.
        let mut next: Option<i128> = Some(0);
        for v in &e.variants {
            self.check_attrs(f, &v.outer, Target::Variant, scope, consts);
            self.check_unique(
                f,
                &mut seen,
                &v.name,
                Code::DuplicateVariant,
                &format!("enum `{}` has two variants named", e.name.name),
            );
            let (value, span) = match &v.discriminant {
                Some(lit) => (self.int_value(f, lit), lit.span.clone()),
                None => (next, v.name.span.clone()),
            };
            let disc = match value {
                Some(d) if (0..=i128::from(u32::MAX)).contains(&d) => u32::try_from(d).ok(),
                Some(d) => {
                    self.err_help(
                        f,
                        Code::DiscriminantOutOfRange,
                        span.clone(),
                        format!(
                            "the discriminant of `{}` is {d}, outside 0..={}",
                            v.name.name,
                            u32::MAX
                        ),
                        "out of range",
                        "discriminants are `u32` on the wire",
                    );
                    None
                }
                None => None,
            };
            next = disc.map(|d| i128::from(d) + 1);
            if let Some(d) = disc {
                if let Some((first_name, first_span)) = discs.get(&d) {
                    let (first_name, first_span) = (first_name.clone(), first_span.clone());
                    let path = self.files[f].path.clone();
                    self.err(
                        f,
                        Code::DuplicateDiscriminant,
                        span,
                        format!(
                            "`{}` and `{first_name}` of enum `{}` both have discriminant {d}",
                            v.name.name, e.name.name
                        ),
                        format!("discriminant {d}"),
                    )
                    .labels
                    .push(crate::diag::Label {
                        file: path,
                        span: first_span,
                        message: format!("`{first_name}` has it already"),
                    });
                } else {
                    discs.insert(d, (v.name.name.clone(), span));
                }
            }
            let payload = match &v.payload {
                Some(t) => self.resolve(f, t, Pos::Other, scope, consts).map(Some),
                None => Some(None),
            };
            match (payload, disc, &mut variants) {
                (Some(payload), Some(discriminant), Some(vs)) => vs.push(model::Variant {
                    name: v.name.name.clone(),
                    docs: v.outer.docs.clone(),
                    discriminant,
                    payload,
                }),
                _ => variants = None,
            }
        }
        variants
    }

    /// Records in `seen` where `name` is first defined among its siblings;
    /// reports a second definition (`what`, then the name) with a label on
    /// the first.
    fn check_unique<'a>(
        &mut self,
        f: usize,
        seen: &mut HashMap<&'a str, Span>,
        name: &'a Ident,
        code: Code,
        what: &str,
    ) {
        let first = match seen.entry(&name.name) {
            Entry::Occupied(first) => first.get().clone(),
            Entry::Vacant(v) => {
                v.insert(name.span.clone());
                return;
            }
        };
        let path = self.files[f].path.clone();
        self.err(
            f,
            code,
            name.span.clone(),
            format!("{what} `{}`", name.name),
            "defined again here",
        )
        .labels
        .push(crate::diag::Label {
            file: path,
            span: first,
            message: "first defined here".into(),
        });
    }

    /// Infinite types (E0016), then the largest encoding of every type.
    fn type_sizes(
        &mut self,
        scope: &Scope,
        types: &HashMap<String, Resolved>,
        order: &[usize],
    ) -> HashMap<String, Max> {
        // Stable order: the declaration order over files.
        let mut names: Vec<String> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for &f in order {
            let Some(ast) = &self.files[f].ast else {
                continue;
            };
            for item in &ast.items {
                if let Item::Struct(ast::Struct { name, .. }) | Item::Enum(ast::Enum { name, .. }) =
                    item
                    && types.contains_key(&name.name)
                    && seen.insert(name.name.as_str())
                {
                    names.push(name.name.clone());
                }
            }
        }
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut direct: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
        let mut all: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
        for (i, n) in names.iter().enumerate() {
            let mut refs = Vec::new();
            match types.get(n) {
                Some(Resolved::Struct(Some(fields))) => {
                    for fl in fields {
                        named_refs(&fl.ty, true, &mut refs);
                    }
                }
                Some(Resolved::Enum(Some(vs))) => {
                    for v in vs {
                        if let Some(p) = &v.payload {
                            named_refs(p, true, &mut refs);
                        }
                    }
                }
                _ => {}
            }
            for (name, is_direct) in refs {
                if let Some(&j) = index.get(name.as_str()) {
                    all[i].push(j);
                    if is_direct {
                        direct[i].push(j);
                    }
                }
            }
        }

        // Cycles of direct containment: what topological order leaves over.
        let left = leftover(&direct);
        let mut reported = vec![false; names.len()];
        for start in 0..names.len() {
            if !left[start] || reported[start] {
                continue;
            }
            // Walk leftover edges until a node repeats: that is a cycle.
            let mut path = vec![start];
            let mut pos_in_path: HashMap<usize, usize> = HashMap::from([(start, 0)]);
            let mut cur = start;
            let cycle = loop {
                let Some(&nx) = direct[cur].iter().find(|&&j| left[j]) else {
                    break None;
                };
                if let Some(&p) = pos_in_path.get(&nx) {
                    break Some(path[p..].to_vec());
                }
                pos_in_path.insert(nx, path.len());
                path.push(nx);
                cur = nx;
            };
            let Some(cycle) = cycle else { continue };
            if cycle.iter().any(|&c| reported[c]) {
                continue;
            }
            for &c in &cycle {
                reported[c] = true;
            }
            let mut chain: Vec<&str> = cycle.iter().map(|&c| names[c].as_str()).collect();
            chain.push(names[cycle[0]].as_str());
            let chain = chain.join("` -> `");
            let head = &names[cycle[0]];
            if let Some(decl) = scope.types.get(head) {
                let span = decl_name(self, *decl)
                    .map(|n| n.span.clone())
                    .unwrap_or_default();
                self.err_help(
                    decl.file,
                    Code::InfiniteType,
                    span,
                    format!("type `{head}` contains itself and has infinite size: `{chain}`"),
                    "recursive without indirection",
                    "break the cycle with `option<...>` or `vec<...>` around one of these fields",
                );
            }
        }

        // Largest encodings, dependencies first; whatever sits on or behind
        // a cycle (through option/vec too) has no maximum.
        let mut sizes: HashMap<String, Max> = HashMap::new();
        let order = topo(&all);
        let mut done = vec![false; names.len()];
        for i in order {
            done[i] = true;
            let m = match types.get(&names[i]) {
                Some(Resolved::Struct(Some(fields))) => {
                    fields.iter().fold(Max::Bytes(0), |acc, fl| {
                        sizes::add(acc, type_max(&fl.ty, &sizes))
                    })
                }
                Some(Resolved::Enum(Some(vs))) => {
                    let payload = vs.iter().fold(Max::Bytes(0), |acc, v| {
                        sizes::max(
                            acc,
                            v.payload
                                .as_ref()
                                .map_or(Max::Bytes(0), |p| type_max(p, &sizes)),
                        )
                    });
                    sizes::plus(payload, 4)
                }
                _ => Max::Unbounded,
            };
            let m = if m == Max::Overflow {
                if let Some(decl) = scope.types.get(&names[i]) {
                    let span = decl_name(self, *decl)
                        .map(|n| n.span.clone())
                        .unwrap_or_default();
                    self.err_help(
                        decl.file,
                        Code::SizeOverflow,
                        span,
                        format!(
                            "the largest encoding of `{}` does not fit in 64 bits",
                            names[i]
                        ),
                        "too large",
                        "lower the bounds inside it",
                    );
                }
                // Reported once here; users of the type see it as unbounded.
                Max::Unbounded
            } else {
                m
            };
            sizes.insert(names[i].clone(), m);
        }
        for (i, n) in names.iter().enumerate() {
            if !done[i] {
                sizes.insert(n.clone(), Max::Unbounded);
            }
        }
        sizes
    }

    // ------------------------------------------------------------ attributes

    fn check_attrs(
        &mut self,
        f: usize,
        outer: &ast::Outer,
        target: Target,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
    ) -> Attrs {
        let mut attrs = Attrs::default();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for a in &outer.attributes {
            let name = a.name.name.as_str();
            if !KNOWN_ATTRS.contains(&name) {
                let d = self.err(
                    f,
                    Code::UnknownAttribute,
                    a.span.clone(),
                    format!("unknown attribute `@{name}`"),
                    "not an IDL attribute",
                );
                d.help = Some(match suggest(name, KNOWN_ATTRS.iter().copied()) {
                    Some(s) => format!("did you mean `@{s}`?"),
                    None => format!(
                        "the attributes are {}",
                        KNOWN_ATTRS
                            .iter()
                            .map(|a| format!("`@{a}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
                continue;
            }
            if let Some(first) = seen.get(name) {
                let first = first.clone();
                let path = self.files[f].path.clone();
                self.err(
                    f,
                    Code::DuplicateAttribute,
                    a.span.clone(),
                    format!("`@{name}` is given twice"),
                    "again here",
                )
                .labels
                .push(crate::diag::Label {
                    file: path,
                    span: first,
                    message: "first given here".into(),
                });
                continue;
            }
            seen.insert(name, a.span.clone());
            if let Some(place) = attr_allowed(name, target) {
                if name == "async" && target == Target::TwoWayFn {
                    self.err_help(
                        f,
                        Code::AsyncWithReturn,
                        a.span.clone(),
                        "`@async` on a fn that returns a value",
                        "a fn with `-> T` is two-way",
                        "remove `@async`, or remove the return type to make the fn one-way",
                    );
                    continue;
                }
                let d = self.err(
                    f,
                    Code::MisplacedAttribute,
                    a.span.clone(),
                    format!("`@{name}` cannot stand on {}", target.describe()),
                    format!("only on {place}"),
                );
                if name == "timeout" && target == Target::OneWayFn {
                    d.help = Some(
                        "a one-way fn gets no reply to wait for: add `@sync` or a return type"
                            .into(),
                    );
                }
                continue;
            }
            match name {
                "sync" | "async" | "no_queue" | "ordered" | "one_shot" | "idempotent" => {
                    if let Some(args) = &a.args
                        && !args.is_empty()
                    {
                        self.err_help(
                            f,
                            Code::BadAttributeArgument,
                            a.span.clone(),
                            format!("`@{name}` takes no arguments"),
                            "unexpected arguments",
                            format!("write `@{name}`"),
                        );
                        continue;
                    }
                    let span = a.span.clone();
                    match name {
                        "sync" => attrs.sync = Some(span),
                        "async" => attrs.is_async = Some(span),
                        "no_queue" => attrs.no_queue = Some(span),
                        _ => {
                            let kind = match name {
                                "ordered" => Delivery::Ordered,
                                "one_shot" => Delivery::OneShot,
                                _ => Delivery::Idempotent,
                            };
                            if let Some((_, first)) = &attrs.delivery {
                                let first = first.clone();
                                let path = self.files[f].path.clone();
                                let message = "a fn has one delivery kind: \
                                               `@ordered`, `@one_shot` or `@idempotent`";
                                self.err(
                                    f,
                                    Code::ConflictingAttributes,
                                    span,
                                    message,
                                    "second delivery kind",
                                )
                                .labels
                                .push(crate::diag::Label {
                                    file: path,
                                    span: first,
                                    message: "first delivery kind".into(),
                                });
                            } else {
                                attrs.delivery = Some((kind, span));
                            }
                        }
                    }
                }
                _ => {
                    let Some(v) = self.attr_int(f, a, scope, consts) else {
                        continue;
                    };
                    let arg_span = a
                        .args
                        .as_ref()
                        .and_then(|x| x.first())
                        .map_or(a.span.clone(), AttrArg::span);
                    let positive = |cx: &mut Cx, what: &str, max: u128| -> Option<u64> {
                        if v < 1 || v as u128 > max {
                            cx.err(
                                f,
                                Code::BadAttributeArgument,
                                arg_span.clone(),
                                format!("`@{name}` needs {what} from 1 to {max}, not {v}"),
                                "out of range",
                            );
                            return None;
                        }
                        u64::try_from(v).ok()
                    };
                    match name {
                        "version" | "since" => {
                            if v == 0 {
                                self.err_help(
                                    f,
                                    Code::ZeroVersion,
                                    arg_span.clone(),
                                    format!("`@{name}(0)`: versions start at 1"),
                                    "version 0",
                                    format!("write `@{name}(1)` or more"),
                                );
                                continue;
                            }
                            let Some(n) = positive(self, "a version", u32::MAX.into()) else {
                                continue;
                            };
                            let n = u32::try_from(n).unwrap_or(u32::MAX);
                            if name == "version" {
                                attrs.version = Some(n);
                            } else {
                                attrs.since = Some((n, arg_span));
                            }
                        }
                        "buffer" => {
                            attrs.buffer = positive(self, "a size in bytes", u64::MAX.into())
                        }
                        "queue" => {
                            attrs.queue = positive(self, "a message count", u32::MAX.into())
                                .and_then(|n| u32::try_from(n).ok())
                                .map(|n| (n, a.span.clone()))
                        }
                        "timeout" => {
                            attrs.timeout = positive(self, "milliseconds", u64::MAX.into())
                        }
                        "id" => {
                            if v < 0 || v > i128::from(u32::MAX) {
                                self.err(
                                    f,
                                    Code::BadAttributeArgument,
                                    arg_span,
                                    format!("`@id` needs an id from 0 to {}, not {v}", u32::MAX),
                                    "out of range",
                                );
                                continue;
                            }
                            attrs.id = u32::try_from(v).ok();
                        }
                        _ => {}
                    }
                }
            }
        }
        if let (Some(_), Some(s)) = (&attrs.sync, &attrs.is_async) {
            let s = s.clone();
            self.err_help(
                f,
                Code::ConflictingAttributes,
                s,
                "`@sync` and `@async` contradict each other",
                "conflicts with `@sync`",
                "keep `@sync` to wait for completion, or `@async` to return once queued",
            );
        }
        if let (Some(_), Some(s)) = (&attrs.queue, &attrs.no_queue) {
            let s = s.clone();
            let message = "`@queue` and `@no_queue` contradict each other";
            let help = "`@no_queue` drops the message when the ring is full; \
                        `@queue(N)` sizes the ring to hold N";
            self.err_help(
                f,
                Code::ConflictingAttributes,
                s,
                message,
                "conflicts with `@queue`",
                help,
            );
        }
        if attrs.sync.is_some() {
            let span = attrs
                .queue
                .as_ref()
                .map(|q| q.1.clone())
                .or_else(|| attrs.no_queue.clone());
            if let Some(span) = span {
                let message = "`@queue` and `@no_queue` do not apply to a `@sync` fn, \
                               which waits for its completion";
                self.err(
                    f,
                    Code::ConflictingAttributes,
                    span,
                    message,
                    "conflicts with `@sync`",
                );
            }
        }
        attrs
    }

    /// The single integer argument of `@name(N)`.
    fn attr_int(
        &mut self,
        f: usize,
        a: &Attribute,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
    ) -> Option<i128> {
        let name = &a.name.name;
        let what = if name == "buffer" {
            "a size"
        } else {
            "an integer"
        };
        match a.args.as_deref() {
            Some([AttrArg::Int(lit)]) => {
                self.int_or_const(f, &Bound::Int(lit.clone()), scope, consts)
            }
            Some([AttrArg::Ident(id)]) => {
                self.int_or_const(f, &Bound::Const(id.clone()), scope, consts)
            }
            Some([other]) => {
                self.err(
                    f,
                    Code::BadAttributeArgument,
                    other.span(),
                    format!("`@{name}` needs {what}"),
                    "not an integer",
                );
                None
            }
            _ => {
                self.err_help(
                    f,
                    Code::BadAttributeArgument,
                    a.span.clone(),
                    format!("`@{name}` needs exactly one argument, {what}"),
                    "wrong number of arguments",
                    format!("write `@{name}(N)`"),
                );
                None
            }
        }
    }

    // ------------------------------------------------------------ protocols

    fn check_protocol(
        &mut self,
        f: usize,
        p: &ast::Protocol,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
        type_sizes: &HashMap<String, Max>,
    ) -> Option<model::Protocol> {
        let name_len = p.name.name.len();
        if name_len > shm_layout::PROTOCOL_NAME_MAX {
            self.err_help(
                f,
                Code::ProtocolNameTooLong,
                p.name.span.clone(),
                format!(
                    "the protocol name is {name_len} bytes long; the ring header stores at most {}",
                    shm_layout::PROTOCOL_NAME_MAX
                ),
                "too long",
                "choose a shorter name",
            );
        }
        let pattrs = self.check_attrs(f, &p.outer, Target::Protocol, scope, consts);
        let version = pattrs.version.unwrap_or(1);

        let mut ok = true;
        let mut names: HashMap<&str, Span> = HashMap::new();
        let mut ids: HashMap<u32, (String, Span)> = HashMap::new();
        let mut next_id: u64 = 0;
        let mut methods = Vec::new();
        let mut events = Vec::new();
        for m in &p.members {
            self.check_unique(
                f,
                &mut names,
                &m.name,
                Code::DuplicateMember,
                &format!("protocol `{}` has two members named", p.name.name),
            );
            let target = match (m.kind, &m.returns) {
                (MemberKind::Event, _) => Target::Event,
                (MemberKind::Fn, Some(_)) => Target::TwoWayFn,
                (MemberKind::Fn, None)
                    if m.outer.attributes.iter().any(|a| a.name.name == "sync") =>
                {
                    // `@sync` itself is checked as on a one-way fn; every
                    // other attribute sees a two-way fn.
                    Target::TwoWayFn
                }
                (MemberKind::Fn, None) => Target::OneWayFn,
            };
            let attrs = if target == Target::TwoWayFn && m.returns.is_none() {
                self.check_sync_fn_attrs(f, &m.outer, scope, consts)
            } else {
                self.check_attrs(f, &m.outer, target, scope, consts)
            };

            // Message id: pinned, or the previous one plus one.
            let id = match attrs.id {
                Some(pinned) => Some(pinned),
                None => u32::try_from(next_id).ok(),
            };
            match id {
                Some(id) => {
                    next_id = u64::from(id) + 1;
                    if let Some((first, first_span)) = ids.get(&id) {
                        let (first, first_span) = (first.clone(), first_span.clone());
                        let path = self.files[f].path.clone();
                        let pinned =
                            attr_span(&m.outer, "id").unwrap_or_else(|| m.name.span.clone());
                        self.err_help(
                            f,
                            Code::DuplicateMessageId,
                            pinned,
                            format!("`{}` and `{first}` both have message id {id}", m.name.name),
                            format!("message id {id}"),
                            "give one of them a free id with `@id(N)`",
                        );
                        if let Some((_, d)) = self.diags.last_mut() {
                            d.labels.push(crate::diag::Label {
                                file: path,
                                span: first_span,
                                message: format!("`{first}` has id {id}"),
                            });
                        }
                    } else {
                        ids.insert(id, (m.name.name.clone(), m.name.span.clone()));
                    }
                }
                None => {
                    self.err_help(
                        f,
                        Code::BadAttributeArgument,
                        m.name.span.clone(),
                        format!(
                            "the message id of `{}` would be {next_id}, past {}",
                            m.name.name,
                            u32::MAX
                        ),
                        "no id left",
                        "pin it with a lower `@id(N)`",
                    );
                    ok = false;
                }
            }
            if let Some((since, span)) = &attrs.since
                && *since > version
            {
                let message = format!(
                    "`{}` is since version {since}, but protocol `{}` is at version {version}",
                    m.name.name, p.name.name
                );
                self.err_help(
                    f,
                    Code::SinceAfterVersion,
                    span.clone(),
                    message,
                    "newer than the protocol",
                    format!("raise the protocol to `@version({since})`, or lower `@since`"),
                );
            }

            let mut pnames: HashMap<&str, Span> = HashMap::new();
            let mut params = Vec::new();
            let mut objects = Vec::new();
            for prm in &m.params {
                self.check_unique(
                    f,
                    &mut pnames,
                    &prm.name,
                    Code::DuplicateParam,
                    &format!("`{}` has two parameters named", m.name.name),
                );
                match self.resolve(f, &prm.ty, Pos::Other, scope, consts) {
                    Some(ty) => {
                        objects.push(type_max(&ty, type_sizes));
                        params.push(model::Param {
                            name: prm.name.name.clone(),
                            ty,
                        });
                    }
                    None => ok = false,
                }
            }
            let record = sizes::record(objects);
            if record == Max::Overflow {
                self.err_help(
                    f,
                    Code::SizeOverflow,
                    m.name.span.clone(),
                    format!(
                        "the largest message of `{}` does not fit in 64 bits",
                        m.name.name
                    ),
                    "too large",
                    "lower the bounds of its parameters",
                );
                ok = false;
            }

            match m.kind {
                MemberKind::Event => {
                    if let Some(r) = &m.returns {
                        let message = format!("event `{}` has a return type", m.name.name);
                        let help = "events go from server to client and nobody answers them: \
                                    remove `-> T`";
                        self.err_help(
                            f,
                            Code::EventWithReturn,
                            r.span.clone(),
                            message,
                            "events have no reply",
                            help,
                        );
                        ok = false;
                    }
                    events.push(model::Event {
                        name: m.name.name.clone(),
                        docs: m.outer.docs.clone(),
                        id: id.unwrap_or(0),
                        queue: attrs.queue.map(|q| q.0),
                        no_queue: attrs.no_queue.is_some(),
                        since: attrs.since.map_or(1, |s| s.0),
                        params,
                        max: record.bytes(),
                    });
                }
                MemberKind::Fn => {
                    let returns = match &m.returns {
                        Some(t) => match self.resolve(f, t, Pos::Return, scope, consts) {
                            Some(t) => Some(t),
                            None => {
                                ok = false;
                                None
                            }
                        },
                        None => None,
                    };
                    let sync = attrs.sync.is_some() && m.returns.is_none();
                    let reply = match (&returns, sync) {
                        (Some(t), _) => Some(sizes::record([type_max(t, type_sizes)])),
                        (None, true) => Some(sizes::record([])),
                        (None, false) => None,
                    };
                    if reply == Some(Max::Overflow) {
                        self.err(
                            f,
                            Code::SizeOverflow,
                            m.name.span.clone(),
                            format!(
                                "the largest reply of `{}` does not fit in 64 bits",
                                m.name.name
                            ),
                            "too large",
                        );
                        ok = false;
                    }
                    methods.push((
                        model::Method {
                            name: m.name.name.clone(),
                            docs: m.outer.docs.clone(),
                            id: id.unwrap_or(0),
                            kind: if reply.is_some() {
                                Kind::TwoWay
                            } else {
                                Kind::OneWay
                            },
                            sync,
                            is_async: attrs.is_async.is_some(),
                            queue: attrs.queue.map(|q| q.0),
                            no_queue: attrs.no_queue.is_some(),
                            timeout_ms: attrs.timeout,
                            since: attrs.since.map_or(1, |s| s.0),
                            delivery: attrs.delivery.map_or(Delivery::Default, |d| d.0),
                            params,
                            returns,
                            request_max: record.bytes(),
                            reply_max: reply.and_then(Max::bytes),
                        },
                        record,
                        reply,
                    ));
                }
            }
        }
        if !ok {
            return None;
        }
        let event_records: Vec<(&str, Max, u64)> = events
            .iter()
            .map(|e| {
                let objs = e.params.iter().map(|prm| type_max(&prm.ty, type_sizes));
                (
                    e.name.as_str(),
                    sizes::record(objs),
                    u64::from(e.queue.unwrap_or(1)),
                )
            })
            .collect();
        let traffic = Traffic {
            buffer: pattrs.buffer,
            requests: methods
                .iter()
                .map(|(m, rec, _)| (m.name.as_str(), *rec, u64::from(m.queue.unwrap_or(1))))
                .collect(),
            replies: methods
                .iter()
                .filter_map(|(m, _, reply)| reply.map(|r| (m.name.as_str(), r)))
                .collect(),
            events: event_records,
        };
        let ring_sizes = match sizes::ring_sizes(&traffic) {
            Ok(r) => r,
            Err(o) => {
                self.err_help(
                    f,
                    Code::SizeOverflow,
                    p.name.span.clone(),
                    format!(
                        "a ring of `{}` would exceed 64 bits (because of `{}`)",
                        p.name.name, o.culprit
                    ),
                    "too large",
                    "lower the bounds or `@queue` depths, or set `@buffer(SIZE)`",
                );
                return None;
            }
        };
        Some(model::Protocol {
            name: p.name.name.clone(),
            docs: p.outer.docs.clone(),
            version,
            buffer: pattrs.buffer,
            methods: methods.into_iter().map(|(m, _, _)| m).collect(),
            events,
            ring_sizes,
        })
    }

    /// A `@sync fn` without a return: `@sync` (and `@async`, `@queue`,
    /// `@no_queue`) are checked as on a one-way fn, everything else as on a
    /// two-way one.
    fn check_sync_fn_attrs(
        &mut self,
        f: usize,
        outer: &ast::Outer,
        scope: &Scope,
        consts: &HashMap<String, ConstInfo>,
    ) -> Attrs {
        let one_way = ["sync", "async", "queue", "no_queue"];
        let (a, b): (Vec<Attribute>, Vec<Attribute>) = outer
            .attributes
            .iter()
            .cloned()
            .partition(|a| one_way.contains(&a.name.name.as_str()));
        let before = self.diags.len();
        let mut x = self.check_attrs(
            f,
            &ast::Outer {
                docs: Vec::new(),
                attributes: a,
            },
            Target::OneWayFn,
            scope,
            consts,
        );
        let y = self.check_attrs(
            f,
            &ast::Outer {
                docs: Vec::new(),
                attributes: b,
            },
            Target::TwoWayFn,
            scope,
            consts,
        );
        x.timeout = y.timeout;
        x.since = y.since;
        x.id = y.id;
        x.delivery = y.delivery;
        // Keep diagnostics in source order across the two halves.
        self.diags[before..].sort_by_key(|(_, d)| d.span.start);
        x
    }
}

fn attr_span(outer: &ast::Outer, name: &str) -> Option<Span> {
    outer
        .attributes
        .iter()
        .find(|a| a.name.name == name)
        .map(|a| a.span.clone())
}

/// A struct's fields or an enum's variants; `None` when something in them
/// did not resolve.
enum Resolved {
    Struct(Option<Vec<model::Field>>),
    Enum(Option<Vec<model::Variant>>),
}

/// Named types inside `t`, each with whether it is contained directly
/// (not behind `option` or `vec`).
fn named_refs(t: &Type, direct: bool, out: &mut Vec<(String, bool)>) {
    match t {
        Type::Named(n) => out.push((n.clone(), direct)),
        Type::Array(inner, _) => named_refs(inner, direct, out),
        Type::Vec(inner, _) | Type::Option(inner) => named_refs(inner, false, out),
        Type::Result(a, b) => {
            named_refs(a, direct, out);
            named_refs(b, direct, out);
        }
        Type::Scalar(_) | Type::String(_) | Type::Bytes(_) | Type::Unit => {}
    }
}

/// The largest encoding of a resolved type (see the `sizes` module docs).
pub(crate) fn type_max(t: &Type, named: &HashMap<String, Max>) -> Max {
    match t {
        Type::Scalar(s) => Max::Bytes(s.size()),
        Type::String(n) | Type::Bytes(n) => {
            n.map_or(Max::Unbounded, |n| sizes::repeat(4, n, Max::Bytes(1)))
        }
        Type::Array(inner, n) => sizes::repeat(0, *n, type_max(inner, named)),
        Type::Vec(inner, n) => n.map_or(Max::Unbounded, |n| {
            sizes::repeat(4, n, type_max(inner, named))
        }),
        Type::Option(inner) => sizes::plus(type_max(inner, named), 1),
        Type::Result(a, b) => sizes::plus(sizes::max(type_max(a, named), type_max(b, named)), 1),
        Type::Unit => Max::Bytes(0),
        Type::Named(n) => named.get(n).copied().unwrap_or(Max::Unbounded),
    }
}

/// Kahn's algorithm over `edges[i]` = what `i` needs first: an order where
/// each node comes after what it needs; nodes on or behind a cycle are left
/// out.
fn topo(edges: &[Vec<usize>]) -> Vec<usize> {
    let n = edges.len();
    let mut needs: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, es) in edges.iter().enumerate() {
        for &j in es {
            users[j].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| needs[i] == 0).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        out.push(i);
        for &u in &users[i] {
            needs[u] -= 1;
            if needs[u] == 0 {
                ready.push(u);
            }
        }
    }
    out
}

/// Which nodes [`topo`] leaves out.
fn leftover(edges: &[Vec<usize>]) -> Vec<bool> {
    let mut left = vec![true; edges.len()];
    for i in topo(edges) {
        left[i] = false;
    }
    left
}

/// Names a file can see: types (with the builtin ones) or consts.
fn visible_names(scope: &Scope, f: usize, kind: NameKind) -> Vec<String> {
    let mut v: Vec<String> = scope
        .names(kind)
        .iter()
        .filter(|(_, d)| scope.visible[f].contains(&d.file))
        .map(|(n, _)| n.clone())
        .collect();
    if let NameKind::Type = kind {
        v.extend(BUILTIN_TYPES.iter().map(|s| (*s).to_string()));
    }
    v.sort();
    v
}

/// The closest candidate within a third of the name's length (at least 1)
/// in edit distance, ignoring case; ties go to the alphabetically first.
fn suggest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        // Case is the most common slip (`rect` for `Rect`): it costs nothing.
        let d = edit_distance(&name.to_ascii_lowercase(), &c.to_ascii_lowercase());
        if d <= limit && best.is_none_or(|(bd, bc)| d < bd || (d == bd && c < bc)) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("Rect", "Rekt"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(suggest("Rec", ["Rect", "Point"].into_iter()), Some("Rect"));
        assert_eq!(suggest("Zzz", ["Rect", "Point"].into_iter()), None);
        assert_eq!(suggest("rect", ["Rect"].into_iter()), Some("Rect"));
    }

    #[test]
    fn topo_leaves_cycles_out() {
        // 0 -> 1 -> 2 -> 1, 3 alone
        let left = leftover(&[vec![1], vec![2], vec![1], vec![]]);
        assert_eq!(left, vec![true, true, true, false]);
    }
}
