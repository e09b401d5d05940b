//! What the simulator persists in the provider's key-value store, and under which keys.
//!
//! Keys:
//! - `instance/<id>`: an [`InstanceRecord`], one per simulated instance;
//! - `template/<host>/<name>/<version>`: a [`CachedTemplateRecord`], one per cached template,
//!   with how many bytes its pull read and the base a delta pull built it from;
//! - `ledger/<host>`: the host's [`HostLedger`], the per-host serialization point for capacity
//!   and for template usage (see `simulator` for the protocol);
//! - `snapshots/<instance id>`: the instance's [`SnapshotList`], oldest first.
//!
//! Power transitions are stored with the wall-clock time at which they complete, and readers
//! derive the current state from it ([`PowerState::observed_at`]). A transition therefore
//! finishes on schedule even when the call that started it was cut short by the host.

use std::collections::BTreeMap;

use hyperplane_guest::types::{CachedTemplate, DiskFormat, InstanceState, TemplateRef};
use serde::{Deserialize, Serialize};

pub const INSTANCE_PREFIX: &str = "instance/";
pub const TEMPLATE_PREFIX: &str = "template/";

pub fn instance_key(instance_id: &str) -> String {
    format!("{INSTANCE_PREFIX}{instance_id}")
}

/// Prefix of all templates cached on `host_id` (host ids contain no `/`).
pub fn host_templates_prefix(host_id: &str) -> String {
    format!("{TEMPLATE_PREFIX}{host_id}/")
}

pub fn template_key(host_id: &str, template_name: &str, template_version: u32) -> String {
    format!("{TEMPLATE_PREFIX}{host_id}/{template_name}/{template_version}")
}

pub fn ledger_key(host_id: &str) -> String {
    format!("ledger/{host_id}")
}

pub fn snapshots_key(instance_id: &str) -> String {
    format!("snapshots/{instance_id}")
}

/// A template version as stored, both in a cache entry and in the instance using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub name: String,
    pub version: u32,
    pub tag: String,
    pub size_bytes: u64,
    /// Absent in records written before formats were kept: raw.
    #[serde(default)]
    pub format: ImageFormat,
}

/// [`DiskFormat`] as persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    #[default]
    Raw,
    Qcow2,
}

impl From<DiskFormat> for ImageFormat {
    fn from(format: DiskFormat) -> Self {
        match format {
            DiskFormat::Raw => ImageFormat::Raw,
            DiskFormat::Qcow2 => ImageFormat::Qcow2,
        }
    }
}

impl From<ImageFormat> for DiskFormat {
    fn from(format: ImageFormat) -> Self {
        match format {
            ImageFormat::Raw => DiskFormat::Raw,
            ImageFormat::Qcow2 => DiskFormat::Qcow2,
        }
    }
}

impl TemplateRecord {
    /// How the ledger counts users of this template: `<name>/<version>`.
    pub fn usage_key(&self) -> String {
        format!("{}/{}", self.name, self.version)
    }
}

impl From<&TemplateRef> for TemplateRecord {
    fn from(template: &TemplateRef) -> Self {
        Self {
            name: template.name.clone(),
            version: template.version,
            tag: template.tag.clone(),
            size_bytes: template.size_bytes,
            format: template.format.into(),
        }
    }
}

/// A template cached on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedTemplateRecord {
    pub host: String,
    pub template: TemplateRecord,
    pub pulled_at_ms: u64,
    /// How many bytes the pull read: the whole image, only a delta's changed bytes, or 0 for
    /// an empty (made-up) image. 0 in records written before it was kept.
    #[serde(default)]
    pub bytes_received: u64,
    /// The cached version a delta pull built this one from; `None` for a full pull.
    #[serde(default)]
    pub delta_base: Option<DeltaBase>,
}

/// The base of a delta pull, as [`CachedTemplateRecord::delta_base`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaBase {
    pub name: String,
    pub version: u32,
}

impl From<&CachedTemplateRecord> for CachedTemplate {
    fn from(record: &CachedTemplateRecord) -> Self {
        let template = &record.template;
        CachedTemplate {
            name: template.name.clone(),
            version: template.version,
            tag: template.tag.clone(),
            size_bytes: template.size_bytes,
        }
    }
}

/// Power state as persisted: settled, or a transition with the times at which it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PowerState {
    Stopped,
    Running,
    /// Paused in memory.
    Suspended,
    Starting {
        running_at_ms: u64,
    },
    Stopping {
        stopped_at_ms: u64,
    },
    /// Stopping until `stop_phase_ends_at_ms`, then starting until `running_at_ms`.
    Restarting {
        stop_phase_ends_at_ms: u64,
        running_at_ms: u64,
    },
}

