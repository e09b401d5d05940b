//! The host side alone: settings parsing, the WASI and HTTP deny-by-default policy, state
//! limits, endpoints and progress, exercised through the same trait impls the guest calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime_wasi::p2::bindings::sockets::network::IpAddressFamily;
use wasmtime_wasi::p2::bindings::sockets::{instance_network, ip_name_lookup, tcp_create_socket, udp_create_socket};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsView};

use super::support::CountingRecorder;
use crate::plugins::bindings::hyperplane::host::endpoints::{self, EndpointError, HostConnection};
use crate::plugins::bindings::hyperplane::host::state::{self, StateError};
use crate::plugins::http::OutgoingHttpAllowList;
use crate::plugins::progress;
use crate::plugins::store_data::{ProviderContext, StoreData, deny_every_socket_address};
use crate::plugins::telemetry::PLUGIN_CAPABILITY_DENIALS_TOTAL;
use crate::plugins::{
    ComponentSource, Driver, EndpointAddress, EndpointAddressError, LoadError, MAX_STATE_KEY_BYTES,
    MAX_STATE_VALUE_BYTES, MemoryStateStore, PkiFiles, PluginStateStore, TlsEndpoint,
};

fn store_data_with(endpoints: BTreeMap<String, EndpointAddress>, state_store: Arc<dyn PluginStateStore>) -> StoreData {
    let name: Arc<str> = "test-provider".into();
    StoreData::new(Arc::new(ProviderContext {
        name: name.clone(),
        endpoints,
        http_allow_list: OutgoingHttpAllowList::parse(name, &[]).expect("an empty allow-list parses"),
        state_store,
        memory_limit_bytes: 16 * 1024 * 1024,
        auth: None,
        granted_directory: None,
    }))
}

fn store_data() -> StoreData {
    store_data_with(BTreeMap::new(), Arc::new(MemoryStateStore::new()))
}

#[test]
fn endpoint_addresses_parse_or_explain() {
    fn check(address: &str, expected: Result<EndpointAddress, EndpointAddressError>) {
        assert_eq!(address.parse::<EndpointAddress>(), expected, "{address}");
    }
    check("unix:///run/libvirt/libvirt-sock", Ok(EndpointAddress::Unix(PathBuf::from("/run/libvirt/libvirt-sock"))));
    check("tcp://kvm-1.lab:16509", Ok(EndpointAddress::Tcp("kvm-1.lab:16509".to_string())));
    check("tcp://[::1]:16509", Ok(EndpointAddress::Tcp("[::1]:16509".to_string())));
    check(
        "unix://run/x.sock",
        Err(EndpointAddressError::RelativeUnixPath { address: "unix://run/x.sock".to_string() }),
    );
    check("tcp://kvm-1.lab", Err(EndpointAddressError::InvalidTcpAuthority { address: "tcp://kvm-1.lab".to_string() }));
    check("tcp://:80", Err(EndpointAddressError::InvalidTcpAuthority { address: "tcp://:80".to_string() }));
    check("tcp://h:99999", Err(EndpointAddressError::InvalidTcpAuthority { address: "tcp://h:99999".to_string() }));
    check("http://kvm-1.lab", Err(EndpointAddressError::UnknownScheme { address: "http://kvm-1.lab".to_string() }));
    let message = "ftp://x".parse::<EndpointAddress>().expect_err("ftp is refused").to_string();
    assert_eq!(message, "endpoint address \"ftp://x\" must start with unix://, tcp:// or libvirt+tls://");

    let tls =
        |authority: &str, pki: PkiFiles| Ok(EndpointAddress::LibvirtTls { authority: authority.to_string(), pki });
    check("libvirt+tls://kvm-2.lab:16514", tls("kvm-2.lab:16514", PkiFiles::libvirt_default()));
    check(
        "libvirt+tls://10.0.0.12:16514/?pkipath=/etc/hyperplane/pki/rack2",
        tls("10.0.0.12:16514", PkiFiles::in_directory(Path::new("/etc/hyperplane/pki/rack2"))),
    );
    let invalid_parameter =
        |address: &str| Err(EndpointAddressError::InvalidParameter { address: address.to_string() });
    for address in [
        "libvirt+tls://h:16514?pkipath=relative/dir",
        "libvirt+tls://h:16514?no_verify=1",
        "libvirt+tls://h:16514?pkipath=/a&x=1",
    ] {
        check(address, invalid_parameter(address));
    }
    check(
        "libvirt+tls://h?pkipath=/a",
        Err(EndpointAddressError::InvalidTcpAuthority { address: "libvirt+tls://h?pkipath=/a".to_string() }),
    );
    check(
        "tcp://h:1?pkipath=/a",
        Err(EndpointAddressError::InvalidTcpAuthority { address: "tcp://h:1?pkipath=/a".to_string() }),
    );
    // Shown as written, minus a trailing slash; the default certificates are not spelled out.
    for address in
        ["libvirt+tls://kvm-2.lab:16514", "libvirt+tls://[::1]:16514?pkipath=/etc/pki/rack2", "tcp://h:1", "unix:///s"]
    {
        let parsed: EndpointAddress = address.parse().expect("valid");
        assert_eq!(parsed.to_string(), address);
    }
}

