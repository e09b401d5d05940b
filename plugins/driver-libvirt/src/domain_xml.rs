//! The XML the driver writes (domain, volumes, snapshot) and the facts it reads back from
//! libvirt's XML (MAC, VNC port, disks, Hyperplane metadata, snapshot details, host
//! capabilities). Everything written is escaped; everything read goes through `roxmltree`.
//!
//! What an instance becomes (see [`DomainDefinition`]): a persistent domain named
//! `hp-<instance id>` whose `<uuid>` is the instance id (when it is a UUID, as the host's ids
//! are); `<vcpu>`; `<memory unit='MiB'>`; one virtio disk `vda` from the qcow2 overlay volume
//! `hp-<id>.qcow2` in the host's pool, backed by the template's volume; one virtio NIC on the
//! host's network or bridge (or user-mode) with the requested MAC and optional VLAN tag; VNC on
//! the host's `vnc_listen` address with an automatic port; a serial console (a pty, or with the
//! host's `serial_ports` a raw TCP socket on `vnc_listen` at the instance's port of the range),
//! logged to `<console_log_dir>/hp-<id>.log` when configured; ACPI; `on_poweroff` destroy,
//! `on_reboot` restart, `on_crash` destroy; and `<metadata>` with the instance name, template
//! and the spec's metadata in the [`METADATA_NAMESPACE`] namespace.

use std::fmt::Write as _;

use hyperplane_guest::types::Error;

use crate::config::NetworkAttachment;

/// XML namespace of the driver's `<metadata>` element.
pub const METADATA_NAMESPACE: &str = "urn:hyperplane:libvirt:instance:1";

/// Escapes text for XML element content and single- or double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '\'' => escaped.push_str("&apos;"),
            '"' => escaped.push_str("&quot;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The template an instance's disk comes from, as recorded in its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateMetadata {
    pub name: String,
    pub version: u32,
}

/// Everything needed to write a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDefinition {
    pub domain_name: String,
    pub uuid: Option<String>,
    pub domain_type: String,
    pub arch: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub disk_pool: String,
    pub disk_volume: String,
    pub network: NetworkAttachment,
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    pub vnc_listen: String,
    /// The serial console listens on raw TCP at this port, on `vnc_listen`; `None`: a pty.
    pub serial_port: Option<u16>,
    pub console_log_file: Option<String>,
    pub instance_name: String,
    pub template: TemplateMetadata,
    pub metadata: Vec<(String, String)>,
}

/// The domain XML for `definition`. Fails with `invalid` for a VLAN on a user-mode NIC.
pub fn domain_xml(definition: &DomainDefinition) -> Result<String, Error> {
    let mut xml = String::with_capacity(2048);
    // `write!` into a String cannot fail.
    let _ = writeln!(xml, "<domain type='{}'>", escape(&definition.domain_type));
    let _ = writeln!(xml, "  <name>{}</name>", escape(&definition.domain_name));
    if let Some(uuid) = &definition.uuid {
        let _ = writeln!(xml, "  <uuid>{}</uuid>", escape(uuid));
    }
    write_metadata(&mut xml, definition);
    let _ = writeln!(xml, "  <memory unit='MiB'>{}</memory>", definition.memory_mib);
    let _ = writeln!(xml, "  <vcpu>{}</vcpu>", definition.vcpu);
    let _ = writeln!(
        xml,
        "  <os>\n    <type arch='{}'>hvm</type>\n    <boot dev='hd'/>\n  </os>",
        escape(&definition.arch)
    );
    let x86 = matches!(definition.arch.as_str(), "x86_64" | "i686");
    let _ = writeln!(xml, "  <features><acpi/>{}</features>", if x86 { "<apic/>" } else { "" });
    if definition.domain_type == "kvm" {
        xml.push_str("  <cpu mode='host-passthrough'/>\n");
    }
    xml.push_str(
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n",
    );
    xml.push_str("  <devices>\n");
    let _ = writeln!(
        xml,
        "    <disk type='volume' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      \
         <source pool='{}' volume='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>",
        escape(&definition.disk_pool),
        escape(&definition.disk_volume)
    );
    write_interface(&mut xml, definition)?;
    write_serial_console(&mut xml, definition);
    if matches!(definition.domain_type.as_str(), "kvm" | "qemu") {
        // The guest agent channel, through which libvirt can learn addresses on bridges.
        xml.push_str("    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n");
    }
    let _ = writeln!(xml, "    <graphics type='vnc' autoport='yes' listen='{}'/>", escape(&definition.vnc_listen));
    xml.push_str("  </devices>\n</domain>\n");
    Ok(xml)
}

