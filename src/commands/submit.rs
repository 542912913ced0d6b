//! `hpcbinder build --submit` (and `build` with `builder = "slurm"`): plan here, build
//! in a Slurm batch job ([`crate::slurm`]), relay its events, and end as a local build
//! would (the same output and exit status).
//!
//! The plan is made on this node first: it fetches the repository into the user's cache
//! in the store (which the job then reuses), resolves the commit the job builds, and picks
//! the target whose `[slurm.target.<target>]` options apply. An environment already in
//! the store needs no job: its kernel is registered here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cli::BuildArgs;
use crate::error::ExitStatus;
use crate::events::{Event, Phase, Reporter};
use crate::pipeline::{self, Action, Options, Outcome, Repository};
use crate::printer::{sanitize, Printer};
use crate::settings::Settings;
use crate::slurm::{self, SlurmError};

/// Passes every event but the plan's own `ready` (the build's comes from the job).
struct PlanReporter<'a>(&'a dyn Reporter);

impl Reporter for PlanReporter<'_> {
    fn report(&self, event: Event) {
        if event.phase != Phase::Ready {
            self.0.report(event);
        }
    }
}

/// Submit the build and follow it. `None`: the environment is ready; build locally.
pub fn submit(
    args: &BuildArgs,
    repository: &Repository,
    settings: &Settings,
    options: &Options,
    printer: &Printer,
    reporter: &dyn Reporter,
    json: bool,
) -> anyhow::Result<Option<ExitStatus>> {
    let plan_options = Options {
        action: Action::Plan,
        ..options.clone()
    };
    let Outcome::Planned { plan, .. } =
        pipeline::run(repository, settings, &plan_options, &PlanReporter(reporter))?
    else {
        unreachable!("a plan action gives a plan");
    };
    if plan.ready {
        reporter.report(Event::new(
            Phase::Building,
            "The environment is already in the store: no Slurm job needed",
        ));
        return Ok(None);
    }
    let build_args = job_arguments(args, repository, &plan, settings);
    let store = crate::store::Store::open(&settings.store, &settings.store_maintainers)?;
    let jobs = settings.store.join("jobs");
    crate::store::trust::shared_dir(&jobs, store.sharing())?;
    let mine = jobs.join(format!("u{}", crate::store::current_uid()));
    crate::store::trust::private_dir(&mine)?;
    let key16 = &plan.key[..plan.key.len().min(16)];
    let slurm_options = settings.slurm.for_target(plan.target.name());
    let job = slurm::submit(
        &mine,
        &format!("hpcbinder-{key16}"),
        &slurm_options,
        &build_args,
    )?;
    let mut submitted = Event::new(
        Phase::Waiting,
        format!("Submitted the build as Slurm job {}", job.id),
    );
    submitted
        .fields
        .insert("job_id".into(), job.id.clone().into());
    submitted
        .fields
        .insert("job_dir".into(), job.dir.display().to_string().into());
    reporter.report(submitted);
    if args.no_wait {
        if !json {
            printer.info(&format!(
                "Slurm job {} builds it; its events go to {} (`scancel {}` cancels it)",
                job.id,
                job.events().display(),
                job.id
            ));
            printer.data(&job.id);
        }
        return Ok(Some(ExitStatus::Success));
    }
    let ready = std::sync::Mutex::new(None);
    let keep_ready = KeepReady {
        inner: reporter,
        ready: &ready,
    };
    let finished = match slurm::follow(&job, &keep_ready) {
        Ok(finished) => finished,
        Err(error @ SlurmError::Interrupted { .. }) => {
            let error = anyhow::Error::from(error);
            if json {
                reporter.report(Event::new(Phase::Failed, crate::error::one_line(&error)));
            }
            crate::error::report(printer, &error);
            return Ok(Some(ExitStatus::External(130)));
        }
        Err(error) => return Err(error.into()),
    };
    let status = match finished.code {
        0 => ExitStatus::Success,
        1 => ExitStatus::Failure,
        2 => ExitStatus::Error,
        code => ExitStatus::External(u8::try_from(code).unwrap_or(2)),
    };
    if json {
        if finished.code != 0 && finished.last != Some(Phase::Failed) {
            reporter.report(Event::new(
                Phase::Failed,
                format!(
                    "The build in Slurm job {} exited with {}",
                    job.id, finished.code
                ),
            ));
        }
        return Ok(Some(status));
    }
    if finished.code != 0 {
        printer.error_block(&sanitize(finished.stderr.trim_end()));
        return Ok(Some(status));
    }
    let ready = ready.into_inner().unwrap_or_default();
    if let Some(ready) = ready {
        let field = |name: &str| ready.fields.get(name).and_then(|v| v.as_str());
        super::build::print_ready(
            printer,
            &super::build::Ready {
                built: field("image").or(field("prefix")).unwrap_or_default(),
                kernel: field("kernel"),
                kernel_dir: field("kernel_dir").map(Path::new),
                display_name: &plan.kernel.display_name,
                verification: field("verification"),
            },
        );
    }
    Ok(Some(status))
}

