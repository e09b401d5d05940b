//! The blob store over S3: `put` (single `PUT` or a multipart upload), `get` (ranges streamed
//! into the sink), `stat` (`HEAD`), `delete` and `list` (ListObjectsV2 with `start-after`),
//! generic over an [`HttpTransport`] so that it runs natively against a real server in tests.

use std::time::{SystemTime, UNIX_EPOCH};

use hyperplane_guest::log;
use hyperplane_guest::storage::{ByteRange, Error, ObjectInfo, ObjectPage, ObjectSink, ObjectSource, PIECE_BYTES};

use crate::config::S3Settings;
use crate::sigv4::{EMPTY_SHA256, Signer, canonical_query, sha256_hex, uri_encode};
use crate::time::{amz_date, parse_iso8601_ms, parse_rfc1123_ms};
use crate::transport::{HttpRequest, HttpResponse, HttpTransport, ResponseBody};
use crate::xml;

/// S3's longest key, in bytes (with the configured prefix).
const MAX_KEY_BYTES: usize = 1024;
/// S3's largest page.
const MAX_LIST_KEYS: u32 = 1000;
/// S3's most parts per upload.
const MAX_PARTS: u32 = 10_000;
/// The largest XML answer read (listings of 1000 keys are a few hundred KiB).
const MAX_XML_BYTES: usize = 16 * 1024 * 1024;

/// A configured store talking to S3 through `T`.
#[derive(Debug)]
pub struct S3Store<T> {
    settings: S3Settings,
    signer: Signer,
    transport: T,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// S3's `<Code>` and `<Message>` of an error body, as `Code: Message` (empty when absent).
fn s3_error_detail(body: &str) -> String {
    let code = xml::first_text(body, "Code").unwrap_or_default();
    let message = xml::first_text(body, "Message").unwrap_or_default();
    match (code.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => code,
        (true, false) => message,
        (false, false) => format!("{code}: {message}"),
    }
}

impl<T: HttpTransport> S3Store<T> {
    pub fn new(settings: S3Settings, transport: T) -> Self {
        let signer = Signer {
            access_key_id: settings.access_key_id.clone(),
            secret_access_key: settings.secret_access_key.clone(),
            region: settings.region.clone(),
            service: "s3".into(),
        };
        S3Store { settings, signer, transport }
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// The key as stored in the bucket (under the prefix), after checking it.
    fn full_key(&self, key: &str) -> Result<String, Error> {
        if key.is_empty() {
            return Err(Error::Invalid("the key is empty".into()));
        }
        if key.chars().any(char::is_control) {
            return Err(Error::Invalid(format!("the key {key:?} contains a control character")));
        }
        if key.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
            return Err(Error::Invalid(format!("the key `{key}` has an empty, `.` or `..` segment")));
        }
        let full = self.with_prefix(key);
        if full.len() > MAX_KEY_BYTES {
            return Err(Error::Invalid(format!("the key `{key}` is longer than S3's {MAX_KEY_BYTES} bytes")));
        }
        Ok(full)
    }

    fn with_prefix(&self, key: &str) -> String {
        match &self.settings.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.to_owned(),
        }
    }

