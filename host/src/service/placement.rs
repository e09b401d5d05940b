//! The placement pass: gives hosts to instances waiting in `scheduling`, in priority order,
//! in one write transaction so that concurrent requests can never over-commit a host. The
//! decisions themselves come from the pure `scheduler`; this module builds its snapshot and
//! also answers "why is this instance not placed" and "where would this request go".

use crate::auth::Caller;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::distribution::template_ref;
use super::lifecycle::{change_state, is_cached_on};
use super::{CreateInstances, Service, ServiceError, ServiceResult};
use crate::model::{Host, HostState, Instance, InstanceState, NewEvent, Template};
use crate::scheduler::{
    self, Affinity, AffinityKind, Decision, GroupPolicy, HostCandidate, LabelConstraint, PlacementRequest,
};
use crate::store;
use crate::store::instances::{Column, InstanceFilter};

/// Why an instance waits, or where a request would go.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlacementExplanation {
    /// The host it was (or would be) placed on.
    pub host_id: Option<Uuid>,
    /// The group it was (or would be) placed through: its own or a fallback.
    pub group_id: Option<Uuid>,
    /// For a request that fits nowhere: hosts ruled out, by reason.
    pub ruled_out: HashMap<String, usize>,
    /// One line for people.
    pub summary: String,
    /// Position in the queue of waiting requests (0 is next), for a waiting instance.
    pub queue_position: Option<usize>,
    pub queue_length: usize,
}

/// What a placement pass did: instances placed, and left waiting for capacity.
struct PlacementPass {
    placed: usize,
    left_waiting: usize,
}

/// A picture of the fleet and the queue: consistent when placing (read in the transaction that
/// writes the placements).
struct Snapshot {
    hosts: Vec<Host>,
    candidates: Vec<HostCandidate>,
    groups: HashMap<Uuid, GroupPolicy>,
    waiting: Vec<Instance>,
    templates: HashMap<Uuid, Template>,
}

impl Service {
    /// A placement pass, when one is wanted (see `Inner::placement_wanted`); answers whether
    /// it placed an instance (whose creation task can then start).
    pub(super) async fn place_waiting_instances(&self) -> ServiceResult<bool> {
        if !self.inner.placement_wanted.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let pass = self.place_all_waiting().await;
        if !matches!(pass, Ok(PlacementPass { left_waiting: 0, .. })) {
            self.inner.placement_wanted.store(true, Ordering::Release);
        }
        pass.map(|pass| pass.placed > 0)
    }

    /// Asks for a placement pass before the next dispatch.
    pub(super) fn want_placement(&self) {
        self.inner.placement_wanted.store(true, Ordering::Release);
    }

    /// Places what it can, in one write transaction: the fleet read, the decisions and their
    /// writes inline on the writer (see `Store::transact`).
    async fn place_all_waiting(&self) -> ServiceResult<PlacementPass> {
        let filter = waiting_for_a_host();
        let first = InstanceFilter { limit: Some(1), ..filter.clone() };
        if store::instances::list_inline(self.store(), &first)?.is_empty() {
            return Ok(PlacementPass { placed: 0, left_waiting: 0 });
        }
        let loaded = self.loaded_providers();
        let pass = self.store().transact(move |connection, writes| {
            let fleet = store::fleet::read(connection, &filter)?;
            Ok(place(snapshot(fleet, &loaded), writes))
        });
        Ok(pass.await?)
    }

    /// Why a waiting instance is not placed yet (or where it went).
    pub async fn explain_placement(&self, caller: &Caller, instance_id: Uuid) -> ServiceResult<PlacementExplanation> {
        let instance = self.get_instance(caller, instance_id).await?;
        let mut snapshot = self.read_snapshot().await?;
        let templates = &snapshot.templates;
        let queue_length = snapshot.waiting.len();
        let Some(position) = queue_order(&snapshot.waiting).iter().position(|waiting| waiting.id == instance_id) else {
            let summary = match instance.host_id {
                Some(host) => format!("placed on host {host}"),
                None => format!("not waiting for a host: the instance is {}", instance.state),
            };
            return Ok(PlacementExplanation {
                host_id: instance.host_id,
                group_id: None,
                ruled_out: HashMap::new(),
                summary,
                queue_position: None,
                queue_length,
            });
        };
        let requests: Vec<PlacementRequest> =
            snapshot.waiting.iter().map(|instance| placement_request(instance, templates)).collect();
        let decisions = scheduler::place_all(&mut snapshot.candidates, &snapshot.groups, &requests);
        let decision = decisions
            .into_iter()
            .find(|decision| decision.instance_id == instance_id)
            .ok_or_else(|| ServiceError::Internal("the placement pass lost an instance".into()))?;
        Ok(explanation(decision, Some(position), queue_length))
    }

