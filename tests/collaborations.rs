//! Collaborations (issue 12): pins whose shared kernels follow them through re-pins and
//! rollbacks, answering a cell each time; the store's inventory (`list`, `show`, `rm`,
//! `gc`) knowing what is pinned and what a running kernel uses; eight pins at once;
//! `export` then `build --from-lock` into another store giving the same packages; and
//! real users: members use the team's kernel but cannot change pins or environments, and
//! a user outside the group cannot read a group-only store.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::channel::{Channel, Package};
use common::users::{as_user, users, Shared, ALICE, MALLORY};
use common::{stderr, GitRepo, Sandbox};

const PREFIX_CELL: &str = "import os, sys; print(os.path.realpath(sys.prefix))";

fn json(sandbox: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&sandbox.ok(&all)).unwrap()
}

fn real(path: &str) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

#[test]
fn a_pin_moves_its_shared_kernel_and_rolls_back() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = GitRepo::init(&sandbox.path().join("team-env"));
    repo.write("requirements.txt", "six\n");
    repo.commit("one");
    let path = repo.path.display().to_string();
    let key1 = sandbox.ok(&["pin", "team", &path]).trim().to_string();
    let first = json(&sandbox, &["show", "team"]);
    assert_eq!(first["key"], key1.as_str());
    let prefix1 = real(first["prefix"].as_str().unwrap());
    let shared = sandbox.store().join("kernels/team");
    common::run_cell(&shared, PREFIX_CELL, &prefix1, 60);
    // A member's own copy follows the pin too.
    sandbox.ok(&["kernel", "add", "team"]);
    let own = sandbox.path().join("jupyter/kernels/team");
    common::run_cell(&own, PREFIX_CELL, &prefix1, 60);
    assert_eq!(
        sandbox.ok(&["jupyter-path"]).trim(),
        format!("JUPYTER_PATH={}", sandbox.store().display())
    );
    // Jupyter itself lists the team's kernel for anyone with that JUPYTER_PATH.
    let listed = std::process::Command::new(format!("{prefix1}/bin/jupyter-kernelspec"))
        .args(["list", "--json"])
        .env("JUPYTER_PATH", sandbox.store())
        .env("JUPYTER_DATA_DIR", sandbox.path().join("empty-data"))
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        listed["kernelspecs"]["team"]["resource_dir"],
        shared.display().to_string()
    );

    // A new commit: the name moves, the kernel's name stays, its display name says where.
    repo.write("requirements.txt", "six==1.16.0\n");
    let commit2 = repo.commit("two");
    let key2 = sandbox.ok(&["pin", "team", &path]).trim().to_string();
    assert_ne!(key1, key2);
    let prefix2 = real(
        json(&sandbox, &["show", "team"])["prefix"]
            .as_str()
            .unwrap(),
    );
    assert_ne!(prefix1, prefix2);
    common::run_cell(&shared, PREFIX_CELL, &prefix2, 60);
    common::run_cell(&own, PREFIX_CELL, &prefix2, 60);
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shared.join("kernel.json")).unwrap())
            .unwrap();
    assert_eq!(
        spec["display_name"],
        format!("team ({} @ {})", repo.url(), &commit2[..7])
    );
    let pins = json(&sandbox, &["pins"]);
    assert_eq!(pins["team"]["current"]["key"], key2.as_str());
    assert_eq!(pins["team"]["history"][0]["key"], key1.as_str());
    assert!(sandbox
        .ok(&["pin", "team", "--history"])
        .contains(&key1[..16]));

    // Rollback: back to the first environment, the same kernel answering from it.
    sandbox.ok(&["pin", "team", "--rollback"]);
    common::run_cell(&shared, PREFIX_CELL, &prefix1, 60);
    assert_eq!(
        json(&sandbox, &["pins"])["team"]["current"]["key"],
        key1.as_str()
    );
    let output = sandbox.run(&["pin", "team", "--rollback", "9"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("cannot roll back 9"),
        "{}",
        stderr(&output)
    );

    // Bad names and nothing to point at: clear errors.
    let output = sandbox.run(&["pin", "../escape", &path]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("cannot name a pin"),
        "{}",
        stderr(&output)
    );

    sandbox.ok(&["unpin", "team"]);
    assert!(!shared.exists());
    assert_eq!(json(&sandbox, &["pins"]), serde_json::json!({}));
}

