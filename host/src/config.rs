//! Operator configuration: one TOML file plus `HYPERPLANE_*` environment overrides, validated
//! once at start-up. Every section has defaults, so no file is needed to run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Name under which the bundled simulated driver is referenced in `providers[].driver`.
pub const BUNDLED_DRIVER_SIM: &str = "driver-sim";
/// Name under which the bundled libvirt driver is referenced in `providers[].driver`.
pub const BUNDLED_DRIVER_LIBVIRT: &str = "driver-libvirt";

/// Names under which the bundled storage plugins are referenced in `storage.plugin`.
pub const BUNDLED_STORAGE_FS: &str = "storage-fs";
pub const BUNDLED_STORAGE_S3: &str = "storage-s3";

/// Names under which the bundled auth schemes are referenced in `auth.schemes[].plugin`.
pub const BUNDLED_AUTH_TOKEN: &str = "auth-token";
pub const BUNDLED_AUTH_BASIC: &str = "auth-basic";
pub const BUNDLED_AUTH_SESSION: &str = "auth-session";
pub const BUNDLED_AUTH_APIKEY: &str = "auth-apikey";
pub const BUNDLED_AUTH_OIDC: &str = "auth-oidc";
/// Every bundled auth scheme.
pub const BUNDLED_AUTH_SCHEMES: [&str; 5] =
    [BUNDLED_AUTH_TOKEN, BUNDLED_AUTH_BASIC, BUNDLED_AUTH_SESSION, BUNDLED_AUTH_APIKEY, BUNDLED_AUTH_OIDC];

