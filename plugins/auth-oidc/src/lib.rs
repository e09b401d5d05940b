//! `auth-oidc`: OpenID Connect bearer tokens. Verifies a JWT from `Authorization: Bearer` (its
//! signature with the issuer's keys, `iss`, `aud`, `exp`, `nbf`) and asks the host for the user
//! the issuer's subject maps to (`external-identity`); the host accepts only issuers the
//! operator trusts for the provider.
//!
//! # Config (JSON given to `init`; unknown keys are `invalid-config`)
//! `issuer` and `audience` (required); exactly one of `jwks_url` (fetched over outgoing
//! `wasi:http`, the host must be in the provider's `allowed_http_hosts`) or `jwks` (an inline
//! JWK set); `leeway_secs` (60); `username_claim` (`"preferred_username"`, falling back to
//! `sub`); `groups_claim` (`"groups"`).
//!
//! # Behaviour
//! No bearer: `challenge` `Bearer realm="hyperplane"`. A bearer that is not a JWT:
//! `not-applicable`, for a later scheme (`auth-token`). A JWT that fails a check: `rejected`,
//! naming the check. Key set unreachable: the `unavailable` error.
//!
//! Code map: [`config`] (the config), [`verify`] (the checks, pure Rust over a
//! [`verify::KeySetFetcher`]), `fetch` (the key set over `wasi:http`) and `component` (the
//! export glue).

pub mod config;
pub mod verify;

// Compiled natively too (to keep them checked), but only used inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod fetch;

pub use config::OidcSettings;
pub use verify::{KeySetFetcher, OidcScheme, TokenRejection};
