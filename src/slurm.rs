//! Builds as Slurm batch jobs (`build --submit`, `builder = "slurm"`).
//!
//! The job runs `hpcbinder build --local --json ...` on a compute node; Slurm writes its
//! stdout, one JSON event per line, to a file in the user's private folder of the store
//! (`<store>/jobs/u<uid>/<job>/events.jsonl`, on the filesystem the nodes share), and the
//! submitting process relays each event as it comes. While the job waits in the queue,
//! `squeue` says why, and that becomes a `waiting` event. A wrapper script records the
//! build's exit status beside the events; a job that ends without one was killed
//! (`scancel`, its time limit, its node), and its state from `squeue` says which.
//! SIGINT, SIGTERM and SIGHUP cancel the job (`scancel`) before returning.
//!
//! The store's build lock works across nodes (it is a lock on the shared filesystem),
//! so jobs of one key build it once, as local builds do.

use std::ffi::OsString;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::diagnostic::{Blame, Diagnostic};
use crate::events::{Event, Phase, Reporter};
use crate::settings::SlurmTable;

/// The wrapper the job runs: the build, then its exit status written atomically.
const JOB_SCRIPT: &str = r#"#!/bin/sh
# hpcbinder build job: $1 is where the build's exit status goes, then the build's command.
status_file=$1
shift
"$@"
status=$?
# A build killed by a signal (scancel, the time limit) records nothing: Slurm's state says.
if [ "$status" -lt 128 ]; then
    printf '%s\n' "$status" > "$status_file.tmp" && mv -f "$status_file.tmp" "$status_file"
fi
exit "$status"
"#;

/// Slurm's end states of a job it ended itself (the build did not finish)...
const KILLED: &[&str] = &[
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
];
/// ...and those of a job whose script ended.
const FINISHED: &[&str] = &["COMPLETED", "FAILED", "SPECIAL_EXIT", "REVOKED"];

/// How often the events file is read and the job's state asked for.
const POLL: Duration = Duration::from_millis(250);
const STATE_EVERY: Duration = Duration::from_secs(1);
/// How long `squeue` may keep failing before the job is given up on.
const LOST_AFTER: Duration = Duration::from_secs(120);

/// Errors of Slurm builds.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A Slurm command is missing.
    #[error("cannot run {command}: {source}")]
    Missing {
        /// sbatch, squeue or scancel.
        command: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// sbatch refused the job.
    #[error("sbatch refused the build job: {message}")]
    Refused {
        /// What sbatch said.
        message: String,
    },
    /// The job's folder could not be made.
    #[error("cannot prepare the job's folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The job ended without the build finishing.
    #[error("the Slurm job {id} {how} before the build finished{tail}")]
    Killed {
        /// The job id.
        id: String,
        /// What happened, from its state.
        how: String,
        /// The end of the job's error output, if any (`: ...`).
        tail: String,
    },
    /// The user interrupted the build; the job was cancelled.
    #[error("interrupted: the Slurm job {id} was cancelled")]
    Interrupted {
        /// The job id.
        id: String,
    },
    /// Slurm stopped answering about the job.
    #[error("lost track of the Slurm job {id}: squeue kept failing ({message})")]
    Lost {
        /// The job id.
        id: String,
        /// squeue's last error.
        message: String,
    },
}

impl Diagnostic for SlurmError {
    fn blame(&self) -> Blame {
        match self {
            Self::Refused { .. } => Blame::User,
            _ => Blame::Environment,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Missing { .. } => "Slurm's client commands (sbatch, squeue, scancel) must be on PATH: load the site's slurm module, or build here with --local".into(),
            Self::Refused { .. } => "check the [slurm] table of the site config (partition, account, qos, time) against `sinfo` and `sacctmgr show assoc user=$USER`".into(),
            Self::Folder { .. } => "the store must be writable from this node and the compute nodes".into(),
            Self::Killed { how, .. } if how.contains("time limit") => {
                "raise the [slurm] table's time (or the target's, [slurm.target.<target>]); nothing half-built was kept".into()
            }
            Self::Killed { .. } => "nothing half-built was kept; run the build again".into(),
            Self::Interrupted { .. } => return None,
            Self::Lost { id, .. } => format!("see `squeue -j {id}` and the job's events in the store's jobs folder; cancel it with `scancel {id}`"),
        })
    }
}