/// Environment variables with the `HYPERPLANE_` prefix that are not configuration keys.
const NON_CONFIG_VARIABLES: &[&str] = &["ADMIN_TOKEN", "URL", "TOKEN", "CONFIG", "LOG"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory for the embedded database, the admin token and the plugin cache.
    pub data_dir: PathBuf,
    /// Database URL; defaults to SQLite at `<data_dir>/hyperplane.db`.
    pub database_url: Option<String>,
    pub log: LogConfig,
    pub plugins: PluginDefaults,
    pub tasks: TaskConfig,
    pub reconcile: ReconcileConfig,
    pub instances: InstanceConfig,
    pub templates: TemplateConfig,
    /// Where template files are kept.
    pub storage: StorageConfig,
    /// Configured drivers. Without any, the bundled simulated driver runs with 4 hosts.
    pub providers: Vec<ProviderConfig>,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The credential schemes, asked in this order; the first that authenticates or rejects a
    /// request decides. Default: `auth-token`, `auth-apikey`, `auth-session`, `auth-basic` —
    /// the bearer token first: most requests carry one, and each scheme asked is a plugin call.
    pub schemes: Vec<AuthSchemeConfig>,
    /// A session ends after this long unused (each use moves the end on); default 1800.
    pub session_idle_timeout_secs: f64,
    /// A session ends after this long however much it is used; default 43200 (12 hours).
    pub session_max_lifetime_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSchemeConfig {
    /// Unique scheme name, used in logs, metrics, messages and the audit trail.
    pub name: String,
    /// A bundled scheme (`auth-token`, `auth-basic`, `auth-session`, `auth-apikey`,
    /// `auth-oidc`) or a path to an auth scheme component (`.wasm`).
    pub plugin: String,
    /// Scheme-specific settings, handed to the plugin's `init` as JSON.
    #[serde(default = "empty_table")]
    pub config: serde_json::Value,
    /// Hosts (`host` or `host:port`) the scheme may reach over outgoing HTTP (an OIDC key set).
    #[serde(default)]
    pub allowed_http_hosts: Vec<String>,
    /// Issuers whose identities the scheme may assert (`external-identity`); none by default.
    #[serde(default)]
    pub trusted_issuers: Vec<String>,
    /// Deadline of one authentication; default 10 seconds.
    pub call_timeout_secs: Option<f64>,
    /// Memory cap of one instance; default `plugins.memory_limit_mib`.
    pub memory_limit_mib: Option<u64>,
}

impl AuthSchemeConfig {
    /// A bundled scheme with its default settings.
    fn bundled(name: &str, plugin: &str) -> AuthSchemeConfig {
        AuthSchemeConfig {
            name: name.into(),
            plugin: plugin.into(),
            config: empty_table(),
            allowed_http_hosts: Vec::new(),
            trusted_issuers: Vec::new(),
            call_timeout_secs: None,
            memory_limit_mib: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            schemes: vec![
                AuthSchemeConfig::bundled("token", BUNDLED_AUTH_TOKEN),
                AuthSchemeConfig::bundled("apikey", BUNDLED_AUTH_APIKEY),
                AuthSchemeConfig::bundled("session", BUNDLED_AUTH_SESSION),
                AuthSchemeConfig::bundled("basic", BUNDLED_AUTH_BASIC),
            ],
            session_idle_timeout_secs: 1800.0,
            session_max_lifetime_secs: 43_200.0,
        }
    }
}

/// Deadline of one authentication when the scheme sets none.
pub const DEFAULT_AUTH_CALL_TIMEOUT_SECS: f64 = 10.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `hyperplane=debug,tower_http=info`.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginDefaults {
    /// Where compiled components are cached; defaults to `<data_dir>/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Deadline of one plugin call.
    pub call_timeout_secs: f64,
    /// Linear memory cap of one plugin instance.
    pub memory_limit_mib: u64,
    /// Largest response a plugin call may return.
    pub max_response_mib: u64,
    /// A plugin instance unused for this long is dropped, with the connections it holds.
    pub idle_instance_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    /// Tasks that run at the same time.
    pub concurrency: usize,
    /// Attempts before a task interrupted by restarts is failed.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Period of the loop that compares providers' reports with the database.
    pub interval_secs: f64,
    /// A host whose provider has not reported it for this long goes offline.
    pub host_offline_after_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    /// How long a graceful stop waits for the guest before powering it off, when the request
    /// gives no `grace`.
    pub stop_grace_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// Largest template file accepted by a push.
    pub max_image_gib: u64,
    /// Size of the chunks the host cuts pushed files into (64 to 16384 KiB).
    pub chunk_size_kib: u64,
    /// Garbage collection spares unreferenced chunks younger than this (pushes in progress).
    pub gc_grace_secs: f64,
}

/// The storage backend of the template registry: a storage plugin and what it is granted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `storage-fs` or `storage-s3` (bundled) or a path to a storage component (`.wasm`).
    pub plugin: String,
    /// The one directory the plugin may use; `storage-fs` defaults to `<data_dir>/blobs`.
    pub directory: Option<PathBuf>,
    /// Plugin-specific settings, handed to its `init` as JSON (S3: endpoint, bucket, keys).
    pub config: serde_json::Value,
    /// Hosts (`host` or `host:port`) the plugin may reach over outgoing HTTP.
    pub allowed_http_hosts: Vec<String>,
    pub call_timeout_secs: Option<f64>,
    pub memory_limit_mib: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique provider name, used in host ids and logs.
    pub name: String,
    /// `driver-sim` or `driver-libvirt` (bundled) or a path to a driver component (`.wasm`).
    pub driver: String,
    /// Driver-specific settings, handed to the driver's `init` as JSON.
    #[serde(default = "empty_table")]
    pub config: serde_json::Value,
    /// Named endpoints granted to the driver: `unix:///path`, `tcp://host:port` or
    /// `libvirt+tls://host:port[?pkipath=/dir]`.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// Hosts (`host` or `host:port`) the driver may reach over outgoing HTTP.
    #[serde(default)]
    pub allowed_http_hosts: Vec<String>,
    pub call_timeout_secs: Option<f64>,
    pub memory_limit_mib: Option<u64>,
}

fn empty_table() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            log: LogConfig::default(),
            plugins: PluginDefaults::default(),
            tasks: TaskConfig::default(),
            reconcile: ReconcileConfig::default(),
            instances: InstanceConfig::default(),
            templates: TemplateConfig::default(),
            storage: StorageConfig::default(),
            providers: Vec::new(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".into() }
    }
}

