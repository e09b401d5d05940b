//! The domain: providers, hosts, templates, instances, tasks and events, as the service layer
//! hands them to every front-end. Plain data with no behaviour beyond small derived facts.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub type Timestamp = DateTime<Utc>;
pub type Labels = BTreeMap<String, String>;

/// Declares a string-valued enum with `as_str`, `Display` and `FromStr` in one place, so that the
/// database, the API and the CLI agree on spellings.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "unknown {} '{text}' (expected one of: {})",
                        stringify!($name).to_lowercase(),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// CPU architecture of a host or template.
    Arch { Amd64 => "amd64", Arm64 => "arm64" }
);

string_enum!(
    /// How a template's disk image is encoded.
    DiskFormat { Raw => "raw", Qcow2 => "qcow2" }
);

impl DiskFormat {
    /// The format of an image that starts with `first_bytes`: qcow2 by its magic, else raw.
    pub fn detect(first_bytes: &[u8]) -> DiskFormat {
        if first_bytes.starts_with(b"QFI\xfb") { DiskFormat::Qcow2 } else { DiskFormat::Raw }
    }
}

string_enum!(
    /// Lifecycle of an instance.
    InstanceState {
        Scheduling => "scheduling",
        Pulling => "pulling",
        Starting => "starting",
        Running => "running",
        Stopping => "stopping",
        Stopped => "stopped",
        Suspended => "suspended",
        Terminating => "terminating",
        Terminated => "terminated",
        Error => "error",
    }
);

impl InstanceState {
    /// Whether the instance holds capacity on its host.
    pub fn holds_capacity(self) -> bool {
        !matches!(self, InstanceState::Terminated)
    }
}

string_enum!(
    /// How a host takes part in placement.
    HostState {
        Active => "active",
        Offline => "offline",
        Draining => "draining",
        Updating => "updating",
        Unhealthy => "unhealthy",
    }
);

string_enum!(
    /// How a host's capacity is counted: instances (`number`) or vCPU and RAM (`resource`).
    CapacityMode { Number => "number", Resource => "resource" }
);

// `string_enum!` owns the derives, so the default is written out.
#[allow(clippy::derivable_impls)]
impl Default for CapacityMode {
    fn default() -> Self {
        CapacityMode::Resource
    }
}

string_enum!(
    /// How a group chooses among hosts that fit: fill them (`pack`) or balance them (`spread`).
    GroupStrategy { Pack => "pack", Spread => "spread" }
);

#[allow(clippy::derivable_impls)]
impl Default for GroupStrategy {
    fn default() -> Self {
        GroupStrategy::Spread
    }
}

string_enum!(
    /// Where an instance record came from.
    InstanceOrigin { Api => "api", Discovered => "discovered" }
);

string_enum!(
    TaskState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl TaskState {
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }
}

string_enum!(
    TaskKind {
        InstanceCreate => "instance.create",
        InstanceStart => "instance.start",
        InstanceStop => "instance.stop",
        InstanceRestart => "instance.restart",
        InstanceDelete => "instance.delete",
        InstanceSuspend => "instance.suspend",
        InstanceResume => "instance.resume",
        SnapshotCreate => "instance.snapshot_create",
        SnapshotRevert => "instance.snapshot_revert",
        SnapshotDelete => "instance.snapshot_delete",
        TemplateRemoveFromHost => "template.remove_from_host",
        TemplatePullToHost => "template.pull_to_host",
        InstanceSaveImage => "instance.save_image",
        Batch => "batch",
    }
);

string_enum!(
    /// Actions on an existing instance (`POST /v1/instances/{id}/actions/{action}`).
    InstanceAction { Start => "start", Stop => "stop", Restart => "restart", Suspend => "suspend", Resume => "resume" }
);

impl InstanceAction {
    pub fn task_kind(self) -> TaskKind {
        match self {
            InstanceAction::Start => TaskKind::InstanceStart,
            InstanceAction::Stop => TaskKind::InstanceStop,
            InstanceAction::Restart => TaskKind::InstanceRestart,
            InstanceAction::Suspend => TaskKind::InstanceSuspend,
            InstanceAction::Resume => TaskKind::InstanceResume,
        }
    }

    /// The states an instance must be in for the action.
    pub fn allowed_states(self) -> &'static [InstanceState] {
        match self {
            InstanceAction::Start => &[InstanceState::Stopped, InstanceState::Error],
            InstanceAction::Stop => &[InstanceState::Running, InstanceState::Suspended, InstanceState::Error],
            InstanceAction::Restart => &[InstanceState::Running, InstanceState::Error],
            InstanceAction::Suspend => &[InstanceState::Running],
            InstanceAction::Resume => &[InstanceState::Suspended],
        }
    }
}

/// A snapshot of an instance, as its driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    /// The instance state the snapshot holds (a revert returns the instance to it).
    pub state: InstanceState,
    /// Whether the instance was last created from or reverted to this snapshot.
    pub current: bool,
}