/// A submitted build job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Slurm's job id.
    pub id: String,
    /// Its folder in the store: `events.jsonl`, `stderr.log`, `exit-status`.
    pub dir: PathBuf,
}

impl Job {
    /// The file the job's events go to.
    pub fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }
}

/// How a followed job ended when its build finished (success or not).
#[derive(Debug)]
pub struct Finished {
    /// The build's exit status.
    pub code: i32,
    /// The build's error output (its `error:`/`hint:` lines when it failed).
    pub stderr: String,
    /// The last event's phase.
    pub last: Option<Phase>,
}

/// Submit `build_args` (the arguments after the executable, starting with `build`) as a
/// batch job named `name` with `options`' sbatch arguments. The job's folder is made in
/// `jobs` (this user's private folder of the store's jobs directory).
pub fn submit(
    jobs: &Path,
    name: &str,
    options: &SlurmTable,
    build_args: &[OsString],
) -> Result<Job, SlurmError> {
    let dir = jobs.join(format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    let folder = |source| SlurmError::Folder {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir(&dir).map_err(folder)?;
    let script = dir.join("job.sh");
    crate::store::write_atomic(&script, JOB_SCRIPT.as_bytes(), 0o700).map_err(folder)?;
    let executable = match &options.hpcbinder {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(folder)?,
    };
    let mut command = Command::new("sbatch");
    command
        .arg("--parsable")
        .arg(format!("--job-name={name}"))
        .arg(arg("--output=", &dir.join("events.jsonl")))
        .arg(arg("--error=", &dir.join("stderr.log")))
        .args(options.sbatch_args())
        .arg(&script)
        .arg(dir.join("exit-status"))
        .arg(executable)
        .args(build_args)
        .stdin(Stdio::null());
    let output = command.output().map_err(|source| SlurmError::Missing {
        command: "sbatch",
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // --parsable: "<id>" or "<id>;<cluster>".
    let id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if !output.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        let _ = std::fs::remove_dir_all(&dir);
        let message = String::from_utf8_lossy(&output.stderr);
        let message = message
            .lines()
            .map(|l| l.trim_start_matches("sbatch: error: ").trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(SlurmError::Refused {
            message: crate::printer::sanitize_line(if message.is_empty() {
                stdout.trim()
            } else {
                &message
            }),
        });
    }
    Ok(Job { id, dir })
}

fn arg(flag: &str, path: &Path) -> OsString {
    let mut arg = OsString::from(flag);
    arg.push(path);
    arg
}

/// What `squeue` says of a job.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Pending, running, completing...: Slurm's state, reason and node list.
    Active {
        state: String,
        reason: String,
        nodes: String,
    },
    /// Ended: its final state (`GONE` when Slurm no longer knows it).
    Ended { state: String },
    /// squeue failed.
    Unknown(String),
}

fn query(id: &str) -> State {
    let output = Command::new("squeue")
        .args([
            "--noheader",
            "--states=all",
            "--format=%T|%r|%N",
            "--jobs",
            id,
        ])
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => return State::Unknown(format!("cannot run squeue: {e}")),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("Invalid job id") {
            return State::Ended {
                state: "GONE".into(),
            };
        }
        return State::Unknown(stderr.trim().to_string());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find(|l| !l.trim().is_empty()) else {
        return State::Ended {
            state: "GONE".into(),
        };
    };
    let mut parts = line.trim().splitn(3, '|');
    let state = parts.next().unwrap_or_default().to_string();
    let reason = parts.next().unwrap_or_default().to_string();
    let nodes = parts.next().unwrap_or_default().to_string();

    if KILLED.contains(&state.as_str()) || FINISHED.contains(&state.as_str()) {
        State::Ended { state }
    } else {
        State::Active {
            state,
            reason,
            nodes,
        }
    }
}

/// What a job's end state means for the build, for people.
fn how_it_ended(state: &str) -> String {
    match state {
        "CANCELLED" => "was cancelled (scancel)".into(),
        "TIMEOUT" => "reached its time limit".into(),
        "NODE_FAIL" => "lost its node (node failure)".into(),
        "PREEMPTED" => "was preempted".into(),
        "OUT_OF_MEMORY" => "ran out of memory".into(),
        "BOOT_FAIL" => "could not start its node (boot failure)".into(),
        "DEADLINE" => "reached its deadline".into(),
        "GONE" => "ended (Slurm no longer knows it)".into(),
        other => format!("ended ({other})"),
    }
}

/// Reads the job's events file as it grows and relays complete lines.
struct Relay {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    last: Option<Phase>,
}

impl Relay {
    fn drain(&mut self, reporter: &dyn Reporter) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        let Ok(read) = file.take(16 << 20).read_to_end(&mut bytes) else {
            return;
        };
        self.offset += read as u64;
        self.partial.extend_from_slice(&bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            // What is not an event (a site's prolog, a module's message) is shown as text.
            let event = serde_json::from_str::<Event>(line)
                .unwrap_or_else(|_| Event::new(Phase::Building, line));
            self.last = Some(event.phase);
            reporter.report(event);
        }
    }
}

/// Follow a submitted job to its end, relaying its events to `reporter`. SIGINT,
/// SIGTERM and SIGHUP cancel it.
pub fn follow(job: &Job, reporter: &dyn Reporter) -> Result<Finished, SlurmError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| SlurmError::Folder {
            path: job.dir.clone(),
            source,
        })?;
    runtime.block_on(follow_async(job, reporter))
}

