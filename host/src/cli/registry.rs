//! `hyperplane template push|pull|revert|rm|gc`: moving template files between a local file
//! and the registry, chunk by chunk, so a new tag costs only the chunks that changed.
//!
//! A push hashes the file in the registry's chunk size, asks which chunks the template lacks,
//! uploads only those and commits the chunk list. A pull onto an existing local file (the
//! previous tag) downloads only the chunks the file does not already contain. `qemu-img`
//! converts between raw and qcow2 where asked.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::client::{Client, encode_query_value};

/// Chunks moved at once.
const CHUNKS_IN_FLIGHT: usize = 4;

/// `template push`: a local file (a disk image by default) as a tag. Only the chunks the
/// template lacks are uploaded, so a new tag of an image costs what changed.
#[derive(Debug, clap::Args)]
pub struct PushRequest {
    /// Template name or id.
    pub template: String,
    /// The local file.
    pub path: PathBuf,
    /// The tag to push to; created when the template has no such tag.
    #[arg(long)]
    pub tag: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// The file's name in the version: `disk` for the disk image, any other for state or config
    /// files.
    #[arg(long, default_value = "disk")]
    pub file: String,
    /// `disk`, `state` or `config` (by default from the file name).
    #[arg(long)]
    pub kind: Option<String>,
    /// Convert the image with qemu-img first (`raw` or `qcow2`).
    #[arg(long)]
    pub convert_to: Option<String>,
    /// Chunk size in KiB (64 to 16384).
    #[arg(long, default_value_t = 1024)]
    pub chunk_kib: u64,
}

/// `template pull`: a file of a tag into a local file. Onto the local copy of an earlier tag,
/// only the chunks that differ are downloaded.
#[derive(Debug, clap::Args)]
pub struct PullRequest {
    /// Template name or id.
    pub template: String,
    /// The local file to write (replaced only once the pull is complete and verified).
    pub output: PathBuf,
    /// The tag (default: the latest version).
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long, default_value = "disk")]
    pub file: String,
    /// Convert the image with qemu-img after pulling (`raw` or `qcow2`).
    #[arg(long)]
    pub convert_to: Option<String>,
}

fn transfer_bar(total: u64, message: &str, visible: bool) -> ProgressBar {
    let bar = if visible { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

fn template_path(template: &str) -> String {
    format!("/v1/templates/{}", encode_query_value(template))
}

/// Runs `qemu-img convert` into a temporary file next to `destination`'s directory.
fn convert(source: &Path, format: &str, destination: &Path) -> anyhow::Result<()> {
    if !matches!(format, "raw" | "qcow2") {
        bail!("--convert-to must be raw or qcow2, not {format:?}");
    }
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-O", format])
        .arg(source)
        .arg(destination)
        .status()
        .context("running qemu-img (install qemu-utils to convert images)")?;
    if !status.success() {
        bail!("qemu-img convert to {format} failed ({status})");
    }
    Ok(())
}

/// The SHA-256 of every `chunk_bytes` piece of the file and of the whole file.
fn hash_file(path: &Path, chunk_bytes: u64, bar: &ProgressBar) -> anyhow::Result<(Vec<String>, String, u64)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut whole = Sha256::new();
    let mut digests = Vec::new();
    let mut buffer = vec![0; chunk_bytes as usize];
    let mut size = 0_u64;
    loop {
        let length = read_full(&mut file, &mut buffer)?;
        if length == 0 {
            break;
        }
        whole.update(&buffer[..length]);
        digests.push(hex::encode(Sha256::digest(&buffer[..length])));
        size += length as u64;
        bar.inc(length as u64);
    }
    Ok((digests, hex::encode(whole.finalize()), size))
}

/// Reads until `buffer` is full or the file ends; returns how much it read.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            count => filled += count,
        }
    }
    Ok(filled)
}

fn read_chunk(path: &Path, position: u64, chunk_bytes: u64) -> anyhow::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(position * chunk_bytes))?;
    let mut buffer = vec![0; chunk_bytes as usize];
    let length = read_full(&mut file, &mut buffer)?;
    buffer.truncate(length);
    Ok(buffer)
}

