//! The simulated hypervisor: every driver operation as plain Rust over a [`KeyValueStore`] and
//! an [`Environment`], so it runs natively in unit tests and inside the component alike.
//!
//! Concurrency: the host runs several component instances of one provider at once, so all
//! state is in the shared store and every read-modify-write is a compare-and-swap.
//! - Instance records change only through [`JsonState::update_json`].
//! - Capacity: a create first reserves its resources in the host's [`HostLedger`] (one
//!   compare-and-swap on a small record, so two creates cannot both take the last vCPUs), then
//!   writes the instance, then confirms the reservation. A reservation whose create died
//!   between those steps is reclaimed after [`STALE_RESERVATION_MS`]. Delete removes the
//!   instance first and then releases its resources, so a delete cut short in between leaks
//!   capacity rather than over-committing the host.
//! - Template removal versus create: create counts itself as a user of the template in the
//!   ledger and then checks the template is still cached; remove-template deletes the template
//!   and then checks the ledger for users, restoring the template if there are any. Each side
//!   writes before it reads what the other writes, so at least one of them notices the other.

use std::time::Duration;

use hyperplane_guest::bytes::{ByteReader, READ_CHUNK_BYTES, read_to_end};
use hyperplane_guest::state::{Change, JsonState, KeyValueStore};
use hyperplane_guest::types::{
    BackendError, CachedTemplate, Capabilities, ConsoleEndpoint, ConsoleProtocol, DiskFormat, Error, ExecResult,
    ExportedDisk, HostReport, HostState, Instance, InstanceSpec, InstanceState, Snapshot, TemplateRef,
};

use crate::config::{Settings, SimulatedHost};
use crate::environment::Environment;
use crate::identity::{console_port_for, ip_for, mac_for, normalized_mac};
use crate::records::{
    CachedTemplateRecord, DeltaBase, HostLedger, INSTANCE_PREFIX, InstanceRecord, PendingCreate, PowerState, Resources,
    SnapshotList, SnapshotRecord, TEMPLATE_PREFIX, TemplateRecord, host_templates_prefix, instance_key, ledger_key,
    snapshots_key, template_key,
};
use crate::script::simulate_script;
use crate::transfer::{ByteWriter, DEFAULT_EXPORT_BYTES, DeltaReader, SimulatedDisk, WRITE_CHUNK_BYTES};

/// The `hypervisor` string every simulated host reports.
pub const HYPERVISOR_NAME: &str = "driver-sim";
/// The `backend` error code of injected failures.
pub const SIMULATED_FAILURE_CODE: i64 = 1;
/// A capacity reservation older than this whose instance was never written is reclaimed.
pub const STALE_RESERVATION_MS: u64 = 60_000;
/// The longest grace period a graceful stop accepts (one hour).
pub const MAX_STOP_GRACE_MS: u32 = 3_600_000;
/// The longest snapshot name the simulator accepts, in bytes.
pub const MAX_SNAPSHOT_NAME_BYTES: usize = 255;
/// What every qcow2 image starts with.
pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Progress is reported at most this often during a simulated wait.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

/// What a power operation decides, given the instance's current state.
enum PowerPlan {
    /// The instance is already where the operation would take it.
    AlreadyThere,
    /// The same transition is under way: wait for it.
    Join,
    /// Start a transition to this persisted state.
    Begin(PowerState),
}

/// A simulated hypervisor with its hosts, storing instances and templates in `Store`.
#[derive(Debug)]
pub struct Simulator<Store, Env> {
    settings: Settings,
    state: JsonState<Store>,
    environment: Env,
}

impl<Store: KeyValueStore, Env: Environment> Simulator<Store, Env> {
    pub fn new(settings: Settings, store: Store, environment: Env) -> Self {
        Self { settings, state: JsonState::new(store), environment }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn capabilities() -> Capabilities {
        Capabilities {
            exec: true,
            console: true,
            templates: true,
            snapshots: true,
            suspend: true,
            delta_pull: true,
            export_disk: true,
        }
    }

    pub fn list_hosts(&self) -> Result<Vec<HostReport>, Error> {
        let cached: Vec<(String, CachedTemplateRecord)> = self.state.scan_json(TEMPLATE_PREFIX)?;
        Ok(self
            .settings
            .hosts
            .iter()
            .map(|host| HostReport {
                id: host.id.clone(),
                arch: host.arch,
                cpu: host.cpu,
                ram_mb: host.ram_mb,
                disk_gb: host.disk_gb,
                state: if host.offline { HostState::Offline } else { HostState::Active },
                hypervisor: HYPERVISOR_NAME.to_owned(),
                cached_templates: cached
                    .iter()
                    .filter(|(_, record)| record.host == host.id)
                    .map(|(_, record)| CachedTemplate::from(record))
                    .collect(),
            })
            .collect())
    }

    /// Every instance, on online and offline hosts alike: the simulator's inventory survives a
    /// host outage, so reconciliation does not mistake an outage for deletions.
    pub fn list_instances(&self) -> Result<Vec<Instance>, Error> {
        let now_ms = self.environment.now_ms();
        let records: Vec<(String, InstanceRecord)> = self.state.scan_json(INSTANCE_PREFIX)?;
        Ok(records.iter().map(|(_, record)| instance_view(record, now_ms)).collect())
    }

    /// Answers from the inventory, also for instances on offline hosts.
    pub fn get_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        let record = self.load_instance(instance_id)?;
        Ok(instance_view(&record, self.environment.now_ms()))
    }

