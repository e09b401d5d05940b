//! Table-driven tests of every constraint and preference, the queue rules, fallback chains,
//! and property tests over random fleets.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use uuid::Uuid;

use super::*;

fn host(number: u128) -> HostCandidate {
    HostCandidate {
        id: Uuid::from_u128(number),
        state: HostState::Active,
        maintenance: false,
        arch: Arch::Amd64,
        labels: Labels::new(),
        groups: Vec::new(),
        capacity_mode: CapacityMode::Resource,
        max_instances: None,
        vcpu_limit: 8,
        ram_limit_mb: 8192,
        disk_limit_gb: 1000,
        used: Usage::default(),
        cached_templates: HashSet::new(),
        usb_free: HashMap::new(),
        affinity_keys: HashMap::new(),
    }
}

fn request(number: u128) -> PlacementRequest {
    PlacementRequest {
        instance_id: Uuid::from_u128(1000 + number),
        priority: 1000,
        arch: None,
        vcpu: 1,
        ram_mb: 512,
        disk_gb: 10,
        host_id: None,
        group_id: None,
        labels: Vec::new(),
        usb_device: None,
        affinity: None,
        template: None,
    }
}

fn placed_on(decisions: &[Decision]) -> Vec<Option<u128>> {
    decisions.iter().map(|decision| decision.host_id.map(|id| id.as_u128())).collect()
}

/// One host that the request must not get, and the reason it must give.
fn check_rejected(
    change_host: impl Fn(&mut HostCandidate),
    change_request: impl Fn(&mut PlacementRequest),
    reason: Rejection,
) {
    let mut ruled_out = host(1);
    change_host(&mut ruled_out);
    let mut wanted = request(1);
    change_request(&mut wanted);
    let decisions = place_all(&mut [ruled_out], &HashMap::new(), &[wanted]);
    assert_eq!(decisions[0].host_id, None, "{reason:?}");
    assert_eq!(decisions[0].rejections, BTreeMap::from([(reason, 1)]), "{reason:?}");
}

#[test]
fn every_constraint_rules_out_with_its_own_reason() {
    check_rejected(|_| {}, |request| request.host_id = Some(Uuid::from_u128(99)), Rejection::NotRequestedHost);
    check_rejected(|host| host.state = HostState::Offline, |_| {}, Rejection::Offline);
    check_rejected(|host| host.state = HostState::Draining, |_| {}, Rejection::Draining);
    check_rejected(|host| host.state = HostState::Updating, |_| {}, Rejection::Updating);
    check_rejected(|host| host.state = HostState::Unhealthy, |_| {}, Rejection::Unhealthy);
    check_rejected(|host| host.maintenance = true, |_| {}, Rejection::Maintenance);
    check_rejected(|host| host.arch = Arch::Arm64, |request| request.arch = Some(Arch::Amd64), Rejection::WrongArch);
    check_rejected(
        |host| {
            host.labels.insert("os".into(), "linux".into());
        },
        |request| request.labels = vec![LabelConstraint::parse("os=macos").expect("valid")],
        Rejection::LabelMismatch,
    );
    check_rejected(
        |host| {
            host.labels.insert("pool".into(), "slow".into());
        },
        |request| request.labels = vec![LabelConstraint::parse("pool!=slow").expect("valid")],
        Rejection::LabelMismatch,
    );
    check_rejected(|_| {}, |request| request.usb_device = Some("iphone".into()), Rejection::MissingUsbDevice);
    check_rejected(
        |host| {
            host.usb_free.insert("iphone".into(), 0);
        },
        |request| request.usb_device = Some("iphone".into()),
        Rejection::MissingUsbDevice,
    );
    check_rejected(
        |host| {
            host.affinity_keys.insert("job-7".into(), 1);
        },
        |request| request.affinity = Some(Affinity { key: "job-7".into(), kind: AffinityKind::Apart }),
        Rejection::AntiAffinity,
    );
    check_rejected(|_| {}, |request| request.vcpu = 9, Rejection::Full);
    check_rejected(|_| {}, |request| request.ram_mb = 9000, Rejection::Full);
    check_rejected(|_| {}, |request| request.disk_gb = 1001, Rejection::Full);
    check_rejected(|host| host.max_instances = Some(0), |_| {}, Rejection::Full);
    check_rejected(
        |host| {
            host.capacity_mode = CapacityMode::Number;
            host.max_instances = Some(2);
            host.used.instances = 2;
        },
        |_| {},
        Rejection::Full,
    );
}

