//! The component's export of `hyperplane:auth/scheme`: a [`BasicScheme`] over the host's checks.

use hyperplane_guest::auth::{
    ConfiguredScheme, HostCredentials, Outcome, Request, SchemeError, SchemeGuest, SchemeInfo,
};

use crate::BasicScheme;

static SCHEME: ConfiguredScheme<BasicScheme> = ConfiguredScheme::new();

/// The exported scheme.
pub struct BasicAuthScheme;

impl SchemeGuest for BasicAuthScheme {
    fn init(config: String) -> Result<SchemeInfo, SchemeError> {
        SCHEME.configure(BasicScheme::from_config(&config)?);
        Ok(SchemeInfo { needs_body: false })
    }

    fn authenticate(request: Request) -> Result<Outcome, SchemeError> {
        Ok(SCHEME.get()?.authenticate(&HostCredentials, &request.headers)?.into_outcome())
    }
}

hyperplane_guest::export_auth_scheme!(BasicAuthScheme);