impl PowerState {
    /// The state a caller sees at `now_ms`.
    pub fn observed_at(self, now_ms: u64) -> InstanceState {
        match self {
            PowerState::Stopped => InstanceState::Stopped,
            PowerState::Running => InstanceState::Running,
            PowerState::Suspended => InstanceState::Suspended,
            PowerState::Starting { running_at_ms } if now_ms < running_at_ms => InstanceState::Starting,
            PowerState::Starting { .. } => InstanceState::Running,
            PowerState::Stopping { stopped_at_ms } if now_ms < stopped_at_ms => InstanceState::Stopping,
            PowerState::Stopping { .. } => InstanceState::Stopped,
            PowerState::Restarting { stop_phase_ends_at_ms, .. } if now_ms < stop_phase_ends_at_ms => {
                InstanceState::Stopping
            }
            PowerState::Restarting { running_at_ms, .. } if now_ms < running_at_ms => InstanceState::Starting,
            PowerState::Restarting { .. } => InstanceState::Running,
        }
    }

    /// The same state with any transition that completed by `now_ms` settled.
    pub fn settled_at(self, now_ms: u64) -> PowerState {
        match self.observed_at(now_ms) {
            InstanceState::Running if self != PowerState::Running => PowerState::Running,
            InstanceState::Stopped if self != PowerState::Stopped => PowerState::Stopped,
            _ => self,
        }
    }

    /// When the transition in progress completes, if one is.
    pub fn completes_at_ms(self) -> Option<u64> {
        match self {
            PowerState::Stopped | PowerState::Running | PowerState::Suspended => None,
            PowerState::Starting { running_at_ms } | PowerState::Restarting { running_at_ms, .. } => {
                Some(running_at_ms)
            }
            PowerState::Stopping { stopped_at_ms } => Some(stopped_at_ms),
        }
    }
}

/// A simulated instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub name: String,
    pub host: String,
    pub template: TemplateRecord,
    pub vcpu: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    pub mac: String,
    pub vlan: Option<u16>,
    pub metadata: Vec<(String, String)>,
    pub power: PowerState,
    pub created_at_ms: u64,
}

/// A snapshot of an instance: the settled power state it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    pub description: String,
    pub created_at_ms: u64,
    pub power: PowerState,
}

/// The snapshots of one instance, oldest first, and the one it last came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotRecord>,
    /// The snapshot most recently created or reverted to, while it exists.
    pub current: Option<String>,
}

/// Resources an instance takes from its host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub vcpu: u64,
    pub ram_mb: u64,
    pub disk_gb: u64,
}

impl Resources {
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            vcpu: self.vcpu.saturating_add(other.vcpu),
            ram_mb: self.ram_mb.saturating_add(other.ram_mb),
            disk_gb: self.disk_gb.saturating_add(other.disk_gb),
        }
    }

    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            vcpu: self.vcpu.saturating_sub(other.vcpu),
            ram_mb: self.ram_mb.saturating_sub(other.ram_mb),
            disk_gb: self.disk_gb.saturating_sub(other.disk_gb),
        }
    }
}

/// A create that reserved capacity but has not yet finished writing its instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCreate {
    pub resources: Resources,
    pub template_usage_key: String,
    pub reserved_at_ms: u64,
}

/// Per-host totals, kept small (independent of the number of instances) so that every create
/// can afford to compare-and-swap it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLedger {
    /// Sum over the host's instances (all power states) and pending creates.
    pub allocated: Resources,
    /// Instances (and pending creates) per template, by [`TemplateRecord::usage_key`].
    pub template_users: BTreeMap<String, u32>,
    /// In-flight creates by instance id.
    pub pending_creates: BTreeMap<String, PendingCreate>,
}

impl HostLedger {
    pub fn reserve(&mut self, instance_id: &str, pending: PendingCreate) {
        self.allocated = self.allocated.plus(pending.resources);
        *self.template_users.entry(pending.template_usage_key.clone()).or_insert(0) += 1;
        self.pending_creates.insert(instance_id.to_owned(), pending);
    }

    /// Gives back what an instance (or a pending create) held.
    pub fn release(&mut self, resources: Resources, template_usage_key: &str) {
        self.allocated = self.allocated.minus(resources);
        if let Some(users) = self.template_users.get_mut(template_usage_key) {
            *users = users.saturating_sub(1);
            if *users == 0 {
                self.template_users.remove(template_usage_key);
            }
        }
    }

    pub fn template_in_use(&self, template_usage_key: &str) -> bool {
        self.template_users.get(template_usage_key).is_some_and(|users| *users > 0)
    }
}
