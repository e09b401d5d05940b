//! What placement decides on, read in one round trip: the instances waiting for a host, every
//! host with its usage, the groups' policies and the affinity keys on each host.

use sqlx::SqliteConnection;

use super::instances::{AffinityKeys, InstanceFilter};
use super::{ReadsTogether, StoreError, StoreResult, groups, hosts, instances};
use crate::model::{Group, Host, Instance};

pub struct Fleet {
    /// The instances `waiting` selects, in id order.
    pub waiting: Vec<Instance>,
    /// By provider, then name.
    pub hosts: Vec<Host>,
    /// By name, without their member hosts (each host lists its groups).
    pub groups: Vec<Group>,
    pub affinity_keys: AffinityKeys,
}

/// Reads the [`Fleet`] on `connection` (in a transaction, a consistent picture).
pub async fn read(connection: &mut SqliteConnection, waiting: &InstanceFilter) -> StoreResult<Fleet> {
    let reads = ReadsTogether::new()
        .read(|query| instances::push_list(query, waiting))
        .read(hosts::push_list)
        .read(groups::push_list_without_hosts)
        .read(instances::push_affinity_keys)
        .fetch(connection)
        .await?;
    let [waiting, hosts, groups, affinity_keys] =
        reads.try_into().map_err(|_| StoreError::Corrupt("the fleet's reads".into()))?;
    Ok(Fleet {
        waiting: instances::from_rows(&waiting)?,
        hosts: hosts::from_rows(&hosts)?,
        groups: groups::without_hosts_from_rows(&groups)?,
        affinity_keys: instances::affinity_keys_from_rows(&affinity_keys)?,
    })
}