/// The serial port and the console that is its alias, with the same source.
fn write_serial_console(xml: &mut String, definition: &DomainDefinition) {
    let (kind, source) = match definition.serial_port {
        Some(port) => (
            "tcp",
            format!(
                "      <source mode='bind' host='{}' service='{port}'/>\n      <protocol type='raw'/>\n",
                escape(&definition.vnc_listen)
            ),
        ),
        None => ("pty", String::new()),
    };
    let _ = write!(xml, "    <serial type='{kind}'>\n{source}");
    if let Some(log_file) = &definition.console_log_file {
        let _ = writeln!(xml, "      <log file='{}' append='on'/>", escape(log_file));
    }
    xml.push_str("      <target port='0'/>\n    </serial>\n");
    let _ =
        write!(xml, "    <console type='{kind}'>\n{source}      <target type='serial' port='0'/>\n    </console>\n");
}

fn write_metadata(xml: &mut String, definition: &DomainDefinition) {
    let _ = writeln!(xml, "  <metadata>\n    <hp:instance xmlns:hp='{METADATA_NAMESPACE}'>");
    let _ = writeln!(xml, "      <hp:name>{}</hp:name>", escape(&definition.instance_name));
    let _ = writeln!(
        xml,
        "      <hp:template name='{}' version='{}'/>",
        escape(&definition.template.name),
        definition.template.version
    );
    for (key, value) in &definition.metadata {
        let _ = writeln!(xml, "      <hp:entry key='{}'>{}</hp:entry>", escape(key), escape(value));
    }
    xml.push_str("    </hp:instance>\n  </metadata>\n");
}

fn write_interface(xml: &mut String, definition: &DomainDefinition) -> Result<(), Error> {
    let (interface_type, source) = match &definition.network {
        NetworkAttachment::Network(network) => ("network", format!("<source network='{}'/>", escape(network))),
        NetworkAttachment::Bridge(bridge) => ("bridge", format!("<source bridge='{}'/>", escape(bridge))),
        NetworkAttachment::User => {
            if definition.vlan.is_some() {
                return Err(Error::Invalid(
                    "a vlan tag needs a `network` or `bridge` nic; this host uses user-mode networking".into(),
                ));
            }
            ("user", String::new())
        }
    };
    let _ = write!(xml, "    <interface type='{interface_type}'>\n      ");
    if !source.is_empty() {
        let _ = write!(xml, "{source}\n      ");
    }
    if let Some(mac) = &definition.mac {
        let _ = write!(xml, "<mac address='{}'/>\n      ", escape(mac));
    }
    xml.push_str("<model type='virtio'/>\n");
    if let Some(vlan) = definition.vlan {
        let _ = writeln!(xml, "      <vlan><tag id='{vlan}'/></vlan>");
    }
    xml.push_str("    </interface>\n");
    Ok(())
}

/// The XML of a template volume: a raw container of exactly `capacity_bytes`, which the image
/// is uploaded into (a qcow2 image stays qcow2 inside; overlays name its real format).
pub fn template_volume_xml(volume_name: &str, capacity_bytes: u64) -> String {
    format!(
        "<volume>\n  <name>{}</name>\n  <capacity unit='bytes'>{capacity_bytes}</capacity>\n  \
         <target><format type='raw'/></target>\n</volume>\n",
        escape(volume_name)
    )
}

/// The XML of an instance's qcow2 overlay backed by the template volume at `backing_path`.
pub fn overlay_volume_xml(volume_name: &str, capacity_bytes: u64, backing_path: &str, backing_format: &str) -> String {
    format!(
        "<volume>\n  <name>{}</name>\n  <capacity unit='bytes'>{capacity_bytes}</capacity>\n  \
         <target><format type='qcow2'/></target>\n  <backingStore>\n    <path>{}</path>\n    \
         <format type='{}'/>\n  </backingStore>\n</volume>\n",
        escape(volume_name),
        escape(backing_path),
        escape(backing_format)
    )
}

