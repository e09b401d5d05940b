//! Scheduler core benchmark (`cargo bench --bench scheduler`): placements per second on a
//! fleet of 10,000 hosts already running 100,000 instances. Prints figures; asserts nothing.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use hyperplane::model::{Arch, HostState, Labels, Usage};
use hyperplane::scheduler::{
    CapacityMode, GroupPolicy, GroupStrategy, HostCandidate, LabelConstraint, PlacementRequest, place_all,
};
use uuid::Uuid;

const HOSTS: usize = 10_000;
const RUNNING_PER_HOST: u32 = 10;

fn fleet(groups: &[Uuid]) -> Vec<HostCandidate> {
    (0..HOSTS)
        .map(|index| HostCandidate {
            id: Uuid::from_u128(index as u128 + 1),
            state: if index % 50 == 0 { HostState::Draining } else { HostState::Active },
            maintenance: false,
            arch: if index % 10 == 0 { Arch::Arm64 } else { Arch::Amd64 },
            labels: Labels::from([("rack".to_owned(), format!("r{}", index % 40))]),
            groups: vec![groups[index % groups.len()]],
            capacity_mode: CapacityMode::Resource,
            max_instances: None,
            vcpu_limit: 64,
            ram_limit_mb: 256 * 1024,
            disk_limit_gb: 10_000,
            used: Usage {
                instances: RUNNING_PER_HOST,
                running: RUNNING_PER_HOST,
                vcpu: RUNNING_PER_HOST * 2,
                ram_mb: u64::from(RUNNING_PER_HOST) * 4096,
                disk_gb: u64::from(RUNNING_PER_HOST) * 20,
            },
            cached_templates: HashSet::from([(format!("template-{}", index % 20), 1)]),
            usb_free: HashMap::new(),
            affinity_keys: HashMap::new(),
        })
        .collect()
}

fn requests(count: usize, shape: impl Fn(usize, &mut PlacementRequest)) -> Vec<PlacementRequest> {
    (0..count)
        .map(|index| {
            let mut request = PlacementRequest {
                instance_id: Uuid::from_u128(1_000_000 + index as u128),
                priority: 1000,
                arch: Some(Arch::Amd64),
                vcpu: 2,
                ram_mb: 4096,
                disk_gb: 20,
                host_id: None,
                group_id: None,
                labels: Vec::new(),
                usb_device: None,
                affinity: None,
                template: None,
            };
            shape(index, &mut request);
            request
        })
        .collect()
}

fn measure(name: &str, groups: &HashMap<Uuid, GroupPolicy>, group_ids: &[Uuid], batch: &[PlacementRequest]) {
    let mut hosts = fleet(group_ids);
    let started = Instant::now();
    let decisions = place_all(&mut hosts, groups, batch);
    let elapsed = started.elapsed();
    let placed = decisions.iter().filter(|decision| decision.host_id.is_some()).count();
    println!(
        "{name:<44} {placed:>6} placed of {:>6} in {:>8.1} ms = {:>9.0} placements/s",
        batch.len(),
        elapsed.as_secs_f64() * 1e3,
        batch.len() as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    let group_ids: Vec<Uuid> = (0..10).map(|index| Uuid::from_u128(900_000 + index)).collect();
    let spread: HashMap<Uuid, GroupPolicy> = group_ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let fallback = group_ids.get(index + 1).copied();
            (*id, GroupPolicy { fallback, strategy: GroupStrategy::Spread })
        })
        .collect();
    let pack: HashMap<Uuid, GroupPolicy> =
        spread.iter().map(|(id, policy)| (*id, GroupPolicy { strategy: GroupStrategy::Pack, ..*policy })).collect();
    let batch = 20_000;
    println!(
        "fleet: {HOSTS} hosts, {} running instances; one pass places each batch",
        HOSTS * RUNNING_PER_HOST as usize
    );
    measure("any host, spread", &spread, &group_ids, &requests(batch, |_, _| {}));
    measure(
        "group + fallback, spread",
        &spread,
        &group_ids,
        &requests(batch, |index, request| {
            request.group_id = Some(group_ids[index % group_ids.len()]);
        }),
    );
    measure(
        "group + fallback, pack",
        &pack,
        &group_ids,
        &requests(batch, |index, request| {
            request.group_id = Some(group_ids[index % group_ids.len()]);
        }),
    );
    measure(
        "cached template preferred",
        &spread,
        &group_ids,
        &requests(batch, |index, request| {
            request.template = Some((format!("template-{}", index % 20), 1));
        }),
    );
    measure(
        "label constraint rack=r7",
        &spread,
        &group_ids,
        &requests(batch, |_, request| {
            request.labels = vec![LabelConstraint::parse("rack=r7").unwrap_or_else(|error| panic!("{error}"))];
        }),
    );
    measure(
        "mixed priorities",
        &spread,
        &group_ids,
        &requests(batch, |index, request| {
            request.priority = 1 + (index as u32 * 7919) % 10_000;
        }),
    );
}
