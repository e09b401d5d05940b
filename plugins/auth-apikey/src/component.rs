//! The component's export of `hyperplane:auth/scheme`: a [`ApiKeyScheme`] over the host's checks.

use hyperplane_guest::auth::{
    ConfiguredScheme, HostCredentials, Outcome, Request, SchemeError, SchemeGuest, SchemeInfo,
};

use crate::ApiKeyScheme;

static SCHEME: ConfiguredScheme<ApiKeyScheme> = ConfiguredScheme::new();

/// The exported scheme.
pub struct ApiKeyAuthScheme;

impl SchemeGuest for ApiKeyAuthScheme {
    fn init(config: String) -> Result<SchemeInfo, SchemeError> {
        SCHEME.configure(ApiKeyScheme::from_config(&config)?);
        Ok(SchemeInfo { needs_body: false })
    }

    fn authenticate(request: Request) -> Result<Outcome, SchemeError> {
        Ok(SCHEME.get()?.authenticate(&HostCredentials, &request.headers)?.into_outcome())
    }
}

hyperplane_guest::export_auth_scheme!(ApiKeyAuthScheme);