/// The XML of a standalone volume of `format` (`raw` or `qcow2`, no backing store): the target
/// of a clone (`storage_vol_create_xml_from`), which flattens a qcow2 chain into it.
pub fn standalone_volume_xml(volume_name: &str, capacity_bytes: u64, format: &str) -> String {
    format!(
        "<volume>\n  <name>{}</name>\n  <capacity unit='bytes'>{capacity_bytes}</capacity>\n  \
         <target><format type='{}'/></target>\n</volume>\n",
        escape(volume_name),
        escape(format)
    )
}

/// What a volume's XML (`storage_vol_get_xml_desc`) says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFacts {
    /// `target/format/@type` as libvirt sees it (for dir pools: probed from the file).
    pub format: Option<String>,
    /// Bytes.
    pub capacity: u64,
    /// Whether it has a backing store.
    pub backed: bool,
}

pub fn volume_facts(xml: &str) -> Result<VolumeFacts, Error> {
    let document = parse(xml, "volume")?;
    let root = document.root_element();
    let format = child(root, "target")
        .and_then(|target| child(target, "format"))
        .and_then(|format| format.attribute("type"))
        .map(str::to_owned);
    let capacity_node = child(root, "capacity");
    let unit_factor: u64 = match capacity_node.and_then(|node| node.attribute("unit")).unwrap_or("bytes") {
        "bytes" | "B" | "b" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" | "m" => 1 << 20,
        "GiB" | "G" | "g" => 1 << 30,
        other => {
            return Err(Error::Backend(hyperplane_guest::types::BackendError {
                code: -1,
                message: format!("libvirt volume xml has a capacity in unknown unit `{other}`"),
            }));
        }
    };
    let capacity = capacity_node
        .and_then(|node| node.text())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(|value| value.saturating_mul(unit_factor))
        .unwrap_or(0);
    let backed = child(root, "backingStore").is_some_and(|backing| child(backing, "path").is_some());
    Ok(VolumeFacts { format, capacity, backed })
}

/// The XML of a new snapshot.
pub fn snapshot_xml(name: &str, description: &str) -> String {
    format!(
        "<domainsnapshot>\n  <name>{}</name>\n  <description>{}</description>\n</domainsnapshot>\n",
        escape(name),
        escape(description)
    )
}

fn parse<'input>(xml: &'input str, what: &str) -> Result<roxmltree::Document<'input>, Error> {
    roxmltree::Document::parse(xml).map_err(|error| {
        Error::Backend(hyperplane_guest::types::BackendError {
            code: -1,
            message: format!("libvirt returned {what} xml that does not parse: {error}"),
        })
    })
}

fn child<'a, 'input>(node: roxmltree::Node<'a, 'input>, name: &str) -> Option<roxmltree::Node<'a, 'input>> {
    node.children().find(|candidate| candidate.has_tag_name(name))
}

/// What the driver reads from a domain's XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainFacts {
    pub mac: Option<String>,
    /// Present only while the domain runs (libvirt reports `-1` otherwise).
    pub vnc_port: Option<u16>,
    /// The port a TCP serial console (the first serial device) listens on.
    pub serial_port: Option<u16>,
    /// Whether the XML is a running domain's (libvirt gives it an `id`).
    pub active: bool,
    /// `(pool, volume)` of every volume-backed disk.
    pub disk_volumes: Vec<(String, String)>,
    pub template: Option<TemplateMetadata>,
}

