//! End-to-end tests: each starts the real `hyperplane` binary on a temporary data directory
//! with the real driver components, and talks to it over HTTP like any client.

mod auth;
mod authorization;
mod bad_input;
mod cli;
mod events;
mod fleet;
mod harness;
mod host_templates;
mod hostile;
mod identity;
mod instance_operations;
mod libvirt;
mod lifecycle;
mod oidc;
mod registry;
mod restart;

#[path = "../libvirt/bed.rs"]
#[allow(dead_code)]
mod libvirt_bed;
