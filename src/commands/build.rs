//! `hpcbinder build`: the pipeline ([`crate::pipeline`]) with the command line's options,
//! and what a person reads afterwards. `--json` output is the pipeline's events alone.

use crate::cli::BuildArgs;
use crate::error::ExitStatus;
use crate::events::Reporter;
use crate::pipeline::{self, Action, Options, Outcome, Repository};
use crate::plan::KernelOptions;
use crate::printer::{sanitize, sanitize_line, Printer};
use crate::settings::{Builder, Settings};

/// What a finished build says to people (a local build's outcome, or a job's `ready`).
pub struct Ready<'a> {
    /// The image, else the prefix.
    pub built: &'a str,
    /// The kernelspec's name, when one was registered.
    pub kernel: Option<&'a str>,
    /// Its directory.
    pub kernel_dir: Option<&'a std::path::Path>,
    /// The kernel's display name.
    pub display_name: &'a str,
    /// Why the kernel was not verified, if it was not.
    pub verification: Option<&'a str>,
}

/// `Ready: ...`, how to use the kernel, and the prefix or image on stdout.
pub fn print_ready(printer: &Printer, ready: &Ready<'_>) {
    let kernel = ready
        .kernel
        .map(|k| format!(" (kernel {k})"))
        .unwrap_or_default();
    printer.info(&format!("Ready: {}{kernel}", ready.built));
    if let Some(reason) = ready.verification {
        printer.warning(&format!("the kernel was not verified ({reason})"));
    }
    if let (Some(name), Some(dir)) = (ready.kernel, ready.kernel_dir) {
        printer.info(&format!(
            "Use it: pick \"{}\" in JupyterLab's launcher or Kernel menu, or run `jupyter console --kernel {name}` (kernelspec in {})",
            sanitize(ready.display_name),
            dir.display()
        ));
    }
    printer.data(ready.built);
}

/// Build, plan (`--dry-run`) or write a build context (`--containerfile-only`).
pub fn build(
    args: &BuildArgs,
    settings: &Settings,
    printer: &Printer,
    reporter: &dyn Reporter,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let repository = Repository {
        spec: args.repo.repo.clone(),
        reference: args.repo.reference.clone(),
    };
    let action = match (&args.containerfile_only, args.dry_run) {
        (Some(dir), _) => Action::Context(dir.clone()),
        (None, true) => Action::Plan,
        (None, false) => Action::Build,
    };
    let options = Options {
        kernel: KernelOptions {
            name: args.kernel_name.clone(),
            display_name: args.display_name.clone(),
            dir: args.kernel_dir.clone(),
        },
        register_kernel: !args.no_kernel,
        verify: !args.no_verify,
        from_lock: args.from_lock.clone(),
        replace_kernel: args.replace,
        action,
    };
    let mut settings = settings.clone();
    settings.pip.with_server = args.with_server;
    let settings = &settings;
    let batch = args.submit || (settings.builder == Builder::Slurm && !args.local);
    if batch && options.action == Action::Build {
        if let Some(status) = super::submit::submit(
            args,
            &repository,
            settings,
            &options,
            printer,
            reporter,
            json,
        )? {
            return Ok(status);
        }
    }
    let outcome = pipeline::run(&repository, settings, &options, reporter)?;
    if json {
        return Ok(ExitStatus::Success);
    }
    match outcome {
        Outcome::Context { containerfile, .. } => {
            let dir = containerfile.parent().unwrap_or(&containerfile);
            printer.info(&format!("Wrote the build context to {}", dir.display()));
            printer.data(&containerfile.display().to_string());
        }
        Outcome::Built { plan, outcome } => {
            let prefix = outcome.prefix.display().to_string();
            print_ready(
                printer,
                &Ready {
                    built: outcome.image.as_deref().unwrap_or(&prefix),
                    kernel: outcome.kernel.as_deref(),
                    kernel_dir: outcome.kernel_dir.as_deref(),
                    display_name: &plan.kernel.display_name,
                    verification: outcome.verification.as_deref(),
                },
            );
        }
        Outcome::Planned {
            plan,
            containerfile,
        } => {
            let source = &plan.source;
            printer.data(&format!("source:    {}", sanitize_line(&source.origin)));
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
            printer.data(&format!("buildpack: {}", plan.buildpack.name()));
            printer.data(&format!("target:    {}", plan.target.name()));
            if let Some(python) = &plan.python {
                printer.data(&format!("python:    {python}"));
            }
            printer.data(&format!("key:       {}", plan.key));
            printer.data(&format!(
                "prefix:    {}{}",
                plan.prefix.display(),
                if plan.ready { " (ready)" } else { "" }
            ));
            printer.data(&format!(
                "kernel:    {} \"{}\" in {}",
                plan.kernel.name,
                sanitize_line(&plan.kernel.display_name),
                plan.kernel.dir.display()
            ));
            printer.data("steps:");
            for (index, step) in plan.steps.iter().enumerate() {
                printer.data(&format!("  {}. {}", index + 1, sanitize_line(step)));
            }
            if let Some(text) = containerfile {
                printer.data("containerfile:");
                printer.data(&sanitize(text.trim_end()));
            }
        }
    }
    Ok(ExitStatus::Success)
}
