//! Fetching the issuer's key set with outgoing `wasi:http` (a `GET` on `jwks_url`). The host
//! lets the request through only to hosts the operator granted the provider.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};
use wasip2::io::streams::StreamError;

use crate::config::HttpsOrHttpUrl;
use crate::verify::KeySetFetcher;

/// A key set larger than this is refused (real ones are a few KiB).
const MAX_KEY_SET_BYTES: usize = 1024 * 1024;
/// Connect, first-byte and between-bytes timeouts, in nanoseconds.
const FETCH_TIMEOUT_NANOS: u64 = 10_000_000_000;
const READ_CHUNK_BYTES: u64 = 64 * 1024;

/// Fetches over the host's `wasi:http/outgoing-handler`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasiHttpFetcher;

impl KeySetFetcher for WasiHttpFetcher {
    fn fetch_key_set(&self, url: &HttpsOrHttpUrl) -> Result<String, String> {
        let headers = Fields::from_list(&[("accept".to_owned(), b"application/json".to_vec())])
            .map_err(|error| format!("building the request headers failed: {error:?}"))?;
        let request = OutgoingRequest::new(headers);
        let scheme = if url.is_https { Scheme::Https } else { Scheme::Http };
        let request_built = request.set_method(&Method::Get).is_ok()
            && request.set_scheme(Some(&scheme)).is_ok()
            && request.set_authority(Some(&url.authority)).is_ok()
            && request.set_path_with_query(Some(&url.path_with_query)).is_ok();
        if !request_built {
            return Err(format!("{} is not a URL the host accepts", url.full));
        }
        let options = RequestOptions::new();
        // A host that does not support a timeout keeps its own; that is fine.
        let _ = options.set_connect_timeout(Some(FETCH_TIMEOUT_NANOS));
        let _ = options.set_first_byte_timeout(Some(FETCH_TIMEOUT_NANOS));
        let _ = options.set_between_bytes_timeout(Some(FETCH_TIMEOUT_NANOS));
        let body = request.body().map_err(|()| "the request body was already taken".to_owned())?;
        let pending = outgoing_handler::handle(request, Some(options))
            .map_err(|error| format!("the host refused the request to {}: {error:?}", url.full))?;
        OutgoingBody::finish(body, None).map_err(|error| format!("sending the request failed: {error:?}"))?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| "the response never arrived".to_owned())?
            .map_err(|()| "the response was already taken".to_owned())?
            .map_err(|error| format!("GET {} failed: {error:?}", url.full))?;
        let status = response.status();
        if !(200..300).contains(&status) {
            return Err(format!("GET {} answered HTTP {status}", url.full));
        }
        let incoming = response.consume().map_err(|()| "the response body was already taken".to_owned())?;
        let stream = incoming.stream().map_err(|()| "the response body stream was already taken".to_owned())?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(READ_CHUNK_BYTES) {
                Ok(chunk) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > MAX_KEY_SET_BYTES {
                        return Err(format!("the key set at {} exceeds {MAX_KEY_SET_BYTES} bytes", url.full));
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(error)) => {
                    return Err(format!("reading the key set failed: {}", error.to_debug_string()));
                }
            }
        }
        drop(stream);
        drop(IncomingBody::finish(incoming));
        String::from_utf8(bytes).map_err(|_| format!("the key set at {} is not UTF-8", url.full))
    }
}