/// Keeps the job's `ready` event for the summary.
struct KeepReady<'a> {
    inner: &'a dyn Reporter,
    ready: &'a std::sync::Mutex<Option<Event>>,
}

impl Reporter for KeepReady<'_> {
    fn report(&self, event: Event) {
        if event.phase == Phase::Ready {
            if let Ok(mut ready) = self.ready.lock() {
                *ready = Some(event.clone());
            }
        }
        self.inner.report(event);
    }
}

/// The job's command after the executable: a local `build --json` of what was planned.
fn job_arguments(
    args: &BuildArgs,
    repository: &Repository,
    plan: &crate::plan::BuildPlan,
    settings: &Settings,
) -> Vec<OsString> {
    let mut out: Vec<OsString> = ["build", "--local", "--json", "--store"]
        .map(OsString::from)
        .into();
    out.push(settings.store.clone().into());
    out.extend(["--target".into(), plan.target.name().into()]);
    let local_dir = Path::new(&repository.spec).is_dir();
    // The planned commit, so a branch moving meanwhile does not change what is built;
    // a local work tree is built as it is (with its changes), as here.
    if let (Some(commit), false) = (&plan.source.commit, local_dir) {
        out.extend(["--ref".into(), commit.into()]);
    } else if let Some(reference) = &repository.reference {
        out.extend(["--ref".into(), reference.into()]);
    }
    let flag_value = |out: &mut Vec<OsString>, flag: &str, value: Option<OsString>| {
        if let Some(value) = value {
            out.push(flag.into());
            out.push(value);
        }
    };
    // The command line's own choices; the job reads the same config files.
    flag_value(
        &mut out,
        "--python",
        args.target.python.clone().map(Into::into),
    );
    flag_value(
        &mut out,
        "--base-image",
        args.target.base_image.clone().map(Into::into),
    );
    flag_value(
        &mut out,
        "--kernel-name",
        args.kernel_name.clone().map(Into::into),
    );
    flag_value(
        &mut out,
        "--display-name",
        args.display_name.clone().map(Into::into),
    );
    flag_value(
        &mut out,
        "--kernel-dir",
        args.kernel_dir.as_deref().map(|d| absolute(d).into()),
    );
    for (on, flag) in [
        (args.no_kernel, "--no-kernel"),
        (args.no_verify, "--no-verify"),
        (args.replace, "--replace"),
        (args.with_server, "--with-server"),
    ] {
        if on {
            out.push(flag.into());
        }
    }
    for lock in &args.from_lock {
        out.push("--from-lock".into());
        out.push(absolute(lock).into());
    }
    out.push("--".into());
    out.push(if local_dir {
        absolute(Path::new(&repository.spec)).into()
    } else {
        repository.spec.clone().into()
    });
    out
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
