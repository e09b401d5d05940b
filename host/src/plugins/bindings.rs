//! Host bindings of the `hyperplane:driver/driver` world, generated from `wit/`: never edit
//! by hand.

wasmtime::component::bindgen!({
    path: ["../wit/host/0.1.0", "../wit/driver/0.1.0"],
    world: "hyperplane:driver/driver",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "hyperplane:host/endpoints.connection": super::endpoints::EndpointConnection,
    },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub(crate) use exports::hyperplane::driver::hypervisor::{Guest as Hypervisor, GuestIndices as HypervisorIndices};

/// `types` holds only data: the host side of its (empty) import.
impl hyperplane::driver::types::Host for super::store_data::StoreData {}
