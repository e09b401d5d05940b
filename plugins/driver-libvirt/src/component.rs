//! The component's export of `hyperplane:driver/hypervisor@0.3.0`: a [`LibvirtDriver`] over the
//! host's endpoints, state store and byte streams, created by `init` and kept per component
//! instance (wasm is single-threaded: a `thread_local`), so its libvirt connections are reused
//! across calls.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use hyperplane_guest::Guest;
use hyperplane_guest::endpoints::{self, Connection, EndpointError};
use hyperplane_guest::state::HostStore;
use hyperplane_guest::transfer::{ByteSink, ByteSource, ImageDelta};
use hyperplane_guest::types::{
    CachedTemplate, Capabilities, ConsoleEndpoint, Error, ExecResult, ExportedDisk, HostReport, Instance, InstanceSpec,
    Snapshot, TemplateRef,
};

use crate::config::Settings;
use crate::driver::{Connector, DeltaSource, DiskSink, ImageSource, LibvirtDriver, capabilities};

type ComponentDriver = LibvirtDriver<HostEndpoints, HostStore>;

thread_local! {
    static DRIVER: RefCell<Option<Rc<ComponentDriver>>> = const { RefCell::new(None) };
}

fn driver() -> Result<Rc<ComponentDriver>, Error> {
    DRIVER
        .with(|driver| driver.borrow().clone())
        .ok_or_else(|| Error::Unavailable("driver-libvirt: `init` has not been called on this instance".into()))
}

/// Opens connections through `hyperplane:host/endpoints`.
pub struct HostEndpoints;

impl Connector for HostEndpoints {
    type Stream = EndpointStream;

    fn open(&self, endpoint: &str) -> Result<EndpointStream, Error> {
        endpoints::open(endpoint).map(|connection| EndpointStream { connection }).map_err(|error| match error {
            EndpointError::NotGranted(message) => {
                Error::Invalid(format!("endpoint '{endpoint}' is not granted to this provider: {message}"))
            }
            EndpointError::Unreachable(message) | EndpointError::Io(message) => {
                Error::Unavailable(format!("libvirt endpoint '{endpoint}' is unreachable: {message}"))
            }
            EndpointError::Closed => Error::Unavailable(format!("libvirt endpoint '{endpoint}' closed the connection")),
        })
    }
}

/// `std::io` over a host endpoint connection.
pub struct EndpointStream {
    connection: Connection,
}

fn io_error(error: EndpointError) -> io::Error {
    match error {
        EndpointError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, "endpoint connection closed"),
        EndpointError::Io(message) | EndpointError::Unreachable(message) | EndpointError::NotGranted(message) => {
            io::Error::other(message)
        }
    }
}

impl Read for EndpointStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let max = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
        let bytes = self.connection.read(max).map_err(io_error)?;
        let count = bytes.len().min(buffer.len());
        buffer[..count].copy_from_slice(&bytes[..count]);
        Ok(count)
    }

    /// One host call instead of a loop of partial reads.
    fn read_exact(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        let length = u32::try_from(buffer.len()).map_err(|_| io::Error::other("read larger than 4 GiB"))?;
        let bytes = self.connection.read_exact(length).map_err(io_error)?;
        if bytes.len() != buffer.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read from endpoint"));
        }
        buffer.copy_from_slice(&bytes);
        Ok(())
    }
}

impl Write for EndpointStream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.connection.write(bytes).map_err(io_error)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A template image streamed by the host.
struct HostImage<'source>(&'source ByteSource);

impl ImageSource for HostImage<'_> {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, String> {
        self.0.read(max)
    }
}

/// A template image as changes to a cached version, streamed by the host.
struct HostDelta<'delta>(&'delta ImageDelta);

impl DeltaSource for HostDelta<'_> {
    fn base(&self) -> TemplateRef {
        self.0.base()
    }

    fn size(&self) -> u64 {
        self.0.size()
    }

    fn changes(&self) -> Vec<(u64, u64)> {
        self.0.changes().into_iter().map(|span| (span.offset, span.length)).collect()
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, String> {
        self.0.read(max)
    }
}

/// The host's receiving end of an export.
struct HostSink<'sink>(&'sink ByteSink);

impl DiskSink for HostSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.0.write(bytes)
    }
}

/// The exported driver.
pub struct LibvirtComponent;

impl Guest for LibvirtComponent {
    fn init(config: String) -> Result<Capabilities, Error> {
        let settings = Settings::from_json(&config)?;
        let driver = LibvirtDriver::new(settings, HostEndpoints, HostStore);
        DRIVER.with(|slot| *slot.borrow_mut() = Some(Rc::new(driver)));
        Ok(capabilities())
    }

    fn list_hosts() -> Result<Vec<HostReport>, Error> {
        driver()?.list_hosts()
    }

    fn list_instances() -> Result<Vec<Instance>, Error> {
        driver()?.list_instances()
    }

    fn create_instance(spec: InstanceSpec) -> Result<Instance, Error> {
        driver()?.create_instance(&spec)
    }

    fn start_instance(id: String) -> Result<Instance, Error> {
        driver()?.start_instance(&id)
    }

    fn stop_instance(id: String, force: bool, grace_ms: u32) -> Result<Instance, Error> {
        driver()?.stop_instance(&id, force, grace_ms)
    }

    fn restart_instance(id: String, force: bool) -> Result<Instance, Error> {
        driver()?.restart_instance(&id, force)
    }

    fn suspend_instance(id: String) -> Result<Instance, Error> {
        driver()?.suspend_instance(&id)
    }

    fn resume_instance(id: String) -> Result<Instance, Error> {
        driver()?.resume_instance(&id)
    }

    fn delete_instance(id: String) -> Result<(), Error> {
        driver()?.delete_instance(&id)
    }

    fn get_instance(id: String) -> Result<Instance, Error> {
        driver()?.get_instance(&id)
    }

    fn list_templates(host: String) -> Result<Vec<CachedTemplate>, Error> {
        driver()?.list_templates(&host)
    }

    fn pull_template(
        host: String,
        template: TemplateRef,
        image: ByteSource,
        delta: Option<ImageDelta>,
    ) -> Result<CachedTemplate, Error> {
        let mut host_delta = delta.as_ref().map(HostDelta);
        driver()?.pull_template_with_delta(
            &host,
            &template,
            &mut HostImage(&image),
            host_delta.as_mut().map(|delta| delta as &mut dyn DeltaSource),
        )
    }

    fn remove_template(host: String, template: TemplateRef) -> Result<(), Error> {
        driver()?.remove_template(&host, &template)
    }

    fn exec(id: String, _script: String, _timeout_ms: u32) -> Result<ExecResult, Error> {
        driver()?.exec(&id)
    }

    fn console(id: String) -> Result<ConsoleEndpoint, Error> {
        driver()?.console(&id)
    }

    fn list_snapshots(id: String) -> Result<Vec<Snapshot>, Error> {
        driver()?.list_snapshots(&id)
    }

    fn create_snapshot(id: String, name: String, description: String) -> Result<Snapshot, Error> {
        driver()?.create_snapshot(&id, &name, &description)
    }

    fn revert_snapshot(id: String, name: String) -> Result<Instance, Error> {
        driver()?.revert_snapshot(&id, &name)
    }

    fn delete_snapshot(id: String, name: String) -> Result<(), Error> {
        driver()?.delete_snapshot(&id, &name)
    }

    fn export_disk(id: String, sink: &ByteSink) -> Result<ExportedDisk, Error> {
        driver()?.export_disk(&id, &mut HostSink(sink))
    }
}

hyperplane_guest::export_driver!(LibvirtComponent);
