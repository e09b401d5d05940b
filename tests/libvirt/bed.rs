//! The libvirt test bed as Rust tests and benchmarks see it: `setup.sh` (install libvirt and
//! QEMU if needed, start libvirtd) and `build-guest.sh` run once per process, plus `virsh`
//! for checking what is left on the daemon. Included with `#[path]` by every target that
//! needs it; std only.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Where the running libvirtd answers (`setup.sh`'s `KEY=VALUE` output).
#[derive(Debug)]
pub struct LibvirtBed {
    /// `127.0.0.1:<port>`: TCP, auth none.
    pub tcp_address: String,
    /// `127.0.0.1:<port>`: TLS, client certificates from the test CA.
    pub tls_address: String,
    /// The test certificates: `client/`, `other-ca/` and `unknown-client/` in libvirt's
    /// `pkipath` layout (`setup.sh` says which is which).
    pub pki_directory: PathBuf,
    /// The unix socket, auth none.
    pub socket_path: PathBuf,
    /// `test+tcp://…/default`: libvirt's built-in test driver.
    pub test_uri: String,
    /// `qemu+tcp://…/system`.
    pub qemu_uri: String,
    /// The python that has python3-libvirt.
    pub python: PathBuf,
}

/// The tiny guest `build-guest.sh` builds.
#[derive(Debug)]
pub struct GuestImage {
    /// Bootable qcow2 image: SYSLINUX, kernel, busybox initramfs.
    pub boot_qcow2: PathBuf,
    /// What the guest prints on its serial console once booted.
    pub ready_line: String,
}

/// `tests/libvirt` of this repository, found from the crate that includes this file.
fn scripts_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|directory| directory.join("tests/libvirt"))
        .find(|scripts| scripts.join("setup.sh").is_file())
        .expect("tests/libvirt/setup.sh above the crate directory")
}

/// Runs a script of `tests/libvirt` and parses the `KEY=VALUE` lines it prints.
fn run_script(script: &str, arguments: &[&str]) -> BTreeMap<String, String> {
    let path = scripts_directory().join(script);
    let output = Command::new("bash")
        .arg(&path)
        .args(arguments)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", path.display()));
    assert!(output.status.success(), "{} failed ({}); its errors are above", path.display(), output.status);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

fn required(values: &BTreeMap<String, String>, key: &str) -> String {
    values.get(key).cloned().unwrap_or_else(|| panic!("the libvirt scripts printed no {key}"))
}

/// Starts (or finds) libvirtd; the first call per process may install packages.
pub fn bed() -> &'static LibvirtBed {
    static BED: OnceLock<LibvirtBed> = OnceLock::new();
    BED.get_or_init(|| {
        let values = run_script("setup.sh", &[]);
        LibvirtBed {
            tcp_address: required(&values, "LIBVIRT_TCP"),
            tls_address: required(&values, "LIBVIRT_TLS"),
            pki_directory: required(&values, "LIBVIRT_PKI").into(),
            socket_path: required(&values, "LIBVIRT_SOCK").into(),
            test_uri: required(&values, "LIBVIRT_TEST_URI"),
            qemu_uri: required(&values, "LIBVIRT_QEMU_URI"),
            python: required(&values, "LIBVIRT_PYTHON").into(),
        }
    })
}

/// Builds the guest image (cached across runs under the system temp directory).
pub fn guest_image() -> &'static GuestImage {
    static GUEST: OnceLock<GuestImage> = OnceLock::new();
    GUEST.get_or_init(|| {
        let directory = std::env::temp_dir().join("hyperplane-guest");
        let values = run_script("build-guest.sh", &[directory.to_str().expect("temp dir is UTF-8")]);
        GuestImage {
            boot_qcow2: required(&values, "GUEST_BOOT_QCOW2").into(),
            ready_line: required(&values, "GUEST_READY_LINE"),
        }
    })
}

/// Runs `virsh -c <uri> <arguments>`; `Err` carries virsh's error output.
pub fn virsh(uri: &str, arguments: &[&str]) -> Result<String, String> {
    let output = Command::new("virsh")
        .args(["-q", "-c", uri])
        .args(arguments)
        .output()
        .map_err(|error| format!("cannot run virsh: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("virsh {}: {}", arguments.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Runs `virsh` and fails the test on error.
pub fn virsh_ok(uri: &str, arguments: &[&str]) -> String {
    virsh(uri, arguments).unwrap_or_else(|message| panic!("{message}"))
}

/// The non-empty lines of a `virsh … --name` listing.
pub fn names(listing: &str) -> Vec<String> {
    listing.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

/// An interactive `virsh` holding one connection open: libvirt's test driver keeps its state
/// only while some connection to it is open. Closed (and the state dropped if it was the last
/// connection) when this is dropped.
#[derive(Debug)]
pub struct ConnectionHolder {
    shell: Child,
}

impl ConnectionHolder {
    pub fn open(uri: &str) -> ConnectionHolder {
        let mut shell = Command::new("virsh")
            .args(["-q", "-c", uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("virsh starts");
        // virsh connects before it prompts for the first command: wait for the prompt.
        let mut prompt = [0_u8; 5];
        shell.stdout.as_mut().expect("piped stdout").read_exact(&mut prompt).expect("virsh connects and prompts");
        assert_eq!(&prompt, b"virsh", "virsh -c {uri} did not connect");
        ConnectionHolder { shell }
    }
}

impl Drop for ConnectionHolder {
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}
