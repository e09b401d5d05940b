//! AWS Signature Version 4 for S3 (header-based `Authorization`), written over `sha2` and `hmac`.
//!
//! The canonical request is built per the S3 spec: the path is URI-encoded once with `/` kept
//! (S3 does not normalise paths), the query is sorted by encoded name and value, the signed
//! headers are lowercased, trimmed and sorted, and the payload line is the body's SHA-256 (the
//! hash of the empty string for requests without a body).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The SHA-256 of the empty string, hex: the payload hash of every body-less request.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Lowercase hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// URI-encodes `value` the SigV4 way: every byte except `A-Za-z0-9-._~` becomes `%XX`
/// (uppercase hex); `/` is kept when `keep_slash` (object key paths).
pub fn uri_encode(value: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
        if unreserved || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The canonical query string of `params` (unencoded names and values): each encoded, sorted,
/// `name=value` joined by `&` (a bare name gets `=`). Also the query to send, so the server
/// sees exactly what was signed.
pub fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> =
        params.iter().map(|(name, value)| (uri_encode(name, false), uri_encode(value, false))).collect();
    encoded.sort();
    encoded.into_iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("&")
}

/// The long-lived part of signing: who signs, where.
#[derive(Clone)]
pub struct Signer {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    pub service: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Signer")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("region", &self.region)
            .finish()
    }
}

/// One request as it is signed.
#[derive(Debug, Clone)]
pub struct SigningRequest<'a> {
    pub method: &'a str,
    /// The path as sent, already URI-encoded (see [`uri_encode`]), starting with `/`.
    pub encoded_path: &'a str,
    /// The canonical query string (see [`canonical_query`]); empty for none.
    pub canonical_query: &'a str,
    /// The headers to sign (any case); must include `host`, `x-amz-date` and
    /// `x-amz-content-sha256`.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body.
    pub payload_sha256: &'a str,
}

impl Signer {
    /// The canonical request and the list of signed header names.
    pub fn canonical_request(&self, request: &SigningRequest<'_>) -> (String, String) {
        let mut headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), collapse_spaces(value.trim())))
            .collect();
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(name, value)| format!("{name}:{value}\n")).collect();
        let signed_headers = headers.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(";");
        let canonical = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            request.method,
            request.encoded_path,
            request.canonical_query,
            canonical_headers,
            signed_headers,
            request.payload_sha256
        );
        (canonical, signed_headers)
    }

    /// The string to sign for `amz_date` (`YYYYMMDDTHHMMSSZ`).
    pub fn string_to_sign(&self, amz_date: &str, canonical_request: &str) -> String {
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}", self.scope(amz_date), sha256_hex(canonical_request.as_bytes()))
    }

    fn scope(&self, amz_date: &str) -> String {
        let day = amz_date.get(..8).unwrap_or(amz_date);
        format!("{day}/{}/{}/aws4_request", self.region, self.service)
    }

    /// The `Authorization` header value for `request` at `amz_date`.
    pub fn authorization(&self, amz_date: &str, request: &SigningRequest<'_>) -> String {
        let (canonical, signed_headers) = self.canonical_request(request);
        let string_to_sign = self.string_to_sign(amz_date, &canonical);
        let day = amz_date.get(..8).unwrap_or(amz_date);
        let date_key = hmac_sha256(format!("AWS4{}", self.secret_access_key).as_bytes(), day.as_bytes());
        let region_key = hmac_sha256(&date_key, self.region.as_bytes());
        let service_key = hmac_sha256(&region_key, self.service.as_bytes());
        let signing_key = hmac_sha256(&service_key, b"aws4_request");
        let signature = hex(&hmac_sha256(&signing_key, string_to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{},SignedHeaders={signed_headers},Signature={signature}",
            self.access_key_id,
            self.scope(amz_date)
        )
    }
}

