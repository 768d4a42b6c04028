//! A tiny activatable service and its client, for the walkthrough in docs/SERVICES.md.
//!
//! ```text
//! shm-echo serve NAME               # binds NAME (protocol "Echo"), answers every request
//! shm-echo call NAME TEXT [HOLD_MS] # connects (activating NAME if needed), calls, prints the
//!                                 # answer, keeps the channel open HOLD_MS more milliseconds
//! ```
//!
//! The service binds in the default runtime directory, which the activator sets for it
//! (`SHM_CHANNEL_RUNTIME_DIR`).

use std::process::ExitCode;
use std::time::Duration;

use shm_channel::Kind;
use shm_channel::event_loop::{Event, EventLoop};
use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};

const STEP: Duration = Duration::from_secs(10);

fn serve(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let service = Service::bind(name, ServiceConfig::new("Echo", 1..=1))?;
    eprintln!("shm-echo: serving {name} as pid {}", std::process::id());
    let mut events = EventLoop::new(service)?;
    loop {
        match events.next_event(Duration::MAX)? {
            Some(Event::Message { message, reply, .. }) => {
                let data = message.object(0).unwrap_or_default();
                reply.send_objects(message.message_id(), Kind::Reply, &[(0, data)], STEP)?;
            }
            Some(Event::Connected(id)) => eprintln!("shm-echo: {id} connected"),
            Some(Event::Disconnected(id, why)) => eprintln!("shm-echo: {id} gone: {why}"),
            _ => {}
        }
    }
}

fn call(name: &str, text: &str, hold: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let mut channel = service::connect(name, &ClientConfig::new("Echo", 1..=1))?;
    channel.send_objects(1, Kind::Request, &[(0, text.as_bytes())], STEP)?;
    let pid = channel.peer().pid;
    let reply = channel.recv_timeout(STEP)?;
    println!(
        "{} (from pid {pid})",
        String::from_utf8_lossy(reply.object(0).unwrap_or_default())
    );
    drop(reply);
    std::thread::sleep(hold);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", name] => serve(name),
        ["call", name, text] => call(name, text, Duration::ZERO),
        ["call", name, text, hold] => match hold.parse() {
            Ok(ms) => call(name, text, Duration::from_millis(ms)),
            Err(e) => Err(format!("HOLD_MS: {e}").into()),
        },
        _ => Err("usage: shm-echo serve NAME | shm-echo call NAME TEXT [HOLD_MS]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
