//! The operator's admin token: from the environment, from `<data_dir>/admin.token`, or made up
//! on first start. It authenticates as the built-in administrator.

use std::io::Write;
use std::path::Path;

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
    fn the_admin_token_is_matched_exactly_but_for_surrounding_space() {
        let admin_token = AdminToken::new("secret");
        assert!(admin_token.matches("secret"));
        assert!(admin_token.matches(" secret\n"));
        assert!(!admin_token.matches("Secret"));
        assert!(!admin_token.matches("secret2"));
        assert!(!admin_token.matches(""));
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
