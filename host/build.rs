//! Builds the guest components the host embeds and tests against (`driver-sim`,
//! `driver-libvirt`, the auth schemes `auth-token`, `auth-basic`, `auth-session`, `auth-apikey`,
//! `auth-oidc`, the storage plugins `storage-fs` and `storage-s3`, and the `driver-hostile`
//! fixture) for `wasm32-wasip2`, and tells the host where they are.
//!
//! A nested `cargo build --profile wasm --target wasm32-wasip2` runs in its own target
//! directory, `<target dir>/wasm`, so it never waits for the lock the outer build holds. The
//! nested cargo gets a clean environment: the outer build's flags, wrappers (clippy's
//! `RUSTC_WORKSPACE_WRAPPER`), profile overrides and jobserver are for the host, not the guests.
//!
//! Emits `BUNDLED_DRIVER_SIM_WASM`, `BUNDLED_DRIVER_LIBVIRT_WASM`, `BUNDLED_AUTH_TOKEN_WASM`,
//! `BUNDLED_AUTH_BASIC_WASM`, `BUNDLED_AUTH_SESSION_WASM`, `BUNDLED_AUTH_APIKEY_WASM`,
//! `BUNDLED_AUTH_OIDC_WASM`, `BUNDLED_STORAGE_FS_WASM`, `BUNDLED_STORAGE_S3_WASM` and
//! `FIXTURE_DRIVER_HOSTILE_WASM` (absolute paths of the `.wasm` components) for `env!` in the
//! host. Also asks for the host to be rebuilt when a migration is added (`sqlx::migrate!` embeds
//! them).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";
/// The custom profile in the workspace `Cargo.toml`.
const GUEST_PROFILE: &str = "wasm";

/// A guest crate to build: its package name, the artifact's file stem and the variable that
/// carries the artifact's path to the host.
struct Guest {
    package: &'static str,
    artifact_stem: &'static str,
    path_variable: &'static str,
}

const GUESTS: [Guest; 10] = [
    Guest { package: "driver-sim", artifact_stem: "driver_sim", path_variable: "BUNDLED_DRIVER_SIM_WASM" },
    Guest { package: "driver-libvirt", artifact_stem: "driver_libvirt", path_variable: "BUNDLED_DRIVER_LIBVIRT_WASM" },
    Guest { package: "auth-token", artifact_stem: "auth_token", path_variable: "BUNDLED_AUTH_TOKEN_WASM" },
    Guest { package: "auth-basic", artifact_stem: "auth_basic", path_variable: "BUNDLED_AUTH_BASIC_WASM" },
    Guest { package: "auth-session", artifact_stem: "auth_session", path_variable: "BUNDLED_AUTH_SESSION_WASM" },
    Guest { package: "auth-apikey", artifact_stem: "auth_apikey", path_variable: "BUNDLED_AUTH_APIKEY_WASM" },
    Guest { package: "auth-oidc", artifact_stem: "auth_oidc", path_variable: "BUNDLED_AUTH_OIDC_WASM" },
    Guest { package: "storage-fs", artifact_stem: "storage_fs", path_variable: "BUNDLED_STORAGE_FS_WASM" },
    Guest { package: "storage-s3", artifact_stem: "storage_s3", path_variable: "BUNDLED_STORAGE_S3_WASM" },
    Guest { package: "driver-hostile", artifact_stem: "driver_hostile", path_variable: "FIXTURE_DRIVER_HOSTILE_WASM" },
];

/// What every component (as opposed to a core module) starts with: magic, version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace_root = manifest_dir.parent().expect("the host crate lives in the workspace root").to_path_buf();
    for watched in ["wit", "plugins", "tests/fixtures", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace_root.join(watched).display());
    }
    // `sqlx::migrate!` embeds the migrations: a new one must rebuild the crate.
    println!("cargo:rerun-if-changed={}", manifest_dir.join("migrations").display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let guest_target_dir = outer_target_dir(&workspace_root).join("wasm");
    ensure_guest_target_installed();
    build_guests(&workspace_root, &guest_target_dir);

    for guest in &GUESTS {
        let artifact =
            guest_target_dir.join(GUEST_TARGET).join(GUEST_PROFILE).join(format!("{}.wasm", guest.artifact_stem));
        check_is_component(&artifact);
        println!("cargo:rustc-env={}={}", guest.path_variable, artifact.display());
    }
}

