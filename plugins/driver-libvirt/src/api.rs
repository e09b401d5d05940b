//! Typed wrappers over [`Client::call`]: one method per libvirt procedure the driver uses, each
//! one round trip, named after libvirt's public API.

use std::io::{Read, Write};

use crate::client::{Client, ClientError, DownloadStream};
use crate::protocol::{
    AllDomains, DOMAIN_STATS_STATE, Domain, DomainInterfaces, DomainSnapshot, DomainState, DomainStatsRecords,
    HandleList, NodeInfo, Procedure, StoragePool, StoragePoolInfo, StorageVolume, StorageVolumeInfo, Uuid,
};

pub type CallResult<T> = Result<T, ClientError>;

impl<Transport: Read + Write> Client<Transport> {
    pub fn connect_get_type(&mut self) -> CallResult<String> {
        self.call(Procedure::ConnectGetType, &())
    }

    /// The state of every domain in one call (`VIR_DOMAIN_STATS_STATE`).
    pub fn connect_get_all_domain_states(&mut self) -> CallResult<Vec<(Domain, Option<DomainState>)>> {
        let DomainStatsRecords(records) =
            self.call(Procedure::ConnectGetAllDomainStats, &(AllDomains, DOMAIN_STATS_STATE, 0_u32))?;
        Ok(records
            .into_iter()
            .map(|record| {
                let state = record.state();
                (record.domain, state)
            })
            .collect())
    }

    pub fn connect_get_version(&mut self) -> CallResult<u64> {
        self.call(Procedure::ConnectGetVersion, &())
    }

    pub fn connect_get_lib_version(&mut self) -> CallResult<u64> {
        self.call(Procedure::ConnectGetLibVersion, &())
    }

    pub fn connect_get_capabilities(&mut self) -> CallResult<String> {
        self.call(Procedure::ConnectGetCapabilities, &())
    }

    pub fn node_get_info(&mut self) -> CallResult<NodeInfo> {
        self.call(Procedure::NodeGetInfo, &())
    }

    pub fn connect_list_all_domains(&mut self, flags: u32) -> CallResult<Vec<Domain>> {
        let HandleList(domains) = self.call(Procedure::ConnectListAllDomains, &(1_i32, flags))?;
        Ok(domains)
    }

    pub fn domain_lookup_by_name(&mut self, name: &str) -> CallResult<Domain> {
        self.call(Procedure::DomainLookupByName, &name)
    }

    pub fn domain_lookup_by_uuid(&mut self, uuid: &Uuid) -> CallResult<Domain> {
        self.call(Procedure::DomainLookupByUuid, &UuidArgument(*uuid))
    }

    /// Defines (or, for an existing name and UUID, redefines) a persistent domain.
    pub fn domain_define_xml_flags(&mut self, xml: &str, flags: u32) -> CallResult<Domain> {
        self.call(Procedure::DomainDefineXmlFlags, &(xml, flags))
    }

    pub fn domain_create(&mut self, domain: &Domain) -> CallResult<()> {
        self.call(Procedure::DomainCreate, domain)
    }

    pub fn domain_destroy(&mut self, domain: &Domain) -> CallResult<()> {
        self.call(Procedure::DomainDestroy, domain)
    }

    pub fn domain_shutdown_flags(&mut self, domain: &Domain, flags: u32) -> CallResult<()> {
        self.call(Procedure::DomainShutdownFlags, &(domain, flags))
    }

    pub fn domain_reboot(&mut self, domain: &Domain, flags: u32) -> CallResult<()> {
        self.call(Procedure::DomainReboot, &(domain, flags))
    }

    pub fn domain_suspend(&mut self, domain: &Domain) -> CallResult<()> {
        self.call(Procedure::DomainSuspend, domain)
    }

    pub fn domain_resume(&mut self, domain: &Domain) -> CallResult<()> {
        self.call(Procedure::DomainResume, domain)
    }

    pub fn domain_undefine_flags(&mut self, domain: &Domain, flags: u32) -> CallResult<()> {
        self.call(Procedure::DomainUndefineFlags, &(domain, flags))
    }

