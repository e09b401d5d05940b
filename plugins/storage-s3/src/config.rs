//! The provider config of `storage-s3` and its validation into [`S3Settings`].

use hyperplane_guest::storage::Error;
use serde::Deserialize;

/// S3's smallest part (every part but the last).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// The default for both `multipart_threshold_bytes` and `part_size_bytes`.
pub const DEFAULT_PART_BYTES: u64 = 8 * 1024 * 1024;

/// The config as the operator writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3Config {
    endpoint: String,
    bucket: String,
    #[serde(default = "default_region")]
    region: String,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default = "default_path_style")]
    path_style: bool,
    #[serde(default = "default_part_bytes")]
    multipart_threshold_bytes: u64,
    #[serde(default = "default_part_bytes")]
    part_size_bytes: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_path_style() -> bool {
    true
}

fn default_part_bytes() -> u64 {
    DEFAULT_PART_BYTES
}

/// Where requests go: `http(s)://authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    /// `host` or `host:port`, as the operator wrote it.
    pub authority: String,
}

impl Endpoint {
    /// Parses `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed; a path,
    /// query or user info is not).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        if authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!("`{url}` must be scheme://host[:port] without a path, query or user info"));
        }
        Ok(Endpoint { https, authority: authority.to_owned() })
    }
}

/// A validated config.
#[derive(Clone)]
pub struct S3Settings {
    pub endpoint: Endpoint,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Without leading or trailing `/`; `None` when keys are stored at the bucket's root.
    pub prefix: Option<String>,
    pub path_style: bool,
    pub multipart_threshold_bytes: u64,
    pub part_size_bytes: u64,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("multipart_threshold_bytes", &self.multipart_threshold_bytes)
            .field("part_size_bytes", &self.part_size_bytes)
            .finish()
    }
}

fn invalid(key: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidConfig(format!("`{key}`: {why}"))
}

