//! The subset of libvirt's remote protocol this driver uses, written by hand from libvirt's
//! `virnetprotocol.x` and `remote_protocol.x`: the packet header, procedure numbers, the
//! object handles (domain, pool, volume, snapshot), `remote_error`, and the argument and
//! result structures, each with its XDR encoding.
//!
//! Wire format: every packet is a big-endian `u32` total length (itself included), a 24-byte
//! [`Header`] and an XDR payload. Calls carry `<procedure>_args`, successful replies
//! `<procedure>_ret`, failed replies a [`RemoteError`].

use crate::xdr::{Decoder, Encoder, XdrError};

/// libvirt's `REMOTE_PROGRAM`.
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
pub const REMOTE_PROTOCOL_VERSION: u32 = 1;
/// libvirt's keepalive program (`"keep"`): PING (1) is answered with PONG (2).
pub const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;
pub const KEEPALIVE_PROTOCOL_VERSION: u32 = 1;
pub const KEEPALIVE_PROCEDURE_PING: i32 = 1;
pub const KEEPALIVE_PROCEDURE_PONG: i32 = 2;

/// Size of the length word in front of every packet.
pub const LENGTH_WORD_SIZE: usize = 4;
pub const HEADER_SIZE: usize = 24;
/// `VIR_NET_MESSAGE_MAX`: the largest packet (without its length word) libvirt sends.
pub const MESSAGE_MAX: usize = 16 * 1024 * 1024;
/// `REMOTE_STRING_MAX`.
pub const STRING_MAX: usize = 1024 * 1024;
/// `VIR_NET_MESSAGE_STRING_MAX`, for strings inside `remote_error`.
pub const ERROR_STRING_MAX: usize = 4 * 1024 * 1024;
/// Bytes of stream data sent per packet (`VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX`, which every
/// libvirtd accepts).
pub const STREAM_CHUNK_SIZE: usize = 256 * 1024;
/// `REMOTE_DOMAIN_LIST_MAX`, `REMOTE_DOMAIN_SNAPSHOT_LIST_MAX`, `REMOTE_STORAGE_VOL_LIST_MAX`.
pub const DOMAIN_LIST_MAX: usize = 16384;
pub const SNAPSHOT_LIST_MAX: usize = 16384;
pub const VOLUME_LIST_MAX: usize = 16384;
/// `REMOTE_AUTH_TYPE_LIST_MAX`.
pub const AUTH_TYPE_LIST_MAX: usize = 20;
/// `REMOTE_DOMAIN_INTERFACE_MAX`, `REMOTE_DOMAIN_IP_ADDR_MAX`.
pub const INTERFACE_MAX: usize = 2048;
pub const IP_ADDRESS_MAX: usize = 2048;

/// `REMOTE_AUTH_NONE`.
pub const AUTH_NONE: i32 = 0;

/// Procedures of `REMOTE_PROGRAM` that this driver calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Procedure {
    ConnectOpen = 1,
    ConnectClose = 2,
    ConnectGetType = 3,
    ConnectGetVersion = 4,
    NodeGetInfo = 6,
    ConnectGetCapabilities = 7,
    DomainCreate = 9,
    DomainDefineXml = 11,
    DomainDestroy = 12,
    DomainGetXmlDesc = 14,
    DomainLookupByName = 23,
    DomainLookupByUuid = 24,
    DomainReboot = 27,
    DomainResume = 28,
    DomainSuspend = 34,
    AuthList = 66,
    StoragePoolCreateXml = 76,
    StoragePoolDestroy = 80,
    StoragePoolLookupByName = 84,
    StoragePoolGetInfo = 87,
    StorageVolCreateXml = 93,
    StorageVolDelete = 94,
    StorageVolLookupByName = 95,
    StorageVolGetInfo = 98,
    StorageVolGetXmlDesc = 99,
    StorageVolGetPath = 100,
    StorageVolCreateXmlFrom = 125,
    ConnectGetLibVersion = 157,
    DomainSnapshotCreateXml = 185,
    DomainSnapshotGetXmlDesc = 186,
    DomainSnapshotLookupByName = 189,
    DomainSnapshotCurrent = 191,
    DomainRevertToSnapshot = 192,
    DomainSnapshotDelete = 193,
    StorageVolUpload = 208,
    StorageVolDownload = 209,
    DomainGetState = 212,
    DomainUndefineFlags = 231,
    DomainShutdownFlags = 258,
    StorageVolResize = 260,
    DomainSnapshotIsCurrent = 271,
    ConnectListAllDomains = 273,
    DomainListAllSnapshots = 274,
    StoragePoolListAllVolumes = 282,
    ConnectGetAllDomainStats = 344,
    DomainDefineXmlFlags = 350,
    DomainInterfaceAddresses = 353,
}

