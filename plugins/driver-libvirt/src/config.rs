//! The provider config (JSON given to `init`): parsed with unknown keys refused, then validated
//! once into [`Settings`], one [`HostSettings`] per libvirt host.
//!
//! ```json
//! { "hosts": [ { "name": "kvm-1", "endpoint": "libvirt-kvm-1", "network": "default" },
//!              { "name": "kvm-2", "endpoint": "libvirt-kvm-2", "bridge": "br0", "address": "10.0.0.12" } ],
//!   "pool": "default", "domain_type": "auto" }
//! ```
//! Every host key except `name` and `endpoint` may also be given at the top level, as the
//! default for hosts that omit it.

use std::collections::BTreeSet;

use hyperplane_guest::types::Error;
use serde::Deserialize;

pub const DEFAULT_URI: &str = "qemu:///system";
pub const DEFAULT_POOL: &str = "default";
pub const DEFAULT_VNC_LISTEN: &str = "127.0.0.1";

/// Declares a config struct with its own fields plus every host option (`serde(flatten)` would
/// silently accept unknown keys), and its conversion to [`HostOptions`].
macro_rules! with_host_options {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: $type:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $type,)*
            /// libvirt connection URI opened over the endpoint (`qemu:///system`; `test:///default`).
            pub uri: Option<String>,
            /// Storage pool for templates and instance disks (`default`).
            pub pool: Option<String>,
            /// libvirt network for instance NICs; exclusive with `bridge`.
            pub network: Option<String>,
            /// Host bridge for instance NICs; exclusive with `network`. Neither: a user-mode NIC.
            pub bridge: Option<String>,
            /// `auto` (kvm when the host's capabilities offer it for its arch, else qemu, else
            /// the first type offered), `kvm`, `qemu`, or another libvirt domain type (`test`).
            pub domain_type: Option<String>,
            /// Directory on the libvirt host where serial consoles are logged
            /// (`<dir>/<domain>.log`).
            pub console_log_dir: Option<String>,
            /// Address VNC (and TCP serial consoles) listen on, on the libvirt host (`127.0.0.1`).
            pub vnc_listen: Option<String>,
            /// Ports for serial consoles over raw TCP (`"10000-10999"`), one per instance: with
            /// it, each instance's serial console listens on a port of the range and `console`
            /// answers that port; without it, the serial console is a pty and `console` answers
            /// VNC.
            pub serial_ports: Option<String>,
            /// Address clients use to reach the host's consoles (defaults to `vnc_listen`).
            pub address: Option<String>,
        }

        impl $name {
            fn host_options(&self) -> HostOptions {
                HostOptions {
                    uri: self.uri.clone(),
                    pool: self.pool.clone(),
                    network: self.network.clone(),
                    bridge: self.bridge.clone(),
                    domain_type: self.domain_type.clone(),
                    console_log_dir: self.console_log_dir.clone(),
                    vnc_listen: self.vnc_listen.clone(),
                    serial_ports: self.serial_ports.clone(),
                    address: self.address.clone(),
                }
            }
        }
    };
}

with_host_options! {
    /// The provider's `config` table as the operator writes it; the host options given here are
    /// the defaults of every host.
    pub struct LibvirtConfig {
        /// The libvirt hosts of this provider; at least one.
        #[serde(default)]
        pub hosts: Vec<HostConfig>,
    }
}

with_host_options! {
    /// One entry of `hosts`.
    pub struct HostConfig {
        /// The host's id in Hyperplane (`instance-spec.host`, `host-report.id`).
        pub name: String,
        /// The name of the endpoint the operator granted for this host's libvirtd.
        pub endpoint: String,
    }
}

/// The host options of one level (a host entry or the top level), before defaults apply.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    pub uri: Option<String>,
    pub pool: Option<String>,
    pub network: Option<String>,
    pub bridge: Option<String>,
    pub domain_type: Option<String>,
    pub console_log_dir: Option<String>,
    pub vnc_listen: Option<String>,
    pub serial_ports: Option<String>,
    pub address: Option<String>,
}

/// An inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Parses `first-last` (or one port); `None` for anything else, or an empty range.
    pub fn parse(text: &str) -> Option<PortRange> {
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let (first, last) = (first.trim().parse::<u16>().ok()?, last.trim().parse::<u16>().ok()?);
        (first > 0 && first <= last).then_some(PortRange { first, last })
    }

    /// How many ports the range holds.
    pub fn count(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    /// The `index`th port, wrapping around the range.
    pub fn nth(&self, index: u32) -> u16 {
        // Less than `count()` ≤ 65535 after the modulo: fits.
        self.first + (index % self.count()) as u16
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}-{}", self.first, self.last)
    }
}

/// How instance NICs attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkAttachment {
    Network(String),
    Bridge(String),
    /// QEMU user-mode networking: no host setup, no VLAN.
    User,
}

/// Which libvirt domain type to define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainTypeChoice {
    Auto,
    Fixed(String),
}

