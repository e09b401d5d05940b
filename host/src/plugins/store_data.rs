//! The per-instance host state (`T` of `Store<T>`): the deny-by-default WASI context, the
//! memory cap, the deadline of the running call and the plugin's granted capabilities.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::auth::{AuthCallState, SchemeGrants};
use super::http::OutgoingHttpAllowList;
use super::progress::ProgressSink;
use super::settings::EndpointAddress;
use super::state::PluginStateStore;

/// Most table elements (function references) one instance may allocate.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Guest stdout/stderr lines longer than this are split.
const MAX_GUEST_OUTPUT_LINE_BYTES: usize = 4096;
/// How many recent stderr lines are kept to explain a trap.
const RECENT_STDERR_LINES: usize = 4;
/// Longest recent stderr line kept to explain a trap.
const MAX_RECENT_STDERR_LINE_BYTES: usize = 300;

/// What every instance of one provider shares: its identity and its granted capabilities.
pub(crate) struct ProviderContext {
    pub(crate) name: Arc<str>,
    pub(crate) endpoints: BTreeMap<String, EndpointAddress>,
    pub(crate) http_allow_list: OutgoingHttpAllowList,
    pub(crate) state_store: Arc<dyn PluginStateStore>,
    pub(crate) memory_limit_bytes: usize,
    /// What an auth scheme may check; `None` for drivers.
    pub(crate) auth: Option<SchemeGrants>,
    /// The directory the operator granted (a storage plugin's), preopened at
    /// [`GRANTED_DIRECTORY_GUEST_PATH`]; `None`: no filesystem at all.
    pub(crate) granted_directory: Option<PathBuf>,
}

/// Where a granted directory appears inside the guest.
pub const GRANTED_DIRECTORY_GUEST_PATH: &str = "/store";

/// The call currently running in the instance, if any.
pub(crate) struct CallContext {
    pub(crate) function: &'static str,
    pub(crate) deadline: Instant,
    /// Set by the epoch callback when it interrupted the guest because `deadline` passed.
    pub(crate) deadline_exceeded: bool,
    pub(crate) progress_sink: Option<ProgressSink>,
}

pub(crate) struct StoreData {
    pub(crate) provider: Arc<ProviderContext>,
    pub(crate) call: CallContext,
    pub(crate) memory_cap: MemoryCap,
    pub(crate) table: ResourceTable,
    pub(crate) open_connection_count: usize,
    pub(crate) recent_stderr: RecentLines,
    /// The request an auth scheme is authenticating and the identities issued for it.
    pub(crate) auth_call: AuthCallState,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_allow_list: OutgoingHttpAllowList,
}

impl StoreData {
    pub(crate) fn new(provider: Arc<ProviderContext>) -> Self {
        let recent_stderr = RecentLines::default();
        let wasi = deny_by_default_wasi_context(&provider.name, provider.granted_directory.as_deref(), &recent_stderr);
        let memory_cap = MemoryCap::new(provider.memory_limit_bytes);
        let http_allow_list = provider.http_allow_list.clone();
        StoreData {
            provider,
            call: CallContext {
                function: "init",
                deadline: Instant::now(),
                deadline_exceeded: false,
                progress_sink: None,
            },
            memory_cap,
            table: ResourceTable::new(),
            open_connection_count: 0,
            recent_stderr,
            auth_call: AuthCallState::default(),
            wasi,
            http: WasiHttpCtx::new(),
            http_allow_list,
        }
    }

    /// Prepares the instance for a call of `function` that must end by `deadline`.
    pub(crate) fn begin_call(
        &mut self,
        function: &'static str,
        deadline: Instant,
        progress_sink: Option<ProgressSink>,
    ) {
        self.call = CallContext { function, deadline, deadline_exceeded: false, progress_sink };
        self.memory_cap.exceeded = false;
        self.recent_stderr.clear();
    }

    /// Drops what the finished call borrowed from its caller.
    pub(crate) fn end_call(&mut self) {
        self.call.progress_sink = None;
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StoreData {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_allow_list }
    }
}

