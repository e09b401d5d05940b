//! The template registry: pushing and pulling a version's files (streamed, or chunk by chunk
//! for incremental transfers), revert and garbage collection.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::WaitParams;
use super::instances::respond_after_wait;
use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{JsonBody, QueryParams};
use crate::auth::Caller;
use crate::model::{DISK_FILE_NAME, FileKind, Task, Template};
use crate::service::{
    ChunkQuery, DistributeRequest, FileDownload, FileManifest, FilePushed, GarbageCollected, PushOptions,
    RequestedRange,
};

/// Parses a version number path segment, naming it when it is not one.
fn parse_version_number(template: &str, text: &str) -> ApiResult<u32> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("template version '{template}:{text}' not found (version numbers are positive integers)"),
        )
    })
}

/// A single `Range: bytes=…` range; anything else (several ranges, other units, bad syntax) is
/// ignored and the whole file is sent, as HTTP allows.
fn requested_range(headers: &HeaderMap) -> Option<RequestedRange> {
    let value = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return Some(RequestedRange::Suffix(last.parse().ok()?));
    }
    let first = first.parse().ok()?;
    let last = if last.is_empty() { None } else { Some(last.parse().ok()?) };
    Some(RequestedRange::From { first, last })
}

/// `200` with the whole file or `206` with the range; `ETag` is the file's SHA-256,
/// `X-Disk-Format` its format.
fn file_response(download: FileDownload, ranged: bool) -> Response {
    let FileDownload { file, offset, length, bytes } = download;
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_LENGTH, length.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::ETAG, format!("\"{}\"", file.sha256)),
        (header::HeaderName::from_static("x-disk-format"), file.format.to_string()),
    ];
    let status = if ranged {
        let last = offset + length - 1;
        headers.push((header::CONTENT_RANGE, format!("bytes {offset}-{last}/{}", file.size_bytes)));
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut response = (status, Body::from_stream(bytes)).into_response();
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The SHA-256 the client sent the body with, if any: `X-Content-SHA256: <hex>`, or RFC 9530's
/// `Repr-Digest: sha-256=:<base64>:`.
fn declared_sha256(headers: &HeaderMap) -> ApiResult<Option<String>> {
    if let Some(value) = headers.get("x-content-sha256") {
        let hex = value.to_str().map_err(|_| ApiError::invalid("X-Content-SHA256 must be 64 hex digits"))?;
        return Ok(Some(hex.trim().to_ascii_lowercase()));
    }
    let Some(value) = headers.get("repr-digest") else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::invalid("Repr-Digest is not ASCII"))?;
    for member in text.split(',') {
        if let Some(encoded) = member.trim().strip_prefix("sha-256=:").and_then(|rest| rest.strip_suffix(':')) {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| ApiError::invalid("Repr-Digest sha-256 is not base64"))?;
            return Ok(Some(hex::encode(bytes)));
        }
    }
    Ok(None)
}

/// `PUT …/files/{name}` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PushParams {
    /// What the file holds; by default `disk` for the file named `disk`, `config` for
    /// `*.json`/`*.toml`/`*.yaml`, else `state`.
    kind: Option<FileKind>,
}

/// Pushes a file of the version as the raw request body, streamed: the host cuts it into
/// chunks, stores those it does not have, and records the file once complete (an interrupted
/// push leaves no file). With `X-Content-SHA256` (or `Repr-Digest: sha-256=…`) the bytes must
/// hash to it. Files cannot be replaced: a second push is `409`.
#[utoipa::path(put, path = "/v1/templates/{id}/versions/{number}/files/{name}", tag = "registry",
    params(PushParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file"),
    responses((status = 201, body = FilePushed), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn push_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number, name)): Path<(String, String, String)>,
    QueryParams(params): QueryParams<PushParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<FilePushed>)> {
    let number = parse_version_number(&id, &number)?;
    let options = PushOptions { kind: params.kind, sha256: declared_sha256(&headers)? };
    let pushed =
        state.service.push_template_file(&caller, &id, number, &name, options, body.into_data_stream()).await?;
    Ok((StatusCode::CREATED, Json(pushed)))
}