    pub fn create_instance(&self, spec: InstanceSpec) -> Result<Instance, Error> {
        if spec.id.is_empty() {
            return Err(Error::Invalid("instance id must not be empty".into()));
        }
        if spec.vcpu == 0 || spec.ram_mb == 0 {
            return Err(Error::Invalid(format!(
                "instance {} needs at least 1 vcpu and 1 MB of ram, got {} vcpu and {} MB",
                spec.id, spec.vcpu, spec.ram_mb
            )));
        }
        if spec.template.name.is_empty() {
            return Err(Error::Invalid(format!("instance {}: template name must not be empty", spec.id)));
        }
        let mac = match &spec.mac {
            Some(mac) => normalized_mac(mac)
                .ok_or_else(|| Error::Invalid(format!("instance {}: `{mac}` is not a MAC address", spec.id)))?,
            None => mac_for(&spec.id),
        };
        let host = self.online_host(&spec.host)?;
        let requested = Resources { vcpu: u64::from(spec.vcpu), ram_mb: spec.ram_mb, disk_gb: spec.disk_gb };
        if requested.vcpu > u64::from(host.cpu) || requested.ram_mb > host.ram_mb || requested.disk_gb > host.disk_gb {
            return Err(Error::Invalid(format!(
                "instance {} ({} vcpu, {} MB ram, {} GB disk) can never fit on host {} ({} cpu, {} MB ram, {} GB disk)",
                spec.id, spec.vcpu, spec.ram_mb, spec.disk_gb, host.id, host.cpu, host.ram_mb, host.disk_gb
            )));
        }
        let key = instance_key(&spec.id);
        if self.state.get_json::<InstanceRecord>(&key)?.is_some() {
            return Err(instance_exists(&spec.id));
        }
        let template = TemplateRecord::from(&spec.template);
        let cached_key = template_key(&host.id, &template.name, template.version);
        if self.state.get_json::<CachedTemplateRecord>(&cached_key)?.is_none() {
            return Err(template_not_cached(&template, &host.id));
        }
        // Fail fast on a full host; the reservation below checks again atomically.
        let ledger: HostLedger = self.state.get_json(&ledger_key(&host.id))?.unwrap_or_default();
        check_capacity(host, &ledger, requested)?;
        self.inject_failure("create-instance")?;
        self.wait_with_progress(self.settings.delays.create, &format!("creating instance {} on {}", spec.id, host.id));

        let created_at_ms = self.environment.now_ms();
        let pending = PendingCreate {
            resources: requested,
            template_usage_key: template.usage_key(),
            reserved_at_ms: created_at_ms,
        };
        self.reserve_capacity(host, &spec.id, pending.clone())?;
        if self.state.get_json::<CachedTemplateRecord>(&cached_key)?.is_none() {
            self.cancel_reservation(&host.id, &spec.id, &pending);
            return Err(template_not_cached(&template, &host.id));
        }
        let record = InstanceRecord {
            id: spec.id.clone(),
            name: if spec.name.is_empty() { spec.id.clone() } else { spec.name },
            host: host.id.clone(),
            template,
            vcpu: spec.vcpu,
            ram_mb: spec.ram_mb,
            disk_gb: spec.disk_gb,
            mac,
            vlan: spec.vlan,
            metadata: spec.metadata.into_iter().map(|pair| (pair.key, pair.value)).collect(),
            power: PowerState::Stopped,
            created_at_ms,
        };
        let inserted = match self.state.insert_json_if_absent(&key, &record) {
            Ok(inserted) => inserted,
            Err(error) => {
                self.cancel_reservation(&host.id, &spec.id, &pending);
                return Err(error.into());
            }
        };
        if !inserted {
            self.cancel_reservation(&host.id, &spec.id, &pending);
            return Err(instance_exists(&spec.id));
        }
        self.confirm_reservation(&host.id, &spec.id)?;
        hyperplane_guest::log::debug("simulated instance created", &[("instance", &record.id), ("host", &record.host)]);
        Ok(instance_view(&record, created_at_ms))
    }

