//! The component's export of `hyperplane:driver/hypervisor`: a [`Simulator`] over the host's
//! state store, configured by `init`, and the simulator's transfer traits implemented for the
//! host's `image-delta` and `byte-sink` resources.

use std::sync::{Arc, PoisonError, RwLock};

use hyperplane_guest::Guest;
use hyperplane_guest::state::HostStore;
use hyperplane_guest::transfer::{ByteSink, ByteSource, ImageDelta};
use hyperplane_guest::types::{
    ByteSpan, CachedTemplate, Capabilities, ConsoleEndpoint, Error, ExecResult, ExportedDisk, HostReport, Instance,
    InstanceSpec, Snapshot, TemplateRef,
};

use crate::config::Settings;
use crate::environment::SystemEnvironment;
use crate::simulator::Simulator;
use crate::transfer::{ByteWriter, DeltaReader};

type ComponentSimulator = Simulator<HostStore, SystemEnvironment>;

/// Set by `init`. Only the configuration lives here: it is the same for every instance of the
/// component, while all simulated state is in the host's store.
static SIMULATOR: RwLock<Option<Arc<ComponentSimulator>>> = RwLock::new(None);

fn simulator() -> Result<Arc<ComponentSimulator>, Error> {
    SIMULATOR
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| Error::Unavailable("driver-sim: `init` has not been called on this instance".into()))
}

/// The exported driver.
pub struct SimulatedDriver;

impl Guest for SimulatedDriver {
    fn init(config: String) -> Result<Capabilities, Error> {
        let settings = Settings::from_json(&config)?;
        let simulator = Simulator::new(settings, HostStore, SystemEnvironment);
        *SIMULATOR.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(simulator));
        Ok(ComponentSimulator::capabilities())
    }

    fn list_hosts() -> Result<Vec<HostReport>, Error> {
        simulator()?.list_hosts()
    }

    fn list_instances() -> Result<Vec<Instance>, Error> {
        simulator()?.list_instances()
    }

    fn create_instance(spec: InstanceSpec) -> Result<Instance, Error> {
        simulator()?.create_instance(spec)
    }

    fn start_instance(id: String) -> Result<Instance, Error> {
        simulator()?.start_instance(&id)
    }

    fn stop_instance(id: String, force: bool, grace_ms: u32) -> Result<Instance, Error> {
        simulator()?.stop_instance(&id, force, grace_ms)
    }

    fn restart_instance(id: String, force: bool) -> Result<Instance, Error> {
        simulator()?.restart_instance(&id, force)
    }

    fn suspend_instance(id: String) -> Result<Instance, Error> {
        simulator()?.suspend_instance(&id)
    }

    fn resume_instance(id: String) -> Result<Instance, Error> {
        simulator()?.resume_instance(&id)
    }

    fn delete_instance(id: String) -> Result<(), Error> {
        simulator()?.delete_instance(&id)
    }

    fn get_instance(id: String) -> Result<Instance, Error> {
        simulator()?.get_instance(&id)
    }

    fn list_templates(host: String) -> Result<Vec<CachedTemplate>, Error> {
        simulator()?.list_templates(&host)
    }

    fn pull_template(
        host: String,
        template: TemplateRef,
        image: ByteSource,
        delta: Option<ImageDelta>,
    ) -> Result<CachedTemplate, Error> {
        simulator()?.pull_template(&host, &template, &image, delta.as_ref().map(|delta| delta as &dyn DeltaReader))
    }

    fn remove_template(host: String, template: TemplateRef) -> Result<(), Error> {
        simulator()?.remove_template(&host, &template)
    }

    fn exec(id: String, script: String, timeout_ms: u32) -> Result<ExecResult, Error> {
        simulator()?.exec(&id, &script, timeout_ms)
    }

    fn console(id: String) -> Result<ConsoleEndpoint, Error> {
        simulator()?.console(&id)
    }

    fn list_snapshots(id: String) -> Result<Vec<Snapshot>, Error> {
        simulator()?.list_snapshots(&id)
    }

    fn create_snapshot(id: String, name: String, description: String) -> Result<Snapshot, Error> {
        simulator()?.create_snapshot(&id, &name, &description)
    }

    fn revert_snapshot(id: String, name: String) -> Result<Instance, Error> {
        simulator()?.revert_snapshot(&id, &name)
    }

    fn delete_snapshot(id: String, name: String) -> Result<(), Error> {
        simulator()?.delete_snapshot(&id, &name)
    }

    fn export_disk(id: String, sink: &ByteSink) -> Result<ExportedDisk, Error> {
        simulator()?.export_disk(&id, sink)
    }
}

impl DeltaReader for ImageDelta {
    fn base(&self) -> TemplateRef {
        ImageDelta::base(self)
    }

    fn size(&self) -> u64 {
        ImageDelta::size(self)
    }

    fn changes(&self) -> Vec<ByteSpan> {
        ImageDelta::changes(self)
    }

    fn read(&self, max: u32) -> Result<Vec<u8>, String> {
        ImageDelta::read(self, max)
    }
}

impl ByteWriter for ByteSink {
    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        ByteSink::write(self, bytes)
    }
}

hyperplane_guest::export_driver!(SimulatedDriver);
