//! The HTTP the S3 logic needs, as a small trait: send one request with its whole body, get the
//! status, the headers and a body to pull in pieces. The component implements it with outgoing
//! `wasi:http`; native tests with a plain HTTP/1.1 client against a real server.

/// One request. `headers` holds everything to send besides `Host` (taken from `authority`)
/// and, for a body, `Content-Length` (the transport sets it from `body`).
#[derive(Debug, Clone)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub https: bool,
    /// `host` or `host:port`; the `Host` the request was signed for.
    pub authority: &'a str,
    /// The encoded path and query, as signed (`/bucket/key?partNumber=1&uploadId=…`).
    pub path_and_query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// The body of a response, read in pieces.
pub trait ResponseBody {
    /// Up to `max` bytes; an empty vector at the end. An error means the connection broke.
    fn read(&mut self, max: usize) -> Result<Vec<u8>, String>;
}

/// A response whose body has not been read yet.
#[derive(Debug)]
pub struct HttpResponse<B> {
    pub status: u16,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: B,
}

impl<B: ResponseBody> HttpResponse<B> {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(header, _)| header == name).map(|(_, value)| value.as_str())
    }

    /// Reads the rest of the body, refusing more than `limit` bytes (S3's XML answers are small).
    pub fn read_to_string(&mut self, limit: usize) -> Result<String, String> {
        let mut bytes = Vec::new();
        loop {
            let piece = self.body.read(64 * 1024)?;
            if piece.is_empty() {
                break;
            }
            bytes.extend_from_slice(&piece);
            if bytes.len() > limit {
                return Err(format!("the response body exceeds {limit} bytes"));
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Sends requests. An `Err` is a request that got no HTTP answer (refused, unreachable,
/// timed out, not allowed by the host).
pub trait HttpTransport {
    type Body: ResponseBody;
    fn send(&self, request: &HttpRequest<'_>) -> Result<HttpResponse<Self::Body>, String>;
}