    /// Stopped → starting → running. Starting a running instance returns it as is; starting
    /// one that is already starting (or restarting) waits for that.
    pub fn start_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        let start_delay = self.settings.delays.start;
        self.change_power(instance_id, "start-instance", "starting", |record, observed, now_ms| match observed {
            InstanceState::Running => Ok(PowerPlan::AlreadyThere),
            InstanceState::Stopped => Ok(PowerPlan::Begin(starting(now_ms, start_delay))),
            InstanceState::Starting => Ok(PowerPlan::Join),
            InstanceState::Suspended => {
                Err(Error::Conflict(format!("instance {instance_id} is suspended; resume it instead")))
            }
            _ if is_restarting(record.power) => Ok(PowerPlan::Join),
            _ => Err(Error::Conflict(format!(
                "instance {instance_id} is {}; cannot start it",
                activity(record.power, observed)
            ))),
        })
    }

    /// Running → stopping → stopped. A graceful stop takes `delays.stop`, or the grace period
    /// plus a forced power-off when that is shorter or the guests ignore shutdown requests
    /// (`guests_ignore_shutdown`). `force` powers off after a tenth of the graceful delay and may
    /// interrupt a start or restart. A suspended guest cannot shut down, so it is powered off.
    /// Stopping a stopped instance returns it as is; stopping one that is already stopping
    /// waits for that.
    pub fn stop_instance(&self, instance_id: &str, force: bool, grace_ms: u32) -> Result<Instance, Error> {
        if grace_ms > MAX_STOP_GRACE_MS {
            return Err(Error::Invalid(format!(
                "grace period of {grace_ms} ms for instance {instance_id} exceeds the maximum of {MAX_STOP_GRACE_MS} ms"
            )));
        }
        let delays = self.settings.delays.clone();
        let graceful_stop = self.graceful_stop_duration(Duration::from_millis(u64::from(grace_ms)));
        self.change_power(instance_id, "stop-instance", "stopping", |record, observed, now_ms| {
            let forced_at_ms = now_ms.saturating_add(millis(delays.forced_stop()));
            match (observed, record.power) {
                (InstanceState::Stopped, _) => Ok(PowerPlan::AlreadyThere),
                (InstanceState::Running, _) => {
                    let delay = if force { delays.forced_stop() } else { graceful_stop };
                    Ok(PowerPlan::Begin(stopping_until(now_ms, now_ms.saturating_add(millis(delay)))))
                }
                (InstanceState::Suspended, _) => Ok(PowerPlan::Begin(stopping_until(now_ms, forced_at_ms))),
                (_, PowerState::Stopping { stopped_at_ms }) if force => {
                    Ok(PowerPlan::Begin(stopping_until(now_ms, forced_at_ms.min(stopped_at_ms))))
                }
                (_, PowerState::Stopping { .. }) => Ok(PowerPlan::Join),
                _ if force => Ok(PowerPlan::Begin(stopping_until(now_ms, forced_at_ms))),
                _ => Err(Error::Conflict(format!(
                    "instance {instance_id} is {}; stop it with force to power it off",
                    activity(record.power, observed)
                ))),
            }
        })
    }

    /// How long a graceful stop with `grace` takes: the guest's own shutdown, cut short by a
    /// forced power-off when the grace period ends first.
    fn graceful_stop_duration(&self, grace: Duration) -> Duration {
        let delays = &self.settings.delays;
        let powered_off_after_grace = grace.saturating_add(delays.forced_stop());
        if self.settings.guests_ignore_shutdown {
            powered_off_after_grace
        } else {
            delays.stop.min(powered_off_after_grace)
        }
    }

    /// Running → suspended, at once (the guest's memory stays in place).
    pub fn suspend_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        self.change_power(instance_id, "suspend-instance", "suspending", |record, observed, _| match observed {
            InstanceState::Suspended => Ok(PowerPlan::AlreadyThere),
            InstanceState::Running => Ok(PowerPlan::Begin(PowerState::Suspended)),
            _ => Err(Error::Conflict(format!(
                "instance {instance_id} is {}; only a running instance can be suspended",
                activity(record.power, observed)
            ))),
        })
    }

    /// Suspended → running, at once.
    pub fn resume_instance(&self, instance_id: &str) -> Result<Instance, Error> {
        self.change_power(instance_id, "resume-instance", "resuming", |record, observed, _| match observed {
            InstanceState::Running => Ok(PowerPlan::AlreadyThere),
            InstanceState::Suspended => Ok(PowerPlan::Begin(PowerState::Running)),
            _ => Err(Error::Conflict(format!(
                "instance {instance_id} is {}; only a suspended instance can be resumed",
                activity(record.power, observed)
            ))),
        })
    }

    /// Running → stopping → starting → running, in `delays.restart`. A stopped instance must
    /// be started instead. `force` shortens the stop phase and may interrupt a start, stop or
    /// restart; restarting an instance that is restarting already waits for that.
    pub fn restart_instance(&self, instance_id: &str, force: bool) -> Result<Instance, Error> {
        let restart_delay = self.settings.delays.restart;
        self.change_power(instance_id, "restart-instance", "restarting", |record, observed, now_ms| {
            let stop_phase = if force { restart_delay / 20 } else { restart_delay / 2 };
            let begin = PowerPlan::Begin(restarting(now_ms, stop_phase, restart_delay / 2));
            match observed {
                InstanceState::Stopped => {
                    Err(Error::Conflict(format!("instance {instance_id} is stopped; start it instead")))
                }
                InstanceState::Running => Ok(begin),
                _ if force => Ok(begin),
                _ if is_restarting(record.power) => Ok(PowerPlan::Join),
                _ => Err(Error::Conflict(format!(
                    "instance {instance_id} is {}; restart it with force to interrupt that",
                    activity(record.power, observed)
                ))),
            }
        })
    }

    /// Removes the instance in any power state, with its snapshots, after `delays.delete`.
    pub fn delete_instance(&self, instance_id: &str) -> Result<(), Error> {
        let record = self.load_instance(instance_id)?;
        self.online_host(&record.host)?;
        self.inject_failure("delete-instance")?;
        self.wait_with_progress(self.settings.delays.delete, &format!("deleting instance {instance_id}"));
        let mut deleted: Option<InstanceRecord> = None;
        self.state.update_json::<InstanceRecord, Error>(&instance_key(instance_id), |current| {
            deleted = current.cloned();
            match current {
                Some(_) => Ok(Change::Remove),
                None => Err(instance_not_found(instance_id)),
            }
        })?;
        self.remove_snapshots(instance_id)?;
        if let Some(deleted) = deleted {
            let resources =
                Resources { vcpu: u64::from(deleted.vcpu), ram_mb: deleted.ram_mb, disk_gb: deleted.disk_gb };
            let usage_key = deleted.template.usage_key();
            self.state.update_json::<HostLedger, Error>(&ledger_key(&deleted.host), |ledger| {
                let mut ledger = ledger.cloned().unwrap_or_default();
                ledger.release(resources, &usage_key);
                Ok(Change::Put(ledger))
            })?;
            hyperplane_guest::log::debug("simulated instance deleted", &[("instance", instance_id)]);
        }
        Ok(())
    }

    pub fn list_templates(&self, host_id: &str) -> Result<Vec<CachedTemplate>, Error> {
        let host = self.online_host(host_id)?;
        let cached: Vec<(String, CachedTemplateRecord)> = self.state.scan_json(&host_templates_prefix(&host.id))?;
        Ok(cached.iter().map(|(_, record)| CachedTemplate::from(record)).collect())
    }

    /// Caches `template` on the host. With a `delta` whose base is cached on the host, builds
    /// it from the base: reads only the changed bytes (their count must equal the changes'
    /// lengths, which must be ascending, not overlapping and within the delta's size, itself the
    /// template's size) and takes `delays.pull` plus the changed bytes at `pull_bytes_per_sec`,
    /// never touching `image`. Otherwise reads `image` to its end (a non-empty image must have
    /// the template's size, and a qcow2 one must start with the qcow2 magic), then takes
    /// `delays.pull` plus the template's size at `pull_bytes_per_sec`. An empty image stands
    /// for one the simulator makes up. Pulling a cached template returns the cached one at
    /// once, reading neither. The cache entry records how many bytes were read.
    pub fn pull_template(
        &self,
        host_id: &str,
        template: &TemplateRef,
        image: &impl ByteReader,
        delta: Option<&dyn DeltaReader>,
    ) -> Result<CachedTemplate, Error> {
        if template.name.is_empty() {
            return Err(Error::Invalid("template name must not be empty".into()));
        }
        let host = self.online_host(host_id)?;
        let key = template_key(&host.id, &template.name, template.version);
        if let Some(cached) = self.state.get_json::<CachedTemplateRecord>(&key)? {
            return Ok(CachedTemplate::from(&cached));
        }
        let mut record = match delta {
            Some(delta) if self.base_is_cached(&host.id, &delta.base())? => {
                self.receive_delta(&host.id, template, delta)?
            }
            _ => self.receive_image(&host.id, template, image)?,
        };
        record.pulled_at_ms = self.environment.now_ms();
        if self.state.insert_json_if_absent(&key, &record)? {
            return Ok(CachedTemplate::from(&record));
        }
        // A concurrent pull finished first.
        let cached = self.state.get_json::<CachedTemplateRecord>(&key)?.unwrap_or(record);
        Ok(CachedTemplate::from(&cached))
    }

    fn base_is_cached(&self, host_id: &str, base: &TemplateRef) -> Result<bool, Error> {
        let base_key = template_key(host_id, &base.name, base.version);
        Ok(self.state.get_json::<CachedTemplateRecord>(&base_key)?.is_some())
    }

    /// The full pull: reads and checks `image`, then waits for its simulated transfer.
    fn receive_image(
        &self,
        host_id: &str,
        template: &TemplateRef,
        image: &impl ByteReader,
    ) -> Result<CachedTemplateRecord, Error> {
        let image_size = image.size();
        if image_size > 0 && image_size != template.size_bytes {
            return Err(Error::Invalid(format!(
                "template {} v{} declares {} bytes but its image has {image_size}",
                template.name, template.version, template.size_bytes
            )));
        }
        self.inject_failure("pull-template")?;
        let mut image_start = Vec::with_capacity(QCOW2_MAGIC.len());
        let bytes_received = read_to_end(image, |chunk| {
            let missing = QCOW2_MAGIC.len().saturating_sub(image_start.len());
            image_start.extend_from_slice(&chunk[..missing.min(chunk.len())]);
        })
        .map_err(|error| {
            Error::Unavailable(format!(
                "reading the image of template {} v{}: {error}",
                template.name, template.version
            ))
        })?;
        if image_size > 0 && template.format == DiskFormat::Qcow2 && image_start != QCOW2_MAGIC {
            return Err(Error::Invalid(format!(
                "template {} v{} is declared qcow2 but its image does not start with the qcow2 magic",
                template.name, template.version
            )));
        }
        self.wait_for_transfer(
            template.size_bytes,
            &format!(
                "pulling template {} v{} ({} bytes) to {host_id}",
                template.name, template.version, template.size_bytes
            ),
        );
        Ok(CachedTemplateRecord {
            host: host_id.to_owned(),
            template: TemplateRecord::from(template),
            pulled_at_ms: 0,
            bytes_received,
            delta_base: None,
        })
    }

    /// The delta pull from a cached base: reads only the changed bytes, checks them against the
    /// changed spans, then waits for their simulated transfer.
    fn receive_delta(
        &self,
        host_id: &str,
        template: &TemplateRef,
        delta: &dyn DeltaReader,
    ) -> Result<CachedTemplateRecord, Error> {
        let base = delta.base();
        let describe = || {
            format!(
                "the delta of template {} v{} (from v{} of {})",
                template.name, template.version, base.version, base.name
            )
        };
        let size = delta.size();
        if size != template.size_bytes {
            return Err(Error::Invalid(format!(
                "template {} v{} declares {} bytes but {} builds {size}",
                template.name,
                template.version,
                template.size_bytes,
                describe()
            )));
        }
        let changes = delta.changes();
        let mut changed_bytes: u64 = 0;
        let mut covered_to: u64 = 0;
        for span in &changes {
            let span_end = span.offset.checked_add(span.length).filter(|end| *end <= size);
            let Some(span_end) = span_end.filter(|_| span.offset >= covered_to) else {
                return Err(Error::Invalid(format!(
                    "{}: span of {} bytes at {} is out of order, overlapping or beyond its size {size}",
                    describe(),
                    span.length,
                    span.offset
                )));
            };
            covered_to = span_end;
            changed_bytes = changed_bytes.saturating_add(span.length);
        }
        self.inject_failure("pull-template")?;
        // The bytes of the image's start that the changes carry, to check a qcow2 image's magic.
        let magic_carried = changes.first().filter(|span| span.offset == 0).map_or(0, |span| span.length);
        let magic_carried = usize::try_from(magic_carried).unwrap_or(usize::MAX).min(QCOW2_MAGIC.len());
        let mut image_start = Vec::with_capacity(magic_carried);
        let mut bytes_received: u64 = 0;
        loop {
            let chunk = delta.read(READ_CHUNK_BYTES).map_err(|error| {
                Error::Unavailable(format!("reading {}: the host could not read it: {error}", describe()))
            })?;
            if chunk.is_empty() {
                break;
            }
            bytes_received = bytes_received.saturating_add(chunk.len() as u64);
            if bytes_received > changed_bytes {
                break;
            }
            let missing = magic_carried.saturating_sub(image_start.len());
            image_start.extend_from_slice(&chunk[..missing.min(chunk.len())]);
        }
        if bytes_received != changed_bytes {
            return Err(Error::Invalid(format!(
                "{}: its {} changed spans cover {changed_bytes} bytes but it delivered {}{bytes_received}",
                describe(),
                changes.len(),
                if bytes_received > changed_bytes { "at least " } else { "" }
            )));
        }
        if template.format == DiskFormat::Qcow2 && image_start[..] != QCOW2_MAGIC[..magic_carried] {
            return Err(Error::Invalid(format!(
                "template {} v{} is declared qcow2 but {} changes its start to something other than the qcow2 magic",
                template.name,
                template.version,
                describe()
            )));
        }
        self.wait_for_transfer(
            changed_bytes,
            &format!(
                "pulling template {} v{} ({changed_bytes} changed of {size} bytes, from v{}) to {host_id}",
                template.name, template.version, base.version
            ),
        );
        Ok(CachedTemplateRecord {
            host: host_id.to_owned(),
            template: TemplateRecord::from(template),
            pulled_at_ms: 0,
            bytes_received,
            delta_base: Some(DeltaBase { name: base.name, version: base.version }),
        })
    }

    /// Waits `delays.pull` plus `bytes` at `pull_bytes_per_sec`.
    fn wait_for_transfer(&self, bytes: u64, message: &str) {
        self.wait_with_progress(self.settings.delays.pull.saturating_add(self.transfer_time(bytes)), message);
    }

    /// `bytes` at `pull_bytes_per_sec` (zero when that is 0).
    fn transfer_time(&self, bytes: u64) -> Duration {
        match self.settings.pull_bytes_per_sec {
            0 => Duration::ZERO,
            bytes_per_sec => Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64),
        }
    }

    /// Fails with `conflict` while an instance on the host uses the template.
    pub fn remove_template(&self, host_id: &str, template: &TemplateRef) -> Result<(), Error> {
        let host = self.online_host(host_id)?;
        let template = TemplateRecord::from(template);
        let key = template_key(&host.id, &template.name, template.version);
        let Some(cached) = self.state.get_json::<CachedTemplateRecord>(&key)? else {
            return Err(Error::NotFound(format!(
                "template {} v{} is not cached on host {}",
                template.name, template.version, host.id
            )));
        };
        let usage_key = template.usage_key();
        let in_use = |simulator: &Self| -> Result<bool, Error> {
            let ledger: HostLedger = simulator.state.get_json(&ledger_key(&host.id))?.unwrap_or_default();
            Ok(ledger.template_in_use(&usage_key))
        };
        if in_use(self)? {
            return Err(template_in_use(&template, &host.id));
        }
        self.inject_failure("remove-template")?;
        self.state.update_json::<CachedTemplateRecord, Error>(&key, |current| match current {
            Some(_) => Ok(Change::Remove),
            None => Err(Error::NotFound(format!(
                "template {} v{} is not cached on host {}",
                template.name, template.version, host.id
            ))),
        })?;
        if in_use(self)? {
            // A create started using it meanwhile: put the template back.
            self.state.insert_json_if_absent(&key, &cached)?;
            return Err(template_in_use(&template, &host.id));
        }
        Ok(())
    }

    /// Runs the script through [`simulate_script`] on a running instance, taking as long as
    /// the script's `sleep`s (capped by the timeout).
    pub fn exec(&self, instance_id: &str, script: &str, timeout_ms: u32) -> Result<ExecResult, Error> {
        let record = self.running_instance(instance_id, "exec")?;
        let outcome = simulate_script(script, &record.name, Duration::from_millis(u64::from(timeout_ms)));
        if !outcome.elapsed.is_zero() {
            self.environment.sleep(outcome.elapsed);
        }
        Ok(ExecResult {
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            exit_code: outcome.exit_code,
            timed_out: outcome.timed_out,
        })
    }

    /// VNC on 127.0.0.1 at a port derived from the id; the instance must be running.
    pub fn console(&self, instance_id: &str) -> Result<ConsoleEndpoint, Error> {
        let record = self.running_instance(instance_id, "a console")?;
        Ok(ConsoleEndpoint {
            protocol: ConsoleProtocol::Vnc,
            host: "127.0.0.1".to_owned(),
            port: console_port_for(&record.id),
            password: None,
        })
    }

    /// The instance's snapshots, oldest first.
    pub fn list_snapshots(&self, instance_id: &str) -> Result<Vec<Snapshot>, Error> {
        self.load_instance(instance_id)?;
        let list: SnapshotList = self.state.get_json(&snapshots_key(instance_id))?.unwrap_or_default();
        Ok(list.snapshots.iter().map(|snapshot| snapshot_view(snapshot, &list)).collect())
    }

    /// Snapshots a running, stopped or suspended instance under a name it does not use yet,
    /// after `delays.snapshot`; the new snapshot becomes the current one.
    pub fn create_snapshot(&self, instance_id: &str, name: &str, description: &str) -> Result<Snapshot, Error> {
        if name.is_empty() || name.len() > MAX_SNAPSHOT_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "snapshot name {name:?} must be 1-{MAX_SNAPSHOT_NAME_BYTES} bytes without control characters"
            )));
        }
        let record = self.load_instance(instance_id)?;
        self.online_host(&record.host)?;
        let now_ms = self.environment.now_ms();
        let power = record.power.settled_at(now_ms);
        if power.completes_at_ms().is_some() {
            return Err(Error::Conflict(format!(
                "instance {instance_id} is {}; wait until it is running, stopped or suspended to snapshot it",
                activity(power, power.observed_at(now_ms))
            )));
        }
        let existing: SnapshotList = self.state.get_json(&snapshots_key(instance_id))?.unwrap_or_default();
        if existing.snapshots.iter().any(|snapshot| snapshot.name == name) {
            return Err(snapshot_exists(instance_id, name));
        }
        self.inject_failure("create-snapshot")?;
        self.wait_with_progress(
            self.settings.delays.snapshot,
            &format!("snapshotting instance {instance_id} as {name}"),
        );
        let snapshot = SnapshotRecord {
            name: name.to_owned(),
            description: description.to_owned(),
            created_at_ms: self.environment.now_ms(),
            power,
        };
        let list = self.state.update_json::<SnapshotList, Error>(&snapshots_key(instance_id), |current| {
            let mut list = current.cloned().unwrap_or_default();
            if list.snapshots.iter().any(|existing| existing.name == name) {
                return Err(snapshot_exists(instance_id, name));
            }
            list.snapshots.push(snapshot.clone());
            list.current = Some(name.to_owned());
            Ok(Change::Put(list))
        })?;
        if self.state.get_json::<InstanceRecord>(&instance_key(instance_id))?.is_none() {
            // Deleted meanwhile: its snapshots go with it.
            self.remove_snapshots(instance_id)?;
            return Err(instance_not_found(instance_id));
        }
        Ok(snapshot_view(&snapshot, &list.unwrap_or_default()))
    }

    /// Returns the instance to the snapshot's power state (from any state), after
    /// `delays.snapshot`; the snapshot becomes the current one.
    pub fn revert_snapshot(&self, instance_id: &str, name: &str) -> Result<Instance, Error> {
        let record = self.load_instance(instance_id)?;
        self.online_host(&record.host)?;
        let list: SnapshotList = self.state.get_json(&snapshots_key(instance_id))?.unwrap_or_default();
        let snapshot = list
            .snapshots
            .iter()
            .find(|snapshot| snapshot.name == name)
            .cloned()
            .ok_or_else(|| snapshot_not_found(instance_id, name))?;
        self.inject_failure("revert-snapshot")?;
        self.wait_with_progress(
            self.settings.delays.snapshot,
            &format!("reverting instance {instance_id} to snapshot {name}"),
        );
        let reverted = self.state.update_json::<InstanceRecord, Error>(&instance_key(instance_id), |current| {
            let current = current.ok_or_else(|| instance_not_found(instance_id))?;
            Ok(Change::Put(InstanceRecord { power: snapshot.power, ..current.clone() }))
        })?;
        let reverted = reverted.ok_or_else(|| instance_not_found(instance_id))?;
        self.state.update_json::<SnapshotList, Error>(&snapshots_key(instance_id), |current| {
            let Some(list) = current.filter(|list| list.snapshots.iter().any(|snapshot| snapshot.name == name)) else {
                return Ok(Change::Keep);
            };
            Ok(Change::Put(SnapshotList { current: Some(name.to_owned()), ..list.clone() }))
        })?;
        Ok(instance_view(&reverted, self.environment.now_ms()))
    }

    /// Removes a snapshot; the instance keeps its state.
    pub fn delete_snapshot(&self, instance_id: &str, name: &str) -> Result<(), Error> {
        let record = self.load_instance(instance_id)?;
        self.online_host(&record.host)?;
        self.inject_failure("delete-snapshot")?;
        self.state.update_json::<SnapshotList, Error>(&snapshots_key(instance_id), |current| {
            let mut list = current.cloned().unwrap_or_default();
            let before = list.snapshots.len();
            list.snapshots.retain(|snapshot| snapshot.name != name);
            if list.snapshots.len() == before {
                return Err(snapshot_not_found(instance_id, name));
            }
            if list.current.as_deref() == Some(name) {
                list.current = None;
            }
            Ok(if list.snapshots.is_empty() { Change::Remove } else { Change::Put(list) })
        })?;
        Ok(())
    }

    /// Writes the instance's simulated disk ([`SimulatedDisk`]) into `sink` in pieces of at most
    /// [`WRITE_CHUNK_BYTES`]: the size of its template, or [`DEFAULT_EXPORT_BYTES`] when that
    /// has no recorded size, in the template's format, taking that size at
    /// `pull_bytes_per_sec`. Only a stopped or suspended instance (`conflict` otherwise); a
    /// sink that stops taking bytes makes it `unavailable`.
    pub fn export_disk(&self, instance_id: &str, sink: &impl ByteWriter) -> Result<ExportedDisk, Error> {
        let record = self.load_instance(instance_id)?;
        self.online_host(&record.host)?;
        match record.power.observed_at(self.environment.now_ms()) {
            InstanceState::Stopped | InstanceState::Suspended => {}
            other => {
                return Err(Error::Conflict(format!(
                    "instance {instance_id} is {}; export-disk needs it stopped or suspended",
                    activity(record.power, other)
                )));
            }
        }
        let size_bytes = match record.template.size_bytes {
            0 => DEFAULT_EXPORT_BYTES,
            size_bytes => size_bytes,
        };
        let disk = SimulatedDisk::new(instance_id, record.template.format.into(), size_bytes);
        let message = format!("exporting the disk of instance {instance_id} ({size_bytes} bytes)");
        let duration = self.transfer_time(size_bytes);
        // Written in steps (one when nothing is waited for), each followed by its share of the
        // simulated transfer time.
        let steps = if duration.is_zero() {
            1
        } else {
            (duration.as_millis() / PROGRESS_INTERVAL.as_millis()).clamp(1, 10) as u32
        };
        if !duration.is_zero() {
            self.environment.report_progress(0.0, &message);
        }
        let mut written: u64 = 0;
        for step in 1..=steps {
            let step_end =
                u64::try_from(u128::from(size_bytes) * u128::from(step) / u128::from(steps)).unwrap_or(size_bytes);
            while written < step_end {
                let piece_end = written.saturating_add(WRITE_CHUNK_BYTES as u64).min(step_end);
                sink.write(&disk.bytes(written, piece_end)).map_err(|error| {
                    Error::Unavailable(format!(
                        "writing the disk of instance {instance_id} at byte {written}: the host stopped receiving: {error}"
                    ))
                })?;
                written = piece_end;
            }
            if !duration.is_zero() {
                self.environment.sleep(duration / steps);
                self.environment.report_progress(step as f32 / steps as f32, &message);
            }
        }
        Ok(ExportedDisk { format: disk.format(), size_bytes })
    }

    fn remove_snapshots(&self, instance_id: &str) -> Result<(), Error> {
        self.state.update_json::<SnapshotList, Error>(&snapshots_key(instance_id), |current| {
            Ok(if current.is_some() { Change::Remove } else { Change::Keep })
        })?;
        Ok(())
    }

    fn load_instance(&self, instance_id: &str) -> Result<InstanceRecord, Error> {
        self.state.get_json(&instance_key(instance_id))?.ok_or_else(|| instance_not_found(instance_id))
    }

    fn running_instance(&self, instance_id: &str, purpose: &str) -> Result<InstanceRecord, Error> {
        let record = self.load_instance(instance_id)?;
        self.online_host(&record.host)?;
        match record.power.observed_at(self.environment.now_ms()) {
            InstanceState::Running => Ok(record),
            other => Err(Error::Conflict(format!(
                "instance {instance_id} is {}; {purpose} needs it running",
                state_name(other)
            ))),
        }
    }

    /// The host, if it exists (`not-found`) and is online (`unavailable`).
    fn online_host(&self, host_id: &str) -> Result<&SimulatedHost, Error> {
        let host =
            self.settings.host(host_id).ok_or_else(|| Error::NotFound(format!("host {host_id} does not exist")))?;
        if host.offline {
            return Err(Error::Unavailable(format!("host {host_id} is offline (simulated)")));
        }
        Ok(host)
    }

    /// Fails with probability `failure_rate`, before the operation changes anything.
    fn inject_failure(&self, operation: &str) -> Result<(), Error> {
        let failure_rate = self.settings.failure_rate;
        if failure_rate > 0.0 && self.environment.random_fraction() < failure_rate {
            return Err(Error::Backend(BackendError {
                code: SIMULATED_FAILURE_CODE,
                message: format!("simulated failure of {operation} (failure_rate {failure_rate})"),
            }));
        }
        Ok(())
    }

    /// The common shape of start, stop and restart: decide from the current state, persist the
    /// transition with compare-and-swap (deciding again if the instance changed meanwhile),
    /// wait until it completes, and settle it.
    fn change_power(
        &self,
        instance_id: &str,
        operation: &str,
        progress_verb: &str,
        plan: impl Fn(&InstanceRecord, InstanceState, u64) -> Result<PowerPlan, Error>,
    ) -> Result<Instance, Error> {
        let record = self.load_instance(instance_id)?;
        self.online_host(&record.host)?;
        let now_ms = self.environment.now_ms();
        match plan(&record, record.power.observed_at(now_ms), now_ms)? {
            PowerPlan::AlreadyThere => return Ok(instance_view(&record, now_ms)),
            PowerPlan::Join => return self.wait_for_transition(&record, progress_verb),
            PowerPlan::Begin(_) => self.inject_failure(operation)?,
        }
        // Decide again on the freshest record: if another call got there first and made our
        // transition unnecessary, its transition is as good as ours.
        let updated = self.state.update_json::<InstanceRecord, Error>(&instance_key(instance_id), |current| {
            let current = current.ok_or_else(|| instance_not_found(instance_id))?;
            let now_ms = self.environment.now_ms();
            match plan(current, current.power.observed_at(now_ms), now_ms)? {
                PowerPlan::AlreadyThere | PowerPlan::Join => Ok(Change::Keep),
                PowerPlan::Begin(power) => Ok(Change::Put(InstanceRecord { power, ..current.clone() })),
            }
        })?;
        let updated = updated.ok_or_else(|| instance_not_found(instance_id))?;
        self.wait_for_transition(&updated, progress_verb)
    }

    /// Waits until the transition persisted in `record` completes, settles it in the store
    /// (unless the instance changed meanwhile) and returns the instance as it is then.
    fn wait_for_transition(&self, record: &InstanceRecord, progress_verb: &str) -> Result<Instance, Error> {
        if let Some(completes_at_ms) = record.power.completes_at_ms() {
            let remaining_ms = completes_at_ms.saturating_sub(self.environment.now_ms());
            self.wait_with_progress(
                Duration::from_millis(remaining_ms),
                &format!("{progress_verb} instance {}", record.id),
            );
        }
        let persisted_power = record.power;
        let settled = self.state.update_json::<InstanceRecord, Error>(&instance_key(&record.id), |current| {
            let current = current.ok_or_else(|| instance_not_found(&record.id))?;
            let settled_power = current.power.settled_at(self.environment.now_ms());
            if current.power != persisted_power || settled_power == current.power {
                return Ok(Change::Keep);
            }
            Ok(Change::Put(InstanceRecord { power: settled_power, ..current.clone() }))
        })?;
        let settled = settled.ok_or_else(|| instance_not_found(&record.id))?;
        Ok(instance_view(&settled, self.environment.now_ms()))
    }

    /// Sleeps for `duration`, reporting progress along the way; nothing at all for zero.
    fn wait_with_progress(&self, duration: Duration, message: &str) {
        if duration.is_zero() {
            return;
        }
        let steps = (duration.as_millis() / PROGRESS_INTERVAL.as_millis()).clamp(1, 10) as u32;
        self.environment.report_progress(0.0, message);
        for step in 1..=steps {
            self.environment.sleep(duration / steps);
            self.environment.report_progress(step as f32 / steps as f32, message);
        }
    }

    /// Atomically adds a create's resources to the host's ledger, refusing with `conflict`
    /// when they do not fit or the id is being created already; reclaims stale reservations.
    fn reserve_capacity(&self, host: &SimulatedHost, instance_id: &str, pending: PendingCreate) -> Result<(), Error> {
        self.state.update_json::<HostLedger, Error>(&ledger_key(&host.id), |ledger| {
            let mut ledger = ledger.cloned().unwrap_or_default();
            self.reclaim_stale_reservations(&host.id, &mut ledger, pending.reserved_at_ms)?;
            if ledger.pending_creates.contains_key(instance_id) {
                return Err(instance_exists(instance_id));
            }
            check_capacity(host, &ledger, pending.resources)?;
            ledger.reserve(instance_id, pending.clone());
            Ok(Change::Put(ledger))
        })?;
        Ok(())
    }

    /// The instance is written: its resources stay allocated, the reservation is done.
    fn confirm_reservation(&self, host_id: &str, instance_id: &str) -> Result<(), Error> {
        self.state.update_json::<HostLedger, Error>(&ledger_key(host_id), |ledger| {
            let mut ledger = ledger.cloned().unwrap_or_default();
            if ledger.pending_creates.remove(instance_id).is_none() {
                return Ok(Change::Keep);
            }
            Ok(Change::Put(ledger))
        })?;
        Ok(())
    }

    /// The create failed after reserving: give the resources back. Best effort, since the
    /// caller is already returning an error; a leftover is reclaimed as stale later.
    fn cancel_reservation(&self, host_id: &str, instance_id: &str, pending: &PendingCreate) {
        let outcome = self.state.update_json::<HostLedger, Error>(&ledger_key(host_id), |ledger| {
            let mut ledger = ledger.cloned().unwrap_or_default();
            if ledger.pending_creates.get(instance_id) != Some(pending) {
                return Ok(Change::Keep);
            }
            ledger.pending_creates.remove(instance_id);
            ledger.release(pending.resources, &pending.template_usage_key);
            Ok(Change::Put(ledger))
        });
        if let Err(error) = outcome {
            hyperplane_guest::log::warn(
                "could not cancel a capacity reservation",
                &[("instance", instance_id), ("host", host_id), ("error", &error.to_string())],
            );
        }
    }

    /// Reservations older than [`STALE_RESERVATION_MS`] belong to creates that died between
    /// reserving and confirming: keep the resources if the instance was written, else release.
    fn reclaim_stale_reservations(&self, host_id: &str, ledger: &mut HostLedger, now_ms: u64) -> Result<(), Error> {
        let stale: Vec<(String, PendingCreate)> = ledger
            .pending_creates
            .iter()
            .filter(|(_, pending)| now_ms.saturating_sub(pending.reserved_at_ms) > STALE_RESERVATION_MS)
            .map(|(instance_id, pending)| (instance_id.clone(), pending.clone()))
            .collect();
        for (instance_id, pending) in stale {
            let written = self
                .state
                .get_json::<InstanceRecord>(&instance_key(&instance_id))?
                .is_some_and(|record| record.host == host_id && record.created_at_ms == pending.reserved_at_ms);
            ledger.pending_creates.remove(&instance_id);
            if !written {
                ledger.release(pending.resources, &pending.template_usage_key);
            }
        }
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn starting(now_ms: u64, delay: Duration) -> PowerState {
    if delay.is_zero() { PowerState::Running } else { PowerState::Starting { running_at_ms: now_ms + millis(delay) } }
}

fn stopping_until(now_ms: u64, stopped_at_ms: u64) -> PowerState {
    if stopped_at_ms <= now_ms { PowerState::Stopped } else { PowerState::Stopping { stopped_at_ms } }
}

fn restarting(now_ms: u64, stop_phase: Duration, start_phase: Duration) -> PowerState {
    let stop_phase_ends_at_ms = now_ms.saturating_add(millis(stop_phase));
    let running_at_ms = stop_phase_ends_at_ms.saturating_add(millis(start_phase));
    if running_at_ms <= now_ms {
        PowerState::Running
    } else {
        PowerState::Restarting { stop_phase_ends_at_ms, running_at_ms }
    }
}

fn check_capacity(host: &SimulatedHost, ledger: &HostLedger, requested: Resources) -> Result<(), Error> {
    let allocated = ledger.allocated;
    let after = allocated.plus(requested);
    let shortage = if after.vcpu > u64::from(host.cpu) {
        Some(format!("{} of {} vcpu allocated, {} requested", allocated.vcpu, host.cpu, requested.vcpu))
    } else if after.ram_mb > host.ram_mb {
        Some(format!("{} of {} MB ram allocated, {} requested", allocated.ram_mb, host.ram_mb, requested.ram_mb))
    } else if after.disk_gb > host.disk_gb {
        Some(format!("{} of {} GB disk allocated, {} requested", allocated.disk_gb, host.disk_gb, requested.disk_gb))
    } else {
        None
    };
    match shortage {
        Some(shortage) => Err(Error::Conflict(format!("insufficient capacity on host {}: {shortage}", host.id))),
        None => Ok(()),
    }
}

/// What callers see: the power state at `now_ms`; an IP only while the guest is up.
fn instance_view(record: &InstanceRecord, now_ms: u64) -> Instance {
    let state = record.power.observed_at(now_ms);
    let has_address = matches!(state, InstanceState::Running | InstanceState::Stopping | InstanceState::Suspended);
    Instance {
        id: record.id.clone(),
        host: record.host.clone(),
        state,
        ip: has_address.then(|| ip_for(&record.id)),
        mac: Some(record.mac.clone()),
    }
}

fn snapshot_view(snapshot: &SnapshotRecord, list: &SnapshotList) -> Snapshot {
    Snapshot {
        name: snapshot.name.clone(),
        description: snapshot.description.clone(),
        created_at: i64::try_from(snapshot.created_at_ms / 1000).unwrap_or(i64::MAX),
        state: snapshot.power.observed_at(snapshot.created_at_ms),
        current: list.current.as_deref() == Some(snapshot.name.as_str()),
    }
}

fn state_name(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Stopped => "stopped",
        InstanceState::Starting => "starting",
        InstanceState::Running => "running",
        InstanceState::Stopping => "stopping",
        InstanceState::Suspended => "suspended",
        InstanceState::Error => "in error",
    }
}