#[test]
fn constraints_that_hold_let_the_request_through() {
    let mut labelled = host(1);
    labelled.labels.insert("os".into(), "macos".into());
    labelled.usb_free.insert("iphone".into(), 1);
    let mut wanted = request(1);
    wanted.labels =
        vec![LabelConstraint::parse("os=macos").expect("valid"), LabelConstraint::parse("gpu!=yes").expect("valid")];
    wanted.usb_device = Some("iphone".into());
    let mut hosts = [labelled];
    let decisions = place_all(&mut hosts, &HashMap::new(), &[wanted.clone(), wanted]);
    assert_eq!(placed_on(&decisions), vec![Some(1), None], "one device, one instance");
    assert_eq!(decisions[1].rejections, BTreeMap::from([(Rejection::MissingUsbDevice, 1)]));
}

#[test]
fn number_mode_counts_instances_and_ignores_cpu_and_ram() {
    let mut counted = host(1);
    counted.capacity_mode = CapacityMode::Number;
    counted.max_instances = Some(3);
    counted.vcpu_limit = 1;
    let mut large = request(0);
    large.vcpu = 4;
    let requests = vec![large.clone(), large.clone(), large.clone(), large];
    assert_eq!(
        placed_on(&place_all(&mut [counted], &HashMap::new(), &requests)),
        vec![Some(1), Some(1), Some(1), None]
    );
}

#[test]
fn spread_balances_and_pack_fills() {
    let requests: Vec<_> = (0..4).map(request).collect();
    let mut hosts = [host(1), host(2)];
    assert_eq!(placed_on(&place_all(&mut hosts, &HashMap::new(), &requests)), vec![Some(1), Some(2), Some(1), Some(2)]);

    let group = Uuid::from_u128(500);
    let groups = HashMap::from([(group, GroupPolicy { fallback: None, strategy: GroupStrategy::Pack })]);
    let mut hosts = [host(1), host(2)];
    for host in &mut hosts {
        host.groups.push(group);
    }
    hosts[1].used.vcpu = 4;
    hosts[1].used.ram_mb = 4096;
    let requests: Vec<_> = (0..4).map(|number| PlacementRequest { group_id: Some(group), ..request(number) }).collect();
    assert_eq!(
        placed_on(&place_all(&mut hosts, &groups, &requests)),
        vec![Some(2), Some(2), Some(2), Some(2)],
        "pack fills the fuller host first"
    );
}

#[test]
fn cached_template_and_affinity_are_preferred() {
    let mut caching = host(1);
    caching.used.vcpu = 6;
    caching.used.ram_mb = 6000;
    caching.cached_templates.insert(("ubuntu".into(), 3));
    let mut hosts = [caching, host(2)];
    let wants_template = PlacementRequest { template: Some(("ubuntu".into(), 3)), ..request(1) };
    let other_version = PlacementRequest { template: Some(("ubuntu".into(), 4)), ..request(2) };
    assert_eq!(
        placed_on(&place_all(&mut hosts, &HashMap::new(), &[wants_template, other_version])),
        vec![Some(1), Some(2)]
    );

    let together = |number| PlacementRequest {
        affinity: Some(Affinity { key: "job".into(), kind: AffinityKind::Together }),
        ..request(number)
    };
    let mut hosts = [host(1), host(2), host(3)];
    let decisions = place_all(&mut hosts, &HashMap::new(), &[together(1), together(2), together(3)]);
    let first = decisions[0].host_id;
    assert!(decisions.iter().all(|decision| decision.host_id == first), "together: {decisions:?}");

    let apart = |number| PlacementRequest {
        affinity: Some(Affinity { key: "job".into(), kind: AffinityKind::Apart }),
        ..request(number)
    };
    let mut hosts = [host(1), host(2), host(3)];
    let decisions = place_all(&mut hosts, &HashMap::new(), &[apart(1), apart(2), apart(3), apart(4)]);
    let distinct: HashSet<_> = decisions[..3].iter().map(|decision| decision.host_id).collect();
    assert_eq!(distinct.len(), 3, "apart: one per host");
    assert_eq!(decisions[3].host_id, None);
    assert_eq!(decisions[3].rejections, BTreeMap::from([(Rejection::AntiAffinity, 3)]));
}

