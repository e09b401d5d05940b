//! The component's export of `hyperplane:auth/scheme`: an [`OidcScheme`] over the host's checks,
//! fetching keys with outgoing `wasi:http`.

use std::time::{SystemTime, UNIX_EPOCH};

use hyperplane_guest::auth::{
    ConfiguredScheme, HostCredentials, Outcome, Request, SchemeError, SchemeGuest, SchemeInfo,
};

use crate::config::OidcSettings;
use crate::fetch::WasiHttpFetcher;
use crate::verify::OidcScheme;

static SCHEME: ConfiguredScheme<OidcScheme> = ConfiguredScheme::new();

/// The exported scheme.
pub struct OidcAuthScheme;

impl SchemeGuest for OidcAuthScheme {
    fn init(config: String) -> Result<SchemeInfo, SchemeError> {
        SCHEME.configure(OidcScheme::new(OidcSettings::from_config(&config)?));
        Ok(SchemeInfo { needs_body: false })
    }

    fn authenticate(request: Request) -> Result<Outcome, SchemeError> {
        let now_unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SchemeError::Internal("the clock is before 1970".into()))?
            .as_secs();
        let decision =
            SCHEME.get()?.authenticate(&HostCredentials, &WasiHttpFetcher, &request.headers, now_unix_secs)?;
        Ok(decision.into_outcome())
    }
}

hyperplane_guest::export_auth_scheme!(OidcAuthScheme);