fn is_restarting(power: PowerState) -> bool {
    matches!(power, PowerState::Restarting { .. })
}

/// What an instance is doing, for messages: its state, or `restarting` during a restart.
fn activity(power: PowerState, observed: InstanceState) -> &'static str {
    match (power, observed) {
        (PowerState::Restarting { .. }, InstanceState::Stopping | InstanceState::Starting) => "restarting",
        _ => state_name(observed),
    }
}

fn instance_not_found(instance_id: &str) -> Error {
    Error::NotFound(format!("instance {instance_id} does not exist"))
}

fn snapshot_exists(instance_id: &str, name: &str) -> Error {
    Error::Conflict(format!("instance {instance_id} already has a snapshot named {name}"))
}

fn snapshot_not_found(instance_id: &str, name: &str) -> Error {
    Error::NotFound(format!("instance {instance_id} has no snapshot named {name}"))
}

fn instance_exists(instance_id: &str) -> Error {
    Error::Conflict(format!("instance {instance_id} already exists"))
}

fn template_not_cached(template: &TemplateRecord, host_id: &str) -> Error {
    Error::Conflict(format!(
        "template {} v{} is not cached on host {host_id}; pull it first",
        template.name, template.version
    ))
}

fn template_in_use(template: &TemplateRecord, host_id: &str) -> Error {
    Error::Conflict(format!("template {} v{} is used by instances on host {host_id}", template.name, template.version))
}

#[cfg(test)]
mod tests;