#[test]
fn a_full_group_overflows_along_its_fallback_chain_and_a_cycle_ends_it() {
    let (first, second, third) = (Uuid::from_u128(501), Uuid::from_u128(502), Uuid::from_u128(503));
    let groups = HashMap::from([
        (first, GroupPolicy { fallback: Some(second), strategy: GroupStrategy::Spread }),
        (second, GroupPolicy { fallback: Some(third), strategy: GroupStrategy::Spread }),
        (third, GroupPolicy { fallback: Some(first), strategy: GroupStrategy::Spread }),
    ]);
    let mut hosts = [host(1), host(2), host(3)];
    hosts[0].groups.push(first);
    hosts[1].groups.push(second);
    hosts[2].groups.push(third);
    for host in &mut hosts {
        host.max_instances = Some(1);
    }
    let requests: Vec<_> = (0..4).map(|number| PlacementRequest { group_id: Some(first), ..request(number) }).collect();
    let decisions = place_all(&mut hosts, &groups, &requests);
    assert_eq!(placed_on(&decisions), vec![Some(1), Some(2), Some(3), None]);
    assert_eq!(decisions[1].group_id, Some(second));
    assert_eq!(decisions[3].explain(), "no host fits: 3 hosts considered, 2 not in the group, 1 full");

    assert!(creates_cycle(&groups, first, second));
    let acyclic = HashMap::from([(first, GroupPolicy { fallback: Some(second), strategy: GroupStrategy::Pack })]);
    assert!(!creates_cycle(&acyclic, second, third));
    assert!(creates_cycle(&acyclic, second, first));
    assert!(creates_cycle(&acyclic, first, first));
}

#[test]
fn priority_orders_the_queue_and_nothing_starves_behind_a_lesser_request() {
    let mut hosts = [host(1)];
    hosts[0].vcpu_limit = 4;
    let big_urgent = PlacementRequest { priority: 10, vcpu: 4, ..request(1) };
    let small_lazy = PlacementRequest { priority: 5000, vcpu: 1, ..request(2) };
    // Queue order is by priority whatever the input order.
    let decisions = place_all(&mut hosts.clone(), &HashMap::new(), &[small_lazy.clone(), big_urgent.clone()]);
    assert_eq!(placed_on(&decisions), vec![None, Some(1)]);

    // The urgent request does not fit yet: the lesser one must not take the capacity it waits for.
    hosts[0].used.vcpu = 1;
    let decisions = place_all(&mut hosts, &HashMap::new(), &[big_urgent, small_lazy]);
    assert_eq!(placed_on(&decisions), vec![None, None]);
    assert_eq!(decisions[1].rejections, BTreeMap::from([(Rejection::Reserved, 1)]));
    assert!(decisions[1].explain().contains("reserved for a more urgent request"));
}

#[test]
fn a_blocked_request_holds_only_the_hosts_it_could_use() {
    let mut arm = host(2);
    arm.arch = Arch::Arm64;
    let mut hosts = [host(1), arm];
    hosts[0].vcpu_limit = 2;
    let blocked = PlacementRequest { priority: 1, vcpu: 4, arch: Some(Arch::Amd64), ..request(1) };
    let other = PlacementRequest { priority: 2, arch: Some(Arch::Arm64), ..request(2) };
    assert_eq!(placed_on(&place_all(&mut hosts, &HashMap::new(), &[blocked, other])), vec![None, Some(2)]);
}

fn arbitrary_host() -> impl Strategy<Value = HostCandidate> {
    (
        1u128..u128::from(u32::MAX),
        prop_oneof![
            Just(HostState::Active),
            Just(HostState::Active),
            Just(HostState::Offline),
            Just(HostState::Draining)
        ],
        any::<bool>(),
        prop_oneof![Just(Arch::Amd64), Just(Arch::Arm64)],
        1u32..32,
        1u64..64,
        prop::option::of(0u32..8),
        any::<bool>(),
        0u32..3,
    )
        .prop_map(|(id, state, maintenance, arch, vcpu, ram_gb, max_instances, number_mode, usb)| HostCandidate {
            state,
            maintenance,
            arch,
            capacity_mode: if number_mode { CapacityMode::Number } else { CapacityMode::Resource },
            max_instances,
            vcpu_limit: vcpu,
            ram_limit_mb: ram_gb * 1024,
            usb_free: HashMap::from([("dongle".to_owned(), usb)]),
            ..host(id)
        })
}