impl Procedure {
    pub fn number(self) -> i32 {
        self as i32
    }

    /// libvirt's name of the procedure, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Procedure::ConnectOpen => "connect_open",
            Procedure::ConnectClose => "connect_close",
            Procedure::ConnectGetType => "connect_get_type",
            Procedure::ConnectGetVersion => "connect_get_version",
            Procedure::NodeGetInfo => "node_get_info",
            Procedure::ConnectGetCapabilities => "connect_get_capabilities",
            Procedure::DomainCreate => "domain_create",
            Procedure::DomainDefineXml => "domain_define_xml",
            Procedure::DomainDestroy => "domain_destroy",
            Procedure::DomainGetXmlDesc => "domain_get_xml_desc",
            Procedure::DomainLookupByName => "domain_lookup_by_name",
            Procedure::DomainLookupByUuid => "domain_lookup_by_uuid",
            Procedure::DomainReboot => "domain_reboot",
            Procedure::DomainResume => "domain_resume",
            Procedure::DomainSuspend => "domain_suspend",
            Procedure::AuthList => "auth_list",
            Procedure::StoragePoolCreateXml => "storage_pool_create_xml",
            Procedure::StoragePoolDestroy => "storage_pool_destroy",
            Procedure::StoragePoolLookupByName => "storage_pool_lookup_by_name",
            Procedure::StoragePoolGetInfo => "storage_pool_get_info",
            Procedure::StorageVolCreateXml => "storage_vol_create_xml",
            Procedure::StorageVolDelete => "storage_vol_delete",
            Procedure::StorageVolLookupByName => "storage_vol_lookup_by_name",
            Procedure::StorageVolGetInfo => "storage_vol_get_info",
            Procedure::StorageVolGetXmlDesc => "storage_vol_get_xml_desc",
            Procedure::StorageVolGetPath => "storage_vol_get_path",
            Procedure::StorageVolCreateXmlFrom => "storage_vol_create_xml_from",
            Procedure::ConnectGetLibVersion => "connect_get_lib_version",
            Procedure::DomainSnapshotCreateXml => "domain_snapshot_create_xml",
            Procedure::DomainSnapshotGetXmlDesc => "domain_snapshot_get_xml_desc",
            Procedure::DomainSnapshotLookupByName => "domain_snapshot_lookup_by_name",
            Procedure::DomainSnapshotCurrent => "domain_snapshot_current",
            Procedure::DomainRevertToSnapshot => "domain_revert_to_snapshot",
            Procedure::DomainSnapshotDelete => "domain_snapshot_delete",
            Procedure::StorageVolUpload => "storage_vol_upload",
            Procedure::StorageVolDownload => "storage_vol_download",
            Procedure::DomainGetState => "domain_get_state",
            Procedure::DomainUndefineFlags => "domain_undefine_flags",
            Procedure::DomainShutdownFlags => "domain_shutdown_flags",
            Procedure::StorageVolResize => "storage_vol_resize",
            Procedure::DomainSnapshotIsCurrent => "domain_snapshot_is_current",
            Procedure::ConnectListAllDomains => "connect_list_all_domains",
            Procedure::DomainListAllSnapshots => "domain_list_all_snapshots",
            Procedure::StoragePoolListAllVolumes => "storage_pool_list_all_volumes",
            Procedure::ConnectGetAllDomainStats => "connect_get_all_domain_stats",
            Procedure::DomainDefineXmlFlags => "domain_define_xml_flags",
            Procedure::DomainInterfaceAddresses => "domain_interface_addresses",
        }
    }

    /// Whether the call may be repeated on a fresh connection when the cached one turns out to
    /// be closed before any reply arrived: it only reads, or it is a destroy (a repeat after
    /// one that acted answers "not running", which its callers take as done).
    pub fn is_safe_to_repeat(self) -> bool {
        self.is_read_only() || self == Procedure::DomainDestroy
    }

    /// Whether the procedure only reads.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Procedure::ConnectGetType
                | Procedure::ConnectGetVersion
                | Procedure::NodeGetInfo
                | Procedure::ConnectGetCapabilities
                | Procedure::DomainGetXmlDesc
                | Procedure::DomainLookupByName
                | Procedure::DomainLookupByUuid
                | Procedure::AuthList
                | Procedure::StoragePoolLookupByName
                | Procedure::StoragePoolGetInfo
                | Procedure::StorageVolLookupByName
                | Procedure::StorageVolGetInfo
                | Procedure::StorageVolGetPath
                | Procedure::StorageVolGetXmlDesc
                | Procedure::ConnectGetLibVersion
                | Procedure::DomainSnapshotGetXmlDesc
                | Procedure::DomainSnapshotLookupByName
                | Procedure::DomainGetState
                | Procedure::DomainSnapshotIsCurrent
                | Procedure::DomainSnapshotCurrent
                | Procedure::ConnectGetAllDomainStats
                | Procedure::ConnectListAllDomains
                | Procedure::DomainListAllSnapshots
                | Procedure::StoragePoolListAllVolumes
                | Procedure::DomainInterfaceAddresses
        )
    }
}

