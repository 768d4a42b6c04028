//! The checked model: what the code generator consumes.
//!
//! No spans, no unresolved names: every bound is a number, every named type
//! points at a definition in [`Model::types`], every const is evaluated, every
//! attribute is turned into what it means.

use std::path::PathBuf;

pub use crate::ast::Scalar;
use crate::sizes::RingSizes;

/// Everything an IDL file (with its imports) declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Every file read, the checked file first, then its imports.
    pub files: Vec<PathBuf>,
    /// The protocols of the checked file (not of its imports), in order.
    pub protocols: Vec<Protocol>,
    /// Every struct and enum of the checked file and of the files it imports
    /// (directly or not): the types its protocols may need. Imports first.
    pub types: Vec<TypeDef>,
    /// Every const, in the same order as `types`.
    pub consts: Vec<Const>,
}

impl Model {
    /// The definition of a named type.
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.types.iter().find(|t| t.name() == name)
    }
}

/// A type as the generator sees it: bounds resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Type {
    /// `bool`, integers and floats.
    Scalar(Scalar),
    /// `string<N>` (`Some(N)`) or `string` (`None`).
    String(Option<u64>),
    /// `bytes<N>` or `bytes`.
    Bytes(Option<u64>),
    /// `[T; N]`.
    Array(Box<Type>, u64),
    /// `vec<T, N>` or `vec<T>`.
    Vec(Box<Type>, Option<u64>),
    /// `option<T>`.
    Option(Box<Type>),
    /// `result<T, E>` (return types only).
    Result(Box<Type>, Box<Type>),
    /// `()` (only as the `T` of a `result`).
    Unit,
    /// A struct or enum of [`Model::types`].
    Named(String),
}

/// A struct or an enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeDef {
    /// `struct`.
    Struct(Struct),
    /// `enum`.
    Enum(Enum),
}

impl TypeDef {
    /// The type's name.
    pub fn name(&self) -> &str {
        match self {
            TypeDef::Struct(s) => &s.name,
            TypeDef::Enum(e) => &e.name,
        }
    }

    /// Its doc comment lines.
    pub fn docs(&self) -> &[String] {
        match self {
            TypeDef::Struct(s) => &s.docs,
            TypeDef::Enum(e) => &e.docs,
        }
    }

    /// The largest encoding of a value, `None` when unbounded.
    pub fn max_size(&self) -> Option<u64> {
        match self {
            TypeDef::Struct(s) => s.max_size,
            TypeDef::Enum(e) => e.max_size,
        }
    }
}

/// `struct Name { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Struct {
    /// Name.
    pub name: String,
    /// Doc comment lines (without `///`).
    pub docs: Vec<String>,
    /// The file that defines it.
    pub file: PathBuf,
    /// Fields in order.
    pub fields: Vec<Field>,
    /// The largest encoding, `None` when unbounded.
    pub max_size: Option<u64>,
}

/// A struct field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Name.
    pub name: String,
    /// Doc comment lines.
    pub docs: Vec<String>,
    /// Type.
    pub ty: Type,
}

/// `enum Name { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enum {
    /// Name.
    pub name: String,
    /// Doc comment lines.
    pub docs: Vec<String>,
    /// The file that defines it.
    pub file: PathBuf,
    /// Variants in order.
    pub variants: Vec<Variant>,
    /// The largest encoding, `None` when unbounded.
    pub max_size: Option<u64>,
}

/// An enum variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Name.
    pub name: String,
    /// Doc comment lines.
    pub docs: Vec<String>,
    /// The discriminant on the wire: explicit, or the previous one plus one
    /// (0 for the first), as in Rust.
    pub discriminant: u32,
    /// The value it carries, if any.
    pub payload: Option<Type>,
}

/// `const NAME: T = value;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Const {
    /// Name.
    pub name: String,
    /// Doc comment lines.
    pub docs: Vec<String>,
    /// The declared type (an integer scalar, `bool`, or a string).
    pub ty: Type,
    /// The value.
    pub value: ConstValue,
}

/// A const's evaluated value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstValue {
    /// Any integer type (the value fits the declared type).
    Int(i128),
    /// `bool`.
    Bool(bool),
    /// `string`.
    Str(String),
}

/// `protocol Name { ... }`.
///
/// Message ids: the `fn`s and `event`s share one id space. In declaration
/// order, each gets the id after the previous one's (the first gets 0);
/// `@id(N)` pins one to `N`, and the ones after it continue from `N + 1`, as
/// Rust enum discriminants do. Two members with the same id are an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Name (at most 64 bytes: the ring header stores it).
    pub name: String,
    /// Doc comment lines.
    pub docs: Vec<String>,
    /// `@version(N)`, default 1.
    pub version: u32,
    /// `@buffer(SIZE)` in bytes, if given.
    pub buffer: Option<u64>,
    /// The `fn`s, in declaration order.
    pub methods: Vec<Method>,
    /// The `event`s, in declaration order.
    pub events: Vec<Event>,
    /// Maximum size of each ring and what decided it.
    pub ring_sizes: RingSizes,
}

/// How a method waits for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No reply: the call returns once the request is in the ring.
    OneWay,
    /// The caller waits for a reply (a value, or an empty completion for
    /// `@sync`).
    TwoWay,
}

/// Delivery kinds, for network connectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// No attribute.
    Default,
    /// `@ordered`.
    Ordered,
    /// `@one_shot`.
    OneShot,
    /// `@idempotent`.
    Idempotent,
}

/// A `fn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// Name.
    pub name: String,
    /// Doc comment lines.
    pub docs: Vec<String>,
    /// Message id (see [`Protocol`] for the rule); requests and their
    /// replies carry it.
    pub id: u32,
    /// One-way or two-way.
    pub kind: Kind,
    /// `@sync`: a one-way shape made two-way with an empty completion reply.
    pub sync: bool,
    /// `@async` was written (the method is one-way either way).
    pub is_async: bool,
    /// `@queue(N)`.
    pub queue: Option<u32>,
    /// `@no_queue`: dropped and reported rather than waiting for room.
    pub no_queue: bool,
    /// `@timeout(ms)`.
    pub timeout_ms: Option<u64>,
    /// `@since(V)`, default 1.
    pub since: u32,
    /// Delivery kind.
    pub delivery: Delivery,
    /// Parameters, in order: object `i` of the request carries parameter `i`.
    pub params: Vec<Param>,
    /// The return type; `None` for one-way and for `@sync`.
    pub returns: Option<Type>,
    /// Largest record of the request in the ring (header, objects,
    /// padding); `None` when unbounded.
    pub request_max: Option<u64>,
    /// Largest record of the reply; `None` when unbounded or when there is
    /// no reply (see `kind`).
    pub reply_max: Option<u64>,
}

/// An `event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Name.
    pub name: String,
    /// Doc comment lines.
    pub docs: Vec<String>,
    /// Message id (see [`Protocol`]).
    pub id: u32,
    /// `@queue(N)`: how many may wait in the ring.
    pub queue: Option<u32>,
    /// `@no_queue`.
    pub no_queue: bool,
    /// `@since(V)`, default 1.
    pub since: u32,
    /// Parameters: object `i` carries parameter `i`.
    pub params: Vec<Param>,
    /// Largest record in the ring; `None` when unbounded.
    pub max: Option<u64>,
}

/// A parameter of a method or event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Name.
    pub name: String,
    /// Type.
    pub ty: Type,
}
