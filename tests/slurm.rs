//! `build --submit` and `builder = "slurm"` against a real Slurm (munge, slurmctld and
//! slurmd on this machine, started by `scripts/slurm start`): real batch jobs build real
//! venvs from the test wheelhouse, and their kernels answer.

mod common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{slurm, Sandbox};

/// A sandbox whose builds reach the test cluster, with `extra` site config.
fn sandbox(extra: &str) -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.native_site_config(extra);
    sandbox
}

fn submit(sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut command = sandbox.command();
    command
        .env("SLURM_CONF", slurm::conf())
        .args(["build", "--submit"])
        .args(args);
    command
}

fn events(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The job id of the `Submitted ...` event.
fn job_id(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .find_map(|e| e["job_id"].as_str())
        .unwrap_or_else(|| panic!("no job_id event in {events:?}"))
        .to_string()
}

/// A build whose postBuild takes `seconds` (so there is time to act on its job).
fn slow_repo(sandbox: &Sandbox, name: &str, seconds: u32) -> String {
    sandbox.repo(
        name,
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("postBuild", &format!("#!/bin/sh\nsleep {seconds}\n")),
        ],
    )
}

/// Starts `build --submit --json` and reads its events until one satisfies `until`;
/// returns the child (still running) and the events so far.
fn start_until(
    mut command: Command,
    until: impl Fn(&serde_json::Value) -> bool,
) -> (
    Child,
    Vec<serde_json::Value>,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let done = until(&event);
        seen.push(event);
        if done {
            return (child, seen, lines);
        }
    }
    let status = child.wait().unwrap();
    panic!("the build ended ({status}) before the awaited event: {seen:?}");
}

