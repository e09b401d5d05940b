//! Placement: which host an instance goes to. Pure (no I/O): fed a snapshot of hosts, groups
//! and the queue of requests, it answers a decision per request. It never over-commits a
//! host, also when many requests are placed in one pass, and it can explain every refusal.
//!
//! - Constraints: requested host, group (then its fallback chain), host state and maintenance,
//!   arch, labels (`key=value`, `key!=value`), a free USB device, anti-affinity, capacity
//!   (instance count in `number` mode; vCPU and RAM in `resource` mode; disk always).
//! - Preferences, in order: affinity with instances of the same key, hosts that cache the
//!   template, then the group's strategy (`pack` fills hosts, `spread` balances them).
//! - Queue: requests are taken in priority order (lower is more urgent), FIFO within one. A
//!   request that does not fit reserves the hosts it could use, so no lower-priority or later
//!   request takes capacity it is waiting for: nothing starves behind a lesser request.

mod index;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use uuid::Uuid;

use crate::model::{Arch, HostState, Labels, Usage};
pub use crate::model::{CapacityMode, GroupStrategy};
use index::FleetIndex;

/// A host as placement sees it.
#[derive(Debug, Clone)]
pub struct HostCandidate {
    pub id: Uuid,
    pub state: HostState,
    /// Operator's maintenance flag: takes nothing new.
    pub maintenance: bool,
    pub arch: Arch,
    pub labels: Labels,
    pub groups: Vec<Uuid>,
    pub capacity_mode: CapacityMode,
    pub max_instances: Option<u32>,
    pub vcpu_limit: u32,
    pub ram_limit_mb: u64,
    pub disk_limit_gb: u64,
    pub used: Usage,
    /// `(template name, version)` pairs cached on the host.
    pub cached_templates: HashSet<(String, u32)>,
    /// Free devices per USB device group.
    pub usb_free: HashMap<String, u32>,
    /// Instances on the host per affinity key.
    pub affinity_keys: HashMap<String, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPolicy {
    pub fallback: Option<Uuid>,
    pub strategy: GroupStrategy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelConstraint {
    pub key: String,
    pub value: String,
    /// `key!=value` instead of `key=value`.
    pub negated: bool,
}

impl LabelConstraint {
    /// Parses `key=value` or `key!=value`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, value, negated) = match text.split_once("!=") {
            Some((key, value)) => (key, value, true),
            None => match text.split_once('=') {
                Some((key, value)) => (key, value, false),
                None => return Err(format!("label constraint '{text}' is not key=value or key!=value")),
            },
        };
        if key.trim().is_empty() {
            return Err(format!("label constraint '{text}' has no key"));
        }
        Ok(LabelConstraint { key: key.trim().into(), value: value.trim().into(), negated })
    }

