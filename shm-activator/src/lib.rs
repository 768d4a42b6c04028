//! Activation for shm-channel services, and the tools around it.
//!
//! - [`service_file`]: the TOML files that say how to start a service, as which uid, and
//!   when to restart it;
//! - [`Activator`]: answers clients' activation requests on `.activator.sock` in the runtime
//!   directory, starts each service once however many clients ask at the same time, and
//!   restarts it per its policy. Usable in-process (tests) or as the `shm-activator` daemon;
//! - the `shmctl` binary: lists live services, shows their channels, pings them
//!   (see `shmctl --help`).
//!
//! The client side (what `shm_channel::connect` does with an activator) is
//! `shm_channel::activation`. The walkthrough is docs/SERVICES.md.

pub mod activator;
pub mod service_file;

pub use activator::{Activator, ActivatorConfig, Phase, UnitInfo};
pub use service_file::{RestartPolicy, ServiceFile};
