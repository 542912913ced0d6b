//! The launch service with a real Slurm (munge, slurmctld and slurmd on this machine,
//! `scripts/slurm start`), a real JupyterHub and proxy (tests/common/hub.rs) and a real
//! browser: server mode when the Hub's spawner is batchspawner's SlurmSpawner (the
//! user's named server is a Slurm job inside the environment), and `builder = "slurm"`
//! (the service's builds are Slurm jobs).

mod common;

use std::path::Path;
use std::time::Duration;

use common::hub::{Hub, HubOptions};
use common::launch::{
    open_notebook_launch_link, run_first_cell, service_environment, wait_for_named_server_lab,
    write_package_and_notebook,
};
use common::sse::{client, events, repo, spec_of};
use common::users::{processes_of, users, ALICE};
use common::{slurm, GitRepo, Sandbox};
use serde_json::Value;

/// The service's environment, with the cluster's config for its `sbatch` and `squeue`.
fn slurm_service_environment(sandbox: &Sandbox) -> Vec<(String, String)> {
    let mut environment = service_environment(sandbox);
    environment.push(("SLURM_CONF".into(), slurm::conf().display().to_string()));
    environment
}

/// The Slurm jobs named `name` of `user`, cancelled when dropped (a failed test leaves
/// no server job running).
struct JobsNamed {
    user: &'static str,
    name: String,
}

impl JobsNamed {
    /// `squeue` of these jobs: `(id, state, user)` each.
    fn list(&self) -> Vec<(String, String, String)> {
        let output = slurm::command("squeue")
            .args(["--noheader", "--format=%i|%T|%u", "--user", self.user])
            .args(["--name", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let mut parts = line.trim().split('|').map(str::to_string);
                Some((parts.next()?, parts.next()?, parts.next()?))
            })
            .collect()
    }
}

impl Drop for JobsNamed {
    fn drop(&mut self) {
        let _ = slurm::command("scancel")
            .args(["--user", self.user, "--name", &self.name])
            .output();
    }
}

/// A repository whose requirements include a package only it has, and a notebook (on the
/// default `python3` kernel) printing that package's value, the kernel's prefix and the
/// Slurm job the kernel runs in; as a `git/...` spec.
fn job_repo(sandbox: &Sandbox) -> String {
    let path = sandbox.path().join("repos/in-a-job");
    let git = GitRepo::init(&path);
    git.write("requirements.txt", "six==1.16.0\n./localpkg\n");
    write_package_and_notebook(
        &git,
        &[
            "import localpkg, os, sys\n",
            "print(localpkg.VALUE, 'job', os.environ.get('SLURM_JOB_ID'), 'prefix', sys.prefix)",
        ],
    );
    git.commit("content");
    spec_of(&path)
}

/// A name unique to this sandbox, for the user's folder and the server's job.
fn tag(sandbox: &Sandbox) -> String {
    sandbox
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
}

/// The word after `label` in `text`.
fn word_after<'a>(text: &'a str, label: &str) -> &'a str {
    text.split_whitespace()
        .skip_while(|word| *word != label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label} in {text}"))
}

