//! The simulator's provider config: parsed from JSON with defaults for everything, then
//! validated once into [`Settings`].

use std::collections::BTreeSet;
use std::time::Duration;

use hyperplane_guest::types::{Arch, Error};
use serde::Deserialize;

/// The provider's `config` table as the operator writes it. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Number of uniform hosts `sim-1`..`sim-N` (default 4). Exclusive with `host_specs`.
    pub hosts: Option<u32>,
    /// vCPUs of each uniform host, and the default for `host_specs` entries.
    pub cpu: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    pub arch: ArchName,
    /// Explicit hosts, replacing the uniform `hosts` ones.
    pub host_specs: Option<Vec<HostSpecConfig>>,
    pub delays_ms: DelaysConfig,
    /// Chance in [0, 1] that a mutating call fails with a `backend` error.
    pub failure_rate: f64,
    /// Hosts reported `offline`; calls that need them fail with `unavailable`.
    pub offline_hosts: Vec<String>,
    /// Simulated transfer rate of `pull-template`, on top of `delays_ms.pull`; 0 disables the
    /// size-dependent part.
    pub pull_bytes_per_sec: u64,
    /// Guests ignore the graceful shutdown request, so every graceful stop lasts its whole grace
    /// period before the power-off.
    pub guests_ignore_shutdown: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            hosts: None,
            cpu: 16,
            ram_mb: 65_536,
            disk_gb: 500,
            arch: ArchName::Amd64,
            host_specs: None,
            delays_ms: DelaysConfig::default(),
            failure_rate: 0.0,
            offline_hosts: Vec::new(),
            pull_bytes_per_sec: 1 << 30,
            guests_ignore_shutdown: false,
        }
    }
}

pub const DEFAULT_HOST_COUNT: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchName {
    Amd64,
    Arm64,
}

impl From<ArchName> for Arch {
    fn from(arch: ArchName) -> Self {
        match arch {
            ArchName::Amd64 => Arch::Amd64,
            ArchName::Arm64 => Arch::Arm64,
        }
    }
}

/// One entry of `host_specs`; omitted sizes come from the top-level `cpu`, `ram_mb`, ….
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpecConfig {
    pub id: String,
    pub cpu: Option<u32>,
    pub ram_mb: Option<u64>,
    pub disk_gb: Option<u64>,
    pub arch: Option<ArchName>,
    #[serde(default)]
    pub offline: bool,
}

/// How long each operation takes, in milliseconds. All zero is the zero-delay benchmark mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelaysConfig {
    pub create: u64,
    pub start: u64,
    pub stop: u64,
    pub restart: u64,
    pub delete: u64,
    pub pull: u64,
    pub snapshot: u64,
}

impl Default for DelaysConfig {
    fn default() -> Self {
        Self { create: 200, start: 300, stop: 200, restart: 400, delete: 100, pull: 500, snapshot: 150 }
    }
}

/// A simulated hypervisor host.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedHost {
    pub id: String,
    pub cpu: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    pub arch: Arch,
    pub offline: bool,
}

/// Operation durations.
#[derive(Debug, Clone, PartialEq)]
pub struct Delays {
    pub create: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub restart: Duration,
    pub delete: Duration,
    pub pull: Duration,
    /// Creating or reverting to a snapshot.
    pub snapshot: Duration,
}

impl Delays {
    pub const ZERO: Delays = Delays {
        create: Duration::ZERO,
        start: Duration::ZERO,
        stop: Duration::ZERO,
        restart: Duration::ZERO,
        delete: Duration::ZERO,
        pull: Duration::ZERO,
        snapshot: Duration::ZERO,
    };

    /// A forced power-off skips most of a graceful stop.
    pub fn forced_stop(&self) -> Duration {
        self.stop / 10
    }
}

/// The validated config the simulator runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub hosts: Vec<SimulatedHost>,
    pub delays: Delays,
    pub failure_rate: f64,
    pub pull_bytes_per_sec: u64,
    pub guests_ignore_shutdown: bool,
}

impl Settings {
    /// Parses and validates the JSON `init` receives; errors are `invalid` and name the key.
    pub fn from_json(json: &str) -> Result<Settings, Error> {
        Settings::try_from(hyperplane_guest::config::<SimulatorConfig>(json)?)
    }

    pub fn host(&self, host_id: &str) -> Option<&SimulatedHost> {
        self.hosts.iter().find(|host| host.id == host_id)
    }
}

impl TryFrom<SimulatorConfig> for Settings {
    type Error = Error;

    fn try_from(config: SimulatorConfig) -> Result<Settings, Error> {
        let invalid = |message: String| Error::Invalid(format!("invalid config: {message}"));
        if config.cpu == 0 || config.ram_mb == 0 {
            return Err(invalid("`cpu` and `ram_mb` must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&config.failure_rate) {
            return Err(invalid(format!("`failure_rate` must be between 0 and 1, got {}", config.failure_rate)));
        }
        let mut hosts: Vec<SimulatedHost> = match (config.hosts, config.host_specs) {
            (Some(_), Some(_)) => return Err(invalid("set either `hosts` or `host_specs`, not both".into())),
            (_, Some(specs)) => specs
                .into_iter()
                .map(|spec| SimulatedHost {
                    id: spec.id,
                    cpu: spec.cpu.unwrap_or(config.cpu),
                    ram_mb: spec.ram_mb.unwrap_or(config.ram_mb),
                    disk_gb: spec.disk_gb.unwrap_or(config.disk_gb),
                    arch: spec.arch.unwrap_or(config.arch).into(),
                    offline: spec.offline,
                })
                .collect(),
            (count, None) => (1..=count.unwrap_or(DEFAULT_HOST_COUNT))
                .map(|number| SimulatedHost {
                    id: format!("sim-{number}"),
                    cpu: config.cpu,
                    ram_mb: config.ram_mb,
                    disk_gb: config.disk_gb,
                    arch: config.arch.into(),
                    offline: false,
                })
                .collect(),
        };
        let mut seen_ids = BTreeSet::new();
        for (index, host) in hosts.iter().enumerate() {
            if host.id.is_empty() || host.id.contains('/') {
                return Err(invalid(format!("`host_specs[{index}].id` must be non-empty and without `/`")));
            }
            if !seen_ids.insert(host.id.as_str()) {
                return Err(invalid(format!("`host_specs[{index}].id`: duplicate host id `{}`", host.id)));
            }
            if host.cpu == 0 || host.ram_mb == 0 {
                return Err(invalid(format!("`host_specs[{index}]`: `cpu` and `ram_mb` must be at least 1")));
            }
        }
        for offline_host in &config.offline_hosts {
            let host = hosts
                .iter_mut()
                .find(|host| &host.id == offline_host)
                .ok_or_else(|| invalid(format!("`offline_hosts` names unknown host `{offline_host}`")))?;
            host.offline = true;
        }
        let delays = config.delays_ms;
        Ok(Settings {
            hosts,
            delays: Delays {
                create: Duration::from_millis(delays.create),
                start: Duration::from_millis(delays.start),
                stop: Duration::from_millis(delays.stop),
                restart: Duration::from_millis(delays.restart),
                delete: Duration::from_millis(delays.delete),
                pull: Duration::from_millis(delays.pull),
                snapshot: Duration::from_millis(delays.snapshot),
            },
            failure_rate: config.failure_rate,
            pull_bytes_per_sec: config.pull_bytes_per_sec,
            guests_ignore_shutdown: config.guests_ignore_shutdown,
        })
    }
}