fn collapse_spaces(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut last_space = false;
    for character in value.chars() {
        if character == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(character);
            last_space = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples of "Signature Calculations for the Authorization Header: Transferring
    // Payload in a Single Chunk" in the Amazon S3 API reference (sig-v4-header-based-auth).
    fn example_signer() -> Signer {
        Signer {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
        }
    }

    const EXAMPLE_DATE: &str = "20130524T000000Z";

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    fn signature_of(authorization: &str) -> &str {
        authorization.rsplit("Signature=").next().unwrap_or_default()
    }

    #[test]
    fn get_object_example_matches_the_aws_docs() {
        let signed = headers(&[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", EXAMPLE_DATE),
        ]);
        let request = SigningRequest {
            method: "GET",
            encoded_path: "/test.txt",
            canonical_query: "",
            headers: &signed,
            payload_sha256: EMPTY_SHA256,
        };
        let signer = example_signer();
        let (canonical, signed_headers) = signer.canonical_request(&request);
        assert_eq!(signed_headers, "host;range;x-amz-content-sha256;x-amz-date");
        assert!(
            signer.string_to_sign(EXAMPLE_DATE, &canonical).ends_with(
                "20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
            ),
            "{canonical}"
        );
        assert_eq!(
            signer.authorization(EXAMPLE_DATE, &request),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn put_object_example_matches_the_aws_docs() {
        let body = b"Welcome to Amazon S3.";
        let payload = sha256_hex(body);
        assert_eq!(payload, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
        let path = format!("/{}", uri_encode("test$file.text", true));
        assert_eq!(path, "/test%24file.text");
        let signed = headers(&[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", EXAMPLE_DATE),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", &payload),
        ]);
        let request = SigningRequest {
            method: "PUT",
            encoded_path: &path,
            canonical_query: "",
            headers: &signed,
            payload_sha256: &payload,
        };
        assert_eq!(
            signature_of(&example_signer().authorization(EXAMPLE_DATE, &request)),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn list_objects_example_matches_the_aws_docs() {
        let query = canonical_query(&[("prefix", "J"), ("max-keys", "2")]);
        assert_eq!(query, "max-keys=2&prefix=J");
        let signed = headers(&[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", EXAMPLE_DATE),
        ]);
        let request = SigningRequest {
            method: "GET",
            encoded_path: "/",
            canonical_query: &query,
            headers: &signed,
            payload_sha256: EMPTY_SHA256,
        };
        assert_eq!(
            signature_of(&example_signer().authorization(EXAMPLE_DATE, &request)),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn a_different_secret_or_body_changes_the_signature() {
        let signed = headers(&[("host", "h"), ("x-amz-date", EXAMPLE_DATE), ("x-amz-content-sha256", EMPTY_SHA256)]);
        let request = SigningRequest {
            method: "GET",
            encoded_path: "/",
            canonical_query: "",
            headers: &signed,
            payload_sha256: EMPTY_SHA256,
        };
        let mut other = example_signer();
        other.secret_access_key.push('x');
        assert_ne!(example_signer().authorization(EXAMPLE_DATE, &request), other.authorization(EXAMPLE_DATE, &request));
        let with_body = SigningRequest { payload_sha256: &sha256_hex(b"x"), ..request.clone() };
        assert_ne!(
            example_signer().authorization(EXAMPLE_DATE, &request),
            example_signer().authorization(EXAMPLE_DATE, &with_body)
        );
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(uri_encode("a-b_c.d~e09AZ", false), "a-b_c.d~e09AZ");
        assert_eq!(uri_encode("a b/c+d=é*", false), "a%20b%2Fc%2Bd%3D%C3%A9%2A");
        assert_eq!(uri_encode("dir/file name.txt", true), "dir/file%20name.txt");
        assert_eq!(canonical_query(&[("uploads", "")]), "uploads=");
        assert_eq!(
            canonical_query(&[("uploadId", "a/b+c=="), ("partNumber", "2")]),
            "partNumber=2&uploadId=a%2Fb%2Bc%3D%3D"
        );
        assert_eq!(collapse_spaces("a   b c"), "a b c");
    }
}