/// Wait until `show KEY` says whether a kernel runs from the environment.
fn wait_in_use(sandbox: &Sandbox, key: &str, expected: bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while json(sandbox, &["show", key])["in_use"] != expected {
        assert!(Instant::now() < deadline, "in_use never became {expected}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_inventory_knows_what_is_pinned_and_what_a_running_kernel_uses() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let loose = sandbox.repo("loose", &[("requirements.txt", "six\n")]);
    let ready = sandbox.build_ready(&[&loose]);
    let key1 = ready["key"].as_str().unwrap().to_string();
    let prefix1 = PathBuf::from(ready["prefix"].as_str().unwrap());
    let kernel1 = PathBuf::from(ready["kernel_dir"].as_str().unwrap());
    let kept = sandbox.repo("kept", &[("requirements.txt", "six==1.16.0\n")]);
    let key2 = sandbox.ok(&["pin", "keep", &kept]).trim().to_string();

    let list = json(&sandbox, &["list"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let by_key = |key: &str| list.iter().find(|e| e["key"] == key).unwrap().clone();
    assert_eq!(by_key(&key2)["pins"], serde_json::json!(["keep"]));
    assert_eq!(by_key(&key1)["pins"], serde_json::json!([]));
    assert!(by_key(&key1)["size"].as_u64().unwrap() > 0);
    assert!(by_key(&key1)["kernels"].as_array().unwrap().len() == 1);
    let show = json(&sandbox, &["show", &key1[..12]]);
    assert!(
        show["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "six"
                && p["kind"] == "pip"
                && p["sha256"].as_str().unwrap().len() >= 64),
        "{show}"
    );

    // Pinned: refused.
    let output = sandbox.run(&["rm", &key2[..16]]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is pinned (keep)"),
        "{}",
        stderr(&output)
    );

    // A running kernel holds its environment: refused until the kernel stops.
    let hold = sandbox.path().join("release");
    let (mut command, _scratch) =
        common::jupyter::start_and_kill_command(&kernel1, &format!("hold:{}", hold.display()), 120);
    let mut holder = command.spawn().unwrap();
    wait_in_use(&sandbox, &key1, true);
    let output = sandbox.run(&["rm", &key1[..16]]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("used by a running kernel"),
        "{}",
        stderr(&output)
    );
    let output = sandbox.run(&["gc", "--older-than", "0", "--dry-run"]);
    assert!(!String::from_utf8_lossy(&output.stdout).contains(&key1[..16]));
    std::fs::write(&hold, "").unwrap();
    assert!(holder.wait().unwrap().success());
    wait_in_use(&sandbox, &key1, false);
    assert!(json(&sandbox, &["show", &key1[..16]])["last_used"].is_u64());
    sandbox.ok(&["rm", &key1[..16]]);
    assert!(!prefix1.exists());

    // gc: an unfinished build and the kernelspec of the removed environment go; the
    // pinned environment stays; a dry run removes nothing.
    let unfinished = sandbox.store().join("e/0123456789abcdef");
    std::fs::create_dir_all(unfinished.join("lib")).unwrap();
    let dry = sandbox.ok(&["gc", "--dry-run"]);
    let lock1 = sandbox.store().join(format!("locks/{}.lock", &key1[..16]));
    for what in [
        "unfinished build",
        "kernelspec of a removed environment",
        "lock file nobody holds",
    ] {
        assert!(dry.contains(what), "{what}: {dry}");
    }
    assert!(unfinished.exists() && kernel1.exists() && lock1.exists());
    sandbox.ok(&["gc"]);
    assert!(!unfinished.exists() && !kernel1.exists() && !lock1.exists());
    // Only this one has setuptools: once it goes, so does its package-cache entry.
    let unpinned = sandbox.repo("unpinned", &[("requirements.txt", "six\nsetuptools\n")]);
    let ready3 = sandbox.build_ready(&[&unpinned, "--no-kernel"]);
    sandbox.ok(&["gc", "--older-than", "1"]);
    assert!(
        Path::new(ready3["prefix"].as_str().unwrap()).exists(),
        "used today"
    );
    let collected = sandbox.ok(&["gc", "--older-than", "0"]);
    assert!(!Path::new(ready3["prefix"].as_str().unwrap()).exists());
    assert!(collected.contains("package cache entry"), "{collected}");
    assert_eq!(
        json(&sandbox, &["list"]).as_array().unwrap().len(),
        1,
        "the pinned one stays"
    );
}

#[test]
fn eight_concurrent_pins_all_land() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("many", &[("requirements.txt", "six\n")]);
    let key = sandbox.build_ready(&[&repo, "--no-kernel"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let children: Vec<_> = (0..8)
        .map(|n| {
            sandbox
                .command()
                .args([
                    "pin",
                    &format!("pin-{n}"),
                    "--key",
                    &key[..16],
                    "--no-verify",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let pins = json(&sandbox, &["pins"]);
    assert_eq!(pins.as_object().unwrap().len(), 8, "{pins}");
    for n in 0..8 {
        assert!(sandbox
            .store()
            .join(format!("kernels/pin-{n}/kernel.json"))
            .is_file());
    }
    // A configured shared kernels directory (a `kernels` folder the hub already reads).
    let shared = sandbox.path().join("team-jupyter/kernels");
    let config = std::fs::read_to_string(sandbox.path().join("site.toml")).unwrap();
    std::fs::write(
        sandbox.path().join("site.toml"),
        format!("{config}shared-kernels = \"{}\"\n", shared.display()),
    )
    .unwrap();
    sandbox.ok(&["pin", "elsewhere", "--key", &key[..16], "--no-verify"]);
    assert!(shared.join("elsewhere/kernel.json").is_file());
    assert_eq!(
        sandbox.ok(&["jupyter-path"]).trim(),
        format!(
            "JUPYTER_PATH={}",
            sandbox.path().join("team-jupyter").display()
        )
    );
    std::fs::write(
        sandbox.path().join("site.toml"),
        format!("{config}shared-kernels = \"/srv/jupyter\"\n"),
    )
    .unwrap();
    let output = sandbox.run(&["jupyter-path"]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("ending in /kernels"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn export_then_from_lock_in_another_store_gives_the_same_packages() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    // A venv.
    let venv = sandbox.repo("venv", &[("requirements.txt", "six\n")]);
    let key = sandbox.build_ready(&[&venv, "--no-kernel"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let lock = sandbox.path().join("venv.lock");
    sandbox.ok(&["export", &key[..16], "-o", lock.to_str().unwrap()]);
    // A conda environment with a pip part, from the test channel.
    let mut channel = Channel::new(&sandbox.path().join("channel"));
    let python = channel.add_python_stub();
    channel.add(&Package::hello());
    let conda = sandbox.repo(
        "conda",
        &[(
            "environment.yml",
            &format!(
                "channels:\n  - {}\n  - nodefaults\ndependencies:\n  - python={python}\n  - hpcb-hello\n  - pip:\n    - six==1.16.0\n",
                channel.url()
            ),
        )],
    );
    let conda_key = sandbox.build_ready(&[&conda, "--no-kernel"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let pixi = sandbox.path().join("conda.pixi.lock");
    sandbox.ok(&[
        "export",
        &conda_key[..16],
        "--format",
        "pixi",
        "-o",
        pixi.to_str().unwrap(),
    ]);
    let pip = sandbox.path().join("conda-pip.lock");
    sandbox.ok(&[
        "export",
        &conda_key[..16],
        "--format",
        "requirements",
        "-o",
        pip.to_str().unwrap(),
    ]);
    let explicit = sandbox.ok(&["export", &conda_key[..16], "--format", "explicit"]);
    assert!(
        explicit.contains("@EXPLICIT") && explicit.contains("#sha256:"),
        "{explicit}"
    );
    let output = sandbox.run(&["export", &key[..16], "--format", "pixi"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));

    // Another machine: an empty store, the same repositories, the exported locks.
    let other = sandbox.path().join("other-store");
    let other_store = other.to_str().unwrap();
    let cases: [(&String, Vec<&Path>, &String); 2] = [
        (&venv, vec![lock.as_path()], &key),
        (&conda, vec![pixi.as_path(), pip.as_path()], &conda_key),
    ];
    for (repo, locks, original) in cases {
        let mut args = vec!["--store", other_store, repo.as_str(), "--no-kernel"];
        for lock in &locks {
            args.extend(["--from-lock", lock.to_str().unwrap()]);
        }
        let mut all = vec!["build", "--json"];
        all.extend_from_slice(&args);
        let events = sandbox.ok(&all);
        // Nothing was resolved or solved: the locks were installed as they are.
        assert!(
            !events.contains("Resolving") && !events.contains("Solving"),
            "{events}"
        );
        let again: serde_json::Value =
            serde_json::from_str(events.lines().last().unwrap()).unwrap();
        assert_eq!(again["phase"], "ready");
        let rebuilt = again["key"].as_str().unwrap();
        let mut all = vec!["show", &rebuilt[..16], "--store", other_store, "--json"];
        let theirs: serde_json::Value = serde_json::from_str(&sandbox.ok(&all)).unwrap();
        all = vec!["show", &original[..16], "--json"];
        let ours: serde_json::Value = serde_json::from_str(&sandbox.ok(&all)).unwrap();
        assert!(!ours["packages"].as_array().unwrap().is_empty());
        assert_eq!(theirs["packages"], ours["packages"], "{repo}");
    }
    // `pin NAME --from-lock FILE` with the lock alone: the same packages, pinned, and a
    // kernel that answers.
    let pinned = sandbox.ok(&[
        "pin",
        "from-lock",
        "--from-lock",
        lock.to_str().unwrap(),
        "--store",
        other_store,
    ]);
    let theirs: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["show", "from-lock", "--store", other_store, "--json"]))
            .unwrap();
    assert_eq!(theirs["key"], pinned.trim());
    assert_eq!(
        theirs["packages"],
        json(&sandbox, &["show", &key[..16]])["packages"]
    );
    common::run_cell(
        &other.join("kernels/from-lock"),
        "import six; print('ok')",
        "ok",
        60,
    );
    let output = sandbox.run(&[
        "pin",
        "nope",
        "--from-lock",
        sandbox.path().join("site.toml").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is not a lock hpcbinder can build from alone"),
        "{}",
        stderr(&output)
    );
}

/// Real users: root (the store's owner) pins; a member of the store's group uses the
/// team's kernel but may not pin, unpin, rm or gc; a user outside the group cannot read a
/// group-only store.
#[test]
fn members_use_the_teams_kernel_but_cannot_change_it() {
    users();
    let shared = Shared::new(0o2775);
    let repo = shared.path().join("repo").display().to_string();
    let output = shared.hpcbinder("root", "022", &["pin", "team", &repo]);
    assert!(output.status.success(), "{}", stderr(&output));
    let key = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let helper = shared.store().join("kernels/team/kernel-helper.sh");
    // Alice starts the team's environment through its kernel helper, as her kernel would.
    let used = as_user(
        ALICE,
        &format!(
            "{} python -c 'import six, sys; print(sys.prefix)'",
            helper.display()
        ),
    );
    assert!(used.status.success(), "{}", stderr(&used));
    assert!(
        String::from_utf8_lossy(&used.stdout).contains(&key[..16]),
        "{}",
        String::from_utf8_lossy(&used.stdout)
    );
    let pins = shared.hpcbinder(ALICE, "002", &["pins"]);
    assert!(
        String::from_utf8_lossy(&pins.stdout).contains("team"),
        "{}",
        stderr(&pins)
    );
    for args in [
        vec!["pin", "mine", repo.as_str()],
        vec!["pin", "team", "--key", &key[..16]],
        vec!["unpin", "team"],
        vec!["rm", &key[..16], "--force"],
        vec!["gc"],
    ] {
        let output = shared.hpcbinder(ALICE, "002", &args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("hpcb-alice")
                && stderr(&output).contains("only the store's maintainers may"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    // Nor can she change the pins or the kernel by hand.
    for attempt in [
        format!("echo x >> {}/pins/pins.toml", shared.store().display()),
        format!("echo x >> {}", helper.display()),
        format!("touch {}/kernels/evil", shared.store().display()),
    ] {
        assert!(!as_user(ALICE, &attempt).status.success(), "{attempt}");
    }

    // A user outside the group, and a group-only store: nothing to read.
    let outsider = "hpcb-outsider";
    if !std::process::Command::new("id")
        .arg(outsider)
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(std::process::Command::new("useradd")
            .args(["-m", outsider])
            .status()
            .unwrap()
            .success());
    }
    let private = Shared::new(0o2770);
    let repo = private.path().join("repo").display().to_string();
    let output = private.hpcbinder("root", "022", &["pin", "team", &repo, "--no-verify"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = private.hpcbinder(outsider, "022", &["pins"]);
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("ermission denied"),
        "{}",
        stderr(&output)
    );
    let read = as_user(
        outsider,
        &format!("cat {}/pins/pins.toml", private.store().display()),
    );
    assert!(!read.status.success());
}

/// `store-maintainers = ["@hpcb-maint"]`: members of that group maintain the pins
/// together (one pins, another re-pins the same name, the first rolls it back), through
/// `pins/` and `kernels/` that belong to the group; a member of the store's group outside
/// it still reads the pins but may not change them.
#[test]
fn a_maintainers_group_shares_the_pins() {
    users();
    let run = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap()
    };
    if !run(&["getent", "group", "hpcb-maint"]).status.success() {
        assert!(run(&["groupadd", "hpcb-maint"]).status.success());
    }
    assert!(run(&["usermod", "-aG", "hpcb-maint", ALICE])
        .status
        .success());
    if !run(&["id", "hpcb-bob"]).status.success() {
        assert!(
            run(&["useradd", "-m", "-G", "hpcb-share,hpcb-maint", "hpcb-bob"])
                .status
                .success()
        );
    }
    let shared = Shared::new(0o2775);
    let config = std::fs::read_to_string(shared.path().join("site.toml")).unwrap();
    std::fs::write(
        shared.path().join("site.toml"),
        format!("{config}store-maintainers = [\"@hpcb-maint\"]\n"),
    )
    .unwrap();
    let first = shared.path().join("repo").display().to_string();
    let second = shared.repo("repo-two", "six==1.16.0\n");
    let ok = |user: &str, args: &[&str]| {
        let output = shared.hpcbinder(user, "022", args);
        assert!(
            output.status.success(),
            "{user} {args:?}: {}",
            stderr(&output)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let key1 = ok(ALICE, &["pin", "team", &first]);
    let key2 = ok("hpcb-bob", &["pin", "team", &second]);
    assert_ne!(key1, key2);
    let pins: serde_json::Value = serde_json::from_str(&ok(MALLORY, &["pins", "--json"])).unwrap();
    assert_eq!(pins["team"]["current"]["key"], key2.as_str());
    assert_eq!(pins["team"]["history"][0]["key"], key1.as_str());
    assert!(pins["team"]["current"]["by"]
        .as_str()
        .unwrap()
        .starts_with("hpcb-bob"));
    ok(ALICE, &["pin", "team", "--rollback"]);
    let helper = shared.store().join("kernels/team/kernel-helper.sh");
    let used = as_user(
        MALLORY,
        &format!(
            "{} python -c 'import sys; print(sys.prefix)'",
            helper.display()
        ),
    );
    assert!(
        String::from_utf8_lossy(&used.stdout).contains(&key1[..16]),
        "{}",
        stderr(&used)
    );
    let output = shared.hpcbinder(MALLORY, "022", &["pin", "team", &second]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("members of hpcb-maint"),
        "{}",
        stderr(&output)
    );
    let pins_dir = std::fs::metadata(shared.store().join("pins")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(pins_dir.mode() & 0o2022, 0o2020, "{:o}", pins_dir.mode());
}
