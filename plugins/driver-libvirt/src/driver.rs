//! The driver's operations over libvirt, generic over how connections are opened
//! ([`Connector`]), where small records persist ([`KeyValueStore`]) and where template images
//! come from ([`ImageSource`]), so the same code runs in the component (host endpoints, host
//! state, host byte streams) and natively in tests (TCP, memory, byte slices).
//!
//! # Connections
//! One open [`Client`] per libvirt host, kept for the life of this driver value (in the
//! component: of the component instance; the host pools at most 64 instances, busy or idle,
//! which bounds the connections per libvirtd). A connection that fails at the transport or
//! protocol level is dropped, and the next call opens a fresh one (new handshake). Calls are
//! never retried where a repeat could do harm: only when the cached connection turns out to be
//! closed before any reply byte of the operation's first call arrived, and that call is safe to
//! repeat (read-only — lookups, lists, info — or a destroy, whose repeat after one that acted
//! answers "not running"), is the operation run once more on a fresh connection.
//! Per-connection facts (capabilities, versions, the pool handle, undefine flags the daemon
//! refuses) are cached on the connection, so a daemon restart refreshes them.
//!
//! # Records in the provider's state store
//! `instance/<id>` → the host name (only consulted with several hosts); `template/<host>/<name>/<version>`
//! → the template's tag and size, which libvirt volumes cannot carry.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use hyperplane_guest::state::{JsonState, KeyValueStore};
use hyperplane_guest::types::{
    Arch, BackendError, CachedTemplate, Capabilities, ConsoleEndpoint, ConsoleProtocol, DiskFormat, Error,
    ExportedDisk, HostReport, HostState, Instance, InstanceSpec, InstanceState, Snapshot, TemplateRef,
};
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError, DownloadStream};
use crate::config::{DomainTypeChoice, HostSettings, NetworkAttachment, PortRange, Settings};
use crate::domain_xml::{self, DomainDefinition, HostCapabilities, TemplateMetadata};
use crate::protocol::{Domain, DomainSnapshot, DomainState, StoragePool, StorageVolume, error_code, flags};
use crate::serial_ports;

/// Prefix of every domain (and overlay volume) the driver owns: `hp-<instance id>`.
pub const DOMAIN_NAME_PREFIX: &str = "hp-";
/// Prefix of template volumes: `hyperplane-template-<name>-v<version>`.
pub const TEMPLATE_VOLUME_PREFIX: &str = "hyperplane-template-";
const GIB: u64 = 1024 * 1024 * 1024;
/// First and largest pause between state polls during a graceful stop.
const STOP_POLL_FIRST: Duration = Duration::from_millis(50);
const STOP_POLL_MAX: Duration = Duration::from_millis(500);
/// How many times one start moves a serial console off a port another program holds.
const SERIAL_PORT_MOVES: u32 = 3;
/// Bytes the driver asks its image source for at once.
const IMAGE_READ_SIZE: u32 = 1024 * 1024;
/// Largest piece the driver writes into an export's sink at once.
const EXPORT_PIECE_SIZE: usize = 1024 * 1024;

/// Opens byte streams to libvirt hosts by endpoint name.
pub trait Connector {
    type Stream: Read + Write;
    /// Fails with `unavailable` (or `invalid` for an endpoint that is not granted).
    fn open(&self, endpoint: &str) -> Result<Self::Stream, Error>;
}

/// A template image to upload.
pub trait ImageSource {
    fn size(&self) -> u64;
    /// Up to `max` bytes; empty at the end.
    fn read(&mut self, max: u32) -> Result<Vec<u8>, String>;
}

/// A new template image as the changes to a cached version (`transfer.image-delta`).
pub trait DeltaSource {
    /// The cached version the changes apply to.
    fn base(&self) -> TemplateRef;
    /// Size of the new image in bytes.
    fn size(&self) -> u64;
    /// `(offset, length)` of the changed spans, ascending and not overlapping.
    fn changes(&self) -> Vec<(u64, u64)>;
    /// Up to `max` bytes of the changed data, in the order of the spans; empty at the end.
    fn read(&mut self, max: u32) -> Result<Vec<u8>, String>;
}

/// Where an exported disk goes (`transfer.byte-sink`).
pub trait DiskSink {
    /// Takes all of `bytes`; fails when the receiver stopped.
    fn write(&mut self, bytes: &[u8]) -> Result<(), String>;
}

/// The spans of a delta checked (ascending, not overlapping, inside `size`) and merged where
/// one ends where the next starts: one upload stream per run. Empty spans are dropped.
fn delta_runs(spans: &[(u64, u64)], size: u64) -> Result<Vec<(u64, u64)>, Error> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut end_of_previous = 0_u64;
    for &(offset, length) in spans {
        let end = offset.checked_add(length).filter(|end| *end <= size).ok_or_else(|| {
            Error::Invalid(format!("delta span {offset}+{length} lies outside the new image of {size} bytes"))
        })?;
        if offset < end_of_previous {
            return Err(Error::Invalid(format!("delta span at {offset} overlaps or precedes the one before")));
        }
        end_of_previous = end;
        if length == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((run_offset, run_length)) if *run_offset + *run_length == offset => *run_length += length,
            _ => runs.push((offset, length)),
        }
    }
    Ok(runs)
}

/// The bytes of a new image merged from a base volume's download and a delta's changed spans.
struct DeltaMerge<'merge, Stream> {
    base: &'merge mut Client<Stream>,
    stream: DownloadStream,
    /// Downloaded base bytes, `base_consumed` of them already used.
    base_buffer: Vec<u8>,
    base_consumed: usize,
    base_ended: bool,
    delta: &'merge mut dyn DeltaSource,
    runs: &'merge [(u64, u64)],
    next_run: usize,
    position: u64,
    size: u64,
}

impl<Stream: Read + Write> DeltaMerge<'_, Stream> {
    /// `count` bytes of the base from the current position; zeros past its end.
    fn take_base(&mut self, count: usize) -> Result<Vec<u8>, String> {
        while self.base_buffer.len() - self.base_consumed < count && !self.base_ended {
            match self.base.download_piece(&self.stream).map_err(|error| format!("reading the base: {error}"))? {
                Some(piece) => {
                    self.base_buffer.drain(..self.base_consumed);
                    self.base_consumed = 0;
                    self.base_buffer.extend_from_slice(&piece);
                }
                None => self.base_ended = true,
            }
        }
        let available = (self.base_buffer.len() - self.base_consumed).min(count);
        let mut bytes = self.base_buffer[self.base_consumed..self.base_consumed + available].to_vec();
        self.base_consumed += available;
        bytes.resize(count, 0);
        Ok(bytes)
    }

    /// Exactly `count` bytes of the changed data.
    fn take_delta(&mut self, count: usize) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::with_capacity(count);
        while bytes.len() < count {
            let max = u32::try_from(count - bytes.len()).unwrap_or(u32::MAX);
            let piece = self.delta.read(max)?;
            if piece.is_empty() {
                return Err(format!("the delta data ended with {} bytes of a span missing", count - bytes.len()));
            }
            if piece.len() > count - bytes.len() {
                return Err(format!("the delta data returned {} bytes for {max} asked", piece.len()));
            }
            bytes.extend_from_slice(&piece);
        }
        Ok(bytes)
    }

    /// The next piece of the new image (at most [`IMAGE_READ_SIZE`] bytes, never crossing a
    /// span boundary); nothing at its end.
    fn next_chunk(&mut self, chunk: &mut Vec<u8>) -> Result<(), String> {
        if self.position >= self.size {
            return Ok(());
        }
        let mut limit = (self.size - self.position).min(u64::from(IMAGE_READ_SIZE));
        if let Some(&(offset, length)) = self.runs.get(self.next_run) {
            if self.position >= offset {
                let count = limit.min(offset + length - self.position) as usize;
                let bytes = self.take_delta(count)?;
                self.take_base(count)?;
                self.position += count as u64;
                if self.position == offset + length {
                    self.next_run += 1;
                }
                chunk.extend_from_slice(&bytes);
                return Ok(());
            }
            limit = limit.min(offset - self.position);
        }
        let bytes = self.take_base(limit as usize)?;
        self.position += limit;
        chunk.extend_from_slice(&bytes);
        Ok(())
    }
}

/// An in-memory image, for tests and small templates.
#[derive(Debug)]
pub struct BytesImage {
    pub bytes: Vec<u8>,
    pub position: usize,
}

impl ImageSource for BytesImage {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, String> {
        let end = self.bytes.len().min(self.position + max as usize);
        let chunk = self.bytes[self.position..end].to_vec();
        self.position = end;
        Ok(chunk)
    }
}

/// An open connection and what the driver learned over it.
struct Session<Stream> {
    client: Client<Stream>,
    capabilities: Option<HostCapabilities>,
    hypervisor: Option<String>,
    pool: Option<StoragePool>,
    /// The daemon refused undefine's NVRAM and checkpoint flags (`INVALID_ARG`).
    refuses_full_undefine: bool,
    /// Paths of the template volumes looked up on this connection, by volume name (in the
    /// host's pool). A create trusts a known path until an overlay on it is refused.
    template_paths: HashMap<String, String>,
}

impl<Stream: Read + Write> Session<Stream> {
    fn capabilities(&mut self) -> Result<&HostCapabilities, Failure> {
        if self.capabilities.is_none() {
            let xml = self.client.connect_get_capabilities()?;
            self.capabilities = Some(domain_xml::host_capabilities(&xml)?);
        }
        Ok(self.capabilities.get_or_insert_with(HostCapabilities::default))
    }

    fn pool(&mut self, name: &str) -> Result<StoragePool, Failure> {
        if let Some(pool) = &self.pool {
            return Ok(pool.clone());
        }
        let pool = self.client.storage_pool_lookup_by_name(name)?;
        self.pool = Some(pool.clone());
        Ok(pool)
    }

