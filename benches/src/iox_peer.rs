//! The iceoryx2 contender: publish-subscribe over `[u8]` slices between two
//! processes (`ipc::Service`), one service each way, as iceoryx2's own
//! publish-subscribe benchmark does. Both sides poll `receive` (iceoryx2's
//! lowest-latency mode; its event services would add a kernel wake-up), and
//! a waiter yields after [`RAW_PURE_SPINS`] empty polls, exactly like
//! `raw-spin`, so that two processes on one CPU hand over.
//!
//! Messages are loaned from the publisher's shared memory, written in place
//! (`write_from_slice` of the message prepared in a reused buffer; the
//! crate's safe API for a slice), sent, and read in place by the
//! subscriber. Sends block while the subscriber's buffer is full
//! (`enable_safe_overflow(false)`, `RetryUntilDelivered`), so streaming
//! loses nothing. An empty message tells the server to exit.
#![forbid(unsafe_code)]

use std::time::Instant;

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

use crate::echo::{
    Expect, Mode, RAW_PURE_SPINS, Result, STUCK, ServerProcess, check_ack, check_payload,
    fill_message,
};

type Port = PortFactory<ipc::Service, [u8], ()>;
type Pub = Publisher<ipc::Service, [u8], ()>;
type Sub = Subscriber<ipc::Service, [u8], ()>;
type Received = Sample<ipc::Service, [u8], ()>;

/// Messages a subscriber may hold unread: enough to stream without the
/// publisher waiting on every message, few enough to bound the shared
/// memory (each slot is sized for the largest message).
const BUFFER: usize = 8;

/// One process's side: its node, both services, and its two ports.
pub(crate) struct IoxConn {
    tx: Pub,
    rx: Sub,
    // Ports before services before the node (drop order).
    _services: [Port; 2],
    _node: Node<ipc::Service>,
    /// The message being sent, reused.
    out: Vec<u8>,
}

/// `<name>/req` (client to server) and `<name>/rep`.
fn open(name: &str, create: bool) -> Result<(Node<ipc::Service>, Port, Port)> {
    // iceoryx2 logs warnings on the console by default (e.g. about stale
    // nodes of killed processes); the bench reports its own errors.
    set_log_level(LogLevel::Error);
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let service = |suffix: &str| -> Result<Port> {
        let name = ServiceName::new(&format!("{name}/{suffix}"))?;
        let builder = node
            .service_builder(&name)
            .publish_subscribe::<[u8]>()
            .max_publishers(1)
            .max_subscribers(1)
            .history_size(0)
            .subscriber_max_buffer_size(BUFFER)
            .enable_safe_overflow(false);
        Ok(if create {
            builder.create()?
        } else {
            builder.open()?
        })
    };
    let req = service("req")?;
    let rep = service("rep")?;
    Ok((node, req, rep))
}

fn publisher(port: &Port, max: usize) -> Result<Pub> {
    Ok(port
        .publisher_builder()
        .initial_max_slice_len(max)
        .max_loaned_samples(1)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()?)
}

/// Polls `rx` until a message arrives (yielding after a short spin), or
/// fails after [`STUCK`] (with `stuck`; the server waits as long as its
/// client lives: the parent-death signal ends it with its client).
fn wait(rx: &Sub, stuck: bool) -> Result<Received> {
    let mut spins = 0u32;
    let mut deadline = None;
    loop {
        if let Some(sample) = rx.receive()? {
            return Ok(sample);
        }
        if spins < RAW_PURE_SPINS {
            spins += 1;
            std::hint::spin_loop();
            continue;
        }
        std::thread::yield_now();
        if !stuck {
            continue;
        }
        // The clock only once spinning failed: it costs as much as a poll.
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + STUCK);
        if Instant::now() >= deadline {
            return Err(format!("iceoryx2: nothing received within {STUCK:?}").into());
        }
    }
}

impl IoxConn {
    /// The client's side, before the server starts: creates both services,
    /// the request publisher and the reply subscriber.
    pub(crate) fn client(name: &str, max: usize) -> Result<IoxConn> {
        let (node, req, rep) = open(name, true)?;
        let tx = publisher(&req, max)?;
        let rx = rep.subscriber_builder().create()?;
        Ok(IoxConn {
            tx,
            rx,
            _services: [req, rep],
            _node: node,
            out: Vec::with_capacity(max),
        })
    }

    /// Waits for the server's hello: its subscriber exists, so nothing sent
    /// from now on is lost.
    pub(crate) fn wait_hello(&self, server: &mut ServerProcess, deadline: Instant) -> Result<()> {
        loop {
            if let Some(hello) = self.rx.receive()? {
                return check_ack(hello.payload(), 0);
            }
            server.still_starting(deadline)?;
        }
    }

    fn send(&mut self, seq: u64, len: usize, ack: bool) -> Result<()> {
        self.out.resize(len, 0);
        fill_message(&mut self.out, seq, ack);
        let sample = self.tx.loan_slice_uninit(len)?;
        sample.write_from_slice(&self.out).send()?;
        Ok(())
    }

    pub(crate) fn round_trip(&mut self, seq: u64, len: usize) -> Result<()> {
        self.send(seq, len, false)?;
        let reply = wait(&self.rx, true)?;
        check_payload(reply.payload(), seq, len)
    }

    pub(crate) fn stream(&mut self, first: u64, last: u64, len: usize) -> Result<()> {
        for seq in first..=last {
            self.send(seq, len, seq == last)?;
        }
        let ack = wait(&self.rx, true)?;
        check_ack(ack.payload(), last)
    }

    /// Tells the server to exit (an empty message).
    pub(crate) fn quit(self) -> Result<()> {
        self.tx.loan_slice_uninit(0)?.write_from_slice(&[]).send()?;
        Ok(())
    }
}

/// The server's side: opens the client's services, says hello, then
/// serves until the client's empty message.
pub(crate) fn serve(name: &str, max: usize, mode: Mode) -> Result<()> {
    let (node, req, rep) = open(name, false)?;
    let rx = req.subscriber_builder().create()?;
    let tx = publisher(&rep, max)?;
    let _keep = (node, req, rep);
    tx.loan_slice_uninit(8)?
        .write_from_slice(&0u64.to_le_bytes())
        .send()?;
    let mut expect = Expect::new();
    loop {
        let sample = wait(&rx, false)?;
        let data = sample.payload();
        if data.is_empty() {
            return Ok(());
        }
        if data.len() > max {
            return Err(format!("a message of {} bytes", data.len()).into());
        }
        let Some(seq) = expect.take(data, mode)? else {
            continue;
        };
        let reply = match mode {
            // The copy reads every byte received and writes every byte sent.
            Mode::Echo => tx.loan_slice_uninit(data.len())?.write_from_slice(data),
            Mode::Stream => tx
                .loan_slice_uninit(8)?
                .write_from_slice(&seq.to_le_bytes()),
        };
        reply.send()?;
    }
}
