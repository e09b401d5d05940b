//! Outgoing `wasi:http` requests: allowed only to the authorities the operator listed for the
//! provider, everything else is refused with `HTTP-request-denied`.

use std::future::Future;
use std::sync::Arc;

use http::uri::{Authority, Scheme, Uri};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::telemetry;

/// An allow-listed authority: a host and either an explicit port or the scheme's default one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedAuthority {
    host: String,
    port: Option<u16>,
}

/// Why an allow-list entry could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowed http host {entry:?} must be an authority host[:port], without scheme or path")]
pub struct InvalidAllowedHttpHost {
    pub entry: String,
}

/// The `WasiHttpHooks` of every instance: checks each request against the provider's
/// allow-list, then sends it with wasmtime's default client.
#[derive(Clone)]
pub(crate) struct OutgoingHttpAllowList {
    provider_name: Arc<str>,
    allowed_authorities: Arc<[AllowedAuthority]>,
}

impl OutgoingHttpAllowList {
    pub(crate) fn parse(provider_name: Arc<str>, entries: &[String]) -> Result<Self, InvalidAllowedHttpHost> {
        let allowed_authorities = entries
            .iter()
            .map(|entry| {
                let invalid = || InvalidAllowedHttpHost { entry: entry.clone() };
                let authority: Authority = entry.parse().map_err(|_| invalid())?;
                if authority.as_str() != entry || entry.contains('@') || authority.host().is_empty() {
                    return Err(invalid());
                }
                Ok(AllowedAuthority { host: authority.host().to_ascii_lowercase(), port: authority.port_u16() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OutgoingHttpAllowList { provider_name, allowed_authorities: allowed_authorities.into() })
    }

    /// Whether a request to `uri` may leave the host.
    pub(crate) fn permits(&self, uri: &Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        let default_port = if uri.scheme() == Some(&Scheme::HTTP) { 80 } else { 443 };
        let requested_port = authority.port_u16().unwrap_or(default_port);
        let requested_host = authority.host().to_ascii_lowercase();
        self.allowed_authorities
            .iter()
            .any(|allowed| allowed.host == requested_host && allowed.port.unwrap_or(default_port) == requested_port)
    }
}

type SendRequestOutcome = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutgoingHttpAllowList {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        response_errors: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendRequestOutcome> + Send> {
        drop(response_errors);
        if !self.permits(request.uri()) {
            tracing::warn!(
                provider = %self.provider_name,
                authority = request.uri().authority().map(Authority::as_str).unwrap_or_default(),
                "plugin http request to a host outside its allow-list denied"
            );
            telemetry::record_capability_denial(&self.provider_name, "http");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, connection) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let connection: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> = Box::new(connection);
            Ok((response.map(BodyExt::boxed_unsync), connection))
        })
    }
}
