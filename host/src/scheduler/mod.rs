//! Placement: which host an instance goes to. Pure (no I/O): fed a snapshot of hosts and the
//! queue of requests, it answers a decision per request and never over-commits a host, also
//! when several requests are placed in one pass.
//!
//! Today's policy is deliberately minimal: an active, non-draining host of the right arch with
//! room for the request, preferring hosts that already cache the template, then the emptiest.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use uuid::Uuid;

use crate::model::{Arch, HostState, Usage};

/// A host as placement sees it.
#[derive(Debug, Clone)]
pub struct HostCandidate {
    pub id: Uuid,
    pub state: HostState,
    pub arch: Arch,
    pub max_instances: Option<u32>,
    pub vcpu_limit: u32,
    pub ram_limit_mb: u64,
    pub disk_limit_gb: u64,
    pub used: Usage,
    /// `(template name, version)` pairs cached on the host.
    pub cached_templates: HashSet<(String, u32)>,
}

/// One instance waiting for a host.
#[derive(Debug, Clone)]
pub struct PlacementRequest {
    pub instance_id: Uuid,
    pub arch: Option<Arch>,
    pub vcpu: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    /// A specific host the user asked for.
    pub host_id: Option<Uuid>,
    pub template: Option<(String, u32)>,
}

/// Why a host was ruled out for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    NotRequestedHost,
    Offline,
    Draining,
    Updating,
    WrongArch,
    Full,
}