/// The outer build's target directory: the ancestor of `OUT_DIR` that cargo tagged with
/// `CACHEDIR.TAG` (this covers `--target-dir`, `CARGO_TARGET_DIR` and `build.target-dir`);
/// failing that `CARGO_TARGET_DIR`, else `<workspace>/target`.
fn outer_target_dir(workspace_root: &Path) -> PathBuf {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Some(tagged) = out_dir.ancestors().find(|directory| directory.join("CACHEDIR.TAG").is_file()) {
        return tagged.to_path_buf();
    }
    match env::var_os("CARGO_TARGET_DIR") {
        Some(directory) => workspace_root.join(directory),
        None => workspace_root.join("target"),
    }
}

/// Installs the wasm32-wasip2 standard library through rustup if this toolchain lacks it.
fn ensure_guest_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let installed = libdir.is_some_and(|libdir| {
        fs::read_dir(libdir).is_ok_and(|entries| {
            entries.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with("libstd-"))
        })
    });
    if installed {
        return;
    }
    println!(
        "cargo:warning=the {GUEST_TARGET} standard library is missing; running `rustup target add {GUEST_TARGET}`"
    );
    let status = Command::new("rustup").args(["target", "add", GUEST_TARGET]).status();
    if !status.is_ok_and(|status| status.success()) {
        panic!(
            "the {GUEST_TARGET} standard library is missing and `rustup target add {GUEST_TARGET}` failed; \
             install it and build again"
        );
    }
}

fn build_guests(workspace_root: &Path, guest_target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace_root)
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace_root.join("Cargo.toml"))
        .args(["--profile", GUEST_PROFILE, "--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(guest_target_dir);
    for guest in &GUESTS {
        command.args(["-p", guest.package]);
    }
    for (name, _) in env::vars_os() {
        if leaks_into_nested_build(&name.to_string_lossy()) {
            command.env_remove(&name);
        }
    }
    command.env("CARGO_TERM_COLOR", "never").env("CARGO_TERM_PROGRESS_WHEN", "never");

    let output =
        command.output().unwrap_or_else(|error| panic!("could not run {cargo:?} to build the guests: {error}"));
    if !output.status.success() {
        let command_line: Vec<String> = std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        panic!(
            "building the guest components failed ({}); to reproduce, run in {}:\n  {}\n\n{}",
            output.status,
            workspace_root.display(),
            command_line.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Whether an environment variable of the outer build would change the nested one: cargo's
/// own settings (flags, profiles, target, jobserver, build-script variables), rustc flags and
/// wrappers. Registry, network and `CARGO_HOME` settings stay.
fn leaks_into_nested_build(name: &str) -> bool {
    const KEPT_CARGO_PREFIXES: [&str; 5] =
        ["CARGO_HOME", "CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTRIES_", "CARGO_REGISTRY_"];
    const LEAKING: [&str; 15] = [
        "CARGO",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "RUSTDOC",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "NUM_JOBS",
        "MAKEFLAGS",
    ];
    if name.starts_with("CARGO_") {
        return !KEPT_CARGO_PREFIXES.iter().any(|prefix| name.starts_with(prefix));
    }
    name.starts_with("__CARGO") || name.starts_with("DEP_") || name == "MFLAGS" || LEAKING.contains(&name)
}

fn check_is_component(artifact: &Path) {
    let mut header = [0_u8; 8];
    let read = fs::File::open(artifact).and_then(|mut file| file.read_exact(&mut header));
    if let Err(error) = read {
        panic!("the guest build succeeded but {} is unreadable: {error}", artifact.display());
    }
    if header != COMPONENT_HEADER {
        panic!("{} is not a WebAssembly component (it may be a core module)", artifact.display());
    }
}
