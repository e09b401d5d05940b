//! Node groups: CRUD, membership, and fallback chains without cycles.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Service, ServiceError, ServiceResult};
use crate::auth::Caller;
use crate::auth::access::permission;
use crate::auth::permissions::Resource;
use crate::model::{Group, GroupStrategy, NewEvent};
use crate::scheduler::{self, GroupPolicy};
use crate::store;

/// `POST /v1/groups`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Group (name or id) that takes requests this one has no room for.
    pub fallback_group: Option<String>,
    #[serde(default)]
    pub strategy: GroupStrategy,
    /// Project (name or id) the group belongs to; default `default`.
    #[serde(default)]
    pub project: Option<String>,
}

/// `PATCH /v1/groups/{id}`: fields absent are left as they are; `fallback_group: ""` clears it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub fallback_group: Option<String>,
    pub strategy: Option<GroupStrategy>,
}

fn check_group_name(name: &str) -> ServiceResult<()> {
    if !crate::config::is_valid_name(name) {
        return Err(ServiceError::Invalid(format!("group name '{name}' must be 1-63 characters of a-z, 0-9 and '-'")));
    }
    Ok(())
}

impl Service {
    /// The node groups of the projects where the caller may list them.
    pub async fn list_groups(&self, caller: &Caller) -> ServiceResult<Vec<Group>> {
        let projects = self.visible_projects(caller, Resource::Group).await?;
        let groups = store::groups::list(&mut *self.store().reader().await?).await?;
        Ok(groups
            .into_iter()
            .filter(|group| projects.as_ref().is_none_or(|projects| projects.contains(&group.project_id)))
            .collect())
    }

    /// A group by id or name that the caller may see; others are not found.
    pub async fn resolve_group(&self, caller: &Caller, reference: &str) -> ServiceResult<Group> {
        self.authorized_group(caller, reference, "list").await
    }

    /// A group the caller may `action`; one the caller may not even see is not found.
    async fn authorized_group(&self, caller: &Caller, reference: &str, action: &'static str) -> ServiceResult<Group> {
        let group = self.load_group(reference).await?;
        let id = group.id.to_string();
        if !caller.access.allows(permission(Resource::Group, "list"), Some(group.project_id), Some(&id)) {
            return Err(ServiceError::not_found("group", reference));
        }
        if action != "list" {
            self.require(caller, Resource::Group, action, Some(group.project_id), Some(&id)).await?;
        }
        Ok(group)
    }

    /// A group by id or name, without a permission check, for Hyperplane's own work.
    pub(super) async fn load_group(&self, reference: &str) -> ServiceResult<Group> {
        let mut reader = self.store().reader().await?;
        let found = match Uuid::parse_str(reference) {
            Ok(id) => store::groups::get(&mut reader, id).await?,
            Err(_) => store::groups::get_by_name(&mut reader, reference).await?,
        };
        found.ok_or_else(|| ServiceError::not_found("group", reference))
    }

    pub async fn create_group(&self, caller: &Caller, request: NewGroup) -> ServiceResult<Group> {
        check_group_name(&request.name)?;
        let project_id = self.project_for_create(caller, request.project.as_deref()).await?;
        self.require(caller, Resource::Group, "create", Some(project_id), None).await?;
        let fallback = match &request.fallback_group {
            Some(fallback) => Some(self.resolve_group(caller, fallback).await?.id),
            None => None,
        };
        let mut transaction = self.store().begin().await?;
        if store::groups::get_by_name(&mut transaction, &request.name).await?.is_some() {
            return Err(ServiceError::Conflict(format!("group '{}' already exists", request.name)));
        }
        let now = store::now();
        let group = Group {
            id: Uuid::now_v7(),
            name: request.name,
            project_id,
            description: request.description,
            fallback_group_id: fallback,
            strategy: request.strategy,
            hosts: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        store::groups::insert(&mut transaction, &group).await?;
        transaction.append_event(
            NewEvent::new("group.created", "group", group.id).by(caller).data(json!({ "name": group.name })),
        );
        transaction.commit().await?;
        Ok(group)
    }

    pub async fn update_group(&self, caller: &Caller, reference: &str, patch: GroupPatch) -> ServiceResult<Group> {
        if let Some(name) = &patch.name {
            check_group_name(name)?;
        }
        let id = self.authorized_group(caller, reference, "update").await?.id;
        let fallback = match patch.fallback_group.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(fallback) => Some(Some(self.resolve_group(caller, fallback).await?.id)),
        };
        let mut transaction = self.store().begin().await?;
        let mut group = store::groups::get(&mut transaction, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("group", reference))?;
        if let Some(Some(fallback)) = fallback {
            let policies: HashMap<Uuid, GroupPolicy> = store::groups::list(&mut transaction)
                .await?
                .into_iter()
                .map(|group| (group.id, GroupPolicy { fallback: group.fallback_group_id, strategy: group.strategy }))
                .collect();
            if scheduler::creates_cycle(&policies, id, fallback) {
                return Err(ServiceError::Invalid(format!(
                    "fallback_group: falling back to {fallback} would make a cycle of fallback groups"
                )));
            }
        }
        if let Some(name) = patch.name.clone() {
            if name != group.name && store::groups::get_by_name(&mut transaction, &name).await?.is_some() {
                return Err(ServiceError::Conflict(format!("group '{name}' already exists")));
            }
            group.name = name;
        }
        if let Some(description) = patch.description.clone() {
            group.description = description;
        }
        if let Some(fallback) = fallback {
            group.fallback_group_id = fallback;
        }
        if let Some(strategy) = patch.strategy {
            group.strategy = strategy;
        }
        group.updated_at = store::now();
        store::groups::update(&mut transaction, &group).await?;
        transaction.append_event(
            NewEvent::new("group.updated", "group", id)
                .by(caller)
                .data(serde_json::to_value(&patch).unwrap_or_default()),
        );
        transaction.commit().await?;
        self.task_engine().wake();
        Ok(group)
    }

    pub async fn delete_group(&self, caller: &Caller, reference: &str) -> ServiceResult<()> {
        let group = self.authorized_group(caller, reference, "delete").await?;
        let mut transaction = self.store().begin().await?;
        store::groups::delete(&mut transaction, group.id).await?;
        transaction.append_event(
            NewEvent::new("group.deleted", "group", group.id).by(caller).data(json!({ "name": group.name })),
        );
        transaction.commit().await?;
        Ok(())
    }

    /// Adds (`member: true`) or removes hosts from a group.
    pub async fn set_group_membership(
        &self,
        caller: &Caller,
        reference: &str,
        host_ids: &[Uuid],
        member: bool,
    ) -> ServiceResult<Group> {
        let group = self.authorized_group(caller, reference, "update").await?;
        let mut transaction = self.store().begin().await?;
        for host_id in host_ids {
            let host = store::hosts::get(&mut transaction, *host_id)
                .await?
                .ok_or_else(|| ServiceError::not_found("host", host_id))?;
            let mut groups = host.groups.clone();
            groups.retain(|existing| *existing != group.id);
            if member {
                groups.push(group.id);
            }
            store::hosts::set_groups(&mut transaction, host.id, &groups).await?;
            transaction.append_event(
                NewEvent::new(if member { "group.host_added" } else { "group.host_removed" }, "group", group.id)
                    .by(caller)
                    .data(json!({ "host_id": host.id })),
            );
        }
        let group = store::groups::get(&mut transaction, group.id)
            .await?
            .ok_or_else(|| ServiceError::not_found("group", reference))?;
        transaction.commit().await?;
        self.task_engine().wake();
        Ok(group)
    }
}