/// The version of `template` tagged `tag`, created when missing; returns its number.
async fn version_for_push(client: &Client, request: &PushRequest, size: u64) -> anyhow::Result<u64> {
    let template = client.get(&template_path(&request.template)).await?;
    let existing = template["versions"].as_array().into_iter().flatten().find(|version| version["tag"] == *request.tag);
    let template = match existing {
        Some(_) => template,
        None => {
            let body = json!({ "tag": request.tag, "description": request.description, "size_bytes": size });
            client.post(&format!("{}/versions", template_path(&request.template)), &body).await?
        }
    };
    template["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|version| version["tag"] == *request.tag)
        .and_then(|version| version["number"].as_u64())
        .context("the server did not answer the version")
}

pub async fn push(client: &Client, request: PushRequest, show_progress: bool) -> anyhow::Result<Value> {
    let converted = tempfile::Builder::new().prefix("hyperplane-push-").tempdir()?;
    let path = match &request.convert_to {
        Some(format) => {
            let destination = converted.path().join("image");
            convert(&request.path, format, &destination)?;
            destination
        }
        None => request.path.clone(),
    };
    let chunk_bytes = request.chunk_kib.saturating_mul(1024);
    let total = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
    if total == 0 {
        bail!("{} is empty", path.display());
    }
    let hashing = transfer_bar(total, "hashing", show_progress);
    let (digests, sha256, size) = {
        let (path, bar) = (path.clone(), hashing.clone());
        tokio::task::spawn_blocking(move || hash_file(&path, chunk_bytes, &bar)).await??
    };
    hashing.finish_and_clear();
    let number = version_for_push(client, &request, size).await?;
    let base = template_path(&request.template);
    let missing = client.post(&format!("{base}/chunks/missing"), &json!({ "digests": digests })).await?;
    let missing: std::collections::HashSet<String> = missing["missing"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|digest| digest.as_str().map(str::to_owned))
        .collect();
    // Each missing chunk once, from its first position.
    let mut queued = std::collections::HashSet::new();
    let to_upload: Vec<(u64, String)> = digests
        .iter()
        .enumerate()
        .filter(|(_, digest)| missing.contains(*digest) && queued.insert(digest.as_str()))
        .map(|(position, digest)| (position as u64, digest.clone()))
        .collect();
    let upload_bytes: u64 =
        to_upload.iter().map(|(position, _)| (size - position * chunk_bytes).min(chunk_bytes)).sum();
    let uploading = transfer_bar(upload_bytes, "uploading", show_progress);
    futures::stream::iter(to_upload.iter().cloned())
        .map(|(position, digest)| {
            let (path, bar, base) = (path.clone(), uploading.clone(), base.clone());
            async move {
                let bytes = tokio::task::spawn_blocking(move || read_chunk(&path, position, chunk_bytes)).await??;
                let length = bytes.len() as u64;
                client.put_bytes(&format!("{base}/chunks/{digest}"), bytes).await?;
                bar.inc(length);
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(CHUNKS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    uploading.finish_and_clear();
    let mut manifest = json!({ "size_bytes": size, "sha256": sha256, "chunk_size": chunk_bytes, "chunks": digests });
    if let Some(kind) = &request.kind {
        manifest["kind"] = json!(kind);
    }
    let manifest_path = format!("{base}/versions/{number}/files/{}/manifest", encode_query_value(&request.file));
    let mut pushed = client.put_json(&manifest_path, &manifest).await?;
    pushed["bytes_sent"] = json!(upload_bytes);
    pushed["chunks_sent"] = json!(to_upload.len());
    Ok(pushed)
}

/// The version to pull: the tag asked for, else the latest.
fn chosen_version<'a>(template: &'a Value, tag: Option<&str>) -> anyhow::Result<&'a Value> {
    let versions = template["versions"].as_array().context("the server answered a template without versions")?;
    let found = match tag {
        Some(tag) => versions.iter().find(|version| version["tag"] == *tag),
        None => versions.iter().max_by_key(|version| version["number"].as_u64()),
    };
    found.with_context(|| match tag {
        Some(tag) => format!("template {} has no tag {tag}", template["name"]),
        None => format!("template {} has no versions", template["name"]),
    })
}

pub async fn pull(client: &Client, request: PullRequest, show_progress: bool) -> anyhow::Result<Value> {
    let base = template_path(&request.template);
    let template = client.get(&base).await?;
    let version = chosen_version(&template, request.tag.as_deref())?;
    let number = version["number"].as_u64().context("a version without a number")?;
    let manifest_path = format!("{base}/versions/{number}/files/{}/manifest", encode_query_value(&request.file));
    let manifest = client.get(&manifest_path).await?;
    let chunk_bytes = manifest["chunk_size"].as_u64().context("a manifest without chunk_size")?;
    let size = manifest["size_bytes"].as_u64().context("a manifest without size_bytes")?;
    let expected_sha256 = manifest["sha256"].as_str().context("a manifest without sha256")?.to_owned();
    let chunks: Vec<String> = manifest["chunks"]
        .as_array()
        .context("a manifest without chunks")?
        .iter()
        .filter_map(|digest| digest.as_str().map(str::to_owned))
        .collect();

    // What the local file (a previous tag) already holds, by digest.
    let local: HashMap<String, u64> = if request.output.exists() && request.convert_to.is_none() {
        let hashing = transfer_bar(std::fs::metadata(&request.output)?.len(), "comparing", show_progress);
        let (path, bar) = (request.output.clone(), hashing.clone());
        let (digests, _, _) = tokio::task::spawn_blocking(move || hash_file(&path, chunk_bytes, &bar)).await??;
        hashing.finish_and_clear();
        digests.into_iter().enumerate().map(|(position, digest)| (digest, position as u64)).collect()
    } else {
        HashMap::new()
    };
    let directory = request.output.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut partial = tempfile::Builder::new().prefix(".hyperplane-pull-").tempfile_in(directory)?;
    let download_bytes: u64 = chunks
        .iter()
        .enumerate()
        .filter(|(_, digest)| !local.contains_key(*digest))
        .map(|(position, _)| (size - position as u64 * chunk_bytes).min(chunk_bytes))
        .sum();
    let downloading = transfer_bar(download_bytes, "downloading", show_progress);
    let mut fetched = futures::stream::iter(chunks.iter().cloned())
        .map(|digest| {
            let (local_position, base, output) = (local.get(&digest).copied(), base.clone(), request.output.clone());
            let bar = downloading.clone();
            async move {
                match local_position {
                    Some(position) => Ok::<_, anyhow::Error>((
                        tokio::task::spawn_blocking(move || read_chunk(&output, position, chunk_bytes)).await??,
                        0,
                    )),
                    None => {
                        let bytes = client.get_bytes(&format!("{base}/chunks/{digest}")).await?;
                        bar.inc(bytes.len() as u64);
                        Ok((bytes.to_vec(), bytes.len() as u64))
                    }
                }
            }
        })
        .buffered(CHUNKS_IN_FLIGHT);
    let mut whole = Sha256::new();
    let mut downloaded = 0;
    while let Some(chunk) = fetched.next().await {
        let (bytes, transferred) = chunk?;
        whole.update(&bytes);
        partial.write_all(&bytes)?;
        downloaded += transferred;
    }
    downloading.finish_and_clear();
    let sha256 = hex::encode(whole.finalize());
    if sha256 != expected_sha256 {
        bail!("the pulled file's SHA-256 is {sha256}, the registry says {expected_sha256}; nothing was written");
    }
    partial.as_file().sync_all()?;
    match &request.convert_to {
        Some(format) => {
            convert(partial.path(), format, &request.output)?;
        }
        None => {
            partial.persist(&request.output).map_err(|error| error.error)?;
        }
    }
    Ok(json!({
        "template": template["name"], "version": number, "tag": version["tag"], "file": request.file,
        "output": request.output, "size_bytes": size, "sha256": sha256, "chunks": chunks.len(),
        "bytes_downloaded": downloaded,
    }))
}

/// Human-readable sizes for summaries.
pub fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// `template distribute`: pull a tag onto hosts, one progress bar per host.
#[derive(Debug, clap::Args)]
pub struct DistributeRequest {
    /// Template name or id.
    pub template: String,
    /// The tag (default: the latest version).
    #[arg(long)]
    pub tag: Option<String>,
    /// A host (id, name or `provider/name`); repeat for several. Without `--host` or
    /// `--group`: every active host.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Every host of this node group.
    #[arg(long)]
    pub group: Option<String>,
    /// Wait until every host has it, showing each host's progress.
    #[arg(long)]
    pub wait: bool,
}

/// Starts the distribution; with `--wait`, follows each host's pull until the batch ends and
/// answers the batch and its pulls.
pub async fn distribute(client: &Client, request: DistributeRequest, show_progress: bool) -> anyhow::Result<Value> {
    let body = json!({ "tag": request.tag, "hosts": request.hosts, "group": request.group });
    let batch = client.post(&format!("{}/distribute", template_path(&request.template)), &body).await?;
    let id = batch["id"].as_str().context("the server answered a task without an id")?.to_owned();
    if !request.wait {
        return Ok(json!({ "batch": batch }));
    }
    let bars = indicatif::MultiProgress::new();
    if !show_progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:24} [{bar:32}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut per_host: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let batch = client.get(&format!("/v1/tasks/{id}?wait=1")).await?;
        let pulls = client.get(&format!("/v1/tasks?parent_id={id}&limit=1000")).await?;
        for pull in pulls.as_array().into_iter().flatten() {
            let key = pull["id"].as_str().unwrap_or_default().to_owned();
            let bar = per_host.entry(key).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(1000));
                bar.set_style(style.clone());
                bar.set_prefix(pull["input"]["host"].as_str().unwrap_or("host").to_owned());
                bar
            });
            bar.set_position((pull["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
            let state = pull["state"].as_str().unwrap_or("");
            let detail = match state {
                "failed" => pull["error"]["message"].as_str().unwrap_or("").to_owned(),
                "succeeded" if pull["result"]["already_cached"] == true => "already cached".to_owned(),
                _ => pull["message"].as_str().unwrap_or("").to_owned(),
            };
            bar.set_message(format!("{state} {detail}"));
            if state == "succeeded" {
                bar.set_position(1000);
            }
        }
        if matches!(batch["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            for bar in per_host.values() {
                bar.abandon();
            }
            return Ok(json!({ "batch": batch, "pulls": pulls }));
        }
    }
}