impl Default for PluginDefaults {
    fn default() -> Self {
        Self {
            cache_dir: None,
            call_timeout_secs: 60.0,
            memory_limit_mib: 256,
            max_response_mib: 16,
            idle_instance_secs: 60.0,
        }
    }
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self { concurrency: 64, max_attempts: 3 }
    }
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self { interval_secs: 10.0, host_offline_after_secs: 60.0 }
    }
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self { stop_grace_secs: 60.0 }
    }
}

impl Default for TemplateConfig {
    fn default() -> Self {
        Self { max_image_gib: 64, chunk_size_kib: 1024, gc_grace_secs: 3600.0 }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            plugin: BUNDLED_STORAGE_FS.into(),
            directory: None,
            config: empty_table(),
            allowed_http_hosts: Vec::new(),
            call_timeout_secs: None,
            memory_limit_mib: None,
        }
    }
}

/// The longest stop grace period accepted, in configuration and requests (one hour).
pub const MAX_STOP_GRACE_SECS: f64 = 3600.0;

impl Config {
    /// Loads defaults, then the file (if any), then `HYPERPLANE_*` variables
    /// (`HYPERPLANE_PLUGINS__CALL_TIMEOUT_SECS=5` sets `plugins.call_timeout_secs`).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Parse(format!("config file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("HYPERPLANE_").ignore(NON_CONFIG_VARIABLES).split("__"));
        let config: Config = figment.extract().map_err(|error| ConfigError::Parse(describe_figment_error(error)))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document on its own (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|error| ConfigError::Parse(describe_figment_error(error)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| Err(ConfigError::Invalid { key: key.into(), message: message.into() });
        if !(self.plugins.call_timeout_secs > 0.0 && self.plugins.call_timeout_secs <= 86_400.0) {
            return invalid("plugins.call_timeout_secs", "must be between 0 and 86400 seconds");
        }
        if !(self.plugins.idle_instance_secs > 0.0 && self.plugins.idle_instance_secs <= 86_400.0) {
            return invalid("plugins.idle_instance_secs", "must be between 0 and 86400 seconds");
        }
        if !(1..=65_536).contains(&self.plugins.memory_limit_mib) {
            return invalid("plugins.memory_limit_mib", "must be between 1 and 65536");
        }
        if !(1..=4096).contains(&self.plugins.max_response_mib) {
            return invalid("plugins.max_response_mib", "must be between 1 and 4096");
        }
        if !(1..=10_000).contains(&self.tasks.concurrency) {
            return invalid("tasks.concurrency", "must be between 1 and 10000");
        }
        if self.tasks.max_attempts == 0 {
            return invalid("tasks.max_attempts", "must be at least 1");
        }
        if !(self.reconcile.interval_secs >= 0.05 && self.reconcile.interval_secs <= 86_400.0) {
            return invalid("reconcile.interval_secs", "must be between 0.05 and 86400 seconds");
        }
        if !(self.reconcile.host_offline_after_secs >= self.reconcile.interval_secs
            && self.reconcile.host_offline_after_secs <= 86_400.0)
        {
            return invalid(
                "reconcile.host_offline_after_secs",
                "must be at least reconcile.interval_secs and at most 86400",
            );
        }
        if !(self.instances.stop_grace_secs >= 0.0 && self.instances.stop_grace_secs <= MAX_STOP_GRACE_SECS) {
            return invalid("instances.stop_grace_secs", "must be between 0 and 3600 seconds");
        }
        if !(1..=65_536).contains(&self.templates.max_image_gib) {
            return invalid("templates.max_image_gib", "must be between 1 and 65536");
        }
        if !(64..=16_384).contains(&self.templates.chunk_size_kib) {
            return invalid("templates.chunk_size_kib", "must be between 64 and 16384");
        }
        if !(self.templates.gc_grace_secs >= 0.0 && self.templates.gc_grace_secs <= 30.0 * 86_400.0) {
            return invalid("templates.gc_grace_secs", "must be between 0 and 2592000 (30 days)");
        }
        let storage_plugins = [BUNDLED_STORAGE_FS, BUNDLED_STORAGE_S3];
        if !(storage_plugins.contains(&self.storage.plugin.as_str()) || self.storage.plugin.ends_with(".wasm")) {
            return invalid("storage.plugin", "must be storage-fs, storage-s3 or a path to a .wasm component");
        }
        if !self.storage.config.is_object() {
            return invalid("storage.config", "must be a table");
        }
        if let Some(position) = self.storage.allowed_http_hosts.iter().position(|host| !is_authority(host)) {
            return invalid(&format!("storage.allowed_http_hosts[{position}]"), "must be host or host:port");
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, provider) in self.providers.iter().enumerate() {
            let key = |field: &str| format!("providers[{index}].{field}");
            if !is_valid_name(&provider.name) {
                return invalid(&key("name"), "must be 1-63 characters of a-z, 0-9 and '-'");
            }
            if !names.insert(provider.name.as_str()) {
                return invalid(&key("name"), &format!("provider '{}' is defined twice", provider.name));
            }
            if provider.driver.is_empty() {
                return invalid(&key("driver"), "must name a bundled driver or a .wasm file");
            }
            if !provider.config.is_object() {
                return invalid(&key("config"), "must be a table");
            }
            if let Some(timeout) = provider.call_timeout_secs
                && !(timeout > 0.0 && timeout <= 86_400.0)
            {
                return invalid(&key("call_timeout_secs"), "must be between 0 and 86400 seconds");
            }
            if let Some(memory) = provider.memory_limit_mib
                && !(1..=65_536).contains(&memory)
            {
                return invalid(&key("memory_limit_mib"), "must be between 1 and 65536");
            }
            for (name, address) in &provider.endpoints {
                if let Err(error) = address.parse::<crate::plugins::EndpointAddress>() {
                    return invalid(&key(&format!("endpoints.{name}")), &error.to_string());
                }
            }
        }
        self.auth.validate()
    }

    /// The configured providers, or the bundled simulator with 4 hosts when none is configured.
    pub fn effective_providers(&self) -> Vec<ProviderConfig> {
        if !self.providers.is_empty() {
            return self.providers.clone();
        }
        vec![ProviderConfig {
            name: "sim".into(),
            driver: BUNDLED_DRIVER_SIM.into(),
            config: serde_json::json!({ "hosts": 4 }),
            endpoints: BTreeMap::new(),
            allowed_http_hosts: Vec::new(),
            call_timeout_secs: None,
            memory_limit_mib: None,
        }]
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("hyperplane.db").display()))
    }

    pub fn plugin_cache_dir(&self) -> PathBuf {
        self.plugins.cache_dir.clone().unwrap_or_else(|| self.data_dir.join("plugin-cache"))
    }

    /// Where template images were kept before the registry: `<data_dir>/templates`. Images
    /// still there are moved into the storage backend at start.
    pub fn template_images_dir(&self) -> PathBuf {
        self.data_dir.join("templates")
    }

    /// The directory granted to the storage plugin: the configured one, or `<data_dir>/blobs`
    /// for `storage-fs`; none for other plugins unless configured.
    pub fn storage_directory(&self) -> Option<PathBuf> {
        match &self.storage.directory {
            Some(directory) => Some(directory.clone()),
            None if self.storage.plugin == BUNDLED_STORAGE_FS => Some(self.data_dir.join("blobs")),
            None => None,
        }
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| Err(ConfigError::Invalid { key: key.into(), message: message.into() });
        if self.schemes.is_empty() {
            return invalid("auth.schemes", "must enable at least one scheme");
        }
        let lifetime = self.session_max_lifetime_secs;
        if !(lifetime.is_finite() && (1.0..=31.0 * 86_400.0).contains(&lifetime)) {
            return invalid("auth.session_max_lifetime_secs", "must be between 1 and 2678400 (31 days)");
        }
        let idle = self.session_idle_timeout_secs;
        if !(idle.is_finite() && idle >= 1.0 && idle <= lifetime) {
            return invalid(
                "auth.session_idle_timeout_secs",
                "must be at least 1 and at most auth.session_max_lifetime_secs",
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, scheme) in self.schemes.iter().enumerate() {
            let key = |field: &str| format!("auth.schemes[{index}].{field}");
            if !is_valid_name(&scheme.name) {
                return invalid(&key("name"), "must be 1-63 characters of a-z, 0-9 and '-'");
            }
            if !names.insert(scheme.name.as_str()) {
                return invalid(&key("name"), &format!("auth scheme '{}' is defined twice", scheme.name));
            }
            if !(BUNDLED_AUTH_SCHEMES.contains(&scheme.plugin.as_str()) || scheme.plugin.ends_with(".wasm")) {
                return invalid(
                    &key("plugin"),
                    &format!(
                        "'{}' is neither a bundled scheme ({}) nor a path to a .wasm component",
                        scheme.plugin,
                        BUNDLED_AUTH_SCHEMES.join(", ")
                    ),
                );
            }
            if !scheme.config.is_object() {
                return invalid(&key("config"), "must be a table");
            }
            if let Some(position) = scheme.allowed_http_hosts.iter().position(|host| !is_authority(host)) {
                return invalid(&key(&format!("allowed_http_hosts[{position}]")), "must be host or host:port");
            }
            if let Some(position) = scheme.trusted_issuers.iter().position(|issuer| issuer.trim().is_empty()) {
                return invalid(&key(&format!("trusted_issuers[{position}]")), "must not be empty");
            }
            if let Some(timeout) = scheme.call_timeout_secs
                && !(timeout > 0.0 && timeout <= 300.0)
            {
                return invalid(&key("call_timeout_secs"), "must be between 0 and 300 seconds");
            }
            if let Some(memory) = scheme.memory_limit_mib
                && !(1..=65_536).contains(&memory)
            {
                return invalid(&key("memory_limit_mib"), "must be between 1 and 65536");
            }
        }
        Ok(())
    }
}

