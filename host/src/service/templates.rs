//! Templates and their versions (metadata; each version's disk image is in `template_images`).

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Service, ServiceError, ServiceResult, check_name};
use crate::auth::Caller;
use crate::auth::access::permission;
use crate::auth::identity::Project;
use crate::auth::permissions::Resource;
use crate::model::{Arch, DiskFormat, NewEvent, Template, TemplateVersion};
use crate::store::{self, WriteTx};

/// `POST /v1/templates`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTemplate {
    /// Unique name: 1-128 characters of letters, digits, `.`, `_` and `-`.
    pub name: String,
    pub arch: Arch,
    #[serde(default)]
    pub description: String,
    /// Project (name or id) the template belongs to; default `default`.
    #[serde(default)]
    pub project: Option<String>,
}

/// `POST /v1/templates/{id}/versions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTemplateVersion {
    /// Unique within the template.
    pub tag: String,
    #[serde(default)]
    pub description: String,
    /// The expected image size; an uploaded image replaces it with its real size.
    #[serde(default)]
    pub size_bytes: u64,
}

/// Reads the template as `transaction` left it, then commits.
pub(super) async fn commit_returning_template(mut transaction: WriteTx, id: Uuid) -> ServiceResult<Template> {
    let template =
        store::templates::get(&mut transaction, id).await?.ok_or_else(|| ServiceError::not_found("template", id))?;
    transaction.commit().await?;
    Ok(template)
}

fn check_template_name(field: &str, name: &str) -> ServiceResult<()> {
    check_name(field, name, 128)
}

