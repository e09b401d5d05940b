//! `hyperplane:host/endpoints`: byte streams to the unix sockets and TCP services (plain, or
//! in libvirt's TLS transport) the operator granted to a provider by name. The host opens
//! them; the plugin never sees an address, a certificate or a key.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use wasmtime::component::Resource;

use super::bindings::hyperplane::host::endpoints::{EndpointError, Host, HostConnection};
use super::settings::EndpointAddress;
use super::store_data::StoreData;
use super::telemetry;
use super::tls::{self, TlsEndpoint};

/// Most connections one instance may hold open at once.
pub const MAX_OPEN_CONNECTIONS_PER_INSTANCE: usize = 64;
/// Largest chunk one `read` returns.
pub const MAX_READ_CHUNK_BYTES: u32 = 1024 * 1024;
/// Largest `read-exact` the host serves.
pub const MAX_READ_EXACT_BYTES: u32 = 16 * 1024 * 1024;
/// How long opening a connection (TCP connect, TLS handshake) may take. A host that is gone
/// drops connection attempts silently, and the kernel would retry for about two minutes —
/// longer than a plugin call may last — so one dead host would fail every call that also
/// reaches the live ones.
pub const ENDPOINT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection to a granted endpoint, held in the instance's resource table.
pub struct EndpointConnection {
    endpoint_name: String,
    stream: EndpointStream,
}

enum EndpointStream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl EndpointStream {
    /// Opens a connection to `address`, failing with `TimedOut` after `timeout`.
    async fn open(address: &EndpointAddress, timeout: Duration) -> io::Result<Self> {
        let opened = tokio::time::timeout(timeout, Self::connect(address)).await;
        opened.unwrap_or_else(|_| {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {} s", timeout.as_secs_f64())))
        })
    }

    async fn connect(address: &EndpointAddress) -> io::Result<Self> {
        match address {
            EndpointAddress::Unix(path) => Ok(EndpointStream::Unix(UnixStream::connect(path).await?)),
            EndpointAddress::Tcp(authority) => Ok(EndpointStream::Tcp(connect_tcp(authority).await?)),
            EndpointAddress::LibvirtTls { authority, pki } => {
                let endpoint = TlsEndpoint::load(authority, pki).map_err(io::Error::other)?;
                let stream = endpoint.connect(connect_tcp(authority).await?).await?;
                Ok(EndpointStream::Tls(Box::new(stream)))
            }
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            EndpointStream::Unix(stream) => stream.write_all(data).await,
            EndpointStream::Tcp(stream) => stream.write_all(data).await,
            // Flushed: the request must reach the server before its reply is awaited.
            EndpointStream::Tls(stream) => {
                stream.write_all(data).await?;
                stream.flush().await
            }
        }
    }

    async fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            EndpointStream::Unix(stream) => stream.read(buffer).await,
            EndpointStream::Tcp(stream) => stream.read(buffer).await,
            EndpointStream::Tls(stream) => stream.read(buffer).await,
        }
    }

    async fn read_exact(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        match self {
            EndpointStream::Unix(stream) => stream.read_exact(buffer).await.map(drop),
            EndpointStream::Tcp(stream) => stream.read_exact(buffer).await.map(drop),
            EndpointStream::Tls(stream) => stream.read_exact(buffer).await.map(drop),
        }
    }
}

async fn connect_tcp(authority: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Maps an I/O failure on an open connection to the WIT error, without addresses or paths.
fn connection_error(error: &io::Error) -> EndpointError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected => EndpointError::Closed,
        _ => EndpointError::Io(tls::describe_failure(error).unwrap_or_else(|| error.kind().to_string())),
    }
}

