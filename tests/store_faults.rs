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
    // postBuild runs sandboxed (no environment of ours, no /tmp): a file in the
    // repository makes it slow, and it says it started in the prefix it builds.
    let repo = sandbox.repo(
        "slow",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("slow", ""),
            ("postBuild", "#!/bin/sh\nif [ -f slow ]; then touch \"$VIRTUAL_ENV/post-build-started\"; sleep 60; fi\n"),
        ],
    );
    let key = sandbox.key(&[&repo]);
    let marker = sandbox.store().join(format!("e/{}.toml", &key[..16]));
    let flag = sandbox
        .store()
        .join(format!("e/{}/post-build-started", &key[..16]));
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
    std::fs::remove_file(std::path::Path::new(&repo).join("slow")).unwrap();
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
    let repo = sandbox.repo(
        "killed",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            (
                "postBuild",
                "#!/bin/sh\ntouch \"$VIRTUAL_ENV/post-build-started\"\nexec sleep 31.4159\n",
            ),
        ],
    );
    let key = sandbox.key(&[&repo]);
    let flag = sandbox
        .store()
        .join(format!("e/{}/post-build-started", &key[..16]));
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

/// Twelve registrations of one kernel at once (issue 11, findings 1 and 6): all succeed,
/// a reader listing the kernels directory as Jupyter does never sees a kernel without a
/// complete kernel.json, and no temporary directory is left that Jupyter would list.
#[test]
fn twelve_registrations_of_one_kernel_all_succeed_and_nothing_half_written_is_visible() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("popular", &[("requirements.txt", "six==1.16.0\n")]);
    let first = spawn_build(&sandbox, &repo, &[])
        .wait_with_output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let kernels = sandbox.path().join("jupyter/kernels");
    // Jupyter's rule: a directory whose lowercased name is `[a-z0-9._-]+` is a kernel.
    let listed = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .to_lowercase()
                            .chars()
                            .all(|c| {
                                c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)
                            })
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (done, kernels) = (done.clone(), kernels.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for kernel in listed(&kernels) {
                    // The name is swapped in one step, so kernel.json is always there;
                    // a read whose path lookup straddled a swap may land in the old copy
                    // as it is removed, and is read again (as Jupyter would on its next
                    // listing).
                    let read = || std::fs::read_to_string(kernel.join("kernel.json"));
                    if let Ok(text) = read().or_else(|_| read()) {
                        let parsed: serde_json::Value = serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("{}: {e}", kernel.display()));
                        assert!(parsed["argv"].is_array());
                        seen += 1;
                    } else {
                        assert!(
                            !kernel.exists(),
                            "{} is listed without its kernel.json",
                            kernel.display()
                        );
                    }
                }
            }
            seen
        })
    };
    let children: Vec<Child> = (0..12).map(|_| spawn_build(&sandbox, &repo, &[])).collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0, "the reader saw the kernel");
    let kernels_listed = listed(&kernels);
    assert_eq!(kernels_listed.len(), 1, "{kernels_listed:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&kernels)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir() && e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Removing a build's lock file (a cleanup job, a member with rights to) does not let a
/// second builder in (issue 11, finding 4): the second sees the live builder and stops
/// without touching its prefix; the first still publishes; the result is complete.
#[test]
fn a_removed_lock_file_does_not_let_a_second_builder_in() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "slow",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            (
                "postBuild",
                "#!/bin/sh\nsleep 4\necho done > \"$VIRTUAL_ENV/post-build-done\"\n",
            ),
        ],
    );
    let key16 = sandbox.key(&[&repo])[..16].to_string();
    let lock = sandbox.store().join(format!("locks/{key16}.lock"));
    let builder = sandbox.store().join(format!("e/{key16}/hpcbinder/builder"));
    let first = spawn_build(&sandbox, &repo, &["--no-kernel"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(lock.exists() && builder.exists()) {
        assert!(Instant::now() < deadline, "the first build never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(&lock).unwrap();
    let second = spawn_build(&sandbox, &repo, &["--no-kernel"])
        .wait_with_output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("is still building it, though its lock file was removed"),
        "{}",
        stderr(&second)
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let prefix = last_event(&first)["prefix"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&prefix)
        .join("post-build-done")
        .is_file());
    let again = spawn_build(&sandbox, &repo, &["--no-kernel"])
        .wait_with_output()
        .unwrap();
    assert_eq!(last_event(&again)["reused"], true, "{}", stderr(&again));
}

/// An environment whose verification never finished (killed mid-cell, or built with
/// `--no-verify`) is verified by the next build that reuses it, once (issue 11).
#[test]
fn an_unverified_environment_is_verified_on_its_next_reuse_once() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("unverified", &[("requirements.txt", "six==1.16.0\n")]);
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--json", repo.as_str()];
        args.extend_from_slice(extra);
        let output = sandbox.run(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        last_event(&output)
    };
    let first = build(&["--no-verify"]);
    assert_eq!(first["verified"], serde_json::Value::Null);
    let second = build(&[]);
    assert_eq!(second["reused"], true);
    assert!(
        second["verified"].is_string(),
        "verified on reuse: {second}"
    );
    let third = build(&[]);
    assert_eq!(third["reused"], true);
    assert_eq!(
        third["verified"],
        serde_json::Value::Null,
        "only once: {third}"
    );
}