/// `virNetMessageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Call = 0,
    Reply = 1,
    Message = 2,
    Stream = 3,
    CallWithFds = 4,
    ReplyWithFds = 5,
}

/// `virNetMessageStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Ok = 0,
    Error = 1,
    Continue = 2,
}

/// `virNetMessageHeader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub program: u32,
    pub version: u32,
    pub procedure: i32,
    pub message_type: MessageType,
    pub serial: u32,
    pub status: MessageStatus,
}

impl Header {
    pub fn encode(&self, encoder: &mut Encoder) {
        encoder.put_u32(self.program);
        encoder.put_u32(self.version);
        encoder.put_i32(self.procedure);
        encoder.put_i32(self.message_type as i32);
        encoder.put_u32(self.serial);
        encoder.put_i32(self.status as i32);
    }

    pub fn decode(decoder: &mut Decoder<'_>) -> Result<Header, XdrError> {
        let program = decoder.get_u32()?;
        let version = decoder.get_u32()?;
        let procedure = decoder.get_i32()?;
        let message_type = match decoder.get_u32()? {
            0 => MessageType::Call,
            1 => MessageType::Reply,
            2 => MessageType::Message,
            3 => MessageType::Stream,
            4 => MessageType::CallWithFds,
            5 => MessageType::ReplyWithFds,
            value => return Err(XdrError::InvalidValue { what: "message type", value }),
        };
        let serial = decoder.get_u32()?;
        let status = match decoder.get_u32()? {
            0 => MessageStatus::Ok,
            1 => MessageStatus::Error,
            2 => MessageStatus::Continue,
            value => return Err(XdrError::InvalidValue { what: "message status", value }),
        };
        Ok(Header { program, version, procedure, message_type, serial, status })
    }
}

/// A value with an XDR encoding (call arguments).
pub trait XdrEncode {
    fn encode(&self, encoder: &mut Encoder);
}

/// A value with an XDR decoding (call results).
pub trait XdrDecode: Sized {
    fn decode(decoder: &mut Decoder<'_>) -> Result<Self, XdrError>;
}

impl XdrEncode for () {
    fn encode(&self, _encoder: &mut Encoder) {}
}

impl XdrDecode for () {
    fn decode(_decoder: &mut Decoder<'_>) -> Result<(), XdrError> {
        Ok(())
    }
}

impl XdrEncode for u32 {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_u32(*self);
    }
}

impl XdrEncode for i32 {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_i32(*self);
    }
}

