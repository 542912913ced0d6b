//! Sources against real git repositories built at test time and served as `file://` URLs:
//! ref resolution (branch, tag, short and full sha, default HEAD), missing refs, the
//! clone cache, submodules, BinderHub's `git/<escaped url>/<ref>` grammar, hostile input.

mod common;

use common::{stderr, stdout, GitRepo, Sandbox};

/// A repository with history: main has c1 (env + notebook) then c2 (notebook only);
/// `feature` changes the requirements; tag v1 marks c1.
struct History {
    repo: GitRepo,
    c1: String,
    c2: String,
    feature: String,
}

fn history(sandbox: &Sandbox) -> History {
    let repo = GitRepo::init(&sandbox.path().join("origin"));
    repo.write("requirements.txt", "numpy==1.26.4\n")
        .write("analysis.ipynb", "{\"cells\": []}\n");
    let c1 = repo.commit("first");
    repo.tag("v1", &c1);
    repo.write("analysis.ipynb", "{\"cells\": [1]}\n")
        .write("README.md", "# notes\n");
    let c2 = repo.commit("notebook only");
    repo.branch("feature", &c2);
    repo.checkout_branch("feature");
    repo.write("requirements.txt", "numpy==2.0.0\n");
    let feature = repo.commit("bump numpy");
    repo.checkout_branch("main");
    History {
        repo,
        c1,
        c2,
        feature,
    }
}

fn plan_commit(sandbox: &Sandbox, args: &[&str]) -> String {
    let mut all = vec!["build", "--dry-run", "--json"];
    all.extend_from_slice(args);
    let out = sandbox.ok(&all);
    let last = out.lines().last().expect("events");
    let event: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(event["phase"], "ready");
    event["source"]["commit"].as_str().unwrap().to_string()
}

#[test]
fn refs_resolve_to_full_commits() {
    let sandbox = Sandbox::new();
    let h = history(&sandbox);
    let url = h.repo.url();
    assert_eq!(
        plan_commit(&sandbox, &[&url]),
        h.c2,
        "default is the remote HEAD (main)"
    );
    assert_eq!(plan_commit(&sandbox, &[&url, "--ref", "main"]), h.c2);
    assert_eq!(plan_commit(&sandbox, &[&url, "--ref", "HEAD"]), h.c2);
    assert_eq!(
        plan_commit(&sandbox, &[&url, "--ref", "feature"]),
        h.feature
    );
    assert_eq!(plan_commit(&sandbox, &[&url, "--ref", "v1"]), h.c1);
    assert_eq!(
        plan_commit(&sandbox, &[&url, "--ref", &h.c1[..7]]),
        h.c1,
        "short sha"
    );
    assert_eq!(
        plan_commit(&sandbox, &[&url, "--ref", &h.c1]),
        h.c1,
        "full sha"
    );
}

#[test]
fn notebook_only_commit_keeps_the_key_and_env_change_does_not() {
    let sandbox = Sandbox::new();
    let h = history(&sandbox);
    let url = h.repo.url();
    let k1 = sandbox.key(&[&url, "--ref", &h.c1]);
    let k2 = sandbox.key(&[&url, "--ref", &h.c2]);
    let kf = sandbox.key(&[&url, "--ref", "feature"]);
    assert_eq!(k1.len(), 64);
    assert_eq!(
        k1, k2,
        "a commit changing only a notebook and README keeps the key"
    );
    assert_ne!(k1, kf, "a change to requirements.txt changes the key");
}

