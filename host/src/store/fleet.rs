//! What placement decides on, read in one round trip: the instances waiting for a host, every
//! host with its usage, the groups' policies, the affinity keys on each host and the templates.

use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;

use super::instances::{AffinityKeys, InstanceFilter};
use super::{ReadsTogether, Store, StoreError, StoreResult, WriteTx, groups, hosts, instances, templates};
use crate::model::{Group, Host, Instance, Template};

pub struct Fleet {
    /// The instances `waiting` selects, in id order.
    pub waiting: Vec<Instance>,
    /// By provider, then name.
    pub hosts: Vec<Host>,
    /// By name, without their member hosts (each host lists its groups).
    pub groups: Vec<Group>,
    pub affinity_keys: AffinityKeys,
    /// By name, with their versions.
    pub templates: Vec<Template>,
}

/// Reads the [`Fleet`] on `connection` (in a transaction, a consistent picture).
pub async fn read(connection: &mut SqliteConnection, waiting: &InstanceFilter) -> StoreResult<Fleet> {
    from_reads(add_reads(ReadsTogether::new(), waiting).fetch(connection).await?)
}

/// Begins a write transaction and reads the [`Fleet`] in it, in one round trip: what placement
/// decides on, as its writes will find it.
#[track_caller]
pub fn begin_reading<'a>(
    store: &'a Store,
    waiting: &InstanceFilter,
) -> impl Future<Output = StoreResult<(WriteTx, Fleet)>> + Send + 'a {
    let beginning = store.begin_reading(|reads| add_reads(reads, waiting));
    async move {
        let (transaction, rows) = beginning.await?;
        Ok((transaction, from_reads(rows)?))
    }
}

fn add_reads(reads: ReadsTogether, waiting: &InstanceFilter) -> ReadsTogether {
    let reads = reads
        .read(|query| instances::push_list(query, waiting))
        .read(hosts::push_list)
        .read(groups::push_list_without_hosts)
        .read(instances::push_affinity_keys);
    templates::read_all(reads)
}

fn from_reads(reads: Vec<Vec<SqliteRow>>) -> StoreResult<Fleet> {
    let [waiting, hosts, groups, affinity_keys, templates, versions] =
        <[_; 6]>::try_from(reads).map_err(|_| StoreError::Corrupt("the fleet's reads".into()))?;
    Ok(Fleet {
        waiting: instances::from_rows(&waiting)?,
        hosts: hosts::from_rows(&hosts)?,
        groups: groups::without_hosts_from_rows(&groups)?,
        affinity_keys: instances::affinity_keys_from_rows(&affinity_keys)?,
        templates: templates::list_from_reads(&templates, &versions)?,
    })
}
