//! The syntax tree of one `.idl` file, with byte spans into its source.
//!
//! Nothing here is checked yet: names may be unknown, attributes misplaced.
//! The checker turns a set of these into a [`crate::model::Model`].

use std::ops::Range;
use std::path::PathBuf;

/// A byte range in the file's source.
pub type Span = Range<usize>;

/// A name with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it stands.
    pub span: Span,
}

/// One parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// The path it was read from (as given, not canonicalised).
    pub path: PathBuf,
    /// The items, in source order.
    pub items: Vec<Item>,
}

/// A top-level declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `import "path";`
    Import(Import),
    /// `struct Name { ... }`
    Struct(Struct),
    /// `enum Name { ... }`
    Enum(Enum),
    /// `const NAME: T = value;`
    Const(Const),
    /// `protocol Name { ... }`
    Protocol(Protocol),
}

/// Doc comments and attributes written before a declaration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outer {
    /// `///` lines, without the `///` (one leading space removed).
    pub docs: Vec<String>,
    /// `@name(args)`, in source order.
    pub attributes: Vec<Attribute>,
}

/// `@name` or `@name(arg, ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The name without `@`.
    pub name: Ident,
    /// The arguments; `None` when there are no parentheses.
    pub args: Option<Vec<AttrArg>>,
    /// The whole attribute.
    pub span: Span,
}

/// One attribute argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrArg {
    /// An integer literal.
    Int(IntLit),
    /// `true` / `false`.
    Bool(bool, Span),
    /// A string literal.
    Str(String, Span),
    /// A name (an integer const, for sizes).
    Ident(Ident),
}

impl AttrArg {
    /// Where the argument stands.
    pub fn span(&self) -> Span {
        match self {
            AttrArg::Int(i) => i.span.clone(),
            AttrArg::Bool(_, s) | AttrArg::Str(_, s) => s.clone(),
            AttrArg::Ident(i) => i.span.clone(),
        }
    }
}

/// A size unit after an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `B`: 1.
    B,
    /// `KiB`: 1024.
    KiB,
    /// `MiB`: 1024².
    MiB,
    /// `GiB`: 1024³.
    GiB,
}

impl Unit {
    /// How many bytes one unit is.
    pub fn factor(self) -> i128 {
        match self {
            Unit::B => 1,
            Unit::KiB => 1 << 10,
            Unit::MiB => 1 << 20,
            Unit::GiB => 1 << 30,
        }
    }
}

/// An integer literal, with its unit applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntLit {
    /// The value (unit applied); `None` when it does not fit in 64 bits.
    pub value: Option<i128>,
    /// The unit written, if any.
    pub unit: Option<Unit>,
    /// The whole literal, unit included.
    pub span: Span,
}

/// `import "path";`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Docs and attributes (attributes are an error here).
    pub outer: Outer,
    /// The path as written.
    pub path: String,
    /// The string literal.
    pub path_span: Span,
}

/// `struct Name { field: T, ... }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Struct {
    /// Docs and attributes.
    pub outer: Outer,
    /// The name.
    pub name: Ident,
    /// The fields, in order.
    pub fields: Vec<Field>,
}

/// `name: T` in a struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Docs and attributes.
    pub outer: Outer,
    /// The name.
    pub name: Ident,
    /// The type.
    pub ty: Type,
}

/// `enum Name { A, B = 5, C(T) }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enum {
    /// Docs and attributes.
    pub outer: Outer,
    /// The name.
    pub name: Ident,
    /// The variants, in order.
    pub variants: Vec<Variant>,
}

/// One enum variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Docs and attributes.
    pub outer: Outer,
    /// The name.
    pub name: Ident,
    /// `(T)`, for a variant carrying a value.
    pub payload: Option<Type>,
    /// `= N`.
    pub discriminant: Option<IntLit>,
}

/// `const NAME: T = value;`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Const {
    /// Docs and attributes.
    pub outer: Outer,
    /// The name.
    pub name: Ident,
    /// The declared type.
    pub ty: Type,
    /// The value.
    pub value: Literal,
}

/// A const's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// An integer (unit applied).
    Int(IntLit),
    /// `true` / `false`.
    Bool(bool, Span),
    /// A string, escapes resolved.
    Str(String, Span),
}