pub fn domain_facts(xml: &str) -> Result<DomainFacts, Error> {
    let document = parse(xml, "domain")?;
    let root = document.root_element();
    let mut facts = DomainFacts { active: root.attribute("id").is_some(), ..DomainFacts::default() };
    let mut first_serial = true;
    if let Some(devices) = child(root, "devices") {
        for device in devices.children().filter(roxmltree::Node::is_element) {
            match device.tag_name().name() {
                "interface" if facts.mac.is_none() => {
                    facts.mac = child(device, "mac").and_then(|mac| mac.attribute("address")).map(str::to_owned);
                }
                "graphics" if device.attribute("type") == Some("vnc") && facts.vnc_port.is_none() => {
                    facts.vnc_port = device.attribute("port").and_then(|port| port.parse::<u16>().ok());
                }
                "serial" if std::mem::take(&mut first_serial) && device.attribute("type") == Some("tcp") => {
                    facts.serial_port = child(device, "source")
                        .filter(|source| source.attribute("mode") == Some("bind"))
                        .and_then(|source| source.attribute("service"))
                        .and_then(|port| port.parse::<u16>().ok());
                }
                "disk" => {
                    if let Some(source) = child(device, "source")
                        && let (Some(pool), Some(volume)) = (source.attribute("pool"), source.attribute("volume"))
                    {
                        facts.disk_volumes.push((pool.to_owned(), volume.to_owned()));
                    }
                }
                _ => {}
            }
        }
    }
    facts.template = child(root, "metadata")
        .and_then(|metadata| metadata.children().find(|node| node.tag_name().namespace() == Some(METADATA_NAMESPACE)))
        .and_then(|instance| {
            instance.children().find(|node| {
                node.tag_name().name() == "template" && node.tag_name().namespace() == Some(METADATA_NAMESPACE)
            })
        })
        .and_then(|template| {
            Some(TemplateMetadata {
                name: template.attribute("name")?.to_owned(),
                version: template.attribute("version")?.parse().ok()?,
            })
        });
    Ok(facts)
}

/// What the driver reads from a snapshot's XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub description: String,
    pub creation_time: i64,
    /// libvirt's snapshot state: `running`, `paused`, `shutoff`, `disk-snapshot`, ….
    pub state: String,
}

pub fn snapshot_facts(xml: &str) -> Result<SnapshotFacts, Error> {
    let document = parse(xml, "snapshot")?;
    let root = document.root_element();
    let text = |name: &str| child(root, name).and_then(|node| node.text()).unwrap_or_default().trim().to_owned();
    Ok(SnapshotFacts {
        description: text("description"),
        creation_time: text("creationTime").parse().unwrap_or(0),
        state: text("state"),
    })
}

/// What the driver reads from `connect_get_capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCapabilities {
    /// The host's arch in libvirt's spelling (`x86_64`, `aarch64`, `i686`).
    pub arch: String,
    pub cpu_model: Option<String>,
    /// Domain types offered for guests of the host's arch (or of the first guest arch).
    pub domain_types: Vec<String>,
    /// The arch those domain types are for.
    pub guest_arch: String,
}

