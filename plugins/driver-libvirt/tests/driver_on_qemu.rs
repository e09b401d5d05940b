//! The driver against libvirtd's QEMU driver (`qemu:///system`) over TCP, in a transient `dir`
//! pool under `$LIBVIRT_STATE_DIR` that the test creates and removes: template upload through
//! a libvirt stream (the test driver has no upload), the overlay and domain XML accepted and
//! started by real QEMU (TCG), console port, stop, delete; a serial console port held by another
//! program given up for a free one.

mod common;

use common::{QEMU_DRIVER_URI, ScratchPool, driver, instance_id, small_instance};
use driver_libvirt::driver::{BytesImage, ImageSource, template_volume_name};
use hyperplane_guest::types::{ConsoleProtocol, DiskFormat, Error, InstanceSpec, InstanceState, TemplateRef};

fn image_bytes(length: usize) -> Vec<u8> {
    (0..length).map(|index| (index.wrapping_mul(31) % 251) as u8).collect()
}

fn template(size_bytes: u64) -> TemplateRef {
    TemplateRef { name: "upload".into(), version: 2, tag: "2.0".into(), size_bytes, format: DiskFormat::Raw }
}

fn summary(templates: &[hyperplane_guest::types::CachedTemplate]) -> Vec<(String, u32, String, u64)> {
    templates
        .iter()
        .map(|cached| (cached.name.clone(), cached.version, cached.tag.clone(), cached.size_bytes))
        .collect()
}

/// An image source that fails after its first chunk.
struct FailingImage;

impl ImageSource for FailingImage {
    fn size(&self) -> u64 {
        8 << 20
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, String> {
        static READS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if READS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Ok(vec![7; max as usize])
        } else {
            Err("host copy unreadable".into())
        }
    }
}

/// An image source that must not be read.
struct UnreadableImage;

impl ImageSource for UnreadableImage {
    fn size(&self) -> u64 {
        1
    }

    fn read(&mut self, _max: u32) -> Result<Vec<u8>, String> {
        panic!("a cached template must not be read again")
    }
}

