//! Structs, enums, their views and codec impls, and consts.

use idl_parser::model::{Const, ConstValue, Enum, Model, Scalar, Struct, Type, TypeDef};
use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

use crate::facts::*;
use crate::names::*;

/// Which side a Rust type is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The owned, sending type.
    Owned,
    /// The borrowed, receiving view (lifetime `'a`).
    View,
}

impl Facts<'_> {
    /// The Rust type of `ty` as a field of `owner`. `nested` is false for the
    /// field's own type, whose bound the encode/decode code checks; bounds
    /// deeper inside travel in the type (`Bounded<T, N>`).
    fn rust_type(&self, owner: &str, ty: &Type, side: Side, nested: bool) -> TokenStream {
        self.rust_type_in(owner, ty, side, nested, &TokenStream::new())
    }

    /// [`Self::rust_type`] with named types behind `path` (`super::` inside a
    /// protocol module).
    pub(crate) fn rust_type_in(
        &self,
        owner: &str,
        ty: &Type,
        side: Side,
        nested: bool,
        path: &TokenStream,
    ) -> TokenStream {
        let wire = quote!(::shm_channel::wire);
        let bounded = |base: TokenStream, bound: &Option<u64>| match bound {
            Some(n) if nested => {
                let n = usize_lit(*n);
                quote!(#wire::Bounded<#base, #n>)
            }
            _ => base,
        };
        match ty {
            Type::Scalar(s) => scalar_type(*s),
            Type::Unit => quote!(()),
            Type::String(b) => bounded(
                match side {
                    Side::Owned => quote!(::std::string::String),
                    Side::View => quote!(&'a str),
                },
                b,
            ),
            Type::Bytes(b) => bounded(
                match side {
                    Side::Owned => quote!(::std::vec::Vec<u8>),
                    Side::View => quote!(&'a [u8]),
                },
                b,
            ),
            Type::Vec(t, b) => {
                let base = match (side, &**t) {
                    (Side::View, Type::Scalar(s)) if *s != Scalar::Bool => {
                        let s = scalar_type(*s);
                        quote!(#wire::VecView<'a, #s>)
                    }
                    (Side::View, t) => {
                        let t = self.rust_type_in(owner, t, side, true, path);
                        quote!(#wire::SeqView<'a, #t>)
                    }
                    (Side::Owned, t) => {
                        let t = self.rust_type_in(owner, t, side, true, path);
                        quote!(::std::vec::Vec<#t>)
                    }
                };
                bounded(base, b)
            }
            Type::Array(t, n) => {
                let t = self.rust_type_in(owner, t, side, true, path);
                let n = usize_lit(*n);
                quote!([#t; #n])
            }
            Type::Option(t) => {
                let mut inner = self.rust_type_in(owner, t, side, true, path);
                if self.cycles(owner, t) {
                    inner = quote!(::std::boxed::Box<#inner>);
                }
                quote!(::core::option::Option<#inner>)
            }
            Type::Result(t, e) => {
                let t = self.rust_type_in(owner, t, side, true, path);
                let e = self.rust_type_in(owner, e, side, true, path);
                quote!(::core::result::Result<#t, #e>)
            }
            Type::Named(n) => {
                if side == Side::View && self.borrowed.contains(n) {
                    let view = format_ident!("{}View", ident(n));
                    quote!(#path #view<'a>)
                } else {
                    let n = ident(n);
                    quote!(#path #n)
                }
            }
        }
    }
}

/// Encodes `value` (an expression of a reference to a field of type `ty`)
/// into `w`, checking the field's own bound.
pub(crate) fn encode_expr(ty: &Type, value: &TokenStream) -> TokenStream {
    match top_bound(ty) {
        Some(n) => {
            let n = usize_lit(n);
            quote!(::shm_channel::wire::encode_bounded(#value, #n, w))
        }
        None => quote!(::shm_channel::wire::Encode::encode(#value, w)),
    }
}

/// Decodes a field of type `ty` from `r`, checking its own bound.
pub(crate) fn decode_expr(ty: &Type) -> TokenStream {
    match top_bound(ty) {
        Some(n) => {
            let n = usize_lit(n);
            quote!(::shm_channel::wire::decode_bounded(r, #n)?)
        }
        None => quote!(r.decode()?),
    }
}

pub(crate) fn top_bound(ty: &Type) -> Option<u64> {
    match ty {
        Type::String(b) | Type::Bytes(b) | Type::Vec(_, b) => *b,
        _ => None,
    }
}

pub(crate) fn gen_struct(facts: &Facts<'_>, s: &Struct) -> TokenStream {
    let name = ident(&s.name);
    let mut derives = vec![quote!(Debug), quote!(Clone), quote!(PartialEq)];
    if !facts.float.contains(&s.name) {
        derives.extend([quote!(Eq), quote!(Hash)]);
    }
    if !facts.not_copy.contains(&s.name) {
        derives.push(quote!(Copy));
    }
    if !facts.not_default.contains(&s.name) {
        derives.push(quote!(Default));
    }
    let docs = docs_or(&s.docs, &format!("The IDL struct `{}`.", s.name));
    let mut allow = type_allows(&s.name).unwrap_or_default();
    // The lint ignores an `allow` on the field itself.
    if s.fields
        .iter()
        .any(|f| f.name.chars().any(|c| c.is_ascii_uppercase()))
    {
        allow.extend(quote!(#[allow(non_snake_case)]));
    }
    let fields = struct_fields(facts, s, Side::Owned);
    let impls = struct_impls(facts.model, s, &quote!(#name), &quote!(#name));
    let mut out = quote! {
        #docs
        #allow
        #[derive(#(#derives),*)]
        pub struct #name { #fields }
        #impls
    };
    if facts.borrowed.contains(&s.name) {
        let view = format_ident!("{}View", name);
        let doc = view_doc(&name);
        let mut derives = vec![quote!(Debug), quote!(Clone)];
        if !facts.view_not_copy.contains(&s.name) {
            derives.push(quote!(Copy));
        }
        let fields = struct_fields(facts, s, Side::View);
        let impls = struct_impls(facts.model, s, &quote!(#view<'_>), &quote!(#view<'a>));
        out.extend(quote! {
            #doc
            #allow
            #[derive(#(#derives),*)]
            pub struct #view<'a> { #fields }
            #impls
        });
        out.extend(owned_of_view(&name, &view));
    }
    out
}

/// `view.owned()`: an owned copy of a received view, for a handler that
/// keeps the value past the message.
pub(crate) fn owned_of_view(owned: &Ident, view: &Ident) -> TokenStream {
    let wire = quote!(::shm_channel::wire);
    quote! {
        impl #view<'_> {
            /// An owned copy of this view.
            ///
            /// Goes through the wire encoding (one temporary buffer), so it
            /// re-checks the bytes: an error means they changed under the
            /// view, which only a misbehaving peer can cause.
            pub fn owned(&self) -> ::core::result::Result<#owned, #wire::WireError> {
                let bytes = #wire::encode_to_vec(self)?;
                #wire::decode_exact(&bytes)
            }
        }
    }
}

pub(crate) fn struct_fields(facts: &Facts<'_>, s: &Struct, side: Side) -> TokenStream {
    let mut out = TokenStream::new();
    for f in &s.fields {
        let docs = docs_or(&f.docs, &format!("`{}: {}`", f.name, idl_type(&f.ty)));
        let name = ident(&f.name);
        let ty = facts.rust_type(&s.name, &f.ty, side, false);
        out.extend(quote! { #docs pub #name: #ty, });
    }
    out
}

/// `impl Encode` for `encode_ty` and `impl Decode<'a>` for `decode_ty`.
pub(crate) fn struct_impls(
    model: &Model,
    s: &Struct,
    encode_ty: &TokenStream,
    decode_ty: &TokenStream,
) -> TokenStream {
    let wire = quote!(::shm_channel::wire);
    let names: Vec<Ident> = s.fields.iter().map(|f| ident(&f.name)).collect();
    let len = if names.is_empty() {
        quote!(0)
    } else {
        quote!(#(#wire::Encode::encoded_len(&self.#names))+*)
    };
    let encodes: Vec<TokenStream> = s
        .fields
        .iter()
        .zip(&names)
        .map(|(f, n)| encode_expr(&f.ty, &quote!(&self.#n)))
        .collect();
    let (w, r) = if names.is_empty() {
        (quote!(_w), quote!(_r))
    } else {
        (quote!(w), quote!(r))
    };
    let decodes: Vec<TokenStream> = s.fields.iter().map(|f| decode_expr(&f.ty)).collect();
    let min = usize_lit(
        s.fields
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(min_len(model, &f.ty))),
    );
    quote! {
        impl #wire::Encode for #encode_ty {
            fn encoded_len(&self) -> usize {
                #len
            }

            fn encode(&self, #w: &mut #wire::Writer<'_>) -> ::core::result::Result<(), #wire::WireError> {
                #(#encodes?;)*
                ::core::result::Result::Ok(())
            }
        }

        impl<'a> #wire::Decode<'a> for #decode_ty {
            const MIN_ENCODED_LEN: usize = #min;

            fn decode(#r: &mut #wire::Reader<'a>) -> ::core::result::Result<Self, #wire::WireError> {
                ::core::result::Result::Ok(Self { #(#names: #decodes,)* })
            }
        }
    }
}

/// The smallest encoding of `ty`, from the wire table (`Decode`'s
/// `MIN_ENCODED_LEN`): 4 for anything length-prefixed and for enums, 1 for
/// `option`, the sum of the fields for a struct. A type cannot contain itself
/// outside an `option` or `vec` (the checker refuses it), so this ends.
pub(crate) fn min_len(model: &Model, ty: &Type) -> u64 {
    match ty {
        Type::Scalar(s) => scalar_size(*s),
        Type::String(_) | Type::Bytes(_) | Type::Vec(..) => 4,
        Type::Array(t, n) => min_len(model, t).saturating_mul(*n),
        Type::Option(_) | Type::Result(..) => 1,
        Type::Unit => 0,
        Type::Named(n) => match model.type_def(n) {
            Some(TypeDef::Struct(s)) => s
                .fields
                .iter()
                .fold(0u64, |sum, f| sum.saturating_add(min_len(model, &f.ty))),
            // Enums, and (unreachable after checking) unknown names: 4 is
            // never more than the truth for an enum, 0 never for anything.
            Some(TypeDef::Enum(_)) => 4,
            None => 0,
        },
    }
}

pub(crate) fn gen_enum(facts: &Facts<'_>, e: &Enum) -> TokenStream {
    let name = ident(&e.name);
    let mut derives = vec![quote!(Debug), quote!(Clone), quote!(PartialEq)];
    if !facts.float.contains(&e.name) {
        derives.extend([quote!(Eq), quote!(Hash)]);
    }
    if !facts.not_copy.contains(&e.name) {
        derives.push(quote!(Copy));
    }
    let default = !facts.not_default.contains(&e.name);
    if default {
        derives.push(quote!(Default));
    }
    let docs = docs_or(&e.docs, &format!("The IDL enum `{}`.", e.name));
    let allow = type_allows(&e.name);
    let variants = enum_variants(facts, e, Side::Owned, default);
    let repr = (!e.variants.is_empty()).then(|| quote!(#[repr(u32)]));
    let impls = enum_impls(e, &quote!(#name), &quote!(#name));
    // Variants mirror the IDL's messages; boxing the large ones would make
    // the API depend on sizes the user never wrote.
    let large = e
        .variants
        .iter()
        .any(|v| v.payload.is_some())
        .then(|| quote!(#[allow(clippy::large_enum_variant)]));
    let mut out = quote! {
        #docs
        #allow
        #[derive(#(#derives),*)]
        #large
        #repr
        pub enum #name { #variants }
        #impls
    };
    if facts.borrowed.contains(&e.name) {
        let view = format_ident!("{}View", name);
        let doc = view_doc(&name);
        let mut derives = vec![quote!(Debug), quote!(Clone)];
        if !facts.view_not_copy.contains(&e.name) {
            derives.push(quote!(Copy));
        }
        let variants = enum_variants(facts, e, Side::View, false);
        let impls = enum_impls(e, &quote!(#view<'_>), &quote!(#view<'a>));
        out.extend(quote! {
            #doc
            #allow
            #[derive(#(#derives),*)]
            #large
            #repr
            pub enum #view<'a> { #variants }
            #impls
        });
        out.extend(owned_of_view(&name, &view));
    }
    out
}

pub(crate) fn enum_variants(facts: &Facts<'_>, e: &Enum, side: Side, default: bool) -> TokenStream {
    let mut out = TokenStream::new();
    for (i, v) in e.variants.iter().enumerate() {
        let docs = docs_or(
            &v.docs,
            &format!("`{}` (discriminant {}).", v.name, v.discriminant),
        );
        let name = ident(&v.name);
        let d = Literal::u32_unsuffixed(v.discriminant);
        let default = (default && i == 0).then(|| quote!(#[default]));
        let payload = v.payload.as_ref().map(|t| {
            let t = facts.rust_type(&e.name, t, side, false);
            quote!((#t))
        });
        out.extend(quote! { #docs #default #name #payload = #d, });
    }
    out
}

pub(crate) fn enum_impls(
    e: &Enum,
    encode_ty: &TokenStream,
    decode_ty: &TokenStream,
) -> TokenStream {
    let wire = quote!(::shm_channel::wire);
    let mut len_arms = Vec::new();
    let mut encode_arms = Vec::new();
    let mut decode_arms = Vec::new();
    for v in &e.variants {
        let name = ident(&v.name);
        let d = Literal::u32_unsuffixed(v.discriminant);
        match &v.payload {
            None => {
                len_arms.push(quote!(Self::#name => 0));
                encode_arms.push(quote!(Self::#name => w.put_u32(#d)));
                decode_arms.push(quote!(#d => ::core::result::Result::Ok(Self::#name)));
            }
            Some(ty) => {
                len_arms.push(quote!(Self::#name(value) => #wire::Encode::encoded_len(value)));
                let enc = encode_expr(ty, &quote!(value));
                encode_arms.push(quote!(Self::#name(value) => {
                    w.put_u32(#d)?;
                    #enc
                }));
                let dec = decode_expr(ty);
                decode_arms.push(quote!(#d => ::core::result::Result::Ok(Self::#name(#dec))));
            }
        }
    }
    let len = if e.variants.iter().all(|v| v.payload.is_none()) {
        quote!(4)
    } else {
        quote!(4 + match self { #(#len_arms,)* })
    };
    let (w, r) = if e.variants.is_empty() {
        (quote!(_w), quote!(_r))
    } else {
        (quote!(w), quote!(r))
    };
    let encode_body = if e.variants.is_empty() {
        quote!(match *self {})
    } else {
        quote!(match self { #(#encode_arms,)* })
    };
    let decode_body = if e.variants.is_empty() {
        quote!(::core::result::Result::Err(#wire::WireError::UnknownDiscriminant(#r.u32()?)))
    } else {
        quote!(match r.u32()? {
            #(#decode_arms,)*
            other => ::core::result::Result::Err(#wire::WireError::UnknownDiscriminant(other)),
        })
    };
    quote! {
        impl #wire::Encode for #encode_ty {
            fn encoded_len(&self) -> usize {
                #len
            }

            fn encode(&self, #w: &mut #wire::Writer<'_>) -> ::core::result::Result<(), #wire::WireError> {
                #encode_body
            }
        }

        impl<'a> #wire::Decode<'a> for #decode_ty {
            const MIN_ENCODED_LEN: usize = 4;

            fn decode(#r: &mut #wire::Reader<'a>) -> ::core::result::Result<Self, #wire::WireError> {
                #decode_body
            }
        }
    }
}

// ------------------------------------------------------------------ consts

pub(crate) fn gen_const(c: &Const) -> TokenStream {
    let name = ident(&c.name);
    let (ty, value) = match (&c.ty, &c.value) {
        (_, ConstValue::Str(s)) => (quote!(&str), quote!(#s)),
        (_, ConstValue::Bool(b)) => (quote!(bool), quote!(#b)),
        (Type::Scalar(s), ConstValue::Int(v)) => (scalar_type(*s), int_lit(*v)),
        // The checker admits only integer, bool and string consts; any other
        // pairing cannot reach here, and `i128` holds every integer value.
        (_, ConstValue::Int(v)) => (quote!(i128), int_lit(*v)),
    };
    let docs = docs_or(&c.docs, &format!("The IDL const `{}`.", c.name));
    let allow = c
        .name
        .chars()
        .any(|ch| ch.is_ascii_lowercase())
        .then(|| quote!(#[allow(non_upper_case_globals)]));
    quote! {
        #docs
        #allow
        pub const #name: #ty = #value;
    }
}

pub(crate) fn int_lit(v: i128) -> TokenStream {
    let magnitude = Literal::u128_unsuffixed(v.unsigned_abs());
    if v < 0 {
        quote!(-#magnitude)
    } else {
        quote!(#magnitude)
    }
}

// ------------------------------------------------------------------ protocols