impl XdrEncode for u64 {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_u64(*self);
    }
}

/// `remote_nonnull_string`.
impl XdrEncode for str {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_string(self);
    }
}

/// `remote_string` (nullable).
impl XdrEncode for Option<&str> {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_optional_string(*self);
    }
}

impl<T: XdrEncode + ?Sized> XdrEncode for &T {
    fn encode(&self, encoder: &mut Encoder) {
        (**self).encode(encoder);
    }
}

macro_rules! tuple_codec {
    ($($name:ident),+) => {
        impl<$($name: XdrEncode),+> XdrEncode for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode(&self, encoder: &mut Encoder) {
                let ($($name,)+) = self;
                $($name.encode(encoder);)+
            }
        }
    };
}
tuple_codec!(A, B);
tuple_codec!(A, B, C);
tuple_codec!(A, B, C, D);

impl XdrDecode for i32 {
    fn decode(decoder: &mut Decoder<'_>) -> Result<i32, XdrError> {
        decoder.get_i32()
    }
}

impl XdrDecode for u64 {
    fn decode(decoder: &mut Decoder<'_>) -> Result<u64, XdrError> {
        decoder.get_u64()
    }
}

impl XdrDecode for String {
    fn decode(decoder: &mut Decoder<'_>) -> Result<String, XdrError> {
        decoder.get_string(STRING_MAX)
    }
}

/// `remote_uuid`: 16 bytes.
pub type Uuid = [u8; 16];

/// `remote_nonnull_domain`: libvirt resolves a domain handle by its UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub uuid: Uuid,
    /// The running domain's id, -1 when inactive.
    pub id: i32,
}

impl XdrEncode for Domain {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_string(&self.name);
        encoder.put_fixed_opaque(&self.uuid);
        encoder.put_i32(self.id);
    }
}

impl XdrDecode for Domain {
    fn decode(decoder: &mut Decoder<'_>) -> Result<Domain, XdrError> {
        Ok(Domain { name: decoder.get_string(STRING_MAX)?, uuid: decoder.get_fixed_opaque()?, id: decoder.get_i32()? })
    }
}

/// `remote_nonnull_storage_pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePool {
    pub name: String,
    pub uuid: Uuid,
}

impl XdrEncode for StoragePool {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_string(&self.name);
        encoder.put_fixed_opaque(&self.uuid);
    }
}

impl XdrDecode for StoragePool {
    fn decode(decoder: &mut Decoder<'_>) -> Result<StoragePool, XdrError> {
        Ok(StoragePool { name: decoder.get_string(STRING_MAX)?, uuid: decoder.get_fixed_opaque()? })
    }
}

/// `remote_nonnull_storage_vol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageVolume {
    pub pool: String,
    pub name: String,
    pub key: String,
}

impl XdrEncode for StorageVolume {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_string(&self.pool);
        encoder.put_string(&self.name);
        encoder.put_string(&self.key);
    }
}

impl XdrDecode for StorageVolume {
    fn decode(decoder: &mut Decoder<'_>) -> Result<StorageVolume, XdrError> {
        Ok(StorageVolume {
            pool: decoder.get_string(STRING_MAX)?,
            name: decoder.get_string(STRING_MAX)?,
            key: decoder.get_string(STRING_MAX)?,
        })
    }
}

/// `remote_nonnull_domain_snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSnapshot {
    pub name: String,
    pub domain: Domain,
}

impl XdrEncode for DomainSnapshot {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_string(&self.name);
        self.domain.encode(encoder);
    }
}

impl XdrDecode for DomainSnapshot {
    fn decode(decoder: &mut Decoder<'_>) -> Result<DomainSnapshot, XdrError> {
        Ok(DomainSnapshot { name: decoder.get_string(STRING_MAX)?, domain: Domain::decode(decoder)? })
    }
}

/// `remote_error` (`virNetMessageError`): what a failed call or stream reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// `virErrorNumber`, see [`error_code`].
    pub code: i32,
    /// `virErrorDomain`: which part of libvirt raised it.
    pub domain: i32,
    pub message: Option<String>,
    /// `virErrorLevel`: 1 warning, 2 error.
    pub level: i32,
}

