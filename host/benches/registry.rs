//! Template registry throughput (`cargo bench --bench registry`): push and pull of a 1 GiB
//! file through the HTTP API on the default `storage-fs` backend, next to `cp` (and
//! `cp` + `sync`) of the same file in the same run, plus where the time goes.
//!
//! Measured: the streamed `PUT …/versions/1/image` and `GET …/image`; the CLI's chunked push
//! and pull (the real `hyperplane` binary as a separate client process); an incremental push
//! and pull of a second tag with 1 MiB changed. Then, on their own: SHA-256 of the file on one
//! core, `storage-fs` storing and reading 1 MiB objects directly (no HTTP, no SQLite, no
//! hashing), and the same write + fsync + rename pattern natively. Every downloaded file is
//! checked against the source's SHA-256.
//!
//! Prints a table. Not a test: nothing here asserts a speed.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use hyperplane::config::Config;
use hyperplane::plugins::{BlobStore, PluginRuntime, RuntimeSettings, StorageSource};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOKEN: &str = "bench-token";
const MIB: u64 = 1024 * 1024;
const FILE_BYTES: u64 = 1024 * MIB;
/// Where the incremental tag differs: one chunk-aligned MiB in the middle.
const CHANGED_AT: u64 = 512 * MIB;
/// As the server and the CLI move chunks.
const IN_FLIGHT: usize = 4;

struct Row {
    operation: String,
    bytes: u64,
    seconds: f64,
    note: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("hyperplane-bench-registry-").tempdir()?;
    let dir = scratch.path();
    print_machine(dir)?;