    /// Looks up the path of the template volume `volume` (a handle built from its name, in the
    /// host's pool) and remembers it; `None` when the pool has no such volume.
    fn look_up_template_path(&mut self, volume: &StorageVolume) -> Result<Option<String>, Failure> {
        match self.client.storage_vol_get_path(volume) {
            Ok(path) => {
                self.template_paths.insert(volume.name.clone(), path.clone());
                Ok(Some(path))
            }
            Err(error) if error.libvirt_code() == Some(error_code::NO_STORAGE_VOL) => {
                self.template_paths.remove(&volume.name);
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// "QEMU 10.0.0 / libvirt 11.3.0".
    fn hypervisor(&mut self) -> Result<String, Failure> {
        if let Some(hypervisor) = &self.hypervisor {
            return Ok(hypervisor.clone());
        }
        let hypervisor_type = self.client.connect_get_type()?;
        let hypervisor_version = self.client.connect_get_version()?;
        let library_version = self.client.connect_get_lib_version()?;
        let hypervisor = format!(
            "{hypervisor_type} {} / libvirt {}",
            version_string(hypervisor_version),
            version_string(library_version)
        );
        self.hypervisor = Some(hypervisor.clone());
        Ok(hypervisor)
    }
}

/// libvirt encodes versions as `major * 1_000_000 + minor * 1000 + micro`.
fn version_string(version: u64) -> String {
    format!("{}.{}.{}", version / 1_000_000, version / 1000 % 1000, version % 1000)
}

/// What an operation over a session can fail with.
enum Failure {
    Call(ClientError),
    Driver(Error),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Call(error)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::Driver(error)
    }
}

impl From<hyperplane_guest::state::Error> for Failure {
    fn from(error: hyperplane_guest::state::Error) -> Failure {
        Failure::Driver(error.into())
    }
}

type Outcome<T> = Result<T, Failure>;

/// Maps a client error to the driver's error variant, keeping libvirt's code and message.
pub fn map_client_error(host: &HostSettings, error: ClientError) -> Error {
    match error {
        ClientError::Transport { procedure, source, .. } => Error::Unavailable(format!(
            "libvirt connection to endpoint '{}' closed during {}: {source}",
            host.endpoint,
            procedure.name()
        )),
        ClientError::Protocol { .. } => {
            Error::Backend(BackendError { code: -1, message: format!("libvirt endpoint '{}': {error}", host.endpoint) })
        }
        ClientError::AuthenticationUnsupported { .. } => {
            Error::Unsupported(format!("libvirt endpoint '{}': {error}", host.endpoint))
        }
        ClientError::Source { .. } | ClientError::Sink { .. } => Error::Unavailable(error.to_string()),
        ClientError::Remote { procedure, error } => {
            let message = format!(
                "libvirt {} on host '{}': {} (libvirt error {})",
                procedure.name(),
                host.name,
                error.message_or_default(),
                error.code
            );
            match error.code {
                error_code::NO_DOMAIN
                | error_code::NO_STORAGE_POOL
                | error_code::NO_STORAGE_VOL
                | error_code::NO_DOMAIN_SNAPSHOT
                | error_code::NO_NETWORK => Error::NotFound(message),
                error_code::OPERATION_INVALID
                | error_code::DOM_EXIST
                | error_code::STORAGE_VOL_EXIST
                | error_code::RESOURCE_BUSY => Error::Conflict(message),
                error_code::NO_SUPPORT
                | error_code::OPERATION_UNSUPPORTED
                | error_code::ARGUMENT_UNSUPPORTED
                | error_code::CONFIG_UNSUPPORTED => Error::Unsupported(message),
                error_code::INVALID_ARG
                | error_code::XML_ERROR
                | error_code::INVALID_MAC
                | error_code::XML_INVALID_SCHEMA => Error::Invalid(message),
                code => Error::Backend(BackendError { code: i64::from(code), message }),
            }
        }
    }
}

/// What the state store keeps about a pulled template.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TemplateRecord {
    tag: String,
    size_bytes: u64,
}

/// The libvirt driver: settings, a connector, the provider's state store and open sessions.
pub struct LibvirtDriver<C: Connector, Store: KeyValueStore> {
    settings: Settings,
    connector: C,
    state: JsonState<Store>,
    sessions: RefCell<HashMap<String, Session<C::Stream>>>,
    /// MAC of each instance seen so far (a domain's MAC never changes once defined).
    macs: RefCell<HashMap<String, Option<String>>>,
    /// Host of each instance seen so far.
    instance_hosts: RefCell<HashMap<String, String>>,
    /// libvirt calls made by operations (handshakes not counted), for measurements.
    calls: Cell<u64>,
}

pub fn capabilities() -> Capabilities {
    Capabilities {
        exec: false,
        console: true,
        templates: true,
        snapshots: true,
        suspend: true,
        delta_pull: true,
        export_disk: true,
    }
}

/// Instance ids become domain and file names: letters, digits, `-`, `_`, `.`; at most 128.
fn validate_identifier(what: &str, value: &str) -> Result<(), Error> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value.chars().all(|character| character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what} `{value}` must be 1-128 letters, digits, `-`, `_` or `.` (it names libvirt objects)"
        )))
    }
}

fn validate_mac(mac: &str) -> Result<(), Error> {
    let parts: Vec<&str> = mac.split(':').collect();
    let valid =
        parts.len() == 6 && parts.iter().all(|part| part.len() == 2 && part.chars().all(|c| c.is_ascii_hexdigit()));
    let multicast =
        u8::from_str_radix(parts.first().copied().unwrap_or("01"), 16).map(|first| first & 1 == 1).unwrap_or(true);
    if valid && !multicast {
        Ok(())
    } else {
        Err(Error::Invalid(format!("mac `{mac}` is not a unicast address like 52:54:00:12:34:56")))
    }
}

/// The handle of volume `name` in `pool`, built without a round trip: libvirtd resolves volume
/// handles by pool and volume name (the storage driver's and the test driver's volume calls
/// find the volume by `vol->pool` and `vol->name`; `key` is not consulted), and a missing
/// volume fails the actual call with `NO_STORAGE_VOL`.
fn volume_handle(pool: &StoragePool, name: String) -> StorageVolume {
    StorageVolume { pool: pool.name.clone(), name, key: String::new() }
}

/// A MAC as libvirt generates one when the XML has none, for the domain types whose libvirt
/// drivers use the prefix `52:54:00` (QEMU/KVM and the test driver): the prefix and three random
/// bytes (SipHash of the instance id under `RandomState`'s random keys). `None` for other
/// domain types: libvirt chooses there (another prefix), and the create reads it back.
fn generated_mac(instance_id: &str, domain_type: &str) -> Option<String> {
    if !matches!(domain_type, "kvm" | "qemu" | "test") {
        return None;
    }
    let [first, second, third, ..] = crate::random_bits(instance_id).to_le_bytes();
    Some(format!("52:54:00:{first:02x}:{second:02x}:{third:02x}"))
}

/// Whether a start failed because the serial console's TCP port is held by another program
/// (QEMU: "-chardev socket,id=charserial0,…: Failed to find an available port: Address already
/// in use").
fn serial_port_taken(error: &ClientError) -> bool {
    let message = error.to_string();
    message.contains("charserial") && message.contains("Address already in use")
}

pub fn domain_name(instance_id: &str) -> String {
    format!("{DOMAIN_NAME_PREFIX}{instance_id}")
}

fn overlay_volume_name(instance_id: &str) -> String {
    format!("{}.qcow2", domain_name(instance_id))
}

/// The temporary volume of an export: `hp-<id>.export-<random>.qcow2` (random: two exports
/// of one instance never share it).
fn export_volume_name(instance_id: &str) -> String {
    format!("{}.export-{:016x}.qcow2", domain_name(instance_id), crate::random_bits(instance_id))
}

pub fn template_volume_name(name: &str, version: u32) -> String {
    format!("{TEMPLATE_VOLUME_PREFIX}{name}-v{version}")
}

/// `(name, version)` of a template volume name.
fn parse_template_volume_name(volume_name: &str) -> Option<(String, u32)> {
    let rest = volume_name.strip_prefix(TEMPLATE_VOLUME_PREFIX)?;
    let (name, version) = rest.rsplit_once("-v")?;
    (!name.is_empty()).then(|| Some((name.to_owned(), version.parse().ok()?))).flatten()
}

fn template_key(host: &str, name: &str, version: u32) -> String {
    format!("template/{host}/{name}/{version}")
}

fn instance_key(instance_id: &str) -> String {
    format!("instance/{instance_id}")
}

fn instance_state(state: DomainState) -> InstanceState {
    match state {
        DomainState::Running | DomainState::Blocked => InstanceState::Running,
        DomainState::Paused | DomainState::PowerManagementSuspended => InstanceState::Suspended,
        DomainState::ShuttingDown => InstanceState::Stopping,
        DomainState::ShutOff | DomainState::NoState => InstanceState::Stopped,
        DomainState::Crashed | DomainState::Unknown(_) => InstanceState::Error,
    }
}

fn snapshot_instance_state(state: &str) -> InstanceState {
    match state {
        "running" | "blocked" => InstanceState::Running,
        "paused" | "pmsuspended" => InstanceState::Suspended,
        "crashed" => InstanceState::Error,
        _ => InstanceState::Stopped,
    }
}

fn uuid_bytes(instance_id: &str) -> Option<[u8; 16]> {
    uuid::Uuid::try_parse(instance_id).ok().map(|uuid| *uuid.as_bytes())
}

fn arch_of(libvirt_arch: &str) -> Arch {
    match libvirt_arch {
        "aarch64" | "arm64" => Arch::Arm64,
        _ => Arch::Amd64,
    }
}

