//! The module of a protocol: its constants, then its stubs (`stubs.rs`).

use idl_parser::model::{Delivery, Protocol};
use proc_macro2::{Literal, TokenStream};
use quote::quote;

use crate::Options;
use crate::facts::*;
use crate::names::*;

/// Constant names a protocol module defines itself; a method or event whose
/// upper-cased name is one of them gets a `_METHOD` suffix.
pub(crate) const RESERVED_CONSTS: [&str; 6] = [
    "NAME",
    "VERSION",
    "CLIENT_TO_SERVER_MAX",
    "CLIENT_TO_SERVER_DECIDED_BY",
    "SERVER_TO_CLIENT_MAX",
    "SERVER_TO_CLIENT_DECIDED_BY",
];

/// The Rust constant for a method or event named `name`: upper snake case
/// (`setGamma` -> `SET_GAMMA`).
pub fn method_const_name(name: &str) -> String {
    let upper = module_name(name).to_ascii_uppercase();
    if RESERVED_CONSTS.contains(&upper.as_str()) {
        format!("{upper}_METHOD")
    } else {
        upper
    }
}

/// Snake case: the module of a protocol (`Display` -> `display`,
/// `KeyValue` -> `key_value`).
pub fn module_name(protocol: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = protocol.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if prev_lower || (prev_upper && next_lower) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn gen_protocol(facts: &Facts<'_>, p: &Protocol, opts: &Options) -> TokenStream {
    let module = ident(&module_name(&p.name));
    let module_docs = docs_or(&p.docs, &format!("The IDL protocol `{}`.", p.name));
    let name = &p.name;
    let version = Literal::u32_unsuffixed(p.version);
    let mut members = TokenStream::new();
    let method = quote!(::shm_channel::rpc::Method);
    let members_of = p
        .methods
        .iter()
        .map(|m| (&m.name, &m.docs, m.id, m.since, "fn", m.delivery))
        .chain(
            p.events
                .iter()
                .map(|e| (&e.name, &e.docs, e.id, e.since, "event", Delivery::Default)),
        );
    for (mname, mdocs, id, since, kind, delivery) in members_of {
        let konst = ident(&method_const_name(mname));
        let mut lines: Vec<String> = mdocs.clone();
        if !lines.is_empty() {
            lines.push(String::new());
        }
        lines.push(format!(
            "The `{kind} {mname}` of `{name}`: message id {id}, since version {since}."
        ));
        let attr = match delivery {
            Delivery::Default => None,
            Delivery::OneShot => Some("@one_shot"),
            Delivery::Idempotent => Some("@idempotent"),
            Delivery::Ordered => Some("@ordered"),
        };
        if let Some(attr) = attr {
            lines.push(format!("Delivered `{attr}` over network transports."));
        }
        let member_docs = docs(&lines);
        let id = Literal::u64_unsuffixed(u64::from(id));
        let since = Literal::u32_unsuffixed(since);
        // How network transports deliver it (the RPC flag bits of `@one_shot`, ...).
        let delivery = match delivery {
            Delivery::Default => quote!(0),
            Delivery::OneShot => quote!(::shm_channel::rpc::flags::ONE_SHOT),
            Delivery::Idempotent => quote!(::shm_channel::rpc::flags::IDEMPOTENT),
            Delivery::Ordered => quote!(::shm_channel::rpc::flags::ORDERED),
        };
        members.extend(quote! {
            #member_docs
            pub const #konst: #method = #method { name: #mname, id: #id, since: #since, delivery: #delivery };
        });
    }
    let c2s = &p.ring_sizes.client_to_server;
    let s2c = &p.ring_sizes.server_to_client;
    let (c2s_max, c2s_by) = (
        Literal::u64_unsuffixed(c2s.max_bytes),
        c2s.decided_by.to_string(),
    );
    let (s2c_max, s2c_by) = (
        Literal::u64_unsuffixed(s2c.max_bytes),
        s2c.decided_by.to_string(),
    );
    let c2s_doc = doc_attr(&format!(
        "Maximum bytes of the client-to-server ring, decided by `{c2s_by}`."
    ));
    let s2c_doc = doc_attr(&format!(
        "Maximum bytes of the server-to-client ring, decided by `{s2c_by}`."
    ));
    let stubs = crate::stubs::gen_stubs(facts, p, opts);
    quote! {
        #module_docs
        pub mod #module {
            // Generated signatures mirror the IDL's parameter lists.
            #![allow(clippy::too_many_arguments)]
            /// The protocol's name, as the handshake carries it.
            pub const NAME: &str = #name;
            /// The protocol version this code speaks (`@version`).
            pub const VERSION: u32 = #version;
            #members
            #c2s_doc
            pub const CLIENT_TO_SERVER_MAX: u64 = #c2s_max;
            /// What decided [`CLIENT_TO_SERVER_MAX`]: a method or event name,
            /// `@buffer`, `default` (an unbounded message) or `none`.
            pub const CLIENT_TO_SERVER_DECIDED_BY: &str = #c2s_by;
            #s2c_doc
            pub const SERVER_TO_CLIENT_MAX: u64 = #s2c_max;
            /// What decided [`SERVER_TO_CLIENT_MAX`]: a method or event name,
            /// `@buffer`, `default` (an unbounded message) or `none`.
            pub const SERVER_TO_CLIENT_DECIDED_BY: &str = #s2c_by;
            #stubs
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_snake_case() {
        assert_eq!(module_name("Display"), "display");
        assert_eq!(module_name("KeyValue"), "key_value");
        assert_eq!(module_name("HTTPServer"), "http_server");
        assert_eq!(module_name("V2Api"), "v2_api");
        assert_eq!(module_name("snake_case"), "snake_case");
    }

    #[test]
    fn reserved_method_names_get_a_suffix() {
        assert_eq!(method_const_name("name"), "NAME_METHOD");
        assert_eq!(method_const_name("vsync"), "VSYNC");
        assert_eq!(method_const_name("set_gamma"), "SET_GAMMA");
        assert_eq!(method_const_name("setGamma"), "SET_GAMMA");
    }
}
