//! `libvirt+tls://` endpoints: the client side of libvirt's TLS transport (what
//! `qemu+tls://` URIs use), with libvirt's certificate files. The server's certificate must
//! chain to the endpoint's CA and name its host; the client presents its own certificate; and
//! once libvirtd has checked it, libvirtd sends one byte, `1`, before any RPC (it closes the
//! connection instead when it refuses the client). The plugin gets the stream after that byte.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::settings::PkiFiles;

/// Why a TLS endpoint cannot be used as configured. Names files and hosts: for the operator
/// (start-up errors, the server's log), never for the plugin.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{role} {path}: {reason}")]
    File { role: &'static str, path: String, reason: String },
    #[error("client certificate {certificate} and key {key} do not go together: {reason}")]
    KeyMismatch { certificate: String, key: String, reason: String },
    #[error("{host:?} is neither a DNS name nor an IP address a certificate can name")]
    InvalidServerName { host: String },
    #[error("TLS is not available: {0}")]
    Unavailable(String),
}

/// libvirtd's refusal of the client after the handshake: no confirmation byte.
#[derive(Debug, thiserror::Error)]
#[error("libvirtd did not accept the client certificate")]
struct ClientNotAccepted;

/// Everything a connection to one endpoint needs, read from its files.
pub struct TlsEndpoint {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl TlsEndpoint {
    /// Reads the certificate files and checks that `authority`'s host can be named by a
    /// certificate. Done for every new connection, so renewed files take effect without a
    /// restart.
    pub fn load(authority: &str, pki: &PkiFiles) -> Result<TlsEndpoint, TlsSetupError> {
        let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsSetupError::InvalidServerName { host: host.to_string() })?;
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates("CA certificate", &pki.ca)? {
            roots.add(certificate).map_err(|error| file_error("CA certificate", &pki.ca, error))?;
        }
        let chain = read_certificates("client certificate", &pki.certificate)?;
        let key = PrivateKeyDer::from_pem_file(&pki.key).map_err(|error| file_error("client key", &pki.key, error))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsSetupError::Unavailable(error.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|error| TlsSetupError::KeyMismatch {
                certificate: pki.certificate.display().to_string(),
                key: pki.key.display().to_string(),
                reason: error.to_string(),
            })?;
        Ok(TlsEndpoint { connector: TlsConnector::from(Arc::new(config)), server_name })
    }

    /// The TLS handshake over `stream`, then libvirtd's confirmation that it accepts the client.
    pub async fn connect(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let mut stream = self.connector.connect(self.server_name.clone(), stream).await?;
        let mut confirmation = [0];
        match stream.read(&mut confirmation).await {
            Ok(1) if confirmation[0] == 1 => Ok(stream),
            Ok(_) => Err(io::Error::other(ClientNotAccepted)),
            Err(error) if describe_failure(&error).is_some() => Err(error),
            Err(_) => Err(io::Error::other(ClientNotAccepted)),
        }
    }
}

fn read_certificates(role: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| file_error(role, path, error))?;
    if certificates.is_empty() {
        return Err(file_error(role, path, "holds no PEM certificate"));
    }
    Ok(certificates)
}

fn file_error(role: &'static str, path: &Path, reason: impl ToString) -> TlsSetupError {
    TlsSetupError::File { role, path: path.display().to_string(), reason: reason.to_string() }
}

/// Why a TLS connection could not be opened, in words fit for the plugin: what failed, without
/// the files, names or addresses involved (the server's log has those). `None` for an error
/// that is not about TLS.
pub fn describe_failure(error: &io::Error) -> Option<String> {
    let inner = error.get_ref()?;
    if inner.downcast_ref::<TlsSetupError>().is_some() {
        return Some("its TLS certificate files cannot be used (the server's log says why)".into());
    }
    if inner.downcast_ref::<ClientNotAccepted>().is_some() {
        return Some("TLS: libvirtd did not accept the client certificate".into());
    }
    let rustls_error = inner.downcast_ref::<rustls::Error>()?;
    Some(match rustls_error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "TLS: the server's certificate is not signed by the endpoint's CA".into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "TLS: the server's certificate does not name the endpoint's host".into(),
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(_) => "TLS: the server's certificate is not valid".into(),
        rustls::Error::AlertReceived(alert) => {
            format!("TLS: the server refused the handshake ({alert:?}); does it trust the client certificate?")
        }
        other => format!("TLS handshake failed: {other}"),
    })
}
