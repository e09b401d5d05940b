//! A libvirt remote-protocol client over any byte transport (`std::io::Read + Write`): a
//! `std::net::TcpStream` in native tests, the host's endpoint connection inside the component.
//!
//! One call is one round trip: the call packet, then packets until its reply. Keepalive PINGs
//! are answered with PONG (the client never advertises keepalive, so libvirtd should not send
//! any), event MESSAGEs are skipped (the client registers for none). Volume uploads use a
//! libvirt stream: the call and its reply, the data as STREAM packets with status CONTINUE, an
//! empty STREAM packet with status OK to finish, and libvirtd's STREAM OK (or ERROR) answer.
//! Volume downloads mirror that: the call and its reply, libvirtd's STREAM packets with status
//! CONTINUE carrying the data, an empty one at the end of the data, then the client's
//! empty STREAM OK (finish) and libvirtd's STREAM OK confirming it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use thiserror::Error;

use crate::protocol::{
    AUTH_NONE, AuthTypes, HEADER_SIZE, Header, KEEPALIVE_PROCEDURE_PING, KEEPALIVE_PROCEDURE_PONG, KEEPALIVE_PROGRAM,
    KEEPALIVE_PROTOCOL_VERSION, LENGTH_WORD_SIZE, MESSAGE_MAX, MessageStatus, MessageType, Procedure, REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION, RemoteError, STREAM_CHUNK_SIZE, XdrDecode, XdrEncode,
};
use crate::xdr::{Decoder, Encoder, XdrError};

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The connection broke (EOF, reset, write failure). `reply_started` tells whether any byte
    /// of the reply had arrived, i.e. whether libvirtd may have acted on the call.
    #[error("connection closed during {}: {source}", procedure.name())]
    Transport { procedure: Procedure, reply_started: bool, source: io::Error },
    /// libvirtd answered with an error.
    #[error("{} failed: {}", procedure.name(), error.message_or_default())]
    Remote { procedure: Procedure, error: RemoteError },
    /// libvirtd sent something this client cannot make sense of; the connection is unusable.
    #[error("malformed reply to {}: {message}", procedure.name())]
    Protocol { procedure: Procedure, message: String },
    /// The endpoint needs an authentication this client does not speak.
    #[error("libvirt endpoint offers auth types {offered:?}; only `none` (0) is supported")]
    AuthenticationUnsupported { offered: Vec<i32> },
    /// Reading the data to upload failed; the stream was aborted (the connection stays usable).
    #[error("reading the data for {} failed: {message}", procedure.name())]
    Source { procedure: Procedure, message: String },
    /// Taking the downloaded data failed; the stream was aborted (the connection stays usable).
    #[error("passing on the data of {} failed: {message}", procedure.name())]
    Sink { procedure: Procedure, message: String },
}

impl ClientError {
    /// Whether the connection must be dropped: after this error it is closed or out of step.
    pub fn breaks_connection(&self) -> bool {
        matches!(self, ClientError::Transport { .. } | ClientError::Protocol { .. })
    }

    /// Whether libvirtd cannot have seen the call: the connection was found closed before any
    /// reply byte. Only then may a read-only call be repeated on a fresh connection.
    pub fn closed_before_reply(&self) -> bool {
        matches!(self, ClientError::Transport { reply_started: false, .. })
    }

