//! What the generator needs to know about every named type of the model.

use std::collections::{BTreeMap, BTreeSet};

use idl_parser::model::{Model, Scalar, Type, TypeDef};

/// What the generator needs to know about every named type, computed once
/// over the whole model (least fixed points, so recursion is handled).
pub(crate) struct Facts<'m> {
    pub(crate) model: &'m Model,
    /// Holds a `string`, `bytes` or `vec`: gets a view.
    pub(crate) borrowed: BTreeSet<String>,
    /// Holds an `f32` or `f64`: no `Eq`, no `Hash`.
    pub(crate) float: BTreeSet<String>,
    /// The owned type is not `Copy`.
    pub(crate) not_copy: BTreeSet<String>,
    /// The view is not `Copy`.
    pub(crate) view_not_copy: BTreeSet<String>,
    /// The owned type has no `Default`.
    pub(crate) not_default: BTreeSet<String>,
    /// Named types each type reaches, directly or not.
    pub(crate) reaches: BTreeMap<String, BTreeSet<String>>,
}

impl<'m> Facts<'m> {
    pub(crate) fn new(model: &'m Model) -> Self {
        let mut reaches = BTreeMap::new();
        for def in &model.types {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<String> = direct_names(def);
            while let Some(name) = stack.pop() {
                if seen.insert(name.clone())
                    && let Some(next) = model.type_def(&name)
                {
                    stack.extend(direct_names(next));
                }
            }
            reaches.insert(def.name().to_owned(), seen);
        }
        let mut facts = Facts {
            model,
            borrowed: BTreeSet::new(),
            float: BTreeSet::new(),
            not_copy: BTreeSet::new(),
            view_not_copy: BTreeSet::new(),
            not_default: BTreeSet::new(),
            reaches,
        };
        facts.borrowed = facts.fixed_point(|f, set, _, ty| {
            f.any(ty, &|t| match t {
                Type::String(_) | Type::Bytes(_) | Type::Vec(..) => true,
                Type::Named(n) => set.contains(n),
                _ => false,
            })
        });
        facts.float = facts.fixed_point(|f, set, _, ty| {
            f.any(ty, &|t| match t {
                Type::Scalar(Scalar::F32 | Scalar::F64) => true,
                Type::Named(n) => set.contains(n),
                _ => false,
            })
        });
        facts.not_copy = facts.fixed_point(|f, set, owner, ty| {
            f.boxes(owner, ty)
                || f.any(ty, &|t| match t {
                    Type::String(_) | Type::Bytes(_) | Type::Vec(..) => true,
                    Type::Named(n) => set.contains(n),
                    _ => false,
                })
        });
        facts.view_not_copy = facts.fixed_point(|f, set, owner, ty| {
            f.boxes(owner, ty)
                || f.any(ty, &|t| match t {
                    Type::Named(n) if f.borrowed.contains(n) => set.contains(n),
                    Type::Named(n) => f.not_copy.contains(n),
                    _ => false,
                })
        });
        // An enum has a `Default` when its first variant carries nothing; a
        // struct when every field has one.
        let enums: BTreeSet<String> = model
            .types
            .iter()
            .filter_map(|def| match def {
                TypeDef::Enum(e) if e.variants.first().is_none_or(|v| v.payload.is_some()) => {
                    Some(e.name.clone())
                }
                _ => None,
            })
            .collect();
        facts.not_default = facts.fixed_point(|f, set, _, ty| !f.has_default(ty, set, &enums));
        facts.not_default.extend(enums);
        facts
    }

    /// The least set of types for which `pred` holds of some field or
    /// payload; `pred` sees the set built so far, so recursion settles.
    pub(crate) fn fixed_point(
        &self,
        pred: impl Fn(&Self, &BTreeSet<String>, &str, &Type) -> bool,
    ) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        loop {
            let mut changed = false;
            for def in &self.model.types {
                let name = def.name();
                if !set.contains(name) && field_types(def).any(|ty| pred(self, &set, name, ty)) {
                    set.insert(name.to_owned());
                    changed = true;
                }
            }
            if !changed {
                return set;
            }
        }
    }

    /// Whether `pred` holds of `ty` or any type inside it.
    pub(crate) fn any(&self, ty: &Type, pred: &dyn Fn(&Type) -> bool) -> bool {
        pred(ty)
            || match ty {
                Type::Array(t, _) | Type::Vec(t, _) | Type::Option(t) => self.any(t, pred),
                Type::Result(t, e) => self.any(t, pred) || self.any(e, pred),
                _ => false,
            }
    }

    pub(crate) fn has_default(
        &self,
        ty: &Type,
        structs: &BTreeSet<String>,
        enums: &BTreeSet<String>,
    ) -> bool {
        match ty {
            Type::Array(t, n) => *n <= 32 && self.has_default(t, structs, enums),
            Type::Named(n) => !structs.contains(n) && !enums.contains(n),
            _ => true,
        }
    }

    /// Whether `ty`, a field of `owner`, holds an `option` that must box its
    /// value: one that reaches `owner` again other than through a `vec`.
    pub(crate) fn boxes(&self, owner: &str, ty: &Type) -> bool {
        match ty {
            Type::Option(t) => self.cycles(owner, t) || self.boxes(owner, t),
            Type::Array(t, _) => self.boxes(owner, t),
            Type::Result(t, e) => self.boxes(owner, t) || self.boxes(owner, e),
            _ => false,
        }
    }

    /// Whether `ty` holds (outside a `vec`) a named type that is `owner` or
    /// reaches it.
    pub(crate) fn cycles(&self, owner: &str, ty: &Type) -> bool {
        match ty {
            Type::Named(n) => n == owner || self.reaches.get(n).is_some_and(|r| r.contains(owner)),
            Type::Array(t, _) | Type::Option(t) => self.cycles(owner, t),
            Type::Result(t, e) => self.cycles(owner, t) || self.cycles(owner, e),
            _ => false,
        }
    }
}

pub(crate) fn field_types(def: &TypeDef) -> Box<dyn Iterator<Item = &Type> + '_> {
    match def {
        TypeDef::Struct(s) => Box::new(s.fields.iter().map(|f| &f.ty)),
        TypeDef::Enum(e) => Box::new(e.variants.iter().filter_map(|v| v.payload.as_ref())),
    }
}

pub(crate) fn direct_names(def: &TypeDef) -> Vec<String> {
    fn walk(ty: &Type, out: &mut Vec<String>) {
        match ty {
            Type::Named(n) => out.push(n.clone()),
            Type::Array(t, _) | Type::Vec(t, _) | Type::Option(t) => walk(t, out),
            Type::Result(t, e) => {
                walk(t, out);
                walk(e, out);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for ty in field_types(def) {
        walk(ty, &mut out);
    }
    out
}