impl Host for StoreData {
    async fn granted(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.provider.endpoints.keys().cloned().collect())
    }

    async fn open(&mut self, name: String) -> wasmtime::Result<Result<Resource<EndpointConnection>, EndpointError>> {
        let provider_name = &self.provider.name;
        let Some(address) = self.provider.endpoints.get(&name) else {
            tracing::warn!(
                provider = %provider_name,
                function = self.call.function,
                endpoint = %name,
                "plugin asked for an endpoint it was not granted"
            );
            telemetry::record_capability_denial(provider_name, "endpoint");
            return Ok(Err(EndpointError::NotGranted(name)));
        };
        if self.open_connection_count >= MAX_OPEN_CONNECTIONS_PER_INSTANCE {
            return Ok(Err(EndpointError::Io(format!(
                "an instance may hold at most {MAX_OPEN_CONNECTIONS_PER_INSTANCE} open connections"
            ))));
        }
        let stream = match EndpointStream::open(address, ENDPOINT_OPEN_TIMEOUT).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::info!(provider = %provider_name, endpoint = %name, %address, %error, "plugin endpoint unreachable");
                let reason = match error.kind() {
                    io::ErrorKind::TimedOut => error.to_string(),
                    kind => tls::describe_failure(&error).unwrap_or_else(|| kind.to_string()),
                };
                return Ok(Err(EndpointError::Unreachable(format!("endpoint {name}: {reason}"))));
            }
        };
        tracing::debug!(provider = %provider_name, endpoint = %name, "plugin endpoint connection opened");
        let connection = self.table.push(EndpointConnection { endpoint_name: name, stream })?;
        self.open_connection_count += 1;
        Ok(Ok(connection))
    }
}

impl HostConnection for StoreData {
    async fn write(
        &mut self,
        connection: Resource<EndpointConnection>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), EndpointError>> {
        let connection = self.table.get_mut(&connection)?;
        Ok(connection.stream.write_all(&data).await.map_err(|error| connection_error(&error)))
    }

    async fn read(
        &mut self,
        connection: Resource<EndpointConnection>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, EndpointError>> {
        let connection = self.table.get_mut(&connection)?;
        let mut buffer = vec![0; max.min(MAX_READ_CHUNK_BYTES) as usize];
        if buffer.is_empty() {
            return Ok(Ok(buffer));
        }
        match connection.stream.read(&mut buffer).await {
            Ok(length) => {
                buffer.truncate(length);
                Ok(Ok(buffer))
            }
            Err(error) => Ok(Err(connection_error(&error))),
        }
    }

    async fn read_exact(
        &mut self,
        connection: Resource<EndpointConnection>,
        length: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, EndpointError>> {
        let connection = self.table.get_mut(&connection)?;
        if length > MAX_READ_EXACT_BYTES {
            return Ok(Err(EndpointError::Io(format!(
                "read-exact of {length} bytes exceeds the host limit of {MAX_READ_EXACT_BYTES} bytes on endpoint {}",
                connection.endpoint_name
            ))));
        }
        let mut buffer = vec![0; length as usize];
        Ok(connection.stream.read_exact(&mut buffer).await.map(|()| buffer).map_err(|error| connection_error(&error)))
    }

    async fn drop(&mut self, connection: Resource<EndpointConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        self.open_connection_count = self.open_connection_count.saturating_sub(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn opening_an_endpoint_that_never_answers_gives_up_after_the_timeout() {
        // A listener whose accept queue is full: the kernel drops further connection attempts
        // without an answer, as a host that is gone does.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("address")).expect("bound");
        let listener = socket.listen(0).expect("listening");
        let address = listener.local_addr().expect("address");
        let mut queued = Vec::new();
        while let Ok(connected) = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(address)).await {
            queued.push(connected.expect("queued by the kernel"));
            assert!(queued.len() < 16, "the accept queue never filled");
        }

        let started = Instant::now();
        let opened = EndpointStream::open(&EndpointAddress::Tcp(address.to_string()), Duration::from_millis(200)).await;
        let error = opened.err().expect("no answer");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() < Duration::from_secs(2), "gave up after {:?}", started.elapsed());
    }
}
