//! What placement decides on, read in one read or write transaction: the instances waiting
//! for a host, every host with its usage, the groups' policies, the affinity keys on each host
//! and the templates.

use rusqlite::Connection;

use super::instances::{AffinityKeys, InstanceFilter};
use super::{StoreResult, groups, hosts, inline, instances, templates};
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

/// Reads the [`Fleet`] inline on `connection`: in a transaction (a read transaction of
/// [`super::Store::read_inline`], or the write transaction of [`super::Store::transact`] that
/// writes the placements), a consistent picture.
pub fn read(connection: &Connection, waiting: &InstanceFilter) -> StoreResult<Fleet> {
    let fetch = |sql: &str| inline::fetch_all(connection, sql, []);
    Ok(Fleet {
        waiting: instances::from_rows(&instances::list_statement(waiting).fetch_inline(connection)?)?,
        hosts: hosts::from_rows(&fetch(&hosts::SELECT_ALL)?)?,
        groups: groups::without_hosts_from_rows(&fetch(groups::SELECT_ALL_WITHOUT_HOSTS)?)?,
        affinity_keys: instances::affinity_keys_from_rows(&fetch(instances::SELECT_AFFINITY_KEYS)?)?,
        templates: templates::list_from_reads(&fetch(templates::SELECT_ALL)?, &fetch(templates::VERSIONS_WITH_FILES)?)?,
    })
}