fn disk_format_name(format: DiskFormat) -> &'static str {
    match format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    }
}

impl<C: Connector, Store: KeyValueStore> LibvirtDriver<C, Store> {
    pub fn new(settings: Settings, connector: C, store: Store) -> Self {
        Self {
            settings,
            connector,
            state: JsonState::new(store),
            sessions: RefCell::new(HashMap::new()),
            macs: RefCell::new(HashMap::new()),
            instance_hosts: RefCell::new(HashMap::new()),
            calls: Cell::new(0),
        }
    }

    /// libvirt calls (round trips) made by operations so far, handshakes not counted: tests
    /// measure the calls per operation with it.
    pub fn libvirt_calls(&self) -> u64 {
        self.calls.get()
    }

    /// Runs `operation` on `session`, counting its calls.
    fn counted<R>(
        &self,
        session: &mut Session<C::Stream>,
        operation: &mut impl FnMut(&mut Session<C::Stream>) -> Outcome<R>,
    ) -> Outcome<R> {
        let before = session.client.calls_sent();
        let result = operation(session);
        self.calls.set(self.calls.get() + (session.client.calls_sent() - before));
        result
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn host(&self, name: &str) -> Result<&HostSettings, Error> {
        self.settings.host(name).ok_or_else(|| Error::NotFound(format!("unknown libvirt host `{name}`")))
    }

    fn open_session(&self, host: &HostSettings) -> Result<Session<C::Stream>, Error> {
        let stream = self.connector.open(&host.endpoint)?;
        let client = Client::connect(stream, &host.uri).map_err(|error| map_client_error(host, error))?;
        Ok(Session {
            client,
            capabilities: None,
            hypervisor: None,
            pool: None,
            refuses_full_undefine: false,
            template_paths: HashMap::new(),
        })
    }

    /// Runs `operation` on the host's session (opening one if needed); see the module doc for
    /// when a connection is dropped and when an operation runs again.
    fn with_session<R>(
        &self,
        host: &HostSettings,
        mut operation: impl FnMut(&mut Session<C::Stream>) -> Outcome<R>,
    ) -> Result<R, Error> {
        let cached = self.sessions.borrow_mut().remove(&host.name);
        let reused = cached.is_some();
        let mut session = match cached {
            Some(session) => session,
            None => self.open_session(host)?,
        };
        let replies_before = session.client.replies_received();
        let result = self.counted(&mut session, &mut operation);
        let result = match result {
            Err(Failure::Call(error))
                if reused
                    && error.closed_before_reply()
                    && session.client.replies_received() == replies_before
                    && matches!(&error, ClientError::Transport { procedure, .. } if procedure.is_safe_to_repeat()) =>
            {
                hyperplane_guest::log::debug(
                    "cached libvirt connection was closed; reconnecting",
                    &[("host", &host.name), ("error", &error.to_string())],
                );
                session = self.open_session(host)?;
                self.counted(&mut session, &mut operation)
            }
            other => other,
        };
        match result {
            Ok(value) => {
                self.sessions.borrow_mut().insert(host.name.clone(), session);
                Ok(value)
            }
            Err(Failure::Call(error)) => {
                if !error.breaks_connection() {
                    self.sessions.borrow_mut().insert(host.name.clone(), session);
                }
                Err(map_client_error(host, error))
            }
            Err(Failure::Driver(error)) => {
                self.sessions.borrow_mut().insert(host.name.clone(), session);
                Err(error)
            }
        }
    }

    /// The host an existing instance lives on.
    fn host_of_instance(&self, instance_id: &str) -> Result<&HostSettings, Error> {
        validate_identifier("instance id", instance_id)?;
        if let [only_host] = self.settings.hosts.as_slice() {
            return Ok(only_host);
        }
        if let Some(host_name) = self.instance_hosts.borrow().get(instance_id)
            && let Some(host) = self.settings.host(host_name)
        {
            return Ok(host);
        }
        if let Some(host_name) = self.state.get_json::<String>(&instance_key(instance_id))?
            && let Some(host) = self.settings.host(&host_name)
        {
            self.instance_hosts.borrow_mut().insert(instance_id.to_owned(), host.name.clone());
            return Ok(host);
        }
        // Not recorded (created elsewhere, or the record was lost): ask every host.
        for host in &self.settings.hosts {
            let found = self.with_session(host, |session| {
                match session.client.domain_lookup_by_name(&domain_name(instance_id)) {
                    Ok(_) => Ok(true),
                    Err(error) if error.libvirt_code() == Some(error_code::NO_DOMAIN) => Ok(false),
                    Err(error) => Err(error.into()),
                }
            });
            if let Ok(true) = found {
                self.instance_hosts.borrow_mut().insert(instance_id.to_owned(), host.name.clone());
                return Ok(host);
            }
        }
        Err(Error::NotFound(format!("instance `{instance_id}` is on no libvirt host of this provider")))
    }

    /// The domain handle of an instance. For UUID ids (the domain's UUID is the id) the handle
    /// is built without a round trip: libvirt resolves handles by UUID, and a missing domain
    /// fails the actual call with `NO_DOMAIN`.
    fn domain_handle(session: &mut Session<C::Stream>, instance_id: &str) -> Outcome<Domain> {
        match uuid_bytes(instance_id) {
            Some(uuid) => Ok(Domain { name: domain_name(instance_id), uuid, id: -1 }),
            None => Ok(session.client.domain_lookup_by_name(&domain_name(instance_id))?),
        }
    }

    fn remember_mac(&self, instance_id: &str, mac: Option<String>) {
        self.macs.borrow_mut().insert(instance_id.to_owned(), mac);
    }

    /// The instance's MAC: from memory, or from its XML (one call) the first time.
    fn mac_of(&self, session: &mut Session<C::Stream>, instance_id: &str, domain: &Domain) -> Outcome<Option<String>> {
        if let Some(mac) = self.macs.borrow().get(instance_id) {
            return Ok(mac.clone());
        }
        let facts = domain_xml::domain_facts(&session.client.domain_get_xml_desc(domain, 0)?)?;
        self.remember_mac(instance_id, facts.mac.clone());
        Ok(facts.mac)
    }

    fn instance_record(
        &self,
        session: &mut Session<C::Stream>,
        host: &HostSettings,
        instance_id: &str,
        domain: &Domain,
        state: InstanceState,
    ) -> Outcome<Instance> {
        let mac = self.mac_of(session, instance_id, domain)?;
        Ok(Instance { id: instance_id.to_owned(), host: host.name.clone(), state, ip: None, mac })
    }

    // ----- hosts ------------------------------------------------------------------------

    pub fn list_hosts(&self) -> Result<Vec<HostReport>, Error> {
        Ok(self.settings.hosts.iter().map(|host| self.host_report(host)).collect())
    }

    fn host_report(&self, host: &HostSettings) -> HostReport {
        let report = self.with_session(host, |session| {
            let node = session.client.node_get_info()?;
            let arch = session.capabilities()?.arch.clone();
            let hypervisor = session.hypervisor()?;
            let pool = session.pool(&host.pool)?;
            let pool_info = session.client.storage_pool_get_info(&pool)?;
            let cached_templates = self.cached_templates(session, host, &pool)?;
            Ok(HostReport {
                id: host.name.clone(),
                arch: arch_of(&arch),
                cpu: u32::try_from(node.cpus).unwrap_or(0),
                ram_mb: node.memory_kib / 1024,
                disk_gb: pool_info.available / GIB,
                state: HostState::Active,
                hypervisor,
                cached_templates,
            })
        });
        report.unwrap_or_else(|error| {
            hyperplane_guest::log::warn(
                "libvirt host unreachable; reporting it offline",
                &[("host", &host.name), ("error", &format!("{error:?}"))],
            );
            HostReport {
                id: host.name.clone(),
                arch: Arch::Amd64,
                cpu: 0,
                ram_mb: 0,
                disk_gb: 0,
                state: HostState::Offline,
                hypervisor: String::new(),
                cached_templates: Vec::new(),
            }
        })
    }

    // ----- instances --------------------------------------------------------------------

    /// Every `hp-` domain of every host with its state (one call per host). MAC and IP are
    /// left out here; `get-instance` has them. Fails `unavailable` when any host cannot be
    /// listed: a partial list would make the host think that host's instances are gone.
    pub fn list_instances(&self) -> Result<Vec<Instance>, Error> {
        let mut instances = Vec::new();
        for host in &self.settings.hosts {
            let states = self
                .with_session(host, |session| match session.client.connect_get_all_domain_states() {
                    Ok(states) => Ok(states),
                    Err(error) if error.libvirt_code() == Some(error_code::NO_SUPPORT) => {
                        let domains = session.client.connect_list_all_domains(flags::CONNECT_LIST_DOMAINS_ALL)?;
                        let mut states = Vec::with_capacity(domains.len());
                        for domain in domains.into_iter().filter(|domain| domain.name.starts_with(DOMAIN_NAME_PREFIX)) {
                            let state = session.client.domain_get_state(&domain)?;
                            states.push((domain, Some(state)));
                        }
                        Ok(states)
                    }
                    Err(error) => Err(error.into()),
                })
                .map_err(|error| match error {
                    Error::Unavailable(message) => {
                        Error::Unavailable(format!("cannot list instances of libvirt host `{}`: {message}", host.name))
                    }
                    other => other,
                })?;
            for (domain, state) in states {
                let Some(instance_id) = domain.name.strip_prefix(DOMAIN_NAME_PREFIX) else { continue };
                instances.push(Instance {
                    id: instance_id.to_owned(),
                    host: host.name.clone(),
                    state: state.map(instance_state).unwrap_or(InstanceState::Error),
                    ip: None,
                    mac: self.macs.borrow().get(instance_id).cloned().flatten(),
                });
            }
        }
        Ok(instances)
    }

    pub fn create_instance(&self, spec: &InstanceSpec) -> Result<Instance, Error> {
        validate_identifier("instance id", &spec.id)?;
        validate_identifier("template name", &spec.template.name)?;
        if spec.vcpu == 0 || spec.ram_mb == 0 {
            return Err(Error::Invalid("vcpu and ram-mb must be at least 1".into()));
        }
        if let Some(mac) = &spec.mac {
            validate_mac(mac)?;
        }
        let host = self.host(&spec.host)?;
        if spec.vlan.is_some() && host.network == NetworkAttachment::User {
            return Err(Error::Invalid(format!(
                "vlan {} requested but host `{}` has neither `network` nor `bridge` configured (user-mode nic)",
                spec.vlan.unwrap_or_default(),
                host.name
            )));
        }
        let uuid = uuid_bytes(&spec.id);
        let instance = self.with_session(host, |session| {
            let pool = session.pool(&host.pool)?;
            // The template's path, from an earlier create on this connection or looked up (the
            // lookup is what tells that the template is not cached). Volume handles are resolved
            // by pool and name (the key is not consulted), so the handle is built, not looked up.
            let template_volume =
                volume_handle(&pool, template_volume_name(&spec.template.name, spec.template.version));
            let not_cached = || -> Failure {
                Error::Conflict(format!(
                    "template `{}` v{} is not cached on host `{}`; pull it first",
                    spec.template.name, spec.template.version, host.name
                ))
                .into()
            };
            let known_path = session.template_paths.get(&template_volume.name).cloned();
            let path_was_known = known_path.is_some();
            let mut backing_path = match known_path {
                Some(path) => path,
                None => session.look_up_template_path(&template_volume)?.ok_or_else(not_cached)?,
            };
            let host_facts = session.capabilities()?.clone();
            let domain_type = match &host.domain_type {
                DomainTypeChoice::Fixed(fixed) => fixed.clone(),
                DomainTypeChoice::Auto => ["kvm", "qemu"]
                    .iter()
                    .find(|preferred| host_facts.domain_types.iter().any(|offered| offered == *preferred))
                    .map(|preferred| (*preferred).to_owned())
                    .or_else(|| host_facts.domain_types.first().cloned())
                    .ok_or_else(|| {
                        Error::Unsupported(format!("host `{}` offers no domain type for its arch", host.name))
                    })?,
            };
            // Without a MAC in the spec, pick one as libvirt would for these domain types, so
            // the define needs no XML read afterwards to learn it.
            let mac = spec.mac.clone().or_else(|| generated_mac(&spec.id, &domain_type));
            let serial_port = host
                .serial_ports
                .map(|ports| {
                    serial_ports::claim(&self.state, &host.name, ports, &spec.id, |owner| {
                        Self::domain_is_gone(session, owner)
                    })
                })
                .transpose()?;
            let definition = DomainDefinition {
                domain_name: domain_name(&spec.id),
                uuid: uuid.map(|bytes| uuid::Uuid::from_bytes(bytes).hyphenated().to_string()),
                domain_type,
                arch: host_facts.guest_arch.clone(),
                vcpu: spec.vcpu,
                memory_mib: spec.ram_mb,
                disk_pool: pool.name.clone(),
                disk_volume: overlay_volume_name(&spec.id),
                network: host.network.clone(),
                mac: mac.clone(),
                vlan: spec.vlan,
                vnc_listen: host.vnc_listen.clone(),
                serial_port,
                console_log_file: host
                    .console_log_dir
                    .as_ref()
                    .map(|directory| format!("{}/{}.log", directory.trim_end_matches('/'), domain_name(&spec.id))),
                instance_name: spec.name.clone(),
                template: TemplateMetadata { name: spec.template.name.clone(), version: spec.template.version },
                metadata: spec.metadata.iter().map(|entry| (entry.key.clone(), entry.value.clone())).collect(),
            };
            let xml = domain_xml::domain_xml(&definition)?;
            let capacity = (spec.disk_gb.saturating_mul(GIB)).max(spec.template.size_bytes);
            let overlay_xml = |backing_path: &str| {
                domain_xml::overlay_volume_xml(
                    &overlay_volume_name(&spec.id),
                    capacity,
                    backing_path,
                    disk_format_name(spec.template.format),
                )
            };
            let mut created = session.client.storage_vol_create_xml(&pool, &overlay_xml(&backing_path), 0);
            if path_was_known && created.as_ref().is_err_and(|error| !error.breaks_connection()) {
                // A known path is stale when the template was removed through another
                // connection since (libvirt refuses an overlay on a missing backing file; the
                // test driver does not check): look it up again.
                backing_path = session.look_up_template_path(&template_volume)?.ok_or_else(not_cached)?;
                created = session.client.storage_vol_create_xml(&pool, &overlay_xml(&backing_path), 0);
            }
            let overlay = match created {
                Ok(overlay) => overlay,
                Err(error) if !error.breaks_connection() => {
                    let existing = match uuid {
                        Some(uuid) => session.client.domain_lookup_by_uuid(&uuid),
                        None => session.client.domain_lookup_by_name(&domain_name(&spec.id)),
                    };
                    match existing {
                        Ok(_) => {
                            return Err(Error::Conflict(format!(
                                "instance `{}` already exists on host `{}`",
                                spec.id, host.name
                            ))
                            .into());
                        }
                        Err(missing) if missing.libvirt_code() == Some(error_code::NO_DOMAIN) => {}
                        Err(other) => return Err(other.into()),
                    }
                    // No such domain: the overlay is left over from an interrupted create of
                    // this same instance; replace it. (Drivers word "exists" with different
                    // codes, so the lookup decides.)
                    match session.client.storage_vol_delete(&volume_handle(&pool, overlay_volume_name(&spec.id))) {
                        Ok(()) => {}
                        // None there (or an inactive pool): the create's own error stands.
                        Err(missing)
                            if matches!(
                                missing.libvirt_code(),
                                Some(error_code::NO_STORAGE_VOL | error_code::OPERATION_INVALID)
                            ) =>
                        {
                            return Err(error.into());
                        }
                        Err(other) => return Err(other.into()),
                    }
                    session.client.storage_vol_create_xml(&pool, &overlay_xml(&backing_path), 0)?
                }
                Err(error) => return Err(error.into()),
            };
            if self.settings.hosts.len() > 1
                && let Err(error) = self.state.set_json(&instance_key(&spec.id), &host.name)
            {
                let _ = session.client.storage_vol_delete(&overlay);
                return Err(error.into());
            }
            // No VIR_DOMAIN_DEFINE_VALIDATE: checking the XML against libvirt's schema costs
            // ~15 ms per define (14x the define itself, measured on the test driver), and the
            // XML is ours: `tests/remote_protocol.rs` defines it with validation.
            let domain = match session.client.domain_define_xml_flags(&xml, 0) {
                Ok(domain) => domain,
                Err(error) => {
                    // Undo what this call created; a broken connection leaves the overlay for
                    // a retried create to find (`conflict`) or for delete-instance.
                    if !error.breaks_connection() {
                        let _ = session.client.storage_vol_delete(&overlay);
                        let _ = self.state.delete(&instance_key(&spec.id));
                        if host.serial_ports.is_some() {
                            let _ = serial_ports::release(&self.state, &host.name, &spec.id);
                        }
                    }
                    return Err(error.into());
                }
            };
            let mac = match mac {
                Some(mac) => Some(mac),
                None => domain_xml::domain_facts(&session.client.domain_get_xml_desc(&domain, 0)?)?.mac,
            };
            Ok(Instance { id: spec.id.clone(), host: host.name.clone(), state: InstanceState::Stopped, ip: None, mac })
        })?;
        self.remember_mac(&spec.id, instance.mac.clone());
        self.instance_hosts.borrow_mut().insert(spec.id.clone(), host.name.clone());
        Ok(instance)
    }

    /// Runs `operation` on the domain of `instance_id`, then returns the instance in the state
    /// `operation` reports.
    fn on_domain(
        &self,
        instance_id: &str,
        mut operation: impl FnMut(&mut Session<C::Stream>, &Domain) -> Outcome<InstanceState>,
    ) -> Result<Instance, Error> {
        let host = self.host_of_instance(instance_id)?;
        self.with_session(host, |session| {
            let domain = Self::domain_handle(session, instance_id)?;
            let state = operation(session, &domain)?;
            self.instance_record(session, host, instance_id, &domain, state)
        })
    }

    pub fn start_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        self.on_domain(instance_id, |session, domain| {
            let mut moves = 0;
            loop {
                let error = match session.client.domain_create(domain) {
                    Ok(()) => return Ok(InstanceState::Running),
                    Err(error) if error.libvirt_code().is_some() => error,
                    Err(error) => return Err(error.into()),
                };
                // Already running: starting is idempotent. (QEMU says "operation invalid", the
                // test driver "internal error": the state decides.)
                let state = session.client.domain_get_state(domain)?;
                if state.is_active() {
                    return Ok(instance_state(state));
                }
                let host = self.host_of_instance(instance_id)?;
                match host.serial_ports {
                    Some(ports) if moves < SERIAL_PORT_MOVES && serial_port_taken(&error) => {
                        self.move_serial_console(session, host, ports, instance_id, domain)?;
                        moves += 1;
                    }
                    _ => return Err(error.into()),
                }
            }
        })
    }