pub fn host_capabilities(xml: &str) -> Result<HostCapabilities, Error> {
    let document = parse(xml, "capabilities")?;
    let root = document.root_element();
    let host_cpu = child(root, "host").and_then(|host| child(host, "cpu"));
    let arch =
        host_cpu.and_then(|cpu| child(cpu, "arch")).and_then(|arch| arch.text()).unwrap_or_default().trim().to_owned();
    let cpu_model = host_cpu
        .and_then(|cpu| child(cpu, "model"))
        .and_then(|model| model.text())
        .map(|model| model.trim().to_owned());
    let guest_arches: Vec<roxmltree::Node<'_, '_>> =
        root.children().filter(|node| node.has_tag_name("guest")).filter_map(|guest| child(guest, "arch")).collect();
    let chosen = guest_arches
        .iter()
        .find(|guest_arch| guest_arch.attribute("name") == Some(arch.as_str()))
        .or_else(|| guest_arches.first());
    let domain_types = chosen
        .map(|guest_arch| {
            guest_arch
                .children()
                .filter(|node| node.has_tag_name("domain"))
                .filter_map(|domain| domain.attribute("type").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let guest_arch = chosen.and_then(|guest_arch| guest_arch.attribute("name")).unwrap_or(&arch).to_owned();
    Ok(HostCapabilities { arch, cpu_model, domain_types, guest_arch })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> DomainDefinition {
        DomainDefinition {
            domain_name: "hp-0193a8f0-0000-7000-8000-000000000001".into(),
            uuid: Some("0193a8f0-0000-7000-8000-000000000001".into()),
            domain_type: "kvm".into(),
            arch: "x86_64".into(),
            vcpu: 2,
            memory_mib: 1024,
            disk_pool: "default".into(),
            disk_volume: "hp-0193a8f0-0000-7000-8000-000000000001.qcow2".into(),
            network: NetworkAttachment::Network("default".into()),
            mac: Some("52:54:00:12:34:56".into()),
            vlan: None,
            vnc_listen: "127.0.0.1".into(),
            serial_port: None,
            console_log_file: None,
            instance_name: "web <1> & 'two'".into(),
            template: TemplateMetadata { name: "debian".into(), version: 3 },
            metadata: vec![("team".into(), "a\"b".into())],
        }
    }

    fn check(definition: &DomainDefinition, expected_fragments: &[&str], absent_fragments: &[&str]) {
        let xml = domain_xml(definition).unwrap_or_else(|error| panic!("domain xml failed: {error:?}"));
        assert!(roxmltree::Document::parse(&xml).is_ok(), "not well-formed:\n{xml}");
        for fragment in expected_fragments {
            assert!(xml.contains(fragment), "{fragment:?} missing in\n{xml}");
        }
        for fragment in absent_fragments {
            assert!(!xml.contains(fragment), "{fragment:?} unexpected in\n{xml}");
        }
    }

    #[test]
    fn domain_xml_carries_the_spec() {
        check(
            &definition(),
            &[
                "<domain type='kvm'>",
                "<name>hp-0193a8f0-0000-7000-8000-000000000001</name>",
                "<uuid>0193a8f0-0000-7000-8000-000000000001</uuid>",
                "<memory unit='MiB'>1024</memory>",
                "<vcpu>2</vcpu>",
                "<type arch='x86_64'>hvm</type>",
                "<acpi/><apic/>",
                "<cpu mode='host-passthrough'/>",
                "<on_poweroff>destroy</on_poweroff>",
                "<source pool='default' volume='hp-0193a8f0-0000-7000-8000-000000000001.qcow2'/>",
                "<target dev='vda' bus='virtio'/>",
                "<interface type='network'>",
                "<source network='default'/>",
                "<mac address='52:54:00:12:34:56'/>",
                "<model type='virtio'/>",
                "<serial type='pty'>",
                "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>",
                "<target type='virtio' name='org.qemu.guest_agent.0'/>",
                "<hp:name>web &lt;1&gt; &amp; &apos;two&apos;</hp:name>",
                "<hp:template name='debian' version='3'/>",
                "<hp:entry key='team'>a&quot;b</hp:entry>",
            ],
            &["<vlan>", "<log "],
        );
    }

    #[test]
    fn domain_xml_variants() {
        let mut bridged = definition();
        bridged.network = NetworkAttachment::Bridge("br0".into());
        bridged.vlan = Some(42);
        bridged.mac = None;
        bridged.domain_type = "qemu".into();
        bridged.console_log_file = Some("/var/log/hp/hp-1.log".into());
        check(
            &bridged,
            &[
                "<domain type='qemu'>",
                "<interface type='bridge'>",
                "<source bridge='br0'/>",
                "<vlan><tag id='42'/></vlan>",
                "<log file='/var/log/hp/hp-1.log' append='on'/>",
            ],
            &["<mac ", "host-passthrough"],
        );
        let mut tcp_serial = bridged.clone();
        tcp_serial.serial_port = Some(10001);
        let source = "<source mode='bind' host='127.0.0.1' service='10001'/>\n      <protocol type='raw'/>";
        check(
            &tcp_serial,
            &[
                &format!("<serial type='tcp'>\n      {source}\n      <log file='/var/log/hp/hp-1.log' append='on'/>"),
                &format!("<console type='tcp'>\n      {source}\n      <target type='serial' port='0'/>"),
            ],
            &["type='pty'"],
        );
        let mut user = definition();
        user.network = NetworkAttachment::User;
        user.arch = "aarch64".into();
        check(&user, &["<interface type='user'>", "<features><acpi/></features>"], &["<source network", "<apic/>"]);
        user.vlan = Some(7);
        assert!(matches!(domain_xml(&user), Err(Error::Invalid(message)) if message.contains("vlan")));
    }

    #[test]
    fn domain_facts_round_trip_through_our_own_xml() -> Result<(), Error> {
        let xml = domain_xml(&definition())?;
        let facts = domain_facts(&xml)?;
        assert_eq!(facts.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!((facts.vnc_port, facts.serial_port, facts.active), (None, None, false));
        assert_eq!(
            facts.disk_volumes,
            vec![("default".to_owned(), "hp-0193a8f0-0000-7000-8000-000000000001.qcow2".to_owned())]
        );
        assert_eq!(facts.template, Some(TemplateMetadata { name: "debian".into(), version: 3 }));
        let live = xml.replace("autoport='yes'", "port='5901' autoport='yes'");
        assert_eq!(domain_facts(&live)?.vnc_port, Some(5901));
        let serial = domain_xml(&DomainDefinition { serial_port: Some(10002), ..definition() })?;
        let running = serial.replacen("<domain type='kvm'>", "<domain type='kvm' id='7'>", 1);
        let facts = domain_facts(&running)?;
        assert_eq!((facts.serial_port, facts.active), (Some(10002), true));
        assert!(domain_facts("<domain><name>").is_err());
        Ok(())
    }

    #[test]
    fn volume_and_snapshot_xml_are_escaped() -> Result<(), Error> {
        let overlay = overlay_volume_xml("hp-1.qcow2", 10 << 30, "/var/lib/libvirt/images/t&1", "qcow2");
        assert!(overlay.contains("<capacity unit='bytes'>10737418240</capacity>"));
        assert!(overlay.contains("<path>/var/lib/libvirt/images/t&amp;1</path>"));
        assert!(overlay.contains("<backingStore>") && overlay.contains("<format type='qcow2'/>"));
        let template = template_volume_xml("hyperplane-template-debian-v3", 1234);
        assert!(
            template.contains("<capacity unit='bytes'>1234</capacity>") && template.contains("<format type='raw'/>")
        );
        let standalone = standalone_volume_xml("hp-1.export-ab.qcow2", 5, "qcow2");
        assert!(standalone.contains("<format type='qcow2'/>") && !standalone.contains("backingStore"));
        let facts = volume_facts(
            "<volume type='file'><name>t</name><capacity unit='bytes'>4194304</capacity>\
             <target><path>/p/t</path><format type='raw'/></target></volume>",
        )?;
        assert_eq!(facts, VolumeFacts { format: Some("raw".into()), capacity: 4 << 20, backed: false });
        let facts = volume_facts(
            "<volume><capacity unit='GiB'>1</capacity><target><format type='qcow2'/></target>\
             <backingStore><path>/p/t</path><format type='raw'/></backingStore></volume>",
        )?;
        assert_eq!(facts, VolumeFacts { format: Some("qcow2".into()), capacity: 1 << 30, backed: true });
        let snapshot = snapshot_xml("before <upgrade>", "it's");
        assert!(snapshot.contains("<name>before &lt;upgrade&gt;</name>") && snapshot.contains("it&apos;s"));
        Ok(())
    }

    #[test]
    fn snapshot_and_capability_facts() -> Result<(), Error> {
        let snapshot = snapshot_facts(
            "<domainsnapshot><name>s1</name><description>nightly</description><state>running</state>\
             <creationTime>1763800000</creationTime><domain type='test'/></domainsnapshot>",
        )?;
        assert_eq!(
            snapshot,
            SnapshotFacts { description: "nightly".into(), creation_time: 1_763_800_000, state: "running".into() }
        );
        let capabilities = host_capabilities(
            "<capabilities><host><cpu><arch>x86_64</arch><model>Skylake</model></cpu></host>\
             <guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/></arch></guest>\
             <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>\
             </capabilities>",
        )?;
        assert_eq!(capabilities.arch, "x86_64");
        assert_eq!(capabilities.cpu_model.as_deref(), Some("Skylake"));
        assert_eq!(capabilities.domain_types, vec!["qemu".to_owned(), "kvm".to_owned()]);
        Ok(())
    }
}
