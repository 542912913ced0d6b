//! `hpcbinder key`: the EnvKey, and with `--explain` every input behind it.

use serde::Serialize;

use super::checkout_and_detect;
use crate::cli::KeyArgs;
use crate::error::ExitStatus;
use crate::events::Reporter;
use crate::key;
use crate::plan;
use crate::printer::{sanitize, Printer};
use crate::settings::Settings;
use crate::target::Target;

#[derive(Serialize)]
struct KeyOutput<'a> {
    key: &'a str,
    target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a std::collections::BTreeMap<String, String>>,
}

/// Compute and print the key.
pub fn key(
    args: &KeyArgs,
    settings: &Settings,
    printer: &Printer,
    reporter: &dyn Reporter,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let (checkout, spec) = checkout_and_detect(&args.repo, settings, reporter)?;
    let target = plan::choose_target(&spec, settings)?;
    let env_key = key::compute(&checkout.root, &spec, target, settings, None)?;
    if json {
        let output = KeyOutput {
            key: &env_key.key,
            target,
            inputs: args.explain.then_some(&env_key.inputs),
        };
        printer.data(&serde_json::to_string(&output)?);
        return Ok(ExitStatus::Success);
    }
    printer.data(&env_key.key);
    if args.explain {
        let width = env_key.inputs.keys().map(String::len).max().unwrap_or(0);
        for (name, value) in &env_key.inputs {
            printer.data(&format!("  {:width$}  {}", sanitize(name), sanitize(value)));
        }
    }
    Ok(ExitStatus::Success)
}
