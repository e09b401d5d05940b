//! Helpers shared by the tests against a real libvirtd (started by `tests/libvirt/setup.sh`).

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use driver_libvirt::client::Client;

/// libvirt's built-in test driver: fast, with a running domain `test`, pool `default-pool`.
pub const TEST_DRIVER_URI: &str = "test:///default";
/// The QEMU driver of the machine's libvirtd.
pub const QEMU_DRIVER_URI: &str = "qemu:///system";

#[path = "../../../../tests/libvirt/bed.rs"]
mod libvirt_bed;

/// host:port of libvirtd's TCP listener (auth none), started by `tests/libvirt/setup.sh`, which
/// the first call per test process runs (installing libvirt if needed).
pub fn libvirt_address() -> String {
    libvirt_bed::bed().tcp_address.clone()
}

pub fn tcp_stream() -> TcpStream {
    let address = libvirt_address();
    let stream =
        TcpStream::connect(&address).unwrap_or_else(|error| panic!("cannot connect to libvirtd at {address}: {error}"));
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    stream.set_nodelay(true).ok();
    stream
}

pub fn connect(uri: &str) -> Client<TcpStream> {
    Client::connect(tcp_stream(), uri).unwrap_or_else(|error| panic!("handshake with {uri} failed: {error}"))
}

/// A name unique to this test process and `label`.
pub fn unique_name(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!("{label}-{}-{nanos:x}", std::process::id())
}

/// Connects the driver to libvirtd over TCP, whatever the endpoint name.
pub struct TcpConnector;

impl driver_libvirt::driver::Connector for TcpConnector {
    type Stream = TcpStream;

    fn open(&self, _endpoint: &str) -> Result<TcpStream, hyperplane_guest::types::Error> {
        Ok(tcp_stream())
    }
}

pub type TestDriver = driver_libvirt::driver::LibvirtDriver<TcpConnector, hyperplane_guest::state::MemoryStore>;

/// A driver over libvirtd with one host configured by `host_json` (the keys of a `hosts` entry
/// besides `name` and `endpoint`).
pub fn driver(host_json: &str) -> TestDriver {
    driver_with_state(host_json, hyperplane_guest::state::MemoryStore::new())
}

/// [`driver`] with the plugin state `state` (an `Arc<MemoryStore>` the test looks into too).
pub fn driver_with_state<Store: hyperplane_guest::state::KeyValueStore>(
    host_json: &str,
    state: Store,
) -> driver_libvirt::driver::LibvirtDriver<TcpConnector, Store> {
    let config = format!(r#"{{"hosts": [{{"name": "lv-1", "endpoint": "libvirt", {host_json}}}]}}"#);
    let settings = driver_libvirt::config::Settings::from_json(&config).unwrap_or_else(|error| panic!("{error:?}"));
    driver_libvirt::driver::LibvirtDriver::new(settings, TcpConnector, state)
}

/// A small instance named `name` on host `lv-1`: 1 vcpu, 64 MiB, a 1 GiB disk from
/// `template`, no MAC or VLAN.
pub fn small_instance(
    id: &str,
    name: &str,
    template: &hyperplane_guest::types::TemplateRef,
) -> hyperplane_guest::types::InstanceSpec {
    hyperplane_guest::types::InstanceSpec {
        id: id.to_owned(),
        name: name.to_owned(),
        host: "lv-1".into(),
        template: template.clone(),
        vcpu: 1,
        ram_mb: 64,
        disk_gb: 1,
        mac: None,
        vlan: None,
        metadata: Vec::new(),
    }
}

/// A fresh UUID-shaped instance id, as the host chooses them.
pub fn instance_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let counter = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:08x}-{:04x}-4000-8000-{:012x}", std::process::id(), counter & 0xffff, nanos & 0xffff_ffff_ffff)
}

/// A transient dir pool and its directory, removed (with any domain left behind) on drop.
pub struct ScratchPool {
    pub name: String,
    pub directory: PathBuf,
    pub domains: Vec<String>,
}

impl ScratchPool {
    pub fn create() -> ScratchPool {
        let name = unique_name("hp-test-pool");
        let base = std::env::var("LIBVIRT_STATE_DIR").unwrap_or_else(|_| "/tmp".into());
        let directory = PathBuf::from(base).join(&name);
        std::fs::create_dir_all(&directory).expect("pool directory");
        let xml =
            format!("<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>", directory.display());
        connect(QEMU_DRIVER_URI).storage_pool_create_xml(&xml).expect("transient pool");
        ScratchPool { name, directory, domains: Vec::new() }
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        // Best effort, and never a panic while a failed test unwinds.
        let Ok(mut client) = driver_libvirt::client::Client::connect(tcp_stream(), QEMU_DRIVER_URI) else {
            return;
        };
        for domain_name in &self.domains {
            if let Ok(domain) = client.domain_lookup_by_name(domain_name) {
                client.domain_destroy(&domain).ok();
                client.domain_undefine_flags(&domain, 2).ok();
            }
        }
        if let Ok(pool) = client.storage_pool_lookup_by_name(&self.name) {
            if let Ok(volumes) = client.storage_pool_list_all_volumes(&pool) {
                for volume in volumes {
                    client.storage_vol_delete(&volume).ok();
                }
            }
            client.storage_pool_destroy(&pool).ok();
        }
        std::fs::remove_dir_all(&self.directory).ok();
    }
}

/// The bootable qcow2 guest image of the test bed (built on first use).
pub fn guest_boot_qcow2() -> PathBuf {
    libvirt_bed::guest_image().boot_qcow2.clone()
}
