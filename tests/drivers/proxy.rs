//! A TCP proxy between a driver and libvirtd that can cut a connection in the middle of an
//! operation: armed with a libvirt procedure number, it drops the connection that sends a call
//! of that procedure, without forwarding it, so the caller sees its connection die while it
//! waits for the reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// No procedure armed.
const DISARMED: u32 = 0;

#[derive(Debug)]
pub struct CuttingProxy {
    pub address: SocketAddr,
    shared: Arc<ProxyShared>,
}

#[derive(Debug, Default)]
struct ProxyShared {
    armed_procedure: AtomicU32,
    connections_accepted: AtomicUsize,
    connections_cut: AtomicUsize,
}

impl CuttingProxy {
    pub async fn start(target: String) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the proxy binds");
        let address = listener.local_addr().expect("bound address");
        let shared = Arc::new(ProxyShared::default());
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepting.connections_accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&target).await else { continue };
                tokio::spawn(forward(client, server, accepting.clone()));
            }
        });
        CuttingProxy { address, shared }
    }

    /// The next call of remote `procedure` is dropped together with its connection.
    pub fn cut_next_call_of(&self, procedure: u32) {
        self.shared.armed_procedure.store(procedure, Ordering::SeqCst);
    }

    pub fn connections_accepted(&self) -> usize {
        self.shared.connections_accepted.load(Ordering::SeqCst)
    }

    pub fn connections_cut(&self) -> usize {
        self.shared.connections_cut.load(Ordering::SeqCst)
    }
}

/// The procedure of the packet `chunk` starts with: length, program, version, procedure.
fn procedure_of(chunk: &[u8]) -> Option<u32> {
    chunk.get(12..16).map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

async fn forward(mut client: TcpStream, mut server: TcpStream, shared: Arc<ProxyShared>) {
    let (mut from_client, mut to_client) = (vec![0_u8; 64 * 1024], vec![0_u8; 64 * 1024]);
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let Ok(length @ 1..) = read else { return };
                let armed = shared.armed_procedure.load(Ordering::SeqCst);
                if armed != DISARMED
                    && procedure_of(&from_client[..length]) == Some(armed)
                    && shared.armed_procedure.compare_exchange(armed, DISARMED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                {
                    shared.connections_cut.fetch_add(1, Ordering::SeqCst);
                    return; // both sockets close here: the call never reaches libvirtd
                }
                if server.write_all(&from_client[..length]).await.is_err() { return }
            }
            read = server.read(&mut to_client) => {
                let Ok(length @ 1..) = read else { return };
                if client.write_all(&to_client[..length]).await.is_err() { return }
            }
        }
    }
}
