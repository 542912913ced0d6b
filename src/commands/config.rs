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

/// Print the resolved settings.
pub fn show(settings: &Settings, printer: &Printer, json: bool) -> anyhow::Result<ExitStatus> {
    let values = serde_json::to_value(settings)?;
    let entries: Vec<Entry> = [
        ("store", "store"),
        ("target", "target"),
        ("python", "python"),
        ("platform", "platform"),
        ("channels", "channels"),
        ("channel-alias", "channel_alias"),
        ("mirrors", "mirrors"),
        ("base-image", "base_image"),
        ("container-engine", "container_engine"),
        ("uv", "uv"),
        ("pip-index-url", "pip_index_url"),
        ("pip-find-links", "pip_find_links"),
        ("pip-no-index", "pip_no_index"),
        ("modules", "modules"),
        ("virtual-packages", "virtual_packages"),
        ("kernel-package", "kernel_package"),
        ("ca-bundle", "ca_bundle"),
        ("containers-conf", "containers_conf"),
        ("podman-isolation", "podman_isolation"),
        ("podman-run-args", "podman_run_args"),
        ("podman-build-args", "podman_build_args"),
        ("registry", "registry"),
        ("registry-tls-verify", "registry_tls_verify"),
        ("squash-dir", "squash_dir"),
        ("cran-mirror", "cran_mirror"),
    ]
    .into_iter()
    .map(|(key, field)| Entry {
        key,
        value: values[field].clone(),
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