    /// libvirt's `virErrorNumber`, for remote errors.
    pub fn libvirt_code(&self) -> Option<i32> {
        match self {
            ClientError::Remote { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

fn protocol_error(procedure: Procedure, error: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol { procedure, message: error.to_string() }
}

/// An open download stream (see [`Client::start_download`]).
#[derive(Debug, Clone, Copy)]
pub struct DownloadStream {
    procedure: Procedure,
    serial: u32,
}

/// One received packet: its header and payload.
struct Packet {
    header: Header,
    payload: Vec<u8>,
}

/// A connection to libvirtd speaking the remote protocol.
pub struct Client<Transport> {
    transport: Transport,
    last_serial: u32,
    replies_received: u64,
    calls_sent: u64,
    /// Data of a download that arrived before libvirtd's reply to the call opening it.
    early_stream_packets: VecDeque<Packet>,
    /// Bytes read beyond the packets taken so far. Reads ask for up to [`READ_CHUNK_SIZE`]
    /// bytes, so a reply's length word and body usually come in one read (one host call).
    received: Vec<u8>,
}

/// Most bytes one read asks the transport for while a packet is incomplete; a packet missing
/// more than this (stream data, a large XML) is completed with one `read_exact`.
const READ_CHUNK_SIZE: usize = 4096;

impl<Transport: Read + Write> Client<Transport> {
    /// Performs the handshake on a fresh transport: `auth_list` (only `none` is supported), then
    /// `connect_open(uri)`.
    pub fn connect(transport: Transport, uri: &str) -> Result<Client<Transport>, ClientError> {
        let mut client = Client {
            transport,
            last_serial: 0,
            replies_received: 0,
            calls_sent: 0,
            early_stream_packets: VecDeque::new(),
            received: Vec::new(),
        };
        let AuthTypes(offered) = client.call(Procedure::AuthList, &())?;
        if !offered.is_empty() && !offered.contains(&AUTH_NONE) {
            return Err(ClientError::AuthenticationUnsupported { offered });
        }
        client.call::<()>(Procedure::ConnectOpen, &(Some(uri), 0_u32))?;
        Ok(client)
    }

    /// Calls `procedure` with `arguments` and decodes its result.
    pub fn call<Reply: XdrDecode>(
        &mut self,
        procedure: Procedure,
        arguments: &impl XdrEncode,
    ) -> Result<Reply, ClientError> {
        let serial = self.send_call(procedure, arguments)?;
        let payload = self.receive_reply(procedure, serial)?;
        decode_payload(procedure, &payload)
    }

    /// How many replies this connection has received: a caller compares it before and after a
    /// failure to tell whether the connection had been working during its operation.
    pub fn replies_received(&self) -> u64 {
        self.replies_received
    }

    /// How many calls (round trips, the handshake's included) this connection has sent.
    pub fn calls_sent(&self) -> u64 {
        self.calls_sent
    }

    /// Calls a procedure that opens an upload stream (`storage_vol_upload`), then sends
    /// everything `read_chunk` yields (it fills the buffer it is given, at most
    /// [`STREAM_CHUNK_SIZE`] bytes; an empty buffer ends the data), reporting the bytes sent so
    /// far to `on_progress` after each chunk. Finishes the stream and waits for libvirtd to
    /// confirm it. A failing `read_chunk` aborts the stream (see [`ClientError::Source`]).
    pub fn upload(
        &mut self,
        procedure: Procedure,
        arguments: &impl XdrEncode,
        mut read_chunk: impl FnMut(&mut Vec<u8>) -> Result<(), String>,
        mut on_progress: impl FnMut(u64),
    ) -> Result<u64, ClientError> {
        let serial = self.send_call(procedure, arguments)?;
        let payload = self.receive_reply(procedure, serial)?;
        decode_payload::<()>(procedure, &payload)?;
        let mut chunk = Vec::with_capacity(STREAM_CHUNK_SIZE);
        let mut sent: u64 = 0;
        loop {
            chunk.clear();
            if let Err(message) = read_chunk(&mut chunk) {
                // Abort as libvirt's own client does, and wait for libvirtd to confirm: the
                // connection stays usable and libvirtd is done with the volume before anyone
                // touches it again. (Dropping the connection mid-upload instead has been seen
                // to hang libvirtd 11.3 when the volume was deleted right after.)
                match self.end_stream(procedure, serial, MessageStatus::Error) {
                    Ok(()) | Err(ClientError::Remote { .. }) => {}
                    Err(error) => return Err(error),
                }
                return Err(ClientError::Source { procedure, message });
            }
            if chunk.is_empty() {
                break;
            }
            for piece in chunk.chunks(STREAM_CHUNK_SIZE) {
                self.send_packet(procedure, MessageType::Stream, serial, MessageStatus::Continue, |encoder| {
                    encoder.bytes_mut().extend_from_slice(piece);
                })
                .map_err(|source| ClientError::Transport {
                    procedure,
                    reply_started: true,
                    source,
                })?;
            }
            sent += chunk.len() as u64;
            on_progress(sent);
        }
        self.end_stream(procedure, serial, MessageStatus::Ok)?;
        Ok(sent)
    }

    /// Calls a procedure that opens a download stream (`storage_vol_download`) and hands every
    /// piece of data libvirtd sends (at most one packet's worth, 256 KiB from libvirtd) to
    /// `on_data`, until libvirtd's end of data; then finishes the stream and waits for libvirtd
    /// to confirm it. Returns the bytes received. A failing `on_data` aborts the stream (see
    /// [`ClientError::Sink`]); the connection stays usable.
    pub fn download(
        &mut self,
        procedure: Procedure,
        arguments: &impl XdrEncode,
        mut on_data: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<u64, ClientError> {
        let stream = self.start_download(procedure, arguments)?;
        let mut received: u64 = 0;
        while let Some(piece) = self.download_piece(&stream)? {
            received += piece.len() as u64;
            if let Err(message) = on_data(&piece) {
                self.abort_download(&stream)?;
                return Err(ClientError::Sink { procedure, message });
            }
        }
        Ok(received)
    }

    /// Calls a procedure that opens a download stream; read it with
    /// [`Client::download_piece`] until the end, or stop with [`Client::abort_download`].
    /// Nothing else may be called on this connection meanwhile.
    pub fn start_download(
        &mut self,
        procedure: Procedure,
        arguments: &impl XdrEncode,
    ) -> Result<DownloadStream, ClientError> {
        let serial = self.send_call(procedure, arguments)?;
        self.early_stream_packets.clear();
        let mut reply_started = false;
        loop {
            let packet = self.receive_packet(procedure, reply_started)?;
            reply_started = true;
            if !self.is_for_call(procedure, &packet, serial)? {
                continue;
            }
            match (packet.header.message_type, packet.header.status) {
                // libvirtd may start sending the data before its reply to the call: keep it for
                // `download_piece`.
                (MessageType::Stream, MessageStatus::Continue) => self.early_stream_packets.push_back(packet),
                (MessageType::Reply, MessageStatus::Ok) => {
                    self.replies_received += 1;
                    decode_payload::<()>(procedure, &packet.payload)?;
                    return Ok(DownloadStream { procedure, serial });
                }
                (MessageType::Reply | MessageType::Stream, MessageStatus::Error) => {
                    self.early_stream_packets.clear();
                    return Err(remote_error(procedure, &packet.payload));
                }
                (message_type, status) => {
                    return Err(protocol_error(
                        procedure,
                        format!("expected a reply, got a {message_type:?} packet with status {status:?}"),
                    ));
                }
            }
        }
    }

    /// The next piece of data of `stream` (one packet's worth); `None` at the end of the data,
    /// when the stream has been finished (the connection is then free again).
    pub fn download_piece(&mut self, stream: &DownloadStream) -> Result<Option<Vec<u8>>, ClientError> {
        let DownloadStream { procedure, serial } = *stream;
        loop {
            let packet = match self.early_stream_packets.pop_front() {
                Some(packet) => packet,
                None => {
                    let packet = self.receive_packet(procedure, true)?;
                    if !self.is_for_call(procedure, &packet, serial)? {
                        continue;
                    }
                    packet
                }
            };
            return match (packet.header.message_type, packet.header.status) {
                // An empty data packet is libvirtd's end of data (what its own client reads as
                // EOF); finish as libvirt's client does (virStreamFinish).
                (MessageType::Stream, MessageStatus::Continue) if packet.payload.is_empty() => {
                    self.end_stream(procedure, serial, MessageStatus::Ok)?;
                    Ok(None)
                }
                (MessageType::Stream, MessageStatus::Continue) => Ok(Some(packet.payload)),
                (MessageType::Stream | MessageType::Reply, MessageStatus::Error) => {
                    Err(remote_error(procedure, &packet.payload))
                }
                (message_type, status) => Err(protocol_error(
                    procedure,
                    format!("unexpected {message_type:?} packet with status {status:?} in a download"),
                )),
            };
        }
    }

    /// Aborts a download before its end (an empty STREAM packet with status ERROR) and waits
    /// for libvirtd's answer (STREAM OK, or an error), skipping data still in flight, its end
    /// of data (an empty CONTINUE packet) included. The connection stays usable.
    pub fn abort_download(&mut self, stream: &DownloadStream) -> Result<(), ClientError> {
        let DownloadStream { procedure, serial } = *stream;
        self.early_stream_packets.clear();
        self.send_packet(procedure, MessageType::Stream, serial, MessageStatus::Error, |_| {})
            .map_err(|source| ClientError::Transport { procedure, reply_started: true, source })?;
        loop {
            let packet = self.receive_packet(procedure, true)?;
            if !self.is_for_call(procedure, &packet, serial)? {
                continue;
            }
            match (packet.header.message_type, packet.header.status) {
                (MessageType::Stream, MessageStatus::Continue) => continue,
                (MessageType::Stream, MessageStatus::Ok)
                | (MessageType::Stream | MessageType::Reply, MessageStatus::Error) => return Ok(()),
                (message_type, status) => {
                    return Err(protocol_error(
                        procedure,
                        format!("unexpected {message_type:?} packet with status {status:?} after an abort"),
                    ));
                }
            }
        }
    }

    /// Ends stream `serial` with an empty STREAM packet: status OK finishes it, status ERROR
    /// aborts it. Then waits for libvirtd's answer: STREAM OK, or an error (which is also what
    /// an abort gets: "stream aborted at client request").
    fn end_stream(&mut self, procedure: Procedure, serial: u32, status: MessageStatus) -> Result<(), ClientError> {
        self.send_packet(procedure, MessageType::Stream, serial, status, |_| {})
            .map_err(|source| ClientError::Transport { procedure, reply_started: true, source })?;
        loop {
            let packet = self.receive_packet(procedure, true)?;
            if !self.is_for_call(procedure, &packet, serial)? {
                continue;
            }
            match (packet.header.message_type, packet.header.status) {
                (MessageType::Stream, MessageStatus::Ok) => return Ok(()),
                (MessageType::Stream | MessageType::Reply, MessageStatus::Error) => {
                    return Err(remote_error(procedure, &packet.payload));
                }
                // Data flowing back on an upload stream is not expected; skip it.
                (MessageType::Stream, MessageStatus::Continue) => continue,
                (message_type, status) => {
                    return Err(protocol_error(
                        procedure,
                        format!("unexpected {message_type:?} packet with status {status:?} while ending the stream"),
                    ));
                }
            }
        }
    }

    fn next_serial(&mut self) -> u32 {
        self.last_serial = self.last_serial.wrapping_add(1);
        self.last_serial
    }

    fn send_call(&mut self, procedure: Procedure, arguments: &impl XdrEncode) -> Result<u32, ClientError> {
        let serial = self.next_serial();
        self.calls_sent += 1;
        self.send_packet(procedure, MessageType::Call, serial, MessageStatus::Ok, |encoder| arguments.encode(encoder))
            .map_err(|source| ClientError::Transport { procedure, reply_started: false, source })?;
        Ok(serial)
    }

    /// Writes one packet with one `write_all`, so a host endpoint sees a single write.
    fn send_packet(
        &mut self,
        procedure: Procedure,
        message_type: MessageType,
        serial: u32,
        status: MessageStatus,
        write_payload: impl FnOnce(&mut Encoder),
    ) -> io::Result<()> {
        let header = Header {
            program: REMOTE_PROGRAM,
            version: REMOTE_PROTOCOL_VERSION,
            procedure: procedure.number(),
            message_type,
            serial,
            status,
        };
        self.send_raw(&header, write_payload)
    }

    fn send_raw(&mut self, header: &Header, write_payload: impl FnOnce(&mut Encoder)) -> io::Result<()> {
        let mut encoder = Encoder::with_reserved(LENGTH_WORD_SIZE);
        header.encode(&mut encoder);
        write_payload(&mut encoder);
        let mut bytes = encoder.into_bytes();
        let length = u32::try_from(bytes.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet larger than 4 GiB"))?;
        bytes[..LENGTH_WORD_SIZE].copy_from_slice(&length.to_be_bytes());
        self.transport.write_all(&bytes)?;
        self.transport.flush()
    }

    /// Reads packets until the reply to call `serial`; returns its payload or its error.
    fn receive_reply(&mut self, procedure: Procedure, serial: u32) -> Result<Vec<u8>, ClientError> {
        let mut reply_started = false;
        loop {
            let packet = self.receive_packet(procedure, reply_started)?;
            reply_started = true;
            self.replies_received += 1;
            if !self.is_for_call(procedure, &packet, serial)? {
                continue;
            }
            if packet.header.message_type != MessageType::Reply {
                return Err(protocol_error(
                    procedure,
                    format!("expected a reply, got a {:?} packet", packet.header.message_type),
                ));
            }
            return match packet.header.status {
                MessageStatus::Ok => Ok(packet.payload),
                MessageStatus::Error => Err(remote_error(procedure, &packet.payload)),
                MessageStatus::Continue => Err(protocol_error(procedure, "reply with status continue")),
            };
        }
    }

    /// Whether `packet` belongs to call `serial`. Answers keepalive PINGs and skips events;
    /// anything else is a protocol error.
    fn is_for_call(&mut self, procedure: Procedure, packet: &Packet, serial: u32) -> Result<bool, ClientError> {
        let header = &packet.header;
        if header.program == KEEPALIVE_PROGRAM {
            if header.procedure == KEEPALIVE_PROCEDURE_PING {
                let pong = Header {
                    program: KEEPALIVE_PROGRAM,
                    version: KEEPALIVE_PROTOCOL_VERSION,
                    procedure: KEEPALIVE_PROCEDURE_PONG,
                    message_type: MessageType::Message,
                    serial: 0,
                    status: MessageStatus::Ok,
                };
                self.send_raw(&pong, |_| {}).map_err(|source| ClientError::Transport {
                    procedure,
                    reply_started: true,
                    source,
                })?;
            }
            return Ok(false);
        }
        if header.program != REMOTE_PROGRAM || header.version != REMOTE_PROTOCOL_VERSION {
            return Err(protocol_error(
                procedure,
                format!("packet of unknown program {:#x} version {}", header.program, header.version),
            ));
        }
        if header.message_type == MessageType::Message {
            return Ok(false);
        }
        if header.serial != serial || header.procedure != procedure.number() {
            return Err(protocol_error(
                procedure,
                format!(
                    "reply for serial {} procedure {} while waiting for serial {serial}",
                    header.serial, header.procedure
                ),
            ));
        }
        Ok(true)
    }

    fn receive_packet(&mut self, procedure: Procedure, reply_started: bool) -> Result<Packet, ClientError> {
        self.fill_received(LENGTH_WORD_SIZE, procedure, reply_started)?;
        let mut length_word = [0_u8; LENGTH_WORD_SIZE];
        length_word.copy_from_slice(&self.received[..LENGTH_WORD_SIZE]);
        let length = u32::from_be_bytes(length_word) as usize;
        if !(LENGTH_WORD_SIZE + HEADER_SIZE..=LENGTH_WORD_SIZE + MESSAGE_MAX).contains(&length) {
            return Err(protocol_error(procedure, format!("packet length {length} out of range")));
        }
        self.fill_received(length, procedure, true)?;
        let rest = self.received.split_off(length);
        let mut body = std::mem::replace(&mut self.received, rest);
        let mut decoder = Decoder::new(&body[LENGTH_WORD_SIZE..]);
        let header = Header::decode(&mut decoder).map_err(|error| protocol_error(procedure, error))?;
        body.drain(..LENGTH_WORD_SIZE + HEADER_SIZE);
        Ok(Packet { header, payload: body })
    }

    /// Reads until at least `needed` bytes are received. A failure tells whether any byte of
    /// the reply had arrived (`reply_started`, or bytes already received).
    fn fill_received(&mut self, needed: usize, procedure: Procedure, reply_started: bool) -> Result<(), ClientError> {
        while self.received.len() < needed {
            let reply_started = reply_started || !self.received.is_empty();
            let transport_error = |source| ClientError::Transport { procedure, reply_started, source };
            let start = self.received.len();
            let missing = needed - start;
            if missing > READ_CHUNK_SIZE {
                self.received.resize(needed, 0);
                let read = self.transport.read_exact(&mut self.received[start..]);
                if let Err(source) = read {
                    self.received.truncate(start);
                    return Err(transport_error(source));
                }
                continue;
            }
            self.received.resize(start + READ_CHUNK_SIZE, 0);
            let read = self.transport.read(&mut self.received[start..]);
            self.received.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(transport_error(io::Error::new(io::ErrorKind::UnexpectedEof, "end of stream"))),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(transport_error(source)),
            }
        }
        Ok(())
    }
}

fn decode_payload<Reply: XdrDecode>(procedure: Procedure, payload: &[u8]) -> Result<Reply, ClientError> {
    let mut decoder = Decoder::new(payload);
    let reply = Reply::decode(&mut decoder).map_err(|error: XdrError| protocol_error(procedure, error))?;
    decoder.finish().map_err(|error| protocol_error(procedure, error))?;
    Ok(reply)
}

fn remote_error(procedure: Procedure, payload: &[u8]) -> ClientError {
    match decode_payload::<RemoteError>(procedure, payload) {
        Ok(error) => ClientError::Remote { procedure, error },
        Err(error) => error,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A transport that replays scripted server bytes, at most `max_read` of them per read,
    /// and records what the client wrote.
    struct ScriptedTransport {
        server_bytes: Cursor<Vec<u8>>,
        max_read: usize,
        reads: usize,
        written: Vec<u8>,
    }

    impl Read for ScriptedTransport {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let length = buffer.len().min(self.max_read);
            self.server_bytes.read(&mut buffer[..length])
        }
    }

    impl Write for ScriptedTransport {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn packet(
        program: u32,
        procedure: i32,
        message_type: MessageType,
        serial: u32,
        status: MessageStatus,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut encoder = Encoder::with_reserved(LENGTH_WORD_SIZE);
        Header { program, version: 1, procedure, message_type, serial, status }.encode(&mut encoder);
        encoder.bytes_mut().extend_from_slice(payload);
        let mut bytes = encoder.into_bytes();
        let length = bytes.len() as u32;
        bytes[..4].copy_from_slice(&length.to_be_bytes());
        bytes
    }

    /// A `remote_error` with `code` and a message.
    fn encoded_error(code: i32) -> Vec<u8> {
        let mut error = Encoder::new();
        error.put_i32(code);
        error.put_i32(18);
        error.put_optional_string(Some("simulated failure"));
        error.put_i32(2);
        error.put_bool(false);
        for _ in 0..3 {
            error.put_optional_string(None);
        }
        error.put_i32(0);
        error.put_i32(0);
        error.put_bool(false);
        error.into_bytes()
    }

    fn client_over(server_bytes: Vec<u8>) -> Client<ScriptedTransport> {
        Client {
            transport: ScriptedTransport {
                server_bytes: Cursor::new(server_bytes),
                max_read: usize::MAX,
                reads: 0,
                written: Vec::new(),
            },
            last_serial: 0,
            replies_received: 0,
            calls_sent: 0,
            early_stream_packets: VecDeque::new(),
            received: Vec::new(),
        }
    }

    #[test]
    fn events_are_skipped_and_pings_answered_before_the_reply() -> Result<(), ClientError> {
        let procedure = Procedure::ConnectGetLibVersion;
        let mut server = packet(REMOTE_PROGRAM, 107, MessageType::Message, 0, MessageStatus::Ok, &[1, 2, 3, 4]);
        server.extend(packet(
            KEEPALIVE_PROGRAM,
            KEEPALIVE_PROCEDURE_PING,
            MessageType::Message,
            0,
            MessageStatus::Ok,
            &[],
        ));
        server.extend(packet(
            REMOTE_PROGRAM,
            procedure.number(),
            MessageType::Reply,
            1,
            MessageStatus::Ok,
            &11_003_000_u64.to_be_bytes(),
        ));
        let mut client = client_over(server);
        let version: u64 = client.call(procedure, &())?;
        assert_eq!(version, 11_003_000);
        // The call (28 bytes) then the pong (28 bytes) with the keepalive program.
        assert_eq!(client.transport.written.len(), 56);
        assert_eq!(&client.transport.written[28 + 4..28 + 8], &KEEPALIVE_PROGRAM.to_be_bytes());
        Ok(())
    }

    #[test]
    fn upload_sends_continue_packets_then_an_empty_ok_and_waits_for_the_servers_ok() -> Result<(), ClientError> {
        let procedure = Procedure::StorageVolUpload;
        let mut server = packet(REMOTE_PROGRAM, procedure.number(), MessageType::Reply, 1, MessageStatus::Ok, &[]);
        server.extend(packet(REMOTE_PROGRAM, procedure.number(), MessageType::Stream, 1, MessageStatus::Ok, &[]));
        let mut client = client_over(server);
        let mut chunks = vec![vec![1_u8; 5], vec![2_u8; 3]].into_iter();
        let mut progress = Vec::new();
        let sent = client.upload(
            procedure,
            &(),
            |chunk| {
                chunk.extend(chunks.next().unwrap_or_default());
                Ok(())
            },
            |sent| progress.push(sent),
        )?;
        assert_eq!((sent, progress), (8, vec![5, 8]));
        // The call, two stream packets with status continue carrying the data, one empty ok.
        let written = &client.transport.written;
        let packets: Vec<(u32, u32, u32, usize)> = {
            let mut offset = 0;
            let mut packets = Vec::new();
            while offset < written.len() {
                let word =
                    |at: usize| u32::from_be_bytes([written[at], written[at + 1], written[at + 2], written[at + 3]]);
                let length = word(offset) as usize;
                packets.push((word(offset + 16), word(offset + 20), word(offset + 24), length - 28));
                offset += length;
            }
            packets
        };
        assert_eq!(packets, vec![(0, 1, 0, 0), (3, 1, 2, 5), (3, 1, 2, 3), (3, 1, 0, 0)]);
        Ok(())
    }

    #[test]
    fn a_failing_source_aborts_the_stream_and_keeps_the_connection() {
        let procedure = Procedure::StorageVolUpload;
        let mut server = packet(REMOTE_PROGRAM, procedure.number(), MessageType::Reply, 1, MessageStatus::Ok, &[]);
        server.extend(packet(
            REMOTE_PROGRAM,
            procedure.number(),
            MessageType::Reply,
            1,
            MessageStatus::Error,
            &encoded_error(39),
        ));
        server.extend(packet(REMOTE_PROGRAM, 157, MessageType::Reply, 2, MessageStatus::Ok, &7_u64.to_be_bytes()));
        let mut client = client_over(server);
        let mut reads = 0;
        let result = client.upload(
            procedure,
            &(),
            |chunk| {
                reads += 1;
                if reads == 1 {
                    chunk.extend([1_u8; 4]);
                    Ok(())
                } else {
                    Err("host copy unreadable".into())
                }
            },
            |_| {},
        );
        assert!(
            matches!(&result, Err(ClientError::Source { message, .. }) if message == "host copy unreadable"),
            "{result:?}"
        );
        assert!(result.as_ref().err().is_some_and(|error| !error.breaks_connection()));
        // The abort: an empty STREAM packet with status ERROR after the data packet.
        let written = &client.transport.written;
        assert_eq!(written.len(), 28 + 32 + 28);
        assert_eq!(&written[60 + 16..60 + 28], &[0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1]);
        // The connection is still in step.
        let version: Result<u64, _> = client.call(Procedure::ConnectGetLibVersion, &());
        assert_eq!(version.ok(), Some(7));
    }

    #[test]
    fn upload_reports_a_stream_error_from_libvirt() {
        let procedure = Procedure::StorageVolUpload;
        let mut server = packet(REMOTE_PROGRAM, procedure.number(), MessageType::Reply, 1, MessageStatus::Ok, &[]);
        server.extend(packet(
            REMOTE_PROGRAM,
            procedure.number(),
            MessageType::Stream,
            1,
            MessageStatus::Error,
            &encoded_error(38),
        ));
        let mut client = client_over(server);
        let mut once = Some(vec![0_u8; 4]);
        let result = client.upload(
            procedure,
            &(),
            |chunk| {
                chunk.extend(once.take().unwrap_or_default());
                Ok(())
            },
            |_| {},
        );
        assert!(matches!(&result, Err(ClientError::Remote { error, .. }) if error.code == 38), "{result:?}");
    }

    #[test]
    fn download_data_that_arrives_before_the_reply_is_kept_in_order() -> Result<(), ClientError> {
        let procedure = Procedure::StorageVolDownload;
        let number = procedure.number();
        let mut server = packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[1; 4]);
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[2; 2]));
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Reply, 1, MessageStatus::Ok, &[]));
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[3; 1]));
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[]));
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Ok, &[]));
        let mut client = client_over(server);
        let mut data = Vec::new();
        let received = client.download(procedure, &(), |piece| {
            data.extend_from_slice(piece);
            Ok(())
        })?;
        assert_eq!((received, data), (7, vec![1, 1, 1, 1, 2, 2, 3]));
        Ok(())
    }

    #[test]
    fn download_passes_data_on_until_the_empty_packet_then_finishes() -> Result<(), ClientError> {
        let procedure = Procedure::StorageVolDownload;
        let number = procedure.number();
        let mut server = packet(REMOTE_PROGRAM, number, MessageType::Reply, 1, MessageStatus::Ok, &[]);
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[1; 5]));
        server.extend(packet(
            KEEPALIVE_PROGRAM,
            KEEPALIVE_PROCEDURE_PING,
            MessageType::Message,
            0,
            MessageStatus::Ok,
            &[],
        ));
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[2; 3]));
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[]));
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Ok, &[]));
        server.extend(packet(REMOTE_PROGRAM, 157, MessageType::Reply, 2, MessageStatus::Ok, &7_u64.to_be_bytes()));
        let mut client = client_over(server);
        let mut data = Vec::new();
        let received = client.download(procedure, &(), |piece| {
            data.extend_from_slice(piece);
            Ok(())
        })?;
        assert_eq!((received, data), (8, vec![1, 1, 1, 1, 1, 2, 2, 2]));
        // The call, the pong, then the finish: an empty STREAM packet with status OK.
        let written = &client.transport.written;
        assert_eq!(written.len(), 3 * 28);
        assert_eq!(&written[56 + 16..56 + 28], &[0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        let version: u64 = client.call(Procedure::ConnectGetLibVersion, &())?;
        assert_eq!(version, 7);
        Ok(())
    }

    #[test]
    fn a_failing_sink_aborts_the_download_and_keeps_the_connection() {
        let procedure = Procedure::StorageVolDownload;
        let number = procedure.number();
        let mut server = packet(REMOTE_PROGRAM, number, MessageType::Reply, 1, MessageStatus::Ok, &[]);
        for _ in 0..2 {
            server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[1; 4]));
        }
        // Data in flight and the end of data arrive before libvirtd's answer to the abort.
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Continue, &[]));
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Ok, &[]));
        server.extend(packet(REMOTE_PROGRAM, 157, MessageType::Reply, 2, MessageStatus::Ok, &7_u64.to_be_bytes()));
        let mut client = client_over(server);
        let result = client.download(procedure, &(), |_| Err("receiver gone".into()));
        assert!(matches!(&result, Err(ClientError::Sink { message, .. }) if message == "receiver gone"), "{result:?}");
        assert!(result.as_ref().err().is_some_and(|error| !error.breaks_connection()));
        let written = &client.transport.written;
        assert_eq!(&written[28 + 16..28 + 28], &[0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1][..]);
        let version: Result<u64, _> = client.call(Procedure::ConnectGetLibVersion, &());
        assert_eq!(version.ok(), Some(7));
    }

    #[test]
    fn a_download_error_from_libvirt_is_a_remote_error() {
        let procedure = Procedure::StorageVolDownload;
        let number = procedure.number();
        let mut server = packet(REMOTE_PROGRAM, number, MessageType::Reply, 1, MessageStatus::Ok, &[]);
        server.extend(packet(REMOTE_PROGRAM, number, MessageType::Stream, 1, MessageStatus::Error, &encoded_error(38)));
        let mut client = client_over(server);
        let result = client.download(procedure, &(), |_| Ok(()));
        assert!(matches!(&result, Err(ClientError::Remote { error, .. }) if error.code == 38), "{result:?}");
    }

    #[test]
    fn replies_are_read_whole_however_the_bytes_arrive() -> Result<(), ClientError> {
        let version = Procedure::ConnectGetLibVersion;
        let reply = |serial| {
            packet(
                REMOTE_PROGRAM,
                version.number(),
                MessageType::Reply,
                serial,
                MessageStatus::Ok,
                &7_u64.to_be_bytes(),
            )
        };
        // Two small replies arrive together: one read brings both.
        let mut client = client_over([reply(1), reply(2)].concat());
        assert_eq!((client.call::<u64>(version, &())?, client.call::<u64>(version, &())?), (7, 7));
        assert_eq!(client.transport.reads, 1);

        // A large reply trickling in a few bytes at a time, then a small one.
        let xml = "<domain/>".repeat(1000);
        let mut payload = Encoder::new();
        payload.put_string(&xml);
        let description = Procedure::DomainGetXmlDesc;
        let mut server = packet(
            REMOTE_PROGRAM,
            description.number(),
            MessageType::Reply,
            1,
            MessageStatus::Ok,
            &payload.into_bytes(),
        );
        server.extend(reply(2));
        for max_read in [3, 1000, usize::MAX] {
            let mut client = client_over(server.clone());
            client.transport.max_read = max_read;
            assert_eq!(client.call::<String>(description, &())?, xml);
            assert_eq!(client.call::<u64>(version, &())?, 7);
        }
        Ok(())
    }

    #[test]
    fn eof_before_any_reply_byte_is_retryable_but_not_after() {
        let mut client = client_over(Vec::new());
        let error = client.call::<u64>(Procedure::ConnectGetLibVersion, &()).err();
        assert!(error.as_ref().is_some_and(ClientError::closed_before_reply), "{error:?}");

        let truncated = packet(REMOTE_PROGRAM, 157, MessageType::Reply, 1, MessageStatus::Ok, &[0; 8]);
        let mut client = client_over(truncated[..10].to_vec());
        let error = client.call::<u64>(Procedure::ConnectGetLibVersion, &()).err();
        assert!(matches!(error, Some(ClientError::Transport { reply_started: true, .. })), "{error:?}");
    }

    #[test]
    fn bad_lengths_and_trailing_bytes_are_protocol_errors() {
        let mut client = client_over(vec![0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(client.call::<u64>(Procedure::ConnectGetLibVersion, &()), Err(ClientError::Protocol { .. })));
        let too_long = packet(REMOTE_PROGRAM, 157, MessageType::Reply, 1, MessageStatus::Ok, &[0; 12]);
        let mut client = client_over(too_long);
        assert!(matches!(client.call::<u64>(Procedure::ConnectGetLibVersion, &()), Err(ClientError::Protocol { .. })));
        let wrong_serial = packet(REMOTE_PROGRAM, 157, MessageType::Reply, 9, MessageStatus::Ok, &[0; 8]);
        let mut client = client_over(wrong_serial);
        assert!(matches!(client.call::<u64>(Procedure::ConnectGetLibVersion, &()), Err(ClientError::Protocol { .. })));
    }
}
