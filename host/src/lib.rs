//! Hyperplane: one control plane for virtual machines on every hypervisor.
//!
//! The host owns state, the REST API, auth, scheduling and long-running tasks; hypervisor
//! drivers are sandboxed WebAssembly components behind the WIT contracts in `wit/`.
//! See `ARCHITECTURE.md` for the map of this crate.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod model;
pub mod plugins;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod tasks;
