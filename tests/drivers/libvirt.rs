//! driver-libvirt against a real libvirtd: the conformance suite on libvirt's test driver over
//! TCP, over TLS and over the unix socket; TLS endpoints that do not trust or are not trusted;
//! a connection cut in the middle of a call.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyperplane::plugins::driver_types::{DiskFormat, DriverError, HostState, InstanceState, TemplateRef};
use hyperplane::plugins::{
    CallError, ComponentSource, Driver, EndpointAddress, MemoryStateStore, PkiFiles, ProviderSettings, TlsEndpoint,
    TlsSetupError,
};
use serde_json::json;
use uuid::Uuid;

use crate::conformance::{self, Fixture};
use crate::libvirt_bed::{self, ConnectionHolder, virsh};
use crate::proxy::CuttingProxy;

/// The test driver's storage pool.
const POOL: &str = "default-pool";
const HOST: &str = "test-host";
/// `REMOTE_PROC_DOMAIN_CREATE`: starting a defined domain.
const REMOTE_PROC_DOMAIN_CREATE: u32 = 9;

/// libvirt's test driver keeps its state only while a connection is open: one for the process.
fn hold_test_driver_state() {
    static HOLDER: OnceLock<ConnectionHolder> = OnceLock::new();
    HOLDER.get_or_init(|| ConnectionHolder::open(&libvirt_bed::bed().test_uri));
}

fn template(name: &str) -> TemplateRef {
    TemplateRef { name: name.into(), version: 1, tag: "v1".into(), size_bytes: 4096, format: DiskFormat::Raw }
}

/// The test driver cannot take uploads: put the template's volume on it as a pull would leave it.
fn place_template_volume(template: &TemplateRef) {
    let volume = format!("hyperplane-template-{}-v{}", template.name, template.version);
    let uri = &libvirt_bed::bed().test_uri;
    if virsh(uri, &["vol-info", &volume, "--pool", POOL]).is_err() {
        // A parallel test may have created it in between: only its absence afterwards is an error.
        let _ = virsh(uri, &["vol-create-as", POOL, &volume, "4096", "--format", "raw"]);
        virsh(uri, &["vol-info", &volume, "--pool", POOL]).unwrap_or_else(|message| panic!("{message}"));
    }
}

/// The bundled driver as provider `name`, with `hosts` (the config's `hosts` list) and
/// `endpoints` granted.
async fn load_provider(name: &str, hosts: serde_json::Value, endpoints: &[(&str, EndpointAddress)]) -> Driver {
    let settings = ProviderSettings {
        name: name.into(),
        component: ComponentSource::File(env!("BUNDLED_DRIVER_LIBVIRT_WASM").into()),
        config_json: json!({ "hosts": hosts }).to_string(),
        call_timeout: Duration::from_secs(30),
        memory_limit_bytes: 64 << 20,
        endpoints: endpoints.iter().map(|(name, address)| ((*name).to_owned(), address.clone())).collect(),
        allowed_http_hosts: Vec::new(),
        max_response_bytes: 4 << 20,
    };
    Driver::load(crate::shared_runtime(), settings, Arc::new(MemoryStateStore::new()))
        .await
        .expect("driver-libvirt loads")
}

async fn load_driver(endpoint: EndpointAddress) -> Driver {
    let hosts = json!([{ "name": HOST, "endpoint": "libvirtd", "uri": "test:///default", "pool": POOL }]);
    load_provider("conformance-libvirt", hosts, &[("libvirtd", endpoint)]).await
}

async fn fixture_on(endpoint: EndpointAddress) -> Fixture {
    hold_test_driver_state();
    let (template, spare_template) = (template("conformance"), template(&format!("spare-{}", Uuid::new_v4())));
    place_template_volume(&template);
    place_template_volume(&spare_template);
    Fixture {
        driver: load_driver(endpoint).await,
        host: HOST.into(),
        template,
        spare_template,
        image: crate::scratch_image(),
    }
}