    /// Where a request would go now, behind the queue of waiting ones, without creating anything.
    pub async fn plan_placement(
        &self,
        caller: &Caller,
        request: CreateInstances,
    ) -> ServiceResult<PlacementExplanation> {
        let accepted = self.accept(caller, &request).await?;
        let probe = accepted.instance(&request, Uuid::now_v7(), "plan".into(), store::now());
        let mut snapshot = self.read_snapshot().await?;
        let templates = &snapshot.templates;
        let queue_length = snapshot.waiting.len();
        let mut requests: Vec<PlacementRequest> =
            snapshot.waiting.iter().map(|instance| placement_request(instance, templates)).collect();
        requests.push(placement_request(&probe, templates));
        let decisions = scheduler::place_all(&mut snapshot.candidates, &snapshot.groups, &requests);
        let decision = decisions
            .into_iter()
            .find(|decision| decision.instance_id == probe.id)
            .ok_or_else(|| ServiceError::Internal("the placement pass lost the request".into()))?;
        Ok(explanation(decision, None, queue_length))
    }

    /// A [`Snapshot`] read outside a transaction, to explain placement without placing.
    async fn read_snapshot(&self) -> ServiceResult<Snapshot> {
        let fleet = self.store().read_blocking(|connection| store::fleet::read(connection, &waiting_for_a_host()));
        let fleet = fleet.await?;
        Ok(snapshot(fleet, &self.loaded_providers()))
    }

    /// The providers whose plugins are loaded: their hosts can take instances.
    fn loaded_providers(&self) -> Vec<String> {
        self.providers().loaded().map(|(name, _)| name.to_owned()).collect()
    }
}

/// Decides where the waiting instances of `snapshot` go, and defers the writes of the
/// decisions to `writes`: the placed instances (`starting` at once on a host that holds their
/// template) with their events, the reason why each other one waits.
fn place(mut snapshot: Snapshot, writes: &mut store::PendingWrites) -> PlacementPass {
    let templates = &snapshot.templates;
    let requests: Vec<PlacementRequest> =
        snapshot.waiting.iter().map(|instance| placement_request(instance, templates)).collect();
    let decisions = scheduler::place_all(&mut snapshot.candidates, &snapshot.groups, &requests);
    let mut pass = PlacementPass { placed: 0, left_waiting: 0 };
    for (mut instance, decision) in snapshot.waiting.into_iter().zip(decisions) {
        match decision.host_id.and_then(|host_id| snapshot.hosts.iter().find(|host| host.id == host_id)) {
            Some(host) => {
                pass.placed += 1;
                instance.host_id = Some(host.id);
                instance.provider = Some(host.provider.clone());
                instance.updated_at = store::now();
                let placed = NewEvent::new("instance.placed", "instance", instance.id).data(json!({
                    "host_id": host.id, "host": host.name, "provider": host.provider, "group_id": decision.group_id,
                }));
                // On a host that holds its template, nothing comes before the start: the
                // instance is `starting` from here (its task would say so first thing).
                let starting = starts_at_once(&instance, host, templates)
                    .then(|| change_state(&mut instance, InstanceState::Starting, json!({ "host": host.name })));
                store::instances::defer_update(writes, &instance, &[Column::HostId, Column::Provider, Column::State]);
                writes.append_event(placed);
                if let Some(starting) = starting {
                    writes.append_event(starting);
                }
            }
            None => {
                pass.left_waiting += 1;
                let message = format!("waiting for capacity: {}", decision.explain());
                store::tasks::defer_pending_create_message(writes, instance.id, message);
            }
        }
    }
    pass
}

