//! `hpcbinder config show`: every setting, its value, and where it came from.

use serde::Serialize;

use crate::error::ExitStatus;
use crate::printer::Printer;
use crate::settings::{Origin, Settings};

#[derive(Serialize)]
struct Entry {
    key: &'static str,
    value: serde_json::Value,
    origin: Origin,
}

/// A value with the credentials in its URLs replaced (an index URL may carry a token).
fn redacted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::String(s) => serde_json::Value::String(crate::source::redact(&s)),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(redacted).collect())
        }
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.into_iter().map(|(k, v)| (k, redacted(v))).collect())
        }
        other => other,
    }
}

/// Print the resolved settings.
pub fn show(settings: &Settings, printer: &Printer, json: bool) -> anyhow::Result<ExitStatus> {
    let values = serde_json::to_value(settings)?;
    let entries: Vec<Entry> = crate::settings::CONFIG_KEYS
        .iter()
        .map(|(key, _)| Entry {
            key,
            value: redacted(values[key.replace('-', "_")].clone()),
            origin: settings.origin(key),
        })
        .collect();
    if json {
        printer.data(&serde_json::to_string_pretty(&entries)?);
        return Ok(ExitStatus::Success);
    }
    for entry in &entries {
        let value = match &entry.value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "(unset)".to_string(),
            other => other.to_string(),
        };
        printer.data(&format!(
            "{:<17} {:<40} # {}",
            entry.key, value, entry.origin
        ));
    }
    Ok(ExitStatus::Success)
}
