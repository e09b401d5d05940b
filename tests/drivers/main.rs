//! Driver tests through the real host runtime and the real components: the conformance suite
//! against every driver (the simulator; libvirt's test driver through a real libvirtd, over
//! TCP and over the unix socket), plus what only a real backend can show (a connection cut
//! in the middle of a call).

mod conformance;
mod libvirt;
mod proxy;
mod sim;

#[path = "../libvirt/bed.rs"]
#[allow(dead_code)]
mod libvirt_bed;

use std::sync::OnceLock;

use hyperplane::plugins::{PluginRuntime, RuntimeSettings};

/// One runtime per test binary, so each component compiles once.
fn shared_runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| PluginRuntime::new(RuntimeSettings::default()).expect("the plugin runtime starts"))
}

/// A 4 KiB file for pulls to read, written once per test process.
fn scratch_image() -> std::path::PathBuf {
    static IMAGE: OnceLock<std::path::PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let path = std::env::temp_dir().join(format!("hyperplane-conformance-image-{}", std::process::id()));
            std::fs::write(&path, vec![7_u8; 4096]).expect("the image is written");
            path
        })
        .clone()
}
