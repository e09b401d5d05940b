//! The hostile fixture: every misbehaviour fails only its own call with the matching error,
//! within about the deadline, discards the instance, and the same `Driver` keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::support::{CountingRecorder, DRIVER_HOSTILE_WASM, provider_settings, shared_runtime};
use crate::plugins::driver_types::DriverError;
use crate::plugins::telemetry::{PLUGIN_CALL_FAILURES_TOTAL, PLUGIN_CAPABILITY_DENIALS_TOTAL};
use crate::plugins::{CallError, Driver, MemoryStateStore, ProviderSettings};

const CALL_TIMEOUT: Duration = Duration::from_millis(400);
/// Slack over the deadline for scheduling on a loaded two-core machine.
const DEADLINE_SLACK: Duration = Duration::from_millis(600);

/// Responses the fixture makes huge stay below the memory cap, so that they reach the host.
fn hostile_settings(name: &str, behavior: &str, only: &[&str]) -> ProviderSettings {
    let config = json!({ "behavior": behavior, "only": only, "string_bytes": 1 << 20, "entries": 100_000 });
    let mut settings = provider_settings(name, DRIVER_HOSTILE_WASM, config);
    settings.call_timeout = CALL_TIMEOUT;
    settings.memory_limit_bytes = 32 * 1024 * 1024;
    settings.max_response_bytes = 64 * 1024;
    settings
}

async fn load_hostile(settings: ProviderSettings) -> Driver {
    Driver::load(shared_runtime(), settings, Arc::new(MemoryStateStore::new())).await.expect("the fixture loads")
}

/// Runs `get-instance`, which misbehaves, and checks the error and its timing; then checks that
/// the instance was discarded, that a well-behaved call on the same driver still succeeds, and
/// that the next misbehaving call fails the same way on a fresh instance.
async fn check_misbehaviour(behavior: &str, is_expected: impl Fn(&CallError) -> bool) {
    let driver = load_hostile(hostile_settings(&format!("hostile-{behavior}"), behavior, &["get-instance"])).await;
    for attempt in 1..=2 {
        let discarded_before = driver.statistics().instances_discarded;
        let started = Instant::now();
        let outcome = driver.get_instance("vm-1").await;
        let elapsed = started.elapsed();
        let error = outcome.expect_err("the misbehaving call fails");
        assert!(is_expected(&error), "{behavior}, attempt {attempt}: unexpected error {error:?}");
        assert!(error.to_string().contains("get-instance"), "{behavior}: the message names the function: {error}");
        assert!(elapsed < CALL_TIMEOUT + DEADLINE_SLACK, "{behavior}: failed only after {elapsed:?}");
        assert_eq!(driver.statistics().instances_discarded, discarded_before + 1, "{behavior}: instance discarded");

        let hosts =
            driver.list_hosts().await.unwrap_or_else(|error| panic!("{behavior}: the driver stopped serving: {error}"));
        assert_eq!(hosts.len(), 1, "{behavior}");
    }
}

#[tokio::test]
async fn infinite_loop_times_out() {
    check_misbehaviour(
        "infinite-loop",
        |error| matches!(error, CallError::Timeout { function: "get-instance", after } if *after == CALL_TIMEOUT),
    )
    .await;
}

/// On a single-threaded executor a spinning guest still yields every epoch tick, so other
/// work (here a call on another instance of the same driver) goes on meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn spinning_guest_does_not_starve_its_executor() {
    let driver = load_hostile(hostile_settings("hostile-spin", "infinite-loop", &["get-instance"])).await;
    let other_work = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        driver.list_hosts().await.expect("served meanwhile");
        started.elapsed()
    };
    let (spinning, other_work_took) = tokio::join!(driver.get_instance("vm-1"), other_work);
    assert!(matches!(spinning, Err(CallError::Timeout { .. })), "{spinning:?}");
    assert!(other_work_took < CALL_TIMEOUT / 2, "the other call waited {other_work_took:?}");
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_cap() {
    check_misbehaviour("memory-bomb", |error| {
        matches!(error, CallError::MemoryLimit { function: "get-instance", limit_bytes } if *limit_bytes == 32 * 1024 * 1024)
    })
    .await;
}

#[tokio::test]
async fn trap_is_reported_as_a_trap() {
    check_misbehaviour("trap", |error| matches!(error, CallError::Trap { function: "get-instance", .. })).await;
}

#[tokio::test]
async fn huge_string_is_refused() {
    check_misbehaviour("huge-response", |error| {
        matches!(error, CallError::ResponseTooLarge { function: "get-instance", limit_bytes: 65536 })
    })
    .await;
}

#[tokio::test]
async fn huge_list_is_refused() {
    let driver = load_hostile(hostile_settings("hostile-huge-list", "huge-response", &["list-instances"])).await;
    let error = driver.list_instances().await.expect_err("100 000 instances exceed 64 KiB");
    assert!(matches!(error, CallError::ResponseTooLarge { function: "list-instances", .. }), "{error:?}");
    assert_eq!(driver.statistics().instances_discarded, 1);
    driver.list_hosts().await.expect("the driver keeps serving");
}