/// Downloads a file of the version, or one `Range` of it (`206`).
#[utoipa::path(get, path = "/v1/templates/{id}/versions/{number}/files/{name}", tag = "registry",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub(super) async fn download_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let number = parse_version_number(&id, &number)?;
    let range = requested_range(&headers);
    let download = state.service.download_template_file(&caller, &id, number, &name, range).await?;
    Ok(file_response(download, range.is_some()))
}

/// Pushes the version's disk image (the file `disk`), checked against `X-Content-SHA256` or
/// `Repr-Digest` when sent; answers the template.
#[utoipa::path(put, path = "/v1/templates/{id}/versions/{number}/image", tag = "registry",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the disk image"),
    responses((status = 201, body = Template), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn upload_image(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Template>)> {
    let number = parse_version_number(&id, &number)?;
    let options = PushOptions { sha256: declared_sha256(&headers)?, ..PushOptions::disk() };
    let pushed = state
        .service
        .push_template_file(&caller, &id, number, DISK_FILE_NAME, options, body.into_data_stream())
        .await?;
    Ok((StatusCode::CREATED, Json(pushed.template)))
}

/// Downloads the version's disk image, or one `Range` of it (`206`).
#[utoipa::path(get, path = "/v1/templates/{id}/versions/{number}/image", tag = "registry",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub(super) async fn download_image(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let number = parse_version_number(&id, &number)?;
    let range = requested_range(&headers);
    let download = state.service.download_template_file(&caller, &id, number, DISK_FILE_NAME, range).await?;
    Ok(file_response(download, range.is_some()))
}

/// The file's chunk list, for a client that pulls only the chunks it lacks.
#[utoipa::path(get, path = "/v1/templates/{id}/versions/{number}/files/{name}/manifest", tag = "registry",
    responses((status = 200, body = FileManifest), (status = 404, body = ErrorBody)))]
pub(super) async fn get_manifest(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number, name)): Path<(String, String, String)>,
) -> ApiResult<Json<FileManifest>> {
    let number = parse_version_number(&id, &number)?;
    Ok(Json(state.service.template_file_manifest(&caller, &id, number, &name).await?))
}

/// Records a file from chunks already uploaded for the template (see `…/chunks/missing`). The
/// chunks must make a file of `size_bytes` whose SHA-256 is `sha256`.
#[utoipa::path(put, path = "/v1/templates/{id}/versions/{number}/files/{name}/manifest", tag = "registry",
    request_body = FileManifest,
    responses((status = 201, body = FilePushed), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn commit_manifest(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number, name)): Path<(String, String, String)>,
    JsonBody(manifest): JsonBody<FileManifest>,
) -> ApiResult<(StatusCode, Json<FilePushed>)> {
    let number = parse_version_number(&id, &number)?;
    let pushed = state.service.commit_template_file(&caller, &id, number, &name, manifest).await?;
    Ok((StatusCode::CREATED, Json(pushed)))
}

/// Chunks a client still has to upload for the template.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct MissingChunks {
    missing: Vec<String>,
}

/// Which of the digests the template does not have yet (only the template's own chunks count).
#[utoipa::path(post, path = "/v1/templates/{id}/chunks/missing", tag = "registry", request_body = ChunkQuery,
    responses((status = 200, body = MissingChunks), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn missing_chunks(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(query): JsonBody<ChunkQuery>,
) -> ApiResult<Json<MissingChunks>> {
    Ok(Json(MissingChunks { missing: state.service.missing_template_chunks(&caller, &id, query).await? }))
}

/// Uploads one chunk for the template; its bytes must hash to `digest`. `201` when stored,
/// `200` when the registry had it already.
#[utoipa::path(put, path = "/v1/templates/{id}/chunks/{digest}", tag = "registry",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the chunk"),
    responses((status = 201), (status = 200), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn upload_chunk(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, digest)): Path<(String, String)>,
    body: Body,
) -> ApiResult<StatusCode> {
    let limit = crate::service::MAX_CHUNK_BYTES as usize;
    let bytes: Bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a chunk is at most {limit} bytes: {error}"),
            )
        })?
        .to_bytes();
    let stored = state.service.upload_template_chunk(&caller, &id, &digest, bytes).await?;
    Ok(if stored { StatusCode::CREATED } else { StatusCode::OK })
}

