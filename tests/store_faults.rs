//! The store under concurrency and faults: many processes building one key, builds
//! killed at several points, a read-only store, a filesystem that fills up.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, Sandbox, Tmpfs};

fn spawn_build(sandbox: &Sandbox, repo: &str, extra: &[&str]) -> Child {
    sandbox
        .command()
        .args(["build", "--json", "--no-verify", repo])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn last_event(output: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap()
}

#[test]
fn eight_processes_one_key_exactly_one_build() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("shared", &[("requirements.txt", "six==1.16.0\n")]);
    let children: Vec<Child> = (0..8)
        .map(|i| spawn_build(&sandbox, &repo, &["--kernel-name", &format!("k{i}")]))
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut built = 0;
    let mut prefixes = std::collections::BTreeSet::new();
    for output in &outputs {
        assert!(output.status.success(), "{}", stderr(output));
        let ready = last_event(output);
        assert_eq!(ready["phase"], "ready");
        if ready["reused"] == false {
            built += 1;
        }
        prefixes.insert(ready["prefix"].as_str().unwrap().to_string());
    }
    assert_eq!(built, 1, "exactly one process built the environment");
    assert_eq!(prefixes.len(), 1, "all eight share one prefix");
    let waited = outputs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("\"phase\":\"waiting\""))
        .count();
    assert!(waited >= 1, "the others waited on the lock and said so");
}

#[test]
fn different_keys_build_in_parallel() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let a = sandbox.repo(
        "a",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("postBuild", "#!/bin/sh\nsleep 2\n"),
        ],
    );
    let b = sandbox.repo(
        "b",
        &[
            ("requirements.txt", "six==1.16.0\n# b\n"),
            ("postBuild", "#!/bin/sh\nsleep 2\n"),
        ],
    );
    let children = [
        spawn_build(&sandbox, &a, &["--no-kernel"]),
        spawn_build(&sandbox, &b, &["--no-kernel"]),
    ];
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("\"phase\":\"waiting\""),
            "different keys never wait for each other"
        );
    }
    assert_ne!(sandbox.key(&[&a]), sandbox.key(&[&b]));
}

#[test]
fn killed_builds_leave_nothing_ready_and_the_next_build_recovers() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let flag = sandbox.path().join("post-build-started");
    let repo = sandbox.repo(
        "slow",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("postBuild", "#!/bin/sh\nif [ -n \"$SLOW_POST_BUILD\" ]; then touch \"$SLOW_POST_BUILD\"; sleep 60; fi\n"),
        ],
    );
    let key = sandbox.key(&[&repo]);
    let marker = sandbox.store().join(format!("e/{}.toml", &key[..16]));
    // Kill early (venv creation, resolution) and during postBuild.
    for delay in [
        Some(Duration::from_millis(50)),
        Some(Duration::from_millis(400)),
        None,
    ] {
        let _ = std::fs::remove_file(&flag);
        let mut child = sandbox
            .command()
            .args(["build", "--no-kernel", &repo])
            .env("SLOW_POST_BUILD", &flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        match delay {
            Some(delay) => std::thread::sleep(delay),
            None => {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !flag.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(flag.exists(), "postBuild never started");
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructors, no cleanup
        child.wait().unwrap();
        assert!(
            !marker.exists(),
            "a killed build must not look ready (delay {delay:?})"
        );
    }
    // The killed postBuild's sleep may still hold files; the next builder clears the prefix.
    let out = sandbox.ok(&["build", "--json", "--no-verify", &repo]);
    assert!(out.contains("Removed an unfinished build"), "{out}");
    let ready: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(ready["reused"], false);
    assert!(marker.is_file());
}

#[test]
fn read_only_store_is_a_clear_error() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("ro", &[("requirements.txt", "six==1.16.0\n")]);
    let mount = Tmpfs::mount(&sandbox.path().join("ro-store"), "size=16m");
    mount.remount_read_only();
    let output = sandbox.run(&["build", &repo, "--store", mount.path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("is not writable") && err.contains("hint: pass --store"),
        "{err}"
    );
}

#[test]
fn a_full_filesystem_fails_cleanly() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("big", &[("requirements.txt", "six==1.16.0\n")]);
    // ipykernel and its dependencies need far more than 6 MiB.
    let mount = Tmpfs::mount(&sandbox.path().join("small-store"), "size=6m");
    let store = mount.path.to_str().unwrap();
    let output = sandbox.run(&["build", &repo, "--store", store]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("no space left") || err.contains("No space left"),
        "{err}"
    );
    let markers: Vec<_> = std::fs::read_dir(mount.path.join("e"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(markers.is_empty(), "nothing left in e/: {markers:?}");
}

#[test]
fn group_shared_store_keeps_setgid_and_the_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let store = sandbox.path().join("group-store");
    std::fs::create_dir_all(&store).unwrap();
    // gid 100 (`users` on Debian) stands in for a collaboration's group.
    std::os::unix::fs::chown(&store, None, Some(100)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let repo = sandbox.repo("group", &[("requirements.txt", "six==1.16.0\n")]);
    let output = sandbox.run(&[
        "build",
        "--no-verify",
        &repo,
        "--store",
        store.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    for entry in walkdir::WalkDir::new(store.join("e"))
        .into_iter()
        .map(Result::unwrap)
    {
        if entry.file_type().is_symlink() {
            continue;
        }
        let metadata = entry.metadata().unwrap();
        assert_eq!(
            metadata.gid(),
            100,
            "{} lost the store's group",
            entry.path().display()
        );
        if entry.file_type().is_dir() {
            assert_ne!(
                metadata.mode() & 0o2000,
                0,
                "{} lost setgid",
                entry.path().display()
            );
        } else {
            assert_eq!(
                metadata.mode() & 0o6000,
                0,
                "{} has setuid/setgid",
                entry.path().display()
            );
        }
        assert_eq!(
            metadata.mode() & 0o002,
            0,
            "{} is world-writable",
            entry.path().display()
        );
    }
}

/// The processes a build starts die with it (parent-death signal): after SIGKILL of the
/// builder, its postBuild (here a long `sleep` it execs into) is gone within seconds
/// instead of running on against a prefix the next builder clears.
#[test]
fn a_killed_build_leaves_no_child_running() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let flag = sandbox.path().join("post-build-started");
    let repo = sandbox.repo(
        "killed",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            (
                "postBuild",
                "#!/bin/sh\ntouch \"$STARTED\"\nexec sleep 31.4159\n",
            ),
        ],
    );
    let running = || -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains("31.4159"))
            .count()
    };
    let mut child = sandbox
        .command()
        .args(["build", "--no-kernel", &repo])
        .env("STARTED", &flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !flag.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(flag.exists(), "postBuild never started");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(running(), 1, "postBuild runs while its builder does");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while running() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(running(), 0, "postBuild outlived its killed builder");
}