    pub fn domain_get_state(&mut self, domain: &Domain) -> CallResult<DomainState> {
        self.call(Procedure::DomainGetState, &(domain, 0_u32))
    }

    pub fn domain_get_xml_desc(&mut self, domain: &Domain, flags: u32) -> CallResult<String> {
        self.call(Procedure::DomainGetXmlDesc, &(domain, flags))
    }

    pub fn domain_interface_addresses(&mut self, domain: &Domain, source: u32) -> CallResult<DomainInterfaces> {
        self.call(Procedure::DomainInterfaceAddresses, &(domain, source, 0_u32))
    }

    pub fn domain_snapshot_create_xml(&mut self, domain: &Domain, xml: &str, flags: u32) -> CallResult<DomainSnapshot> {
        self.call(Procedure::DomainSnapshotCreateXml, &(domain, xml, flags))
    }

    pub fn domain_list_all_snapshots(&mut self, domain: &Domain, flags: u32) -> CallResult<Vec<DomainSnapshot>> {
        let HandleList(snapshots) = self.call(Procedure::DomainListAllSnapshots, &(domain, 1_i32, flags))?;
        Ok(snapshots)
    }

    pub fn domain_snapshot_lookup_by_name(&mut self, domain: &Domain, name: &str) -> CallResult<DomainSnapshot> {
        self.call(Procedure::DomainSnapshotLookupByName, &(domain, name, 0_u32))
    }

    pub fn domain_snapshot_get_xml_desc(&mut self, snapshot: &DomainSnapshot) -> CallResult<String> {
        self.call(Procedure::DomainSnapshotGetXmlDesc, &(snapshot, 0_u32))
    }

    pub fn domain_snapshot_is_current(&mut self, snapshot: &DomainSnapshot) -> CallResult<bool> {
        let current: i32 = self.call(Procedure::DomainSnapshotIsCurrent, &(snapshot, 0_u32))?;
        Ok(current != 0)
    }

    /// The current snapshot; `NO_DOMAIN_SNAPSHOT` when there is none.
    pub fn domain_snapshot_current(&mut self, domain: &Domain) -> CallResult<DomainSnapshot> {
        self.call(Procedure::DomainSnapshotCurrent, &(domain, 0_u32))
    }

    pub fn domain_revert_to_snapshot(&mut self, snapshot: &DomainSnapshot, flags: u32) -> CallResult<()> {
        self.call(Procedure::DomainRevertToSnapshot, &(snapshot, flags))
    }

    pub fn domain_snapshot_delete(&mut self, snapshot: &DomainSnapshot, flags: u32) -> CallResult<()> {
        self.call(Procedure::DomainSnapshotDelete, &(snapshot, flags))
    }

    /// Creates and starts a transient pool.
    pub fn storage_pool_create_xml(&mut self, xml: &str) -> CallResult<StoragePool> {
        self.call(Procedure::StoragePoolCreateXml, &(xml, 0_u32))
    }

    /// Stops a pool (a transient one disappears).
    pub fn storage_pool_destroy(&mut self, pool: &StoragePool) -> CallResult<()> {
        self.call(Procedure::StoragePoolDestroy, pool)
    }

    pub fn storage_pool_lookup_by_name(&mut self, name: &str) -> CallResult<StoragePool> {
        self.call(Procedure::StoragePoolLookupByName, &name)
    }

    pub fn storage_pool_get_info(&mut self, pool: &StoragePool) -> CallResult<StoragePoolInfo> {
        self.call(Procedure::StoragePoolGetInfo, pool)
    }

    pub fn storage_pool_list_all_volumes(&mut self, pool: &StoragePool) -> CallResult<Vec<StorageVolume>> {
        let HandleList(volumes) = self.call(Procedure::StoragePoolListAllVolumes, &(pool, 1_i32, 0_u32))?;
        Ok(volumes)
    }

    pub fn storage_vol_lookup_by_name(&mut self, pool: &StoragePool, name: &str) -> CallResult<StorageVolume> {
        self.call(Procedure::StorageVolLookupByName, &(pool, name))
    }