impl RemoteError {
    pub fn message_or_default(&self) -> &str {
        self.message.as_deref().unwrap_or("unknown libvirt error")
    }
}

impl XdrDecode for RemoteError {
    fn decode(decoder: &mut Decoder<'_>) -> Result<RemoteError, XdrError> {
        let code = decoder.get_i32()?;
        let domain = decoder.get_i32()?;
        let message = decoder.get_optional(|decoder| decoder.get_string(ERROR_STRING_MAX))?;
        let level = decoder.get_i32()?;
        // The rest is kept for wire compatibility only: dom, str1..3, int1, int2, net.
        decoder.get_optional(Domain::decode)?;
        for _ in 0..3 {
            decoder.get_optional(|decoder| decoder.get_string(ERROR_STRING_MAX))?;
        }
        decoder.get_i32()?;
        decoder.get_i32()?;
        // `net` has the layout of a pool handle: name and uuid.
        decoder.get_optional(StoragePool::decode)?;
        Ok(RemoteError { code, domain, message, level })
    }
}

/// `virErrorNumber` values the driver maps to its own error kinds (checked against libvirt's
/// `virterror.h`).
pub mod error_code {
    pub const INTERNAL_ERROR: i32 = 1;
    pub const NO_SUPPORT: i32 = 3;
    pub const INVALID_ARG: i32 = 8;
    pub const OPERATION_FAILED: i32 = 9;
    pub const XML_ERROR: i32 = 27;
    pub const DOM_EXIST: i32 = 28;
    pub const NO_DOMAIN: i32 = 42;
    pub const NO_NETWORK: i32 = 43;
    pub const INVALID_MAC: i32 = 44;
    pub const NO_STORAGE_POOL: i32 = 49;
    pub const NO_STORAGE_VOL: i32 = 50;
    pub const OPERATION_INVALID: i32 = 55;
    pub const CONFIG_UNSUPPORTED: i32 = 67;
    pub const NO_DOMAIN_SNAPSHOT: i32 = 72;
    pub const ARGUMENT_UNSUPPORTED: i32 = 74;
    pub const OPERATION_UNSUPPORTED: i32 = 84;
    pub const AGENT_UNRESPONSIVE: i32 = 86;
    pub const RESOURCE_BUSY: i32 = 87;
    pub const STORAGE_VOL_EXIST: i32 = 90;
    pub const XML_INVALID_SCHEMA: i32 = 92;
}

/// Flag values of the calls the driver makes (from `libvirt-domain.h`, `libvirt-storage.h`).
pub mod flags {
    pub const DOMAIN_SHUTDOWN_ACPI_POWER_BUTTON: u32 = 1;
    pub const DOMAIN_REBOOT_ACPI_POWER_BUTTON: u32 = 1;
    pub const DOMAIN_UNDEFINE_MANAGED_SAVE: u32 = 1;
    pub const DOMAIN_UNDEFINE_SNAPSHOTS_METADATA: u32 = 2;
    pub const DOMAIN_UNDEFINE_NVRAM: u32 = 4;
    pub const DOMAIN_UNDEFINE_CHECKPOINTS_METADATA: u32 = 16;
    pub const DOMAIN_DEFINE_VALIDATE: u32 = 1;
    pub const DOMAIN_XML_INACTIVE: u32 = 2;
    pub const DOMAIN_SNAPSHOT_REVERT_FORCE: u32 = 4;
    pub const DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL: u32 = 1024;
    pub const DOMAIN_INTERFACE_ADDRESSES_SOURCE_LEASE: u32 = 0;
    pub const DOMAIN_INTERFACE_ADDRESSES_SOURCE_AGENT: u32 = 1;
    /// `VIR_CONNECT_LIST_DOMAINS_*`: 0 lists every domain.
    pub const CONNECT_LIST_DOMAINS_ALL: u32 = 0;
}

/// `virDomainState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    NoState,
    Running,
    Blocked,
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    PowerManagementSuspended,
    Unknown(i32),
}

