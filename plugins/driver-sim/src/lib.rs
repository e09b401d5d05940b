//! Simulated hypervisor.
