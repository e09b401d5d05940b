//! The remote-protocol client against a real libvirtd: handshake, node and host queries, error
//! decoding, domain life cycle and snapshots through raw procedures, and a volume upload
//! through a stream.

mod common;

use common::{TEST_DRIVER_URI, connect};
use driver_libvirt::client::ClientError;
use driver_libvirt::protocol::error_code;

#[test]
fn handshake_then_node_info_versions_and_capabilities() {
    let mut client = connect(TEST_DRIVER_URI);
    let info = client.node_get_info().expect("node info");
    assert!(info.cpus > 0 && info.memory_kib > 0, "{info:?}");
    let library_version = client.connect_get_lib_version().expect("lib version");
    assert!(library_version >= 1_000_000, "{library_version}");
    let capabilities = client.connect_get_capabilities().expect("capabilities");
    assert!(capabilities.contains("<capabilities>"), "{capabilities}");
}

#[test]
fn unknown_domain_is_a_remote_error_with_libvirt_code() {
    let mut client = connect(TEST_DRIVER_URI);
    match client.domain_lookup_by_name("hp-does-not-exist") {
        Err(ClientError::Remote { error, .. }) => {
            assert_eq!(error.code, error_code::NO_DOMAIN, "{error:?}");
            assert!(error.message.is_some(), "{error:?}");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    // The connection stays usable after an error reply.
    assert!(client.node_get_info().is_ok());
}