impl DomainState {
    pub fn from_number(number: i32) -> DomainState {
        match number {
            0 => DomainState::NoState,
            1 => DomainState::Running,
            2 => DomainState::Blocked,
            3 => DomainState::Paused,
            4 => DomainState::ShuttingDown,
            5 => DomainState::ShutOff,
            6 => DomainState::Crashed,
            7 => DomainState::PowerManagementSuspended,
            other => DomainState::Unknown(other),
        }
    }

    pub fn is_active(self) -> bool {
        !matches!(self, DomainState::ShutOff | DomainState::Crashed | DomainState::NoState)
    }
}

impl XdrDecode for DomainState {
    /// `remote_domain_get_state_ret`: state, reason.
    fn decode(decoder: &mut Decoder<'_>) -> Result<DomainState, XdrError> {
        let state = decoder.get_i32()?;
        let _reason = decoder.get_i32()?;
        Ok(DomainState::from_number(state))
    }
}

/// `remote_node_get_info_ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub model: String,
    /// KiB.
    pub memory_kib: u64,
    pub cpus: i32,
    pub mhz: i32,
    pub nodes: i32,
    pub sockets: i32,
    pub cores: i32,
    pub threads: i32,
}

impl XdrDecode for NodeInfo {
    fn decode(decoder: &mut Decoder<'_>) -> Result<NodeInfo, XdrError> {
        // `char model[32]` is 32 XDR ints, one per character.
        let mut model_bytes = Vec::with_capacity(32);
        for _ in 0..32 {
            model_bytes.push(decoder.get_i32()? as u8);
        }
        let model_end = model_bytes.iter().position(|byte| *byte == 0).unwrap_or(model_bytes.len());
        Ok(NodeInfo {
            model: String::from_utf8_lossy(&model_bytes[..model_end]).into_owned(),
            memory_kib: decoder.get_u64()?,
            cpus: decoder.get_i32()?,
            mhz: decoder.get_i32()?,
            nodes: decoder.get_i32()?,
            sockets: decoder.get_i32()?,
            cores: decoder.get_i32()?,
            threads: decoder.get_i32()?,
        })
    }
}

/// `remote_storage_pool_get_info_ret`, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePoolInfo {
    pub state: i32,
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

impl XdrDecode for StoragePoolInfo {
    fn decode(decoder: &mut Decoder<'_>) -> Result<StoragePoolInfo, XdrError> {
        Ok(StoragePoolInfo {
            state: decoder.get_i32()?,
            capacity: decoder.get_u64()?,
            allocation: decoder.get_u64()?,
            available: decoder.get_u64()?,
        })
    }
}

/// `remote_storage_vol_get_info_ret`, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageVolumeInfo {
    pub volume_type: i32,
    pub capacity: u64,
    pub allocation: u64,
}

impl XdrDecode for StorageVolumeInfo {
    fn decode(decoder: &mut Decoder<'_>) -> Result<StorageVolumeInfo, XdrError> {
        Ok(StorageVolumeInfo {
            volume_type: decoder.get_i32()?,
            capacity: decoder.get_u64()?,
            allocation: decoder.get_u64()?,
        })
    }
}

/// The list results (`remote_connect_list_all_domains_ret` and friends): the handles, then a
/// count the driver does not need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleList<T>(pub Vec<T>);

/// Largest list of each handle type.
pub trait ListLimit {
    const LIST_MAX: usize;
}

impl ListLimit for Domain {
    const LIST_MAX: usize = DOMAIN_LIST_MAX;
}

impl ListLimit for DomainSnapshot {
    const LIST_MAX: usize = SNAPSHOT_LIST_MAX;
}

impl ListLimit for StorageVolume {
    const LIST_MAX: usize = VOLUME_LIST_MAX;
}

impl<T: XdrDecode + ListLimit> XdrDecode for HandleList<T> {
    fn decode(decoder: &mut Decoder<'_>) -> Result<HandleList<T>, XdrError> {
        let handles = decoder.get_array(T::LIST_MAX, T::decode)?;
        let _count = decoder.get_u32()?;
        Ok(HandleList(handles))
    }
}

/// `remote_auth_list_ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthTypes(pub Vec<i32>);