fn snapshot(fleet: store::fleet::Fleet, loaded: &[String]) -> Snapshot {
    let store::fleet::Fleet { waiting, hosts, groups, affinity_keys: mut affinity, templates } = fleet;
    let groups = groups
        .into_iter()
        .map(|group| (group.id, GroupPolicy { fallback: group.fallback_group_id, strategy: group.strategy }))
        .collect();
    let candidates = hosts
        .iter()
        .map(|host| HostCandidate {
            id: host.id,
            state: if loaded.contains(&host.provider) { host.state } else { HostState::Offline },
            maintenance: host.maintenance,
            arch: host.arch,
            labels: host.labels.clone(),
            groups: host.groups.clone(),
            capacity_mode: host.capacity.mode,
            max_instances: host.capacity.max_instances,
            vcpu_limit: host.vcpu_limit(),
            ram_limit_mb: host.ram_limit_mb(),
            disk_limit_gb: host.disk_gb,
            used: host.usage.clone(),
            cached_templates: host
                .cached_templates
                .iter()
                .map(|template| (template.name.clone(), template.version))
                .collect(),
            usb_free: host.usb_devices.iter().map(|(name, group)| (name.clone(), group.available)).collect(),
            affinity_keys: affinity.remove(&host.id).unwrap_or_default(),
        })
        .collect();
    let templates = templates.into_iter().map(|template| (template.id, template)).collect();
    Snapshot { hosts, candidates, groups, waiting, templates }
}

/// The instances placement places: waiting for a host.
fn waiting_for_a_host() -> InstanceFilter {
    InstanceFilter { states: vec![InstanceState::Scheduling], unplaced: true, ..Default::default() }
}

/// Whether `instance` can start on `host` at once: it has no template, or the host's last
/// report lists its template version.
fn starts_at_once(instance: &Instance, host: &Host, templates: &HashMap<Uuid, Template>) -> bool {
    let Some(template_id) = instance.template_id else { return true };
    templates.get(&template_id).is_some_and(|template| {
        let version = template.versions.iter().find(|version| Some(version.number) == instance.template_version);
        is_cached_on(host, &template_ref(template, version))
    })
}

fn placement_request(instance: &Instance, templates: &HashMap<Uuid, Template>) -> PlacementRequest {
    let template = instance.template_id.and_then(|id| templates.get(&id));
    let constraints = &instance.placement;
    let affinity = match (&constraints.affinity_key, &constraints.anti_affinity_key) {
        (Some(key), _) => Some(Affinity { key: key.clone(), kind: AffinityKind::Together }),
        (None, Some(key)) => Some(Affinity { key: key.clone(), kind: AffinityKind::Apart }),
        (None, None) => None,
    };
    PlacementRequest {
        instance_id: instance.id,
        priority: instance.priority,
        arch: template.map(|template| template.arch),
        vcpu: instance.vcpu,
        ram_mb: instance.ram_mb,
        disk_gb: instance.disk_gb,
        host_id: instance.requested_host_id,
        group_id: constraints.group_id,
        // Validated when the request was accepted.
        labels: constraints.host_labels.iter().filter_map(|label| LabelConstraint::parse(label).ok()).collect(),
        usb_device: constraints.usb_device.clone(),
        affinity,
        template: template.map(|template| (template.name.clone(), instance.template_version.unwrap_or(0))),
    }
}

/// The queue as placement takes it: priority, then age (ids are time-ordered).
fn queue_order(waiting: &[Instance]) -> Vec<&Instance> {
    let mut queue: Vec<&Instance> = waiting.iter().collect();
    queue.sort_by_key(|instance| (instance.priority, instance.id));
    queue
}

fn explanation(decision: Decision, queue_position: Option<usize>, queue_length: usize) -> PlacementExplanation {
    let summary = match decision.host_id {
        Some(host) => format!("fits on host {host}"),
        None => decision.explain(),
    };
    PlacementExplanation {
        host_id: decision.host_id,
        group_id: decision.group_id,
        ruled_out: decision
            .rejections
            .iter()
            .map(|(reason, count)| {
                let name = serde_json::to_value(reason).ok().and_then(|value| value.as_str().map(str::to_owned));
                (name.unwrap_or_else(|| format!("{reason:?}")), *count)
            })
            .collect(),
        summary,
        queue_position,
        queue_length,
    }
}