/// One chunk of the template's files, verified against its digest.
#[utoipa::path(get, path = "/v1/templates/{id}/chunks/{digest}", tag = "registry",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = ErrorBody)))]
pub(super) async fn download_chunk(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, digest)): Path<(String, String)>,
) -> ApiResult<Response> {
    let bytes = state.service.download_template_chunk(&caller, &id, &digest).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `POST /v1/templates/{id}/revert`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevertRequest {
    /// Remove this tag and every later one; without it, only the latest version.
    #[serde(default)]
    tag: Option<String>,
}

/// Removes the latest version, or `tag` and every version after it. `409` while an instance
/// uses one of them.
#[utoipa::path(post, path = "/v1/templates/{id}/revert", tag = "registry", request_body = RevertRequest,
    responses((status = 200, body = Template), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn revert(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<RevertRequest>,
) -> ApiResult<Json<Template>> {
    Ok(Json(state.service.revert_template(&caller, &id, request.tag.as_deref()).await?))
}

/// Pulls a version (default: the latest) onto hosts — `hosts`, a node `group`, or every active
/// host: a batch task with one `template.pull_to_host` task per host, each with its progress
/// and error. `DELETE /v1/tasks/{id}` on the batch cancels the pulls.
#[utoipa::path(post, path = "/v1/templates/{id}/distribute", tag = "registry", request_body = DistributeRequest,
    params(WaitParams),
    responses((status = 202, body = Task), (status = 200, body = Task), (status = 404, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn distribute(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<WaitParams>,
    JsonBody(request): JsonBody<DistributeRequest>,
) -> ApiResult<Response> {
    let wait = params.duration()?;
    respond_after_wait(&state, wait, state.service.distribute_template(&caller, &id, request)).await
}

/// `POST /v1/registry/gc` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct GcParams {
    /// Spare unreferenced chunks younger than this (default: `templates.gc_grace_secs`).
    min_age_secs: Option<f64>,
}

/// Deletes stored chunks no template file references any more.
#[utoipa::path(post, path = "/v1/registry/gc", tag = "registry", params(GcParams),
    responses((status = 200, body = GarbageCollected), (status = 403, body = ErrorBody)))]
pub(super) async fn collect_garbage(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<GcParams>,
) -> ApiResult<Json<GarbageCollected>> {
    let min_age = match params.min_age_secs {
        None => None,
        Some(seconds) if seconds.is_finite() && (0.0..=1e9).contains(&seconds) => {
            Some(std::time::Duration::from_secs_f64(seconds))
        }
        Some(_) => return Err(ApiError::invalid("min_age_secs must be a number of seconds, at least 0")),
    };
    Ok(Json(state.service.collect_garbage(&caller, min_age).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_or_ignored() {
        let check = |value: &str, expected: Option<RequestedRange>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, value.parse().expect("header value"));
            assert_eq!(requested_range(&headers), expected, "{value}");
        };
        check("bytes=0-99", Some(RequestedRange::From { first: 0, last: Some(99) }));
        check("bytes=100-", Some(RequestedRange::From { first: 100, last: None }));
        check("bytes=-500", Some(RequestedRange::Suffix(500)));
        check("bytes=0-1,5-6", None);
        check("items=0-1", None);
        check("bytes=a-b", None);
        assert_eq!(requested_range(&HeaderMap::new()), None);
    }
}