/// A Hub whose spawner is SlurmSpawner, set up as contrib/jupyterhub_config.py's header
/// says (it submits with `sudo -E -u <user> sbatch`; the Hub's own squeue and scancel
/// need the cluster's config, which a site has in /etc/slurm), with the contrib hook,
/// and the service in server mode building with `server_packages`. Returns the Hub, the
/// folder of the user's checkouts and the user's server jobs (by their unique name).
fn start_with_slurmspawner(sandbox: &Sandbox, server_packages: &str) -> (Hub, String, JobsNamed) {
    use std::os::unix::fs::PermissionsExt;
    let conf = slurm::conf();
    users();
    // The user's job reaches the store and the repositories through the sandbox.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    common::launch::trust_repositories(ALICE);
    let tag = tag(sandbox);
    let folder = format!("slurm-{tag}");
    let jobs = JobsNamed {
        user: ALICE,
        name: format!("hpcb-lab-{tag}"),
    };
    // The environment's Python is Debian's (the user can run it); the server's packages
    // come from scripts/hub-deps' wheels.
    let deps = common::test_deps();
    let hub_deps = common::hub::hub_deps();
    std::fs::write(
        sandbox.path().join("site.toml"),
        format!(
            "python = \"/usr/bin/python3\"\nuv = \"{}\"\npip-find-links = [\"{}\", \"{}\"]\n\
             pip-no-index = true\nkernel-package = \"pip\"\nlocal-sources = true\n\
             server-packages = {server_packages}\n\
             [serve]\nlaunch = \"server\"\nnamed-server-limit = 1\nshutdown-grace = 5\n",
            deps.uv.display(),
            deps.wheelhouse.display(),
            hub_deps.join("wheels").display(),
        ),
    )
    .unwrap();
    let hub = Hub::start(HubOptions {
        service_environment: slurm_service_environment(sandbox),
        allowed_users: vec![ALICE.into()],
        other_users: Vec::new(),
        extra_config: format!(
            "import os\nos.environ[\"SLURM_CONF\"] = \"{conf}\"\n\
             c.JupyterHub.spawner_class = \"batchspawner.SlurmSpawner\"\n\
             c.JupyterHub.allow_named_servers = True\n\
             c.Spawner.environment = {{\"PATH\": \"/usr/bin:/bin\", \"SLURM_CONF\": \"{conf}\"}}\n\
             c.Spawner.start_timeout = 300\nc.Spawner.http_timeout = 300\n\
             c.SlurmSpawner.req_options = \"--job-name={job_name}\"\n\
             exec(open(\"{contrib}\").read())\nHPCBINDER_STORE = \"{store}\"\n\
             HPCBINDER_KERNELS = \"{store}/kernels\"\nHPCBINDER_FOLDER = \"{folder}\"\n",
            conf = conf.display(),
            job_name = jobs.name,
            contrib = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("contrib/jupyterhub_config.py")
                .display(),
            store = sandbox.store().display(),
        ),
    });
    (hub, folder, jobs)
}

#[test]
fn server_mode_with_slurmspawner_runs_the_lab_as_a_slurm_job_inside_the_environment_real_slurm_hub_and_browser(
) {
    let sandbox = Sandbox::new();
    let (hub, folder, jobs) = start_with_slurmspawner(
        &sandbox,
        "[\"jupyterhub==5.*\", \"jupyterlab\", \"batchspawner\"]",
    );
    let spec = job_repo(&sandbox);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let browser = open_notebook_launch_link(&hub, &spec, ALICE);
    let lab = wait_for_named_server_lab(&browser, ALICE, 420);
    let prefix = format!("/user/{ALICE}/");
    // The server is alice's Slurm job, running.
    let listed = jobs.list();
    assert_eq!(listed.len(), 1, "{listed:?}\n{}", hub.log());
    let (job, state, user) = &listed[0];
    assert_eq!((state.as_str(), user.as_str()), ("RUNNING", ALICE));
    // The notebook's `python3` kernel is the environment's Python, inside that job.
    browser.wait_for("the python3 kernel, idle", 120, |b| {
        b.find(".jp-Notebook-ExecutionIndicator[data-status='idle']")
            .is_some()
    });
    run_first_cell(&browser, "only-in-the-repository");
    let output = browser.text(".jp-OutputArea-output");
    browser.screenshot(&shots.join("server-mode-slurm-lab.png"));
    assert_eq!(word_after(&output, "job"), job, "{output}");
    let environment = word_after(&output, "prefix");
    assert!(
        environment.starts_with(&format!("{}/e/", sandbox.store().display())),
        "{output}"
    );
    // The server itself: the environment's jupyterhub-singleuser (started by its
    // batchspawner-singleuser), alice's, in the job, in the checkout of the commit.
    let servers = processes_of(ALICE, &format!("{environment}/bin/batchspawner-singleuser"));
    assert_eq!(servers.len(), 1, "{servers:?}");
    let pid = servers[0].split_whitespace().next().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let in_job = format!("SLURM_JOB_ID={job}");
    assert!(
        environ.split(|b| *b == 0).any(|v| v == in_job.as_bytes()),
        "{servers:?}"
    );
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    let server = lab
        .split(&prefix)
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    assert_eq!(
        cwd,
        Path::new(&format!("/home/{ALICE}/{folder}/{server}")),
        "{servers:?}"
    );
    // Stopping the server through the Hub cancels its job.
    let token = hub.user_token(ALICE);
    let stopped = client()
        .delete(hub.url(&format!("/hub/api/users/{ALICE}/servers/{server}")))
        .header("Authorization", format!("token {token}"))
        .send()
        .unwrap();
    assert!(stopped.status().is_success(), "{}", hub.log());
    let state = slurm::wait_ended(job, 60);
    assert!(
        ["CANCELLED", "COMPLETED"].contains(&state.as_str()),
        "{state}"
    );
    let _ = std::fs::remove_dir_all(format!("/home/{ALICE}/{folder}"));
    // SlurmSpawner's default job output.
    let _ = std::fs::remove_file(format!("/home/{ALICE}/jupyterhub_slurmspawner_{job}.log"));
}

