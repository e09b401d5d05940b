//! The placement pass: gives hosts to instances waiting in `scheduling`, oldest first, in one
//! write transaction so that concurrent requests can never over-commit a host. The decisions
//! themselves come from the pure `scheduler`.

use std::collections::HashMap;

use serde_json::json;

use super::{Service, ServiceResult};
use crate::model::{HostState, InstanceState, NewEvent};
use crate::scheduler::{self, CapacityMode, HostCandidate, PlacementRequest};

/// Priority of requests that do not give one (1 is the most urgent, 10000 the least).
const DEFAULT_PRIORITY: u32 = 1000;
use crate::store::{self, instances::InstanceFilter};

impl Service {
    pub(super) async fn place_waiting_instances(&self) -> ServiceResult<()> {
        let filter = InstanceFilter { states: vec![InstanceState::Scheduling], unplaced: true, ..Default::default() };
        if store::instances::list(&mut *self.store().reader().await?, &filter).await?.is_empty() {
            return Ok(());
        }
        let templates: HashMap<_, _> =
            self.list_templates().await?.into_iter().map(|template| (template.id, template)).collect();

        let mut transaction = self.store().begin().await?;
        let waiting = store::instances::list(&mut transaction, &filter).await?;
        let hosts = store::hosts::list(&mut transaction).await?;
        let loaded: Vec<&str> = self.providers().loaded().map(|(name, _)| name).collect();
        let mut candidates: Vec<HostCandidate> = hosts
            .iter()
            .map(|host| HostCandidate {
                id: host.id,
                state: if loaded.contains(&host.provider.as_str()) { host.state } else { HostState::Offline },
                maintenance: false,
                arch: host.arch,
                labels: host.labels.clone(),
                groups: Vec::new(),
                capacity_mode: CapacityMode::Resource,
                max_instances: host.capacity.max_instances,
                vcpu_limit: host.vcpu_limit(),
                ram_limit_mb: host.ram_limit_mb(),
                disk_limit_gb: host.disk_gb,
                used: host.usage.clone(),
                usb_free: HashMap::new(),
                affinity_keys: HashMap::new(),
                cached_templates: host
                    .cached_templates
                    .iter()
                    .map(|template| (template.name.clone(), template.version))
                    .collect(),
            })
            .collect();
        let requests: Vec<PlacementRequest> = waiting
            .iter()
            .map(|instance| {
                let template = instance.template_id.and_then(|id| templates.get(&id));
                PlacementRequest {
                    instance_id: instance.id,
                    priority: DEFAULT_PRIORITY,
                    arch: template.map(|template| template.arch),
                    vcpu: instance.vcpu,
                    ram_mb: instance.ram_mb,
                    disk_gb: instance.disk_gb,
                    host_id: instance.requested_host_id,
                    group_id: None,
                    labels: Vec::new(),
                    usb_device: None,
                    affinity: None,
                    template: template.map(|template| (template.name.clone(), instance.template_version.unwrap_or(0))),
                }
            })
            .collect();
        let decisions = scheduler::place_all(&mut candidates, &HashMap::new(), &requests);
        for (instance, decision) in waiting.into_iter().zip(decisions) {
            match decision.host_id {
                Some(host_id) => {
                    let Some(host) = hosts.iter().find(|host| host.id == host_id) else { continue };
                    let mut instance = instance;
                    instance.host_id = Some(host.id);
                    instance.provider = Some(host.provider.clone());
                    instance.updated_at = store::now();
                    store::instances::update(&mut transaction, &instance).await?;
                    transaction
                        .append_event(
                            NewEvent::new("instance.placed", "instance", instance.id)
                                .data(json!({ "host_id": host.id, "host": host.name, "provider": host.provider })),
                        )
                        .await?;
                }
                None => {
                    let message = format!("waiting for capacity: {}", decision.explain());
                    store::tasks::set_pending_create_message(&mut transaction, instance.id, &message).await?;
                }
            }
        }
        transaction.commit().await?;
        Ok(())
    }
}
