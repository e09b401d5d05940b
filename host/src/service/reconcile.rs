//! Reconciliation: each provider's report of hosts and instances is compared with the
//! database. New hosts are recorded, silent ones go offline, and instance drift (gone or
//! appeared behind our back, or a different state) becomes state changes and events.

use std::collections::{HashMap, HashSet};

use serde_json::json;
use uuid::Uuid;

use super::lifecycle::STATE_COLUMNS;
use super::providers::{
    arch_from_driver, cached_templates_from_driver, cached_templates_reported, host_state_from_driver,
    instance_state_from_driver,
};
use super::{Service, ServiceResult};
use crate::model::{Capacity, Host, HostState, Instance, InstanceOrigin, InstanceState, NewEvent, TaskState, Usage};
use crate::plugins::Driver;
use crate::plugins::driver_types as driver;
use crate::store;

/// Instances in these states are expected to exist on their provider.
const EXPECTED_ON_PROVIDER: &[InstanceState] = &[
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Stopping,
    InstanceState::Stopped,
    InstanceState::Suspended,
];

impl Service {
    pub(super) async fn reconcile_loop(&self) {
        let interval = self.inner.settings.reconcile_interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
            self.reconcile_all().await;
        }
    }

    /// One reconciliation pass over every loaded provider, all providers at once so that a
    /// slow one delays nobody else.
    pub async fn reconcile_all(&self) {
        let providers: Vec<(String, Driver)> =
            self.providers().loaded().map(|(name, driver)| (name.to_owned(), driver.clone())).collect();
        let passes = providers.iter().map(|(name, driver)| self.reconcile_provider(name, driver));
        futures::future::join_all(passes).await;
        self.task_engine().wake();
    }

    async fn reconcile_provider(&self, name: &str, driver: &Driver) {
        let hosts = self.sync_hosts(name, driver).await;
        self.providers().record_sync(name, hosts.as_ref().map(|hosts| *hosts).map_err(|error| error.to_string()));
        if hosts.is_ok()
            && let Err(error) = self.reconcile_instances(name, driver).await
        {
            tracing::warn!(provider = %name, error = %error, "instance reconciliation failed");
            self.providers().record_sync(name, Err(error.to_string()));
        }
    }

    async fn sync_hosts(&self, provider: &str, driver: &Driver) -> ServiceResult<usize> {
        let asked = store::now();
        let reported = match driver.list_hosts().await {
            Ok(reported) => reported,
            Err(error) => {
                tracing::warn!(provider, error = %error, "listing hosts failed");
                self.mark_silent_hosts_offline(provider, &HashSet::new()).await?;
                return Err(super::ServiceError::Unavailable(format!("list-hosts: {error}")));
            }
        };
        let now = store::now();
        let mut transaction = self.store().begin().await?;
        let known = store::hosts::by_provider(&mut transaction, provider).await?;
        let mut seen = HashSet::new();
        for report in &reported {
            seen.insert(report.id.clone());
            let reported_state = host_state_from_driver(report.state);
            match known.get(&report.id) {
                None => {
                    let host = Host {
                        id: Uuid::now_v7(),
                        provider: provider.to_owned(),
                        name: report.id.clone(),
                        arch: arch_from_driver(report.arch),
                        cpu: report.cpu,
                        ram_mb: report.ram_mb,
                        disk_gb: report.disk_gb,
                        hypervisor: report.hypervisor.clone(),
                        state: reported_state,
                        draining: false,
                        capacity: Capacity::default(),
                        usage: Usage::default(),
                        utilization: 0.0,
                        maintenance: false,
                        labels: Default::default(),
                        groups: Vec::new(),
                        usb_devices: Default::default(),
                        cached_templates: cached_templates_from_driver(&report.cached_templates, &[]),
                        last_report_at: Some(now),
                        created_at: now,
                        updated_at: now,
                    };
                    store::hosts::insert(&mut transaction, &host).await?;
                    transaction.append_event(
                        NewEvent::new("host.discovered", "host", host.id)
                            .data(json!({ "provider": provider, "name": host.name, "state": host.state })),
                    );
                }
                Some(existing) => {
                    let mut host = existing.clone();
                    host.arch = arch_from_driver(report.arch);
                    host.cpu = report.cpu;
                    host.ram_mb = report.ram_mb;
                    host.disk_gb = report.disk_gb;
                    host.hypervisor = report.hypervisor.clone();
                    host.cached_templates =
                        cached_templates_reported(&report.cached_templates, &existing.cached_templates, asked);
                    host.last_report_at = Some(now);
                    host.updated_at = now;
                    store::hosts::update_report(&mut transaction, &host, reported_state).await?;
                    let effective =
                        store::hosts::get(&mut transaction, host.id).await?.map_or(reported_state, |host| host.state);
                    if effective != existing.state {
                        transaction.append_event(
                            NewEvent::new("host.state_changed", "host", host.id)
                                .data(json!({ "from": existing.state, "to": effective })),
                        );
                    }
                }
            }
        }
        transaction.commit().await?;
        self.mark_silent_hosts_offline(provider, &seen).await?;
        Ok(reported.len())
    }

    /// Hosts of the provider that were not in its report and have not been heard of for
    /// longer than the offline window go offline.
    async fn mark_silent_hosts_offline(&self, provider: &str, reported: &HashSet<String>) -> ServiceResult<()> {
        let window =
            chrono::Duration::from_std(self.inner.settings.host_offline_after).unwrap_or(chrono::Duration::MAX);
        let now = store::now();
        let mut transaction = self.store().begin().await?;
        for host in store::hosts::by_provider(&mut transaction, provider).await?.into_values() {
            let silent = host.last_report_at.is_none_or(|at| now - at > window);
            if reported.contains(&host.name) || host.state == HostState::Offline || !silent {
                continue;
            }
            store::hosts::update_report(&mut transaction, &host, HostState::Offline).await?;
            transaction.append_event(NewEvent::new("host.state_changed", "host", host.id).data(
                json!({ "from": host.state, "to": HostState::Offline, "reason": "no report from its provider" }),
            ));
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn reconcile_instances(&self, provider: &str, driver: &Driver) -> ServiceResult<()> {
        // Read our side first: anything that changes afterwards has an active task or a newer
        // `updated_at`, and both are checked again before a drift is written.
        let ours: Vec<Instance> = store::instances::list(
            &mut *self.store().reader().await?,
            &store::instances::InstanceFilter { provider: Some(provider.to_owned()), ..Default::default() },
        )
        .await?;
        let reported = driver
            .list_instances()
            .await
            .map_err(|error| super::ServiceError::Unavailable(format!("list-instances: {error}")))?;
        let reported_by_id: HashMap<&str, &driver::Instance> =
            reported.iter().map(|instance| (instance.id.as_str(), instance)).collect();
        let known_ids: HashSet<String> = ours.iter().map(Instance::provider_instance_id).collect();

        for instance in &ours {
            let report = reported_by_id.get(instance.provider_instance_id().as_str());
            let drift = match report {
                None if EXPECTED_ON_PROVIDER.contains(&instance.state) => {
                    Some((InstanceState::Terminated, json!({ "kind": "gone" }), None))
                }
                Some(report) => {
                    let state = instance_state_from_driver(report.state);
                    let settled = matches!(
                        instance.state,
                        InstanceState::Running
                            | InstanceState::Stopped
                            | InstanceState::Suspended
                            | InstanceState::Error
                    );
                    (settled
                        && state != instance.state
                        && state != InstanceState::Starting
                        && state != InstanceState::Stopping)
                        .then(|| (state, json!({ "kind": "state" }), report.ip.clone()))
                }
                None => None,
            };
            if let Some((state, data, ip)) = drift {
                self.record_drift(instance, state, data, ip).await?;
            }
        }

        let hosts = store::hosts::by_provider(&mut *self.store().reader().await?, provider).await?;
        for report in reported.iter().filter(|report| !known_ids.contains(&report.id)) {
            self.adopt_discovered(provider, report, &hosts).await?;
        }
        Ok(())
    }

    /// Writes a drift if the instance is still as we read it and no task works on it.
    async fn record_drift(
        &self,
        seen: &Instance,
        state: InstanceState,
        mut data: serde_json::Value,
        ip: Option<String>,
    ) -> ServiceResult<()> {
        let mut transaction = self.store().begin().await?;
        let Some(mut instance) = store::instances::get(&mut transaction, seen.id).await? else { return Ok(()) };
        let busy = !store::tasks::list(
            &mut transaction,
            &store::tasks::TaskFilter {
                states: vec![TaskState::Pending, TaskState::Running],
                object_id: Some(seen.id),
                limit: Some(1),
                ..Default::default()
            },
        )
        .await?
        .is_empty();
        if busy || instance.updated_at != seen.updated_at || instance.state != seen.state {
            return Ok(());
        }
        if let serde_json::Value::Object(fields) = &mut data {
            fields.insert("from".into(), json!(instance.state));
            fields.insert("to".into(), json!(state));
        }
        tracing::warn!(instance = %instance.id, from = %instance.state, to = %state, "instance drifted on its provider");
        instance.state = state;
        if state == InstanceState::Terminated {
            instance.error = Some("disappeared from its provider".into());
            instance.ip = None;
        } else {
            instance.ip = ip;
        }
        instance.updated_at = store::now();
        store::instances::update(&mut transaction, &instance, STATE_COLUMNS).await?;
        transaction.append_event(NewEvent::new("instance.drift", "instance", instance.id).data(data));
        transaction.commit().await?;
        Ok(())
    }

    /// Records an instance the provider has but we never created.
    async fn adopt_discovered(
        &self,
        provider: &str,
        report: &driver::Instance,
        hosts: &HashMap<String, Host>,
    ) -> ServiceResult<()> {
        // A stable id derived from the provider's, so a repeated discovery finds the same row.
        let id = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("hyperplane:{provider}/{}", report.id).as_bytes());
        let mut transaction = self.store().begin().await?;
        if store::instances::get(&mut transaction, id).await?.is_some() {
            return Ok(());
        }
        let now = store::now();
        let instance = Instance {
            id,
            name: report.id.clone(),
            // Found on a host, created by no one here: it joins the default project.
            project_id: crate::auth::identity::DEFAULT_PROJECT_ID,
            external_id: None,
            state: instance_state_from_driver(report.state),
            template_id: None,
            template_version: None,
            provider: Some(provider.to_owned()),
            host_id: hosts.get(&report.host).map(|host| host.id),
            requested_host_id: None,
            provider_id: Some(report.id.clone()),
            vcpu: 0,
            ram_mb: 0,
            disk_gb: 0,
            priority: super::instances::DEFAULT_PRIORITY,
            placement: Default::default(),
            ip: report.ip.clone(),
            mac: report.mac.clone(),
            vlan: None,
            metadata: Default::default(),
            startup_script: None,
            startup_result: None,
            error: None,
            origin: InstanceOrigin::Discovered,
            created_at: now,
            updated_at: now,
        };
        store::instances::insert(&mut transaction, &instance).await?;
        transaction.append_event(NewEvent::new("instance.drift", "instance", id).data(
            json!({ "kind": "appeared", "provider": provider, "provider_id": report.id, "state": instance.state }),
        ));
        transaction.commit().await?;
        tracing::warn!(instance = %id, provider, "instance appeared on its provider behind our back");
        Ok(())
    }
}
