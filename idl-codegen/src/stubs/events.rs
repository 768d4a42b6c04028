//! The `Event` and `EventView` enums, and the typed event sender `Events`.

use idl_parser::model::{Event, Type};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

use super::*;
use crate::names::{doc_attr, docs, ident, idl_type, usize_lit};
use crate::protocol::{method_const_name, module_name};
use crate::types::{Side, top_bound};

impl Gen<'_, '_> {
    // ------------------------------------------------------------ events

    /// Whether some event field borrows from the message in its view form.
    pub(super) fn events_borrow(&self) -> bool {
        self.p.events.iter().flat_map(|e| &e.params).any(|p| {
            self.facts.any(&p.ty, &|t| match t {
                Type::String(_) | Type::Bytes(_) | Type::Vec(..) => true,
                Type::Named(n) => self.facts.borrowed.contains(n),
                _ => false,
            })
        })
    }

    /// The variants of `Event` (owned) or `EventView<'a>` (borrowed), the
    /// body of their `decode` and of their `method`.
    pub(super) fn event_variants(&self, side: Side) -> (TokenStream, TokenStream, TokenStream) {
        let rpc = quote!(::shm_channel::rpc);
        let mut variants = TokenStream::new();
        let mut arms = TokenStream::new();
        let mut ids = TokenStream::new();
        for e in &self.p.events {
            let v = format_ident!("{}", camel(&e.name));
            let konst = ident(&method_const_name(&e.name));
            let doc = member_docs(&e.docs, &format!("The event `{}`.", e.name));
            let mut fields = TokenStream::new();
            let mut decodes = TokenStream::new();
            for (i, a) in Self::args(&e.params, &[]).iter().enumerate() {
                let n = &a.name;
                let ty = self
                    .facts
                    .rust_type_in("", &a.ty, side, false, &Self::super_path());
                let fdoc = doc_attr(&format!("`{}: {}`", a.idl, idl_type(&a.ty)));
                fields.extend(quote!(#fdoc #n: #ty,));
                let what = format!("event `{}`, field `{}`", e.name, a.idl);
                let i = Literal::u64_unsuffixed(i as u64);
                decodes.extend(match top_bound(&a.ty) {
                    Some(b) => {
                        let b = usize_lit(b);
                        quote!(#n: #rpc::typed::decode_field_bounded(msg, #i, #what, #b)?,)
                    }
                    None => quote!(#n: #rpc::typed::decode_field(msg, #i, #what)?,),
                });
            }
            variants.extend(quote!(#doc #v { #fields },));
            let id = Literal::u64_unsuffixed(u64::from(e.id));
            arms.extend(quote!(#id => ::core::result::Result::Ok(Self::#v { #decodes }),));
            ids.extend(quote!(Self::#v { .. } => &#konst,));
        }
        let unknown = quote!(::core::result::Result::Err(::std::format!(
            "unknown event id {other} for protocol {NAME}"
        )));
        let decode_body = if self.p.events.is_empty() {
            quote! {
                let other = msg.message_id();
                #unknown
            }
        } else {
            quote! {
                match msg.message_id() {
                    #arms
                    other => #unknown,
                }
            }
        };
        let method_body = if self.p.events.is_empty() {
            quote!(match *self {})
        } else {
            quote!(match self { #ids })
        };
        (variants, decode_body, method_body)
    }

    pub(super) fn event_enum(&self) -> TokenStream {
        let rpc = quote!(::shm_channel::rpc);
        let snake = self
            .p
            .events
            .iter()
            .flat_map(|e| &e.params)
            .any(|p| p.name.chars().any(|c| c.is_ascii_uppercase()));
        let allow = snake.then(|| quote!(#[allow(non_snake_case)]));
        let (variants, decode_body, method_body) = self.event_variants(Side::Owned);
        let name = &self.p.name;
        let enum_doc = doc_attr(&format!(
            "An event of `{name}` (server to client), decoded from the message."
        ));
        let mut out = quote! {
            #enum_doc
            #[derive(Debug, Clone, PartialEq)]
            #allow
            pub enum Event { #variants }

            impl Event {
                /// Decodes a received event message (its id picks the variant; its objects
                /// are the fields, in order). An unknown id or a malformed field is an
                /// error naming it.
                pub fn decode(
                    msg: &dyn #rpc::IncomingMessage,
                ) -> ::core::result::Result<Self, ::std::string::String> {
                    #decode_body
                }

                /// The event's constant (name, message id, version).
                #[must_use]
                pub fn method(&self) -> &'static #rpc::Method {
                    #method_body
                }
            }
        };
        if !self.events_borrow() {
            out.extend(quote! {
                /// The borrowed form of [`Event`]: no event of this protocol has a field
                /// to borrow, so it is [`Event`] itself.
                pub type EventView<'a> = Event;
            });
            return out;
        }
        let (variants, decode_body, method_body) = self.event_variants(Side::View);
        out.extend(quote! {
            /// The borrowed form of [`Event`]: strings, bytes and sequences borrowed
            /// from the message instead of copied (decode it from a message received
            /// through the RPC client underneath, or a transport).
            #[derive(Debug, Clone)]
            #allow
            pub enum EventView<'a> { #variants }

            impl<'a> EventView<'a> {
                /// Decodes a received event message, borrowing from it (see
                /// [`Event::decode`]).
                pub fn decode(
                    msg: &'a dyn #rpc::IncomingMessage,
                ) -> ::core::result::Result<Self, ::std::string::String> {
                    #decode_body
                }

                /// The event's constant (name, message id, version).
                #[must_use]
                pub fn method(&self) -> &'static #rpc::Method {
                    #method_body
                }
            }
        });
        out
    }

    // ------------------------------------------------------------ event sender

    pub(super) fn events_sender(&self) -> TokenStream {
        let rpc = quote!(::shm_channel::rpc);
        let mut methods = TokenStream::new();
        for e in &self.p.events {
            methods.extend(self.event_methods(e));
        }
        let name = &self.p.name;
        let doc = doc_attr(&format!(
            "Sends the events of `{name}` to one client or to all, from any thread (and from inside handlers, through [`Context::events`])."
        ));
        quote! {
            #doc
            ///
            /// Cheap to clone. [`serve_with`] registers every client it accepts; the
            /// [`ChannelId`](::shm_channel::ChannelId) of a client is its
            /// [`Context::client`]. Each send waits up to [`Events::with_timeout`] (default
            /// 1 s) for room in that client's ring, except `@no_queue` events, which are
            /// dropped (`TransportError::Dropped`) when the ring is full.
            #[derive(Debug, Clone)]
            pub struct Events {
                hub: #rpc::EventHub,
                timeout: ::std::time::Duration,
            }

            impl ::core::default::Default for Events {
                fn default() -> Self {
                    Self::from_hub(#rpc::EventHub::new())
                }
            }

            impl Events {
                /// A sender with no clients yet (give it to [`serve_with`]).
                #[must_use]
                pub fn new() -> Self {
                    Self::default()
                }

                /// A sender over an existing hub.
                #[must_use]
                pub fn from_hub(hub: #rpc::EventHub) -> Self {
                    Events { hub, timeout: ::std::time::Duration::from_secs(1) }
                }

                /// The same clients, with sends waiting up to `timeout` for room.
                #[must_use]
                pub fn with_timeout(mut self, timeout: ::std::time::Duration) -> Self {
                    self.timeout = timeout;
                    self
                }

                /// The hub underneath.
                #[must_use]
                pub fn hub(&self) -> &#rpc::EventHub {
                    &self.hub
                }

                /// The clients now connected.
                #[must_use]
                pub fn clients(&self) -> ::std::vec::Vec<::shm_channel::ChannelId> {
                    self.hub.clients()
                }

                #methods
            }
        }
    }

    pub(super) fn event_methods(&self, e: &Event) -> TokenStream {
        let rpc = quote!(::shm_channel::rpc);
        let mut base = module_name(&e.name);
        if EVENTS_RESERVED.contains(&base.as_str()) || base.starts_with("broadcast_") {
            base.push_str("_event");
        }
        let one = ident(&base);
        let all = format_ident!("broadcast_{}", base.trim_start_matches("r#"));
        let args = Self::args(&e.params, &["client", "shm_objects", "shm_out"]);
        let mut params = TokenStream::new();
        let mut encodes = TokenStream::new();
        let mut objects = Vec::new();
        for (i, a) in args.iter().enumerate() {
            let n = &a.name;
            let ty = self.send_type(&a.ty);
            params.extend(quote!(#n: #ty,));
            let r = Self::arg_ref(a);
            let var = format_ident!("shm_field_{}", i);
            encodes.extend(match top_bound(&a.ty) {
                Some(b) => {
                    let b = usize_lit(b);
                    quote!(let #var = #rpc::typed::encode_object_bounded(#r, #b)?;)
                }
                None => quote!(let #var = #rpc::typed::encode_object(#r)?;),
            });
            let id = Literal::u64_unsuffixed(i as u64);
            objects.push(quote!((#id, &#var[..])));
        }
        let konst = ident(&method_const_name(&e.name));
        let no_queue = e.no_queue;
        let prelude = quote! {
            #encodes
            let shm_objects: [(u64, &[u8]); _] = [#(#objects),*];
            let shm_out = #rpc::Outgoing::new(#konst.id, ::shm_channel::Kind::Event).no_queue(#no_queue);
        };
        let mut lines = e.docs.clone();
        if !lines.iter().all(|l| l.trim().is_empty()) {
            lines.push(String::new());
        }
        let mut one_lines = lines.clone();
        one_lines.push(format!(
            "Sends the event `{}` to `client`; `TransportError::PeerDied` if it is gone.",
            e.name
        ));
        if e.since > 1 {
            one_lines.push(format!(
                "Since version {}: a client that speaks an older version gets nothing (`TransportError::Unsupported`).",
                e.since
            ));
        }
        let mut all_lines = lines;
        all_lines.push(format!(
            "Sends the event `{}` to every client; the report lists those that did not get it.",
            e.name
        ));
        if e.since > 1 {
            all_lines.push(format!(
                "Since version {}: clients that speak an older version are skipped.",
                e.since
            ));
        }
        let one_doc = docs(&one_lines);
        let all_doc = docs(&all_lines);
        quote! {
            #one_doc
            pub fn #one(
                &self,
                client: ::shm_channel::ChannelId,
                #params
            ) -> ::core::result::Result<(), #rpc::TransportError> {
                #prelude
                self.hub.send_message_to_since(client, #konst.since, &shm_out, &shm_objects, self.timeout)
            }

            #all_doc
            pub fn #all(
                &self,
                #params
            ) -> ::core::result::Result<#rpc::BroadcastReport, #rpc::TransportError> {
                #prelude
                ::core::result::Result::Ok(self.hub.broadcast_message_since(#konst.since, &shm_out, &shm_objects, self.timeout))
            }
        }
    }
}