    /// Moves the domain's TCP serial console off the port it could not bind (a program outside
    /// Hyperplane holds it): that port is left to the program, another is claimed and the
    /// domain is defined again with it.
    fn move_serial_console(
        &self,
        session: &mut Session<C::Stream>,
        host: &HostSettings,
        ports: PortRange,
        instance_id: &str,
        domain: &Domain,
    ) -> Outcome<()> {
        let xml = session.client.domain_get_xml_desc(domain, flags::DOMAIN_XML_INACTIVE)?;
        let Some(taken) = domain_xml::domain_facts(&xml)?.serial_port else {
            return Err(Error::Conflict(format!("instance `{instance_id}` has no serial console port to move")).into());
        };
        serial_ports::mark_taken_outside(&self.state, &host.name, taken, instance_id)?;
        let port = serial_ports::claim(&self.state, &host.name, ports, instance_id, |owner| {
            Self::domain_is_gone(session, owner)
        })?;
        hyperplane_guest::log::info(
            "serial console port held outside Hyperplane; moving the console",
            &[("instance", instance_id), ("taken", &taken.to_string()), ("port", &port.to_string())],
        );
        // libvirt writes attributes in single quotes; the console repeats the serial's source.
        let moved = xml.replace(&format!("service='{taken}'"), &format!("service='{port}'"));
        session.client.domain_define_xml_flags(&moved, 0)?;
        Ok(())
    }

