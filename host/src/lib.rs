//! Hyperplane: one control plane for virtual machines on every hypervisor.

pub mod plugins;