/// Whether `bucket` is a name S3 accepts (3–63 of `a-z0-9.-`, starting and ending with a letter
/// or digit). Path-style servers accept more; this keeps to what every server accepts.
fn valid_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'.' || byte == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl S3Settings {
    /// Parses and checks the provider's config JSON; errors are `invalid-config` naming the key.
    pub fn from_config(config: &str) -> Result<Self, Error> {
        let raw: RawS3Config = serde_json::from_str(config)
            .map_err(|error| Error::InvalidConfig(format!("the storage-s3 config is not valid: {error}")))?;
        let endpoint = Endpoint::parse(raw.endpoint.trim()).map_err(|why| invalid("endpoint", why))?;
        if !valid_bucket(&raw.bucket) {
            return Err(invalid("bucket", format!("`{}` is not a valid bucket name", raw.bucket)));
        }
        if raw.region.is_empty() || !raw.region.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-') {
            return Err(invalid("region", format!("`{}` is not a region name", raw.region)));
        }
        if raw.access_key_id.trim().is_empty() {
            return Err(invalid("access_key_id", "is empty"));
        }
        if raw.secret_access_key.is_empty() {
            return Err(invalid("secret_access_key", "is empty"));
        }
        let prefix = match raw.prefix.as_deref().map(|prefix| prefix.trim_matches('/')) {
            None | Some("") => None,
            Some(prefix) => {
                if prefix.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
                    return Err(invalid("prefix", format!("`{prefix}` has an empty, `.` or `..` segment")));
                }
                Some(prefix.to_owned())
            }
        };
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&raw.part_size_bytes) {
            return Err(invalid(
                "part_size_bytes",
                format!("{} is outside S3's part sizes {MIN_PART_BYTES}..={MAX_PART_BYTES}", raw.part_size_bytes),
            ));
        }
        if raw.multipart_threshold_bytes == 0 || raw.multipart_threshold_bytes > raw.part_size_bytes {
            return Err(invalid(
                "multipart_threshold_bytes",
                format!(
                    "{} must be at least 1 and at most `part_size_bytes` ({}), so that at most one part is \
                     held in memory",
                    raw.multipart_threshold_bytes, raw.part_size_bytes
                ),
            ));
        }
        if !raw.path_style && raw.bucket.contains('.') && endpoint.https {
            return Err(invalid("path_style", "virtual-hosted style with a dotted bucket name breaks TLS"));
        }
        Ok(S3Settings {
            endpoint,
            bucket: raw.bucket,
            region: raw.region,
            access_key_id: raw.access_key_id.trim().to_owned(),
            secret_access_key: raw.secret_access_key,
            prefix,
            path_style: raw.path_style,
            multipart_threshold_bytes: raw.multipart_threshold_bytes,
            part_size_bytes: raw.part_size_bytes,
        })
    }

    /// `s3://bucket[/prefix]` (no secret), for logs and status.
    pub fn location(&self) -> String {
        match &self.prefix {
            Some(prefix) => format!("s3://{}/{prefix}", self.bucket),
            None => format!("s3://{}", self.bucket),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> String {
        format!(
            r#"{{"endpoint": "http://127.0.0.1:8333", "bucket": "templates", "access_key_id": "AK",
                "secret_access_key": "SK"{extra}}}"#
        )
    }

    fn error_of(config: &str) -> String {
        match S3Settings::from_config(config) {
            Err(Error::InvalidConfig(message)) => message,
            other => panic!("expected invalid-config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let settings = S3Settings::from_config(&config("")).expect("valid");
        assert_eq!(settings.endpoint, Endpoint { https: false, authority: "127.0.0.1:8333".into() });
        assert_eq!(settings.region, "us-east-1");
        assert!(settings.path_style);
        assert_eq!(settings.prefix, None);
        assert_eq!(settings.multipart_threshold_bytes, DEFAULT_PART_BYTES);
        assert_eq!(settings.part_size_bytes, DEFAULT_PART_BYTES);
        assert_eq!(settings.location(), "s3://templates");
        assert!(!format!("{settings:?}").contains("\"SK\""), "the secret is not printed");
    }

    #[test]
    fn prefix_is_normalised() {
        let settings = S3Settings::from_config(&config(r#", "prefix": "/hyperplane/templates/""#)).expect("valid");
        assert_eq!(settings.prefix.as_deref(), Some("hyperplane/templates"));
        assert_eq!(settings.location(), "s3://templates/hyperplane/templates");
        assert_eq!(S3Settings::from_config(&config(r#", "prefix": "/""#)).expect("valid").prefix, None);
        assert!(error_of(&config(r#", "prefix": "a//b""#)).contains("`prefix`"));
        assert!(error_of(&config(r#", "prefix": "a/../b""#)).contains("`prefix`"));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(error_of(&config(r#", "colour": "blue""#)).contains("colour"));
        assert!(error_of(r#"{"bucket": "b"}"#).contains("endpoint"));
        assert!(error_of(&config("").replace("http://127.0.0.1:8333", "ftp://x")).contains("`endpoint`"));
        assert!(error_of(&config("").replace("http://127.0.0.1:8333", "http://x/path")).contains("`endpoint`"));
        assert!(error_of(&config("").replace("templates", "Bad_Bucket")).contains("`bucket`"));
        assert!(error_of(&config("").replace("\"SK\"", "\"\"")).contains("`secret_access_key`"));
        assert!(error_of(&config(r#", "region": "us east""#)).contains("`region`"));
        assert!(error_of(&config(r#", "part_size_bytes": 1024"#)).contains("`part_size_bytes`"));
        assert!(error_of(&config(r#", "multipart_threshold_bytes": 0"#)).contains("`multipart_threshold_bytes`"));
        assert!(
            error_of(&config(r#", "multipart_threshold_bytes": 9000000, "part_size_bytes": 6000000"#))
                .contains("`multipart_threshold_bytes`")
        );
    }

    #[test]
    fn https_and_trailing_slash_are_accepted() {
        let settings = S3Settings::from_config(&config("").replace("http://127.0.0.1:8333", "https://s3.example.com/"))
            .expect("valid");
        assert_eq!(settings.endpoint, Endpoint { https: true, authority: "s3.example.com".into() });
    }
}
