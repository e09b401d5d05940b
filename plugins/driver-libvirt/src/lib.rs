//! `driver-libvirt` (work in progress).

pub mod api;
pub mod client;
pub mod config;
pub mod domain_xml;
pub mod driver;
pub mod protocol;
pub mod xdr;

// Compiled natively too (to keep it checked), but only exported inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;