impl Service {
    pub async fn create_template(&self, caller: &Caller, request: NewTemplate) -> ServiceResult<Template> {
        check_template_name("name", &request.name)?;
        let project_id = self.project_for_create(caller, request.project.as_deref()).await?;
        self.require(caller, Resource::Template, "create", Some(project_id), None).await?;
        if request.description.len() > 4096 {
            return Err(ServiceError::Invalid("description must be at most 4096 bytes".into()));
        }
        let mut transaction = self.store().begin().await?;
        if store::templates::get_by_name(&mut transaction, &request.name).await?.is_some() {
            return Err(ServiceError::Conflict(format!("template '{}' already exists", request.name)));
        }
        let now = store::now();
        let template = Template {
            id: Uuid::now_v7(),
            name: request.name,
            project_id,
            arch: request.arch,
            description: request.description,
            versions: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        store::templates::insert(&mut transaction, &template).await?;
        transaction.append_event(
            NewEvent::new("template.created", "template", template.id)
                .by(caller)
                .data(json!({ "name": template.name, "arch": template.arch })),
        );
        transaction.commit().await?;
        Ok(template)
    }

    /// The templates of the projects where the caller may list templates.
    pub async fn list_templates(&self, caller: &Caller) -> ServiceResult<Vec<Template>> {
        let projects = self.visible_projects(caller, Resource::Template).await?;
        let templates = self.load_templates().await?;
        Ok(templates
            .into_iter()
            .filter(|template| projects.as_ref().is_none_or(|projects| projects.contains(&template.project_id)))
            .filter(|template| {
                let id = template.id.to_string();
                caller.access.allows(permission(Resource::Template, "list"), Some(template.project_id), Some(&id))
            })
            .collect())
    }

    pub(super) async fn load_templates(&self) -> ServiceResult<Vec<Template>> {
        Ok(store::templates::list(&mut *self.store().reader().await?).await?)
    }

    /// A template by id or name that the caller may see; others are not found.
    pub async fn resolve_template(&self, caller: &Caller, reference: &str) -> ServiceResult<Template> {
        self.authorized_template(caller, reference, "list").await
    }

    /// A template the caller may `action`; one the caller may not even see is not found.
    pub(super) async fn authorized_template(
        &self,
        caller: &Caller,
        reference: &str,
        action: &'static str,
    ) -> ServiceResult<Template> {
        let template = self.load_template(reference).await?;
        self.check_template_access(caller, &template, reference, action).await?;
        Ok(template)
    }

    /// [`Self::resolve_template`], with the project `project_id` (if it exists) read with it.
    pub(super) async fn resolve_template_with_project(
        &self,
        caller: &Caller,
        reference: &str,
        project_id: Uuid,
    ) -> ServiceResult<(Template, Option<Project>)> {
        let (template, project) = store::templates::get_with_project(self.store(), reference, project_id)?;
        let template = template.ok_or_else(|| ServiceError::not_found("template", reference))?;
        self.check_template_access(caller, &template, reference, "list").await?;
        Ok((template, project))
    }

    /// `not found` unless the caller may see the template (named `reference` by the caller),
    /// `forbidden` unless it may `action` it.
    async fn check_template_access(
        &self,
        caller: &Caller,
        template: &Template,
        reference: &str,
        action: &'static str,
    ) -> ServiceResult<()> {
        let id = template.id.to_string();
        if !caller.access.allows(permission(Resource::Template, "list"), Some(template.project_id), Some(&id)) {
            return Err(ServiceError::not_found("template", reference));
        }
        if action != "list" {
            self.require(caller, Resource::Template, action, Some(template.project_id), Some(&id)).await?;
        }
        Ok(())
    }

    /// A template by id or by name, without a permission check, for Hyperplane's own work.
    pub(super) async fn load_template(&self, reference: &str) -> ServiceResult<Template> {
        let mut reader = self.store().reader().await?;
        let found = match Uuid::parse_str(reference) {
            Ok(id) => store::templates::get(&mut reader, id).await?,
            Err(_) => store::templates::get_by_name(&mut reader, reference).await?,
        };
        found.ok_or_else(|| ServiceError::not_found("template", reference))
    }

    pub async fn create_template_version(
        &self,
        caller: &Caller,
        reference: &str,
        request: NewTemplateVersion,
    ) -> ServiceResult<Template> {
        check_template_name("tag", &request.tag)?;
        if request.description.len() > 4096 {
            return Err(ServiceError::Invalid("description must be at most 4096 bytes".into()));
        }
        let template_id = self.authorized_template(caller, reference, "push_tag").await?.id;
        let mut transaction = self.store().begin().await?;
        let template = store::templates::get(&mut transaction, template_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("template", reference))?;
        if template.versions.iter().any(|version| version.tag == request.tag) {
            return Err(ServiceError::Conflict(format!(
                "template '{}' already has tag '{}'",
                template.name, request.tag
            )));
        }
        let version = TemplateVersion {
            number: template.latest_version().map_or(1, |latest| latest.number + 1),
            tag: request.tag,
            description: request.description,
            size_bytes: request.size_bytes,
            format: DiskFormat::Raw,
            image_sha256: None,
            image_uploaded_at: None,
            pulled_at: None,
            files: Vec::new(),
            created_at: store::now(),
        };
        store::templates::insert_version(&mut transaction, template_id, &version).await?;
        transaction.append_event(
            NewEvent::new("template.version_created", "template", template_id)
                .by(caller)
                .data(json!({ "number": version.number, "tag": version.tag })),
        );
        commit_returning_template(transaction, template_id).await
    }

    /// Deletes a template with all its versions and files (their chunks are freed by the next
    /// garbage collection). Refused while a live instance uses it; terminated instances keep
    /// their history without the reference.
    pub async fn delete_template(&self, caller: &Caller, reference: &str) -> ServiceResult<()> {
        let template = self.authorized_template(caller, reference, "delete_revert").await?;
        let mut transaction = self.store().begin().await?;
        let users = store::instances::count_using_template_versions(&mut transaction, template.id, 0).await?;
        if users > 0 {
            return Err(ServiceError::Conflict(format!(
                "{users} instances use template '{}'; delete them first",
                template.name
            )));
        }
        store::templates::delete(&mut transaction, template.id).await?;
        transaction.append_event(
            NewEvent::new("template.deleted", "template", template.id)
                .by(caller)
                .data(json!({ "name": template.name })),
        );
        transaction.commit().await?;
        Ok(())
    }
}
