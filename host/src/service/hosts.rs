//! Hosts: listing and the operator's settings (drain, capacity, labels).

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Service, ServiceError, ServiceResult};
use crate::auth::Caller;
use crate::auth::access::permission;
use crate::auth::permissions::Resource;
use std::collections::{BTreeMap, HashSet};

use crate::model::{Capacity, Host, Labels, NewEvent, Provider, UsbDeviceGroup};
use crate::store;

/// `PATCH /v1/hosts/{id}`: fields absent are left as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostPatch {
    /// A draining host takes no new instances; running ones stay.
    pub draining: Option<bool>,
    /// Replaces the capacity limits; `null` fields mean "the host's hardware".
    pub capacity: Option<Capacity>,
    /// Replaces all labels.
    pub labels: Option<Labels>,
    /// Maintenance: the host takes no new instances.
    pub maintenance: Option<bool>,
    /// Replaces the USB device groups: name → number of devices.
    pub usb_devices: Option<BTreeMap<String, u32>>,
}

impl Service {
    pub async fn list_providers(&self, caller: &Caller) -> ServiceResult<Vec<Provider>> {
        self.require_global(caller, Resource::Node, "list", None).await?;
        Ok(self.providers().list())
    }

    pub async fn list_hosts(&self, caller: &Caller) -> ServiceResult<Vec<Host>> {
        self.require_global(caller, Resource::Node, "list", None).await?;
        let hosts = self.load_hosts().await?;
        self.without_what_caller_cannot_see(caller, hosts).await
    }

    pub(super) async fn load_hosts(&self) -> ServiceResult<Vec<Host>> {
        Ok(store::hosts::list(&mut *self.store().reader().await?).await?)
    }

    pub async fn get_host(&self, caller: &Caller, id: Uuid) -> ServiceResult<Host> {
        self.require_global(caller, Resource::Node, "list", None).await?;
        let host = self.load_host(id).await?;
        let hosts = self.without_what_caller_cannot_see(caller, vec![host]).await?;
        hosts.into_iter().next().ok_or_else(|| ServiceError::not_found("host", id))
    }

    /// Hosts serve every project, but what they show of node groups and cached templates is
    /// cut to those the caller may list: another project's are not even named.
    async fn without_what_caller_cannot_see(&self, caller: &Caller, mut hosts: Vec<Host>) -> ServiceResult<Vec<Host>> {
        let mut reader = self.store().reader().await?;
        let groups: HashSet<Uuid> = store::groups::list(&mut reader)
            .await?
            .into_iter()
            .filter(|group| {
                let id = group.id.to_string();
                caller.access.allows(permission(Resource::Group, "list"), Some(group.project_id), Some(&id))
            })
            .map(|group| group.id)
            .collect();
        let templates: HashSet<String> = store::templates::list(&mut reader)
            .await?
            .into_iter()
            .filter(|template| {
                let id = template.id.to_string();
                caller.access.allows(permission(Resource::Template, "list"), Some(template.project_id), Some(&id))
            })
            .map(|template| template.name)
            .collect();
        for host in &mut hosts {
            host.groups.retain(|group| groups.contains(group));
            host.cached_templates.retain(|cached| templates.contains(&cached.name));
        }
        Ok(hosts)
    }

    pub(super) async fn load_host(&self, id: Uuid) -> ServiceResult<Host> {
        store::hosts::get(&mut *self.store().reader().await?, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("host", id))
    }

    /// A host by id, by name, or by `provider/name`.
    pub(super) async fn resolve_host_id(&self, caller: &Caller, reference: &str) -> ServiceResult<Uuid> {
        if let Ok(id) = Uuid::parse_str(reference) {
            return Ok(self.get_host(caller, id).await?.id);
        }
        let hosts = self.list_hosts(caller).await?;
        let matches: Vec<&Host> = hosts
            .iter()
            .filter(|host| host.name == reference || format!("{}/{}", host.provider, host.name) == reference)
            .collect();
        match matches.as_slice() {
            [host] => Ok(host.id),
            [] => Err(ServiceError::not_found("host", reference)),
            _ => {
                Err(ServiceError::Invalid(format!("host name '{reference}' is ambiguous; use provider/name or the id")))
            }
        }
    }

    pub async fn update_host(&self, caller: &Caller, id: Uuid, patch: HostPatch) -> ServiceResult<Host> {
        self.require_global(caller, Resource::Node, "change_config", Some(&id.to_string())).await?;
        if let Some(capacity) = &patch.capacity {
            if capacity.vcpu == Some(0) || capacity.ram_mb == Some(0) {
                return Err(ServiceError::Invalid("capacity.vcpu and capacity.ram_mb must be positive".into()));
            }
            if capacity.max_instances.is_some_and(|max| max > 100_000) {
                return Err(ServiceError::Invalid("capacity.max_instances must be at most 100000".into()));
            }
        }
        if let Some(devices) = &patch.usb_devices
            && let Some(name) = devices.keys().find(|name| name.is_empty() || name.len() > 128)
        {
            return Err(ServiceError::Invalid(format!("usb_devices: device group name '{name}' must be 1-128 bytes")));
        }
        if let Some(labels) = &patch.labels {
            if labels.len() > 64 {
                return Err(ServiceError::Invalid("labels must have at most 64 entries".into()));
            }
            if let Some(key) = labels.keys().find(|key| key.is_empty() || key.len() > 128 || key.contains(['=', ','])) {
                return Err(ServiceError::Invalid(format!("label key '{key}' must be 1-128 bytes without '=' or ','")));
            }
        }
        let mut transaction = self.store().begin().await?;
        let mut host =
            store::hosts::get(&mut transaction, id).await?.ok_or_else(|| ServiceError::not_found("host", id))?;
        let previous_state = host.state;
        if let Some(draining) = patch.draining {
            host.draining = draining;
        }
        if let Some(capacity) = patch.capacity.clone() {
            host.capacity = capacity;
        }
        if let Some(labels) = patch.labels.clone() {
            host.labels = labels;
        }
        if let Some(maintenance) = patch.maintenance {
            host.maintenance = maintenance;
        }
        if let Some(devices) = &patch.usb_devices {
            host.usb_devices = devices
                .iter()
                .map(|(name, total)| {
                    let busy = host.usb_devices.get(name).map_or(0, |group| group.busy);
                    (name.clone(), UsbDeviceGroup::new(*total, busy))
                })
                .collect();
        }
        host.updated_at = store::now();
        store::hosts::update_settings(&mut transaction, &host).await?;
        transaction.append_event(
            NewEvent::new("host.updated", "host", id).by(caller).data(serde_json::to_value(&patch).unwrap_or_default()),
        );
        let host = store::hosts::get(&mut transaction, id).await?.ok_or_else(|| ServiceError::not_found("host", id))?;
        if host.state != previous_state {
            transaction.append_event(
                NewEvent::new("host.state_changed", "host", id)
                    .actor(caller.actor())
                    .data(json!({ "from": previous_state, "to": host.state })),
            );
        }
        transaction.commit().await?;
        self.task_engine().wake();
        Ok(host)
    }
}
