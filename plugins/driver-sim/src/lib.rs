//! `driver-sim`: a SIMULATED hypervisor driver. Nothing here touches a real hypervisor; it is
//! the server's embedded default provider and the backbone of fast tests.
//!
//! It simulates hosts `sim-1`..`sim-N` (or explicit `host_specs`), instances with realistic
//! power transitions and delays, template caches with size-dependent pull times, capacity
//! limits, suspend/resume, snapshots, delta pulls, disk export, offline hosts and injected
//! backend failures. It speaks `hyperplane:driver@0.3.0` and reports every capability,
//! `delta-pull` and `export-disk` included. All of its state lives in the host's
//! key-value store (`hyperplane:host/state`), never in guest memory: the host runs several
//! instances of the component concurrently and discards instances after failures.
//!
//! # Config (JSON given to `init`; every key optional, unknown keys are `invalid`)
//! `hosts` (4), `cpu` (16), `ram_mb` (65536), `disk_gb` (500), `arch` (`"amd64"`|`"arm64"`);
//! or `host_specs: [{id, cpu?, ram_mb?, disk_gb?, arch?, offline?}]` instead of `hosts`, sizes
//! defaulting to the top-level ones; `delays_ms: {create 200, start 300, stop 200, restart 400,
//! delete 100, pull 500, snapshot 150}`; `pull_bytes_per_sec` (1 GiB/s, 0 = no size-dependent
//! pull time); `failure_rate` (0.0); `offline_hosts` ([]); `guests_ignore_shutdown` (false: every
//! graceful stop then lasts its whole grace period). All delays and `pull_bytes_per_sec` at 0 is
//! the zero-delay mode for benchmarks: no sleeping, no progress reports, one write per transition.
//!
//! # Behaviour and errors
//! - `create-instance`: `invalid` for an empty id or template name, 0 vcpu or ram, a malformed
//!   MAC, or a size that exceeds the host itself; `not-found` for an unknown host;
//!   `unavailable` for an offline host; `conflict` if the id exists, if the template is not
//!   cached on the host (the caller is expected to `pull-template` first; no auto-pull) or if
//!   the host's allocated vcpu/ram/disk (instances in any state) leave too little room.
//!   Creates a `stopped` instance with the spec's MAC or one derived from the id.
//! - `start`: stopped → starting → running (with an IP derived from the id, 10.x.y.z); a
//!   running instance is returned as is, a starting one is waited for; `conflict` while
//!   stopping or suspended (resume it instead). `stop(force, grace-ms)`: running → stopping →
//!   stopped in `delays.stop`, or in the grace period plus a forced power-off when that is
//!   shorter (`invalid` above one hour); `force` takes a tenth of the stop delay and may
//!   interrupt a start or restart (without it: `conflict`); a suspended instance is powered off;
//!   a stopped one is returned as is. `restart(force)`: running → stopping → starting →
//!   running; `conflict` when stopped (start it instead). `suspend`: running → suspended and
//!   `resume`: suspended → running, at once, keeping the IP; `conflict` from other states.
//!   Transitions are persisted with their completion time, so they finish on schedule even if
//!   the calling instance is killed.
//! - `delete-instance`: in any state, with its snapshots; `not-found` if absent.
//! - Snapshots, per instance, oldest first: `create-snapshot` of a running, stopped or
//!   suspended instance (`conflict` mid-transition or for a name in use; `invalid` for an empty
//!   name) takes `delays.snapshot` and becomes the current snapshot; `revert-snapshot` returns
//!   the instance to the snapshot's state (with its IP when running) in `delays.snapshot`;
//!   `delete-snapshot` keeps the instance as it is; an unknown name is `not-found`.
//! - `get-instance`/`list-instances`/`list-hosts`: answered from the inventory, also for
//!   offline hosts. Every other call that needs an offline host fails `unavailable`.
//! - `pull-template`: a cached template returns at once, reading nothing. With a `delta` whose
//!   base (name and version) is cached on the host, builds the new version from it without
//!   reading the image: reads only the changed bytes (`invalid` if their count differs from
//!   the changed spans' lengths, if the spans are out of order, overlap or pass the delta's
//!   size, if that size differs from the template's, or if a qcow2 template's start is changed
//!   to something other than the qcow2 magic; `unavailable` if the host cannot read them),
//!   then waits `delays_ms.pull` + changed bytes / `pull_bytes_per_sec`. Otherwise (no delta,
//!   or its base not cached) reads the image byte-source to its end (`unavailable` if the host
//!   cannot read it; `invalid` if a non-empty image differs from the template's size or a
//!   qcow2 one lacks the qcow2 magic; an empty image is accepted, the simulator makes one up),
//!   then waits `delays_ms.pull` + size / `pull_bytes_per_sec`. No image bytes are kept: the
//!   cache entry records the template (with its format), how many bytes the pull read and the
//!   delta's base, if any. `remove-template`: `not-found` if not cached, `conflict` while an
//!   instance on that host uses it. `list-templates`: the host's cache.
//! - `export-disk`: for a stopped or suspended instance (`conflict` otherwise, `not-found` if
//!   absent), writes a made-up disk into the sink in writes of at most 1 MiB: its template's
//!   size (1 MiB if that is 0) in its template's format, a pattern seeded by the instance id
//!   behind the qcow2 magic for qcow2 (see [`transfer::SimulatedDisk`]), taking size /
//!   `pull_bytes_per_sec`; `unavailable` when the sink fails.
//! - `exec`/`console`: `conflict` unless running; see [`script`] for the simulated shell;
//!   the console is VNC on 127.0.0.1 with a port derived from the id.
//! - `failure_rate`: each mutating call (create, start, stop, restart, delete, pull, remove
//!   template, suspend, resume, snapshots) that would change something fails with that
//!   probability, before changing
//!   anything, with `backend { code: 1, message: "simulated failure of …" }`.
//!
//! Code map: [`config`] (the provider config and its validation), [`records`] (what is
//! persisted, under which keys), [`simulator`] (the operations, pure Rust over a store and an
//! environment), [`transfer`] (delta and sink traits, the simulated disk), [`script`] (simulated `exec`), [`identity`] (derived IP, MAC, console port),
//! [`environment`] (clock, sleep, progress, randomness) and `component` (the wit-bindgen
//! export glue). Everything but `component` is unit-tested natively.

pub mod config;
pub mod environment;
pub mod identity;
pub mod records;
pub mod script;
pub mod simulator;
pub mod transfer;

// Compiled natively too (to keep it checked), but only exported inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;

pub use config::Settings;
pub use environment::{Environment, SystemEnvironment};
pub use simulator::Simulator;
