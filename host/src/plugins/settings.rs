//! What the operator configures for the runtime and for each provider.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Process-wide settings of the plugin runtime.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    /// Where compiled components are cached (`<cache_dir>/<sha256>.cwasm`); `None` keeps them
    /// in memory only.
    pub cache_dir: Option<PathBuf>,
    /// An instance unused for this long is dropped (with what it holds open: a libvirt
    /// driver's connections) when the pool is next used; `None` keeps idle instances.
    pub idle_instance_timeout: Option<Duration>,
}

/// Where a provider's component comes from.
#[derive(Clone)]
pub enum ComponentSource {
    /// Component bytes already in memory; `label` names them in errors and logs.
    Bytes { label: String, bytes: Arc<[u8]> },
    /// A `.wasm` component file.
    File(PathBuf),
}

impl ComponentSource {
    /// A human-readable name of the source for errors and logs.
    pub fn label(&self) -> String {
        match self {
            ComponentSource::Bytes { label, .. } => label.clone(),
            ComponentSource::File(path) => path.display().to_string(),
        }
    }
}

impl fmt::Debug for ComponentSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComponentSource::Bytes { label, bytes } => {
                formatter.debug_struct("Bytes").field("label", label).field("length", &bytes.len()).finish()
            }
            ComponentSource::File(path) => formatter.debug_tuple("File").field(path).finish(),
        }
    }
}

/// An endpoint the host opens on a provider's behalf: `unix:///path`, `tcp://host:port`, or
/// `libvirt+tls://host:port[?pkipath=/dir]` (libvirt's TLS transport, with its certificate
/// files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointAddress {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
    /// `host:port`, in TLS as libvirt's clients speak it (`qemu+tls://`): the server's
    /// certificate checked against `pki.ca` and `host`, the client's `pki.certificate` shown,
    /// and the server's confirmation that it accepts it awaited.
    LibvirtTls {
        authority: String,
        pki: PkiFiles,
    },
}

/// The certificate files of a `libvirt+tls://` endpoint, laid out as libvirt's clients expect
/// them: in `/etc/pki` by default, or all three in the directory a `?pkipath=` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// PEM certificates of the authorities the server's certificate must chain to.
    pub ca: PathBuf,
    /// PEM certificate chain the client presents.
    pub certificate: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
}

impl PkiFiles {
    /// `/etc/pki/CA/cacert.pem`, `/etc/pki/libvirt/clientcert.pem`,
    /// `/etc/pki/libvirt/private/clientkey.pem`: where `virsh -c qemu+tls://…` looks.
    pub fn libvirt_default() -> PkiFiles {
        PkiFiles {
            ca: "/etc/pki/CA/cacert.pem".into(),
            certificate: "/etc/pki/libvirt/clientcert.pem".into(),
            key: "/etc/pki/libvirt/private/clientkey.pem".into(),
        }
    }

    /// `cacert.pem`, `clientcert.pem` and `clientkey.pem` in `directory` (libvirt's `pkipath`).
    pub fn in_directory(directory: &Path) -> PkiFiles {
        PkiFiles {
            ca: directory.join("cacert.pem"),
            certificate: directory.join("clientcert.pem"),
            key: directory.join("clientkey.pem"),
        }
    }
}

/// Why an endpoint address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointAddressError {
    #[error("endpoint address {address:?} must start with unix://, tcp:// or libvirt+tls://")]
    UnknownScheme { address: String },
    #[error("endpoint address {address:?} must name an absolute socket path, as in unix:///run/libvirt.sock")]
    RelativeUnixPath { address: String },
    #[error("endpoint address {address:?} must be tcp://host:port or libvirt+tls://host:port with a numeric port")]
    InvalidTcpAuthority { address: String },
    #[error("endpoint address {address:?}: the only parameter is pkipath=/absolute/directory (libvirt+tls:// only)")]
    InvalidParameter { address: String },
}

impl FromStr for EndpointAddress {
    type Err = EndpointAddressError;

    fn from_str(address: &str) -> Result<Self, Self::Err> {
        if let Some(path) = address.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(EndpointAddressError::RelativeUnixPath { address: address.to_string() });
            }
            return Ok(EndpointAddress::Unix(PathBuf::from(path)));
        }
        if let Some(authority) = address.strip_prefix("tcp://") {
            return Ok(EndpointAddress::Tcp(parse_authority(address, authority)?));
        }
        if let Some(rest) = address.strip_prefix("libvirt+tls://") {
            let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
            let pki = match query {
                "" => PkiFiles::libvirt_default(),
                _ => match query.strip_prefix("pkipath=") {
                    Some(directory) if directory.starts_with('/') && !directory.contains('&') => {
                        PkiFiles::in_directory(Path::new(directory))
                    }
                    _ => return Err(EndpointAddressError::InvalidParameter { address: address.to_string() }),
                },
            };
            return Ok(EndpointAddress::LibvirtTls { authority: parse_authority(address, authority)?, pki });
        }
        Err(EndpointAddressError::UnknownScheme { address: address.to_string() })
    }
}

/// The `host:port` of a `tcp://` or `libvirt+tls://` address (a trailing `/` allowed).
fn parse_authority(address: &str, authority: &str) -> Result<String, EndpointAddressError> {
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let invalid = || EndpointAddressError::InvalidTcpAuthority { address: address.to_string() };
    let (host, port) = authority.rsplit_once(':').ok_or_else(invalid)?;
    let host_is_valid = !host.is_empty() && !host.contains('/') && !host.contains('@') && !host.contains('?');
    if !host_is_valid || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    Ok(authority.to_string())
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Unix(path) => write!(formatter, "unix://{}", path.display()),
            EndpointAddress::Tcp(authority) => write!(formatter, "tcp://{authority}"),
            EndpointAddress::LibvirtTls { authority, pki } => {
                write!(formatter, "libvirt+tls://{authority}")?;
                match pki.ca.parent() {
                    Some(directory) if *pki != PkiFiles::libvirt_default() => {
                        write!(formatter, "?pkipath={}", directory.display())
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Everything the host needs to run one provider: its component, its configuration and the
/// capabilities the operator granted it.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The provider's name, unique in the process; scopes its state and labels its metrics.
    pub name: String,
    pub component: ComponentSource,
    /// Passed to `init` on every fresh instance.
    pub config_json: String,
    /// Deadline of every call, including instantiating a fresh instance for it.
    pub call_timeout: Duration,
    /// Cap on each linear memory of one instance.
    pub memory_limit_bytes: usize,
    /// Named endpoints granted to the provider.
    pub endpoints: BTreeMap<String, EndpointAddress>,
    /// Outgoing HTTP allow-list: authorities `host[:port]`; without a port only the scheme's
    /// default port is allowed.
    pub allowed_http_hosts: Vec<String>,
    /// Cap on the estimated size of one response (strings and list lengths).
    pub max_response_bytes: usize,
}