    fn matches(&self, labels: &Labels) -> bool {
        let equal = labels.get(&self.key).is_some_and(|value| value == &self.value);
        equal != self.negated
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum AffinityKind {
    /// Prefer hosts with instances of the same key.
    Together,
    /// Never on a host with an instance of the same key.
    Apart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    pub key: String,
    pub kind: AffinityKind,
}

/// One instance waiting for a host.
#[derive(Debug, Clone)]
pub struct PlacementRequest {
    pub instance_id: Uuid,
    /// 1-10000, lower is more urgent.
    pub priority: u32,
    pub arch: Option<Arch>,
    pub vcpu: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    /// A specific host the user asked for.
    pub host_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
    pub labels: Vec<LabelConstraint>,
    pub usb_device: Option<String>,
    pub affinity: Option<Affinity>,
    pub template: Option<(String, u32)>,
}

/// Why a host was ruled out for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    NotRequestedHost,
    NotInGroup,
    Offline,
    Draining,
    Unhealthy,
    Updating,
    Maintenance,
    WrongArch,
    LabelMismatch,
    MissingUsbDevice,
    AntiAffinity,
    /// Fits, but held for a more urgent (or earlier) request that is waiting for it.
    Reserved,
    Full,
}

impl Rejection {
    pub fn describe(self) -> &'static str {
        match self {
            Rejection::NotRequestedHost => "not the requested host",
            Rejection::NotInGroup => "not in the group",
            Rejection::Offline => "offline",
            Rejection::Draining => "draining",
            Rejection::Unhealthy => "unhealthy",
            Rejection::Updating => "updating",
            Rejection::Maintenance => "in maintenance",
            Rejection::WrongArch => "wrong arch",
            Rejection::LabelMismatch => "label mismatch",
            Rejection::MissingUsbDevice => "missing USB device",
            Rejection::AntiAffinity => "anti-affinity",
            Rejection::Reserved => "reserved for a more urgent request",
            Rejection::Full => "full",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub instance_id: Uuid,
    pub host_id: Option<Uuid>,
    /// The group it was placed through (the requested one or a fallback).
    pub group_id: Option<Uuid>,
    /// For an unplaced request: how many hosts each reason ruled out, in the last group tried.
    pub rejections: BTreeMap<Rejection, usize>,
}

impl Decision {
    /// One line for users: why nothing fits (empty when placed).
    pub fn explain(&self) -> String {
        if self.host_id.is_some() {
            return String::new();
        }
        let considered: usize = self.rejections.values().sum();
        if considered == 0 {
            return "no hosts are known yet".into();
        }
        let reasons: Vec<String> =
            self.rejections.iter().map(|(reason, count)| format!("{count} {}", reason.describe())).collect();
        format!("no host fits: {considered} hosts considered, {}", reasons.join(", "))
    }
}

/// Places requests in priority order (stable: FIFO within a priority), each seeing the capacity
/// the previous ones took. Decisions come back in the order of `requests`.
pub fn place_all(
    hosts: &mut [HostCandidate],
    groups: &HashMap<Uuid, GroupPolicy>,
    requests: &[PlacementRequest],
) -> Vec<Decision> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&index| requests[index].priority);
    let mut index = FleetIndex::new(hosts);
    let mut reserved: HashSet<usize> = HashSet::new();
    // Within a pass hosts only fill up, so a shape of request that found no host finds none
    // later either: remember why, and skip the search.
    let mut failed_shapes: HashMap<RequestShape, BTreeMap<Rejection, usize>> = HashMap::new();
    let mut decisions: Vec<Option<Decision>> = vec![None; requests.len()];
    for request_index in order {
        let request = &requests[request_index];
        let shape = RequestShape::of(request);
        let decision = match failed_shapes.get(&shape) {
            Some(rejections) => Decision {
                instance_id: request.instance_id,
                host_id: None,
                group_id: None,
                rejections: rejections.clone(),
            },
            None => {
                let decision = place_one(hosts, &mut index, groups, request, &mut reserved);
                if decision.host_id.is_none() {
                    failed_shapes.insert(shape, decision.rejections.clone());
                }
                decision
            }
        };
        decisions[request_index] = Some(decision);
    }
    decisions.into_iter().flatten().collect()
}

/// Everything about a request that decides where it can go.
#[derive(PartialEq, Eq, Hash)]
struct RequestShape {
    arch: Option<Arch>,
    resources: (u32, u64, u64),
    host_id: Option<Uuid>,
    group_id: Option<Uuid>,
    labels: Vec<(String, String, bool)>,
    usb_device: Option<String>,
    affinity: Option<(String, AffinityKind)>,
}

impl RequestShape {
    fn of(request: &PlacementRequest) -> Self {
        RequestShape {
            arch: request.arch,
            resources: (request.vcpu, request.ram_mb, request.disk_gb),
            host_id: request.host_id,
            group_id: request.group_id,
            labels: request
                .labels
                .iter()
                .map(|label| (label.key.clone(), label.value.clone(), label.negated))
                .collect(),
            usb_device: request.usb_device.clone(),
            affinity: request.affinity.as_ref().map(|affinity| (affinity.key.clone(), affinity.kind)),
        }
    }
}

/// Tries the request's group, then each fallback (stopping at a cycle), or every host.
fn place_one(
    hosts: &mut [HostCandidate],
    index: &mut FleetIndex,
    groups: &HashMap<Uuid, GroupPolicy>,
    request: &PlacementRequest,
    reserved: &mut HashSet<usize>,
) -> Decision {
    let chain = group_chain(groups, request.group_id);
    let mut rejections = BTreeMap::new();
    for group in &chain {
        let strategy = group.and_then(|group| groups.get(&group)).map(|policy| policy.strategy).unwrap_or_default();
        if let Some(host_index) = index.find(hosts, *group, strategy, request, |host_index, host| {
            !reserved.contains(&host_index) && rule_out(host, request).is_none()
        }) {
            index.take(hosts, host_index, request);
            return Decision {
                instance_id: request.instance_id,
                host_id: Some(hosts[host_index].id),
                group_id: *group,
                rejections: BTreeMap::new(),
            };
        }
        rejections = explain_group(hosts, index, *group, request, reserved);
    }
    // Nothing fits: hold every host this request could use once it frees up.
    for group in &chain {
        for host_index in index.members(*group, hosts.len()) {
            if rule_out_except_capacity(&hosts[host_index], request).is_none() {
                reserved.insert(host_index);
            }
        }
    }
    Decision { instance_id: request.instance_id, host_id: None, group_id: None, rejections }
}

