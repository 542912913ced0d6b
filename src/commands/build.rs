//! `hpcbinder build`: build (or reuse) the environment, register and verify its kernel;
//! with `--dry-run`, only the plan.

use super::checkout_and_detect;
use crate::cli::BuildArgs;
use crate::detect::Buildpack;
use crate::error::ExitStatus;
use crate::events::{Event, Phase, Reporter, ReporterExt};
use crate::key;
use crate::plan::{self, KernelOptions};
use crate::printer::{sanitize, Printer};
use crate::python::Source;
use crate::settings::Settings;

/// Plan (and, later, run) a build.
pub fn build(
    args: &BuildArgs,
    settings: &Settings,
    printer: &Printer,
    reporter: &dyn Reporter,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let (checkout, spec) = checkout_and_detect(&args.repo, settings, reporter)?;
    let target = plan::choose_target(&spec, settings)?;
    if !matches!(spec.buildpack, Buildpack::Docker | Buildpack::Nix) {
        let choice = crate::python::choose(&spec, settings);
        reporter.phase(Phase::Building, format!("Using {}", choice.describe()));
        if let (Some(asked), Source::Configured(origin)) = (&spec.python, &choice.source) {
            if *asked != choice.version {
                let file = spec
                    .files
                    .iter()
                    .find(|f| f.ends_with("runtime.txt"))
                    .map(String::as_str)
                    .unwrap_or("the repository");
                reporter.warning(format!(
                    "{file} asks for Python {asked}; building with Python {} from {origin}",
                    choice.version
                ));
            }
        }
    }
    let from_lock = match &args.from_lock {
        Some(path) => Some(fs_err::canonicalize(path)?),
        None => None,
    };
    let env_key = key::compute(
        &checkout.root,
        &spec,
        target,
        settings,
        from_lock.as_deref(),
    )?;
    let kernel = KernelOptions {
        name: args.kernel_name.clone(),
        display_name: args.display_name.clone(),
        dir: args.kernel_dir.clone(),
    };
    let build_plan = plan::plan(&checkout, &spec, target, &env_key, settings, &kernel);
    let request = crate::build::BuildRequest {
        checkout: &checkout,
        spec: &spec,
        target,
        key: &env_key,
        settings,
        kernel: &kernel,
        register_kernel: !args.no_kernel,
        verify: !args.no_verify,
        from_lock,
    };
    if let Some(dir) = &args.containerfile_only {
        if !target.is_container() {
            anyhow::bail!(
                "--containerfile-only needs a container target, and this build's target is {}",
                target.name()
            );
        }
        let containerfile = crate::build::container::write_context(&request, dir, reporter)?;
        printer.info(&format!("Wrote the build context to {}", dir.display()));
        printer.data(&containerfile.display().to_string());
        return Ok(ExitStatus::Success);
    }
    if !args.dry_run {
        let outcome = crate::build::build(&request, reporter)?;
        let asked_r = spec.r.as_ref().and_then(|r| r.version.as_deref());
        if let (Some(asked), Some(found)) = (asked_r, &outcome.runtime) {
            // The image's R comes from the base image's distribution (see lib.rs).
            if found != asked && !found.starts_with(&format!("{asked}.")) {
                reporter.warning(format!(
                    "runtime.txt asks for R {asked}; the image has R {found}, from its base image's distribution"
                ));
            }
        }
        if json {
            reporter.report(Event::new(Phase::Ready, "Environment ready").with_fields(&outcome));
        } else {
            let kernel = outcome
                .kernel
                .as_ref()
                .map(|k| format!(" (kernel {k})"))
                .unwrap_or_default();
            let built = outcome
                .image
                .clone()
                .unwrap_or_else(|| outcome.prefix.display().to_string());
            printer.info(&format!("Ready: {built}{kernel}"));
            if let Some(reason) = &outcome.verification {
                printer.warning(&format!("the kernel was not verified ({reason})"));
            }
            if let (Some(name), Some(dir)) = (&outcome.kernel, &outcome.kernel_dir) {
                printer.info(&format!(
                    "Use it: pick \"{}\" in JupyterLab's launcher or Kernel menu, or run `jupyter console --kernel {name}` (kernelspec in {})",
                    sanitize(&build_plan.kernel.display_name),
                    dir.display()
                ));
            }
            printer.data(&built);
        }
        return Ok(ExitStatus::Success);
    }
    let containerfile = if target.is_container() {
        Some(crate::build::container::preview(&request)?)
    } else {
        None
    };
    if json {
        #[derive(serde::Serialize)]
        struct Preview<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            containerfile: Option<&'a str>,
        }
        reporter.report(
            Event::new(Phase::Ready, "Plan ready (dry run); nothing was built")
                .with_fields(&build_plan)
                .with_fields(&Preview {
                    containerfile: containerfile.as_deref(),
                }),
        );
        return Ok(ExitStatus::Success);
    }
    let source = &build_plan.source;
    printer.data(&format!("source:    {}", sanitize(&source.origin)));
    if let Some(commit) = &source.commit {
        printer.data(&format!(
            "commit:    {commit}{}",
            if source.dirty {
                " (with local changes)"
            } else {
                ""
            }
        ));
    }
    printer.data(&format!("buildpack: {}", build_plan.buildpack.name()));
    printer.data(&format!("target:    {}", target.name()));
    if let Some(python) = &build_plan.python {
        printer.data(&format!("python:    {python}"));
    }
    printer.data(&format!("key:       {}", build_plan.key));
    printer.data(&format!(
        "prefix:    {}{}",
        build_plan.prefix.display(),
        if build_plan.ready { " (ready)" } else { "" }
    ));
    printer.data(&format!(
        "kernel:    {} \"{}\" in {}",
        build_plan.kernel.name,
        sanitize(&build_plan.kernel.display_name),
        build_plan.kernel.dir.display()
    ));
    printer.data("steps:");
    for (index, step) in build_plan.steps.iter().enumerate() {
        printer.data(&format!("  {}. {}", index + 1, sanitize(step)));
    }
    if let Some(text) = containerfile {
        printer.data("containerfile:");
        printer.data(&sanitize(text.trim_end()));
    }
    Ok(ExitStatus::Success)
}
