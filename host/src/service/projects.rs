//! Projects: what instances, templates and node groups belong to, with quotas checked when
//! something is created, and the usage counted against them.

use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Service, ServiceError, ServiceResult, check_name};
use crate::auth::access::permission;
use crate::auth::identity::{DEFAULT_PROJECT_ID, Project, Quota, Usage};
use crate::auth::permissions::Resource;
use crate::auth::{Caller, ProjectScope};
use crate::model::NewEvent;
use crate::store::{self, WriteTx};

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub quota: Quota,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    pub description: Option<String>,
    /// Replaces the whole quota (absent limits become unlimited).
    pub quota: Option<Quota>,
}

/// What a creation adds to a project's usage.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Demand {
    pub instances: u64,
    pub vcpu: u64,
    pub ram_mb: u64,
    pub template_bytes: u64,
}

impl Service {
    /// A project by name or id; one the caller cannot see is not found.
    pub async fn resolve_project(&self, caller: &Caller, reference: &str) -> ServiceResult<Project> {
        let mut reader = self.store().reader().await?;
        let found = match Uuid::parse_str(reference) {
            Ok(id) => store::projects::get(&mut reader, id).await?,
            Err(_) => store::projects::get_by_name(&mut reader, reference).await?,
        };
        found
            .filter(|project| self.may_see_project(caller, project.id))
            .ok_or_else(|| ServiceError::not_found("project", reference))
    }

    /// The project a create request names, or the default project.
    pub(crate) async fn project_for_create(&self, caller: &Caller, reference: Option<&str>) -> ServiceResult<Uuid> {
        match reference {
            Some(reference) => Ok(self.resolve_project(caller, reference).await?.id),
            None => Ok(DEFAULT_PROJECT_ID),
        }
    }

    /// Whether the caller has any permission in the project (is a member of it).
    fn may_see_project(&self, caller: &Caller, project_id: Uuid) -> bool {
        Resource::ALL.iter().any(|resource| {
            resource
                .actions()
                .iter()
                .any(|(action, _)| caller.access.projects_with(permission(*resource, action)).contains(project_id))
        })
    }

    pub async fn list_projects(&self, caller: &Caller) -> ServiceResult<Vec<Project>> {
        let projects = store::projects::list(&mut *self.store().reader().await?).await?;
        let visible: Vec<Project> =
            projects.into_iter().filter(|project| self.may_see_project(caller, project.id)).collect();
        if visible.is_empty()
            && caller.access.projects_with(permission(Resource::Project, "list"))
                == ProjectScope::Only(Default::default())
        {
            return Err(ServiceError::Forbidden(format!("{} lacks the permission project:list", caller.actor())));
        }
        Ok(visible)
    }

    pub async fn create_project(&self, caller: &Caller, request: NewProject) -> ServiceResult<Project> {
        self.require(caller, Resource::Project, "create", None, None).await?;
        check_name("project name", &request.name, 64)?;
        let mut transaction = self.store().begin().await?;
        if store::projects::get_by_name(&mut transaction, &request.name).await?.is_some() {
            return Err(ServiceError::Conflict(format!("project '{}' already exists", request.name)));
        }
        let now = store::now();
        let project = Project {
            id: Uuid::now_v7(),
            name: request.name,
            description: request.description,
            quota: request.quota,
            created_at: now,
            updated_at: now,
        };
        store::projects::save(&mut transaction, &project).await?;
        transaction.append_event(NewEvent::new("project.created", "project", project.id).by(caller).data(json!({
            "name": project.name, "quota": project.quota
        })));
        transaction.commit().await?;
        Ok(project)
    }

    pub async fn update_project(
        &self,
        caller: &Caller,
        reference: &str,
        patch: ProjectPatch,
    ) -> ServiceResult<Project> {
        let mut project = self.resolve_project(caller, reference).await?;
        self.require(caller, Resource::Project, "update", Some(project.id), Some(&project.id.to_string())).await?;
        if let Some(description) = patch.description {
            project.description = description;
        }
        if let Some(quota) = patch.quota {
            project.quota = quota;
        }
        project.updated_at = store::now();
        let mut transaction = self.store().begin().await?;
        store::projects::save(&mut transaction, &project).await?;
        transaction.append_event(NewEvent::new("project.updated", "project", project.id).by(caller).data(json!({
            "name": project.name, "quota": project.quota
        })));
        transaction.commit().await?;
        Ok(project)
    }