    pub fn stop_instance(&self, instance_id: &str, force: bool, grace_ms: u32) -> Result<Instance, Error> {
        self.on_domain(instance_id, |session, domain| {
            let state = session.client.domain_get_state(domain)?;
            if !state.is_active() {
                return Ok(InstanceState::Stopped);
            }
            // A paused guest cannot react to the power button.
            if !force && grace_ms > 0 && state != DomainState::Paused {
                match session.client.domain_shutdown_flags(domain, flags::DOMAIN_SHUTDOWN_ACPI_POWER_BUTTON) {
                    Ok(()) => {}
                    // Drivers without an ACPI power button (the test driver): their default.
                    Err(error) if error.libvirt_code() == Some(error_code::INVALID_ARG) => {
                        session.client.domain_shutdown_flags(domain, 0)?;
                    }
                    Err(error) => return Err(error.into()),
                }
                let deadline = Instant::now() + Duration::from_millis(u64::from(grace_ms));
                let mut pause = STOP_POLL_FIRST;
                loop {
                    if !session.client.domain_get_state(domain)?.is_active() {
                        return Ok(InstanceState::Stopped);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(STOP_POLL_MAX);
                }
            }
            match session.client.domain_destroy(domain) {
                Ok(()) => Ok(InstanceState::Stopped),
                // It stopped between the last poll and the destroy.
                Err(error) if error.libvirt_code() == Some(error_code::OPERATION_INVALID) => Ok(InstanceState::Stopped),
                Err(error) => Err(error.into()),
            }
        })
    }

    pub fn restart_instance(&self, instance_id: &str, force: bool) -> Result<Instance, Error> {
        self.on_domain(instance_id, |session, domain| {
            let state = session.client.domain_get_state(domain)?;
            if !state.is_active() {
                return Err(Error::Conflict(format!("instance `{instance_id}` is stopped; start it instead")).into());
            }
            if force {
                session.client.domain_destroy(domain)?;
                session.client.domain_create(domain)?;
            } else {
                session.client.domain_reboot(domain, 0)?;
            }
            Ok(InstanceState::Running)
        })
    }

    pub fn suspend_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        self.on_domain(instance_id, |session, domain| {
            let result = session.client.domain_suspend(domain);
            Self::settle_pause_change(session, instance_id, domain, result, InstanceState::Suspended, "suspended")
        })
    }

