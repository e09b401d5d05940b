//! The versions of the driver, auth and storage contracts the host speaks, and the load-time checks that
//! refuse a component exporting another version with an error that names the supported one.

use super::errors::LoadError;

/// The version of `hyperplane:driver` this host binds (`wit/driver/0.3.0`).
pub const SUPPORTED_DRIVER_VERSION: &str = "0.3.0";
/// Export names of the driver interface start with this, followed by the version.
const DRIVER_INTERFACE_PREFIX: &str = "hyperplane:driver/hypervisor@";

/// The version of `hyperplane:auth` this host binds (`wit/auth/0.1.0`).
pub const SUPPORTED_AUTH_VERSION: &str = "0.1.0";
/// The export name of the auth scheme interface of the supported version.
const AUTH_SCHEME_INTERFACE: &str = "hyperplane:auth/scheme@0.1.0";

/// The version of `hyperplane:storage` this host binds (`wit/storage/0.1.0`).
pub const SUPPORTED_STORAGE_VERSION: &str = "0.1.0";
/// The export name of the blob store interface of the supported version.
const STORAGE_INTERFACE: &str = "hyperplane:storage/blob-store@0.1.0";

/// Checks that a component exports the blob store interface of the supported version.
pub(crate) fn check_storage_exports<'a>(
    label: &str,
    mut export_names: impl Iterator<Item = &'a str>,
) -> Result<(), LoadError> {
    if export_names.any(|name| name == STORAGE_INTERFACE) {
        return Ok(());
    }
    Err(LoadError::NoStorageInterface { label: label.to_owned(), supported: SUPPORTED_STORAGE_VERSION })
}

/// Checks that a component exports the auth scheme interface of the supported version.
pub(crate) fn check_auth_scheme_exports<'a>(
    label: &str,
    mut export_names: impl Iterator<Item = &'a str>,
) -> Result<(), LoadError> {
    if export_names.any(|name| name == AUTH_SCHEME_INTERFACE) {
        return Ok(());
    }
    Err(LoadError::NoAuthSchemeInterface { label: label.to_owned(), supported: SUPPORTED_AUTH_VERSION })
}

/// Checks the names a component exports: it must export the driver interface in the supported
/// version. Another version is [`LoadError::UnsupportedDriverVersion`]; none at all is
/// [`LoadError::NoDriverInterface`].
pub(crate) fn check_driver_exports<'a>(
    label: &str,
    export_names: impl IntoIterator<Item = &'a str>,
) -> Result<(), LoadError> {
    let exported_versions: Vec<&str> =
        export_names.into_iter().filter_map(|name| name.strip_prefix(DRIVER_INTERFACE_PREFIX)).collect();
    if exported_versions.contains(&SUPPORTED_DRIVER_VERSION) {
        return Ok(());
    }
    match exported_versions.first() {
        Some(exported) => Err(LoadError::UnsupportedDriverVersion {
            label: label.to_owned(),
            exported: (*exported).to_owned(),
            supported: SUPPORTED_DRIVER_VERSION,
        }),
        None => Err(LoadError::NoDriverInterface { label: label.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(export_names: &[&str], expected_error: Option<&str>) {
        let outcome = check_driver_exports("driver.wasm", export_names.iter().copied());
        match (outcome, expected_error) {
            (Ok(()), None) => {}
            (Err(error), Some(expected)) => assert_eq!(error.to_string(), expected),
            (outcome, expected) => panic!("{export_names:?}: got {outcome:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn only_the_supported_auth_version_is_accepted() {
        let check = |names: &[&str]| check_auth_scheme_exports("scheme.wasm", names.iter().copied());
        assert!(check(&["wasi:http/incoming-handler@0.2.0", "hyperplane:auth/scheme@0.1.0"]).is_ok());
        let error = check(&["hyperplane:auth/scheme@0.2.0"]).expect_err("another version").to_string();
        assert_eq!(
            error,
            "component scheme.wasm exports no hyperplane:auth/scheme@0.1.0 interface; it is not an auth scheme of \
             the version this host supports"
        );
        assert!(check(&["hyperplane:driver/hypervisor@0.2.0"]).is_err());
    }

    #[test]
    fn only_the_supported_driver_version_is_accepted() {
        check(&["hyperplane:driver/hypervisor@0.3.0"], None);
        check(&["wasi:cli/run@0.2.0", "hyperplane:driver/hypervisor@0.3.0"], None);
        check(
            &["hyperplane:driver/hypervisor@0.2.0"],
            Some(
                "component driver.wasm exports hyperplane:driver/hypervisor@0.2.0, but this host supports only \
                 @0.3.0; rebuild the driver against wit/driver/0.3.0",
            ),
        );
        check(
            &["hyperplane:driver/hypervisor@0.4.0-rc1"],
            Some(
                "component driver.wasm exports hyperplane:driver/hypervisor@0.4.0-rc1, but this host supports \
                 only @0.3.0; rebuild the driver against wit/driver/0.3.0",
            ),
        );
        check(
            &["wasi:cli/run@0.2.0", "hyperplane:driver/hypervisors@0.2.0"],
            Some("component driver.wasm exports no hyperplane:driver/hypervisor interface; it is not a driver"),
        );
        check(&[], Some("component driver.wasm exports no hyperplane:driver/hypervisor interface; it is not a driver"));
    }
}