    /// The key as the host knows it, or `None` for a key outside the prefix.
    fn without_prefix<'k>(&self, full_key: &'k str) -> Option<&'k str> {
        match &self.settings.prefix {
            Some(prefix) => full_key.strip_prefix(prefix.as_str())?.strip_prefix('/'),
            None => Some(full_key),
        }
    }

    fn authority(&self) -> String {
        if self.settings.path_style {
            self.settings.endpoint.authority.clone()
        } else {
            format!("{}.{}", self.settings.bucket, self.settings.endpoint.authority)
        }
    }

    /// The encoded path of the bucket (`/bucket` path-style, `` virtual-hosted) plus `suffix`.
    fn path(&self, full_key: Option<&str>) -> String {
        let bucket = if self.settings.path_style {
            format!("/{}", uri_encode(&self.settings.bucket, false))
        } else {
            String::new()
        };
        match full_key {
            Some(key) => format!("{bucket}/{}", uri_encode(key, true)),
            None if bucket.is_empty() => "/".to_owned(),
            None => bucket,
        }
    }

    /// Signs and sends one request; a request without an HTTP answer is `unavailable`.
    fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        extra_headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<HttpResponse<T::Body>, Error> {
        let authority = self.authority();
        let date = amz_date(now_unix_ms() / 1000);
        let payload_sha256 = if body.is_empty() { EMPTY_SHA256.to_owned() } else { sha256_hex(body) };
        let query = canonical_query(query);
        let mut signed: Vec<(String, String)> = vec![
            ("host".into(), authority.clone()),
            ("x-amz-content-sha256".into(), payload_sha256.clone()),
            ("x-amz-date".into(), date.clone()),
        ];
        signed.extend(extra_headers.iter().map(|(name, value)| ((*name).to_owned(), value.clone())));
        let authorization = self.signer.authorization(
            &date,
            &crate::sigv4::SigningRequest {
                method,
                encoded_path: path,
                canonical_query: &query,
                headers: &signed,
                payload_sha256: &payload_sha256,
            },
        );
        let mut headers: Vec<(String, String)> = signed.into_iter().filter(|(name, _)| name != "host").collect();
        headers.push(("authorization".into(), authorization));
        let path_and_query = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
        let request = HttpRequest {
            method,
            https: self.settings.endpoint.https,
            authority: &authority,
            path_and_query: &path_and_query,
            headers: &headers,
            body,
        };
        self.transport.send(&request).map_err(|error| {
            Error::Unavailable(format!(
                "{method} {}{path}: no answer from S3: {error}",
                self.settings.endpoint.authority
            ))
        })
    }

    /// The error for an answer the operation did not expect: 403 `denied`, 5xx `unavailable`,
    /// the rest `internal`; with S3's code and message when the body has them.
    fn failure(&self, what: &str, mut response: HttpResponse<T::Body>) -> Error {
        let status = response.status;
        let detail = response.read_to_string(64 * 1024).map(|body| s3_error_detail(&body)).unwrap_or_default();
        let detail = if detail.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status} {detail}") };
        let message = format!("{what}: {detail}");
        match status {
            401 | 403 => Error::Denied(message),
            500..=599 => Error::Unavailable(message),
            _ => Error::Internal(message),
        }
    }

    fn read_xml(&self, what: &str, response: &mut HttpResponse<T::Body>) -> Result<String, Error> {
        response
            .read_to_string(MAX_XML_BYTES)
            .map_err(|error| Error::Unavailable(format!("{what}: reading the answer failed: {error}")))
    }

    /// Stores everything `source` yields under `key`: one `PUT` when it fits under the
    /// threshold, a multipart upload otherwise (aborted on any failure). At most one part is
    /// held in memory.
    pub fn put<S: ObjectSource + ?Sized>(&self, key: &str, source: &S) -> Result<ObjectInfo, Error> {
        let full_key = self.full_key(key)?;
        let threshold = usize::try_from(self.settings.multipart_threshold_bytes).unwrap_or(usize::MAX);
        let read = |max: usize| -> Result<Vec<u8>, Error> {
            let max = u32::try_from(max).unwrap_or(PIECE_BYTES).min(PIECE_BYTES);
            source
                .read(max)
                .map_err(|error| Error::Unavailable(format!("reading the object for `{key}` failed: {error}")))
        };
        // Read until the object is known to fit (the end came) or to exceed the threshold.
        let hint = source.size().map_or(0, |size| usize::try_from(size).unwrap_or(usize::MAX).min(threshold + 1));
        let mut buffer = Vec::with_capacity(hint);
        let mut ended = false;
        while buffer.len() <= threshold {
            let piece = read(threshold + 1 - buffer.len())?;
            if piece.is_empty() {
                ended = true;
                break;
            }
            buffer.reserve_exact(piece.len());
            buffer.extend_from_slice(&piece);
        }
        if ended {
            let path = self.path(Some(&full_key));
            let response = self.send("PUT", &path, &[], &[], &buffer)?;
            if response.status != 200 {
                return Err(self.failure(&format!("PUT `{key}`"), response));
            }
            return Ok(ObjectInfo { key: key.to_owned(), size: buffer.len() as u64, modified_ms: now_unix_ms() });
        }
        self.put_multipart(key, &full_key, buffer, &read)
    }

    fn put_multipart(
        &self,
        key: &str,
        full_key: &str,
        mut buffer: Vec<u8>,
        read: &dyn Fn(usize) -> Result<Vec<u8>, Error>,
    ) -> Result<ObjectInfo, Error> {
        let path = self.path(Some(full_key));
        let mut response = self.send("POST", &path, &[("uploads", "")], &[], &[])?;
        if response.status != 200 {
            return Err(self.failure(&format!("starting a multipart upload of `{key}`"), response));
        }
        let answer = self.read_xml(&format!("starting a multipart upload of `{key}`"), &mut response)?;
        let upload_id = xml::first_text(&answer, "UploadId").filter(|id| !id.is_empty()).ok_or_else(|| {
            Error::Internal(format!("starting a multipart upload of `{key}`: no UploadId in {answer:?}"))
        })?;
        log::debug("multipart upload started", &[("key", key), ("upload_id", &upload_id)]);

        let outcome = self.upload_parts(key, &path, &upload_id, &mut buffer, read);
        drop(buffer);
        let outcome = outcome.and_then(|(size, etags)| {
            self.complete_multipart(key, &path, &upload_id, &etags)?;
            Ok(size)
        });
        match outcome {
            Ok(size) => Ok(ObjectInfo { key: key.to_owned(), size, modified_ms: now_unix_ms() }),
            Err(error) => {
                match self.send("DELETE", &path, &[("uploadId", &upload_id)], &[], &[]) {
                    Ok(response) if matches!(response.status, 200 | 204 | 404) => {
                        log::debug("multipart upload aborted", &[("key", key), ("upload_id", &upload_id)]);
                    }
                    Ok(response) => {
                        let abort_error = self.failure("aborting", response);
                        log::warn(
                            "aborting a multipart upload failed; the bucket's lifecycle rules must clean it up",
                            &[("key", key), ("upload_id", &upload_id), ("error", &format!("{abort_error:?}"))],
                        );
                    }
                    Err(abort_error) => log::warn(
                        "aborting a multipart upload failed; the bucket's lifecycle rules must clean it up",
                        &[("key", key), ("upload_id", &upload_id), ("error", &format!("{abort_error:?}"))],
                    ),
                }
                Err(error)
            }
        }
    }

    /// Uploads `buffer` and the rest of the source in parts of `part_size_bytes`; returns the
    /// total size and the parts' ETags.
    fn upload_parts(
        &self,
        key: &str,
        path: &str,
        upload_id: &str,
        buffer: &mut Vec<u8>,
        read: &dyn Fn(usize) -> Result<Vec<u8>, Error>,
    ) -> Result<(u64, Vec<String>), Error> {
        let part_size = usize::try_from(self.settings.part_size_bytes).unwrap_or(usize::MAX);
        buffer.reserve_exact((part_size + 1).saturating_sub(buffer.len()));
        let mut etags = Vec::new();
        let mut size = 0u64;
        loop {
            let ended = if buffer.len() >= part_size {
                false
            } else {
                let piece = read(part_size - buffer.len())?;
                buffer.extend_from_slice(&piece);
                piece.is_empty()
            };
            if buffer.len() >= part_size || (ended && !buffer.is_empty()) {
                let take = buffer.len().min(part_size);
                let number = u32::try_from(etags.len() + 1).unwrap_or(u32::MAX);
                if number > MAX_PARTS {
                    return Err(Error::Invalid(format!(
                        "`{key}` needs more than {MAX_PARTS} parts of {part_size} bytes; raise `part_size_bytes`"
                    )));
                }
                etags.push(self.upload_part(key, path, upload_id, number, &buffer[..take])?);
                size += take as u64;
                buffer.drain(..take);
            }
            if ended && buffer.is_empty() {
                return Ok((size, etags));
            }
        }
    }

    fn upload_part(&self, key: &str, path: &str, upload_id: &str, number: u32, bytes: &[u8]) -> Result<String, Error> {
        let number_text = number.to_string();
        let response = self.send("PUT", path, &[("partNumber", &number_text), ("uploadId", upload_id)], &[], bytes)?;
        if response.status != 200 {
            return Err(self.failure(&format!("uploading part {number} of `{key}`"), response));
        }
        response
            .header("etag")
            .map(str::to_owned)
            .ok_or_else(|| Error::Internal(format!("uploading part {number} of `{key}`: no ETag in the answer")))
    }

    fn complete_multipart(&self, key: &str, path: &str, upload_id: &str, etags: &[String]) -> Result<(), Error> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (index, etag) in etags.iter().enumerate() {
            body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                index + 1,
                xml::escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let what = format!("completing the multipart upload of `{key}`");
        let mut response = self.send(
            "POST",
            path,
            &[("uploadId", upload_id)],
            &[("content-type", "application/xml".to_owned())],
            body.as_bytes(),
        )?;
        if response.status != 200 {
            return Err(self.failure(&what, response));
        }
        // S3 may answer 200 and still fail, with an <Error> document.
        let answer = self.read_xml(&what, &mut response)?;
        if !xml::elements(&answer, "Error").is_empty() {
            return Err(Error::Internal(format!("{what}: {}", s3_error_detail(&answer))));
        }
        Ok(())
    }

    /// Writes the object (or `range` of it) into `sink` in pieces; returns the bytes written.
    pub fn get<S: ObjectSink + ?Sized>(&self, key: &str, range: Option<ByteRange>, sink: &S) -> Result<u64, Error> {
        let full_key = self.full_key(key)?;
        if let Some(ByteRange { offset, length: Some(0) }) = range {
            // An empty range has no HTTP form; it is valid when it starts inside the object.
            let info = self.stat(key)?.ok_or_else(|| Error::NotFound(key.to_owned()))?;
            return if offset < info.size {
                Ok(0)
            } else {
                Err(Error::Invalid(format!(
                    "the range starts at {offset}, at or past the end of `{key}` ({} bytes)",
                    info.size
                )))
            };
        }
        let range_header = range.map(|ByteRange { offset, length }| match length {
            Some(length) => format!("bytes={offset}-{}", offset.saturating_add(length - 1)),
            None => format!("bytes={offset}-"),
        });
        let extra: Vec<(&str, String)> = range_header.into_iter().map(|value| ("range", value)).collect();
        let path = self.path(Some(&full_key));
        let mut response = self.send("GET", &path, &[], &extra, &[])?;
        let (mut skip, mut remaining) = match (response.status, range) {
            (206, _) | (200, None) => (0, u64::MAX),
            // A server that ignores `Range` sends everything: cut the range out here.
            (200, Some(ByteRange { offset, length })) => (offset, length.unwrap_or(u64::MAX)),
            (404, _) => return Err(Error::NotFound(key.to_owned())),
            (416, Some(ByteRange { offset, .. })) => {
                return Err(Error::Invalid(format!("the range starts at {offset}, at or past the end of `{key}`")));
            }
            _ => return Err(self.failure(&format!("GET `{key}`"), response)),
        };
        let mut written = 0u64;
        while remaining > 0 {
            let piece = response
                .body
                .read(PIECE_BYTES as usize)
                .map_err(|error| Error::Unavailable(format!("reading `{key}` from S3 failed: {error}")))?;
            if piece.is_empty() {
                break;
            }
            let mut piece = &piece[..];
            if skip > 0 {
                let skipped = usize::try_from(skip).unwrap_or(usize::MAX).min(piece.len());
                piece = &piece[skipped..];
                skip -= skipped as u64;
            }
            let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(piece.len());
            if take == 0 {
                continue;
            }
            sink.write(&piece[..take])
                .map_err(|error| Error::Unavailable(format!("writing `{key}` to the receiver failed: {error}")))?;
            written += take as u64;
            remaining -= take as u64;
        }
        if skip > 0 {
            return Err(Error::Invalid(format!("the range starts at or past the end of `{key}`")));
        }
        Ok(written)
    }

    /// The object under `key`, or `None`.
    pub fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, Error> {
        let full_key = self.full_key(key)?;
        let path = self.path(Some(&full_key));
        let response = self.send("HEAD", &path, &[], &[], &[])?;
        match response.status {
            200 => {
                let size = response
                    .header("content-length")
                    .and_then(|length| length.trim().parse::<u64>().ok())
                    .ok_or_else(|| Error::Internal(format!("HEAD `{key}`: no Content-Length in the answer")))?;
                let modified_ms = response.header("last-modified").and_then(parse_rfc1123_ms).unwrap_or(0);
                Ok(Some(ObjectInfo { key: key.to_owned(), size, modified_ms }))
            }
            404 => Ok(None),
            _ => Err(self.failure(&format!("HEAD `{key}`"), response)),
        }
    }

    /// Removes the object; a missing one is fine.
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        let full_key = self.full_key(key)?;
        let path = self.path(Some(&full_key));
        let response = self.send("DELETE", &path, &[], &[], &[])?;
        match response.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.failure(&format!("DELETE `{key}`"), response)),
        }
    }

    /// The keys (as the host knows them) of multipart uploads in progress under `prefix`
    /// (ListMultipartUploads, first 1000): uploads a failed `put` would have left behind.
    pub fn multipart_uploads(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let full_prefix = self.with_prefix(prefix);
        let path = self.path(None);
        let what = format!("listing the multipart uploads under `{prefix}`");
        let mut response = self.send("GET", &path, &[("uploads", ""), ("prefix", &full_prefix)], &[], &[])?;
        if response.status != 200 {
            return Err(self.failure(&what, response));
        }
        let answer = self.read_xml(&what, &mut response)?;
        Ok(xml::elements(&answer, "Upload")
            .into_iter()
            .filter_map(|upload| xml::first_text(upload, "Key"))
            .filter_map(|full_key| self.without_prefix(&full_key).map(str::to_owned))
            .collect())
    }

    /// Objects whose key starts with `prefix`, after `cursor`, at most `limit` (capped at 1000).
    pub fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ObjectPage, Error> {
        if limit == 0 {
            return Err(Error::Invalid("the limit is 0".into()));
        }
        if prefix.chars().any(char::is_control) {
            return Err(Error::Invalid(format!("the prefix {prefix:?} contains a control character")));
        }
        let full_prefix = self.with_prefix(prefix);
        let start_after = cursor.map(|cursor| self.with_prefix(cursor));
        let max_keys = limit.min(MAX_LIST_KEYS).to_string();
        let mut query = vec![("list-type", "2"), ("prefix", full_prefix.as_str()), ("max-keys", max_keys.as_str())];
        if let Some(start_after) = &start_after {
            query.push(("start-after", start_after.as_str()));
        }
        let path = self.path(None);
        let what = format!("listing `{prefix}`");
        let mut response = self.send("GET", &path, &query, &[], &[])?;
        if response.status != 200 {
            return Err(self.failure(&what, response));
        }
        let answer = self.read_xml(&what, &mut response)?;
        let mut objects = Vec::new();
        for contents in xml::elements(&answer, "Contents") {
            let full_key = xml::first_text(contents, "Key")
                .ok_or_else(|| Error::Internal(format!("{what}: an entry has no Key")))?;
            let size = xml::first_text(contents, "Size")
                .and_then(|size| size.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::Internal(format!("{what}: `{full_key}` has no Size")))?;
            let modified_ms =
                xml::first_text(contents, "LastModified").and_then(|text| parse_iso8601_ms(text.trim())).unwrap_or(0);
            if let Some(key) = self.without_prefix(&full_key) {
                objects.push(ObjectInfo { key: key.to_owned(), size, modified_ms });
            }
        }
        let truncated = xml::first_text(&answer, "IsTruncated").is_some_and(|text| text.trim() == "true");
        let next_cursor = if truncated { objects.last().map(|object| object.key.clone()) } else { None };
        Ok(ObjectPage { objects, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use hyperplane_guest::storage::{MemorySink, MemorySource};

    use super::*;

    /// What a fake server was asked: method, authority, path and query, headers.
    type Seen = (String, String, String, Vec<(String, String)>);
    /// A scripted answer: status, headers, body.
    type Answer = (u16, Vec<(String, String)>, Vec<u8>);

    /// Answers requests from a script and records them.
    #[derive(Default)]
    struct ScriptedTransport {
        answers: RefCell<VecDeque<Answer>>,
        seen: RefCell<Vec<Seen>>,
    }

    struct BytesBody(VecDeque<u8>);

    impl ResponseBody for BytesBody {
        fn read(&mut self, max: usize) -> Result<Vec<u8>, String> {
            // Small pieces, to exercise reassembly.
            let take = max.min(7).min(self.0.len());
            Ok(self.0.drain(..take).collect())
        }
    }

    impl ScriptedTransport {
        fn answer(self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Self {
            let headers = headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
            self.answers.borrow_mut().push_back((status, headers, body.to_vec()));
            self
        }
    }

    impl HttpTransport for &ScriptedTransport {
        type Body = BytesBody;

        fn send(&self, request: &HttpRequest<'_>) -> Result<HttpResponse<BytesBody>, String> {
            self.seen.borrow_mut().push((
                request.method.to_owned(),
                request.authority.to_owned(),
                request.path_and_query.to_owned(),
                request.headers.to_vec(),
            ));
            let (status, headers, body) = self.answers.borrow_mut().pop_front().ok_or("connection refused")?;
            Ok(HttpResponse { status, headers, body: BytesBody(body.into()) })
        }
    }

    fn settings(extra: &str) -> S3Settings {
        S3Settings::from_config(&format!(
            r#"{{"endpoint": "http://s3.test:9000", "bucket": "bkt", "access_key_id": "AK",
                "secret_access_key": "SK", "prefix": "p/q"{extra}}}"#
        ))
        .expect("valid config")
    }

    #[test]
    fn path_style_and_virtual_hosted_requests_are_addressed_and_signed() {
        let transport = ScriptedTransport::default().answer(200, &[("content-length", "3")], b"");
        let store = S3Store::new(settings(""), &transport);
        assert_eq!(store.stat("a b/c+d").expect("stat").map(|info| info.size), Some(3));
        let transport_virtual = ScriptedTransport::default().answer(404, &[], b"");
        let store = S3Store::new(settings(r#", "path_style": false"#), &transport_virtual);
        assert!(store.stat("k").expect("stat").is_none());

        let seen = transport.seen.borrow();
        let (method, authority, path, headers) = &seen[0];
        assert_eq!(
            (method.as_str(), authority.as_str(), path.as_str()),
            ("HEAD", "s3.test:9000", "/bkt/p/q/a%20b/c%2Bd")
        );
        let header = |name: &str| headers.iter().find(|(header, _)| header == name).map(|(_, value)| value.clone());
        assert_eq!(header("x-amz-content-sha256").as_deref(), Some(EMPTY_SHA256));
        assert!(header("x-amz-date").is_some_and(|date| date.len() == 16 && date.ends_with('Z')));
        let authorization = header("authorization").expect("signed");
        assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AK/"), "{authorization}");
        assert!(
            authorization.contains("/us-east-1/s3/aws4_request,SignedHeaders=host;x-amz-content-sha256;x-amz-date,")
        );
        assert!(header("host").is_none(), "the transport sends Host from the authority");

        let seen = transport_virtual.seen.borrow();
        assert_eq!((seen[0].1.as_str(), seen[0].2.as_str()), ("bkt.s3.test:9000", "/p/q/k"));
    }

    #[test]
    fn listing_sends_a_sorted_query_and_strips_the_prefix() {
        let answer = b"<ListBucketResult><IsTruncated>true</IsTruncated>\
            <Contents><Key>p/q/x/1&amp;2</Key><LastModified>2013-05-24T00:00:00.000Z</LastModified><Size>5</Size></Contents>\
            <Contents><Key>p/q/x/3</Key><Size>0</Size></Contents></ListBucketResult>";
        let transport = ScriptedTransport::default().answer(200, &[], answer);
        let store = S3Store::new(settings(""), &transport);
        let page = store.list("x/", Some("x/0"), 5000).expect("list");
        let keys: Vec<(&str, u64, u64)> =
            page.objects.iter().map(|object| (object.key.as_str(), object.size, object.modified_ms)).collect();
        assert_eq!(keys, [("x/1&2", 5, 1_369_353_600_000), ("x/3", 0, 0)]);
        assert_eq!(page.next_cursor.as_deref(), Some("x/3"));
        assert_eq!(
            transport.seen.borrow()[0].2,
            "/bkt?list-type=2&max-keys=1000&prefix=p%2Fq%2Fx%2F&start-after=p%2Fq%2Fx%2F0"
        );
    }

    #[test]
    fn a_server_ignoring_range_is_cut_to_the_range() {
        let transport = ScriptedTransport::default()
            .answer(206, &[], b"cdef")
            .answer(200, &[], b"abcdefghijklmnopqrstuvwxyz")
            .answer(200, &[], b"abc")
            .answer(416, &[], b"");
        let store = S3Store::new(settings(""), &transport);
        let range = |offset, length| Some(ByteRange { offset, length });
        for expected in [&b"cdef"[..], b"cdef"] {
            let sink = MemorySink::default();
            assert_eq!(store.get("k", range(2, Some(4)), &sink).expect("get"), 4);
            assert_eq!(sink.into_bytes(), expected);
        }
        assert!(matches!(store.get("k", range(10, None), &MemorySink::default()), Err(Error::Invalid(_))));
        assert!(matches!(store.get("k", range(10, None), &MemorySink::default()), Err(Error::Invalid(_))));
        let seen = transport.seen.borrow();
        assert!(seen[0].3.contains(&("range".to_owned(), "bytes=2-5".to_owned())));
        assert!(seen[2].3.contains(&("range".to_owned(), "bytes=10-".to_owned())));
    }

    #[test]
    fn statuses_map_to_errors() {
        let denied = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>";
        let transport = ScriptedTransport::default()
            .answer(403, &[], denied)
            .answer(503, &[], b"<Error><Code>SlowDown</Code></Error>")
            .answer(400, &[], b"<Error><Code>InvalidArgument</Code><Message>bad</Message></Error>");
        let store = S3Store::new(settings(""), &transport);
        let source = || MemorySource::new(b"x".to_vec());
        assert!(
            matches!(store.put("k", &source()), Err(Error::Denied(message)) if message.contains("AccessDenied: no"))
        );
        assert!(matches!(store.put("k", &source()), Err(Error::Unavailable(message)) if message.contains("SlowDown")));
        assert!(
            matches!(store.put("k", &source()), Err(Error::Internal(message)) if message.contains("HTTP 400 InvalidArgument: bad"))
        );
        assert!(matches!(store.put("k", &source()), Err(Error::Unavailable(_))), "no answer");
    }

    #[test]
    fn a_complete_answering_200_with_an_error_aborts() {
        let part = 5 * 1024 * 1024;
        let transport = ScriptedTransport::default()
            .answer(
                200,
                &[],
                b"<InitiateMultipartUploadResult><UploadId>u/1+</UploadId></InitiateMultipartUploadResult>",
            )
            .answer(200, &[("etag", "\"e1\"")], b"")
            .answer(200, &[("etag", "\"e2\"")], b"")
            .answer(200, &[], b"<Error><Code>InternalError</Code><Message>later</Message></Error>")
            .answer(204, &[], b"");
        let store = S3Store::new(
            settings(&format!(r#", "multipart_threshold_bytes": {part}, "part_size_bytes": {part}"#)),
            &transport,
        );
        let result = store.put("big", &MemorySource::new(vec![1u8; part + 10]));
        assert!(matches!(result, Err(Error::Internal(message)) if message.contains("InternalError: later")));
        let seen = transport.seen.borrow();
        let requests: Vec<(&str, &str)> =
            seen.iter().map(|(method, _, path, _)| (method.as_str(), path.as_str())).collect();
        assert_eq!(
            requests,
            [
                ("POST", "/bkt/p/q/big?uploads="),
                ("PUT", "/bkt/p/q/big?partNumber=1&uploadId=u%2F1%2B"),
                ("PUT", "/bkt/p/q/big?partNumber=2&uploadId=u%2F1%2B"),
                ("POST", "/bkt/p/q/big?uploadId=u%2F1%2B"),
                ("DELETE", "/bkt/p/q/big?uploadId=u%2F1%2B"),
            ]
        );
        let part_hash =
            seen[1].3.iter().find(|(name, _)| name == "x-amz-content-sha256").map(|(_, value)| value.clone());
        assert_eq!(part_hash, Some(sha256_hex(&vec![1u8; part])), "each part is signed with its own hash");
    }

    #[test]
    fn error_details_come_from_the_xml() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access &amp; more</Message></Error>";
        assert_eq!(s3_error_detail(body), "AccessDenied: Access & more");
        assert_eq!(s3_error_detail(""), "");
        assert_eq!(s3_error_detail("<Error><Code>NoSuchKey</Code></Error>"), "NoSuchKey");
    }
}
