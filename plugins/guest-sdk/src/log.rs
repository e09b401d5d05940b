//! Structured logging into the host's tracing pipeline (`hyperplane:host/log`).
//!
//! Use the functions with explicit fields, or the `trace!` … `error!` macros for formatted
//! messages. Natively (unit tests) records go to stderr instead.

use crate::driver_bindings::hyperplane::host::log as host_log;

pub use host_log::Level;

/// Emits one record with `fields` as key-value pairs.
pub fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        let fields: Vec<host_log::Field> = fields
            .iter()
            .map(|(key, value)| host_log::Field { key: (*key).to_owned(), value: (*value).to_owned() })
            .collect();
        host_log::emit(level, message, &fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let rendered_fields: String = fields.iter().map(|(key, value)| format!(" {key}={value}")).collect();
        eprintln!("[{level:?}] {message}{rendered_fields}");
    }
}

/// Emits a `trace` record.
pub fn trace(message: &str, fields: &[(&str, &str)]) {
    emit(Level::Trace, message, fields);
}

/// Emits a `debug` record.
pub fn debug(message: &str, fields: &[(&str, &str)]) {
    emit(Level::Debug, message, fields);
}

/// Emits an `info` record.
pub fn info(message: &str, fields: &[(&str, &str)]) {
    emit(Level::Info, message, fields);
}

/// Emits a `warn` record.
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    emit(Level::Warn, message, fields);
}

/// Emits an `error` record.
pub fn error(message: &str, fields: &[(&str, &str)]) {
    emit(Level::Error, message, fields);
}

/// `trace!("format {}", args)`: a formatted `trace` record without fields.
#[macro_export]
macro_rules! trace {
    ($($format_args:tt)+) => { $crate::log::trace(&::std::format!($($format_args)+), &[]) };
}

/// `debug!("format {}", args)`: a formatted `debug` record without fields.
#[macro_export]
macro_rules! debug {
    ($($format_args:tt)+) => { $crate::log::debug(&::std::format!($($format_args)+), &[]) };
}

/// `info!("format {}", args)`: a formatted `info` record without fields.
#[macro_export]
macro_rules! info {
    ($($format_args:tt)+) => { $crate::log::info(&::std::format!($($format_args)+), &[]) };
}

/// `warn!("format {}", args)`: a formatted `warn` record without fields.
#[macro_export]
macro_rules! warn {
    ($($format_args:tt)+) => { $crate::log::warn(&::std::format!($($format_args)+), &[]) };
}

/// `error!("format {}", args)`: a formatted `error` record without fields.
#[macro_export]
macro_rules! error {
    ($($format_args:tt)+) => { $crate::log::error(&::std::format!($($format_args)+), &[]) };
}
