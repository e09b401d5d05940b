//! `hyperplane:host/log` and `hyperplane:host/progress`: plugin log records become tracing
//! events of the provider; progress reports go to the sink of the calling task.

use std::fmt::Write as _;

use super::bindings::hyperplane::host::log::{self, Field, Level};
use super::bindings::hyperplane::host::progress;
use super::progress::clamp_fraction;
use super::store_data::{StoreData, truncate_to_char_boundary};

/// Longest log or progress message kept, in bytes.
const MAX_MESSAGE_BYTES: usize = 8 * 1024;
/// Most structured fields kept per log record.
const MAX_FIELDS_PER_RECORD: usize = 32;
/// Longest rendering of a record's fields kept, in bytes.
const MAX_RENDERED_FIELDS_BYTES: usize = 8 * 1024;

/// Renders plugin fields as `key=value` pairs separated by spaces, values quoted when needed.
fn render_fields(fields: &[Field]) -> String {
    let mut rendered = String::new();
    for field in fields.iter().take(MAX_FIELDS_PER_RECORD) {
        if !rendered.is_empty() {
            rendered.push(' ');
        }
        let needs_quotes = field.value.is_empty()
            || field.value.contains(|character: char| character.is_whitespace() || character == '"');
        if needs_quotes {
            let _ = write!(rendered, "{}={:?}", field.key, field.value);
        } else {
            let _ = write!(rendered, "{}={}", field.key, field.value);
        }
    }
    truncate_to_char_boundary(&rendered, MAX_RENDERED_FIELDS_BYTES).to_string()
}

impl log::Host for StoreData {
    async fn emit(&mut self, level: Level, message: String, fields: Vec<Field>) -> wasmtime::Result<()> {
        let provider = &*self.provider.name;
        let function = self.call.function;
        let message = truncate_to_char_boundary(&message, MAX_MESSAGE_BYTES);
        let fields = render_fields(&fields);
        match level {
            Level::Trace => tracing::trace!(target: "hyperplane::plugin", provider, function, fields, "{message}"),
            Level::Debug => tracing::debug!(target: "hyperplane::plugin", provider, function, fields, "{message}"),
            Level::Info => tracing::info!(target: "hyperplane::plugin", provider, function, fields, "{message}"),
            Level::Warn => tracing::warn!(target: "hyperplane::plugin", provider, function, fields, "{message}"),
            Level::Error => tracing::error!(target: "hyperplane::plugin", provider, function, fields, "{message}"),
        }
        Ok(())
    }
}

impl progress::Host for StoreData {
    async fn report(&mut self, fraction: f32, message: String) -> wasmtime::Result<()> {
        if let Some(sink) = &self.call.progress_sink {
            sink(clamp_fraction(fraction), truncate_to_char_boundary(&message, MAX_MESSAGE_BYTES));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fields: &[(&str, &str)], expected: &str) {
        let fields: Vec<Field> =
            fields.iter().map(|(key, value)| Field { key: key.to_string(), value: value.to_string() }).collect();
        assert_eq!(render_fields(&fields), expected);
    }

    #[test]
    fn fields_render_as_key_value_pairs() {
        check(&[], "");
        check(&[("domain", "vm-1")], "domain=vm-1");
        check(&[("domain", "vm 1"), ("code", "")], "domain=\"vm 1\" code=\"\"");
    }
}
