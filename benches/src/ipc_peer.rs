//! The ipc-channel contender: byte channels between two processes, set up
//! the way ipc-channel's documentation shows (an `IpcOneShotServer` whose
//! name the child connects to, then channels sent over it).
#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::time::Instant;

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};

use crate::echo::{Expect, Mode, Result, ServerProcess, check_ack, check_payload, fill_message};

/// What the server hands the client: where to send requests, where replies
/// arrive.
type Handshake = (IpcBytesSender, IpcBytesReceiver);

/// The client's ends.
pub(crate) struct IpcConn {
    tx: IpcBytesSender,
    rx: IpcBytesReceiver,
    /// The message being sent, reused.
    out: Vec<u8>,
}

/// A one-shot server waiting for the child, on a thread of its own
/// (`accept` has no timeout).
pub(crate) struct Accept(mpsc::Receiver<Result<Handshake>>);

impl IpcConn {
    /// Opens the one-shot server; returns it and the name for the child.
    pub(crate) fn listen() -> Result<(Accept, String)> {
        let (server, name) = IpcOneShotServer::<Handshake>::new()?;
        let (done, wait) = mpsc::channel();
        std::thread::spawn(move || {
            let got = server
                .accept()
                .map(|(_, handshake)| handshake)
                .map_err(|e| format!("ipc-channel accept: {e:?}").into());
            let _ = done.send(got);
        });
        Ok((Accept(wait), name))
    }

    pub(crate) fn round_trip(&mut self, seq: u64, len: usize) -> Result<()> {
        self.send(seq, len, false)?;
        let reply = self.rx.recv().map_err(|e| format!("ipc-channel: {e:?}"))?;
        check_payload(&reply, seq, len)
    }

    pub(crate) fn stream(&mut self, first: u64, last: u64, len: usize) -> Result<()> {
        for seq in first..=last {
            self.send(seq, len, seq == last)?;
        }
        let ack = self.rx.recv().map_err(|e| format!("ipc-channel: {e:?}"))?;
        check_ack(&ack, last)
    }

    fn send(&mut self, seq: u64, len: usize, ack: bool) -> Result<()> {
        self.out.resize(len, 0);
        fill_message(&mut self.out, seq, ack);
        self.tx.send(&self.out)?;
        Ok(())
    }
}

impl Accept {
    /// Waits for the child's channels; fails if it exits or the deadline
    /// passes first. (A thread stuck in `accept` after a failure ends with
    /// the bench.)
    pub(crate) fn wait(self, server: &mut ServerProcess, deadline: Instant) -> Result<IpcConn> {
        loop {
            match self.0.try_recv() {
                Ok(got) => {
                    let (tx, rx) = got?;
                    return Ok(IpcConn {
                        tx,
                        rx,
                        out: Vec::new(),
                    });
                }
                Err(mpsc::TryRecvError::Empty) => server.still_starting(deadline)?,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err("the ipc-channel accept thread died".into());
                }
            }
        }
    }
}

/// The server's side: connects to the client's one-shot server, hands it a
/// request sender and a reply receiver, then serves until the client drops
/// its sender.
pub(crate) fn serve(name: &str, max: usize, mode: Mode) -> Result<()> {
    let bootstrap = IpcSender::<Handshake>::connect(name.to_owned())?;
    let (req_tx, req_rx) = ipc::bytes_channel()?;
    let (rep_tx, rep_rx) = ipc::bytes_channel()?;
    bootstrap
        .send((req_tx, rep_rx))
        .map_err(|e| format!("ipc-channel handshake: {e:?}"))?;
    drop(bootstrap);
    let mut expect = Expect::new();
    loop {
        let data = match req_rx.recv() {
            Ok(data) => data,
            Err(ipc_channel::IpcError::Disconnected) => return Ok(()),
            Err(e) => return Err(format!("ipc-channel: {e:?}").into()),
        };
        if data.len() > max {
            return Err(format!("a message of {} bytes", data.len()).into());
        }
        let Some(seq) = expect.take(&data, mode)? else {
            continue;
        };
        match mode {
            // The received bytes, read in full above, go back as the reply.
            Mode::Echo => rep_tx.send(&data)?,
            Mode::Stream => rep_tx.send(&seq.to_le_bytes())?,
        }
    }
}