    pub fn resume_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        self.on_domain(instance_id, |session, domain| {
            let result = session.client.domain_resume(domain);
            Self::settle_pause_change(session, instance_id, domain, result, InstanceState::Running, "resumed")
        })
    }

    /// The outcome of a suspend or resume. On a libvirt refusal (drivers word "not running"
    /// differently) the state decides: already there → success; stopped → `conflict`.
    fn settle_pause_change(
        session: &mut Session<C::Stream>,
        instance_id: &str,
        domain: &Domain,
        result: Result<(), ClientError>,
        target: InstanceState,
        verb: &str,
    ) -> Outcome<InstanceState> {
        let error = match result {
            Ok(()) => return Ok(target),
            Err(error) if error.breaks_connection() || error.libvirt_code() == Some(error_code::NO_DOMAIN) => {
                return Err(error.into());
            }
            Err(error) => error,
        };
        let state = session.client.domain_get_state(domain)?;
        if instance_state(state) == target {
            Ok(target)
        } else if !state.is_active() {
            Err(Error::Conflict(format!("instance `{instance_id}` is stopped; it cannot be {verb}")).into())
        } else {
            Err(error.into())
        }
    }

    pub fn delete_instance(&self, instance_id: &str) -> Result<(), Error> {
        let host = self.host_of_instance(instance_id)?;
        let deleted = self.with_session(host, |session| {
            let domain = Self::domain_handle(session, instance_id)?;
            let pool = session.pool(&host.pool)?;
            let overlay = volume_handle(&pool, overlay_volume_name(instance_id));
            // Destroy first, whatever the state: a stopped domain answers "not running", as a
            // repeat on a fresh connection would (see `with_session`) after one that acted.
            match session.client.domain_destroy(&domain) {
                Ok(()) => {}
                Err(error) if error.libvirt_code() == Some(error_code::OPERATION_INVALID) => {}
                Err(error) if error.libvirt_code() == Some(error_code::NO_DOMAIN) => {
                    // An overlay left by an interrupted create is still ours to remove (best
                    // effort, as the lookup it replaces: an inactive pool leaves it).
                    match Self::delete_volume_if_present(session, &overlay) {
                        Err(Failure::Call(other)) if other.libvirt_code() == Some(error_code::OPERATION_INVALID) => {}
                        other => {
                            other?;
                        }
                    }
                    return Err(error.into());
                }
                Err(error) => return Err(error.into()),
            }
            // The overlay goes before the domain, while the domain's XML can still tell where
            // it is: in the host's pool (one call, no lookup), else (the provider's `pool` was
            // changed since the create) in the pool the domain's disk names.
            if !Self::delete_volume_if_present(session, &overlay)? {
                let facts = domain_xml::domain_facts(
                    &session.client.domain_get_xml_desc(&domain, flags::DOMAIN_XML_INACTIVE)?,
                )?;
                for (pool_name, volume_name) in facts
                    .disk_volumes
                    .iter()
                    .filter(|(pool_name, volume)| *volume == overlay.name && *pool_name != pool.name)
                {
                    let other_pool = session.client.storage_pool_lookup_by_name(pool_name)?;
                    Self::delete_volume_if_present(session, &volume_handle(&other_pool, volume_name.clone()))?;
                }
            }
            Self::undefine(session, &domain)
        });
        // Gone or never defined: its serial console port is free.
        if host.serial_ports.is_some() && matches!(deleted, Ok(()) | Err(Error::NotFound(_))) {
            serial_ports::release(&self.state, &host.name, instance_id)?;
        }
        deleted?;
        if self.settings.hosts.len() > 1 {
            self.state.delete(&instance_key(instance_id))?;
        }
        self.macs.borrow_mut().remove(instance_id);
        self.instance_hosts.borrow_mut().remove(instance_id);
        Ok(())
    }

    /// Whether the domain of `instance_id` is gone from the session's host.
    fn domain_is_gone(session: &mut Session<C::Stream>, instance_id: &str) -> Outcome<bool> {
        match session.client.domain_lookup_by_name(&domain_name(instance_id)) {
            Ok(_) => Ok(false),
            Err(error) if error.libvirt_code() == Some(error_code::NO_DOMAIN) => Ok(true),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes `volume`; `false` when there is none.
    fn delete_volume_if_present(session: &mut Session<C::Stream>, volume: &StorageVolume) -> Outcome<bool> {
        match session.client.storage_vol_delete(volume) {
            Ok(()) => Ok(true),
            Err(error) if error.libvirt_code() == Some(error_code::NO_STORAGE_VOL) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Undefines with managed save, snapshot, NVRAM and checkpoint metadata. Drivers without
    /// NVRAM or checkpoints (the test driver) refuse those flags with `INVALID_ARG`; the
    /// connection remembers that, so the refused call is paid once per connection.
    fn undefine(session: &mut Session<C::Stream>, domain: &Domain) -> Outcome<()> {
        let basic_flags = flags::DOMAIN_UNDEFINE_MANAGED_SAVE | flags::DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        if !session.refuses_full_undefine {
            let all_flags = basic_flags | flags::DOMAIN_UNDEFINE_NVRAM | flags::DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
            match session.client.domain_undefine_flags(domain, all_flags) {
                Ok(()) => return Ok(()),
                Err(error) if error.libvirt_code() == Some(error_code::INVALID_ARG) => {
                    session.refuses_full_undefine = true;
                }
                Err(error) => return Err(error.into()),
            }
        }
        session.client.domain_undefine_flags(domain, basic_flags)?;
        Ok(())
    }

    pub fn get_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        let host = self.host_of_instance(instance_id)?;
        let instance = self.with_session(host, |session| {
            let domain = Self::domain_handle(session, instance_id)?;
            let state = instance_state(session.client.domain_get_state(&domain)?);
            let facts = domain_xml::domain_facts(&session.client.domain_get_xml_desc(&domain, 0)?)?;
            let ip = if state == InstanceState::Running {
                Self::ip_address(session, host, &domain, facts.mac.as_deref())
            } else {
                None
            };
            Ok(Instance { id: instance_id.to_owned(), host: host.name.clone(), state, ip, mac: facts.mac })
        })?;
        self.remember_mac(instance_id, instance.mac.clone());
        Ok(instance)
    }

    /// The first IPv4 address (else any address) of the instance's NIC: from the libvirt
    /// network's DHCP leases, else from the guest agent. Failures mean "no address".
    fn ip_address(
        session: &mut Session<C::Stream>,
        host: &HostSettings,
        domain: &Domain,
        mac: Option<&str>,
    ) -> Option<String> {
        let mut sources = Vec::with_capacity(2);
        if matches!(host.network, NetworkAttachment::Network(_)) {
            sources.push(flags::DOMAIN_INTERFACE_ADDRESSES_SOURCE_LEASE);
        }
        sources.push(flags::DOMAIN_INTERFACE_ADDRESSES_SOURCE_AGENT);
        for source in sources {
            let interfaces = match session.client.domain_interface_addresses(domain, source) {
                Ok(interfaces) => interfaces.0,
                Err(error) => {
                    hyperplane_guest::log::debug(
                        "no interface addresses",
                        &[("domain", &domain.name), ("error", &error.to_string())],
                    );
                    if error.breaks_connection() {
                        return None;
                    }
                    continue;
                }
            };
            let matching = interfaces.iter().filter(|interface| {
                mac.is_none_or(|mac| {
                    interface.hardware_address.as_deref().is_some_and(|hardware| hardware.eq_ignore_ascii_case(mac))
                })
            });
            let addresses: Vec<_> = matching.flat_map(|interface| interface.addresses.iter()).collect();
            let chosen = addresses
                .iter()
                .find(|address| address.address_type == crate::protocol::IP_ADDRESS_TYPE_IPV4)
                .or_else(|| addresses.first());
            if let Some(address) = chosen {
                return Some(address.address.clone());
            }
        }
        None
    }

    /// The serial console when the domain has one on TCP (the host's `serial_ports`), else VNC;
    /// either listens only while the domain runs.
    pub fn console(&self, instance_id: &str) -> Result<ConsoleEndpoint, Error> {
        let host = self.host_of_instance(instance_id)?;
        let facts = self.with_session(host, |session| {
            let domain = Self::domain_handle(session, instance_id)?;
            Ok(domain_xml::domain_facts(&session.client.domain_get_xml_desc(&domain, 0)?)?)
        })?;
        let (protocol, port) = match (facts.serial_port, facts.vnc_port) {
            (Some(port), _) if facts.active => (ConsoleProtocol::Serial, port),
            (Some(_), _) => {
                return Err(Error::Conflict(format!(
                    "instance `{instance_id}` is not running; its serial console is not listening"
                )));
            }
            (None, Some(port)) => (ConsoleProtocol::Vnc, port),
            (None, None) => {
                return Err(Error::Conflict(format!(
                    "instance `{instance_id}` is not running; its vnc console has no port"
                )));
            }
        };
        Ok(ConsoleEndpoint { protocol, host: host.address.clone(), port, password: None })
    }

    // ----- templates --------------------------------------------------------------------

    fn cached_templates(
        &self,
        session: &mut Session<C::Stream>,
        host: &HostSettings,
        pool: &StoragePool,
    ) -> Outcome<Vec<CachedTemplate>> {
        let volumes = session.client.storage_pool_list_all_volumes(pool)?;
        let records: HashMap<String, TemplateRecord> =
            self.state.scan_json::<TemplateRecord>(&format!("template/{}/", host.name))?.into_iter().collect();
        let mut templates = Vec::new();
        for volume in volumes {
            let Some((name, version)) = parse_template_volume_name(&volume.name) else { continue };
            let template = match records.get(&template_key(&host.name, &name, version)) {
                Some(record) => {
                    CachedTemplate { name, version, tag: record.tag.clone(), size_bytes: record.size_bytes }
                }
                None => {
                    let info = session.client.storage_vol_get_info(&volume)?;
                    CachedTemplate { name, version, tag: String::new(), size_bytes: info.capacity }
                }
            };
            templates.push(template);
        }
        templates.sort_by(|left, right| (&left.name, left.version).cmp(&(&right.name, right.version)));
        Ok(templates)
    }

    pub fn list_templates(&self, host_name: &str) -> Result<Vec<CachedTemplate>, Error> {
        let host = self.host(host_name)?;
        self.with_session(host, |session| {
            let pool = session.pool(&host.pool)?;
            self.cached_templates(session, host, &pool)
        })
    }

    pub fn pull_template(
        &self,
        host_name: &str,
        template: &TemplateRef,
        image: &mut dyn ImageSource,
    ) -> Result<CachedTemplate, Error> {
        self.pull_template_with_delta(host_name, template, image, None)
    }

    /// Caches `template` on the host. With `delta` whose base is cached there as a raw volume,
    /// the new volume is a clone of the base with the changed spans uploaded into it, and
    /// `image` is not read; when the base is missing or not raw, or the delta path fails
    /// before the volume is complete, the partial volume is removed and the full `image` is
    /// uploaded instead (see `docs/drivers/libvirt.md`).
    pub fn pull_template_with_delta(
        &self,
        host_name: &str,
        template: &TemplateRef,
        image: &mut dyn ImageSource,
        delta: Option<&mut dyn DeltaSource>,
    ) -> Result<CachedTemplate, Error> {
        validate_identifier("template name", &template.name)?;
        let host = self.host(host_name)?;
        let volume_name = template_volume_name(&template.name, template.version);
        let cached = CachedTemplate {
            name: template.name.clone(),
            version: template.version,
            tag: template.tag.clone(),
            size_bytes: template.size_bytes,
        };
        let record = TemplateRecord { tag: template.tag.clone(), size_bytes: template.size_bytes };
        let present = self.with_session(host, |session| {
            let pool = session.pool(&host.pool)?;
            match session.client.storage_vol_lookup_by_name(&pool, &volume_name) {
                Ok(_) => Ok(true),
                Err(error) if error.libvirt_code() == Some(error_code::NO_STORAGE_VOL) => Ok(false),
                Err(error) => Err(error.into()),
            }
        })?;
        if present {
            self.state.set_json(&template_key(&host.name, &template.name, template.version), &record)?;
            return Ok(cached);
        }
        if let Some(delta) = delta {
            match self.pull_delta(host, template, &volume_name, delta) {
                Ok(()) => {
                    self.state.set_json(&template_key(&host.name, &template.name, template.version), &record)?;
                    return Ok(cached);
                }
                Err(reason) => hyperplane_guest::log::info(
                    "delta pull not possible; uploading the full image",
                    &[("template", &volume_name), ("host", &host.name), ("reason", &format!("{reason:?}"))],
                ),
            }
        }
        self.pull_full(host, template, &volume_name, image)?;
        self.state.set_json(&template_key(&host.name, &template.name, template.version), &record)?;
        Ok(cached)
    }

    /// Uploads the whole image into a new volume `volume_name`.
    fn pull_full(
        &self,
        host: &HostSettings,
        template: &TemplateRef,
        volume_name: &str,
        image: &mut dyn ImageSource,
    ) -> Result<(), Error> {
        let size = image.size();
        if size == 0 || template.size_bytes == 0 {
            return Err(Error::Invalid(format!(
                "template `{}` v{} has an empty image",
                template.name, template.version
            )));
        }
        let pool_and_volume = self.with_session(host, |session| {
            let pool = session.pool(&host.pool)?;
            Ok(session.client.storage_vol_create_xml(&pool, &domain_xml::template_volume_xml(volume_name, size), 0)?)
        })?;
        let label = format!("uploading template {} v{} to {}", template.name, template.version, host.name);
        let mut last_reported_percent = u64::MAX;
        let uploaded = self.with_session(host, |session| {
            let sent = session.client.storage_vol_upload(
                &pool_and_volume,
                size,
                |chunk| {
                    let bytes = image.read(IMAGE_READ_SIZE)?;
                    chunk.extend_from_slice(&bytes);
                    Ok(())
                },
                |sent| {
                    let percent = sent.saturating_mul(100) / size;
                    if percent != last_reported_percent {
                        last_reported_percent = percent;
                        hyperplane_guest::progress::report(sent as f32 / size as f32, &format!("{label}: {percent}%"));
                    }
                },
            )?;
            if sent == size {
                Ok(())
            } else {
                Err(Error::Unavailable(format!(
                    "the image of template `{}` v{} ended after {sent} of {size} bytes",
                    template.name, template.version
                ))
                .into())
            }
        });
        if let Err(error) = uploaded {
            // A half-written template must not look cached.
            self.remove_volume_quietly(host, &pool_and_volume, "cannot remove a partial template volume");
            return Err(error);
        }
        Ok(())
    }

    /// Removes `volume` (on a fresh connection when the failure broke the old one), logging a
    /// failure instead of returning it.
    fn remove_volume_quietly(&self, host: &HostSettings, volume: &StorageVolume, what: &str) {
        let removed = self.with_session(host, |session| match session.client.storage_vol_delete(volume) {
            Ok(()) => Ok(()),
            Err(error) if error.libvirt_code() == Some(error_code::NO_STORAGE_VOL) => Ok(()),
            Err(error) => Err(error.into()),
        });
        if let Err(removal_error) = removed {
            hyperplane_guest::log::warn(what, &[("volume", &volume.name), ("error", &format!("{removal_error:?}"))]);
        }
    }

    /// Builds volume `volume_name` from the cached base of `delta`. A raw base: a server-side
    /// clone of the base volume (a byte copy), a resize when the image grew, then one upload
    /// stream per run of adjacent changed spans, at its offset. Any other base: see
    /// [`Self::pull_delta_by_merge`]. Fails (leaving nothing behind) when the base is not
    /// cached, or anything goes wrong before the volume is complete; the caller then uploads
    /// the full image.
    fn pull_delta(
        &self,
        host: &HostSettings,
        template: &TemplateRef,
        volume_name: &str,
        delta: &mut dyn DeltaSource,
    ) -> Result<(), Error> {
        let base = delta.base();
        validate_identifier("template name", &base.name)?;
        let base_volume_name = template_volume_name(&base.name, base.version);
        if base_volume_name == volume_name {
            return Err(Error::Invalid("a delta against the template itself".into()));
        }
        let size = delta.size();
        let runs = delta_runs(&delta.changes(), size)?;
        let changed_bytes: u64 = runs.iter().map(|(_, length)| length).sum();
        let (pool, base_facts) = self.with_session(host, |session| {
            let pool = session.pool(&host.pool)?;
            let xml = session.client.storage_vol_get_xml_desc(&volume_handle(&pool, base_volume_name.clone()))?;
            Ok((pool, domain_xml::volume_facts(&xml)?))
        })?;
        let base_handle = volume_handle(&pool, base_volume_name.clone());
        // libvirt copies bytes only between raw volumes; for any other base (a qcow2 template:
        // libvirt probes dir pool files) it would run `qemu-img convert`, whose output differs
        // byte for byte from the base file, so the bytes are merged through the driver.
        // A smaller image would need a shrinking resize, which libvirt refuses below the
        // file's allocation (a preallocated template's whole size): merged as well.
        if base_facts.format.as_deref() != Some("raw") || base_facts.backed || size < base_facts.capacity {
            return self.pull_delta_by_merge(host, template, volume_name, &pool, &base_handle, size, &runs, delta);
        }
        let clone_xml = domain_xml::standalone_volume_xml(volume_name, base_facts.capacity, "raw");
        let volume = self.with_session(host, |session| {
            Ok(session.client.storage_vol_create_xml_from(&pool, &clone_xml, &base_handle, 0)?)
        })?;
        let label = format!("applying the delta of template {} v{} on {}", template.name, template.version, host.name);
        let completed = self.with_session(host, |session| {
            if size > base_facts.capacity {
                session.client.storage_vol_resize(&volume, size, 0)?;
            }
            let mut uploaded: u64 = 0;
            for &(offset, length) in &runs {
                let mut remaining = length;
                let sent = session.client.storage_vol_upload_at(
                    &volume,
                    offset,
                    length,
                    |chunk| {
                        if remaining == 0 {
                            return Ok(());
                        }
                        let max = u32::try_from(remaining.min(u64::from(IMAGE_READ_SIZE))).unwrap_or(IMAGE_READ_SIZE);
                        let bytes = delta.read(max)?;
                        if bytes.is_empty() {
                            return Err(format!("the delta data ended with {remaining} bytes of a span missing"));
                        }
                        if bytes.len() as u64 > remaining {
                            return Err(format!("the delta data returned {} bytes for {max} asked", bytes.len()));
                        }
                        remaining -= bytes.len() as u64;
                        chunk.extend_from_slice(&bytes);
                        Ok(())
                    },
                    |_| {},
                )?;
                if sent != length {
                    return Err(
                        Error::Unavailable(format!("uploaded {sent} of {length} changed bytes at {offset}")).into()
                    );
                }
                uploaded += sent;
                hyperplane_guest::progress::report(
                    uploaded as f32 / changed_bytes.max(1) as f32,
                    &format!("{label}: {uploaded} of {changed_bytes} changed bytes"),
                );
            }
            Ok(())
        });
        if let Err(error) = completed {
            self.remove_volume_quietly(host, &volume, "cannot remove a partial delta template volume");
            return Err(error);
        }
        Ok(())
    }

    pub fn remove_template(&self, host_name: &str, template: &TemplateRef) -> Result<(), Error> {
        validate_identifier("template name", &template.name)?;
        let host = self.host(host_name)?;
        let volume_name = template_volume_name(&template.name, template.version);
        self.with_session(host, |session| {
            let pool = session.pool(&host.pool)?;
            let volume = session.client.storage_vol_lookup_by_name(&pool, &volume_name)?;
            for domain in session.client.connect_list_all_domains(flags::CONNECT_LIST_DOMAINS_ALL)? {
                if !domain.name.starts_with(DOMAIN_NAME_PREFIX) {
                    continue;
                }
                let xml = session.client.domain_get_xml_desc(&domain, flags::DOMAIN_XML_INACTIVE)?;
                let facts = domain_xml::domain_facts(&xml)?;
                if facts.template == Some(TemplateMetadata { name: template.name.clone(), version: template.version }) {
                    return Err(Error::Conflict(format!(
                        "template `{}` v{} is still used by instance `{}`",
                        template.name,
                        template.version,
                        &domain.name[DOMAIN_NAME_PREFIX.len()..]
                    ))
                    .into());
                }
            }
            session.client.storage_vol_delete(&volume)?;
            session.template_paths.remove(&volume_name);
            Ok(())
        })?;
        self.state.delete(&template_key(&host.name, &template.name, template.version))?;
        Ok(())
    }

    // ----- snapshots --------------------------------------------------------------------

    fn snapshot_record(
        session: &mut Session<C::Stream>,
        snapshot: &DomainSnapshot,
        current: bool,
    ) -> Outcome<Snapshot> {
        let facts = domain_xml::snapshot_facts(&session.client.domain_snapshot_get_xml_desc(snapshot)?)?;
        Ok(Snapshot {
            name: snapshot.name.clone(),
            description: facts.description,
            created_at: facts.creation_time,
            state: snapshot_instance_state(&facts.state),
            current,
        })
    }

    pub fn list_snapshots(&self, instance_id: &str) -> Result<Vec<Snapshot>, Error> {
        let host = self.host_of_instance(instance_id)?;
        self.with_session(host, |session| {
            let domain = Self::domain_handle(session, instance_id)?;
            let snapshots = session.client.domain_list_all_snapshots(&domain, 0)?;
            if snapshots.is_empty() {
                return Ok(Vec::new());
            }
            let current = match session.client.domain_snapshot_current(&domain) {
                Ok(current) => Some(current.name),
                Err(error) if error.libvirt_code() == Some(error_code::NO_DOMAIN_SNAPSHOT) => None,
                Err(error) => return Err(error.into()),
            };
            let mut records = Vec::with_capacity(snapshots.len());
            for snapshot in &snapshots {
                records.push(Self::snapshot_record(
                    session,
                    snapshot,
                    current.as_deref() == Some(snapshot.name.as_str()),
                )?);
            }
            records.sort_by(|left, right| (left.created_at, &left.name).cmp(&(right.created_at, &right.name)));
            Ok(records)
        })
    }

    pub fn create_snapshot(&self, instance_id: &str, name: &str, description: &str) -> Result<Snapshot, Error> {
        if name.trim().is_empty() || name.contains('/') {
            return Err(Error::Invalid(format!("snapshot name `{name}` must be non-empty and without `/`")));
        }
        let host = self.host_of_instance(instance_id)?;
        self.with_session(host, |session| {
            let domain = Self::domain_handle(session, instance_id)?;
            match session.client.domain_snapshot_lookup_by_name(&domain, name) {
                Ok(_) => {
                    return Err(
                        Error::Conflict(format!("instance `{instance_id}` already has a snapshot `{name}`")).into()
                    );
                }
                Err(error) if error.libvirt_code() == Some(error_code::NO_DOMAIN_SNAPSHOT) => {}
                Err(error) => return Err(error.into()),
            }
            let snapshot =
                session.client.domain_snapshot_create_xml(&domain, &domain_xml::snapshot_xml(name, description), 0)?;
            Self::snapshot_record(session, &snapshot, true)
        })
    }

    pub fn revert_snapshot(&self, instance_id: &str, name: &str) -> Result<Instance, Error> {
        self.on_domain(instance_id, |session, domain| {
            let snapshot = session.client.domain_snapshot_lookup_by_name(domain, name)?;
            session.client.domain_revert_to_snapshot(&snapshot, 0)?;
            Ok(instance_state(session.client.domain_get_state(domain)?))
        })
    }

    pub fn delete_snapshot(&self, instance_id: &str, name: &str) -> Result<(), Error> {
        let host = self.host_of_instance(instance_id)?;
        self.with_session(host, |session| {
            let domain = Self::domain_handle(session, instance_id)?;
            let snapshot = session.client.domain_snapshot_lookup_by_name(&domain, name)?;
            session.client.domain_snapshot_delete(&snapshot, 0)?;
            Ok(())
        })
    }

    /// Builds volume `volume_name` as the base volume's bytes with the changed spans replaced,
    /// cut or zero-extended to `size`: the base is downloaded on a second connection while the
    /// merged bytes are uploaded on the host's session, so only the changed bytes are read from
    /// `delta` but the whole image crosses the libvirt connection twice.
    #[allow(clippy::too_many_arguments)]
    fn pull_delta_by_merge(
        &self,
        host: &HostSettings,
        template: &TemplateRef,
        volume_name: &str,
        pool: &StoragePool,
        base: &StorageVolume,
        size: u64,
        runs: &[(u64, u64)],
        delta: &mut dyn DeltaSource,
    ) -> Result<(), Error> {
        if size == 0 {
            return Err(Error::Invalid(format!(
                "template `{}` v{} has an empty image",
                template.name, template.version
            )));
        }
        let volume = self.with_session(host, |session| {
            Ok(session.client.storage_vol_create_xml(pool, &domain_xml::template_volume_xml(volume_name, size), 0)?)
        })?;
        // The base's download on a connection of its own, opened after the volume so that no
        // failure leaves a stream open.
        let opened =
            self.open_session(host).and_then(|mut reader| match reader.client.storage_vol_start_download(base, 0, 0) {
                Ok(stream) => Ok((reader, stream)),
                Err(error) => Err(map_client_error(host, error)),
            });
        let (mut reader, stream) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                self.remove_volume_quietly(host, &volume, "cannot remove a partial delta template volume");
                return Err(error);
            }
        };
        let label = format!("merging the delta of template {} v{} on {}", template.name, template.version, host.name);
        let mut merge = DeltaMerge {
            base: &mut reader.client,
            stream,
            base_buffer: Vec::new(),
            base_consumed: 0,
            base_ended: false,
            delta,
            runs,
            next_run: 0,
            position: 0,
            size,
        };
        let mut last_reported_percent = u64::MAX;
        let uploaded = self.with_session(host, |session| {
            let sent = session.client.storage_vol_upload(
                &volume,
                size,
                |chunk| merge.next_chunk(chunk),
                |sent| {
                    let percent = sent.saturating_mul(100) / size;
                    if percent != last_reported_percent {
                        last_reported_percent = percent;
                        hyperplane_guest::progress::report(sent as f32 / size as f32, &format!("{label}: {percent}%"));
                    }
                },
            )?;
            if sent == size { Ok(()) } else { Err(Error::Unavailable(format!("merged {sent} of {size} bytes")).into()) }
        });
        // The base may be longer than the new image: stop its download (the reader connection
        // is closed right after either way).
        if !merge.base_ended {
            merge.base.abort_download(&merge.stream).ok();
        }
        if let Err(error) = uploaded {
            self.remove_volume_quietly(host, &volume, "cannot remove a partial delta template volume");
            return Err(error);
        }
        Ok(())
    }

    // ----- export -----------------------------------------------------------------------

    /// Writes the instance's disk into `sink` as one standalone qcow2 image: a temporary
    /// flattened copy of the overlay in the pool (`storage_vol_create_xml_from` into a qcow2
    /// volume without backing store, which libvirt does with `qemu-img convert`), streamed out
    /// with `storage_vol_download` in pieces of at most 1 MiB, then removed (also on failure).
    /// A running instance is refused with `conflict`.
    pub fn export_disk(&self, instance_id: &str, sink: &mut dyn DiskSink) -> Result<ExportedDisk, Error> {
        let host = self.host_of_instance(instance_id)?;
        let temporary_name = export_volume_name(instance_id);
        let (temporary, estimated_size) = self.with_session(host, |session| {
            let domain = Self::domain_handle(session, instance_id)?;
            let state = session.client.domain_get_state(&domain)?;
            if matches!(
                instance_state(state),
                InstanceState::Running | InstanceState::Starting | InstanceState::Stopping
            ) {
                return Err(Error::Conflict(format!(
                    "instance `{instance_id}` is running; stop or suspend it before exporting its disk"
                ))
                .into());
            }
            let pool = session.pool(&host.pool)?;
            let overlay = volume_handle(&pool, overlay_volume_name(instance_id));
            let overlay_facts = domain_xml::volume_facts(&session.client.storage_vol_get_xml_desc(&overlay)?)?;
            let xml = domain_xml::standalone_volume_xml(&temporary_name, overlay_facts.capacity, "qcow2");
            let temporary = match session.client.storage_vol_create_xml_from(&pool, &xml, &overlay, 0) {
                Ok(temporary) => temporary,
                // A suspended QEMU keeps its write lock on the overlay, and libvirt's
                // `qemu-img convert` (no `-U`) cannot open it.
                Err(ClientError::Remote { error, .. })
                    if instance_state(state) == InstanceState::Suspended
                        && error.code == error_code::INTERNAL_ERROR
                        && error.message_or_default().contains("lock") =>
                {
                    return Err(Error::Conflict(format!(
                        "instance `{instance_id}` is suspended and QEMU holds the lock on its disk, so libvirt \
                         cannot copy it; stop the instance to export its disk ({})",
                        error.message_or_default()
                    ))
                    .into());
                }
                Err(error) => return Err(error.into()),
            };
            let estimated_size = match session.client.storage_vol_get_info(&temporary) {
                Ok(info) => info.allocation,
                Err(_) => 0,
            };
            Ok((temporary, estimated_size))
        })?;
        let label = format!("exporting the disk of instance {instance_id}");
        let mut pending: Vec<u8> = Vec::with_capacity(EXPORT_PIECE_SIZE);
        let mut written: u64 = 0;
        let downloaded = self.with_session(host, |session| {
            let received = session.client.storage_vol_download(&temporary, 0, 0, |data| {
                pending.extend_from_slice(data);
                if pending.len() >= EXPORT_PIECE_SIZE {
                    sink.write(&pending)?;
                    written += pending.len() as u64;
                    pending.clear();
                    let fraction =
                        if estimated_size > 0 { (written as f32 / estimated_size as f32).min(1.0) } else { 0.0 };
                    hyperplane_guest::progress::report(fraction, &format!("{label}: {} MiB", written >> 20));
                }
                Ok(())
            })?;
            if !pending.is_empty() {
                sink.write(&pending)
                    .map_err(|message| Error::Unavailable(format!("the export's receiver failed: {message}")))?;
                written += pending.len() as u64;
                pending.clear();
            }
            Ok(received)
        });
        self.remove_volume_quietly(host, &temporary, "cannot remove the temporary export volume");
        let received = downloaded?;
        if received != written {
            return Err(Error::Backend(BackendError {
                code: -1,
                message: format!("downloaded {received} bytes but passed on {written}"),
            }));
        }
        Ok(ExportedDisk { format: DiskFormat::Qcow2, size_bytes: written })
    }

    pub fn exec(&self, _instance_id: &str) -> Result<hyperplane_guest::types::ExecResult, Error> {
        Err(Error::Unsupported("the libvirt driver has no exec; use the console".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        assert_eq!(version_string(11_003_000), "11.3.0");
        assert_eq!(version_string(10_000_001), "10.0.1");
        assert_eq!(template_volume_name("debian-12", 3), "hyperplane-template-debian-12-v3");
        assert_eq!(parse_template_volume_name("hyperplane-template-debian-v12-v3"), Some(("debian-v12".into(), 3)));
        assert_eq!(parse_template_volume_name("hyperplane-template--v3"), None);
        assert_eq!(parse_template_volume_name("hyperplane-template-x-vx"), None);
        assert_eq!(parse_template_volume_name("other.qcow2"), None);
    }

    #[test]
    fn delta_spans_are_checked_and_adjacent_ones_merged() {
        assert_eq!(delta_runs(&[(0, 10), (10, 5), (20, 0), (30, 10)], 40).ok(), Some(vec![(0, 15), (30, 10)]));
        assert_eq!(delta_runs(&[], 0).ok(), Some(vec![]));
        assert!(matches!(delta_runs(&[(0, 10), (5, 10)], 40), Err(Error::Invalid(_))), "overlap");
        assert!(matches!(delta_runs(&[(20, 1), (10, 1)], 40), Err(Error::Invalid(_))), "descending");
        assert!(matches!(delta_runs(&[(35, 10)], 40), Err(Error::Invalid(_))), "past the end");
        assert!(matches!(delta_runs(&[(u64::MAX, 2)], u64::MAX), Err(Error::Invalid(_))), "overflow");
        assert!(
            export_volume_name("abc").starts_with("hp-abc.export-") && export_volume_name("abc").ends_with(".qcow2")
        );
        assert_eq!(parse_template_volume_name(&export_volume_name("abc")), None);
    }

    #[test]
    fn generated_macs_are_valid_random_and_only_for_qemu_and_test_types() {
        let first = generated_mac("0193a8f0-0000-7000-8000-000000000001", "kvm").unwrap_or_default();
        assert!(first.starts_with("52:54:00:") && validate_mac(&first).is_ok(), "{first}");
        let macs: std::collections::HashSet<String> =
            (0..64).filter_map(|index| generated_mac(&format!("id-{index}"), "qemu")).collect();
        assert!(macs.len() > 60, "random enough: {macs:?}");
        assert!(generated_mac("x", "test").is_some());
        assert_eq!(generated_mac("x", "xen"), None);
    }

    #[test]
    fn identifiers_and_macs_are_validated() {
        assert!(validate_identifier("instance id", "0193a8f0-0000-7000-8000-000000000001").is_ok());
        for bad in ["", "a/b", "a b", ".hidden", "x'y", &"a".repeat(129)] {
            assert!(matches!(validate_identifier("instance id", bad), Err(Error::Invalid(_))), "{bad:?}");
        }
        assert!(validate_mac("52:54:00:aB:cd:ef").is_ok());
        for bad in ["52:54:00:ab:cd", "52-54-00-ab-cd-ef", "01:00:5e:00:00:01", "zz:54:00:ab:cd:ef"] {
            assert!(validate_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn libvirt_errors_map_to_driver_variants_with_code() {
        let host = Settings::from_json(r#"{"hosts": [{"name": "h", "endpoint": "e"}]}"#)
            .map(|settings| settings.hosts[0].clone())
            .unwrap_or_else(|error| panic!("{error:?}"));
        let remote = |code| ClientError::Remote {
            procedure: crate::protocol::Procedure::DomainCreate,
            error: crate::protocol::RemoteError { code, domain: 10, message: Some("boom".into()), level: 2 },
        };
        assert!(
            matches!(map_client_error(&host, remote(42)), Error::NotFound(message) if message.contains("(libvirt error 42)") && message.contains("boom"))
        );
        assert!(matches!(map_client_error(&host, remote(55)), Error::Conflict(_)));
        assert!(matches!(map_client_error(&host, remote(28)), Error::Conflict(_)));
        assert!(matches!(map_client_error(&host, remote(84)), Error::Unsupported(_)));
        assert!(matches!(map_client_error(&host, remote(1)), Error::Backend(BackendError { code: 1, .. })));
        let closed = ClientError::Transport {
            procedure: crate::protocol::Procedure::DomainCreate,
            reply_started: false,
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "end of stream"),
        };
        assert!(matches!(
            map_client_error(&host, closed),
            Error::Unavailable(message) if message.starts_with("libvirt connection to endpoint 'e' closed during domain_create")
        ));
    }
}