#[test]
fn missing_ref_is_a_clear_error() {
    let sandbox = Sandbox::new();
    let h = history(&sandbox);
    let output = sandbox.run(&["key", &h.repo.url(), "--ref", "no-such-branch"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("ref `no-such-branch` not found"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    // A short sha that matches nothing.
    let output = sandbox.run(&["key", &h.repo.url(), "--ref", "deadbeef"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}

#[test]
fn binderhub_git_spec_and_launch_url_map_onto_the_same_build() {
    let sandbox = Sandbox::new();
    let h = history(&sandbox);
    let escaped: String = h
        .repo
        .url()
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let spec = format!("git/{escaped}/v1");
    assert_eq!(plan_commit(&sandbox, &[&spec]), h.c1);
    let launch = format!("https://hub.example.org/v2/git/{escaped}/feature?urlpath=lab");
    assert_eq!(plan_commit(&sandbox, &[&launch]), h.feature);
    assert_eq!(
        sandbox.key(&[&spec]),
        sandbox.key(&[&h.repo.url(), "--ref", "v1"])
    );
}

#[test]
fn cached_clone_is_fetched_again_and_never_reused_for_another_origin() {
    let sandbox = Sandbox::new();
    let h = history(&sandbox);
    let url = h.repo.url();
    assert_eq!(plan_commit(&sandbox, &[&url]), h.c2);
    // New upstream commit: a second run must fetch and see it.
    h.repo.write("requirements.txt", "numpy==1.26.4\nscipy\n");
    let c3 = h.repo.commit("add scipy");
    assert_eq!(plan_commit(&sandbox, &[&url]), c3);

    // Point the cached clone at another origin behind our back: it must not be trusted.
    let cache = hpcbinder::store::user_cache_at(&sandbox.store()).join("git");
    let clone = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !p.to_string_lossy().ends_with("-trees"))
        .expect("a cached clone");
    let other = GitRepo::init(&sandbox.path().join("other"));
    other.write("environment.yml", "dependencies: [numpy]\n");
    other.commit("other");
    let cached = git2::Repository::open(&clone).unwrap();
    cached.remote_set_url("origin", &other.url()).unwrap();
    drop(cached);
    let detected = sandbox.ok(&["detect", &url, "--json"]);
    let value: serde_json::Value = serde_json::from_str(&detected).unwrap();
    assert_eq!(
        value["buildpack"], "python",
        "must re-clone the right origin, not read the other one"
    );
    assert_eq!(value["source"]["commit"], c3.as_str());
}

#[test]
fn submodules_are_checked_out() {
    let sandbox = Sandbox::new();
    let library = GitRepo::init(&sandbox.path().join("library"));
    library.write("requirements.txt", "six\n");
    library.commit("library");
    let parent = GitRepo::init(&sandbox.path().join("parent"));
    parent.write(
        "environment.yml",
        "dependencies:\n  - pip:\n    - -r vendor/lib/requirements.txt\n",
    );
    let mut submodule = parent
        .repo
        .submodule(&library.url(), std::path::Path::new("vendor/lib"), true)
        .unwrap();
    submodule.clone(None).unwrap();
    submodule.add_finalize().unwrap();
    parent.commit("with submodule");
    let out = sandbox.ok(&["detect", &parent.url(), "--json"]);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["buildpack"], "conda");
    assert_eq!(
        value["files"],
        serde_json::json!(["environment.yml", "vendor/lib/requirements.txt"])
    );
}

#[test]
fn local_work_tree_is_read_in_place_and_ref_checks_out_a_commit() {
    let sandbox = Sandbox::new();
    let h = history(&sandbox);
    let path = h.repo.path.to_str().unwrap().to_string();
    let out = sandbox.ok(&["detect", &path, "--json"]);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["source"]["kind"], "git");
    assert_eq!(value["source"]["commit"], h.c2.as_str());
    assert_eq!(value["source"]["dirty"], false);
    // Uncommitted edits are what the user sees: they count, and the identity says so.
    h.repo.write("requirements.txt", "pandas\n");
    let dirty_key = sandbox.key(&[&path]);
    assert_ne!(dirty_key, sandbox.key(&[&path, "--ref", "main"]));
    let out = sandbox.ok(&["detect", &path, "--json"]);
    assert!(out.contains("\"dirty\": true"), "{out}");
    assert_eq!(
        plan_commit(&sandbox, &[&path, "--ref", "feature"]),
        h.feature
    );
}

#[test]
fn hostile_input_is_refused_before_git_runs() {
    let sandbox = Sandbox::new();
    let h = history(&sandbox);
    let marker = sandbox.path().join("pwned");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "key".into(),
            "--ref=--upload-pack=touch".into(),
            h.repo.url(),
        ],
        vec![
            "key".into(),
            format!("ext::sh -c touch% {}", marker.display()),
        ],
        vec![
            "key".into(),
            format!(
                "git/ext%3A%3Ash%20-c%20touch%25%20{}/main",
                marker.display()
            ),
        ],
        vec!["key".into(), "--".into(), "-oProxyCommand=touch".into()],
        vec![
            "key".into(),
            h.repo.url(),
            "--ref".into(),
            "main..feature".into(),
        ],
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = sandbox.run(&args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stdout(&output).is_empty());
    }
    assert!(!marker.exists(), "a command ran");
}