#[test]
fn template_upload_then_instance_on_qemu() {
    let mut pool = ScratchPool::create();
    let host_json = format!(r#""uri": "{QEMU_DRIVER_URI}", "pool": "{}", "domain_type": "qemu""#, pool.name);
    let driver = driver(&host_json);

    let hosts = driver.list_hosts().expect("list hosts");
    eprintln!("qemu host report: {:?}", hosts[0]);
    assert_eq!(hosts[0].state, hyperplane_guest::types::HostState::Active);
    assert!(hosts[0].hypervisor.starts_with("QEMU ") && hosts[0].hypervisor.contains(" / libvirt "), "{:?}", hosts[0]);

    // Upload: several stream packets and an odd tail.
    let bytes = image_bytes(16 * 1024 * 1024 + 123);
    let template = template(bytes.len() as u64);
    let started = std::time::Instant::now();
    let cached = driver
        .pull_template("lv-1", &template, &mut BytesImage { bytes: bytes.clone(), position: 0 })
        .expect("pull template");
    eprintln!("upload of {} bytes took {:?}", bytes.len(), started.elapsed());
    assert_eq!((cached.name.as_str(), cached.version, cached.tag.as_str()), ("upload", 2, "2.0"));
    let on_disk = std::fs::read(pool.directory.join(template_volume_name("upload", 2))).expect("uploaded file");
    assert!(on_disk == bytes, "the volume holds exactly the uploaded bytes");
    let again = driver.pull_template("lv-1", &template, &mut UnreadableImage).expect("second pull");
    assert_eq!(summary(&[again]), summary(std::slice::from_ref(&cached)));
    let listed = driver.list_templates("lv-1").expect("list templates");
    assert_eq!(summary(&listed), vec![("upload".to_owned(), 2, "2.0".to_owned(), bytes.len() as u64)]);

    // A source failing mid-upload aborts the stream and leaves nothing behind.
    let mut broken = template.clone();
    broken.version = 3;
    broken.size_bytes = 8 << 20;
    let failed = driver.pull_template("lv-1", &broken, &mut FailingImage);
    assert!(
        matches!(&failed, Err(Error::Unavailable(message)) if message.contains("host copy unreadable")),
        "{failed:?}"
    );
    assert_eq!(summary(&driver.list_templates("lv-1").expect("list templates")), summary(&[cached]));
    let mut empty = template.clone();
    empty.version = 4;
    let refused = driver.pull_template("lv-1", &empty, &mut BytesImage { bytes: Vec::new(), position: 0 });
    assert!(matches!(&refused, Err(Error::Invalid(message)) if message.contains("upload")), "{refused:?}");

    // An instance on that template, started by QEMU.
    let id = instance_id();
    pool.domains.push(format!("hp-{id}"));
    let spec = small_instance(&id, "qemu-instance", &template);
    let timer = std::time::Instant::now();
    let created = driver.create_instance(&spec).expect("create on qemu");
    eprintln!("create-instance on qemu took {:?}", timer.elapsed());
    let mac = created.mac.clone().expect("a mac was chosen");
    assert!(mac.starts_with("52:54:00:"), "{mac}");
    assert!(pool.directory.join(format!("hp-{id}.qcow2")).exists(), "overlay volume");
    let timer = std::time::Instant::now();
    let running = driver.start_instance(&id).expect("start on qemu");
    eprintln!("start-instance on qemu took {:?}", timer.elapsed());
    assert_eq!((running.state, running.mac.as_deref()), (InstanceState::Running, Some(mac.as_str())));
    let fetched = driver.get_instance(&id).expect("get");
    assert_eq!((fetched.state, fetched.ip.as_deref()), (InstanceState::Running, None), "user-mode nic: no address");
    let console = driver.console(&id).expect("console");
    assert_eq!((console.protocol, console.host.as_str()), (ConsoleProtocol::Vnc, "127.0.0.1"));
    assert!(console.port >= 5900, "{console:?}");
    assert!(matches!(driver.remove_template("lv-1", &template), Err(Error::Conflict(_))), "template in use");

    // The firmware ignores the power button: graceful stop falls back to power-off after the grace.
    let stopping = std::time::Instant::now();
    assert_eq!(driver.stop_instance(&id, false, 300).expect("stop").state, InstanceState::Stopped);
    assert!(stopping.elapsed() >= std::time::Duration::from_millis(300));
    let timer = std::time::Instant::now();
    driver.delete_instance(&id).expect("delete");
    eprintln!("delete-instance on qemu took {:?}", timer.elapsed());
    assert!(!pool.directory.join(format!("hp-{id}.qcow2")).exists(), "overlay removed with the instance");
    assert!(matches!(driver.get_instance(&id), Err(Error::NotFound(_))));

    // Removed through another connection (another instance of the plugin), the template's
    // path this connection learned is stale: the create looks it up again and is refused.
    common::driver(&host_json).remove_template("lv-1", &template).expect("remove template");
    assert!(driver.list_templates("lv-1").expect("list").is_empty());
    let late = InstanceSpec { id: instance_id(), ..spec };
    pool.domains.push(format!("hp-{}", late.id));
    let refused = driver.create_instance(&late);
    assert!(matches!(&refused, Err(Error::Conflict(message)) if message.contains("pull it first")), "{refused:?}");
    assert!(!pool.directory.join(format!("hp-{}.qcow2", late.id)).exists(), "no overlay left");
    assert!(matches!(driver.remove_template("lv-1", &template), Err(Error::NotFound(_))));
}

/// A port held by a listener and the free port after it, both below the kernel's ephemeral
/// range: the outgoing connections of the tests running meanwhile take their ports from that
/// range, so one of them cannot take the free port before QEMU binds it.
fn held_port_and_free_neighbour() -> (std::net::TcpListener, u16) {
    let start = 20_000 + (std::process::id() % 2_000) as u16 * 4;
    (start..30_000)
        .step_by(2)
        .find_map(|port| {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
            std::net::TcpListener::bind(("127.0.0.1", port + 1)).ok()?;
            Some((listener, port + 1))
        })
        .expect("two free adjacent ports below 30000")
}

#[test]
fn a_serial_console_port_another_program_holds_is_given_up_for_a_free_one() {
    use driver_libvirt::serial_ports::{Claim, claim_key};
    use hyperplane_guest::state::{JsonState, MemoryStore};

    let mut pool = ScratchPool::create();
    // Two ports: this test holds the first; the second is claimed by another instance until
    // the create has taken the first.
    let (listener, free) = held_port_and_free_neighbour();
    let held = listener.local_addr().expect("address").port();
    let store = std::sync::Arc::new(MemoryStore::new());
    let state = JsonState::new(store.clone());
    let host_json = format!(
        r#""uri": "{QEMU_DRIVER_URI}", "pool": "{}", "domain_type": "qemu", "serial_ports": "{held}-{free}""#,
        pool.name
    );
    let driver = common::driver_with_state(&host_json, store);
    // Its own template: the other test checks that nothing uses its template.
    let small = TemplateRef { name: "serial".into(), version: 1, ..template(1 << 20) };
    driver
        .pull_template("lv-1", &small, &mut BytesImage { bytes: image_bytes(1 << 20), position: 0 })
        .expect("pull template");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let other = Claim { instance: "another".into(), since: now };
    state.set_json(&claim_key("lv-1", free), &other).expect("claim");

    let id = instance_id();
    pool.domains.push(format!("hp-{id}"));
    let spec = small_instance(&id, "serial", &small);
    driver.create_instance(&spec).expect("create");
    let mine = state.get_json::<Claim>(&claim_key("lv-1", held)).expect("read").map(|claim| claim.instance);
    assert_eq!(mine.as_deref(), Some(id.as_str()), "the only free port");
    state.delete(&claim_key("lv-1", free)).expect("release");

    assert_eq!(driver.start_instance(&id).expect("start").state, InstanceState::Running);
    let console = driver.console(&id).expect("console");
    assert_eq!((console.protocol, console.port), (ConsoleProtocol::Serial, free), "moved to the free port");
    let outside = state.get_json::<Claim>(&claim_key("lv-1", held)).expect("read").map(|claim| claim.instance);
    assert_eq!(outside.as_deref(), Some(""), "the held port is left to the program holding it");
    let serial = std::net::TcpStream::connect(("127.0.0.1", free));
    assert!(serial.is_ok(), "QEMU listens on the new port: {serial:?}");

    driver.delete_instance(&id).expect("delete");
    assert_eq!(state.get_json::<Claim>(&claim_key("lv-1", free)).expect("read"), None, "given back");
    drop(listener);
    driver.remove_template("lv-1", &small).expect("remove template");
}
