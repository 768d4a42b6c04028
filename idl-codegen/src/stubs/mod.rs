//! The typed stubs of a protocol module: the blocking and async clients, the
//! event enum, the server trait with its dispatch and serve entry points, and
//! the typed event sender. Everything here is written against
//! `::shm_channel::rpc` (the `Transport` traits and the typed helpers of
//! `rpc::typed`), never against the shm channel itself, except for the
//! `connect` conveniences whose default transport is the shm channel.

use idl_parser::model::{Param, Protocol, Type};
use proc_macro2::{Group, Ident, Spacing, TokenStream, TokenTree};
use quote::{format_ident, quote};

mod client;
mod events;
mod server;

use crate::Options;
use crate::facts::Facts;
use crate::names::{doc_attr, docs, ident, usize_lit};
use crate::types::{Side, top_bound};

/// Methods of the generated clients; an IDL method of the same name gets a
/// `_call` suffix.
const CLIENT_RESERVED: &[&str] = &[
    "new",
    "connect",
    "connect_with",
    "connect_url",
    "connect_url_with",
    "from_rpc",
    "with_timeout",
    "set_default_timeout",
    "default_timeout",
    "version",
    "rpc",
    "into_rpc",
    "lost_events",
    "recv_event",
    "try_recv_event",
    "timeout_for",
];

/// Methods of the generated `Events`; an IDL event of the same name gets an
/// `_event` suffix.
const EVENTS_RESERVED: &[&str] = &[
    "new",
    "from_hub",
    "hub",
    "with_timeout",
    "clients",
    "timeout",
];

/// The stubs of `p`, to be placed inside its module (named types are reached
/// through `super::`).
pub(crate) fn gen_stubs(facts: &Facts<'_>, p: &Protocol, opts: &Options) -> TokenStream {
    let g = Gen {
        facts,
        p,
        net: opts.net,
    };
    let mut out = g.configs();
    out.extend(g.event_enum());
    out.extend(g.blocking_client());
    if opts.async_client {
        out.extend(g.async_client());
    }
    out.extend(g.events_sender());
    out.extend(g.server());
    out
}

struct Gen<'f, 'm> {
    facts: &'f Facts<'m>,
    p: &'f Protocol,
    /// Emit the network entry points (`connect_url`, `serve_url`).
    net: bool,
}

/// A parameter as the generated code spells it.
struct Arg {
    /// The Rust parameter name.
    name: Ident,
    /// The IDL name (for error messages).
    idl: String,
    ty: Type,
}

impl Gen<'_, '_> {
    pub(super) fn super_path() -> TokenStream {
        quote!(super::)
    }

    /// The owned Rust type of `ty` in the module.
    pub(super) fn owned(&self, ty: &Type) -> TokenStream {
        self.facts
            .rust_type_in("", ty, Side::Owned, false, &Self::super_path())
    }

    /// The received (borrowed, `'_`) Rust type of `ty` in the module.
    pub(super) fn view(&self, ty: &Type) -> TokenStream {
        anonymous_lifetimes(
            self.facts
                .rust_type_in("", ty, Side::View, false, &Self::super_path()),
        )
    }