#[tokio::test]
async fn huge_driver_error_is_refused() {
    let driver = load_hostile(hostile_settings("hostile-huge-error", "huge-response", &["delete-instance"])).await;
    let error = driver.delete_instance("vm-1").await.expect_err("a 1 MiB backend error exceeds 64 KiB");
    assert!(matches!(error, CallError::ResponseTooLarge { function: "delete-instance", .. }), "{error:?}");
}

#[tokio::test]
async fn slow_call_past_the_deadline_times_out() {
    let mut settings = hostile_settings("hostile-slow-deadline", "slow", &["get-instance"]);
    settings.config_json = json!({ "behavior": "slow", "only": ["get-instance"], "delay_ms": 5_000 }).to_string();
    settings.call_timeout = Duration::from_millis(150);
    let driver = load_hostile(settings).await;
    let started = Instant::now();
    let error = driver.get_instance("vm-1").await.expect_err("too slow for the deadline");
    assert!(matches!(error, CallError::Timeout { function: "get-instance", .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_millis(150) + DEADLINE_SLACK, "{:?}", started.elapsed());
    assert_eq!(driver.statistics().instances_discarded, 1);
    driver.list_hosts().await.expect("the driver keeps serving");
}

#[tokio::test]
async fn concurrent_slow_calls_do_not_serialize() {
    let mut settings = hostile_settings("hostile-slow", "slow", &["list-hosts"]);
    settings.config_json = json!({ "behavior": "slow", "only": ["list-hosts"], "delay_ms": 300 }).to_string();
    settings.call_timeout = Duration::from_secs(10);
    let driver = load_hostile(settings).await;

    let started = Instant::now();
    driver.list_hosts().await.expect("slow but fine");
    let one_call = started.elapsed();

    let concurrency = 6;
    let started = Instant::now();
    let calls = (0..concurrency).map(|_| {
        let driver = driver.clone();
        tokio::spawn(async move { driver.list_hosts().await })
    });
    for call in futures::future::join_all(calls).await {
        call.expect("task joined").expect("slow but fine");
    }
    let all_calls = started.elapsed();
    println!("slow list-hosts: one call {one_call:?}, {concurrency} concurrent calls {all_calls:?}");
    assert!(all_calls < one_call * 2, "{concurrency} concurrent calls took {all_calls:?}, one takes {one_call:?}");
    assert!(driver.statistics().instances_created >= concurrency);
}

#[tokio::test(flavor = "current_thread")]
async fn ungranted_endpoint_and_sockets_are_denied() {
    let recorder = CountingRecorder::default();
    let _recorder_guard = metrics::set_default_local_recorder(&recorder);
    let driver = load_hostile(hostile_settings("hostile-endpoint", "ungranted-endpoint", &["get-instance"])).await;
    let error = driver.get_instance("vm-1").await.expect_err("the fixture reports what it got");
    let CallError::Driver(DriverError::Unavailable(report)) = &error else {
        panic!("a denial is the driver's own error, not a trap: {error:?}");
    };
    assert!(!report.contains("GRANTED"), "{report}");
    assert!(report.contains("endpoint libvirt: denied: not-granted: libvirt"), "{report}");
    assert!(report.contains("tcp 127.0.0.1:1: denied"), "{report}");
    let denials = recorder
        .counter(PLUGIN_CAPABILITY_DENIALS_TOTAL, &[("provider", "hostile-endpoint"), ("capability", "endpoint")]);
    assert_eq!(denials, 1);
    assert_eq!(driver.statistics().instances_discarded, 0, "a driver error keeps the instance");
}

#[tokio::test(flavor = "current_thread")]
async fn failures_are_counted_by_kind() {
    let recorder = CountingRecorder::default();
    let _recorder_guard = metrics::set_default_local_recorder(&recorder);
    let driver = load_hostile(hostile_settings("hostile-metrics", "trap", &["get-instance"])).await;
    for _ in 0..2 {
        driver.get_instance("vm-1").await.expect_err("traps");
    }
    driver.list_hosts().await.expect("well-behaved");
    let count = |kind: &str| {
        recorder.counter(
            PLUGIN_CALL_FAILURES_TOTAL,
            &[("provider", "hostile-metrics"), ("function", "get-instance"), ("kind", kind)],
        )
    };
    assert_eq!((count("trap"), count("timeout")), (2, 0));
    assert_eq!(recorder.counter(PLUGIN_CALL_FAILURES_TOTAL, &[("function", "list-hosts")]), 0);
}

#[tokio::test]
async fn trap_message_carries_the_guest_panic() {
    let driver = load_hostile(hostile_settings("hostile-panic", "trap", &["exec"])).await;
    let error = driver.exec("vm-1", "true", 1000).await.expect_err("traps");
    let message = error.to_string();
    assert!(message.starts_with("provider function exec trapped: "), "{message}");
    assert!(message.contains("trapping in exec on purpose"), "{message}");
}