async fn tcp_fixture() -> Fixture {
    fixture_on(EndpointAddress::Tcp(libvirt_bed::bed().tcp_address.clone())).await
}

async fn unix_fixture() -> Fixture {
    fixture_on(EndpointAddress::Unix(libvirt_bed::bed().socket_path.clone())).await
}

/// libvirtd's TLS port as `host`, with the certificates of `pki` (a directory `setup.sh` made).
fn tls_endpoint(host: &str, pki: &str) -> EndpointAddress {
    let bed = libvirt_bed::bed();
    let (_, port) = bed.tls_address.rsplit_once(':').expect("host:port");
    let address = format!("libvirt+tls://{host}:{port}?pkipath={}", bed.pki_directory.join(pki).display());
    address.parse().unwrap_or_else(|error| panic!("{address}: {error}"))
}

async fn tls_fixture() -> Fixture {
    fixture_on(tls_endpoint("127.0.0.1", "client")).await
}

mod over_tcp {
    crate::conformance_cases!(super::tcp_fixture);
}

mod over_unix_socket {
    crate::conformance_cases!(super::unix_fixture);
}

mod over_tls {
    crate::conformance_cases!(super::tls_fixture);
}

/// What a call through `endpoint` fails with: the driver's `unavailable` message.
async fn unavailable_through(endpoint: EndpointAddress) -> String {
    let driver = load_driver(endpoint).await;
    match driver.list_templates(HOST).await {
        Err(CallError::Driver(DriverError::Unavailable(message))) => message,
        other => panic!("expected `unavailable`, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_endpoint_refuses_a_server_it_cannot_trust_and_says_why() {
    hold_test_driver_state();
    let message = unavailable_through(tls_endpoint("127.0.0.1", "other-ca")).await;
    assert!(message.contains("not signed by the endpoint's CA"), "{message}");
    // The certificate is for 127.0.0.1 only.
    let message = unavailable_through(tls_endpoint("localhost", "client")).await;
    assert!(message.contains("does not name the endpoint's host"), "{message}");
    assert!(!message.contains("localhost") && !message.contains("pki"), "no names or paths for the plugin: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_libvirtd_does_not_trust_fails_the_connection_clearly() {
    hold_test_driver_state();
    let message = unavailable_through(tls_endpoint("127.0.0.1", "unknown-client")).await;
    assert!(message.contains("endpoint libvirtd: TLS: libvirtd did not accept the client certificate"), "{message}");
}

#[test]
fn tls_certificate_files_that_cannot_be_used_are_named() {
    let pki = libvirt_bed::bed().pki_directory.clone();
    let mismatched =
        PkiFiles { key: pki.join("unknown-client/clientkey.pem"), ..PkiFiles::in_directory(&pki.join("client")) };
    let error = TlsEndpoint::load("127.0.0.1:1", &mismatched).err().expect("a key of another certificate is refused");
    assert!(matches!(error, TlsSetupError::KeyMismatch { .. }), "{error}");
    assert!(error.to_string().contains("unknown-client/clientkey.pem"), "{error}");
    let missing = PkiFiles::in_directory(&pki.join("nowhere"));
    let error = TlsEndpoint::load("127.0.0.1:1", &missing).err().expect("missing files are refused");
    assert!(error.to_string().starts_with(&format!("CA certificate {}", missing.ca.display())), "{error}");
    assert!(TlsEndpoint::load("127.0.0.1:1", &PkiFiles::in_directory(&pki.join("client"))).is_ok());
}

/// One host of two never answers (a listener whose accept queue is full drops connection
/// attempts, as a host that is gone does): it is reported offline within the endpoint's open
/// timeout, and the live host as usual, in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_is_reported_offline_and_the_other_host_still_is_reported() {
    hold_test_driver_state();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("address")).expect("bound");
    let silent = socket.listen(0).expect("listening");
    let silent_address = silent.local_addr().expect("address");
    let mut queued = Vec::new();
    while let Ok(connected) =
        tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(silent_address)).await
    {
        queued.push(connected.expect("queued by the kernel"));
        assert!(queued.len() < 16, "the accept queue never filled");
    }
    let hosts = json!([
        { "name": "live", "endpoint": "live", "uri": "test:///default", "pool": POOL },
        { "name": "silent", "endpoint": "silent", "uri": "test:///default", "pool": POOL },
    ]);
    let endpoints = [
        ("live", EndpointAddress::Tcp(libvirt_bed::bed().tcp_address.clone())),
        ("silent", EndpointAddress::Tcp(silent_address.to_string())),
    ];
    let driver = load_provider("libvirt-silent-host", hosts, &endpoints).await;

    let started = std::time::Instant::now();
    let hosts = driver.list_hosts().await.expect("hosts listed within the call timeout");
    let state_of = |id: &str| hosts.iter().find(|host| host.id == id).map(|host| host.state);
    assert_eq!(state_of("live"), Some(HostState::Active), "{hosts:?}");
    assert_eq!(state_of("silent"), Some(HostState::Offline), "{hosts:?}");
    let took = started.elapsed();
    assert!(took >= hyperplane::plugins::ENDPOINT_OPEN_TIMEOUT, "waited for the silent host: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_during_a_call_fails_that_call_clearly_and_the_next_call_reconnects() {
    let proxy = CuttingProxy::start(libvirt_bed::bed().tcp_address.clone()).await;
    let fixture = fixture_on(EndpointAddress::Tcp(proxy.address.to_string())).await;
    let driver = &fixture.driver;
    let spec = conformance::spec(&fixture);
    driver.create_instance(spec.clone()).await.expect("created through the proxy");
    let connections_before = proxy.connections_accepted();

    proxy.cut_next_call_of(REMOTE_PROC_DOMAIN_CREATE);
    let cut = driver.start_instance(&spec.id).await;
    let Err(CallError::Driver(DriverError::Unavailable(message))) = &cut else {
        panic!("a cut connection is `unavailable`, got {cut:?}");
    };
    assert!(
        message.contains("libvirt connection") && message.contains("closed") && message.contains("domain_create"),
        "the message says what broke during which call: {message}"
    );
    assert_eq!(proxy.connections_cut(), 1);

    let started = driver.start_instance(&spec.id).await.expect("the next call reconnects");
    assert_eq!(started.state, InstanceState::Running);
    assert!(proxy.connections_accepted() > connections_before, "a fresh connection was opened");
    driver.delete_instance(&spec.id).await.expect("deleted");
}

/// One provider over two libvirt hosts with different hypervisors behind different endpoints:
/// the test driver over TCP and QEMU over the unix socket (with a scratch storage pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_provider_spans_several_libvirt_hosts_one_endpoint_each() {
    hold_test_driver_state();
    let bed = libvirt_bed::bed();
    let pool_name = format!("hp-multi-{}", &Uuid::new_v4().to_string()[..8]);
    let pool_directory = tempfile::tempdir().expect("pool directory");
    let pool_path = pool_directory.path().to_str().expect("UTF-8 path");
    libvirt_bed::virsh_ok(&bed.qemu_uri, &["pool-create-as", &pool_name, "dir", "--target", pool_path]);
    let template = template("multi");
    place_template_volume(&template);

    let hosts = json!([
        { "name": "test-tcp", "endpoint": "tcp", "uri": "test:///default", "pool": POOL },
        { "name": "qemu-unix", "endpoint": "unix", "uri": "qemu:///system", "pool": pool_name, "domain_type": "qemu" },
    ]);
    let endpoints = [
        ("tcp", EndpointAddress::Tcp(bed.tcp_address.clone())),
        ("unix", EndpointAddress::Unix(bed.socket_path.clone())),
    ];
    let driver = load_provider("conformance-libvirt-multi", hosts, &endpoints).await;

    let hosts = driver.list_hosts().await.expect("hosts listed");
    let hypervisor_of = |id: &str| hosts.iter().find(|host| host.id == id).map(|host| host.hypervisor.clone());
    let (test_hypervisor, qemu_hypervisor) = (hypervisor_of("test-tcp"), hypervisor_of("qemu-unix"));
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert!(qemu_hypervisor.as_deref().is_some_and(|name| name.contains("QEMU")), "{hosts:?}");
    assert_ne!(test_hypervisor, qemu_hypervisor, "each host reports its own hypervisor");

    // The template reaches the QEMU host through a real upload; the test host has it already.
    let image = hyperplane::plugins::ByteSource::open_file(&crate::scratch_image(), "the image").await.expect("opens");
    driver.pull_template("qemu-unix", template.clone(), image, None).await.expect("uploaded to the QEMU host");
    let mut specs = Vec::new();
    for host in ["test-tcp", "qemu-unix"] {
        let spec = conformance::spec_on(host, &template);
        driver.create_instance(spec.clone()).await.expect("created");
        specs.push(spec);
    }
    let listed = driver.list_instances().await.expect("listed");
    for spec in &specs {
        let on_hosts: Vec<&str> =
            listed.iter().filter(|instance| instance.id == spec.id).map(|instance| instance.host.as_str()).collect();
        assert_eq!(on_hosts, [spec.host.as_str()], "each instance is listed once, on its own host");
        assert_eq!(driver.get_instance(&spec.id).await.expect("found on its host").host, spec.host);
    }
    for spec in &specs {
        driver.delete_instance(&spec.id).await.expect("deleted");
    }
    driver.remove_template("qemu-unix", template).await.expect("template removed from the QEMU host");
    let volumes = libvirt_bed::virsh_ok(&bed.qemu_uri, &["vol-list", &pool_name]);
    assert!(volumes.trim().is_empty(), "nothing left in the QEMU host's pool: {volumes}");
    libvirt_bed::virsh_ok(&bed.qemu_uri, &["pool-destroy", &pool_name]);
}