impl Literal {
    /// Where the literal stands.
    pub fn span(&self) -> Span {
        match self {
            Literal::Int(i) => i.span.clone(),
            Literal::Bool(_, s) | Literal::Str(_, s) => s.clone(),
        }
    }
}

/// `protocol Name { ... }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Docs and attributes.
    pub outer: Outer,
    /// The name.
    pub name: Ident,
    /// `fn`s and `event`s, in declaration order.
    pub members: Vec<Member>,
}

/// Whether a member is a `fn` or an `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// `fn`: client to server.
    Fn,
    /// `event`: server to client.
    Event,
}

/// `fn name(params) -> T;` or `event name(params);`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `fn` or `event`.
    pub kind: MemberKind,
    /// Docs and attributes.
    pub outer: Outer,
    /// The name.
    pub name: Ident,
    /// The parameters, in order.
    pub params: Vec<Param>,
    /// `-> T` (an error on an event).
    pub returns: Option<Type>,
    /// The whole declaration.
    pub span: Span,
}

/// `name: T` in a parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name.
    pub name: Ident,
    /// The type.
    pub ty: Type,
}

/// A scalar type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// `bool`
    Bool,
    /// `u8`
    U8,
    /// `u16`
    U16,
    /// `u32`
    U32,
    /// `u64`
    U64,
    /// `i8`
    I8,
    /// `i16`
    I16,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `f32`
    F32,
    /// `f64`
    F64,
}

impl Scalar {
    /// Parses the IDL spelling.
    pub fn from_name(s: &str) -> Option<Scalar> {
        Some(match s {
            "bool" => Scalar::Bool,
            "u8" => Scalar::U8,
            "u16" => Scalar::U16,
            "u32" => Scalar::U32,
            "u64" => Scalar::U64,
            "i8" => Scalar::I8,
            "i16" => Scalar::I16,
            "i32" => Scalar::I32,
            "i64" => Scalar::I64,
            "f32" => Scalar::F32,
            "f64" => Scalar::F64,
            _ => return None,
        })
    }

    /// The IDL spelling.
    pub fn name(self) -> &'static str {
        match self {
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

    /// Bytes in the encoding (compact little-endian).
    pub fn size(self) -> u64 {
        match self {
            Scalar::Bool | Scalar::U8 | Scalar::I8 => 1,
            Scalar::U16 | Scalar::I16 => 2,
            Scalar::U32 | Scalar::I32 | Scalar::F32 => 4,
            Scalar::U64 | Scalar::I64 | Scalar::F64 => 8,
        }
    }

    /// The range of an integer scalar; `None` for `bool` and floats.
    pub fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Scalar::U8 => (0, u8::MAX.into()),
            Scalar::U16 => (0, u16::MAX.into()),
            Scalar::U32 => (0, u32::MAX.into()),
            Scalar::U64 => (0, u64::MAX.into()),
            Scalar::I8 => (i8::MIN.into(), i8::MAX.into()),
            Scalar::I16 => (i16::MIN.into(), i16::MAX.into()),
            Scalar::I32 => (i32::MIN.into(), i32::MAX.into()),
            Scalar::I64 => (i64::MIN.into(), i64::MAX.into()),
            Scalar::Bool | Scalar::F32 | Scalar::F64 => return None,
        })
    }
}

/// A bound or size: a literal or an integer const's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// `16 MiB`
    Int(IntLit),
    /// `MAX_TITLE`
    Const(Ident),
}

impl Bound {
    /// Where the bound stands.
    pub fn span(&self) -> Span {
        match self {
            Bound::Int(i) => i.span.clone(),
            Bound::Const(c) => c.span.clone(),
        }
    }
}

/// A type as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// What kind of type.
    pub kind: TypeKind,
    /// The whole type expression.
    pub span: Span,
}

/// The shapes a type can have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// `bool`, `u8`, ...
    Scalar(Scalar),
    /// `string<N>` / `string`
    String(Option<Bound>),
    /// `bytes<N>` / `bytes`
    Bytes(Option<Bound>),
    /// `[T; N]`
    Array(Box<Type>, Bound),
    /// `vec<T, N>` / `vec<T>`
    Vec(Box<Type>, Option<Bound>),
    /// `option<T>`
    Option(Box<Type>),
    /// `result<T, E>`
    Result(Box<Type>, Box<Type>),
    /// `()`
    Unit,
    /// A struct or enum name.
    Named(Ident),
}
