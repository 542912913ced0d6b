//! `hpcbinder detect`: what environment a repository describes.

use serde::Serialize;

use super::checkout_and_detect;
use crate::cli::RepoArgs;
use crate::detect::EnvSpec;
use crate::error::ExitStatus;
use crate::events::Reporter;
use crate::printer::{sanitize, Printer};
use crate::settings::Settings;
use crate::source::Identity;

#[derive(Serialize)]
struct DetectOutput<'a> {
    #[serde(flatten)]
    spec: &'a EnvSpec,
    source: &'a Identity,
}

/// Detect and print the spec (JSON object or a short human summary).
pub fn detect(
    args: &RepoArgs,
    settings: &Settings,
    printer: &Printer,
    reporter: &dyn Reporter,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let (checkout, spec) = checkout_and_detect(args, settings, reporter)?;
    if json {
        let output = DetectOutput {
            spec: &spec,
            source: &checkout.identity,
        };
        printer.data(&serde_json::to_string_pretty(&output)?);
        return Ok(ExitStatus::Success);
    }
    printer.data(&format!("buildpack: {}", spec.buildpack.name()));
    printer.data(&format!(
        "python:    {}",
        spec.python.as_deref().unwrap_or("(not specified)")
    ));
    if let Some(r) = &spec.r {
        printer.data(&format!(
            "r:         {} (snapshot {})",
            r.version.as_deref().unwrap_or("(site default)"),
            r.snapshot.as_deref().unwrap_or("site default")
        ));
    }
    if let Some(lock) = &spec.lock {
        printer.data(&format!(
            "lock:      {} ({}, {} packages)",
            lock.file, lock.format, lock.packages
        ));
    }
    printer.data(&format!("files:     {}", sanitize(&spec.files.join(", "))));
    if !spec.apt.is_empty() {
        printer.data(&format!("apt:       {}", spec.apt.join(" ")));
    }
    if spec.installs_repo {
        printer.data("installs:  the repository itself");
    }
    Ok(ExitStatus::Success)
}
