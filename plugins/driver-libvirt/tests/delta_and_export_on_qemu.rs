//! Delta pulls and disk exports against libvirtd's QEMU driver (`qemu:///system`) in a transient
//! `dir` pool: a new template version built from a cached one plus changed spans (clone,
//! resize, ranged uploads), and an instance's disk flattened into one standalone qcow2 and
//! streamed out (`storage_vol_download`).

mod common;

use std::process::Command;

use common::{QEMU_DRIVER_URI, ScratchPool, connect, driver, guest_boot_qcow2, instance_id, small_instance};
use driver_libvirt::driver::{BytesImage, DeltaSource, DiskSink, ImageSource, template_volume_name};
use hyperplane_guest::types::{DiskFormat, Error, InstanceState, TemplateRef};

fn image_bytes(length: usize, seed: usize) -> Vec<u8> {
    (0..length).map(|index| (index.wrapping_mul(31).wrapping_add(seed) % 251) as u8).collect()
}

fn template(name: &str, version: u32, size_bytes: u64, format: DiskFormat) -> TemplateRef {
    TemplateRef { name: name.into(), version, tag: format!("{version}.0"), size_bytes, format }
}

/// A delta over in-memory bytes that counts what was read from it.
struct TestDelta {
    base: TemplateRef,
    size: u64,
    spans: Vec<(u64, u64)>,
    data: Vec<u8>,
    position: usize,
}

impl TestDelta {
    /// The delta turning `base_bytes` into `new_bytes` for the given spans.
    fn new(base: TemplateRef, new_bytes: &[u8], spans: &[(u64, u64)]) -> TestDelta {
        let data = spans
            .iter()
            .flat_map(|&(offset, length)| new_bytes[offset as usize..(offset + length) as usize].to_vec())
            .collect();
        TestDelta { base, size: new_bytes.len() as u64, spans: spans.to_vec(), data, position: 0 }
    }
}

impl DeltaSource for TestDelta {
    fn base(&self) -> TemplateRef {
        self.base.clone()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn changes(&self) -> Vec<(u64, u64)> {
        self.spans.clone()
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, String> {
        let end = self.data.len().min(self.position + max as usize);
        let chunk = self.data[self.position..end].to_vec();
        self.position = end;
        Ok(chunk)
    }
}

/// A full image that must not be read: the delta path has everything it needs.
struct UntouchedImage {
    size: u64,
    reads: u32,
}

impl ImageSource for UntouchedImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, _max: u32) -> Result<Vec<u8>, String> {
        self.reads += 1;
        Err("the full image must not be read during a delta pull".into())
    }
}

/// The volume's bytes, through the driver's own download stream.
fn download(pool: &ScratchPool, volume_name: &str) -> Vec<u8> {
    let mut client = connect(QEMU_DRIVER_URI);
    let pool_handle = client.storage_pool_lookup_by_name(&pool.name).expect("pool");
    let volume = client.storage_vol_lookup_by_name(&pool_handle, volume_name).expect("volume");
    let mut bytes = Vec::new();
    let received = client
        .storage_vol_download(&volume, 0, 0, |data| {
            bytes.extend_from_slice(data);
            Ok(())
        })
        .expect("download");
    assert_eq!(received, bytes.len() as u64);
    // The connection is still in step after the stream.
    assert!(client.connect_get_lib_version().expect("a call after the download") > 0);
    bytes
}

fn changed(bytes: &[u8], spans: &[(u64, u64)], seed: u8) -> Vec<u8> {
    let mut changed = bytes.to_vec();
    for &(offset, length) in spans {
        for (index, byte) in changed[offset as usize..(offset + length) as usize].iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(7).wrapping_add(seed) ^ 0x5a;
        }
    }
    changed
}