    // Two different 1 GiB files (distinct seeds: nothing dedups between them or inside them).
    let (source_a, source_b) = (dir.join("a.img"), dir.join("b.img"));
    let started = Instant::now();
    write_pattern(&source_a, 1)?;
    write_pattern(&source_b, 2)?;
    println!("generated 2 × 1 GiB of non-repeating data (fsynced) in {:.2} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let sha_a = sha256_file(&source_a)?;
    let sha256_seconds = started.elapsed().as_secs_f64();
    let sha_b = sha256_file(&source_b)?;
    // The incremental tag: b with one MiB changed (prepared untimed).
    let source_b2 = dir.join("b2.img");
    std::fs::copy(&source_b, &source_b2)?;
    {
        let file = std::fs::OpenOptions::new().write(true).open(&source_b2)?;
        file.write_all_at(&vec![0xfe; MIB as usize], CHANGED_AT)?;
        file.sync_all()?;
    }
    let sha_b2 = sha256_file(&source_b2)?;
    println!(
        "page cache: the sources were just written and fsynced, so they are clean and (24 GiB RAM) cached; \
         every read of them below is from memory, every write goes to the disk only when synced"
    );
    println!();

    let mut rows = Vec::new();

    // cp, then sync of the copy (coreutils `sync FILE` fsyncs that file).
    sync_all().await?;
    let copy = dir.join("cp.img");
    let started = Instant::now();
    run("cp", &[source_a.as_os_str(), copy.as_os_str()]).await?;
    let cp_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    run("sync", &[copy.as_os_str()]).await?;
    let sync_seconds = started.elapsed().as_secs_f64();
    rows.push(Row { operation: "cp".into(), bytes: FILE_BYTES, seconds: cp_seconds, note: "into page cache".into() });
    rows.push(Row {
        operation: "cp + sync".into(),
        bytes: FILE_BYTES,
        seconds: cp_seconds + sync_seconds,
        note: format!("sync of the copy {sync_seconds:.2} s"),
    });
    std::fs::remove_file(&copy)?;

    // A real server on the default storage-fs over <data_dir>/blobs.
    let data_dir = dir.join("data");
    let config = Config::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[log]\nfilter = \"warn\"\n",
        data_dir.display().to_string()
    ))?;
    ensure!(config.storage.plugin == "storage-fs", "the default storage is {}", config.storage.plugin);
    let server = hyperplane::server::start(config, Some(TOKEN.into())).await?;
    let base = format!("http://{}", server.address);
    let http = reqwest::Client::new();
    post(&http, &format!("{base}/v1/templates"), json!({ "name": "streamed", "arch": "amd64" })).await?;
    post(&http, &format!("{base}/v1/templates/streamed/versions"), json!({ "tag": "v1" })).await?;
    post(&http, &format!("{base}/v1/templates"), json!({ "name": "chunked", "arch": "amd64" })).await?;

    // (a) Streamed push: the file as the request body.
    sync_all().await?;
    let started = Instant::now();
    let file = tokio::fs::File::open(&source_a).await?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, MIB as usize));
    let response = http
        .put(format!("{base}/v1/templates/streamed/versions/1/image"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let template: Value = response.json().await?;
    ensure!(status.is_success(), "streamed push: {status} {template}");
    rows.push(Row {
        operation: "push, streamed PUT …/image".into(),
        bytes: FILE_BYTES,
        seconds: started.elapsed().as_secs_f64(),
        note: "1024 chunks stored".into(),
    });

    // (b) CLI push (client-side chunking) of the other file, as a separate process.
    sync_all().await?;
    let started = Instant::now();
    let pushed = cli(&base, &["template", "push", "chunked", path_str(&source_b)?, "--tag", "v1"]).await?;
    let seconds = started.elapsed().as_secs_f64();
    let sent = pushed["bytes_sent"].as_u64().context("bytes_sent")?;
    ensure!(sent == FILE_BYTES, "the CLI push sent {sent} bytes: {pushed}");
    rows.push(Row {
        operation: "push, CLI chunked".into(),
        bytes: sent,
        seconds,
        note: format!("{} chunks sent", pushed["chunks_sent"]),
    });

    // (c) Streamed download to a file, fsynced.
    sync_all().await?;
    let downloaded = dir.join("downloaded-a.img");
    let started = Instant::now();
    let response = http.get(format!("{base}/v1/templates/streamed/versions/1/image")).bearer_auth(TOKEN).send().await?;
    ensure!(response.status().is_success(), "streamed download: {}", response.status());
    let mut output = tokio::fs::File::create(&downloaded).await?;
    let mut stream = response.bytes_stream();
    let mut received = 0_u64;
    while let Some(piece) = stream.try_next().await? {
        received += piece.len() as u64;
        tokio::io::AsyncWriteExt::write_all(&mut output, &piece).await?;
    }
    let receive_seconds = started.elapsed().as_secs_f64();
    output.sync_all().await?;
    drop(output);
    let seconds = started.elapsed().as_secs_f64();
    ensure!(received == FILE_BYTES, "downloaded {received} bytes");
    rows.push(Row {
        operation: "pull, streamed GET …/image".into(),
        bytes: received,
        seconds,
        note: format!("fsync of the output {:.2} s", seconds - receive_seconds),
    });

    // (d) CLI pull to a fresh file (it fsyncs before renaming into place).
    sync_all().await?;
    let pulled = dir.join("pulled-b.img");
    let started = Instant::now();
    let result = cli(&base, &["template", "pull", "chunked", path_str(&pulled)?, "--tag", "v1"]).await?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = result["bytes_downloaded"].as_u64().context("bytes_downloaded")?;
    rows.push(Row { operation: "pull, CLI chunked".into(), bytes, seconds, note: "to a new file".into() });
    let pulled_sha_v1 = sha256_file(&pulled)?;

    // (e) Incremental push of tag v2: one MiB changed.
    sync_all().await?;
    let started = Instant::now();
    let pushed = cli(&base, &["template", "push", "chunked", path_str(&source_b2)?, "--tag", "v2"]).await?;
    let seconds = started.elapsed().as_secs_f64();
    let sent = pushed["bytes_sent"].as_u64().context("bytes_sent")?;
    rows.push(Row {
        operation: "push v2 (1 MiB changed), CLI".into(),
        bytes: sent,
        seconds,
        note: format!("{} chunk(s) sent, 1 GiB hashed", pushed["chunks_sent"]),
    });

    // Where (e) goes on the server: committing a manifest whose chunks are all there (tag v3 =
    // v2's chunk list) still reads the whole file back from storage to check its SHA-256.
    let manifest = get(&http, &format!("{base}/v1/templates/chunked/versions/2/files/disk/manifest")).await?;
    let manifest = json!({ "size_bytes": manifest["size_bytes"], "sha256": manifest["sha256"],
        "chunk_size": manifest["chunk_size"], "chunks": manifest["chunks"] });
    post(&http, &format!("{base}/v1/templates/chunked/versions"), json!({ "tag": "v3" })).await?;
    sync_all().await?;
    let started = Instant::now();
    let response = http
        .put(format!("{base}/v1/templates/chunked/versions/3/files/disk/manifest"))
        .bearer_auth(TOKEN)
        .json(&manifest)
        .send()
        .await?;
    ensure!(response.status().is_success(), "commit: {} {}", response.status(), response.text().await?);
    rows.push(Row {
        operation: "  of which: commit manifest".into(),
        bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
        note: "PUT …/manifest alone, 0 chunks new (tag v3)".into(),
    });

    // (f) Incremental pull of v2 onto the local v1.
    sync_all().await?;
    let started = Instant::now();
    let result = cli(&base, &["template", "pull", "chunked", path_str(&pulled)?, "--tag", "v2"]).await?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = result["bytes_downloaded"].as_u64().context("bytes_downloaded")?;
    rows.push(Row {
        operation: "pull v2 onto v1, CLI".into(),
        bytes,
        seconds,
        note: "1 GiB hashed + rewritten locally".into(),
    });
    server.shutdown().await;

    // Honest numbers: every download equals its source.
    ensure!(sha256_file(&downloaded)? == sha_a, "the streamed download differs from the source");
    ensure!(pulled_sha_v1 == sha_b, "the CLI pull of v1 differs from the source");
    ensure!(sha256_file(&pulled)? == sha_b2, "the CLI pull of v2 differs from the source");
    println!(
        "verified: the streamed download, the CLI pull of v1 and the CLI pull of v2 equal their sources (SHA-256)"
    );
    std::fs::remove_file(&downloaded)?;
    std::fs::remove_file(&pulled)?;
    let blobs_bytes = directory_bytes(&data_dir.join("blobs"))?;
    println!("storage-fs holds {:.0} MiB in <data_dir>/blobs", blobs_bytes as f64 / MIB as f64);
    std::fs::remove_dir_all(&data_dir)?;
    println!();

    print_table(&rows, cp_seconds, cp_seconds + sync_seconds);
    println!();
    where_time_goes(dir, &source_a, sha256_seconds).await?;
    Ok(())
}

/// The parts on their own: hashing, storage-fs direct, and its write pattern natively.
async fn where_time_goes(dir: &Path, source: &Path, sha256_seconds: f64) -> anyhow::Result<()> {
    let chunks = (FILE_BYTES / MIB) as usize;
    let mut parts = Vec::new();
    parts.push(("SHA-256 of 1 GiB, one core".to_owned(), sha256_seconds));

    // storage-fs through the plugin runtime, as the server loads it, 4 puts in flight.
    let granted = dir.join("direct/blobs");
    let config = Config::from_toml(&format!("data_dir = {:?}\n", dir.join("direct").display().to_string()))?;
    let runtime = PluginRuntime::new(RuntimeSettings { cache_dir: None, idle_instance_timeout: None })?;
    let blobs: BlobStore = hyperplane::service::load_storage(&config, &runtime).await?;
    let source = Arc::new(std::fs::read(source)?);
    let key = |index: usize| format!("chunks/{:02x}/bench-{index:06}", index % 256);
    sync_all().await?;
    let started = Instant::now();
    futures::stream::iter(0..chunks)
        .map(|index| {
            let (blobs, source) = (blobs.clone(), source.clone());
            async move {
                let start = index * MIB as usize;
                let piece = bytes::Bytes::copy_from_slice(&source[start..start + MIB as usize]);
                blobs.put(&key(index), StorageSource::from_bytes(piece)).await.map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    parts.push((
        format!("storage-fs put, {chunks} × 1 MiB, {IN_FLIGHT} in flight (write+fsync+rename)"),
        started.elapsed().as_secs_f64(),
    ));
    let started = Instant::now();
    let read: Vec<usize> = futures::stream::iter(0..chunks)
        .map(|index| {
            let blobs = blobs.clone();
            async move {
                blobs.get_bytes(&key(index), None, MIB).await.map(|bytes| bytes.len()).map_err(anyhow::Error::from)
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    ensure!(
        read.iter().sum::<usize>() as u64 == FILE_BYTES,
        "storage-fs read back {} bytes",
        read.iter().sum::<usize>()
    );
    parts.push((
        format!("storage-fs get, {chunks} × 1 MiB, {IN_FLIGHT} in flight (page cache)"),
        started.elapsed().as_secs_f64(),
    ));
    drop(blobs);
    std::fs::remove_dir_all(&granted)?;

    // The same pattern natively: 1 MiB into a temp file, fsync, rename, fsync the directory.
    let native = dir.join("native");
    sync_all().await?;
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|worker| {
            let (source, native) = (source.clone(), native.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                for index in (worker..chunks).step_by(IN_FLIGHT) {
                    let directory = native.join(format!("{:02x}", index % 256));
                    std::fs::create_dir_all(&directory)?;
                    let temp = native.join(format!(".incoming-{index}"));
                    let mut file = std::fs::File::create(&temp)?;
                    let start = index * MIB as usize;
                    file.write_all(&source[start..start + MIB as usize])?;
                    file.sync_all()?;
                    std::fs::rename(&temp, directory.join(format!("{index:06}")))?;
                    std::fs::File::open(&directory)?.sync_all()?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
    }
    parts.push((
        format!("native write+fsync+rename, {chunks} × 1 MiB, {IN_FLIGHT} threads"),
        started.elapsed().as_secs_f64(),
    ));
    std::fs::remove_dir_all(&native)?;

    println!("Where the time goes (each part alone, same run, same 1 GiB):");
    println!("{:<72} {:>8} {:>9}", "part", "seconds", "MiB/s");
    for (part, seconds) in parts {
        println!("{part:<72} {seconds:>8.2} {:>9.0}", FILE_BYTES as f64 / MIB as f64 / seconds);
    }
    Ok(())
}

fn print_table(rows: &[Row], cp_seconds: f64, cp_sync_seconds: f64) {
    println!(
        "{:<32} {:>11} {:>8} {:>9} {:>8} {:>11}  note",
        "operation", "bytes", "seconds", "MiB/s", "vs cp", "vs cp+sync"
    );
    for row in rows {
        println!(
            "{:<32} {:>11} {:>8.2} {:>9.0} {:>7.2}× {:>10.2}×  {}",
            row.operation,
            row.bytes,
            row.seconds,
            row.bytes as f64 / MIB as f64 / row.seconds,
            row.seconds / cp_seconds,
            row.seconds / cp_sync_seconds,
            row.note
        );
    }
    println!("(vs cp = operation time / cp time: 1.00× is as fast as cp, 2.00× takes twice as long)");
}

fn print_machine(dir: &Path) -> anyhow::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| text.lines().find(|line| line.starts_with("model name")).map(str::to_owned))
        .and_then(|line| line.split_once(':').map(|(_, name)| name.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().next().map(|line| line.split_whitespace().nth(1).unwrap_or("0").to_owned()))
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or(0);
    let filesystem =
        std::process::Command::new("df").args(["--output=source,fstype"]).arg(dir).output().context("running df")?;
    let filesystem = String::from_utf8_lossy(&filesystem.stdout).lines().nth(1).unwrap_or("unknown").to_owned();
    println!(
        "machine: {cpu}, {cores} cores, {:.0} GiB RAM; scratch {} on {} (sources, copies and the server's data_dir all there)",
        memory as f64 / 1024.0 / 1024.0,
        dir.display(),
        filesystem.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// `FILE_BYTES` of a splitmix64 stream seeded with `seed`, fsynced.
fn write_pattern(path: &Path, seed: u64) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut buffer = vec![0_u8; 8 * MIB as usize];
    for _ in 0..FILE_BYTES / buffer.len() as u64 {
        for word in buffer.chunks_exact_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut value = state;
            value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            word.copy_from_slice(&(value ^ (value >> 31)).to_le_bytes());
        }
        file.write_all(&buffer)?;
    }
    file.sync_all()?;
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; MIB as usize];
    loop {
        let length = file.read(&mut buffer)?;
        if length == 0 {
            break;
        }
        hasher.update(&buffer[..length]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn directory_bytes(path: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() { directory_bytes(&entry.path())? } else { metadata.len() };
    }
    Ok(total)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("a UTF-8 path")
}

/// Flushes everything dirty before a measurement, so no earlier write is paid for inside it.
async fn sync_all() -> anyhow::Result<()> {
    run("sync", &[]).await
}

async fn run(program: &str, arguments: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let status = tokio::process::Command::new(program).args(arguments).status().await?;
    if !status.success() {
        bail!("{program} failed: {status}");
    }
    Ok(())
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let response = http.get(url).bearer_auth(TOKEN).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let response = http.post(url).bearer_auth(TOKEN).json(&body).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "POST {url}: {status} {body}");
    Ok(body)
}

/// Runs the `hyperplane` binary with `--json`; answers what it printed.
async fn cli(base: &str, arguments: &[&str]) -> anyhow::Result<Value> {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_hyperplane"));
    let output = tokio::time::timeout(
        Duration::from_secs(1800),
        tokio::process::Command::new(&binary)
            .args(["--url", base, "--token", TOKEN, "--json"])
            .args(arguments)
            .output(),
    )
    .await
    .context("the CLI took over 30 minutes")??;
    if !output.status.success() {
        bail!("hyperplane {arguments:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("the CLI printed {}", String::from_utf8_lossy(&output.stdout)))
}
