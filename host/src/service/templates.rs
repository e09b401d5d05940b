//! Templates and their versions (metadata; each version's disk image is in `template_images`).

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Service, ServiceError, ServiceResult, check_name};
use crate::model::{Arch, DiskFormat, NewEvent, Template, TemplateVersion};
use crate::store;

/// `POST /v1/templates`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTemplate {
    /// Unique name: 1-128 characters of letters, digits, `.`, `_` and `-`.
    pub name: String,
    pub arch: Arch,
    #[serde(default)]
    pub description: String,
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

fn check_template_name(field: &str, name: &str) -> ServiceResult<()> {
    check_name(field, name, 128)
}

impl Service {
    pub async fn create_template(&self, request: NewTemplate, actor: &str) -> ServiceResult<Template> {
        check_template_name("name", &request.name)?;
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
            arch: request.arch,
            description: request.description,
            versions: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        store::templates::insert(&mut transaction, &template).await?;
        transaction
            .append_event(
                NewEvent::new("template.created", "template", template.id)
                    .actor(actor)
                    .data(json!({ "name": template.name, "arch": template.arch })),
            )
            .await?;
        transaction.commit().await?;
        Ok(template)
    }

    pub async fn list_templates(&self) -> ServiceResult<Vec<Template>> {
        Ok(store::templates::list(&mut *self.store().reader().await?).await?)
    }

    /// A template by id or by name.
    pub async fn resolve_template(&self, reference: &str) -> ServiceResult<Template> {
        let mut reader = self.store().reader().await?;
        let found = match Uuid::parse_str(reference) {
            Ok(id) => store::templates::get(&mut reader, id).await?,
            Err(_) => store::templates::get_by_name(&mut reader, reference).await?,
        };
        found.ok_or_else(|| ServiceError::not_found("template", reference))
    }

    pub async fn create_template_version(
        &self,
        reference: &str,
        request: NewTemplateVersion,
        actor: &str,
    ) -> ServiceResult<Template> {
        check_template_name("tag", &request.tag)?;
        if request.description.len() > 4096 {
            return Err(ServiceError::Invalid("description must be at most 4096 bytes".into()));
        }
        let template_id = self.resolve_template(reference).await?.id;
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
            created_at: store::now(),
        };
        store::templates::insert_version(&mut transaction, template_id, &version).await?;
        transaction
            .append_event(
                NewEvent::new("template.version_created", "template", template_id)
                    .actor(actor)
                    .data(json!({ "number": version.number, "tag": version.tag })),
            )
            .await?;
        let template = store::templates::get(&mut transaction, template_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("template", reference))?;
        transaction.commit().await?;
        Ok(template)
    }
}