impl XdrDecode for AuthTypes {
    fn decode(decoder: &mut Decoder<'_>) -> Result<AuthTypes, XdrError> {
        decoder.get_array(AUTH_TYPE_LIST_MAX, Decoder::get_i32).map(AuthTypes)
    }
}

/// One entry of `remote_domain_interface_addresses_ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInterface {
    pub name: String,
    pub hardware_address: Option<String>,
    pub addresses: Vec<IpAddress>,
}

/// `remote_domain_ip_addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAddress {
    /// `virIPAddrType`: 0 IPv4, 1 IPv6.
    pub address_type: i32,
    pub address: String,
    pub prefix: u32,
}

pub const IP_ADDRESS_TYPE_IPV4: i32 = 0;

/// `remote_domain_interface_addresses_ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInterfaces(pub Vec<DomainInterface>);

impl XdrDecode for DomainInterfaces {
    fn decode(decoder: &mut Decoder<'_>) -> Result<DomainInterfaces, XdrError> {
        decoder
            .get_array(INTERFACE_MAX, |decoder| {
                Ok(DomainInterface {
                    name: decoder.get_string(STRING_MAX)?,
                    hardware_address: decoder.get_optional(|decoder| decoder.get_string(STRING_MAX))?,
                    addresses: decoder.get_array(IP_ADDRESS_MAX, |decoder| {
                        Ok(IpAddress {
                            address_type: decoder.get_i32()?,
                            address: decoder.get_string(STRING_MAX)?,
                            prefix: decoder.get_u32()?,
                        })
                    })?,
                })
            })
            .map(DomainInterfaces)
    }
}

/// `REMOTE_CONNECT_GET_ALL_DOMAIN_STATS_MAX`: typed parameters per domain record.
pub const DOMAIN_STATS_PARAMETERS_MAX: usize = 262_144;
/// `VIR_DOMAIN_STATS_STATE`.
pub const DOMAIN_STATS_STATE: u32 = 1;

/// `remote_typed_param_value`: a discriminated union.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedValue {
    Int(i32),
    UnsignedInt(u32),
    Long(i64),
    UnsignedLong(u64),
    Double(f64),
    Boolean(bool),
    String(String),
}

/// `remote_typed_param`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedParameter {
    pub field: String,
    pub value: TypedValue,
}

impl XdrDecode for TypedParameter {
    fn decode(decoder: &mut Decoder<'_>) -> Result<TypedParameter, XdrError> {
        let field = decoder.get_string(STRING_MAX)?;
        let value = match decoder.get_u32()? {
            1 => TypedValue::Int(decoder.get_i32()?),
            2 => TypedValue::UnsignedInt(decoder.get_u32()?),
            3 => TypedValue::Long(decoder.get_i64()?),
            4 => TypedValue::UnsignedLong(decoder.get_u64()?),
            5 => TypedValue::Double(f64::from_bits(decoder.get_u64()?)),
            6 => TypedValue::Boolean(decoder.get_i32()? != 0),
            7 => TypedValue::String(decoder.get_string(STRING_MAX)?),
            value => return Err(XdrError::InvalidValue { what: "typed parameter type", value }),
        };
        Ok(TypedParameter { field, value })
    }
}

/// `remote_domain_stats_record`.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainStatsRecord {
    pub domain: Domain,
    pub parameters: Vec<TypedParameter>,
}

impl DomainStatsRecord {
    /// The `state.state` parameter, when present.
    pub fn state(&self) -> Option<DomainState> {
        self.parameters.iter().find(|parameter| parameter.field == "state.state").and_then(|parameter| match parameter
            .value
        {
            TypedValue::Int(state) => Some(DomainState::from_number(state)),
            _ => None,
        })
    }
}

/// `remote_connect_get_all_domain_stats_ret`.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainStatsRecords(pub Vec<DomainStatsRecord>);

impl XdrDecode for DomainStatsRecords {
    fn decode(decoder: &mut Decoder<'_>) -> Result<DomainStatsRecords, XdrError> {
        decoder
            .get_array(DOMAIN_LIST_MAX, |decoder| {
                Ok(DomainStatsRecord {
                    domain: Domain::decode(decoder)?,
                    parameters: decoder.get_array(DOMAIN_STATS_PARAMETERS_MAX, TypedParameter::decode)?,
                })
            })
            .map(DomainStatsRecords)
    }
}