string_enum!(
    /// How to reach an instance's console.
    ConsoleProtocol { Vnc => "vnc", Spice => "spice", Serial => "serial", Ssh => "ssh" }
);

/// Where an instance's console answers, as its driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleEndpoint {
    pub protocol: ConsoleProtocol,
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

/// A configured driver and how it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    pub name: String,
    pub driver: String,
    /// `ready` or `failed`.
    pub status: String,
    pub capabilities: Option<ProviderCapabilities>,
    pub hosts: usize,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProviderCapabilities {
    pub exec: bool,
    pub console: bool,
    pub templates: bool,
    pub snapshots: bool,
    pub suspend: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CachedTemplate {
    pub name: String,
    pub version: u32,
    pub tag: String,
    pub size_bytes: u64,
    /// When the host last pulled it or created an instance from it, to the minute (absent:
    /// before Hyperplane saw it used); what cache eviction goes by.
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Limits an operator sets on a host. In `number` mode only `max_instances` counts; in
/// `resource` mode vCPU and RAM count too (absent: the host's hardware). Disk always counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    #[serde(default)]
    pub mode: CapacityMode,
    pub max_instances: Option<u32>,
    /// vCPU limit (`vcpu_override`).
    pub vcpu: Option<u32>,
    /// RAM limit in MiB (`ram_override`).
    pub ram_mb: Option<u64>,
    /// Most MiB of templates cached on the host: pulling more first evicts the least recently
    /// used templates no instance on the host uses. Absent: no limit.
    #[serde(default)]
    pub template_cache_mb: Option<u64>,
}

/// A named group of USB devices attached to a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsbDeviceGroup {
    pub total: u32,
    /// In use by instances on the host.
    pub busy: u32,
    /// Free for new instances.
    pub available: u32,
}

impl UsbDeviceGroup {
    pub fn new(total: u32, busy: u32) -> Self {
        UsbDeviceGroup { total, busy, available: total.saturating_sub(busy) }
    }
}