#[test]
fn credentials_in_urls_are_redacted_in_errors() {
    let sandbox = Sandbox::new();
    let output = sandbox.run(&["key", "https://alice:s3cret-token@127.0.0.1:9/org/repo.git"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a network failure is the environment's fault"
    );
    let err = stderr(&output);
    assert!(!err.contains("s3cret-token"), "{err}");
    assert!(
        err.contains("https://****@127.0.0.1:9/org/repo.git"),
        "{err}"
    );
}

/// Record specs that cannot name a record are refused before any request (the
/// providers themselves are tested against loopback servers in tests/records.rs).
#[test]
fn malformed_record_specs_are_rejected_clearly_before_any_request() {
    let sandbox = Sandbox::new();
    for (spec, expected) in [
        ("hydroshare/123", "expected hydroshare/<resource id>"),
        (
            "ckan/https%3A%2F%2Fdemo.ckan.org%2Fgroups%2Fx",
            "expected ckan/<url-escaped dataset URL>",
        ),
        ("dataverse/DVN/TJCLKP", "expected a DOI"),
        (
            "swh:1:cnt:94a9ed024d3859793618152ea559a168bbcbb5e2",
            "only directory and revision SWHIDs",
        ),
        ("swh:1:dir:94a9ed", "expected a SWHID"),
    ] {
        let output = sandbox.run(&["detect", spec]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{spec}: {err}");
        assert!(err.contains(expected), "{spec}: {err}");
    }
}

/// Submodules follow the rules of the repository itself (issue 10, finding 6): a
/// transport git would run a command for is refused, and with `source-hosts` set, a host
/// outside it is refused for the repository and for each submodule, before git fetches.
#[test]
fn submodules_follow_the_sites_source_rules() {
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("pwned");
    let parent = GitRepo::init(&sandbox.path().join("parent"));
    parent.write("requirements.txt", "six\n");
    parent.write(
        ".gitmodules",
        &format!(
            "[submodule \"x\"]\n\tpath = vendor/x\n\turl = ext::sh -c touch% {}\n",
            marker.display()
        ),
    );
    parent.commit("ext submodule");
    let output = sandbox.run(&["detect", &parent.url()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("not a git transport hpcbinder allows"),
        "{}",
        stderr(&output)
    );
    assert!(!marker.exists());

    std::fs::write(
        sandbox.path().join("site.toml"),
        "source-hosts = [\"github.com\"]\n",
    )
    .unwrap();
    parent.write(
        ".gitmodules",
        "[submodule \"x\"]\n\tpath = vendor/x\n\turl = https://evil.example/x.git\n",
    );
    parent.commit("foreign submodule");
    let output = sandbox.run(&["detect", &parent.url()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(
            "https://evil.example/x.git is on evil.example, which is not one of the site's source-hosts (github.com)"
        ),
        "{}",
        stderr(&output)
    );
    let output = sandbox.run(&["key", "https://evil.example/repo.git"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("not one of the site's source-hosts"),
        "{}",
        stderr(&output)
    );
}

/// A build holds its repository's clone only while it checks its commit out (issue 11,
/// finding 5): while one ref's slow postBuild runs, another ref of the same repository
/// builds without waiting for it.
#[test]
fn a_slow_build_does_not_hold_the_clone_for_other_refs() {
    use std::time::{Duration, Instant};
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = GitRepo::init(&sandbox.path().join("shared-repo"));
    repo.write("requirements.txt", "six==1.16.0\n");
    repo.write("postBuild", "#!/bin/sh\nsleep 12\n");
    let slow = repo.commit("slow");
    repo.branch("slow", &slow);
    std::fs::remove_file(repo.path.join("postBuild")).unwrap();
    repo.write("requirements.txt", "six==1.16.0\n# fast\n");
    let fast = repo.commit("fast");
    repo.branch("fast", &fast);
    let url = repo.url();
    let started = Instant::now();
    let slow_build = sandbox
        .command()
        .args(["build", "--no-kernel", &url, "--ref", "slow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let the slow build get past its checkout, into postBuild.
    let store_e = sandbox.store().join("e");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&store_e).map_or(true, |mut d| d.next().is_none()) {
        assert!(Instant::now() < deadline, "the slow build never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = sandbox.run(&["build", "--json", "--no-kernel", &url, "--ref", "fast"]);
    let fast_done = started.elapsed();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !stdout(&output).contains("Waiting for another hpcbinder using the clone"),
        "{}",
        stdout(&output)
    );
    let slow_output = slow_build.wait_with_output().unwrap();
    let slow_done = started.elapsed();
    assert!(slow_output.status.success(), "{}", stderr(&slow_output));
    assert!(
        fast_done + Duration::from_secs(3) < slow_done,
        "the fast ref finished well before the slow one ({fast_done:?} vs {slow_done:?})"
    );
}

/// A valid but long ref (issue 11, finding 7): the names derived from it (kernel, image)
/// always fit, and the build registers its kernel.
#[test]
fn a_long_ref_builds_and_registers_a_kernel_whose_name_fits() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = GitRepo::init(&sandbox.path().join("long-ref-repo"));
    repo.write("requirements.txt", "six==1.16.0\n");
    let commit = repo.commit("one");
    let long = format!("feature/{}/{}", "x".repeat(200), "y".repeat(200));
    repo.branch(&long, &commit);
    let output = sandbox.run(&[
        "build",
        "--json",
        "--no-verify",
        &repo.url(),
        "--ref",
        &long,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ready: serde_json::Value =
        serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap();
    let kernel = ready["kernel"].as_str().unwrap();
    assert!(kernel.len() <= 100, "{kernel}");
    assert!(std::path::Path::new(ready["kernel_dir"].as_str().unwrap())
        .join("kernel.json")
        .is_file());
}