/// The request's group and its fallbacks, without repeating one (a cycle ends the chain).
/// `[None]` means "any host".
fn group_chain(groups: &HashMap<Uuid, GroupPolicy>, start: Option<Uuid>) -> Vec<Option<Uuid>> {
    let Some(start) = start else { return vec![None] };
    let mut chain = vec![Some(start)];
    let mut current = start;
    while let Some(next) = groups.get(&current).and_then(|policy| policy.fallback) {
        if chain.contains(&Some(next)) {
            break;
        }
        chain.push(Some(next));
        current = next;
    }
    chain
}

/// Whether setting `group`'s fallback to `fallback` would make a cycle.
pub fn creates_cycle(groups: &HashMap<Uuid, GroupPolicy>, group: Uuid, fallback: Uuid) -> bool {
    let mut seen = HashSet::from([group]);
    let mut current = Some(fallback);
    while let Some(next) = current {
        if !seen.insert(next) {
            return true;
        }
        current = groups.get(&next).and_then(|policy| policy.fallback);
    }
    false
}

fn explain_group(
    hosts: &[HostCandidate],
    index: &FleetIndex,
    group: Option<Uuid>,
    request: &PlacementRequest,
    reserved: &HashSet<usize>,
) -> BTreeMap<Rejection, usize> {
    let mut rejections = BTreeMap::new();
    let members: HashSet<usize> = index.members(group, hosts.len()).collect();
    for (host_index, host) in hosts.iter().enumerate() {
        let reason = if !members.contains(&host_index) {
            Rejection::NotInGroup
        } else if let Some(reason) = rule_out(host, request) {
            reason
        } else if reserved.contains(&host_index) {
            Rejection::Reserved
        } else {
            continue;
        };
        *rejections.entry(reason).or_insert(0) += 1;
    }
    rejections
}

/// The first constraint that rules the host out, capacity included.
fn rule_out(host: &HostCandidate, request: &PlacementRequest) -> Option<Rejection> {
    rule_out_except_capacity(host, request).or_else(|| (!fits(host, request)).then_some(Rejection::Full))
}

fn rule_out_except_capacity(host: &HostCandidate, request: &PlacementRequest) -> Option<Rejection> {
    if request.host_id.is_some_and(|wanted| wanted != host.id) {
        return Some(Rejection::NotRequestedHost);
    }
    match host.state {
        HostState::Active => {}
        HostState::Offline => return Some(Rejection::Offline),
        HostState::Draining => return Some(Rejection::Draining),
        HostState::Updating => return Some(Rejection::Updating),
        HostState::Unhealthy => return Some(Rejection::Unhealthy),
    }
    if host.maintenance {
        return Some(Rejection::Maintenance);
    }
    if request.arch.is_some_and(|arch| arch != host.arch) {
        return Some(Rejection::WrongArch);
    }
    if !request.labels.iter().all(|constraint| constraint.matches(&host.labels)) {
        return Some(Rejection::LabelMismatch);
    }
    if let Some(device) = &request.usb_device
        && host.usb_free.get(device).copied().unwrap_or(0) == 0
    {
        return Some(Rejection::MissingUsbDevice);
    }
    if let Some(Affinity { key, kind: AffinityKind::Apart }) = &request.affinity
        && host.affinity_keys.get(key).copied().unwrap_or(0) > 0
    {
        return Some(Rejection::AntiAffinity);
    }
    None
}

fn fits(host: &HostCandidate, request: &PlacementRequest) -> bool {
    let disk = host.used.disk_gb + request.disk_gb <= host.disk_limit_gb;
    let count = host.max_instances.is_none_or(|max| host.used.instances < max);
    match host.capacity_mode {
        CapacityMode::Number => disk && count,
        CapacityMode::Resource => {
            disk && count
                && host.used.vcpu + request.vcpu <= host.vcpu_limit
                && host.used.ram_mb + request.ram_mb <= host.ram_limit_mb
        }
    }
}

/// How full a host is, from 0 (empty) to 1_000_000 (full), by its tightest resource.
fn fullness(host: &HostCandidate) -> u64 {
    let ratio = |used: u64, limit: u64| if limit == 0 { 1.0 } else { used as f64 / limit as f64 };
    let mut fullest = ratio(host.used.disk_gb, host.disk_limit_gb);
    if let Some(max) = host.max_instances {
        fullest = fullest.max(ratio(u64::from(host.used.instances), u64::from(max)));
    }
    if host.capacity_mode == CapacityMode::Resource {
        fullest = fullest
            .max(ratio(u64::from(host.used.vcpu), u64::from(host.vcpu_limit)))
            .max(ratio(host.used.ram_mb, host.ram_limit_mb));
    }
    (fullest.clamp(0.0, 1.0) * 1_000_000.0) as u64
}

#[cfg(test)]
mod tests;
