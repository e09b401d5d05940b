//! Connection management against a real libvirtd: a cached connection that died is replaced;
//! operations whose first call is safe to repeat (reads, a destroy) run once more on the fresh
//! connection, others fail with `unavailable` and are not repeated. Also measures one call's round trip.

mod common;

use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use common::{TEST_DRIVER_URI, connect, tcp_stream};
use driver_libvirt::driver::{Connector, LibvirtDriver};
use hyperplane_guest::state::MemoryStore;
use hyperplane_guest::types::Error;

/// Opens TCP connections and keeps a handle on each, so the test can cut them.
#[derive(Clone, Default)]
struct CuttableConnector {
    opened: Arc<Mutex<Vec<TcpStream>>>,
}

impl CuttableConnector {
    fn cut_all(&self) {
        for stream in self.opened.lock().map(|mut opened| std::mem::take(&mut *opened)).unwrap_or_default() {
            stream.shutdown(std::net::Shutdown::Both).ok();
        }
    }

    fn opened_count(&self) -> usize {
        self.opened.lock().map(|opened| opened.len()).unwrap_or(0)
    }
}

impl Connector for CuttableConnector {
    type Stream = TcpStream;

    fn open(&self, _endpoint: &str) -> Result<TcpStream, Error> {
        let stream = tcp_stream();
        let handle = stream.try_clone().map_err(|error| Error::Unavailable(error.to_string()))?;
        if let Ok(mut opened) = self.opened.lock() {
            opened.push(handle);
        }
        Ok(stream)
    }
}

#[test]
fn dead_cached_connection_is_replaced_and_only_calls_safe_to_repeat_are_repeated() {
    let _keeper = connect(TEST_DRIVER_URI);
    let connector = CuttableConnector::default();
    let settings = driver_libvirt::config::Settings::from_json(
        r#"{"hosts": [{"name": "lv-1", "endpoint": "libvirt", "uri": "test:///default", "pool": "default-pool"}]}"#,
    )
    .expect("settings");
    let driver = LibvirtDriver::new(settings, connector.clone(), MemoryStore::new());
    assert!(driver.list_templates("lv-1").is_ok());
    assert_eq!(connector.opened_count(), 1);

    // A read-only operation on a dead cached connection runs again on a fresh one.
    connector.cut_all();
    let templates = driver.list_templates("lv-1");
    assert!(templates.is_ok(), "{templates:?}");
    assert_eq!(connector.opened_count(), 1, "one fresh connection");

    // A mutating call is not repeated: it fails `unavailable`, naming the endpoint and the
    // procedure; the next call reconnects.
    connector.cut_all();
    let missing = "00000000-0000-4000-8000-00000000beef";
    let started = driver.start_instance(missing);
    assert!(
        matches!(&started, Err(Error::Unavailable(message))
            if message.starts_with("libvirt connection to endpoint 'libvirt' closed during domain_create")),
        "{started:?}"
    );
    let again = driver.start_instance(missing);
    assert!(matches!(&again, Err(Error::NotFound(_))), "reconnected: {again:?}");

    // A destroy is safe to repeat (after one that acted, the repeat answers "not running"): a
    // delete, which starts with one (the pool handle cached by a first delete), runs again on a
    // fresh connection.
    assert!(matches!(driver.delete_instance(missing), Err(Error::NotFound(_))));
    connector.cut_all();
    let deleted = driver.delete_instance(missing);
    assert!(matches!(&deleted, Err(Error::NotFound(_))), "repeated on a fresh connection: {deleted:?}");
}

#[test]
fn round_trip_of_one_call() {
    let mut client = connect(TEST_DRIVER_URI);
    let domain = client.domain_lookup_by_name("test").expect("the test driver's domain");
    let calls = 2000;
    let started = std::time::Instant::now();
    for _ in 0..calls {
        client.domain_get_state(&domain).expect("state");
    }
    let per_call = started.elapsed() / calls;
    eprintln!("domain_get_state round trip over tcp: {per_call:?} per call ({calls} calls)");
    assert!(per_call < std::time::Duration::from_millis(20), "{per_call:?}");

    let started = std::time::Instant::now();
    let connections = 50;
    for _ in 0..connections {
        driver_libvirt::client::Client::connect(tcp_stream(), TEST_DRIVER_URI).expect("handshake");
    }
    eprintln!("connect + auth_list + connect_open: {:?} per connection", started.elapsed() / connections);
}