    pub fn storage_vol_create_xml(&mut self, pool: &StoragePool, xml: &str, flags: u32) -> CallResult<StorageVolume> {
        self.call(Procedure::StorageVolCreateXml, &(pool, xml, flags))
    }

    pub fn storage_vol_delete(&mut self, volume: &StorageVolume) -> CallResult<()> {
        self.call(Procedure::StorageVolDelete, &(volume, 0_u32))
    }

    pub fn storage_vol_get_info(&mut self, volume: &StorageVolume) -> CallResult<StorageVolumeInfo> {
        self.call(Procedure::StorageVolGetInfo, volume)
    }

    pub fn storage_vol_get_path(&mut self, volume: &StorageVolume) -> CallResult<String> {
        self.call(Procedure::StorageVolGetPath, volume)
    }

    /// Uploads `length` bytes from `read_chunk` into `volume` from offset 0 (see
    /// [`Client::upload`]).
    pub fn storage_vol_upload(
        &mut self,
        volume: &StorageVolume,
        length: u64,
        read_chunk: impl FnMut(&mut Vec<u8>) -> Result<(), String>,
        on_progress: impl FnMut(u64),
    ) -> CallResult<u64> {
        self.storage_vol_upload_at(volume, 0, length, read_chunk, on_progress)
    }

    /// Uploads `length` bytes from `read_chunk` into `volume` at `offset`, leaving the rest of
    /// the volume as it is (libvirt opens the file without truncating it).
    pub fn storage_vol_upload_at(
        &mut self,
        volume: &StorageVolume,
        offset: u64,
        length: u64,
        read_chunk: impl FnMut(&mut Vec<u8>) -> Result<(), String>,
        on_progress: impl FnMut(u64),
    ) -> CallResult<u64> {
        self.upload(Procedure::StorageVolUpload, &(volume, offset, length, 0_u32), read_chunk, on_progress)
    }

    /// Streams `length` bytes of `volume` from `offset` (0 and 0: all of it) to `on_data` (see
    /// [`Client::download`]).
    pub fn storage_vol_download(
        &mut self,
        volume: &StorageVolume,
        offset: u64,
        length: u64,
        on_data: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> CallResult<u64> {
        self.download(Procedure::StorageVolDownload, &(volume, offset, length, 0_u32), on_data)
    }

    /// Opens a download of `volume` from `offset` (`length` 0: to its end), to be read piece by
    /// piece (see [`Client::start_download`]).
    pub fn storage_vol_start_download(
        &mut self,
        volume: &StorageVolume,
        offset: u64,
        length: u64,
    ) -> CallResult<DownloadStream> {
        self.start_download(Procedure::StorageVolDownload, &(volume, offset, length, 0_u32))
    }

    /// Creates a volume in `pool` from `xml` with the content of `source` (libvirt's storage
    /// driver copies the bytes, or runs `qemu-img convert` when either side is not raw).
    pub fn storage_vol_create_xml_from(
        &mut self,
        pool: &StoragePool,
        xml: &str,
        source: &StorageVolume,
        flags: u32,
    ) -> CallResult<StorageVolume> {
        self.call(Procedure::StorageVolCreateXmlFrom, &(pool, xml, source, flags))
    }

    pub fn storage_vol_get_xml_desc(&mut self, volume: &StorageVolume) -> CallResult<String> {
        self.call(Procedure::StorageVolGetXmlDesc, &(volume, 0_u32))
    }

    pub fn storage_vol_resize(&mut self, volume: &StorageVolume, capacity: u64, flags: u32) -> CallResult<()> {
        self.call(Procedure::StorageVolResize, &(volume, capacity, flags))
    }
}

/// `remote_uuid` as a call argument: 16 bytes, no length word.
struct UuidArgument(Uuid);

impl crate::protocol::XdrEncode for UuidArgument {
    fn encode(&self, encoder: &mut crate::xdr::Encoder) {
        encoder.put_fixed_opaque(&self.0);
    }
}
