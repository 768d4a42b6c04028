//! The `Server` trait, its `Context`, `dispatch` and the serve entry points.

use idl_parser::model::Type;
use proc_macro2::{Literal, TokenStream};
use quote::quote;

use super::*;
use crate::names::{doc_attr, docs, ident, usize_lit};
use crate::protocol::module_name;
use crate::types::top_bound;

impl Gen<'_, '_> {
    // ------------------------------------------------------------ server

    pub(super) fn server(&self) -> TokenStream {
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
        let net = self.net.then(|| {
            quote! {
                /// Serves `server` to network clients at `url` (`tcp://host:port`,
                /// `tls://host:port`, `quic://host:port`; port 0 picks a free one, see
                /// [`NetServer::local_addr`](::shm_channel::net::NetServer::local_addr)) in
                /// the background, until the returned server is dropped. The requests of
                /// every client go through `server`, one at a time, as with [`serve`];
                /// `events` learns of every client, to send it events
                /// ([`Context::client`]).
                pub fn serve_url<S: Server + ::core::marker::Send + 'static>(
                    url: &str,
                    server: S,
                    events: &Events,
                ) -> ::core::result::Result<::shm_channel::net::NetServer, ::shm_channel::net::EndpointError> {
                    serve_url_with(url, server, events, &serve_options())
                }

                /// [`serve_url`] with `options` (start from [`serve_options`]: the
                /// server's configuration, the certificate of `tls://` and `quic://`).
                pub fn serve_url_with<S: Server + ::core::marker::Send + 'static>(
                    url: &str,
                    server: S,
                    events: &Events,
                    options: &::shm_channel::net::ServeOptions,
                ) -> ::core::result::Result<::shm_channel::net::NetServer, ::shm_channel::net::EndpointError> {
                    ::shm_channel::net::bind_url(url, options, ::std::vec![served(server, events)])
                }

                /// This protocol served by `server`, for a
                /// [`NetServer`](::shm_channel::net::NetServer) of several protocols on one
                /// listener; `events` learns of every client.
                pub fn served<S: Server + ::core::marker::Send + 'static>(
                    server: S,
                    events: &Events,
                ) -> ::shm_channel::net::Served {
                    let server = ::std::sync::Mutex::new(server);
                    let hub = ::core::clone::Clone::clone(events.hub());
                    let events = ::core::clone::Clone::clone(events);
                    ::shm_channel::net::Served::new(
                        ::shm_channel::net::ProtocolSpec::new(NAME, VERSION),
                        move |req: &#rpc::RequestView<'_>, resp: #rpc::Responder<'_>| {
                            // A panicking handler poisons the lock; the server object is
                            // still the application's, as over shm.
                            let mut server = server.lock().unwrap_or_else(::std::sync::PoisonError::into_inner);
                            dispatch(&mut *server, &events, req, resp)
                        },
                    )
                    .with_events(hub)
                }
            }
        });
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
                /// [`serve_channel`], whose one client has no id, `ChannelId(0)`;
                /// over the network, its connection's (see `serve_url`).
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

            #net
        }
    }
}
