//! The operator's admin token: from the environment, from `<data_dir>/admin.token`, or made up
//! on first start. It authenticates as the built-in administrator.

use std::io::Write;
use std::path::Path;

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Principal;

/// The admin token, kept as its digest; compared in constant time.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken { digest: Sha256::digest(token.trim().as_bytes()).into() }
    }

    pub fn matches(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        bool::from(digest.ct_eq(&self.digest))
    }
}

/// Checks bearer tokens against the admin token, in constant time.
#[derive(Clone)]
pub struct Authenticator {
    admin_token_digest: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send 'Authorization: Bearer <token>'")]
    Missing,
    #[error("the Authorization header must use the Bearer scheme")]
    WrongScheme,
    #[error("invalid token")]
    InvalidToken,
}

impl Authenticator {
    pub fn new(admin_token: &str) -> Self {
        Authenticator { admin_token_digest: Sha256::digest(admin_token.as_bytes()).into() }
    }

    /// Checks the value of an `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::WrongScheme)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::WrongScheme);
        }
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(&self.admin_token_digest)) {
            Ok(Principal::admin())
        } else {
            Err(AuthError::InvalidToken)
        }
    }
}

/// Where the admin token came from.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenSource {
    Environment,
    File,
    Generated,
}

/// The admin token: `HYPERPLANE_ADMIN_TOKEN` if given, else `<data_dir>/admin.token`, else a
/// new random token written there with mode 0600.
pub fn load_or_create_admin_token(
    from_environment: Option<String>,
    data_dir: &Path,
) -> std::io::Result<(String, TokenSource)> {
    if let Some(token) = from_environment.filter(|token| !token.trim().is_empty()) {
        return Ok((token.trim().to_owned(), TokenSource::Environment));
    }
    let path = data_dir.join("admin.token");
    if let Ok(token) = std::fs::read_to_string(&path)
        && !token.trim().is_empty()
    {
        return Ok((token.trim().to_owned(), TokenSource::File));
    }
    let bytes: [u8; 24] = rand::rng().random();
    let token = format!("hp_{}", hex::encode(bytes));
    std::fs::create_dir_all(data_dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    writeln!(file, "{token}")?;
    Ok((token, TokenSource::Generated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let authenticator = Authenticator::new("secret");
        assert!(authenticator.authenticate(Some("Bearer secret")).is_ok());
        assert!(authenticator.authenticate(Some("bearer secret")).is_ok());
        assert!(matches!(authenticator.authenticate(None), Err(AuthError::Missing)));
        assert!(matches!(authenticator.authenticate(Some("Basic c2VjcmV0")), Err(AuthError::WrongScheme)));
        assert!(matches!(authenticator.authenticate(Some("Bearer wrong")), Err(AuthError::InvalidToken)));
    }

    #[test]
    fn generated_token_is_private_and_reused() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let (token, source) = load_or_create_admin_token(None, directory.path()).expect("generated");
        assert_eq!(source, TokenSource::Generated);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(directory.path().join("admin.token")).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, source) = load_or_create_admin_token(None, directory.path()).expect("read back");
        assert_eq!((again, source), (token, TokenSource::File));
        let (from_environment, source) =
            load_or_create_admin_token(Some("given".into()), directory.path()).expect("environment wins");
        assert_eq!((from_environment.as_str(), source), ("given", TokenSource::Environment));
    }
}