/// `host` or `host:port`, without scheme, path or user.
fn is_authority(text: &str) -> bool {
    let host = match text.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => text,
    };
    !host.is_empty() && !host.contains(['/', '@', ':', ' '])
}

/// Names of providers and other operator-chosen identifiers.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

/// Figment's error already names the key; keep its text and every chained error.
fn describe_figment_error(error: figment::Error) -> String {
    error.into_iter().map(|error| error.to_string()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_error(toml: &str, expected_fragment: &str) {
        let error = Config::from_toml(toml).expect_err("config should be rejected").to_string();
        assert!(error.contains(expected_fragment), "error {error:?} should contain {expected_fragment:?}");
    }

    #[test]
    fn defaults_need_no_file() {
        let config = Config::from_toml("").expect("empty config is valid");
        assert_eq!(config.listen.port(), 8090);
        let providers = config.effective_providers();
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].driver, BUNDLED_DRIVER_SIM);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        check_error("listn = \"127.0.0.1:1\"", "listn");
        check_error("[plugins]\ncall_timeout = 3", "call_timeout");
        check_error("[plugins]\nmemory_limit_mib = 0", "plugins.memory_limit_mib");
        check_error("[plugins]\nidle_instance_secs = 0", "plugins.idle_instance_secs");
        check_error("[instances]\nstop_grace_secs = -1", "instances.stop_grace_secs");
        check_error("[instances]\nstop_grace_secs = 3601", "instances.stop_grace_secs");
        check_error("[templates]\nmax_image_gib = 0", "templates.max_image_gib");
        check_error("[tasks]\nconcurrency = \"many\"", "concurrency");
        check_error("[[providers]]\nname = \"Bad Name\"\ndriver = \"driver-sim\"", "providers[0].name");
        check_error(
            "[[providers]]\nname = \"a\"\ndriver = \"driver-sim\"\n[[providers]]\nname = \"a\"\ndriver = \"driver-sim\"",
            "defined twice",
        );
        check_error(
            "[[providers]]\nname = \"a\"\ndriver = \"x.wasm\"\nendpoints = { libvirt = \"/run/sock\" }",
            "providers[0].endpoints.libvirt",
        );
        check_error(
            "[[providers]]\nname = \"a\"\ndriver = \"x.wasm\"\nendpoints = { kvm = \"libvirt+tls://kvm-1:16514?verify=no\" }",
            "the only parameter is pkipath",
        );
    }

    #[test]
    fn auth_schemes_default_to_the_bundled_ones_without_oidc() {
        let config = Config::from_toml("").expect("empty config is valid");
        let schemes: Vec<(&str, &str)> =
            config.auth.schemes.iter().map(|scheme| (scheme.name.as_str(), scheme.plugin.as_str())).collect();
        assert_eq!(
            schemes,
            [("token", "auth-token"), ("apikey", "auth-apikey"), ("session", "auth-session"), ("basic", "auth-basic")]
        );
    }

    #[test]
    fn configured_auth_schemes_replace_the_defaults_in_order() {
        let config = Config::from_toml(
            r#"
[[auth.schemes]]
name = "oidc"
plugin = "auth-oidc"
config = { audience = "hyperplane" }
allowed_http_hosts = ["login.example.com"]
trusted_issuers = ["https://login.example.com"]

[[auth.schemes]]
name = "custom"
plugin = "/opt/schemes/custom.wasm"
"#,
        )
        .expect("valid");
        let names: Vec<&str> = config.auth.schemes.iter().map(|scheme| scheme.name.as_str()).collect();
        assert_eq!(names, ["oidc", "custom"]);
        assert_eq!(config.auth.schemes[0].config["audience"], "hyperplane");
        assert_eq!(config.auth.schemes[0].trusted_issuers, ["https://login.example.com"]);
    }

    #[test]
    fn bad_auth_schemes_are_named() {
        let scheme = |body: &str| format!("[[auth.schemes]]\nname = \"token\"\nplugin = \"auth-token\"\n{body}");
        check_error("[auth]\nschemes = []", "auth.schemes: must enable at least one scheme");
        check_error("[auth]\nscheme = []", "scheme");
        check_error("[auth]\nsession_idle_timeout_secs = 0", "auth.session_idle_timeout_secs");
        check_error(
            "[auth]\nsession_idle_timeout_secs = 7200\nsession_max_lifetime_secs = 3600",
            "at most auth.session_max",
        );
        check_error("[auth]\nsession_max_lifetime_secs = 1e9", "auth.session_max_lifetime_secs");
        check_error(&scheme("color = 1"), "color");
        check_error(
            &format!("{}\n[[auth.schemes]]\nname = \"b\"\nplugin = \"auth-ldap\"", scheme("")),
            "auth.schemes[1].plugin",
        );
        check_error(
            &format!("{}\n{}", scheme(""), scheme("")),
            "auth.schemes[1].name: auth scheme 'token' is defined twice",
        );
        check_error(&scheme("config = 3"), "auth.schemes[0].config");
        check_error(&scheme("allowed_http_hosts = [\"https://x/\"]"), "auth.schemes[0].allowed_http_hosts[0]");
        check_error(&scheme("trusted_issuers = [\"\"]"), "auth.schemes[0].trusted_issuers[0]");
        check_error(&scheme("call_timeout_secs = 0"), "auth.schemes[0].call_timeout_secs");
        check_error("[[auth.schemes]]\nname = \"Token\"\nplugin = \"auth-token\"", "auth.schemes[0].name");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let config = Config::from_toml(include_str!("../../examples/hyperplane.toml")).expect("example parses");
        assert_eq!(config.providers.len(), 2);
        assert_eq!(config.auth.schemes.len(), 3);
    }

    #[test]
    fn provider_config_is_passed_through() {
        let config = Config::from_toml(
            "[[providers]]\nname = \"lab\"\ndriver = \"driver-sim\"\nconfig = { hosts = 2, delays_ms = { start = 0 } }",
        )
        .expect("valid");
        assert_eq!(config.providers[0].config["hosts"], 2);
        assert_eq!(config.providers[0].config["delays_ms"]["start"], 0);
    }
}
