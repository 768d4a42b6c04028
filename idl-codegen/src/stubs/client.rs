//! The blocking `Client` and the async `AsyncClient`.

use idl_parser::model::{Method, Type};
use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

use super::*;
use crate::names::{doc_attr, docs, ident, usize_lit};
use crate::protocol::{method_const_name, module_name};
use crate::types::top_bound;

impl Gen<'_, '_> {
    // ------------------------------------------------------------ clients

    /// The Rust name of a client method for `m`.
    pub(super) fn client_name(m: &Method) -> Ident {
        let mut n = module_name(&m.name);
        if CLIENT_RESERVED.contains(&n.as_str()) {
            n.push_str("_call");
        }
        ident(&n)
    }

    pub(super) fn timeout_expr(m: &Method) -> TokenStream {
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
    pub(super) fn fill(args: &[Arg], in_place: bool) -> (TokenStream, TokenStream) {
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
                // The bound is checked before any room is reserved in the ring.
                if let Some(b) = bound {
                    checks.extend(quote!(#rpc::typed::check_arg_bound(#id, #r, #b)?;));
                }
                fills.extend(quote!(#rpc::typed::encode_arg(shm_sink, #id, #r)?;));
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
    pub(super) fn client_body(
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
    pub(super) fn client_docs(m: &Method, in_place: bool) -> TokenStream {
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

    pub(super) fn client_methods(&self, is_async: bool) -> TokenStream {
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

    pub(super) fn blocking_client(&self) -> TokenStream {
        let rpc = quote!(::shm_channel::rpc);
        let methods = self.client_methods(false);
        let net = self.net.then(|| {
            quote! {
                impl Client<::shm_channel::net::Endpoint> {
                    /// Connects to the service at `url`, wherever it runs:
                    /// `shm://display` or a plain `display` (shared memory, as
                    /// [`Client::connect`]), `tcp://host:port`, `tls://host:port`,
                    /// `quic://host:port` (TLS and QUIC need roots to trust:
                    /// [`Client::connect_url_with`]). The same
                    /// methods then work over the network; each is delivered as its
                    /// IDL attribute says (`@one_shot`, `@idempotent`, `@ordered`).
                    pub fn connect_url(url: &str) -> ::core::result::Result<Self, ::shm_channel::net::EndpointError> {
                        Self::connect_url_with(url, &connect_options())
                    }

                    /// [`Client::connect_url`] with `options` (start from
                    /// [`connect_options`]).
                    pub fn connect_url_with(
                        url: &str,
                        options: &::shm_channel::net::ConnectOptions,
                    ) -> ::core::result::Result<Self, ::shm_channel::net::EndpointError> {
                        ::core::result::Result::Ok(Self::new(::shm_channel::net::Endpoint::connect(url, options)?))
                    }
                }
            }
        });
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

            #net

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

    pub(super) fn async_client(&self) -> TokenStream {
        let rpc = quote!(::shm_channel::rpc);
        let methods = self.client_methods(true);
        let net = self.net.then(|| {
            quote! {
                impl AsyncClient<::shm_channel::net::AsyncEndpoint> {
                    /// Connects to the service at `url` (see [`Client::connect_url`]).
                    pub async fn connect_url(url: &str) -> ::core::result::Result<Self, ::shm_channel::net::EndpointError> {
                        Self::connect_url_with(url, &connect_options()).await
                    }

                    /// [`AsyncClient::connect_url`] with `options`.
                    pub async fn connect_url_with(
                        url: &str,
                        options: &::shm_channel::net::ConnectOptions,
                    ) -> ::core::result::Result<Self, ::shm_channel::net::EndpointError> {
                        ::core::result::Result::Ok(Self::new(::shm_channel::net::AsyncEndpoint::connect(url, options).await?))
                    }
                }
            }
        });
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

            #net

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

                /// The next event if one has arrived; never waits.
                pub fn try_recv_event(
                    &self,
                ) -> ::core::result::Result<::core::option::Option<Event>, #rpc::CallError> {
                    loop {
                        match self.inner.try_recv_event()? {
                            ::core::option::Option::Some(#rpc::EventItem::Event(m)) => {
                                return Event::decode(&m)
                                    .map(::core::option::Option::Some)
                                    .map_err(#rpc::CallError::Protocol);
                            }
                            ::core::option::Option::Some(#rpc::EventItem::Lost { count }) => {
                                self.lost_events.fetch_add(count, ::std::sync::atomic::Ordering::Relaxed);
                            }
                            ::core::option::Option::None => {
                                return ::core::result::Result::Ok(::core::option::Option::None);
                            }
                        }
                    }
                }

                #methods
            }
        }
    }
}
