//! Host bindings of the `hyperplane:driver/driver@0.2.0` world, generated from `wit/`: never
//! edit by hand. The host supports this one version of the driver contract; `version` refuses
//! components that export another one.

wasmtime::component::bindgen!({
    path: ["../wit/host/0.1.0", "../wit/driver/0.2.0"],
    world: "hyperplane:driver/driver",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "hyperplane:host/endpoints.connection": super::endpoints::EndpointConnection,
        "hyperplane:driver/transfer.byte-source": super::transfer::ByteSource,
    },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub(crate) use exports::hyperplane::driver::hypervisor::{Guest as Hypervisor, GuestIndices as HypervisorIndices};

/// `types` holds only data: the host side of its (empty) import.
impl hyperplane::driver::types::Host for super::store_data::StoreData {}