async fn follow_async(job: &Job, reporter: &dyn Reporter) -> Result<Finished, SlurmError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut signals = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        if let Ok(stream) = signal(kind) {
            signals.push(stream);
        }
    }
    let interrupted = async {
        if signals.is_empty() {
            return std::future::pending().await;
        }
        let waits = signals.iter_mut().map(|s| Box::pin(s.recv()));
        futures_util::future::select_all(waits).await;
    };
    tokio::pin!(interrupted);
    let mut relay = Relay {
        path: job.events(),
        offset: 0,
        partial: Vec::new(),
        last: None,
    };
    let mut last_state: Option<State> = None;
    let mut asked = Instant::now() - STATE_EVERY;
    let mut failing_since: Option<Instant> = None;
    let mut cancelled_at: Option<Instant> = None;
    let end_state = loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = &mut interrupted, if cancelled_at.is_none() => {
                cancel(&job.id);
                reporter.report(Event::new(
                    Phase::Waiting,
                    format!("Cancelling the Slurm job {}", job.id),
                ));
                cancelled_at = Some(Instant::now());
            }
        }
        relay.drain(reporter);
        if asked.elapsed() < STATE_EVERY {
            continue;
        }
        asked = Instant::now();
        let state = query(&job.id);
        match &state {
            State::Ended { state } => break state.clone(),
            State::Unknown(message) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > LOST_AFTER {
                    return Err(SlurmError::Lost {
                        id: job.id.clone(),
                        message: crate::printer::sanitize_line(message),
                    });
                }
            }
            State::Active {
                state: name,
                reason,
                nodes,
            } => {
                failing_since = None;
                if last_state.as_ref() != Some(&state) {
                    report_state(reporter, &job.id, name, reason, nodes);
                }
            }
        }
        if cancelled_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            break "CANCELLED".to_string();
        }
        if !matches!(state, State::Unknown(_)) {
            last_state = Some(state);
        }
    };
    // The wrapper writes the exit status last; on a shared filesystem another node's
    // writes may take a moment to show here.
    let status_file = job.dir.join("exit-status");
    let mut code = None;
    for attempt in 0..20 {
        relay.drain(reporter);
        code = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if code.is_some() || (attempt >= 3 && end_state != "COMPLETED") {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let stderr = std::fs::read(job.dir.join("stderr.log")).unwrap_or_default();
    let stderr =
        String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(64 << 10)..]).into_owned();
    if cancelled_at.is_some() && code.is_none_or(|c| c != 0) {
        return Err(SlurmError::Interrupted { id: job.id.clone() });
    }
    // Slurm ended it (scancel, its time limit, its node): whatever the build's status
    // was as it died, the build did not finish.

    if KILLED.contains(&end_state.as_str()) && code != Some(0) {
        code = None;
    }
    match code {
        Some(code) => Ok(Finished {
            code,
            stderr,
            last: relay.last,
        }),
        None => {
            let tail: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .rev()
                .take(3)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(SlurmError::Killed {
                id: job.id.clone(),
                how: how_it_ended(&end_state),
                tail: if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", crate::printer::sanitize_line(&tail.join(" / ")))
                },
            })
        }
    }
}