/// A node group: hosts that serve requests for it, and where requests go when it is full.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub id: Uuid,
    pub name: String,
    /// The project the group belongs to.
    pub project_id: Uuid,
    pub description: String,
    pub fallback_group_id: Option<Uuid>,
    pub strategy: GroupStrategy,
    pub hosts: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where an instance may go, beyond its size and template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlacementConstraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Uuid>,
    /// `key=value` or `key!=value` conditions on host labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usb_device: Option<String>,
    /// Prefer hosts running instances with the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_key: Option<String>,
    /// Never on a host running an instance with the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity_key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub instances: u32,
    /// Of those, how many are running.
    pub running: u32,
    pub vcpu: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub id: Uuid,
    pub provider: String,
    /// The host's identifier within its provider.
    pub name: String,
    pub arch: Arch,
    pub cpu: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    pub hypervisor: String,
    pub state: HostState,
    pub draining: bool,
    pub capacity: Capacity,
    pub usage: Usage,
    /// Use of the tightest counted resource, from 0 to 1.
    pub utilization: f64,
    /// Operator's flag: takes no new instances.
    pub maintenance: bool,
    pub labels: Labels,
    pub groups: Vec<Uuid>,
    pub usb_devices: BTreeMap<String, UsbDeviceGroup>,
    pub cached_templates: Vec<CachedTemplate>,
    pub last_report_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Host {
    /// Effective limits: the operator's override, else the hardware.
    pub fn vcpu_limit(&self) -> u32 {
        self.capacity.vcpu.unwrap_or(self.cpu)
    }
    pub fn ram_limit_mb(&self) -> u64 {
        self.capacity.ram_mb.unwrap_or(self.ram_mb)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    /// The project the template belongs to.
    pub project_id: Uuid,
    pub arch: Arch,
    pub description: String,
    pub versions: Vec<TemplateVersion>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Template {
    pub fn latest_version(&self) -> Option<&TemplateVersion> {
        self.versions.iter().max_by_key(|version| version.number)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateVersion {
    pub number: u32,
    pub tag: String,
    pub description: String,
    /// The size of the version's files once pushed; before, the size declared with the version.
    pub size_bytes: u64,
    /// The disk image's format, detected from its first bytes at push (`raw` before).
    pub format: DiskFormat,
    /// SHA-256 of the disk image (hex); absent while the version has no disk image.
    pub image_sha256: Option<String>,
    /// When the disk image was pushed.
    pub image_uploaded_at: Option<DateTime<Utc>>,
    /// Last time a host pulled the version or a client downloaded one of its files.
    pub pulled_at: Option<DateTime<Utc>>,
    pub files: Vec<TemplateFile>,
    pub created_at: DateTime<Utc>,
}

impl TemplateVersion {
    pub fn has_image(&self) -> bool {
        self.image_sha256.is_some()
    }

    /// The version's disk image, if pushed.
    pub fn disk(&self) -> Option<&TemplateFile> {
        self.files.iter().find(|file| file.name == DISK_FILE_NAME)
    }

    /// Derives the disk image fields from `files`.
    pub fn with_files(mut self, files: Vec<TemplateFile>) -> Self {
        self.files = files;
        if let Some(disk) = self.disk() {
            (self.format, self.image_sha256, self.image_uploaded_at) =
                (disk.format, Some(disk.sha256.clone()), Some(disk.pushed_at));
        }
        self
    }
}

/// The name of a version's disk image among its files.
pub const DISK_FILE_NAME: &str = "disk";

string_enum!(
    /// What a template file holds: a disk image (raw or qcow2), a suspended instance's memory
    /// state, or a configuration document.
    FileKind { Disk => "disk", State => "state", Config => "config" }
);

/// One file of a template version, stored as fixed-size chunks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateFile {
    pub name: String,
    pub kind: FileKind,
    /// `raw` or `qcow2` for disks, `raw` otherwise.
    pub format: DiskFormat,
    pub size_bytes: u64,
    pub sha256: String,
    /// Size of every chunk but the last.
    pub chunk_size: u64,
    pub chunk_count: u64,
    pub pushed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: Uuid,
    pub name: String,
    /// The project the instance belongs to.
    pub project_id: Uuid,
    pub external_id: Option<String>,
    pub state: InstanceState,
    pub template_id: Option<Uuid>,
    pub template_version: Option<u32>,
    pub provider: Option<String>,
    pub host_id: Option<Uuid>,
    /// The host the user asked for, if any.
    pub requested_host_id: Option<Uuid>,
    /// The instance's id on its provider, when it is not `id` (instances discovered there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    pub vcpu: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    /// 1 (most urgent) to 10000; default 1000.
    pub priority: u32,
    pub placement: PlacementConstraints,
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// VLAN tag of the instance's NIC (1-4094); absent: untagged.
    pub vlan: Option<u16>,
    pub metadata: Labels,
    pub startup_script: Option<String>,
    pub startup_result: Option<ExecOutcome>,
    /// Why the instance is in `error`, or why it was terminated behind our back.
    pub error: Option<String>,
    pub origin: InstanceOrigin,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Instance {
    /// The id its driver knows it by: our id, unless it was discovered on the provider.
    pub fn provider_instance_id(&self) -> String {
        self.provider_id.clone().unwrap_or_else(|| self.id.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecOutcome {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub kind: TaskKind,
    pub state: TaskState,
    /// The object this task works on, if any: the instance (the host for
    /// `template.remove_from_host`).
    pub object_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    pub progress: f32,
    pub message: Option<String>,
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<TaskError>,
    pub attempts: u32,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub seq: i64,
    pub time: DateTime<Utc>,
    /// Dotted type such as `instance.state_changed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub object_kind: String,
    pub object_id: String,
    pub actor: String,
    /// The auth scheme the actor used (`token`, `basic`…); empty for Hyperplane's own events.
    pub scheme: String,
    /// The client's address; empty for Hyperplane's own events.
    pub source: String,
    /// For calls: `succeeded`, `denied` or `failed`; empty for state changes.
    pub outcome: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// An event about to be appended; `seq` and `time` are assigned by the store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub object_kind: &'static str,
    pub object_id: String,
    pub actor: String,
    pub scheme: String,
    pub source: String,
    pub outcome: String,
    pub data: serde_json::Value,
}

impl NewEvent {
    pub fn new(kind: impl Into<String>, object_kind: &'static str, object_id: impl ToString) -> Self {
        Self {
            kind: kind.into(),
            object_kind,
            object_id: object_id.to_string(),
            actor: "system".into(),
            scheme: String::new(),
            source: String::new(),
            outcome: String::new(),
            data: serde_json::Value::Null,
        }
    }

    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// A call by `caller` that succeeded: actor, scheme and source for the audit trail.
    pub fn by(mut self, caller: &crate::auth::Caller) -> Self {
        self.actor = caller.actor().to_owned();
        self.scheme.clone_from(&caller.scheme);
        self.source.clone_from(&caller.source);
        self.outcome = "succeeded".into();
        self
    }

    pub fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = outcome.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_enums_round_trip_and_name_the_alternatives() {
        for state in InstanceState::ALL {
            assert_eq!(state.as_str().parse::<InstanceState>(), Ok(*state));
        }
        let error = "runing".parse::<InstanceState>().expect_err("unknown state");
        assert!(error.contains("runing") && error.contains("running"), "{error}");
        assert_eq!(serde_json::to_string(&TaskKind::InstanceCreate).expect("serializes"), "\"instance.create\"");
    }

    #[test]
    fn disk_format_is_detected_from_the_magic() {
        assert_eq!(DiskFormat::detect(b"QFI\xfb\x00\x00\x00\x03"), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::detect(b"QFI\xfb"), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::detect(b"QFI"), DiskFormat::Raw);
        assert_eq!(DiskFormat::detect(b"\xeb\x63\x90"), DiskFormat::Raw);
        assert_eq!(DiskFormat::detect(b""), DiskFormat::Raw);
    }
}
