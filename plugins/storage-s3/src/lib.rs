//! `storage-s3`: a Hyperplane blob store on any S3-compatible server (AWS S3, SeaweedFS, MinIO,
//! Ceph RGW, …) over outgoing `wasi:http`, every request signed with AWS Signature Version 4.
//!
//! # Config (JSON given to `init`; unknown keys are `invalid-config`)
//! `endpoint` (`http://host[:port]` or `https://…`; the host must be in the provider's
//! `allowed_http_hosts`), `bucket`, `region` (`us-east-1`), `access_key_id`,
//! `secret_access_key`, `prefix` (keys are stored under `<prefix>/<key>`), `path_style` (`true`:
//! `endpoint/bucket/key`; `false`: `bucket.endpoint/key`), `multipart_threshold_bytes` and
//! `part_size_bytes` (8 MiB each; parts are 5 MiB to 5 GiB, the threshold at most one part).
//!
//! # Behaviour
//! `put` buffers at most one part: an object that ends within the threshold is one `PUT`, a
//! larger one a multipart upload (each part signed with its SHA-256), aborted on any failure so
//! that a failed put leaves neither an object nor an upload. `get` sends `Range` and streams
//! the body into the sink in pieces. `stat` is a `HEAD`, `delete` a `DELETE` (a missing key is
//! fine), `list` a ListObjectsV2 page with `start-after` as the cursor. 403 is `denied`, no
//! answer or 5xx `unavailable`, other surprises `internal` with S3's code.
//!
//! Code map: [`config`] (the config), [`sigv4`] (signing), [`store`] (the operations, over a
//! [`transport::HttpTransport`]), [`xml`] and [`time`] (parsing S3's answers), `wasi_http` (the
//! transport inside a component) and `component` (the export glue).

pub mod config;
pub mod sigv4;
pub mod store;
pub mod time;
pub mod transport;
pub mod xml;

// Compiled natively too (to keep them checked), but only used inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod wasi_http;

pub use config::S3Settings;
pub use store::S3Store;
pub use transport::{HttpRequest, HttpResponse, HttpTransport, ResponseBody};
