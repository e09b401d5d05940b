//! Indexes over a fleet snapshot that make a placement cost about `O(log hosts)` when the
//! first candidate fits: hosts ordered by fullness per group, hosts by cached template and
//! by affinity key. Kept up to date as requests take capacity.

use std::collections::{BTreeSet, HashMap, HashSet};

use uuid::Uuid;

use super::{AffinityKind, GroupStrategy, HostCandidate, PlacementRequest, fullness};

/// Fullness of a host that is full by its tightest resource.
const FULL: u64 = 1_000_000;

pub(super) struct FleetIndex {
    /// Per group (`None`: every host), `(fullness, host index)` in order.
    ordered: HashMap<Option<Uuid>, BTreeSet<(u64, usize)>>,
    fullness: Vec<u64>,
    by_template: HashMap<(String, u32), Vec<usize>>,
    by_affinity_key: HashMap<String, HashSet<usize>>,
    by_label: HashMap<(String, String), Vec<usize>>,
}

impl FleetIndex {
    pub(super) fn new(hosts: &[HostCandidate]) -> Self {
        let mut index = FleetIndex {
            ordered: HashMap::new(),
            fullness: hosts.iter().map(fullness).collect(),
            by_template: HashMap::new(),
            by_affinity_key: HashMap::new(),
            by_label: HashMap::new(),
        };
        for (host_index, host) in hosts.iter().enumerate() {
            let key = (index.fullness[host_index], host_index);
            index.ordered.entry(None).or_default().insert(key);
            for group in &host.groups {
                index.ordered.entry(Some(*group)).or_default().insert(key);
            }
            for template in &host.cached_templates {
                index.by_template.entry(template.clone()).or_default().push(host_index);
            }
            for (key, value) in &host.labels {
                index.by_label.entry((key.clone(), value.clone())).or_default().push(host_index);
            }
            for (affinity_key, count) in &host.affinity_keys {
                if *count > 0 {
                    index.by_affinity_key.entry(affinity_key.clone()).or_default().insert(host_index);
                }
            }
        }
        index
    }

    /// Indices of the hosts in `group` (`None`: all).
    pub(super) fn members(&self, group: Option<Uuid>, _host_count: usize) -> impl Iterator<Item = usize> + '_ {
        self.ordered.get(&group).into_iter().flatten().map(|(_, host_index)| *host_index)
    }

    /// The best accepted host of `group` for the request: affinity first, then hosts caching
    /// the template, then by strategy.
    pub(super) fn find(
        &self,
        hosts: &[HostCandidate],
        group: Option<Uuid>,
        strategy: GroupStrategy,
        request: &PlacementRequest,
        accept: impl Fn(usize, &HostCandidate) -> bool,
    ) -> Option<usize> {
        let in_group = |host_index: usize| group.is_none_or(|group| hosts[host_index].groups.contains(&group));
        let usable = |host_index: usize| in_group(host_index) && accept(host_index, &hosts[host_index]);
        let best_of = |candidates: &mut dyn Iterator<Item = usize>| {
            candidates.filter(|host_index| usable(*host_index)).min_by_key(|host_index| {
                let fullness = self.fullness[*host_index];
                let rank = match strategy {
                    GroupStrategy::Spread => fullness,
                    GroupStrategy::Pack => FULL - fullness,
                };
                (rank, *host_index)
            })
        };
        if let Some(affinity) = &request.affinity
            && affinity.kind == AffinityKind::Together
            && let Some(with_key) = self.by_affinity_key.get(&affinity.key)
            && let Some(found) = best_of(&mut with_key.iter().copied())
        {
            return Some(found);
        }
        if let Some(template) = &request.template
            && let Some(caching) = self.by_template.get(template)
            && let Some(found) = best_of(&mut caching.iter().copied())
        {
            return Some(found);
        }
        // A `key=value` constraint: only hosts with that label can do.
        if let Some(required) = request.labels.iter().find(|label| !label.negated) {
            let labelled = self.by_label.get(&(required.key.clone(), required.value.clone()))?;
            return best_of(&mut labelled.iter().copied());
        }
        let ordered = self.ordered.get(&group)?;
        match strategy {
            GroupStrategy::Spread => {
                ordered.iter().map(|(_, host_index)| *host_index).find(|host_index| usable(*host_index))
            }
            GroupStrategy::Pack => ordered
                .range(..(FULL, 0))
                .rev()
                .map(|(_, host_index)| *host_index)
                .find(|host_index| usable(*host_index)),
        }
    }

    /// Records that `request` takes its share of host `host_index`.
    pub(super) fn take(&mut self, hosts: &mut [HostCandidate], host_index: usize, request: &PlacementRequest) {
        let host = &mut hosts[host_index];
        host.used.instances += 1;
        host.used.vcpu += request.vcpu;
        host.used.ram_mb += request.ram_mb;
        host.used.disk_gb += request.disk_gb;
        if let Some(device) = &request.usb_device
            && let Some(free) = host.usb_free.get_mut(device)
        {
            *free = free.saturating_sub(1);
        }
        if let Some(affinity) = &request.affinity {
            *host.affinity_keys.entry(affinity.key.clone()).or_insert(0) += 1;
            self.by_affinity_key.entry(affinity.key.clone()).or_default().insert(host_index);
        }
        let (before, after) = (self.fullness[host_index], fullness(host));
        if before != after {
            for group in std::iter::once(None).chain(host.groups.iter().copied().map(Some)) {
                if let Some(ordered) = self.ordered.get_mut(&group) {
                    ordered.remove(&(before, host_index));
                    ordered.insert((after, host_index));
                }
            }
            self.fullness[host_index] = after;
        }
    }
}
