//! A store shared by a group, attacked by one of its members: real users made with
//! `useradd`, real builds run as them with `runuser`, real kernels. Needs root (CI and
//! the README's test command run as root); elsewhere these tests say so and fail.
//!
//! One test runs the scenarios in order, as they share two users and a store.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::users::{as_user, uid, users, Shared, ALICE, MALLORY};
use common::{stderr, stdout};

fn clean_kernels(shared: &Shared) {
    for user in [ALICE, MALLORY] {
        let _ = std::fs::remove_dir_all(format!("/home/{user}/jupyter-{}", shared.tag()));
    }
}

#[test]
fn a_group_member_cannot_take_over_another_users_environment() {
    users();
    let shared = Shared::new(0o2775);
    let repo = shared.path().join("repo").display().to_string();

    // Alice builds under umask 002, which would leave everything group-writable.
    let (output, ready) = shared.build(ALICE, "002", &[&repo, "--kernel-name", "alice-env"]);
    let ready = ready.unwrap_or_else(|| panic!("alice's build: {}", stderr(&output)));
    let prefix = PathBuf::from(ready["prefix"].as_str().unwrap());
    let marker = PathBuf::from(format!("{}.toml", prefix.display()));
    // Nothing of hers is writable by the group or others, at any depth.
    for entry in walkdir::WalkDir::new(&prefix)
        .into_iter()
        .chain(walkdir::WalkDir::new(&marker))
    {
        let entry = entry.unwrap();
        if entry.file_type().is_symlink() {
            continue;
        }
        let mode = entry.metadata().unwrap().mode();
        assert_eq!(mode & 0o022, 0, "{} is {mode:o}", entry.path().display());
    }
    // `e/` is sticky: members cannot rename each other's entries.
    let e_mode = std::fs::metadata(shared.store().join("e")).unwrap().mode();
    assert_eq!(e_mode & 0o1000, 0o1000, "e/ is {e_mode:o}");

    // Mallory tries every route from the audit; each fails.
    let site_packages = format!("{}/lib/python3.11/site-packages", prefix.display());
    let attacks = [
        format!(
            "echo 'touch /tmp/pwned' >> {}/hpcbinder/start",
            prefix.display()
        ),
        format!(
            "mkdir -p {0}/etc/conda/activate.d && echo x > {0}/etc/conda/activate.d/x.sh",
            prefix.display()
        ),
        format!("echo 'import os' > {site_packages}/evil.pth"),
        format!("echo 'import os' >> {site_packages}/six.py"),
        format!("echo 'prefix = \"/tmp\"' >> {}", marker.display()),
        format!("mv {0} {0}.old", prefix.display()),
        format!("mv {0} {0}.old", marker.display()),
        format!("rm -rf {}", prefix.display()),
    ];
    for attack in &attacks {
        let output = as_user(MALLORY, attack);
        assert!(
            !output.status.success(),
            "mallory succeeded: {attack}\n{}",
            stderr(&output)
        );
    }
    // Alice's next build still reuses her environment, and its kernel runs.
    let (output, again) = shared.build(ALICE, "002", &[&repo, "--kernel-name", "alice-env"]);
    let again = again.unwrap_or_else(|| panic!("alice again: {}", stderr(&output)));
    assert_eq!(again["reused"], true);
    assert_eq!(again["prefix"], ready["prefix"]);

    // Mallory builds another repository first, under umask 077, with the same key as
    // the one Alice builds next, and plants a `start` in her own environment.
    let other = shared.repo("other", "six\n# other\n");
    let (output, planted) = shared.build(MALLORY, "077", &[&other, "--kernel-name", "mallory-env"]);
    let planted = planted.unwrap_or_else(|| panic!("mallory's build: {}", stderr(&output)));
    let planted_prefix = planted["prefix"].as_str().unwrap().to_string();
    let pwned = shared.path().join("pwned");
    let plant = format!(
        "chmod u+w {0}/hpcbinder && printf '#!/bin/sh\\ntouch {1}\\nexec \"$@\"\\n' > {0}/hpcbinder/start && chmod 755 {0}/hpcbinder/start",
        planted_prefix,
        pwned.display()
    );
    let output = as_user(MALLORY, &plant);
    assert!(output.status.success(), "{}", stderr(&output));
    // A group store works under umask 077: Alice (group) can read Mallory's marker.
    let output = as_user(ALICE, &format!("cat {planted_prefix}.toml"));
    assert!(output.status.success(), "{}", stderr(&output));
    // Alice builds the same environment: Mallory's is not hers to trust, so she gets
    // her own copy, says why, and Mallory's start never runs.
    let (output, own) = shared.build(ALICE, "077", &[&other, "--kernel-name", "alice-other"]);
    let own = own.unwrap_or_else(|| panic!("alice's own copy: {}", stderr(&output)));
    let own_prefix = own["prefix"].as_str().unwrap();
    assert_eq!(own_prefix, format!("{planted_prefix}-u{}", uid(ALICE)));
    assert!(
        stdout(&output).contains("whom this store does not trust"),
        "{}",
        stdout(&output)
    );
    assert!(!pwned.exists(), "mallory's start ran as alice");

    // With Mallory as a configured maintainer, Alice would reuse Mallory's environment:
    // trust is Alice's to give.
    std::fs::write(
        format!("/home/{ALICE}/hpcbinder.toml"),
        format!("store-maintainers = [\"{MALLORY}\"]\n"),
    )
    .unwrap();
    let output = shared.hpcbinder(ALICE, "077", &["build", &other, "--dry-run", "--json"]);
    std::fs::remove_file(format!("/home/{ALICE}/hpcbinder.toml")).unwrap();
    assert!(
        stdout(&output).contains(&format!("\"prefix\":\"{planted_prefix}\"")),
        "{}",
        stdout(&output)
    );

    // A copy in Alice's name made by Mallory is a trap: refused with a clear error.
    let third = shared.repo("third", "six\n# third\n");
    let (_, third_ready) = shared.build(MALLORY, "022", &[&third, "--no-kernel"]);
    let third_prefix = third_ready.unwrap()["prefix"].as_str().unwrap().to_string();
    let trap = format!("{third_prefix}-u{}", uid(ALICE));
    assert!(as_user(MALLORY, &format!("mkdir {trap}")).status.success());
    let (output, none) = shared.build(ALICE, "022", &[&third, "--no-kernel"]);
    assert!(none.is_none());
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("should be this user's own copy but belongs to hpcb-mallory"),
        "{}",
        stderr(&output)
    );

    // So is a per-user cache directory Mallory made for Alice in a fresh store.
    let fresh = Shared::new(0o2775);
    let fresh_repo = fresh.path().join("repo").display().to_string();
    let (output, made) = fresh.build(MALLORY, "022", &[&fresh_repo, "--no-kernel"]);
    assert!(made.is_some(), "{}", stderr(&output));
    let output = as_user(
        MALLORY,
        &format!("mkdir {}/cache/u{}", fresh.store().display(), uid(ALICE)),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let (output, none) = fresh.build(ALICE, "022", &[&fresh_repo, "--no-kernel"]);
    assert!(none.is_none());
    assert!(
        stderr(&output).contains("belongs to hpcb-mallory"),
        "{}",
        stderr(&output)
    );

    // The kernel helper refuses an environment whose files another user could change
    // (as one built before these rules would be).
    let kernel = PathBuf::from(format!(
        "/home/{ALICE}/jupyter-{}/kernels/alice-env/kernel-helper.sh",
        shared.tag()
    ));
    let output = as_user(ALICE, &format!("{} /bin/true", kernel.display()));
    assert!(output.status.success(), "{}", stderr(&output));
    let output = as_user(
        ALICE,
        &format!(
            "chmod g+w {site_packages}/six.py && {} /bin/true",
            kernel.display()
        ),
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("six.py is owned or writable by another user"),
        "{}",
        stderr(&output)
    );
    clean_kernels(&shared);
}