/// A validated host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    pub name: String,
    pub endpoint: String,
    pub uri: String,
    pub pool: String,
    pub network: NetworkAttachment,
    pub domain_type: DomainTypeChoice,
    pub console_log_dir: Option<String>,
    pub vnc_listen: String,
    /// Serial consoles over TCP on these ports; `None`: pty serial consoles, VNC as `console`.
    pub serial_ports: Option<PortRange>,
    pub address: String,
}

/// The validated provider config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub hosts: Vec<HostSettings>,
}

impl Settings {
    /// Parses and validates the JSON `init` receives; errors are `invalid` and name the key.
    pub fn from_json(json: &str) -> Result<Settings, Error> {
        Settings::try_from(hyperplane_guest::config::<LibvirtConfig>(json)?)
    }

    pub fn host(&self, name: &str) -> Option<&HostSettings> {
        self.hosts.iter().find(|host| host.name == name)
    }
}

fn invalid(message: String) -> Error {
    Error::Invalid(format!("invalid config: {message}"))
}

fn non_empty(key: String, value: Option<String>, default: Option<&str>) -> Result<Option<String>, Error> {
    match value {
        Some(value) if value.trim().is_empty() => Err(invalid(format!("`{key}` must not be empty"))),
        Some(value) => Ok(Some(value)),
        None => Ok(default.map(str::to_owned)),
    }
}

impl TryFrom<LibvirtConfig> for Settings {
    type Error = Error;

