//! The typed stubs of a protocol module: the blocking and async clients, the
//! event enum, the server trait with its dispatch and serve entry points, and
//! the typed event sender. Everything here is written against
//! `::shm_channel::rpc` (the `Transport` traits and the typed helpers of
//! `rpc::typed`), never against the shm channel itself, except for the
//! `connect` conveniences whose default transport is the shm channel.

use idl_parser::model::{Event, Method, Param, Protocol, Type};
use proc_macro2::{Group, Ident, Literal, Spacing, TokenStream, TokenTree};
use quote::{format_ident, quote};

use crate::{
    Facts, Options, Side, doc_attr, docs, ident, method_const_name, module_name, top_bound,
    usize_lit,
};

/// Methods of the generated clients; an IDL method of the same name gets a
/// `_call` suffix.
const CLIENT_RESERVED: &[&str] = &[
    "new",
    "connect",
    "connect_with",
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
    let g = Gen { facts, p };
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
    fn super_path() -> TokenStream {
        quote!(super::)
    }

    /// The owned Rust type of `ty` in the module.
    fn owned(&self, ty: &Type) -> TokenStream {
        self.facts
            .rust_type_in("", ty, Side::Owned, false, &Self::super_path())
    }

    /// The received (borrowed, `'_`) Rust type of `ty` in the module.
    fn view(&self, ty: &Type) -> TokenStream {
        anonymous_lifetimes(
            self.facts
                .rust_type_in("", ty, Side::View, false, &Self::super_path()),
        )
    }

    /// How a sender passes `ty`: scalars by value, `string` as `&str`,
    /// `bytes` as `&[u8]`, `vec<T>` as `&[T]`, anything else by reference.
    fn send_type(&self, ty: &Type) -> TokenStream {
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

    fn args(params: &[Param], avoid: &[&str]) -> Vec<Arg> {
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
    fn arg_ref(a: &Arg) -> TokenStream {
        let n = &a.name;
        match a.ty {
            Type::Scalar(_) | Type::Unit => quote!(&#n),
            _ => quote!(#n),
        }
    }

    // ------------------------------------------------------------ configs

    fn configs(&self) -> TokenStream {
        quote! {
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

    // ------------------------------------------------------------ events

    /// Whether some event field borrows from the message in its view form.
    fn events_borrow(&self) -> bool {
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
    fn event_variants(&self, side: Side) -> (TokenStream, TokenStream, TokenStream) {
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
                let fdoc = doc_attr(&format!("`{}: {}`", a.idl, crate::idl_type(&a.ty)));
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

    fn event_enum(&self) -> TokenStream {
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

    // ------------------------------------------------------------ clients

    /// The Rust name of a client method for `m`.
    fn client_name(m: &Method) -> Ident {
        let mut n = module_name(&m.name);
        if CLIENT_RESERVED.contains(&n.as_str()) {
            n.push_str("_call");
        }
        ident(&n)
    }

    fn timeout_expr(m: &Method) -> TokenStream {
        match m.timeout_ms {
            Some(ms) => {
                let ms = Literal::u64_unsuffixed(ms);
                quote!(self.timeout_for(::core::option::Option::Some(
                    ::std::time::Duration::from_millis(#ms)
                )))
            }
            None => quote!(self.timeout_for(::core::option::Option::None)),
        }
    }

    /// The announced lengths and the in-place fill of `args`; with
    /// `in_place`, each top-level `bytes` argument is filled by its closure.
    fn fill(args: &[Arg], in_place: bool) -> (TokenStream, TokenStream) {
        let rpc = quote!(::shm_channel::rpc);
        let mut lens = Vec::new();
        let mut fills = TokenStream::new();
        let mut checks = TokenStream::new();
        for (i, a) in args.iter().enumerate() {
            let id = Literal::u64_unsuffixed(i as u64);
            let r = Self::arg_ref(a);
            let bound = top_bound(&a.ty).map(usize_lit);
            if in_place && matches!(a.ty, Type::Bytes(_)) {
                let (len, f) = in_place_names(&a.name);
                let bound = match bound {
                    Some(b) => quote!(::core::option::Option::Some(#b)),
                    None => quote!(::core::option::Option::None),
                };
                checks.extend(quote!(#rpc::typed::check_bytes_len(#len, #bound)?;));
                lens.push(quote!(#rpc::typed::bytes_arg_len(#len)));
                fills
                    .extend(quote!(#rpc::typed::fill_bytes_arg(shm_sink, #id, #len, #bound, #f)?;));
            } else {
                lens.push(quote!(#rpc::typed::arg_len(#r)));
                fills.extend(match bound {
                    Some(b) => quote!(#rpc::typed::encode_arg_bounded(shm_sink, #id, #r, #b)?;),
                    None => quote!(#rpc::typed::encode_arg(shm_sink, #id, #r)?;),
                });
            }
        }
        let sink = if args.is_empty() {
            quote!(_shm_sink)
        } else {
            quote!(shm_sink)
        };
        (
            quote! {
                #checks
                let shm_lens: [u64; _] = [#(#lens),*];
            },
            quote! {
                |#sink: &mut dyn #rpc::ObjectSink| {
                    #fills
                    ::core::result::Result::Ok(())
                }
            },
        )
    }

    /// The return type and the call of a client method (`call` is `call_with`
    /// or `send_*_with`, `asyncness` is `.await` or nothing).
    fn client_body(
        &self,
        m: &Method,
        args: &[Arg],
        in_place: bool,
        is_async: bool,
    ) -> (TokenStream, TokenStream) {
        let rpc = quote!(::shm_channel::rpc);
        let konst = ident(&method_const_name(&m.name));
        let timeout = Self::timeout_expr(m);
        let (lens, fill) = Self::fill(args, in_place);
        let aw = is_async.then(|| quote!(.await));
        let inner = quote!(self.inner);
        let prelude = quote! {
            let shm_timeout = #timeout;
            #lens
        };
        if m.sync {
            return (
                quote!(::core::result::Result<(), #rpc::CallError>),
                quote! {
                    #prelude
                    #inner.send_sync_with(&#konst, &shm_lens, #fill, shm_timeout)#aw
                },
            );
        }
        let Some(ret) = &m.returns else {
            let no_queue = m.no_queue;
            return (
                quote!(::core::result::Result<(), #rpc::CallError>),
                quote! {
                    #prelude
                    #inner.send_oneway_with(&#konst, &shm_lens, #fill, shm_timeout, #no_queue)#aw
                },
            );
        };
        let (ok, err) = match ret {
            Type::Result(t, e) => (&**t, Some(&**e)),
            t => (t, None),
        };
        let ok_ty = self.owned(ok);
        let decode = match top_bound(ok) {
            Some(b) => {
                let b = usize_lit(b);
                quote!(|shm_reply: &dyn #rpc::IncomingMessage| #rpc::typed::decode_reply_bounded::<#ok_ty>(shm_reply, #b))
            }
            None => {
                quote!(|shm_reply: &dyn #rpc::IncomingMessage| #rpc::typed::decode_reply::<#ok_ty>(shm_reply))
            }
        };
        let call = quote! {
            #prelude
            #inner.call_with(&#konst, &shm_lens, #fill, shm_timeout, #decode)#aw
        };
        match err {
            None => (
                quote!(::core::result::Result<#ok_ty, #rpc::CallError>),
                call,
            ),
            Some(e) => {
                let e = self.owned(e);
                (
                    quote!(::core::result::Result<#ok_ty, #rpc::CallError<#e>>),
                    quote! {
                        #rpc::typed::with_remote({ #call })
                    },
                )
            }
        }
    }

    /// The doc lines of a client method: the IDL's, then how it behaves.
    fn client_docs(m: &Method, in_place: bool) -> TokenStream {
        let mut lines: Vec<String> = m.docs.clone();
        if !lines.iter().all(|l| l.trim().is_empty()) {
            lines.push(String::new());
        }
        let what = if m.sync {
            "`@sync` one-way: returns once the server has handled it.".to_owned()
        } else if m.returns.is_none() {
            if m.no_queue {
                "One-way, `@no_queue`: returns once the message is in the ring, or `Err(CallError::Dropped)` at once when the ring is full.".to_owned()
            } else {
                "One-way: returns once the message is in the ring (waiting for room up to the deadline).".to_owned()
            }
        } else if matches!(m.returns, Some(Type::Result(..))) {
            "Two-way: the method's error arrives as `CallError::Remote`.".to_owned()
        } else {
            "Two-way: waits for the reply.".to_owned()
        };
        lines.push(what);
        lines.push(String::new());
        let deadline = match m.timeout_ms {
            Some(ms) => {
                format!("Deadline: {ms} ms (`@timeout`) unless `with_timeout` overrides it.")
            }
            None => "Deadline: the client's default unless `with_timeout` overrides it.".to_owned(),
        };
        lines.push(deadline);
        if m.since > 1 {
            lines.push(format!(
                "Since version {}: against an older peer it fails with `CallError::Unsupported` without sending.",
                m.since
            ));
        }
        if in_place {
            lines.push(String::new());
            lines.push(
                "Zero-copy: each `bytes` argument is given as its length and a closure that fills it in place, in the ring."
                    .to_owned(),
            );
        }
        docs(&lines)
    }

    fn client_methods(&self, is_async: bool) -> TokenStream {
        let mut out = TokenStream::new();
        for m in &self.p.methods {
            let args = Self::args(
                &m.params,
                &["shm_sink", "shm_lens", "shm_timeout", "shm_reply"],
            );
            for in_place in [false, true] {
                if in_place && !args.iter().any(|a| matches!(a.ty, Type::Bytes(_))) {
                    continue;
                }
                let mut name = Self::client_name(m);
                if in_place {
                    name = format_ident!("{}_in_place", name.to_string().trim_start_matches("r#"));
                }
                let mut params = TokenStream::new();
                for a in &args {
                    let n = &a.name;
                    if in_place && matches!(a.ty, Type::Bytes(_)) {
                        let (len, f) = in_place_names(n);
                        let send = is_async.then(|| quote!(+ ::core::marker::Send));
                        params.extend(
                            quote!(#len: usize, #f: impl ::core::ops::FnOnce(&mut [u8]) #send,),
                        );
                    } else {
                        let ty = self.send_type(&a.ty);
                        params.extend(quote!(#n: #ty,));
                    }
                }
                let (ret, body) = self.client_body(m, &args, in_place, is_async);
                let doc = Self::client_docs(m, in_place);
                out.extend(if is_async {
                    quote! {
                        #doc
                        pub async fn #name(&self, #params) -> #ret {
                            #body
                        }
                    }
                } else {
                    quote! {
                        #doc
                        pub fn #name(&mut self, #params) -> #ret {
                            #body
                        }
                    }
                });
            }
        }
        out
    }

    fn blocking_client(&self) -> TokenStream {
        let rpc = quote!(::shm_channel::rpc);
        let methods = self.client_methods(false);
        let name = &self.p.name;
        let doc = doc_attr(&format!(
            "The blocking client of `{name}`: one call at a time (methods take `&mut self`)."
        ));
        quote! {
            #doc
            ///
            /// Events that arrive while a call waits are queued for [`Client::recv_event`].
            /// Every call has a deadline: the method's `@timeout`, else the client's default
            /// ([`Client::set_default_timeout`]); [`Client::with_timeout`] overrides both for
            /// the calls made through the handle it returns.
            pub struct Client<T: #rpc::Transport = ::shm_channel::Channel> {
                inner: #rpc::Client<T>,
                timeout: ::core::option::Option<::std::time::Duration>,
                lost_events: u64,
            }

            impl<T: #rpc::Transport> ::core::fmt::Debug for Client<T> {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct("Client")
                        .field("protocol", &NAME)
                        .field("version", &self.inner.version())
                        .finish_non_exhaustive()
                }
            }

            impl Client<::shm_channel::Channel> {
                /// Connects to the service `service` with [`client_config`].
                pub fn connect(service: &str) -> ::core::result::Result<Self, ::shm_channel::service::ConnectError> {
                    Self::connect_with(service, &client_config())
                }

                /// Connects to the service `service` with `config` (start from
                /// [`client_config`] to keep the protocol's name, versions and ring sizes).
                pub fn connect_with(
                    service: &str,
                    config: &::shm_channel::ClientConfig,
                ) -> ::core::result::Result<Self, ::shm_channel::service::ConnectError> {
                    ::core::result::Result::Ok(Self::new(::shm_channel::connect(service, config)?))
                }
            }

            impl<T: #rpc::Transport> Client<T> {
                /// A client over a connected transport (its handshake settled the version).
                pub fn new(transport: T) -> Self {
                    Self::from_rpc(#rpc::Client::new(transport))
                }

                /// A client over an RPC client (to keep its event queue size, default
                /// timeout, cancel handles).
                pub fn from_rpc(inner: #rpc::Client<T>) -> Self {
                    Client { inner, timeout: ::core::option::Option::None, lost_events: 0 }
                }

                /// A handle whose calls use `timeout` as their deadline instead of the
                /// method's `@timeout` or the client's default:
                /// `client.with_timeout(d).method(..)`.
                #[must_use]
                pub fn with_timeout(&mut self, timeout: ::std::time::Duration) -> WithTimeout<'_, T> {
                    self.timeout = ::core::option::Option::Some(timeout);
                    WithTimeout { client: self }
                }

                /// Sets the deadline of calls whose method has no `@timeout` (default
                /// [`DEFAULT_TIMEOUT`](::shm_channel::rpc::DEFAULT_TIMEOUT)).
                pub fn set_default_timeout(&mut self, timeout: ::std::time::Duration) {
                    self.inner.set_default_timeout(timeout);
                }

                /// The protocol version the handshake settled.
                #[must_use]
                pub fn version(&self) -> u32 {
                    self.inner.version()
                }

                /// The RPC client underneath (cancel handles, queued events, the transport).
                pub fn rpc(&mut self) -> &mut #rpc::Client<T> {
                    &mut self.inner
                }

                /// Gives the RPC client back.
                pub fn into_rpc(self) -> #rpc::Client<T> {
                    self.inner
                }

                /// Events dropped so far because the event queue was full while calls
                /// waited (see [`Client::recv_event`]).
                #[must_use]
                pub fn lost_events(&self) -> u64 {
                    self.lost_events
                }

                fn timeout_for(
                    &self,
                    method: ::core::option::Option<::std::time::Duration>,
                ) -> ::std::time::Duration {
                    self.timeout.or(method).unwrap_or_else(|| self.inner.default_timeout())
                }

                /// The next event: a queued one, else the next to arrive within `timeout`
                /// (`CallError::Timeout` if none). Events dropped because the queue was full
                /// are counted in [`Client::lost_events`]; a malformed or unknown event is
                /// `CallError::Protocol`.
                pub fn recv_event(
                    &mut self,
                    timeout: ::std::time::Duration,
                ) -> ::core::result::Result<Event, #rpc::CallError> {
                    let deadline = ::std::time::Instant::now().checked_add(timeout);
                    loop {
                        let left = deadline.map_or(timeout, |d| {
                            d.saturating_duration_since(::std::time::Instant::now())
                        });
                        match self.inner.recv_event(left)? {
                            #rpc::EventItem::Event(m) => {
                                return Event::decode(&m).map_err(#rpc::CallError::Protocol);
                            }
                            #rpc::EventItem::Lost { count } => self.lost_events += count,
                        }
                    }
                }

                /// The next event if one is queued or has arrived; never waits.
                pub fn try_recv_event(
                    &mut self,
                ) -> ::core::result::Result<::core::option::Option<Event>, #rpc::CallError> {
                    loop {
                        match self.inner.try_recv_event()? {
                            ::core::option::Option::Some(#rpc::EventItem::Event(m)) => {
                                return Event::decode(&m)
                                    .map(::core::option::Option::Some)
                                    .map_err(#rpc::CallError::Protocol);
                            }
                            ::core::option::Option::Some(#rpc::EventItem::Lost { count }) => {
                                self.lost_events += count;
                            }
                            ::core::option::Option::None => {
                                return ::core::result::Result::Ok(::core::option::Option::None);
                            }
                        }
                    }
                }

                #methods
            }

            /// A [`Client`] whose calls use the deadline given to [`Client::with_timeout`];
            /// the override ends when the handle is dropped.
            #[derive(Debug)]
            pub struct WithTimeout<'c, T: #rpc::Transport = ::shm_channel::Channel> {
                client: &'c mut Client<T>,
            }

            impl<T: #rpc::Transport> ::core::ops::Deref for WithTimeout<'_, T> {
                type Target = Client<T>;

                fn deref(&self) -> &Client<T> {
                    self.client
                }
            }

            impl<T: #rpc::Transport> ::core::ops::DerefMut for WithTimeout<'_, T> {
                fn deref_mut(&mut self) -> &mut Client<T> {
                    self.client
                }
            }

            impl<T: #rpc::Transport> ::core::ops::Drop for WithTimeout<'_, T> {
                fn drop(&mut self) {
                    self.client.timeout = ::core::option::Option::None;
                }
            }
        }
    }

    fn async_client(&self) -> TokenStream {
        let rpc = quote!(::shm_channel::rpc);
        let methods = self.client_methods(true);
        let name = &self.p.name;
        let doc = doc_attr(&format!(
            "The async client of `{name}` (tokio): methods take `&self`, so many calls can be in flight on one channel; replies are matched by request id."
        ));
        quote! {
            #doc
            ///
            /// Cheap to clone (clones share the channel). Needs shm-channel's `tokio`
            /// feature (on by default) and a tokio runtime. Deadlines work as for [`Client`];
            /// [`AsyncClient::with_timeout`] returns a clone whose calls use another.
            pub struct AsyncClient<T: #rpc::AsyncTransport = ::shm_channel::async_channel::AsyncChannel> {
                inner: ::std::sync::Arc<#rpc::AsyncClient<T>>,
                timeout: ::core::option::Option<::std::time::Duration>,
                default_timeout: ::std::time::Duration,
                lost_events: ::std::sync::Arc<::std::sync::atomic::AtomicU64>,
            }

            impl<T: #rpc::AsyncTransport> ::core::clone::Clone for AsyncClient<T> {
                fn clone(&self) -> Self {
                    AsyncClient {
                        inner: ::std::sync::Arc::clone(&self.inner),
                        timeout: self.timeout,
                        default_timeout: self.default_timeout,
                        lost_events: ::std::sync::Arc::clone(&self.lost_events),
                    }
                }
            }

            impl<T: #rpc::AsyncTransport> ::core::fmt::Debug for AsyncClient<T> {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct("AsyncClient")
                        .field("protocol", &NAME)
                        .field("version", &self.inner.version())
                        .finish_non_exhaustive()
                }
            }

            impl AsyncClient<::shm_channel::async_channel::AsyncChannel> {
                /// Connects to the service `service` with [`client_config`].
                pub async fn connect(service: &str) -> ::core::result::Result<Self, ::shm_channel::service::ConnectError> {
                    Self::connect_with(service, &client_config()).await
                }

                /// Connects to the service `service` with `config`.
                pub async fn connect_with(
                    service: &str,
                    config: &::shm_channel::ClientConfig,
                ) -> ::core::result::Result<Self, ::shm_channel::service::ConnectError> {
                    ::core::result::Result::Ok(Self::from_rpc(#rpc::AsyncClient::connect(service, config).await?))
                }
            }

            impl<T: #rpc::AsyncTransport> AsyncClient<T> {
                /// A client over a connected transport; spawns its reader task, so call it
                /// inside a tokio runtime.
                pub fn new(transport: T) -> Self {
                    Self::from_rpc(#rpc::AsyncClient::new(transport))
                }

                /// A client over an RPC async client.
                pub fn from_rpc(inner: #rpc::AsyncClient<T>) -> Self {
                    AsyncClient {
                        inner: ::std::sync::Arc::new(inner),
                        timeout: ::core::option::Option::None,
                        default_timeout: #rpc::DEFAULT_TIMEOUT,
                        lost_events: ::std::sync::Arc::default(),
                    }
                }

                /// A clone whose calls use `timeout` as their deadline instead of the
                /// method's `@timeout` or the default: `client.with_timeout(d).method(..)`.
                #[must_use]
                pub fn with_timeout(&self, timeout: ::std::time::Duration) -> Self {
                    let mut c = self.clone();
                    c.timeout = ::core::option::Option::Some(timeout);
                    c
                }

                /// Sets the deadline of this handle's calls whose method has no `@timeout`.
                pub fn set_default_timeout(&mut self, timeout: ::std::time::Duration) {
                    self.default_timeout = timeout;
                }

                /// The protocol version the handshake settled.
                #[must_use]
                pub fn version(&self) -> u32 {
                    self.inner.version()
                }

                /// The RPC client underneath.
                #[must_use]
                pub fn rpc(&self) -> &#rpc::AsyncClient<T> {
                    &self.inner
                }

                /// Events dropped so far because the event queue was full.
                #[must_use]
                pub fn lost_events(&self) -> u64 {
                    self.lost_events.load(::std::sync::atomic::Ordering::Relaxed)
                }

                fn timeout_for(
                    &self,
                    method: ::core::option::Option<::std::time::Duration>,
                ) -> ::std::time::Duration {
                    self.timeout.or(method).unwrap_or(self.default_timeout)
                }

                /// The next event (waits until one arrives or the channel ends).
                pub async fn recv_event(&self) -> ::core::result::Result<Event, #rpc::CallError> {
                    loop {
                        match self.inner.recv_event().await? {
                            #rpc::EventItem::Event(m) => {
                                return Event::decode(&m).map_err(#rpc::CallError::Protocol);
                            }
                            #rpc::EventItem::Lost { count } => {
                                self.lost_events.fetch_add(count, ::std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }

                #methods
            }
        }
    }

    // ------------------------------------------------------------ event sender

    fn events_sender(&self) -> TokenStream {
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

    fn event_methods(&self, e: &Event) -> TokenStream {
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
        let mut all_lines = lines;
        all_lines.push(format!(
            "Sends the event `{}` to every client; the report lists those that did not get it.",
            e.name
        ));
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
                self.hub.send_message_to(client, &shm_out, &shm_objects, self.timeout)
            }

            #all_doc
            pub fn #all(
                &self,
                #params
            ) -> ::core::result::Result<#rpc::BroadcastReport, #rpc::TransportError> {
                #prelude
                ::core::result::Result::Ok(self.hub.broadcast_message(&shm_out, &shm_objects, self.timeout))
            }
        }
    }

    // ------------------------------------------------------------ server

    fn server(&self) -> TokenStream {
        let rpc = quote!(::shm_channel::rpc);
        let mut trait_methods = TokenStream::new();
        let mut forwards = TokenStream::new();
        let mut arms = TokenStream::new();
        for m in &self.p.methods {
            let name = ident(&module_name(&m.name));
            let args = Self::args(&m.params, &["ctx"]);
            let mut params = TokenStream::new();
            let mut names = Vec::new();
            let mut decodes = TokenStream::new();
            for (i, a) in args.iter().enumerate() {
                let n = &a.name;
                let ty = self.view(&a.ty);
                params.extend(quote!(#n: #ty,));
                names.push(n.clone());
                let what = format!("method `{}`, argument `{}`", m.name, a.idl);
                let i = Literal::u64_unsuffixed(i as u64);
                decodes.extend(match top_bound(&a.ty) {
                    Some(b) => {
                        let b = usize_lit(b);
                        quote!(let #n = #rpc::typed::decode_arg_bounded(req, #i, #what, #b)?;)
                    }
                    None => quote!(let #n = #rpc::typed::decode_arg(req, #i, #what)?;),
                });
            }
            let (ret, reply) = match &m.returns {
                None => (quote!(), quote!(resp.done())),
                Some(Type::Result(t, e)) => {
                    let t_ty = self.owned(t);
                    let e_ty = self.owned(e);
                    let ok = reply_expr(t, &quote!(&value));
                    (
                        quote!(-> ::core::result::Result<#t_ty, #e_ty>),
                        quote!(match value {
                            ::core::result::Result::Ok(value) => #ok,
                            ::core::result::Result::Err(e) => ::core::result::Result::Err(#rpc::typed::remote_error(&e)),
                        }),
                    )
                }
                Some(t) => {
                    let t_ty = self.owned(t);
                    (quote!(-> #t_ty), reply_expr(t, &quote!(&value)))
                }
            };
            let mut lines = m.docs.clone();
            if lines.iter().all(|l| l.trim().is_empty()) {
                lines = vec![format!("Handles `{}`.", m.name)];
            }
            if m.sync {
                lines.push(String::new());
                lines.push("`@sync`: the caller waits until this returns.".to_owned());
            } else if m.returns.is_none() {
                lines.push(String::new());
                lines.push("One-way: the caller does not wait.".to_owned());
            }
            let doc = docs(&lines);
            trait_methods.extend(quote! {
                #doc
                fn #name(&mut self, ctx: &Context<'_>, #params) #ret;
            });
            forwards.extend(quote! {
                fn #name(&mut self, ctx: &Context<'_>, #params) #ret {
                    (**self).#name(ctx, #(#names),*)
                }
            });
            let id = Literal::u64_unsuffixed(u64::from(m.id));
            let since_check = (m.since > 1).then(|| {
                let since = Literal::u32_unsuffixed(m.since);
                quote! {
                    if req.version() < #since {
                        return ::core::result::Result::Err(#rpc::HandlerError::UnknownMethod);
                    }
                }
            });
            let call = if m.returns.is_none() {
                quote!(server.#name(&ctx, #(#names),*);)
            } else {
                quote!(let value = server.#name(&ctx, #(#names),*);)
            };
            arms.extend(quote! {
                #id => {
                    #since_check
                    #decodes
                    #call
                    #reply
                }
            });
        }
        let pname = &self.p.name;
        let trait_doc = doc_attr(&format!(
            "The server side of `{pname}`: one method per IDL `fn`, given the arguments borrowed from the request (no copy)."
        ));
        // `value` is unused when a method returns nothing.
        let unit_allow = quote!(#[allow(clippy::let_unit_value, clippy::unit_arg)]);
        quote! {
            #trait_doc
            ///
            /// Two-way methods return the value (or `Result<T, E>`: an `Err` reaches the
            /// caller as `CallError::Remote`); one-way methods return nothing. A method that
            /// panics fails only that call (the caller gets `CallError::Fault`); the server
            /// keeps serving. Serve it with [`serve`], [`serve_with`] or [`serve_channel`].
            pub trait Server {
                #trait_methods
            }

            impl<S: Server + ?Sized> Server for &mut S {
                #forwards
            }

            impl<S: Server + ?Sized> Server for ::std::boxed::Box<S> {
                #forwards
            }

            /// What a handler knows about the call it serves.
            #[derive(Debug)]
            pub struct Context<'a> {
                request: &'a #rpc::RequestView<'a>,
                events: &'a Events,
            }

            impl<'a> Context<'a> {
                /// The client that called: the id to send it events with. On
                /// [`serve_channel`], whose one client has no id, `ChannelId(0)`.
                #[must_use]
                pub fn client(&self) -> ::shm_channel::ChannelId {
                    self.request.channel().unwrap_or(::shm_channel::ChannelId(0))
                }

                /// The protocol version this client's handshake settled.
                #[must_use]
                pub fn version(&self) -> u32 {
                    self.request.version()
                }

                /// The event sender (this client and every other one).
                #[must_use]
                pub fn events(&self) -> &'a Events {
                    self.events
                }

                /// The request itself (ids, raw objects).
                #[must_use]
                pub fn request(&self) -> &'a #rpc::RequestView<'a> {
                    self.request
                }
            }

            /// Decodes one request and hands it to `server`, then writes the reply: the
            /// handler of [`serve`] and [`serve_channel`], for custom loops. A malformed
            /// argument fails the call with a fault (the handler is not called); an unknown
            /// method id, or a method newer than the client's version, gets
            /// `UNKNOWN_METHOD`.
            #unit_allow
            pub fn dispatch<S: Server + ?Sized>(
                server: &mut S,
                events: &Events,
                req: &#rpc::RequestView<'_>,
                resp: #rpc::Responder<'_>,
            ) -> #rpc::HandlerResult {
                let ctx = Context { request: req, events };
                match req.message_id() {
                    #arms
                    _ => ::core::result::Result::Err(#rpc::HandlerError::UnknownMethod),
                }
            }

            /// Binds the service `service` ([`service_config`]) and serves every client with
            /// `server` on this thread, forever (see [`serve_with`] to stop it and to send
            /// events).
            pub fn serve<S: Server>(service: &str, server: S) -> ::core::result::Result<#rpc::ServeEnd, #rpc::ServeError> {
                serve_with(service, server, service_config(), &Events::new(), &#rpc::ServeOptions::default())
            }

            /// Binds the service `service` with `config` and serves every client with
            /// `server` on this thread until `opts.stop` is set. `events` learns of every
            /// client (keep a clone to send events from other threads). A client that
            /// dies or misbehaves is dropped; the others keep being served.
            pub fn serve_with<S: Server>(
                service: &str,
                mut server: S,
                config: ::shm_channel::ServiceConfig,
                events: &Events,
                opts: &#rpc::ServeOptions,
            ) -> ::core::result::Result<#rpc::ServeEnd, #rpc::ServeError> {
                #rpc::serve(
                    service,
                    config,
                    events.hub(),
                    |req: &#rpc::RequestView<'_>, resp: #rpc::Responder<'_>| dispatch(&mut server, events, req, resp),
                    opts,
                )
            }

            /// Serves every client of a service the caller bound (and wrapped in an
            /// [`EventLoop`](::shm_channel::EventLoop)) with `server` on this thread until
            /// `opts.stop` is set; `events` learns of every client.
            pub fn serve_service<S: Server>(
                event_loop: &mut ::shm_channel::EventLoop,
                mut server: S,
                events: &Events,
                opts: &#rpc::ServeOptions,
            ) -> ::core::result::Result<#rpc::ServeEnd, ::shm_channel::event_loop::EventLoopError> {
                #rpc::serve_service(
                    event_loop,
                    events.hub(),
                    |req: &#rpc::RequestView<'_>, resp: #rpc::Responder<'_>| dispatch(&mut server, events, req, resp),
                    opts,
                )
            }

            /// Serves the one client of `transport` with `server` until it goes away.
            pub fn serve_channel<T: #rpc::Transport, S: Server>(
                transport: &mut T,
                server: S,
            ) -> ::core::result::Result<#rpc::ServeEnd, #rpc::TransportError> {
                serve_channel_with(transport, server, &Events::new(), &#rpc::ServeOptions::default())
            }

            /// [`serve_channel`] with options, and `events` to send this client events
            /// (it is registered as `ChannelId(0)` while served).
            pub fn serve_channel_with<T: #rpc::Transport, S: Server>(
                transport: &mut T,
                mut server: S,
                events: &Events,
                opts: &#rpc::ServeOptions,
            ) -> ::core::result::Result<#rpc::ServeEnd, #rpc::TransportError> {
                let id = ::shm_channel::ChannelId(0);
                events.hub().insert(id, transport.sender());
                let end = #rpc::serve_channel(
                    transport,
                    |req: &#rpc::RequestView<'_>, resp: #rpc::Responder<'_>| dispatch(&mut server, events, req, resp),
                    opts,
                );
                events.hub().remove(id);
                end
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
    fn event_variants_are_camel_case() {
        assert_eq!(camel("vsync"), "Vsync");
        assert_eq!(camel("surface_lost"), "SurfaceLost");
        assert_eq!(camel("setGamma"), "SetGamma");
    }

    #[test]
    fn lifetimes_become_anonymous() {
        let t = anonymous_lifetimes(quote!(Option<VecView<'a, u16>>));
        assert_eq!(t.to_string(), quote!(Option<VecView<'_, u16>>).to_string());
        let t = anonymous_lifetimes(quote!(Option<&'a str>));
        assert_eq!(t.to_string(), quote!(Option<&str>).to_string());
    }
}