/// An empty `remote_nonnull_domain doms<>` argument: "all domains".
#[derive(Debug, Clone, Copy)]
pub struct AllDomains;

impl XdrEncode for AllDomains {
    fn encode(&self, encoder: &mut Encoder) {
        encoder.put_u32(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &impl XdrEncode) -> Vec<u8> {
        let mut encoder = Encoder::new();
        value.encode(&mut encoder);
        encoder.into_bytes()
    }

    #[test]
    fn header_round_trips_with_the_wire_layout() -> Result<(), XdrError> {
        let header = Header {
            program: REMOTE_PROGRAM,
            version: REMOTE_PROTOCOL_VERSION,
            procedure: Procedure::AuthList.number(),
            message_type: MessageType::Stream,
            serial: 7,
            status: MessageStatus::Continue,
        };
        let mut encoder = Encoder::new();
        header.encode(&mut encoder);
        let bytes = encoder.into_bytes();
        assert_eq!(bytes.len(), HEADER_SIZE);
        assert_eq!(bytes, [0x20, 0, 0x80, 0x86, 0, 0, 0, 1, 0, 0, 0, 66, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0, 2]);
        assert_eq!(Header::decode(&mut Decoder::new(&bytes))?, header);
        let mut bad_type = bytes.clone();
        bad_type[15] = 9;
        assert!(Header::decode(&mut Decoder::new(&bad_type)).is_err());
        Ok(())
    }

    #[test]
    fn domain_handle_round_trips() -> Result<(), XdrError> {
        let domain = Domain { name: "hp-1".into(), uuid: [0xab; 16], id: -1 };
        let snapshot = DomainSnapshot { name: "s1".into(), domain: domain.clone() };
        let bytes = encoded(&snapshot);
        assert_eq!(bytes.len(), 8 + 8 + 16 + 4);
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(DomainSnapshot::decode(&mut decoder)?, snapshot);
        decoder.finish()
    }

    #[test]
    fn open_arguments_encode_a_nullable_string_and_flags() {
        let bytes = encoded(&(Some("test:///default"), 0_u32));
        let mut expected = vec![0, 0, 0, 1, 0, 0, 0, 15];
        expected.extend_from_slice(b"test:///default\0");
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn remote_error_decodes_code_domain_and_message() -> Result<(), XdrError> {
        let mut encoder = Encoder::new();
        encoder.put_i32(42);
        encoder.put_i32(10);
        encoder.put_optional_string(Some("domain not found"));
        encoder.put_i32(2);
        encoder.put_bool(false);
        for _ in 0..3 {
            encoder.put_optional_string(None);
        }
        encoder.put_i32(0);
        encoder.put_i32(0);
        encoder.put_bool(false);
        let bytes = encoder.into_bytes();
        let mut decoder = Decoder::new(&bytes);
        let error = RemoteError::decode(&mut decoder)?;
        decoder.finish()?;
        assert_eq!(error, RemoteError { code: 42, domain: 10, message: Some("domain not found".into()), level: 2 });
        assert!(RemoteError::decode(&mut Decoder::new(&bytes[..20])).is_err());
        Ok(())
    }

    #[test]
    fn node_info_reads_the_model_as_one_int_per_character() -> Result<(), XdrError> {
        let mut encoder = Encoder::new();
        for index in 0..32 {
            encoder.put_i32(i32::from(*b"x86_64".get(index).unwrap_or(&0)));
        }
        encoder.put_u64(8 * 1024 * 1024);
        for value in [4, 2400, 1, 1, 4, 1] {
            encoder.put_i32(value);
        }
        let bytes = encoder.into_bytes();
        let info = NodeInfo::decode(&mut Decoder::new(&bytes))?;
        assert_eq!((info.model.as_str(), info.memory_kib, info.cpus, info.mhz), ("x86_64", 8 * 1024 * 1024, 4, 2400));
        Ok(())
    }
}