    fn try_from(config: LibvirtConfig) -> Result<Settings, Error> {
        if config.hosts.is_empty() {
            return Err(invalid("`hosts` must list at least one libvirt host".into()));
        }
        let defaults = config.host_options();
        let mut seen_names = BTreeSet::new();
        let mut hosts = Vec::with_capacity(config.hosts.len());
        for (index, host) in config.hosts.into_iter().enumerate() {
            let key = |name: &str| format!("hosts[{index}].{name}");
            if host.name.is_empty() || host.name.contains('/') || host.name.trim() != host.name {
                return Err(invalid(format!("`{}` must be non-empty, without `/` or surrounding spaces", key("name"))));
            }
            if !seen_names.insert(host.name.clone()) {
                return Err(invalid(format!("`{}`: duplicate host name `{}`", key("name"), host.name)));
            }
            if host.endpoint.trim().is_empty() {
                return Err(invalid(format!("`{}` must not be empty", key("endpoint"))));
            }
            let options = host.host_options();
            let pick = |name: &str, own: Option<String>, default: Option<String>, fallback: Option<&str>| {
                let source_key = if own.is_some() { key(name) } else { name.to_owned() };
                non_empty(source_key, own.or(default), fallback)
            };
            let uri = pick("uri", options.uri, defaults.uri.clone(), Some(DEFAULT_URI))?.unwrap_or_default();
            let pool = pick("pool", options.pool, defaults.pool.clone(), Some(DEFAULT_POOL))?.unwrap_or_default();
            // A host that names either NIC kind overrides both top-level keys.
            let (network, bridge) = if options.network.is_some() || options.bridge.is_some() {
                (options.network, options.bridge)
            } else {
                (defaults.network.clone(), defaults.bridge.clone())
            };
            let network = match (pick("network", network, None, None)?, pick("bridge", bridge, None, None)?) {
                (Some(_), Some(_)) => {
                    return Err(invalid(format!("`{}` and `{}` are exclusive", key("network"), key("bridge"))));
                }
                (Some(network), None) => NetworkAttachment::Network(network),
                (None, Some(bridge)) => NetworkAttachment::Bridge(bridge),
                (None, None) => NetworkAttachment::User,
            };
            let domain_type = match pick(
                "domain_type",
                options.domain_type,
                defaults.domain_type.clone(),
                Some("auto"),
            )?
            .as_deref()
            {
                Some("auto") | None => DomainTypeChoice::Auto,
                Some(fixed) if fixed.chars().all(|character| character.is_ascii_alphanumeric()) => {
                    DomainTypeChoice::Fixed(fixed.to_owned())
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "`{}`: `{other}` is not `auto`, `kvm`, `qemu` or another libvirt domain type",
                        key("domain_type")
                    )));
                }
            };
            let console_log_dir =
                pick("console_log_dir", options.console_log_dir, defaults.console_log_dir.clone(), None)?;
            if let Some(directory) = &console_log_dir
                && !directory.starts_with('/')
            {
                return Err(invalid(format!("`{}` must be an absolute path", key("console_log_dir"))));
            }
            let vnc_listen =
                pick("vnc_listen", options.vnc_listen, defaults.vnc_listen.clone(), Some(DEFAULT_VNC_LISTEN))?
                    .unwrap_or_default();
            let serial_ports = pick("serial_ports", options.serial_ports, defaults.serial_ports.clone(), None)?
                .map(|ports| {
                    PortRange::parse(&ports).ok_or_else(|| {
                        invalid(format!("`{}`: `{ports}` is not a port range like `10000-10999`", key("serial_ports")))
                    })
                })
                .transpose()?;
            let address =
                pick("address", options.address, defaults.address.clone(), Some(&vnc_listen))?.unwrap_or_default();
            hosts.push(HostSettings {
                name: host.name,
                endpoint: host.endpoint,
                uri,
                pool,
                network,
                domain_type,
                console_log_dir,
                vnc_listen,
                serial_ports,
                address,
            });
        }
        Ok(Settings { hosts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_invalid(json: &str, expected_fragments: &[&str]) {
        match Settings::from_json(json) {
            Err(Error::Invalid(message)) => {
                for fragment in expected_fragments {
                    assert!(message.contains(fragment), "{message:?} does not contain {fragment:?}");
                }
            }
            other => panic!("expected invalid for {json}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_to_every_host() -> Result<(), Error> {
        let settings = Settings::from_json(
            r#"{"hosts": [{"name": "a", "endpoint": "lv-a"},
                          {"name": "b", "endpoint": "lv-b", "bridge": "br0", "pool": "fast", "address": "10.0.0.2"}],
                "uri": "test:///default", "network": "default", "domain_type": "test", "console_log_dir": "/var/log/hp"}"#,
        )?;
        let [first, second] = settings.hosts.as_slice() else { panic!("two hosts expected") };
        assert_eq!(
            first,
            &HostSettings {
                name: "a".into(),
                endpoint: "lv-a".into(),
                uri: "test:///default".into(),
                pool: "default".into(),
                network: NetworkAttachment::Network("default".into()),
                domain_type: DomainTypeChoice::Fixed("test".into()),
                console_log_dir: Some("/var/log/hp".into()),
                vnc_listen: "127.0.0.1".into(),
                serial_ports: None,
                address: "127.0.0.1".into(),
            }
        );
        assert_eq!(second.network, NetworkAttachment::Bridge("br0".into()));
        assert_eq!((second.pool.as_str(), second.address.as_str()), ("fast", "10.0.0.2"));
        let minimal = Settings::from_json(r#"{"hosts": [{"name": "a", "endpoint": "e"}]}"#)?;
        assert_eq!(minimal.hosts[0].uri, DEFAULT_URI);
        assert_eq!(minimal.hosts[0].network, NetworkAttachment::User);
        assert_eq!(minimal.hosts[0].domain_type, DomainTypeChoice::Auto);
        let serial = Settings::from_json(
            r#"{"hosts": [{"name": "a", "endpoint": "e", "serial_ports": "10000-10001"},
                          {"name": "b", "endpoint": "f"}], "serial_ports": "7000"}"#,
        )?;
        let ports: Vec<Option<PortRange>> = serial.hosts.iter().map(|host| host.serial_ports).collect();
        assert_eq!(ports, [Some(PortRange { first: 10000, last: 10001 }), Some(PortRange { first: 7000, last: 7000 })]);
        let range = PortRange { first: 10000, last: 10001 };
        assert_eq!((range.count(), range.nth(0), range.nth(1), range.nth(2)), (2, 10000, 10001, 10000));
        Ok(())
    }

    #[test]
    fn errors_name_the_offending_key() {
        check_invalid("{}", &["`hosts`"]);
        check_invalid(r#"{"hosts": [{"name": "a"}]}"#, &["hosts[0]", "endpoint"]);
        check_invalid(r#"{"hosts": [{"name": "a", "endpoint": "e", "pol": "x"}]}"#, &["pol"]);
        check_invalid(r#"{"hosts": [], "uri": 3}"#, &["uri"]);
        check_invalid(
            r#"{"hosts": [{"name": "a", "endpoint": "e"}, {"name": "a", "endpoint": "f"}]}"#,
            &["hosts[1].name", "duplicate"],
        );
        check_invalid(
            r#"{"hosts": [{"name": "a", "endpoint": "e", "network": "n", "bridge": "b"}]}"#,
            &["hosts[0].network", "hosts[0].bridge", "exclusive"],
        );
        check_invalid(
            r#"{"hosts": [{"name": "a", "endpoint": "e", "domain_type": "k v m"}]}"#,
            &["hosts[0].domain_type"],
        );
        check_invalid(
            r#"{"hosts": [{"name": "a", "endpoint": "e", "console_log_dir": "logs"}]}"#,
            &["console_log_dir", "absolute"],
        );
        check_invalid(r#"{"hosts": [{"name": "a", "endpoint": "e"}], "pool": ""}"#, &["`pool`", "empty"]);
        check_invalid(r#"{"hosts": [{"name": "", "endpoint": "e"}]}"#, &["hosts[0].name"]);
        for ports in ["10-", "9-3", "0-10", "70000", "a-b"] {
            let json = format!(r#"{{"hosts": [{{"name": "a", "endpoint": "e", "serial_ports": "{ports}"}}]}}"#);
            check_invalid(&json, &["hosts[0].serial_ports", ports, "port range"]);
        }
    }
}