fn report_state(reporter: &dyn Reporter, id: &str, state: &str, reason: &str, nodes: &str) {
    let event = match state {
        "PENDING" if reason.is_empty() || reason == "None" => Event::new(
            Phase::Waiting,
            format!("The Slurm job {id} is waiting in the queue"),
        ),
        "PENDING" => Event::new(
            Phase::Waiting,
            format!("The Slurm job {id} is waiting in the queue ({reason})"),
        ),
        "RUNNING" => Event::new(
            Phase::Building,
            format!("The Slurm job {id} is running on {nodes}"),
        ),
        other => Event::new(
            Phase::Waiting,
            format!("The Slurm job {id} is {}", other.to_lowercase()),
        ),
    };
    let mut event = event;
    event.fields.insert("job_id".into(), id.into());
    event.fields.insert("job_state".into(), state.into());
    if state == "PENDING" {
        event.fields.insert("job_reason".into(), reason.into());
    }
    reporter.report(event);
}

/// Ask Slurm to cancel the job (errors are left to the state that follows).
pub fn cancel(id: &str) {
    let _ = Command::new("scancel")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_arguments_merge_the_target_over_the_table() {
        let table: SlurmTable = toml::from_str(
            r#"
            partition = "cpu"
            time = "30"
            cpus = 4
            sbatch-args = ["--constraint=haswell"]
            [target.podman]
            partition = "images"
            sbatch-args = ["--exclusive"]
            "#,
        )
        .unwrap();
        assert_eq!(
            table.for_target("podman").sbatch_args(),
            [
                "--partition=images",
                "--time=30",
                "--cpus-per-task=4",
                "--constraint=haswell",
                "--exclusive"
            ]
        );
        assert_eq!(
            table.for_target("venv").sbatch_args(),
            [
                "--partition=cpu",
                "--time=30",
                "--cpus-per-task=4",
                "--constraint=haswell"
            ]
        );
        assert!(table.problem().is_none());
        let bad: SlurmTable = toml::from_str("sbatch-args = [\"--output=/tmp/x\"]").unwrap();
        assert!(bad.problem().unwrap().0.contains("--output"));
        let bad: SlurmTable = toml::from_str("[target.docker]\npartition = \"x\"").unwrap();
        assert!(bad.problem().unwrap().0.contains("docker"));
    }

    #[test]
    fn the_relay_passes_complete_lines_and_wraps_what_is_not_an_event() {
        struct Collect(std::sync::Mutex<Vec<Event>>);
        impl Reporter for Collect {
            fn report(&self, event: Event) {
                self.0.lock().unwrap().push(event);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut relay = Relay {
            path: path.clone(),
            offset: 0,
            partial: Vec::new(),
            last: None,
        };
        let collect = Collect(std::sync::Mutex::new(Vec::new()));
        std::fs::write(&path, "{\"phase\":\"fetching\",\"message\":\"Fetching\\n\"}\nmodule: loaded\n{\"phase\":\"rea").unwrap();
        relay.drain(&collect);
        assert_eq!(collect.0.lock().unwrap().len(), 2);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"dy\",\"message\":\"Done\\n\",\"key\":\"k\"}\n")
            .unwrap();
        relay.drain(&collect);
        let events = collect.0.lock().unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].phase, Phase::Fetching);
        assert_eq!(events[1].message, "module: loaded\n");
        assert_eq!(events[2].phase, Phase::Ready);
        assert_eq!(events[2].fields["key"], "k");
        assert_eq!(relay.last, Some(Phase::Ready));
    }

    #[test]
    fn end_states_are_said_for_people() {
        assert!(how_it_ended("TIMEOUT").contains("time limit"));
        assert!(how_it_ended("CANCELLED").contains("scancel"));
        assert!(how_it_ended("NODE_FAIL").contains("node"));
    }
}
