//! The generated clients' contenders: `benches/idl/bench.idl` expanded by
//! `include_idl!`, called through the generated blocking `Client` and
//! `AsyncClient` (on a current-thread tokio runtime), served by the
//! generated `serve_channel` in the server process.
//!
//! Round trips call `echo_in_place` (the payload written in place, in the
//! ring; the reply decoded into a `Vec`, as the generated API returns it).
//! Streaming calls `sink_in_place` for each message, then `flush`, a
//! two-way call whose reply (the last sequence number the server read)
//! ends the batch. Both sides use shm-channel's default wait policy, like
//! `shm-park`.
#![forbid(unsafe_code)]

use std::time::Instant;

use shm_channel::async_channel;
use shm_channel::ring::WaitPolicy;
use shm_channel::service::{self, ConnectError, Service};

use crate::echo::{
    Expect, Mode, Result, START_STOP, STUCK, ServerProcess, check_payload, check_seq, fill_message,
    fill_payload,
};

shm_channel::include_idl!("idl/bench.idl");

use bench_echo::{AsyncClient, Client, Context};

/// The client's side, blocking or async.
pub(crate) enum StubConn {
    Blocking(Box<Client>),
    Async(Box<AsyncClient>, tokio::runtime::Runtime),
}

impl StubConn {
    /// Connects to the server `name`, retrying while it starts.
    pub(crate) fn connect(
        name: &str,
        ring_max: u64,
        is_async: bool,
        policy: Option<WaitPolicy>,
        server: &mut ServerProcess,
        deadline: Instant,
    ) -> Result<StubConn> {
        // The IDL's ring maxima, or the bench's when it asks for more.
        let config = bench_echo::client_config().ring_sizes(
            ring_max.max(bench_echo::CLIENT_TO_SERVER_MAX),
            ring_max.max(bench_echo::SERVER_TO_CLIENT_MAX),
        );
        if is_async {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            loop {
                match rt.block_on(async_channel::connect(name, &config)) {
                    Ok(channel) => {
                        // `new` spawns the reader task: inside the runtime.
                        let mut client = rt.block_on(async {
                            AsyncClient::new(match policy {
                                Some(policy) => channel.with_wait_policy(policy),
                                None => channel,
                            })
                        });
                        client.set_default_timeout(STUCK);
                        return Ok(StubConn::Async(Box::new(client), rt));
                    }
                    Err(ConnectError::NotRunning { .. }) => server.still_starting(deadline)?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        loop {
            match service::connect(name, &config) {
                Ok(mut channel) => {
                    if let Some(policy) = policy {
                        channel.set_wait_policy(policy);
                    }
                    let mut client = Client::new(channel);
                    client.set_default_timeout(STUCK);
                    return Ok(StubConn::Blocking(Box::new(client)));
                }
                Err(ConnectError::NotRunning { .. }) => server.still_starting(deadline)?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `count` round trips numbered from `first`; `each` after every one
    /// (the bench's clock). The async client runs the whole batch in one
    /// `block_on`, as an async caller would.
    pub(crate) fn round_trips(
        &mut self,
        first: u64,
        count: u64,
        len: usize,
        each: &mut dyn FnMut(),
    ) -> Result<()> {
        match self {
            StubConn::Blocking(c) => {
                for seq in first..first + count {
                    let reply = c.echo_in_place(len, |buf| fill_payload(buf, seq))?;
                    check_payload(&reply, seq, len)?;
                    each();
                }
                Ok(())
            }
            StubConn::Async(c, rt) => rt.block_on(async {
                for seq in first..first + count {
                    let reply = c.echo_in_place(len, |buf| fill_payload(buf, seq)).await?;
                    check_payload(&reply, seq, len)?;
                    each();
                }
                Ok(())
            }),
        }
    }

    /// `count` typed calls `add_one(seq)` numbered from `first`, each reply
    /// checked; `each` after every one. The async client runs the whole
    /// batch in one `block_on`.
    pub(crate) fn typed_calls(
        &mut self,
        first: u64,
        count: u64,
        each: &mut dyn FnMut(),
    ) -> Result<()> {
        match self {
            StubConn::Blocking(c) => {
                for seq in first..first + count {
                    check_seq(c.add_one(seq)?, seq.wrapping_add(1))?;
                    each();
                }
                Ok(())
            }
            StubConn::Async(c, rt) => rt.block_on(async {
                for seq in first..first + count {
                    check_seq(c.add_one(seq).await?, seq.wrapping_add(1))?;
                    each();
                }
                Ok(())
            }),
        }
    }

    pub(crate) fn stream(&mut self, first: u64, last: u64, len: usize) -> Result<()> {
        let got = match self {
            StubConn::Blocking(c) => {
                for seq in first..=last {
                    c.sink_in_place(len, |buf| fill_message(buf, seq, false))?;
                }
                c.flush()?
            }
            StubConn::Async(c, rt) => rt.block_on(async {
                for seq in first..=last {
                    c.sink_in_place(len, |buf| fill_message(buf, seq, false))
                        .await?;
                }
                c.flush().await
            })?,
        };
        check_seq(got, last)
    }
}

/// The server's handlers: every payload read and checked; a bad one is
/// reported to the client through the reply (an empty echo, or `flush`
/// answering `u64::MAX`), since handlers return no errors.
struct BenchServer {
    expect: Expect,
    last: u64,
    failed: Option<String>,
}

impl BenchServer {
    fn take(&mut self, payload: &[u8], mode: Mode) -> bool {
        if self.failed.is_some() {
            return false;
        }
        match self.expect.take(payload, mode) {
            Ok(_) => {
                self.last += 1;
                true
            }
            Err(e) => {
                eprintln!("bench server (generated): {e}");
                self.failed = Some(e.to_string());
                false
            }
        }
    }
}

impl bench_echo::Server for BenchServer {
    fn echo(&mut self, _: &Context<'_>, payload: &[u8]) -> Vec<u8> {
        if self.take(payload, Mode::Echo) {
            // The copy reads every byte received and writes every byte sent.
            payload.to_vec()
        } else {
            Vec::new()
        }
    }

    fn sink(&mut self, _: &Context<'_>, payload: &[u8]) {
        self.take(payload, Mode::Stream);
    }

    fn flush(&mut self, _: &Context<'_>) -> u64 {
        if self.failed.is_some() {
            u64::MAX
        } else {
            self.last
        }
    }

    fn add_one(&mut self, _: &Context<'_>, x: u64) -> u64 {
        x.wrapping_add(1)
    }
}

/// The server's side: binds `name`, serves its one client until it leaves.
/// `policy`, if any, replaces the channel's default wait policy.
pub(crate) fn serve(name: &str, ring_max: u64, policy: Option<WaitPolicy>) -> Result<()> {
    let config = bench_echo::service_config().ring_sizes(
        ring_max.max(bench_echo::CLIENT_TO_SERVER_MAX),
        ring_max.max(bench_echo::SERVER_TO_CLIENT_MAX),
    );
    let mut service = Service::bind(name, config)?;
    let mut channel = service.accept_timeout(START_STOP)?;
    drop(service);
    if let Some(policy) = policy {
        channel.set_wait_policy(policy);
    }
    let server = BenchServer {
        expect: Expect::new(),
        last: 0,
        failed: None,
    };
    bench_echo::serve_channel(&mut channel, server)?;
    Ok(())
}