    /// Deletes a project that owns nothing any more; `default` stays.
    pub async fn delete_project(&self, caller: &Caller, reference: &str) -> ServiceResult<()> {
        let project = self.resolve_project(caller, reference).await?;
        self.require(caller, Resource::Project, "delete", Some(project.id), Some(&project.id.to_string())).await?;
        if project.id == DEFAULT_PROJECT_ID {
            return Err(ServiceError::Conflict("the default project cannot be deleted".into()));
        }
        let mut transaction = self.store().begin().await?;
        if !store::projects::is_empty(&mut transaction, project.id).await? {
            return Err(ServiceError::Conflict(format!(
                "project '{}' still has instances, templates or node groups; delete or move them first",
                project.name
            )));
        }
        store::projects::delete(&mut transaction, project.id).await?;
        transaction.append_event(NewEvent::new("project.deleted", "project", project.id).by(caller).data(json!({
            "name": project.name
        })));
        transaction.commit().await?;
        Ok(())
    }

    pub async fn project_usage(&self, caller: &Caller, reference: &str) -> ServiceResult<(Project, Usage)> {
        let project = self.resolve_project(caller, reference).await?;
        self.require(caller, Resource::Project, "list", Some(project.id), Some(&project.id.to_string())).await?;
        let usage = store::projects::usage(&mut *self.store().reader().await?, project.id).await?;
        Ok((project, usage))
    }

    /// Fails with `quota_exceeded`, naming the limit, if `demand` on top of what the project
    /// uses goes over a quota. Run inside the creating transaction, so that concurrent creates
    /// cannot both pass.
    pub(crate) async fn check_quota(
        &self,
        transaction: &mut WriteTx,
        project_id: Uuid,
        demand: Demand,
    ) -> ServiceResult<()> {
        let project = store::projects::get(transaction, project_id).await?;
        self.check_project_quota(transaction, project_id, project, demand).await
    }

    /// [`Self::check_quota`] for the project `project_id` already read in the transaction
    /// (`None`: there is no such project).
    pub(crate) async fn check_project_quota(
        &self,
        transaction: &mut WriteTx,
        project_id: Uuid,
        project: Option<Project>,
        demand: Demand,
    ) -> ServiceResult<()> {
        let Some(project) = project else {
            return Err(ServiceError::not_found("project", project_id));
        };
        let quota = &project.quota;
        if *quota == Quota::default() {
            return Ok(());
        }
        let usage = store::projects::usage(transaction, project_id).await?;
        let limits = [
            ("instances", quota.max_instances, usage.instances, demand.instances),
            ("vcpu", quota.max_vcpu, usage.vcpu, demand.vcpu),
            ("ram_mb", quota.max_ram_mb, usage.ram_mb, demand.ram_mb),
            ("template_bytes", quota.max_template_bytes, usage.template_bytes, demand.template_bytes),
        ];
        for (name, limit, used, wanted) in limits {
            if let Some(limit) = limit
                && wanted > 0
                && used.saturating_add(wanted) > limit
            {
                return Err(ServiceError::QuotaExceeded(format!(
                    "project '{}' quota max_{name} is {limit}: {used} used, {wanted} more requested",
                    project.name
                )));
            }
        }
        Ok(())
    }
}

impl Service {
    /// The projects whose `resource`s the caller may list (`None`: every project); 403 when
    /// there are none.
    pub(crate) async fn visible_projects(
        &self,
        caller: &Caller,
        resource: Resource,
    ) -> ServiceResult<Option<Vec<Uuid>>> {
        match caller.access.projects_with(permission(resource, "list")) {
            ProjectScope::All => Ok(None),
            ProjectScope::Only(projects) if projects.is_empty() => {
                self.require(caller, resource, "list", None, None).await?;
                Ok(Some(Vec::new()))
            }
            ProjectScope::Only(projects) => Ok(Some(projects.into_iter().collect())),
        }
    }

    /// Checks a permission on something outside projects (nodes): reading needs the permission
    /// in some project, changing it a grant that covers every project.
    pub(crate) async fn require_global(
        &self,
        caller: &Caller,
        resource: Resource,
        action: &'static str,
        resource_id: Option<&str>,
    ) -> ServiceResult<()> {
        let needed = permission(resource, action);
        let readable =
            action == "list" && caller.access.projects_with(needed) != ProjectScope::Only(Default::default());
        if readable {
            return Ok(());
        }
        self.require(caller, resource, action, None, resource_id).await
    }
}