/// The bytes `spans` of `bytes` replaced by a pattern.
fn with_changed_spans(bytes: &[u8], spans: &[(u64, u64)]) -> Vec<u8> {
    let mut changed = bytes.to_vec();
    for &(offset, length) in spans {
        for (index, byte) in changed[offset as usize..(offset + length) as usize].iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(13) ^ 0xa5;
        }
    }
    changed
}

/// Through the runtime and the real component against QEMU (unix socket, scratch pool): a
/// delta pull reads only the changed bytes and never the full image, and export-disk streams a
/// standalone qcow2 with the template's content into the host's sink (refused while running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_pull_and_export_disk_on_qemu_through_the_runtime() {
    use hyperplane::plugins::driver_types::ByteSpan;
    use hyperplane::plugins::{ByteSource, ImageDelta, StorageSink};

    let bed = libvirt_bed::bed();
    let pool_name = format!("hp-delta-{}", &Uuid::new_v4().to_string()[..8]);
    let pool_directory = tempfile::tempdir().expect("pool directory");
    let pool_path = pool_directory.path().to_str().expect("UTF-8 path");
    libvirt_bed::virsh_ok(&bed.qemu_uri, &["pool-create-as", &pool_name, "dir", "--target", pool_path]);
    let settings = ProviderSettings {
        name: "libvirt-delta-export".into(),
        component: ComponentSource::File(env!("BUNDLED_DRIVER_LIBVIRT_WASM").into()),
        config_json: json!({
            "hosts": [{ "name": "qemu", "endpoint": "unix", "uri": "qemu:///system", "pool": pool_name, "domain_type": "qemu" }],
        })
        .to_string(),
        call_timeout: Duration::from_secs(60),
        memory_limit_bytes: 64 << 20,
        endpoints: BTreeMap::from([("unix".to_owned(), EndpointAddress::Unix(bed.socket_path.clone()))]),
        allowed_http_hosts: Vec::new(),
        max_response_bytes: 4 << 20,
    };
    let driver = Driver::load(crate::shared_runtime(), settings, Arc::new(MemoryStateStore::new()))
        .await
        .expect("driver-libvirt loads");

    let v1_bytes: Vec<u8> = (0..4 << 20).map(|index: usize| (index.wrapping_mul(31) % 251) as u8).collect();
    let v1 =
        TemplateRef { name: "delta".into(), version: 1, tag: "1".into(), size_bytes: 4 << 20, format: DiskFormat::Raw };
    let image = ByteSource::from_reader(std::io::Cursor::new(v1_bytes.clone()), v1.size_bytes, "v1");
    driver.pull_template("qemu", v1.clone(), image, None).await.expect("v1 pulled in full");

    let spans = [(1 << 20, 64 << 10), (3 << 20, 64 << 10)];
    let v2_bytes = with_changed_spans(&v1_bytes, &spans);
    let changed: Vec<u8> = spans
        .iter()
        .flat_map(|&(offset, length)| v2_bytes[offset as usize..(offset + length) as usize].to_vec())
        .collect();
    let v2 = TemplateRef { version: 2, tag: "2".into(), ..v1.clone() };
    let image = ByteSource::from_reader(std::io::Cursor::new(v2_bytes.clone()), v2.size_bytes, "v2");
    let image_read = image.delivered();
    let changed_source = ByteSource::from_reader(std::io::Cursor::new(changed), 128 << 10, "v2 changes");
    let changes = spans.iter().map(|&(offset, length)| ByteSpan { offset, length }).collect();
    let delta = ImageDelta::new(v1.clone(), v2.size_bytes, changes, changed_source);
    let delta_read = delta.delivered();
    driver.pull_template("qemu", v2.clone(), image, Some(delta)).await.expect("v2 pulled as a delta");
    assert_eq!((image_read.get(), delta_read.get()), (0, 128 << 10), "only the changed bytes were read");
    let on_disk = std::fs::read(pool_directory.path().join("hyperplane-template-delta-v2")).expect("v2 volume");
    assert!(on_disk == v2_bytes, "v2 is v1 with the changed spans");

    let spec = conformance::spec_on("qemu", &v2);
    driver.create_instance(spec.clone()).await.expect("created");
    let (sink, buffer) = StorageSink::buffer(64 << 20);
    let exported = driver.export_disk(&spec.id, sink, 8 << 20).await.expect("exported");
    let exported_bytes = buffer.take();
    assert_eq!((exported.format, exported.size_bytes), (DiskFormat::Qcow2, exported_bytes.len() as u64));
    assert_eq!(&exported_bytes[..4], b"QFI\xfb");
    assert_eq!(&exported_bytes[8..16], &[0; 8], "no backing file");
    let exported_file = pool_directory.path().with_extension("exported.qcow2");
    std::fs::write(&exported_file, &exported_bytes).expect("export written");
    let template_file = pool_directory.path().with_extension("v2.raw");
    std::fs::write(&template_file, &v2_bytes).expect("template written");
    let compared = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .args([&template_file, &exported_file])
        .output()
        .expect("qemu-img runs");
    assert!(compared.status.success(), "same content: {}", String::from_utf8_lossy(&compared.stdout));
    std::fs::remove_file(&exported_file).ok();
    std::fs::remove_file(&template_file).ok();

    driver.start_instance(&spec.id).await.expect("started");
    let (sink, _buffer) = StorageSink::buffer(64 << 20);
    let refused = driver.export_disk(&spec.id, sink, 8 << 20).await;
    assert!(matches!(refused, Err(CallError::Driver(DriverError::Conflict(_)))), "{refused:?}");

    driver.delete_instance(&spec.id).await.expect("deleted");
    for template in [v1, v2] {
        driver.remove_template("qemu", template).await.expect("template removed");
    }
    let volumes = libvirt_bed::virsh_ok(&bed.qemu_uri, &["vol-list", &pool_name]);
    assert!(!volumes.contains("hp-") && !volumes.contains("hyperplane-"), "nothing left in the pool: {volumes}");
    libvirt_bed::virsh_ok(&bed.qemu_uri, &["pool-destroy", &pool_name]);
}