/// WASI with nothing granted but `granted_directory`: no other preopened directory, no
/// environment, no arguments, closed stdin, no sockets (TCP, UDP and name lookup off, every
/// address denied); guest stdout and stderr become debug events.
fn deny_by_default_wasi_context(
    provider_name: &Arc<str>,
    granted_directory: Option<&Path>,
    recent_stderr: &RecentLines,
) -> WasiCtx {
    let mut builder = WasiCtx::builder();
    if let Some(directory) = granted_directory
        && let Err(error) = builder.preopened_dir(directory, GRANTED_DIRECTORY_GUEST_PATH, FsPerms::ReadWrite)
    {
        // The plugin then finds no directory and says so in its own errors.
        tracing::error!(provider = %provider_name, directory = %directory.display(), %error, "cannot open the granted directory");
    }
    builder
        .stdout(GuestOutput { provider_name: provider_name.clone(), stream_name: "stdout", recent_lines: None })
        .stderr(GuestOutput {
            provider_name: provider_name.clone(),
            stream_name: "stderr",
            recent_lines: Some(recent_stderr.clone()),
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(deny_every_socket_address)
        .build()
}

/// The socket address check of every instance: plugins reach the network only through
/// granted endpoints and allow-listed HTTP hosts.
pub(crate) fn deny_every_socket_address(
    _address: SocketAddr,
    _address_use: SocketAddrUse,
) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>> {
    Box::pin(async { false })
}

/// `StoreLimits` that remembers whether the memory cap refused a growth, so that the trap
/// that follows is reported as `MemoryLimit`.
pub(crate) struct MemoryCap {
    limits: StoreLimits,
    limit_bytes: usize,
    pub(crate) exceeded: bool,
}

impl MemoryCap {
    fn new(limit_bytes: usize) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(limit_bytes)
            .table_elements(MAX_TABLE_ELEMENTS)
            .trap_on_grow_failure(true)
            .build();
        MemoryCap { limits, limit_bytes, exceeded: false }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.exceeded = true;
        }
        self.limits.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The last few lines a guest wrote to stderr (a Rust panic message, typically).
#[derive(Clone, Default)]
pub(crate) struct RecentLines {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl RecentLines {
    fn push(&self, line: &str) {
        if line.trim().is_empty() || line.starts_with("note: run with `RUST_BACKTRACE=1`") {
            return;
        }
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == RECENT_STDERR_LINES {
            lines.pop_front();
        }
        lines.push_back(truncate_to_char_boundary(line, MAX_RECENT_STDERR_LINE_BYTES).to_string());
    }

    fn clear(&self) {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// The recent lines joined by ` / `, or `None` when the guest wrote nothing.
    pub(crate) fn joined(&self) -> Option<String> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.is_empty() { None } else { Some(lines.iter().cloned().collect::<Vec<_>>().join(" / ")) }
    }
}

/// Cuts `text` to at most `max_bytes`, on a character boundary.
pub(crate) fn truncate_to_char_boundary(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A guest's stdout or stderr: each line becomes a `debug` event of the provider.
#[derive(Clone)]
struct GuestOutput {
    provider_name: Arc<str>,
    stream_name: &'static str,
    recent_lines: Option<RecentLines>,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(GuestOutputWriter { output: self.clone(), pending_line: Vec::new() })
    }
}

struct GuestOutputWriter {
    output: GuestOutput,
    pending_line: Vec<u8>,
}

impl GuestOutputWriter {
    fn emit_line(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        tracing::debug!(
            target: "hyperplane::plugin::output",
            provider = %self.output.provider_name,
            stream = self.output.stream_name,
            "{line}"
        );
        if let Some(recent_lines) = &self.output.recent_lines {
            recent_lines.push(line);
        }
    }

    fn emit_complete_lines(&mut self) {
        while let Some(newline) = self.pending_line.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.pending_line.drain(..=newline).collect();
            self.emit_line(&line[..line.len() - 1]);
        }
        if self.pending_line.len() >= MAX_GUEST_OUTPUT_LINE_BYTES {
            let line = std::mem::take(&mut self.pending_line);
            self.emit_line(&line);
        }
    }
}

impl AsyncWrite for GuestOutputWriter {
    fn poll_write(mut self: Pin<&mut Self>, _context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        self.pending_line.extend_from_slice(buffer);
        self.emit_complete_lines();
        Poll::Ready(Ok(buffer.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for GuestOutputWriter {
    fn drop(&mut self) {
        if !self.pending_line.is_empty() {
            let line = std::mem::take(&mut self.pending_line);
            self.emit_line(&line);
        }
    }
}
