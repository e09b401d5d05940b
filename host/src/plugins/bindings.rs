//! Host bindings generated from the WIT contracts in `wit/`: never edit by hand.
//!
//! Why an inline host-side world instead of `hyperplane:driver/driver`: in that world the
//! `types` interface is an implicit import, and wasmtime's bindgen emits a `Host` trait for
//! every imported interface, which collides with the `host` record of `types`
//! (`error[E0428]: the name Host is defined multiple times`). This world imports the same
//! host interfaces and exports `types` next to `hypervisor`, so `types` becomes plain data.
//! The runtime links the component's (empty) `types` import itself and loads only the
//! `hypervisor` export; wasmtime type-checks every function against the component
//! structurally, so the contract enforced is exactly the `driver` world's.

wasmtime::component::bindgen!({
    inline: "
        package hyperplane:host-bindings;

        world driver-host-view {
            import hyperplane:host/log@0.1.0;
            import hyperplane:host/progress@0.1.0;
            import hyperplane:host/endpoints@0.1.0;
            import hyperplane:host/state@0.1.0;

            export hyperplane:driver/types@0.1.0;
            export hyperplane:driver/hypervisor@0.1.0;
        }
    ",
    path: ["../wit/host/0.1.0", "../wit/driver/0.1.0"],
    world: "hyperplane:host-bindings/driver-host-view",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "hyperplane:host/endpoints.connection": super::endpoints::EndpointConnection,
    },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

/// The name under which a driver component imports its (type-only) `types` interface.
pub(crate) const DRIVER_TYPES_INTERFACE: &str = "hyperplane:driver/types@0.1.0";

pub(crate) use exports::hyperplane::driver::hypervisor::{Guest as Hypervisor, GuestIndices as HypervisorIndices};
