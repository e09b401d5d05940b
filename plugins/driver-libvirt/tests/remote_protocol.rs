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

#[test]
fn domain_life_cycle_through_raw_procedures_with_our_xml() {
    use driver_libvirt::config::NetworkAttachment;
    use driver_libvirt::domain_xml::{DomainDefinition, TemplateMetadata, domain_xml};
    use driver_libvirt::protocol::{DomainState, flags};

    let mut client = connect(TEST_DRIVER_URI);
    let name = common::unique_name("hp-raw");
    let definition = DomainDefinition {
        domain_name: name.clone(),
        uuid: None,
        domain_type: "test".into(),
        arch: "i686".into(),
        vcpu: 1,
        memory_mib: 64,
        disk_pool: "default-pool".into(),
        disk_volume: format!("{name}.qcow2"),
        network: NetworkAttachment::Network("default".into()),
        mac: Some("52:54:00:00:00:42".into()),
        vlan: None,
        vnc_listen: "127.0.0.1".into(),
        serial_port: None,
        console_log_file: None,
        instance_name: "raw".into(),
        template: TemplateMetadata { name: "t".into(), version: 1 },
        metadata: Vec::new(),
    };
    let xml = domain_xml(&definition).expect("xml");
    let domain = client.domain_define_xml_flags(&xml, flags::DOMAIN_DEFINE_VALIDATE).expect("define");
    assert_eq!(domain.name, name);
    assert_eq!(client.domain_lookup_by_name(&name).expect("lookup").uuid, domain.uuid);
    assert_eq!(client.domain_get_state(&domain).expect("state"), DomainState::ShutOff);
    client.domain_create(&domain).expect("start");
    assert_eq!(client.domain_get_state(&domain).expect("state"), DomainState::Running);
    client.domain_suspend(&domain).expect("suspend");
    assert_eq!(client.domain_get_state(&domain).expect("state"), DomainState::Paused);
    client.domain_resume(&domain).expect("resume");
    let live_xml = client.domain_get_xml_desc(&domain, 0).expect("xml desc");
    assert!(
        live_xml.contains("52:54:00:00:00:42") && live_xml.contains("urn:hyperplane:libvirt:instance:1"),
        "{live_xml}"
    );
    let listed = client.connect_get_all_domain_states().expect("all states");
    assert!(listed.iter().any(|(listed, state)| listed.name == name && *state == Some(DomainState::Running)));
    client.domain_destroy(&domain).expect("destroy");
    assert_eq!(client.domain_get_state(&domain).expect("state"), DomainState::ShutOff);
    client.domain_undefine_flags(&domain, flags::DOMAIN_UNDEFINE_SNAPSHOTS_METADATA).expect("undefine");
    assert!(matches!(
        client.domain_get_state(&domain),
        Err(ClientError::Remote { error, .. }) if error.code == error_code::NO_DOMAIN
    ));

    // The serial console on TCP, logged, passes libvirt's schema as well.
    let tcp_serial =
        DomainDefinition { serial_port: Some(7200), console_log_file: Some(format!("/tmp/{name}.log")), ..definition };
    let domain = client.domain_define_xml_flags(&domain_xml(&tcp_serial).expect("xml"), flags::DOMAIN_DEFINE_VALIDATE);
    let domain = domain.expect("define with a tcp serial console");
    let defined = client.domain_get_xml_desc(&domain, 0).expect("xml desc");
    let facts = driver_libvirt::domain_xml::domain_facts(&defined).expect("facts");
    assert_eq!((facts.serial_port, facts.active), (Some(7200), false), "{defined}");
    client.domain_undefine_flags(&domain, 0).expect("undefine");
}