#[test]
fn builder_slurm_the_launch_services_build_streams_to_ready_through_a_slurm_job_real_slurm_and_hub()
{
    let sandbox = Sandbox::new();
    sandbox.native_site_config(
        "local-sources = true\nbuilder = \"slurm\"\n[slurm]\npartition = \"debug\"\ntime = \"00:20:00\"\n\
         [serve]\nshutdown-grace = 5\n",
    );
    let hub = Hub::start(HubOptions {
        service_environment: slurm_service_environment(&sandbox),
        allowed_users: vec!["alice".into()],
        other_users: Vec::new(),
        extra_config: String::new(),
    });
    let token = hub.user_token("alice");
    let spec = repo(&sandbox, "in-a-job", "six==1.16.0\n", None);
    let response = client()
        .get(hub.url(&format!("/services/binder/build/{spec}?build_only=true")))
        .header("Accept", "text/event-stream")
        .header("Authorization", format!("token {token}"))
        .timeout(Duration::from_secs(600))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().unwrap();
    let all = events(&body);
    let ready = all.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{body}\n{}", hub.log());
    assert!(
        Path::new(ready["prefix"].as_str().unwrap()).is_dir(),
        "{ready}"
    );
    // The build was a Slurm job: the stream says which, and Slurm says it completed.
    let submitted: &Value = all
        .iter()
        .find(|e| e["job_id"].is_string())
        .unwrap_or_else(|| panic!("no event names the Slurm job: {body}"));
    assert_eq!(submitted["phase"], "waiting", "{submitted}");
    let job = submitted["job_id"].as_str().unwrap();
    assert!(
        submitted["message"].as_str().unwrap().contains(job),
        "{submitted}"
    );
    assert_eq!(slurm::wait_ended(job, 60), "COMPLETED", "{body}");
    let (_, name) = slurm::job(job).unwrap();
    assert!(name.starts_with("hpcbinder-"), "{name}");
    // With the [slurm] table's options.
    let limit = slurm::command("squeue")
        .args([
            "--noheader",
            "--states=all",
            "--format=%P|%l",
            "--jobs",
            job,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&limit.stdout).trim(), "debug|20:00");
}

#[test]
fn server_mode_with_slurmspawner_refuses_an_environment_without_batchspawner_real_slurm_and_hub() {
    let sandbox = Sandbox::new();
    let (hub, _, jobs) = start_with_slurmspawner(&sandbox, "[\"jupyterhub==5.*\", \"jupyterlab\"]");
    let spec = job_repo(&sandbox);
    let token = hub.user_token(ALICE);
    let body = client()
        .get(hub.url(&format!("/services/binder/build/{spec}")))
        .header("Accept", "text/event-stream")
        .header("Authorization", format!("token {token}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let last = events(&body).last().cloned().unwrap();
    assert_eq!(last["phase"], "failed", "{body}\n{}", hub.log());
    // The hook says what is missing, and nothing is submitted.
    let message = last["message"].as_str().unwrap();
    assert!(
        message.contains("(400)")
            && message.contains(
                "has no batchspawner-singleuser (add batchspawner to hpcbinder's server-packages)"
            ),
        "{body}\n{}",
        hub.log()
    );
    assert_eq!(jobs.list(), Vec::new());
}