#[test]
fn tls_certificate_files_that_are_missing_or_empty_are_named() {
    let directory = tempfile::tempdir().expect("temp dir");
    let pki = PkiFiles::in_directory(directory.path());
    let error = TlsEndpoint::load("kvm-1.lab:16514", &pki).err().expect("no files");
    assert!(error.to_string().starts_with(&format!("CA certificate {}: ", pki.ca.display())), "{error}");
    std::fs::write(&pki.ca, "not a certificate\n").expect("written");
    let error = TlsEndpoint::load("kvm-1.lab:16514", &pki).err().expect("no certificate in the file");
    assert_eq!(error.to_string(), format!("CA certificate {}: holds no PEM certificate", pki.ca.display()));
    let error = TlsEndpoint::load("bad host!:16514", &pki).err().expect("not a name");
    assert_eq!(error.to_string(), "\"bad host!\" is neither a DNS name nor an IP address a certificate can name");
}

#[test]
fn http_allow_list_matches_host_and_port() {
    let allow_list = OutgoingHttpAllowList::parse(
        "p".into(),
        &["xapi.lab".to_string(), "Pool-Master.lab:8443".to_string(), "10.0.0.7:80".to_string()],
    )
    .expect("entries parse");
    let check = |uri: &str, expected: bool| {
        let uri: http::Uri = uri.parse().expect("test uri parses");
        assert_eq!(allow_list.permits(&uri), expected, "{uri}");
    };
    check("https://xapi.lab/jsonrpc", true);
    check("https://XAPI.lab:443/", true);
    check("http://xapi.lab/", true);
    check("https://xapi.lab:8443/", false);
    check("https://pool-master.lab:8443/", true);
    check("https://pool-master.lab/", false);
    check("http://10.0.0.7/", true);
    check("https://evil.example/", false);
    check("https://xapi.lab.evil.example/", false);

    for bad_entry in ["https://xapi.lab", "xapi.lab/path", "user@xapi.lab", ""] {
        assert!(OutgoingHttpAllowList::parse("p".into(), &[bad_entry.to_string()]).is_err(), "{bad_entry}");
    }
}

#[tokio::test]
async fn wasi_sockets_and_name_lookup_are_denied() {
    let mut data = store_data();
    let mut sockets = data.sockets();
    assert!(tcp_create_socket::Host::create_tcp_socket(&mut sockets, IpAddressFamily::Ipv4).is_err());
    assert!(udp_create_socket::Host::create_udp_socket(&mut sockets, IpAddressFamily::Ipv6).await.is_err());
    let network = instance_network::Host::instance_network(&mut sockets).expect("the network handle exists");
    assert!(ip_name_lookup::Host::resolve_addresses(&mut sockets, network, "localhost".to_string()).is_err());
    for address_use in [SocketAddrUse::TcpConnect, SocketAddrUse::TcpBind, SocketAddrUse::UdpBind] {
        assert!(!deny_every_socket_address("127.0.0.1:22".parse().expect("address parses"), address_use).await);
    }
}