/// The event of a build starting its postBuild.
fn is_post_build(event: &serde_json::Value) -> bool {
    event["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("Running postBuild")
}

fn finish(
    mut child: Child,
    mut seen: Vec<serde_json::Value>,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
    for line in lines {
        seen.push(serde_json::from_str(&line.unwrap()).unwrap());
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (child.wait().unwrap(), seen, stderr)
}

fn marker_of(sandbox: &Sandbox, key: &str) -> std::path::PathBuf {
    sandbox
        .store()
        .join("e")
        .join(format!("{}.toml", &key[..16]))
}

#[test]
fn build_submit_builds_a_venv_in_a_real_slurm_job_and_its_kernel_answers() {
    let sandbox = sandbox("");
    let repo = sandbox.repo("plain", &[("requirements.txt", "six==1.16.0\n")]);
    let output = submit(&sandbox, &["--json", &repo]).output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let events = events(&output);
    let id = job_id(&events);
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "ready", "{events:?}");
    let key = last["key"].as_str().unwrap();
    // The job ran the build: Slurm knows it by the key, and it completed.
    let (state, name) = slurm::job(&id).expect("the job is known to Slurm");
    assert_eq!(name, format!("hpcbinder-{}", &key[..16]));
    assert_eq!(slurm::wait_ended(&id, 30), "COMPLETED");
    assert!(state == "COMPLETED" || state == "COMPLETING", "{state}");
    // Its events went through the store's jobs folder, and the job's own build events
    // (fetching in the job, the kernel's check) were relayed.
    let job_dir = events
        .iter()
        .find_map(|e| e["job_dir"].as_str())
        .expect("job_dir");
    assert!(Path::new(job_dir).starts_with(sandbox.store().join("jobs")));
    assert!(Path::new(job_dir).join("events.jsonl").is_file());
    assert!(events.iter().any(|e| e["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("Kernel answered")));
    assert!(marker_of(&sandbox, key).is_file());
    let kernel_dir = Path::new(last["kernel_dir"].as_str().unwrap());
    common::run_cell(
        kernel_dir,
        "import six, sys; print(sys.prefix)",
        last["prefix"].as_str().unwrap(),
        60,
    );

    // Again: the environment is in the store, so no job is needed; people read the same
    // summary a local build prints.
    let again = submit(&sandbox, &[&repo]).output().unwrap();
    assert!(again.status.success(), "{}", common::stderr(&again));
    let text = common::stderr(&again);
    assert!(text.contains("no Slurm job needed"), "{text}");
    assert!(text.contains("Ready: "), "{text}");
    assert_eq!(
        common::stdout(&again).trim(),
        last["prefix"].as_str().unwrap()
    );
}

#[test]
fn two_concurrent_submits_of_one_key_are_two_jobs_that_build_it_once() {
    let sandbox = sandbox("");
    let repo = slow_repo(&sandbox, "shared", 4);
    let children: Vec<Child> = (0..2)
        .map(|_| {
            submit(&sandbox, &["--json", &repo])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut reused = Vec::new();
    let mut ids = Vec::new();
    for output in &outputs {
        assert!(output.status.success(), "{}", common::stderr(output));
        let events = events(output);
        ids.push(job_id(&events));
        let last = events.last().unwrap();
        assert_eq!(last["phase"], "ready");
        reused.push(last["reused"].as_bool().unwrap());
    }
    assert_ne!(ids[0], ids[1], "each submit is its own job");
    reused.sort();
    assert_eq!(
        reused,
        [false, true],
        "one job built, the other waited and reused"
    );
    let waited = outputs.iter().any(|o| {
        events(o).iter().any(|e| {
            e["phase"] == "waiting"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("Another build of")
        })
    });
    assert!(waited, "the second job waited on the store's lock");
}

#[test]
fn scancel_mid_build_leaves_nothing_ready_and_the_next_submit_builds_it() {
    let sandbox = sandbox("");
    let repo = slow_repo(&sandbox, "cancelled", 8);
    let (child, seen, lines) = start_until(submit(&sandbox, &["--json", &repo]), is_post_build);
    let id = job_id(&seen);
    let status = slurm::command("scancel").arg(&id).status().unwrap();
    assert!(status.success());
    let (status, seen, stderr) = finish(child, seen, lines);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let last = seen.last().unwrap();
    assert_eq!(last["phase"], "failed");
    let message = last["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("the Slurm job {id} was cancelled (scancel)")),
        "{message}"
    );
    assert!(
        stderr.contains("hint: nothing half-built was kept"),
        "{stderr}"
    );
    assert_eq!(slurm::job(&id).unwrap().0, "CANCELLED");
    let key = sandbox.key(&[&repo]);
    assert!(
        !marker_of(&sandbox, &key).exists(),
        "nothing ready after scancel"
    );

    let output = submit(&sandbox, &["--json", &repo]).output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let events = events(&output);
    assert_eq!(events.last().unwrap()["phase"], "ready");
    assert_eq!(events.last().unwrap()["reused"], false);
    assert!(marker_of(&sandbox, &key).is_file());
}

#[test]
fn a_build_job_killed_by_its_time_limit_says_so() {
    let sandbox = sandbox("[slurm]\ntime = \"1\"\n");
    let repo = slow_repo(&sandbox, "too-long", 600);
    let output = submit(&sandbox, &[&repo]).output().unwrap();
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("reached its time limit"), "{stderr}");
    assert!(
        stderr.contains("hint: raise the [slurm] table's time"),
        "{stderr}"
    );
    let key = sandbox.key(&[&repo]);
    assert!(!marker_of(&sandbox, &key).exists());
}

#[test]
fn interrupting_a_submitted_build_cancels_its_job() {
    let sandbox = sandbox("");
    let repo = slow_repo(&sandbox, "interrupted", 30);
    let (child, seen, lines) = start_until(submit(&sandbox, &["--json", &repo]), is_post_build);
    let id = job_id(&seen);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (status, seen, stderr) = finish(child, seen, lines);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains(&format!("interrupted: the Slurm job {id} was cancelled")));
    assert_eq!(seen.last().unwrap()["phase"], "failed");
    assert_eq!(slurm::wait_ended(&id, 30), "CANCELLED");
}

#[test]
fn builder_slurm_makes_build_submit_and_no_wait_returns_the_job_id() {
    let sandbox = sandbox("builder = \"slurm\"\n[slurm]\ncpus = 1\n");
    let repo = sandbox.repo("later", &[("requirements.txt", "six==1.16.0\n")]);
    let output = sandbox
        .command()
        .env("SLURM_CONF", slurm::conf())
        .args(["build", "--no-wait", &repo])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let id = common::stdout(&output).trim().to_string();
    assert!(
        id.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty(),
        "{id}"
    );
    assert!(common::stderr(&output).contains(&format!("scancel {id}")));
    assert_eq!(slurm::wait_ended(&id, 120), "COMPLETED");
    let key = sandbox.key(&[&repo]);
    assert!(marker_of(&sandbox, &key).is_file());
    // --local builds here whatever the builder: no job, the environment is reused.
    let local = sandbox.ok(&["build", "--local", "--json", &repo]);
    assert!(!local.contains("job_id"), "{local}");
}

#[test]
fn sbatch_refusing_the_job_is_one_error_with_a_hint_and_leaves_no_job_folder() {
    let sandbox = sandbox("[slurm]\npartition = \"no-such-partition\"\n");
    let repo = sandbox.repo("refused", &[("requirements.txt", "six==1.16.0\n")]);
    let output = submit(&sandbox, &[&repo]).output().unwrap();
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: sbatch refused the build job: invalid partition specified: no-such-partition"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("hint: check the [slurm] table"), "{stderr}");
    let mine = std::fs::read_dir(sandbox.store().join("jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read_dir(mine).unwrap().count(), 0);
    // A bad [slurm] table is a config error before anything runs.
    std::fs::write(
        sandbox.path().join("site.toml"),
        "[slurm]\nsbatch-args = [\"--output=/tmp/x\"]\n",
    )
    .unwrap();
    let output = submit(&sandbox, &[&repo]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(common::stderr(&output).contains("hpcbinder sets those"));
}

/// The id of the job building the repository `repos/<name>` in this sandbox's store, once
/// its postBuild (which runs `marker`) runs.
fn job_running_post_build(sandbox: &Sandbox, name: &str, marker: &str) -> String {
    let fetching = format!("{}\\n", sandbox.path().join("repos").join(name).display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let jobs = sandbox.store().join("jobs").join("u0");
        for entry in std::fs::read_dir(&jobs).into_iter().flatten().flatten() {
            let events =
                std::fs::read_to_string(entry.path().join("events.jsonl")).unwrap_or_default();
            let running = Command::new("pgrep").args(["-f", marker]).output().unwrap();
            let mine = events.lines().any(|l| l.contains(&fetching));
            if !mine || !events.contains("Running postBuild") || !running.status.success() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let name = &name[..name.rfind('-').unwrap()];
            let output = slurm::command("squeue")
                .args(["--noheader", "--format=%i", "--name", name])
                .output()
                .unwrap();
            let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if !id.is_empty() {
                return id;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no job ran {marker}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_service_with_builder_slurm_gives_many_clients_one_job_and_reports_jobs_that_die() {
    use common::sse::{events, repo, spawn_stream};
    let sandbox = Sandbox::new();
    sandbox.native_site_config(
        "local-sources = true\nbuilder = \"slurm\"\n[serve]\nbuild-timeout = 45\nmax-builds-per-user = 100\n",
    );
    let hub = common::hubapi::HubApi::start(common::hubapi::HubUsers::standard());
    let service = common::bench::Service::start(&sandbox, &hub, &[("SLURM_CONF", slurm::conf())]);
    let url = |spec: &str| format!("{}/build/{spec}?build_only=true", service.base());
    let fast = repo(&sandbox, "fast", "six==1.16.0\n", Some("sleep 2"));
    let slow = repo(&sandbox, "slow", "six==1.16.0\n", Some("sleep 93.75"));
    let killed = repo(&sandbox, "killed", "six==1.16.0\n", Some("sleep 94.25"));

    // Five clients of one new key: one job, every stream ends ready.
    let clients: Vec<_> = (0..5)
        .map(|_| spawn_stream(url(&fast), "alice-token"))
        .collect();
    let slow_client = spawn_stream(url(&slow), "alice-token");
    let killed_client = spawn_stream(url(&killed), "carol-token");
    let mut ids = std::collections::BTreeSet::new();
    for client in clients {
        let events = events(&client.join().unwrap());
        assert_eq!(events.last().unwrap()["phase"], "ready", "{events:?}");
        ids.insert(job_id(&events));
    }
    assert_eq!(ids.len(), 1, "one job for one key: {ids:?}");
    let id = ids.into_iter().next().unwrap();
    assert_eq!(slurm::wait_ended(&id, 30), "COMPLETED");

    // A job cancelled from outside (scancel) is a failed event that says so.
    let job = job_running_post_build(&sandbox, "killed", "sleep 94.25");
    assert!(slurm::command("scancel")
        .arg(&job)
        .status()
        .unwrap()
        .success());
    let events_killed = events(&killed_client.join().unwrap());
    let last = events_killed.last().unwrap();
    assert_eq!(last["phase"], "failed", "{events_killed:?}");
    let message = last["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("the Slurm job {job} was cancelled")),
        "{message}"
    );

    // The service's timeout cancels the job.
    let events_slow = events(&slow_client.join().unwrap());
    let slow_job = job_id(&events_slow);
    let last = events_slow.last().unwrap();
    assert_eq!(last["phase"], "failed");
    assert!(last["message"]
        .as_str()
        .unwrap()
        .contains("longer than the service's limit (45 s)"));
    assert_eq!(slurm::wait_ended(&slow_job, 30), "CANCELLED");
    std::thread::sleep(std::time::Duration::from_secs(1));
    for marker in ["sleep 93.75", "sleep 94.25"] {
        let left = Command::new("pgrep").args(["-f", marker]).output().unwrap();
        assert!(!left.status.success(), "{marker} still runs");
    }
}

#[test]
fn a_pending_job_is_a_waiting_event_with_slurms_reason() {
    // Held jobs stay pending (reason JobHeldUser) until released.
    let sandbox = sandbox("[slurm]\nsbatch-args = [\"--hold\"]\n");
    let repo = sandbox.repo("held", &[("requirements.txt", "six==1.16.0\n")]);
    let (child, seen, lines) = start_until(submit(&sandbox, &["--json", &repo]), |e| {
        e["phase"] == "waiting" && e["job_reason"].is_string()
    });
    let waiting = seen.last().unwrap();
    let id = job_id(&seen);
    assert_eq!(waiting["job_reason"], "JobHeldUser", "{waiting}");
    assert_eq!(waiting["job_state"], "PENDING");
    assert_eq!(
        waiting["message"],
        format!("The Slurm job {id} is waiting in the queue (JobHeldUser)\n")
    );
    assert_eq!(slurm::job(&id).unwrap().0, "PENDING");
    let released = slurm::command("scontrol")
        .args(["release", &id])
        .status()
        .unwrap();
    assert!(released.success());
    let (status, seen, stderr) = finish(child, seen, lines);
    assert!(status.success(), "{stderr}");
    assert_eq!(seen.last().unwrap()["phase"], "ready");
    assert!(seen
        .iter()
        .any(|e| e["job_state"] == "RUNNING" && e["phase"] == "building"));
}

#[test]
fn a_build_failing_in_its_job_ends_as_the_same_build_fails_here() {
    let sandbox = sandbox("");
    let repo = sandbox.repo(
        "unsatisfiable",
        &[("requirements.txt", "no-such-package-hpcbinder==1.0\n")],
    );
    let here = sandbox.run(&["build", "--local", &repo]);
    let there = submit(&sandbox, &[&repo]).output().unwrap();
    assert_eq!(here.status.code(), Some(1), "{}", common::stderr(&here));
    assert_eq!(there.status.code(), here.status.code());
    // hpcbinder's own lines: the error and its hint. The log tail quoted between them is
    // the last 20 lines of uv's output, which can differ between two runs (a CI run once
    // had uv's own `error:` line in one and not the other).
    let error_lines = |output: &Output| -> Vec<String> {
        let stderr = common::stderr(output);
        let error = stderr.lines().find(|l| l.starts_with("error:"));
        let hints = stderr.lines().filter(|l| l.starts_with("hint:"));
        error.into_iter().chain(hints).map(str::to_string).collect()
    };
    assert!(!error_lines(&here).is_empty());
    assert_eq!(error_lines(&there), error_lines(&here));
    // With --json the job's own `failed` event is the last.
    let json = submit(&sandbox, &["--json", &repo]).output().unwrap();
    assert_eq!(json.status.code(), Some(1));
    let events = events(&json);
    let id = job_id(&events); // it failed in the job, not while planning
    assert_eq!(slurm::wait_ended(&id, 30), "FAILED");
    assert_eq!(events.last().unwrap()["phase"], "failed");
    assert_eq!(
        events.iter().filter(|e| e["phase"] == "failed").count(),
        1,
        "{events:?}"
    );
}

#[test]
fn a_targets_own_slurm_options_send_its_builds_to_their_partition() {
    let sandbox =
        sandbox("[slurm]\npartition = \"debug\"\n[slurm.target.venv]\npartition = \"images\"\n");
    let repo = sandbox.repo("imaged", &[("requirements.txt", "six==1.16.0\n")]);
    let output = submit(&sandbox, &["--json", &repo]).output().unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let id = job_id(&events(&output));
    let partition = slurm::command("squeue")
        .args(["--noheader", "--states=all", "--format=%P", "--jobs", &id])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&partition.stdout).trim(), "images");
}
