//! A key-value service and a client in two processes: the example to copy
//! when you start a service of your own.
//!
//! ```sh
//! cargo run --release --example kv
//! ```
//!
//! The whole interface is declared in `idl/kv.idl`. `include_idl!` turns it
//! into Rust at compile time: the types (`KvError`, `Change`, `Entry`), the
//! consts (`MAX_KEY`, ...) and a module `kv` with the blocking client
//! `kv::Client`, the async client `kv::AsyncClient`, the server trait
//! `kv::Server`, the event type `kv::Event` and the `kv::serve*` entry
//! points. This file writes only what is specific to the service: the
//! server's logic and a client that uses it.
//!
//! The client (what you started) starts the server by running this same
//! executable with `--server NAME`, then puts, gets, lists and deletes keys,
//! hits the typed error `KvError::NotFound`, and prints the `changed` events
//! the server sent it.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::error::Error;
use std::ops::Bound;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shm_channel::rpc::{CallError, ServeOptions};
use shm_channel::service::ConnectError;

/// The generated code. The path is relative to this package's `Cargo.toml`;
/// editing the IDL file rebuilds the example. A program uses only part of
/// what is generated, hence `dead_code` is allowed.
#[allow(dead_code)]
mod idl {
    shm_channel::include_idl!("idl/kv.idl");
}

use idl::kv::{self, Event};
use idl::{Change, Entry, KvError, MAX_ENTRIES};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        None => client(),
        Some("--server") if args.len() == 3 => server(&args[2]),
        Some(_) => Err(format!("usage: {} [--server NAME]", args[0]).into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv: error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ server

/// The store: a sorted map behind the generated `kv::Server` trait.
#[derive(Default)]
struct Store {
    map: BTreeMap<String, Vec<u8>>,
}

/// One method per `fn` of the protocol. Arguments arrive borrowed from the
/// ring (`&str`, `&[u8]`): nothing is copied unless the handler keeps it.
/// An `Err` reaches the caller as `CallError::Remote(KvError)`.
impl kv::Server for Store {
    fn get(&mut self, _ctx: &kv::Context<'_>, key: &str) -> Result<Vec<u8>, KvError> {
        self.map.get(key).cloned().ok_or(KvError::NotFound)
    }

    fn put(&mut self, ctx: &kv::Context<'_>, key: &str, value: &[u8]) -> Result<bool, KvError> {
        if !self.map.contains_key(key) && self.map.len() >= MAX_ENTRIES as usize {
            return Err(KvError::Full(MAX_ENTRIES));
        }
        let replaced = self.map.insert(key.to_owned(), value.to_vec()).is_some();
        // Tell every client. A client too slow to take the event within the
        // send timeout misses it; the store does not wait for stragglers.
        let _ = ctx.events().broadcast_changed(key, &Change::Put);
        Ok(replaced)
    }

    fn delete(&mut self, ctx: &kv::Context<'_>, key: &str) -> Result<(), KvError> {
        self.map.remove(key).ok_or(KvError::NotFound)?;
        let _ = ctx.events().broadcast_changed(key, &Change::Deleted);
        Ok(())
    }

    fn list(&mut self, _ctx: &kv::Context<'_>, prefix: &str, limit: u32) -> Vec<Entry> {
        // The reply may hold at most MAX_ENTRIES entries (the IDL's bound).
        let limit = limit.min(MAX_ENTRIES) as usize;
        self.map
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(key, value)| Entry {
                key: key.clone(),
                size: u32::try_from(value.len()).unwrap_or(u32::MAX),
            })
            .collect()
    }
}

/// The server process: binds the service `name` (with the ring sizes the
/// IDL computed) and serves every client until its standard input closes.
/// (`kv::serve(name, store)` is the same without a way to stop.)
fn server(name: &str) -> Result<()> {
    // The client that started this process holds the other end of stdin:
    // when it is done, or dies, stdin closes and the service stops.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, Ordering::Relaxed);
    });
    let opts = ServeOptions {
        stop: Some(stop),
        ..ServeOptions::default()
    };
    let events = kv::Events::new();
    kv::serve_with(name, Store::default(), kv::service_config(), &events, &opts)?;
    Ok(())
}

// ------------------------------------------------------------------ client

fn client() -> Result<()> {
    let name = format!("kv-{}", std::process::id());
    let mut server = ServerProcess::start(&name)?;
    let mut kv = server.connect(&name)?;

    // `put` returns whether it replaced a value.
    println!(
        "put color = blue   -> replaced: {}",
        kv.put("color", b"blue")?
    );
    println!(
        "put color = green  -> replaced: {}",
        kv.put("color", b"green")?
    );
    println!("put size = XL      -> replaced: {}", kv.put("size", b"XL")?);
    // Large values can be written straight into the ring, without a buffer
    // of their own: `put_in_place` hands out the space to fill.
    let replaced = kv.put_in_place("logo", 16 * 1024, |bytes| bytes.fill(0xab))?;
    println!("put logo = 16 KiB  -> replaced: {replaced} (filled in place)");

    let color = kv.get("color")?;
    println!("get color          -> {}", String::from_utf8_lossy(&color));

    // The IDL's error type comes back typed.
    match kv.get("weight") {
        Err(CallError::Remote(KvError::NotFound)) => println!("get weight         -> NotFound"),
        other => return Err(format!("expected NotFound, got {other:?}").into()),
    }

    for Entry { key, size } in kv.list("", 10)? {
        println!("list               -> {key} ({size} bytes)");
    }

    kv.delete("size")?;
    println!("delete size        -> ok");
    match kv.delete("size") {
        Err(CallError::Remote(KvError::NotFound)) => println!("delete size again  -> NotFound"),
        other => return Err(format!("expected NotFound, got {other:?}").into()),
    }

    // Every change above was broadcast as a `changed` event; the ones that
    // arrived while a call waited are queued in the client.
    let mut events = 0;
    while let Some(Event::Changed { key, change }) = kv.try_recv_event()? {
        println!("event              -> {key} {change:?}");
        events += 1;
    }
    if events != 5 {
        return Err(format!("expected 5 change events, got {events}").into());
    }

    drop(kv);
    server.stop()
}

/// The server process, stopped when dropped.
struct ServerProcess(Child);

impl ServerProcess {
    /// Runs this executable as the server of the service `name`.
    fn start(name: &str) -> Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args(["--server", name])
            .stdin(Stdio::piped())
            .spawn()?;
        Ok(ServerProcess(child))
    }

    /// Connects to the service, waiting (up to 10 s) for the server to bind it.
    fn connect(&mut self, name: &str) -> Result<kv::Client> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match kv::Client::connect(name) {
                Ok(client) => return Ok(client),
                Err(ConnectError::NotRunning { .. }) if Instant::now() < deadline => {
                    if let Some(status) = self.0.try_wait()? {
                        return Err(format!("the server exited ({status})").into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Closes the server's stdin, its signal to stop, and waits for it (up
    /// to 10 s, then it is killed).
    fn stop(&mut self) -> Result<()> {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait()? {
                return match status.success() {
                    true => Ok(()),
                    false => Err(format!("the server failed ({status})").into()),
                };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err("the server did not stop within 10 s".into())
    }
}

impl Drop for ServerProcess {
    /// On the error paths: make sure no server outlives the client.
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