impl Rejection {
    pub fn describe(self) -> &'static str {
        match self {
            Rejection::NotRequestedHost => "not the requested host",
            Rejection::Offline => "offline",
            Rejection::Draining => "draining",
            Rejection::Updating => "updating",
            Rejection::WrongArch => "wrong arch",
            Rejection::Full => "full",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub instance_id: Uuid,
    pub host_id: Option<Uuid>,
    /// For an unplaced request: how many hosts each reason ruled out.
    pub rejections: BTreeMap<Rejection, usize>,
}

impl Decision {
    /// One line for users: why nothing fits (empty when placed).
    pub fn explain(&self, host_count: usize) -> String {
        if self.host_id.is_some() {
            return String::new();
        }
        if host_count == 0 {
            return "no hosts are known yet".into();
        }
        let reasons: Vec<String> =
            self.rejections.iter().map(|(reason, count)| format!("{count} {}", reason.describe())).collect();
        format!("no host fits: {host_count} hosts considered, {}", reasons.join(", "))
    }
}

/// Places requests in order, each seeing the capacity the previous ones took.
pub fn place_all(hosts: &mut [HostCandidate], requests: &[PlacementRequest]) -> Vec<Decision> {
    requests.iter().map(|request| place_one(hosts, request)).collect()
}

fn place_one(hosts: &mut [HostCandidate], request: &PlacementRequest) -> Decision {
    let mut rejections = BTreeMap::new();
    let mut best: Option<(usize, (bool, u64))> = None;
    for (index, host) in hosts.iter().enumerate() {
        if let Some(reason) = rule_out(host, request) {
            *rejections.entry(reason).or_insert(0) += 1;
            continue;
        }
        let caches_template =
            request.template.as_ref().is_some_and(|template| host.cached_templates.contains(template));
        let free_ram = host.ram_limit_mb - host.used.ram_mb;
        let preference = (caches_template, free_ram);
        if best.as_ref().is_none_or(|(_, best_preference)| preference > *best_preference) {
            best = Some((index, preference));
        }
    }
    match best {
        Some((index, _)) => {
            let host = &mut hosts[index];
            host.used.instances += 1;
            host.used.vcpu += request.vcpu;
            host.used.ram_mb += request.ram_mb;
            host.used.disk_gb += request.disk_gb;
            Decision { instance_id: request.instance_id, host_id: Some(host.id), rejections: BTreeMap::new() }
        }
        None => Decision { instance_id: request.instance_id, host_id: None, rejections },
    }
}

fn rule_out(host: &HostCandidate, request: &PlacementRequest) -> Option<Rejection> {
    if request.host_id.is_some_and(|wanted| wanted != host.id) {
        return Some(Rejection::NotRequestedHost);
    }
    match host.state {
        HostState::Active => {}
        HostState::Offline => return Some(Rejection::Offline),
        HostState::Draining => return Some(Rejection::Draining),
        HostState::Updating => return Some(Rejection::Updating),
    }
    if request.arch.is_some_and(|arch| arch != host.arch) {
        return Some(Rejection::WrongArch);
    }
    let over_count = host.max_instances.is_some_and(|max| host.used.instances + 1 > max);
    let over_vcpu = host.used.vcpu + request.vcpu > host.vcpu_limit;
    let over_ram = host.used.ram_mb + request.ram_mb > host.ram_limit_mb;
    let over_disk = host.used.disk_gb + request.disk_gb > host.disk_limit_gb;
    if over_count || over_vcpu || over_ram || over_disk {
        return Some(Rejection::Full);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(number: u128, vcpu: u32, ram_mb: u64) -> HostCandidate {
        HostCandidate {
            id: Uuid::from_u128(number),
            state: HostState::Active,
            arch: Arch::Amd64,
            max_instances: None,
            vcpu_limit: vcpu,
            ram_limit_mb: ram_mb,
            disk_limit_gb: 1000,
            used: Usage::default(),
            cached_templates: HashSet::new(),
        }
    }

    fn request(number: u128, vcpu: u32, ram_mb: u64) -> PlacementRequest {
        PlacementRequest {
            instance_id: Uuid::from_u128(1000 + number),
            arch: None,
            vcpu,
            ram_mb,
            disk_gb: 10,
            host_id: None,
            template: None,
        }
    }

    fn placed_on(decisions: &[Decision]) -> Vec<Option<u128>> {
        decisions.iter().map(|decision| decision.host_id.map(|id| id.as_u128())).collect()
    }

    #[test]
    fn several_requests_in_one_pass_never_over_commit() {
        let mut hosts = vec![host(1, 4, 4096), host(2, 4, 4096)];
        let requests: Vec<_> = (0..5).map(|number| request(number, 2, 1024)).collect();
        let decisions = place_all(&mut hosts, &requests);
        assert_eq!(placed_on(&decisions), vec![Some(1), Some(2), Some(1), Some(2), None]);
        assert_eq!(decisions[4].rejections.get(&Rejection::Full), Some(&2));
        assert!(hosts.iter().all(|host| host.used.vcpu <= host.vcpu_limit));
    }

    #[test]
    fn disk_is_a_limit_too() {
        let mut hosts = vec![host(1, 64, 65536)];
        let mut big = request(1, 1, 512);
        big.disk_gb = 600;
        let decisions = place_all(&mut hosts, &[big.clone(), big]);
        assert_eq!(placed_on(&decisions), vec![Some(1), None]);
        assert_eq!(decisions[1].rejections.get(&Rejection::Full), Some(&1));
    }

    #[test]
    fn excluded_hosts_are_counted_by_reason() {
        let mut offline = host(1, 8, 8192);
        offline.state = HostState::Offline;
        let mut draining = host(2, 8, 8192);
        draining.state = HostState::Draining;
        let mut arm = host(3, 8, 8192);
        arm.arch = Arch::Arm64;
        let mut counted = host(4, 8, 8192);
        counted.max_instances = Some(0);
        let mut hosts = vec![offline, draining, arm, counted];
        let mut wanted = request(1, 1, 512);
        wanted.arch = Some(Arch::Amd64);
        let decision = &place_all(&mut hosts, &[wanted])[0];
        assert_eq!(decision.host_id, None);
        let expected: BTreeMap<_, _> =
            [(Rejection::Offline, 1), (Rejection::Draining, 1), (Rejection::WrongArch, 1), (Rejection::Full, 1)].into();
        assert_eq!(decision.rejections, expected);
        assert_eq!(
            decision.explain(4),
            "no host fits: 4 hosts considered, 1 offline, 1 draining, 1 wrong arch, 1 full"
        );
    }

    #[test]
    fn cached_template_wins_over_free_space_and_requested_host_is_honoured() {
        let mut with_template = host(1, 8, 2048);
        with_template.cached_templates.insert(("ubuntu".into(), 1));
        let mut hosts = vec![with_template, host(2, 8, 65536)];
        let mut wants_template = request(1, 1, 512);
        wants_template.template = Some(("ubuntu".into(), 1));
        let mut wants_host_two = request(2, 1, 512);
        wants_host_two.template = Some(("ubuntu".into(), 1));
        wants_host_two.host_id = Some(Uuid::from_u128(2));
        assert_eq!(placed_on(&place_all(&mut hosts, &[wants_template, wants_host_two])), vec![Some(1), Some(2)]);
    }
}
