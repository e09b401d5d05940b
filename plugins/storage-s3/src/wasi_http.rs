//! [`HttpTransport`] over the host's outgoing `wasi:http` (`wasi:http/outgoing-handler`). The
//! host lets a request through only to hosts the operator granted the provider.

use std::io::Write;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

use crate::transport::{HttpRequest, HttpResponse, HttpTransport, ResponseBody};

/// Connect and first-byte timeout, in nanoseconds.
const CONNECT_TIMEOUT_NANOS: u64 = 30_000_000_000;
/// First-byte and between-bytes timeout, in nanoseconds (S3 may think a while before
/// answering a CompleteMultipartUpload).
const READ_TIMEOUT_NANOS: u64 = 300_000_000_000;

/// Sends over the host's `wasi:http/outgoing-handler`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasiHttpTransport;

/// A response body being read from the host. Field order matters: the stream must be dropped
/// before the body it came from.
pub struct WasiBody {
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
}

impl std::fmt::Debug for WasiBody {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("WasiBody").field("open", &self.stream.is_some()).finish()
    }
}

impl WasiBody {
    fn close(&mut self) {
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            drop(IncomingBody::finish(body));
        }
    }
}

impl Drop for WasiBody {
    fn drop(&mut self) {
        self.close();
    }
}

impl ResponseBody for WasiBody {
    fn read(&mut self, max: usize) -> Result<Vec<u8>, String> {
        let Some(stream) = &self.stream else { return Ok(Vec::new()) };
        match stream.blocking_read(max as u64) {
            Ok(piece) => Ok(piece),
            Err(StreamError::Closed) => {
                self.close();
                Ok(Vec::new())
            }
            Err(StreamError::LastOperationFailed(error)) => Err(error.to_debug_string()),
        }
    }
}

fn method_of(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_owned()),
    }
}

impl HttpTransport for WasiHttpTransport {
    type Body = WasiBody;

    fn send(&self, request: &HttpRequest<'_>) -> Result<HttpResponse<WasiBody>, String> {
        let mut entries: Vec<(String, Vec<u8>)> =
            request.headers.iter().map(|(name, value)| (name.clone(), value.clone().into_bytes())).collect();
        if !request.body.is_empty() || matches!(request.method, "PUT" | "POST") {
            entries.push(("content-length".into(), request.body.len().to_string().into_bytes()));
        }
        let headers =
            Fields::from_list(&entries).map_err(|error| format!("building the request headers failed: {error:?}"))?;
        let outgoing = OutgoingRequest::new(headers);
        let scheme = if request.https { Scheme::Https } else { Scheme::Http };
        let built = outgoing.set_method(&method_of(request.method)).is_ok()
            && outgoing.set_scheme(Some(&scheme)).is_ok()
            && outgoing.set_authority(Some(request.authority)).is_ok()
            && outgoing.set_path_with_query(Some(request.path_and_query)).is_ok();
        if !built {
            return Err(format!(
                "{} {}{} is not a request the host accepts",
                request.method, request.authority, request.path_and_query
            ));
        }
        let options = RequestOptions::new();
        // A host that does not support a timeout keeps its own; that is fine.
        let _ = options.set_connect_timeout(Some(CONNECT_TIMEOUT_NANOS));
        let _ = options.set_first_byte_timeout(Some(READ_TIMEOUT_NANOS));
        let _ = options.set_between_bytes_timeout(Some(READ_TIMEOUT_NANOS));
        let body = outgoing.body().map_err(|()| "the request body was already taken".to_owned())?;
        let pending: FutureIncomingResponse = outgoing_handler::handle(outgoing, Some(options))
            .map_err(|error| format!("the host refused the request to {}: {error:?}", request.authority))?;
        if !request.body.is_empty() {
            let mut stream = body.write().map_err(|()| "the request body stream was already taken".to_owned())?;
            stream.write_all(request.body).map_err(|error| format!("sending the request body failed: {error}"))?;
            stream.flush().map_err(|error| format!("sending the request body failed: {error}"))?;
            drop(stream);
        }
        OutgoingBody::finish(body, None).map_err(|error| format!("finishing the request failed: {error:?}"))?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| "the response never arrived".to_owned())?
            .map_err(|()| "the response was already taken".to_owned())?
            .map_err(|error| format!("{error:?}"))?;
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| "the response body was already taken".to_owned())?;
        let stream = incoming.stream().map_err(|()| "the response body stream was already taken".to_owned())?;
        Ok(HttpResponse { status, headers, body: WasiBody { stream: Some(stream), body: Some(incoming) } })
    }
}