fn arbitrary_request() -> impl Strategy<Value = PlacementRequest> {
    (
        1u128..1_000_000,
        1u32..10_000,
        1u32..8,
        1u64..16_384,
        prop::option::of(Just(Arch::Amd64)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(id, priority, vcpu, ram_mb, arch, usb, apart)| PlacementRequest {
            priority,
            vcpu,
            ram_mb,
            arch,
            usb_device: usb.then(|| "dongle".to_owned()),
            affinity: apart.then(|| Affinity { key: "ci".into(), kind: AffinityKind::Apart }),
            ..request(id)
        })
}

proptest! {
    #[test]
    fn random_fleets_are_never_over_committed_nor_excluded_hosts_used(
        fleet in prop::collection::vec(arbitrary_host(), 1..20),
        requests in prop::collection::vec(arbitrary_request(), 1..60),
    ) {
        let mut hosts = fleet.clone();
        let decisions = place_all(&mut hosts, &HashMap::new(), &requests);
        prop_assert_eq!(decisions.len(), requests.len());
        let mut apart_hosts = HashSet::new();
        for (request, decision) in requests.iter().zip(&decisions) {
            let Some(host_id) = decision.host_id else { continue };
            let original = fleet.iter().find(|host| host.id == host_id).expect("placed on a known host");
            prop_assert_eq!(original.state, HostState::Active);
            prop_assert!(!original.maintenance);
            prop_assert!(request.arch.is_none_or(|arch| arch == original.arch));
            if request.affinity.is_some() {
                prop_assert!(apart_hosts.insert(host_id), "anti-affinity broken on {}", host_id);
            }
        }
        for (before, after) in fleet.iter().zip(&hosts) {
            let placed: Vec<&PlacementRequest> = requests
                .iter()
                .zip(&decisions)
                .filter(|(_, decision)| decision.host_id == Some(before.id))
                .map(|(request, _)| request)
                .collect();
            let vcpu: u32 = placed.iter().map(|request| request.vcpu).sum();
            let ram: u64 = placed.iter().map(|request| request.ram_mb).sum();
            let usb = placed.iter().filter(|request| request.usb_device.is_some()).count() as u32;
            prop_assert_eq!(after.used.instances as usize, placed.len());
            prop_assert!(before.max_instances.is_none_or(|max| placed.len() as u32 <= max));
            if before.capacity_mode == CapacityMode::Resource {
                prop_assert!(vcpu <= before.vcpu_limit);
                prop_assert!(ram <= before.ram_limit_mb);
            }
            prop_assert!(usb <= before.usb_free["dongle"]);
        }
    }

    #[test]
    fn an_unplaced_request_never_waits_while_a_lesser_one_took_its_host(
        fleet in prop::collection::vec(arbitrary_host(), 1..10),
        requests in prop::collection::vec(arbitrary_request(), 1..30),
    ) {
        // Without devices and affinity, whether a host could serve a request does not change
        // as others are placed, so the original fleet tells which hosts it could use.
        let requests: Vec<PlacementRequest> = requests
            .into_iter()
            .map(|request| PlacementRequest { usb_device: None, affinity: None, ..request })
            .collect();
        let mut hosts = fleet.clone();
        let decisions = place_all(&mut hosts, &HashMap::new(), &requests);
        for (waiting, _) in requests.iter().zip(&decisions).filter(|(_, decision)| decision.host_id.is_none()) {
            for (other, other_decision) in requests.iter().zip(&decisions) {
                let Some(taken) = other_decision.host_id else { continue };
                if other.priority <= waiting.priority {
                    continue;
                }
                let host = fleet.iter().find(|host| host.id == taken).expect("known host");
                // A lesser request may only use hosts the waiting one could never use.
                prop_assert!(rule_out_except_capacity(host, waiting).is_some(),
                    "request of priority {} waits while one of priority {} took a host it could use",
                    waiting.priority, other.priority);
            }
        }
    }
}