#[test]
fn delta_pull_clones_the_cached_base_and_uploads_only_the_changed_spans() {
    let pool = ScratchPool::create();
    let host_json = format!(r#""uri": "{QEMU_DRIVER_URI}", "pool": "{}", "domain_type": "qemu""#, pool.name);
    let driver = driver(&host_json);
    const MIB: u64 = 1 << 20;

    let v1_bytes = image_bytes(4 * MIB as usize, 0);
    let v1 = template("delta", 1, v1_bytes.len() as u64, DiskFormat::Raw);
    driver.pull_template("lv-1", &v1, &mut BytesImage { bytes: v1_bytes.clone(), position: 0 }).expect("pull v1");

    // v2: two changed 64 KiB spans.
    let spans = [(512 * 1024, 64 * 1024), (3 * MIB + 4096, 64 * 1024)];
    let v2_bytes = changed(&v1_bytes, &spans, 1);
    let v2 = template("delta", 2, v2_bytes.len() as u64, DiskFormat::Raw);
    let mut delta = TestDelta::new(v1.clone(), &v2_bytes, &spans);
    let mut image = UntouchedImage { size: v2.size_bytes, reads: 0 };
    let started = std::time::Instant::now();
    let cached = driver.pull_template_with_delta("lv-1", &v2, &mut image, Some(&mut delta)).expect("delta pull v2");
    eprintln!("delta pull of a 4 MiB image with 128 KiB changed took {:?}", started.elapsed());
    assert_eq!((cached.name.as_str(), cached.version, cached.tag.as_str()), ("delta", 2, "2.0"));
    assert_eq!(image.reads, 0, "the full image was not read");
    assert_eq!(delta.position, 128 * 1024, "exactly the changed bytes were read");
    assert!(download(&pool, &template_volume_name("delta", 2)) == v2_bytes, "v2 holds the expected bytes");
    assert!(download(&pool, &template_volume_name("delta", 1)) == v1_bytes, "the base is untouched");

    // v3 grows: the new tail is zeros except for a changed span at its end (adjacent spans
    // are merged into one upload).
    let mut v3_bytes = v2_bytes.clone();
    v3_bytes.resize(4 * MIB as usize + 300 * 1024, 0);
    let tail = v3_bytes.len() as u64 - 100 * 1024;
    let spans = [(0, 4096), (4096, 4096), (tail, 100 * 1024)];
    let v3_bytes = changed(&v3_bytes, &spans, 3);
    let v3 = template("delta", 3, v3_bytes.len() as u64, DiskFormat::Raw);
    let mut delta = TestDelta::new(v2.clone(), &v3_bytes, &spans);
    let mut image = UntouchedImage { size: v3.size_bytes, reads: 0 };
    driver.pull_template_with_delta("lv-1", &v3, &mut image, Some(&mut delta)).expect("delta pull v3");
    assert_eq!((image.reads, delta.position), (0, 108 * 1024));
    assert!(download(&pool, &template_volume_name("delta", 3)) == v3_bytes, "v3 grown and patched");

    // A base that is not cached: the full image is uploaded, the delta never read.
    let v4 = template("delta", 4, v1.size_bytes, DiskFormat::Raw);
    let mut delta = TestDelta::new(template("delta", 77, v1.size_bytes, DiskFormat::Raw), &v1_bytes, &[(0, 10)]);
    let mut full = BytesImage { bytes: v1_bytes.clone(), position: 0 };
    driver.pull_template_with_delta("lv-1", &v4, &mut full, Some(&mut delta)).expect("fallback pull v4");
    assert_eq!((delta.position, full.position), (0, v1_bytes.len()));
    assert!(download(&pool, &template_volume_name("delta", 4)) == v1_bytes);

    // A delta whose data ends early leaves no partial volume and falls back to the full image.
    let v5 = template("delta", 5, v1.size_bytes, DiskFormat::Raw);
    let mut delta = TestDelta::new(v1.clone(), &v2_bytes, &[(0, 4096)]);
    delta.spans = vec![(0, 8192)];
    let mut full = BytesImage { bytes: v2_bytes.clone(), position: 0 };
    driver.pull_template_with_delta("lv-1", &v5, &mut full, Some(&mut delta)).expect("fallback pull v5");
    assert_eq!(full.position, v2_bytes.len());
    assert!(download(&pool, &template_volume_name("delta", 5)) == v2_bytes);

    let listed: Vec<u32> = driver.list_templates("lv-1").expect("list").iter().map(|cached| cached.version).collect();
    assert_eq!(listed, vec![1, 2, 3, 4, 5]);
}

#[test]
fn delta_pull_merges_through_the_driver_for_a_qcow2_base_and_a_smaller_image() {
    let pool = ScratchPool::create();
    let host_json = format!(r#""uri": "{QEMU_DRIVER_URI}", "pool": "{}", "domain_type": "qemu""#, pool.name);
    let driver = driver(&host_json);

    // A qcow2 template: libvirt probes the uploaded file as qcow2, so a server-side clone
    // would be `qemu-img convert` and not byte-identical; the driver merges the bytes instead.
    let v1_bytes = std::fs::read(guest_boot_qcow2()).expect("guest image");
    let v1 = template("merged", 1, v1_bytes.len() as u64, DiskFormat::Qcow2);
    driver.pull_template("lv-1", &v1, &mut BytesImage { bytes: v1_bytes.clone(), position: 0 }).expect("pull v1");
    let middle = (v1_bytes.len() / 2) as u64 & !0xfff;
    let spans = [(middle, 64 * 1024), (middle + (1 << 20), 64 * 1024)];
    let v2_bytes = changed(&v1_bytes, &spans, 5);
    let v2 = template("merged", 2, v2_bytes.len() as u64, DiskFormat::Qcow2);
    let mut delta = TestDelta::new(v1.clone(), &v2_bytes, &spans);
    let mut image = UntouchedImage { size: v2.size_bytes, reads: 0 };
    let started = std::time::Instant::now();
    driver.pull_template_with_delta("lv-1", &v2, &mut image, Some(&mut delta)).expect("merged delta pull v2");
    eprintln!("merged delta pull of a {} byte qcow2 took {:?}", v2_bytes.len(), started.elapsed());
    assert_eq!((image.reads, delta.position), (0, 128 * 1024));
    assert!(download(&pool, &template_volume_name("merged", 2)) == v2_bytes, "v2 merged byte for byte");

    // A raw image that shrinks (a cut plus a changed span at the new end).
    let r1_bytes = image_bytes(3 << 20, 4);
    let r1 = template("shrunk", 1, r1_bytes.len() as u64, DiskFormat::Raw);
    driver.pull_template("lv-1", &r1, &mut BytesImage { bytes: r1_bytes.clone(), position: 0 }).expect("pull r1");
    let mut r2_bytes = r1_bytes[..(2 << 20) + 777].to_vec();
    let end = r2_bytes.len() as u64;
    let spans = [(end - 1000, 1000)];
    r2_bytes = changed(&r2_bytes, &spans, 6);
    let r2 = template("shrunk", 2, r2_bytes.len() as u64, DiskFormat::Raw);
    let mut delta = TestDelta::new(r1.clone(), &r2_bytes, &spans);
    let mut image = UntouchedImage { size: r2.size_bytes, reads: 0 };
    driver.pull_template_with_delta("lv-1", &r2, &mut image, Some(&mut delta)).expect("shrinking delta pull");
    assert_eq!((image.reads, delta.position), (0, 1000));
    assert!(download(&pool, &template_volume_name("shrunk", 2)) == r2_bytes, "r2 cut and patched");
}

#[test]
fn full_and_delta_pull_timings_of_a_128_mib_image() {
    let pool = ScratchPool::create();
    let host_json = format!(r#""uri": "{QEMU_DRIVER_URI}", "pool": "{}", "domain_type": "qemu""#, pool.name);
    let driver = driver(&host_json);
    let size = 128 << 20;
    let v1_bytes = image_bytes(size, 9);
    let v1 = template("timing", 1, size as u64, DiskFormat::Raw);
    let started = std::time::Instant::now();
    driver.pull_template("lv-1", &v1, &mut BytesImage { bytes: v1_bytes.clone(), position: 0 }).expect("pull v1");
    let full = started.elapsed();
    let spans: Vec<(u64, u64)> = (0..8).map(|index| (index * (16 << 20) + 65536, 64 * 1024)).collect();
    let v2_bytes = changed(&v1_bytes, &spans, 2);
    let v2 = template("timing", 2, size as u64, DiskFormat::Raw);
    let mut delta = TestDelta::new(v1.clone(), &v2_bytes, &spans);
    let started = std::time::Instant::now();
    driver
        .pull_template_with_delta("lv-1", &v2, &mut UntouchedImage { size: size as u64, reads: 0 }, Some(&mut delta))
        .expect("delta pull v2");
    let by_delta = started.elapsed();
    eprintln!("128 MiB raw template: full pull {full:?}, delta pull (8 x 64 KiB changed) {by_delta:?}");
    let on_disk = std::fs::read(pool.directory.join(template_volume_name("timing", 2))).expect("v2 file");
    assert!(on_disk == v2_bytes);
}

/// A sink collecting the export in memory, optionally failing after some writes.
struct MemorySink {
    bytes: Vec<u8>,
    writes: u32,
    largest_write: usize,
    fail_after: Option<u32>,
}

impl MemorySink {
    fn new() -> MemorySink {
        MemorySink { bytes: Vec::new(), writes: 0, largest_write: 0, fail_after: None }
    }
}

impl DiskSink for MemorySink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.fail_after.is_some_and(|limit| self.writes >= limit) {
            return Err("the receiver went away".into());
        }
        self.writes += 1;
        self.largest_write = self.largest_write.max(bytes.len());
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
}

fn pool_volume_names(pool: &ScratchPool) -> Vec<String> {
    let mut client = connect(QEMU_DRIVER_URI);
    let pool_handle = client.storage_pool_lookup_by_name(&pool.name).expect("pool");
    client.storage_pool_list_all_volumes(&pool_handle).expect("volumes").into_iter().map(|volume| volume.name).collect()
}

fn qemu_img(arguments: &[&str]) -> (bool, String) {
    let output = Command::new("qemu-img").args(arguments).output().expect("qemu-img runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn export_disk_writes_one_standalone_qcow2_and_leaves_nothing_behind() {
    let mut pool = ScratchPool::create();
    let host_json = format!(r#""uri": "{QEMU_DRIVER_URI}", "pool": "{}", "domain_type": "qemu""#, pool.name);
    let driver = driver(&host_json);
    let boot_image = guest_boot_qcow2();
    let image_bytes = std::fs::read(&boot_image).expect("guest image");
    let template = template("export", 1, image_bytes.len() as u64, DiskFormat::Qcow2);
    driver.pull_template("lv-1", &template, &mut BytesImage { bytes: image_bytes, position: 0 }).expect("pull");

    let id = instance_id();
    pool.domains.push(format!("hp-{id}"));
    let spec = small_instance(&id, "exported", &template);
    driver.create_instance(&spec).expect("create");

    // Stopped: exported.
    let mut sink = MemorySink::new();
    let started = std::time::Instant::now();
    let exported = driver.export_disk(&id, &mut sink).expect("export a stopped instance");
    eprintln!("export of a stopped instance ({} bytes) took {:?}", exported.size_bytes, started.elapsed());
    assert_eq!((exported.format, exported.size_bytes), (DiskFormat::Qcow2, sink.bytes.len() as u64));
    assert!(sink.largest_write <= 1 << 20, "pieces of at most 1 MiB: {}", sink.largest_write);
    // qcow2 header: magic, version, backing_file_offset (8 bytes at 8) is 0: no backing file.
    assert_eq!(&sink.bytes[..4], b"QFI\xfb");
    assert_eq!(&sink.bytes[8..16], &[0; 8], "no backing file in the header");
    let exported_file = pool.directory.with_extension("exported.qcow2");
    std::fs::write(&exported_file, &sink.bytes).expect("write the export");
    let (ok, info) = qemu_img(&["info", "--output=json", exported_file.to_str().unwrap_or_default()]);
    assert!(ok && !info.contains("backing-filename") && info.contains("\"virtual-size\": 1073741824"), "{info}");
    let (same, comparison) =
        qemu_img(&["compare", boot_image.to_str().unwrap_or_default(), exported_file.to_str().unwrap_or_default()]);
    assert!(same, "guest-visible content equals the template's: {comparison}");
    std::fs::remove_file(&exported_file).ok();
    let leftovers: Vec<String> =
        pool_volume_names(&pool).into_iter().filter(|name| name.contains(".export-")).collect();
    assert!(leftovers.is_empty(), "temporary volume removed: {leftovers:?}");

    // A receiver that stops: the export fails, nothing is left, the driver keeps working.
    let mut failing = MemorySink { fail_after: Some(2), ..MemorySink::new() };
    let failed = driver.export_disk(&id, &mut failing);
    assert!(
        matches!(&failed, Err(Error::Unavailable(message)) if message.contains("the receiver went away")),
        "{failed:?}"
    );
    assert!(pool_volume_names(&pool).iter().all(|name| !name.contains(".export-")));
    assert_eq!(driver.get_instance(&id).expect("get after a failed export").state, InstanceState::Stopped);

    // Running: refused.
    driver.start_instance(&id).expect("start");
    let refused = driver.export_disk(&id, &mut MemorySink::new());
    assert!(matches!(&refused, Err(Error::Conflict(message)) if message.contains("running")), "{refused:?}");

    // Suspended: QEMU keeps its write lock on the overlay, so libvirt's `qemu-img convert`
    // cannot read it (QEMU 10, libvirt 11.3): a conflict saying to stop the instance.
    driver.suspend_instance(&id).expect("suspend");
    let mut sink = MemorySink::new();
    match driver.export_disk(&id, &mut sink) {
        Ok(exported) => {
            eprintln!("export of a suspended instance: {} bytes", exported.size_bytes);
            assert_eq!(&sink.bytes[8..16], &[0; 8]);
        }
        Err(Error::Conflict(message)) => assert!(message.contains("suspended"), "{message}"),
        Err(error) => panic!("export of a suspended instance: {error:?}"),
    }
    assert!(pool_volume_names(&pool).iter().all(|name| !name.contains(".export-")));

    driver.stop_instance(&id, true, 0).expect("stop");
    driver.delete_instance(&id).expect("delete");
    assert!(matches!(driver.export_disk(&id, &mut MemorySink::new()), Err(Error::NotFound(_))));
    driver.remove_template("lv-1", &template).expect("remove template");
}