#[tokio::test]
async fn state_enforces_key_and_value_limits_and_scopes_by_provider() {
    let store = Arc::new(MemoryStateStore::new());
    let mut data = store_data_with(BTreeMap::new(), store.clone());

    let long_key = "k".repeat(MAX_STATE_KEY_BYTES + 1);
    let result = state::Host::set(&mut data, long_key.clone(), b"v".to_vec()).await.expect("no trap");
    assert!(matches!(result, Err(StateError::TooLarge(_))), "{result:?}");
    let result = state::Host::get(&mut data, long_key).await.expect("no trap");
    assert!(matches!(result, Err(StateError::TooLarge(_))), "{result:?}");
    let huge_value = vec![0; MAX_STATE_VALUE_BYTES + 1];
    let result = state::Host::set(&mut data, "k".to_string(), huge_value.clone()).await.expect("no trap");
    assert!(matches!(result, Err(StateError::TooLarge(_))), "{result:?}");
    let result = state::Host::compare_and_swap(&mut data, "k".to_string(), None, Some(huge_value)).await;
    assert!(matches!(result, Ok(Err(StateError::TooLarge(_)))), "{result:?}");

    let largest_key = "k".repeat(MAX_STATE_KEY_BYTES);
    state::Host::set(&mut data, largest_key.clone(), vec![1; MAX_STATE_VALUE_BYTES])
        .await
        .expect("no trap")
        .expect("fits");
    state::Host::set(&mut data, "vm/a".to_string(), b"1".to_vec()).await.expect("no trap").expect("stored");
    state::Host::set(&mut data, "vm/b".to_string(), b"2".to_vec()).await.expect("no trap").expect("stored");
    let scanned = state::Host::scan(&mut data, "vm/".to_string()).await.expect("no trap").expect("scanned");
    assert_eq!(scanned, vec![("vm/a".to_string(), b"1".to_vec()), ("vm/b".to_string(), b"2".to_vec())]);

    let swapped = state::Host::compare_and_swap(&mut data, "vm/a".to_string(), Some(b"0".to_vec()), None).await;
    assert_eq!(swapped.expect("no trap"), Ok(false));
    let swapped = state::Host::compare_and_swap(&mut data, "vm/a".to_string(), Some(b"1".to_vec()), None).await;
    assert_eq!(swapped.expect("no trap"), Ok(true));
    assert_eq!(state::Host::delete(&mut data, "vm/a".to_string()).await.expect("no trap"), Ok(false));
    assert_eq!(state::Host::delete(&mut data, "vm/b".to_string()).await.expect("no trap"), Ok(true));

    // Everything landed under the provider's name and nowhere else.
    assert_eq!(store.scan("test-provider", "").await.expect("scan").len(), 1);
    assert_eq!(store.scan("other-provider", "").await.expect("scan"), Vec::new());
    assert_eq!(
        store.get("test-provider", &largest_key).await.expect("get").map(|value| value.len()),
        Some(MAX_STATE_VALUE_BYTES)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn endpoints_grant_by_name_only() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let socket_path = directory.path().join("echo.sock");
    let listener = tokio::net::UnixListener::bind(&socket_path).expect("echo socket binds");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 64];
                while let Ok(length) = stream.read(&mut buffer).await {
                    if length == 0 || stream.write_all(&buffer[..length]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let endpoints = BTreeMap::from([
        ("echo".to_string(), EndpointAddress::Unix(socket_path)),
        ("gone".to_string(), EndpointAddress::Unix(directory.path().join("missing.sock"))),
    ]);
    let mut data = store_data_with(endpoints, Arc::new(MemoryStateStore::new()));
    let recorder = CountingRecorder::default();
    let _recorder_guard = metrics::set_default_local_recorder(&recorder);

    assert_eq!(endpoints::Host::granted(&mut data).await.expect("no trap"), vec!["echo", "gone"]);

    let denied = endpoints::Host::open(&mut data, "libvirt".to_string()).await.expect("no trap");
    assert!(matches!(denied, Err(EndpointError::NotGranted(ref name)) if name == "libvirt"), "{denied:?}");
    let denials =
        recorder.counter(PLUGIN_CAPABILITY_DENIALS_TOTAL, &[("provider", "test-provider"), ("capability", "endpoint")]);
    assert_eq!(denials, 1);

    let unreachable = endpoints::Host::open(&mut data, "gone".to_string()).await.expect("no trap");
    assert!(matches!(unreachable, Err(EndpointError::Unreachable(_))), "{unreachable:?}");

    let connection = endpoints::Host::open(&mut data, "echo".to_string()).await.expect("no trap").expect("granted");
    let handle = || wasmtime::component::Resource::new_borrow(connection.rep());
    HostConnection::write(&mut data, handle(), b"hello".to_vec()).await.expect("no trap").expect("written");
    let echoed = HostConnection::read_exact(&mut data, handle(), 5).await.expect("no trap").expect("read");
    assert_eq!(echoed, b"hello");
    HostConnection::write(&mut data, handle(), b"!".to_vec()).await.expect("no trap").expect("written");
    let echoed = HostConnection::read(&mut data, handle(), 1024).await.expect("no trap").expect("read");
    assert_eq!(echoed, b"!");
    HostConnection::drop(&mut data, connection).await.expect("dropped");
    assert_eq!(data.open_connection_count, 0);
}

#[tokio::test]
async fn progress_goes_to_the_enclosing_scope_only() {
    assert!(progress::current_sink().is_none());
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink_reports = reports.clone();
    let sink: progress::ProgressSink = Arc::new(move |fraction, message: &str| {
        sink_reports.lock().expect("not poisoned").push((fraction, message.to_string()));
    });
    let mut data = store_data();
    progress::scope(sink, async {
        let sink = progress::current_sink();
        assert!(sink.is_some());
        data.begin_call("pull-template", std::time::Instant::now(), sink);
        use crate::plugins::bindings::hyperplane::host::progress::Host as _;
        data.report(0.5, "half".to_string()).await.expect("no trap");
        data.report(7.0, "over".to_string()).await.expect("no trap");
        data.report(f32::NAN, "nan".to_string()).await.expect("no trap");
    })
    .await;
    let reports = reports.lock().expect("not poisoned").clone();
    assert_eq!(reports, vec![(0.5, "half".to_string()), (1.0, "over".to_string()), (0.0, "nan".to_string())]);
}

#[tokio::test]
async fn non_components_are_refused_at_load() {
    let core_module_header = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    for bytes in [b"not wasm at all".to_vec(), core_module_header] {
        let mut settings = super::support::provider_settings("bad", "unused", serde_json::json!({}));
        settings.component = ComponentSource::Bytes { label: "bad.wasm".to_string(), bytes: bytes.into() };
        let error = Driver::load(super::support::shared_runtime(), settings, Arc::new(MemoryStateStore::new()))
            .await
            .expect_err("not a component");
        assert!(matches!(error, LoadError::InvalidComponent { .. }), "{error:?}");
    }
    let mut settings = super::support::provider_settings("missing", "/nonexistent/driver.wasm", serde_json::json!({}));
    settings.allowed_http_hosts = Vec::new();
    let error = Driver::load(super::support::shared_runtime(), settings, Arc::new(MemoryStateStore::new()))
        .await
        .expect_err("no such file");
    assert!(matches!(error, LoadError::ReadComponent { .. }), "{error:?}");
}