    /// How a sender passes `ty`: scalars by value, `string` as `&str`,
    /// `bytes` as `&[u8]`, `vec<T>` as `&[T]`, anything else by reference.
    pub(super) fn send_type(&self, ty: &Type) -> TokenStream {
        match ty {
            Type::Scalar(_) | Type::Unit => self.owned(ty),
            Type::String(_) => quote!(&str),
            Type::Bytes(_) => quote!(&[u8]),
            Type::Vec(t, _) => {
                let t = self
                    .facts
                    .rust_type_in("", t, Side::Owned, true, &Self::super_path());
                quote!(&[#t])
            }
            _ => {
                let t = self.owned(ty);
                quote!(&#t)
            }
        }
    }

    pub(super) fn args(params: &[Param], avoid: &[&str]) -> Vec<Arg> {
        params
            .iter()
            .map(|p| {
                let mut name = p.name.clone();
                if avoid.contains(&name.as_str()) {
                    name.push('_');
                }
                Arg {
                    name: ident(&name),
                    idl: p.name.clone(),
                    ty: p.ty.clone(),
                }
            })
            .collect()
    }

    /// `&name` for by-value arguments, `name` for borrowed ones.
    pub(super) fn arg_ref(a: &Arg) -> TokenStream {
        let n = &a.name;
        match a.ty {
            Type::Scalar(_) | Type::Unit => quote!(&#n),
            _ => quote!(#n),
        }
    }

    // ------------------------------------------------------------ configs

    pub(super) fn configs(&self) -> TokenStream {
        let net = self.net.then(|| {
            quote! {
                /// How [`Client::connect_url`] reaches a service of this protocol
                /// wherever it runs: [`client_config`] for `shm://`, and [`NAME`],
                /// versions `1..=VERSION` for the network, whose messages are limited
                /// as the rings are (waiting up to 5 s for the first connection; see
                /// [`ConnectOptions`](::shm_channel::net::ConnectOptions) for TLS roots,
                /// lazy connects and the pool).
                #[must_use]
                pub fn connect_options() -> ::shm_channel::net::ConnectOptions {
                    ::shm_channel::net::ConnectOptions::new(client_config(), NAME, VERSION)
                        .max_receive(SERVER_TO_CLIENT_MAX)
                }

                /// How [`serve_url`] listens: requests limited as the client-to-server
                /// ring is ([`CLIENT_TO_SERVER_MAX`]); see
                /// [`ServeOptions`](::shm_channel::net::ServeOptions) for the server's
                /// configuration and the certificate of `tls://` and `quic://`.
                #[must_use]
                pub fn serve_options() -> ::shm_channel::net::ServeOptions {
                    ::shm_channel::net::ServeOptions::default().max_receive(CLIENT_TO_SERVER_MAX)
                }
            }
        });
        quote! {
            #net

            /// How [`Client::connect`] reaches a service of this protocol: [`NAME`],
            /// versions `1..=VERSION`, and ring maxima from the IDL
            /// ([`CLIENT_TO_SERVER_MAX`], [`SERVER_TO_CLIENT_MAX`]).
            #[must_use]
            pub fn client_config() -> ::shm_channel::ClientConfig {
                ::shm_channel::ClientConfig::new(NAME, 1..=VERSION)
                    .ring_sizes(CLIENT_TO_SERVER_MAX, SERVER_TO_CLIENT_MAX)
            }

            /// How [`serve`] binds a service of this protocol: [`NAME`], versions
            /// `1..=VERSION`, and ring maxima from the IDL.
            #[must_use]
            pub fn service_config() -> ::shm_channel::ServiceConfig {
                ::shm_channel::ServiceConfig::new(NAME, 1..=VERSION)
                    .ring_sizes(CLIENT_TO_SERVER_MAX, SERVER_TO_CLIENT_MAX)
            }
        }
    }
}

/// The reply of a handler's `value` (of IDL type `ty`).
fn reply_expr(ty: &Type, value: &TokenStream) -> TokenStream {
    let rpc = quote!(::shm_channel::rpc);
    match top_bound(ty) {
        Some(b) => {
            let b = usize_lit(b);
            quote!(#rpc::typed::reply_value_bounded(resp, #value, #b))
        }
        None => quote!(#rpc::typed::reply_value(resp, #value)),
    }
}

/// The names of an in-place `bytes` argument: its length and its fill.
fn in_place_names(name: &Ident) -> (Ident, Ident) {
    let bare = name.to_string();
    let bare = bare.trim_start_matches("r#");
    (format_ident!("{bare}_len"), format_ident!("fill_{bare}"))
}

fn member_docs(lines: &[String], fallback: &str) -> TokenStream {
    if lines.iter().all(|l| l.trim().is_empty()) {
        doc_attr(fallback)
    } else {
        docs(lines)
    }
}

/// `snake_name` -> `SnakeName`, `setGamma` -> `SetGamma`.
pub(crate) fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut up = true;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'E');
    }
    out
}

/// Replaces every lifetime `'a` with `'_` (views in signatures where the
/// lifetime is elided).
fn anonymous_lifetimes(tokens: TokenStream) -> TokenStream {
    let mut out: Vec<TokenTree> = Vec::new();
    let mut iter = tokens.into_iter().peekable();
    while let Some(tt) = iter.next() {
        match tt {
            TokenTree::Punct(p) if p.as_char() == '\'' && p.spacing() == Spacing::Joint => {
                let after_ref =
                    matches!(out.last(), Some(TokenTree::Punct(r)) if r.as_char() == '&');
                if let Some(TokenTree::Ident(i)) = iter.peek()
                    && i == "a"
                {
                    let span = i.span();
                    iter.next();
                    // `&'a str` becomes `&str`; `View<'a>` becomes `View<'_>`.
                    if !after_ref {
                        out.push(TokenTree::Punct(p));
                        out.push(TokenTree::Ident(Ident::new("_", span)));
                    }
                } else {
                    out.push(TokenTree::Punct(p));
                }
            }
            TokenTree::Group(g) => {
                let mut ng = Group::new(g.delimiter(), anonymous_lifetimes(g.stream()));
                ng.set_span(g.span());
                out.push(TokenTree::Group(ng));
            }
            other => out.push(other),
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn event_variants_are_camel_case() {
        assert_eq!(camel("vsync"), "Vsync");
        assert_eq!(camel("surface_lost"), "SurfaceLost");
        assert_eq!(camel("setGamma"), "SetGamma");
    }

    #[test]
    pub(super) fn lifetimes_become_anonymous() {
        let t = anonymous_lifetimes(quote!(Option<VecView<'a, u16>>));
        assert_eq!(t.to_string(), quote!(Option<VecView<'_, u16>>).to_string());
        let t = anonymous_lifetimes(quote!(Option<&'a str>));
        assert_eq!(t.to_string(), quote!(Option<&str>).to_string());
    }
}
