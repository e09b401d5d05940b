//! `driver-libvirt`: a Hyperplane driver (`hyperplane:driver@0.3.0`) for libvirt hosts. It
//! speaks libvirt's remote RPC protocol (program `0x20008086`, version 1, XDR) itself over a
//! byte stream the host opens for it (`hyperplane:host/endpoints`: libvirtd's TCP or unix
//! socket, auth `none`); no C libvirt. One provider can span several libvirt hosts, one
//! endpoint each.
//!
//! # Config (JSON given to `init`; unknown keys are `invalid`, errors name the key)
//! - `hosts` (required, at least one): `[{ name, endpoint, …host keys }]`. `name` is the host
//!   id Hyperplane uses (`instance-spec.host`, `host-report.id`); `endpoint` the granted
//!   endpoint of that host's libvirtd.
//! - Host keys, per entry or at the top level as the default of every host:
//!   `uri` (`qemu:///system`; `test:///default` for libvirt's test driver) — the connection
//!   opened over the endpoint; `pool` (`default`) — storage pool for template and instance
//!   volumes; `network` (a libvirt network) or `bridge` (a host bridge) for NICs, neither for a
//!   user-mode NIC; `domain_type` (`auto`: `kvm` if the capabilities offer it for the host's
//!   arch, else `qemu`, else the first offered, e.g. `test`; or a fixed type); `console_log_dir`
//!   (absolute directory on the libvirt host for serial console logs); `vnc_listen`
//!   (`127.0.0.1`) — where VNC and TCP serial consoles listen; `serial_ports` (a range such as
//!   `10000-10999`) — serial consoles on raw TCP, a port per instance ([`serial_ports`]), which
//!   `console` then answers instead of VNC; `address` (defaults to `vnc_listen`) — the host
//!   address returned by `console`.
//!
//! # What an instance is on libvirt
//! A persistent domain `hp-<instance id>` (its UUID is the instance id) plus a qcow2 overlay
//! volume `hp-<id>.qcow2` in the host's pool, backed by the template volume
//! `hyperplane-template-<name>-v<version>` (a raw container holding the uploaded image; the
//! overlay names the template's real format; its capacity is the larger of `disk-gb` and the
//! template's size). See [`domain_xml`] for every element. Domains
//! without the `hp-` prefix are not reported or touched.
//!
//! # Operations (calls per operation, on a warm connection)
//! Handles are built rather than looked up where libvirtd resolves them without the looked-up
//! parts: a domain of a UUID-shaped id is `(hp-<id>, uuid, id -1)` (resolved by UUID), a volume
//! is `(pool name, volume name, key "")` (resolved by pool and name); a missing object fails
//! the real call with `NO_DOMAIN` / `NO_STORAGE_VOL`, so errors are as with a lookup. Counted
//! in `tests/driver_on_test_driver.rs` (`calls_per_operation_on_a_warm_connection`).
//! - `list-hosts`: node info, pool info, pool volumes (capabilities, versions and the pool
//!   handle are fetched once per connection); an unreachable host is `offline`, not an error.
//! - `list-instances`: one `connect_get_all_domain_stats(state)` per host (state, and the MAC
//!   when this instance has seen it; IP comes from `get-instance`). `unavailable` if any host
//!   cannot be listed, since a partial list would read as instances gone.
//! - `create-instance` (2 calls): the overlay volume `hp-<id>.qcow2` on the template volume's
//!   path, `domain_define_xml_flags`
//!   (the path is looked up once per connection and template, +1 call; the lookup checks
//!   presence: missing → `conflict`; a known path that turned stale, the template removed
//!   through another connection, gets the overlay refused by libvirt and is looked up again)
//!   (without schema validation, which costs ~15 ms; the tests validate our XML). Only when the
//!   overlay is refused is the domain looked up by UUID: it exists → `conflict` (a define of an
//!   existing name and UUID would redefine it); else the overlay is left from an interrupted
//!   create and is replaced. A failed define removes the overlay. Without a MAC in the spec
//!   the driver picks one as libvirt would for `kvm`/`qemu`/`test` domains (`52:54:00` and three
//!   random bytes); for other domain types libvirt picks it and the live XML is read (+1 call).
//!   With `serial_ports`, a port is claimed for the serial console first (in the plugin's
//!   state: a scan of the host's claims and one compare-and-swap; no libvirt call).
//! - `start` (`domain_create`, 1 call; idempotent: on a refusal the state decides; a serial
//!   console port held by another program is exchanged for a free one and the start repeated,
//!   see [`serial_ports`]), `stop`
//!   (`force` or `grace-ms` 0: state + destroy; else the ACPI power button, state polled with
//!   backoff up to `grace-ms`, then destroy; a suspended instance is destroyed at once),
//!   `restart` (`force`: destroy + create; else reboot; `conflict` when stopped),
//!   `suspend`/`resume` (idempotent; `conflict` when stopped), `delete-instance` (3 calls):
//!   destroy whatever the state (a stopped domain answers "not running", as a repeat after a
//!   destroy that acted would: so a dead cached connection is replaced and the delete repeated),
//!   delete the overlay `hp-<id>.qcow2` in the host's pool (none there → the pool the domain's
//!   disk names, from its inactive XML), undefine with
//!   managed save, snapshot, NVRAM and checkpoint metadata (a daemon refusing the last two
//!   with `INVALID_ARG`, like the test driver, is remembered per connection and gets the
//!   others only)). The overlay goes before the domain so the domain's XML can still locate
//!   it; a failed undefine leaves the domain without its disk, and a repeated delete finishes.
//! - `get-instance`: state, MAC from the live XML, IP (first IPv4) from the network's DHCP
//!   leases (only with `network`) then the guest agent; none → no IP.
//! - `pull-template`: returns at once if the volume exists (without reading the image); else
//!   creates it with the image's size and uploads the image through a libvirt stream, with
//!   progress; a failed upload removes the volume. An empty image is `invalid`. Tag and size are
//!   kept in the provider's state store. `remove-template`: `conflict` while an `hp-` domain's
//!   metadata names it. With an `image-delta` whose base is cached (`delta-pull`): a raw base
//!   is cloned on the libvirt host (`storage_vol_create_xml_from`), grown if needed
//!   (`storage_vol_resize`), and the changed spans uploaded at their offsets; a qcow2 base (or
//!   a smaller image) is merged byte for byte through the driver (base downloaded on a second
//!   connection while the new image is uploaded); a missing base or a failure before the
//!   volume is complete removes it and uploads the full image instead.
//! - `export-disk`: `conflict` while running (and while suspended: QEMU holds the disk's lock);
//!   a flattened qcow2 copy of the overlay (`storage_vol_create_xml_from`, i.e. `qemu-img
//!   convert`) streamed out with `storage_vol_download` in pieces of at most 1 MiB, then
//!   deleted (also on failure).
//! - `console`: from the live XML, the serial console's TCP port when the domain has one, else the
//!   VNC port (`conflict` when not running); host = `address`.
//! - Snapshots: libvirt snapshots (internal for qcow2 with QEMU), oldest first, `current` from
//!   `domain_snapshot_current`. `exec` is `unsupported`.
//!
//! # Errors
//! libvirt errors keep libvirt's code and message (`"… (libvirt error 42)"`): no domain, pool,
//! volume, snapshot or network → `not-found`; operation invalid, already exists, busy →
//! `conflict`; unsupported → `unsupported`; invalid argument or XML → `invalid`; anything else
//! → `backend { code, message }`. A broken connection is `unavailable("libvirt connection to
//! endpoint 'X' closed during <procedure>: …")`. See [`driver`] for connection reuse and the
//! retry (of reads and destroys only).
//!
//! Code map: [`xdr`] (encoding), [`protocol`] (packets, procedures, messages), [`client`]
//! (framing, calls, streams), [`api`] (typed procedures), [`config`], [`domain_xml`],
//! [`driver`] (the operations, natively testable), [`serial_ports`] (TCP serial console ports)
//! and `component` (the export glue).

pub mod api;
pub mod client;
pub mod config;
pub mod domain_xml;
pub mod driver;
pub mod protocol;
pub mod serial_ports;
pub mod xdr;

/// 64 random bits: SipHash of `salt` under `RandomState`'s keys, which are random per call.
pub(crate) fn random_bits(salt: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(salt.as_bytes());
    hasher.finish()
}

// Compiled natively too (to keep it checked), but only exported inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;
