//! The command-line contract: commands, exit codes, settings precedence, the EnvKey's
//! stability, JSON events, and the checked-in man page.

mod common;

use common::{copy_tree, fixtures, stderr, stdout, Sandbox};

fn fixture(sandbox: &Sandbox, name: &str) -> String {
    let to = sandbox.path().join("repos").join(name);
    copy_tree(&fixtures().join("detect").join(name), &to);
    to.to_str().unwrap().to_string()
}

#[test]
fn version_help_and_usage_errors() {
    let sandbox = Sandbox::new();
    assert!(sandbox.ok(&["--version"]).starts_with("hpcbinder "));
    let help = sandbox.ok(&["help"]);
    for command in ["detect", "key", "build", "config", "completions"] {
        assert!(help.contains(command), "{help}");
    }
    let output = sandbox.run(&["detect", "--no-such-flag", "."]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "usage errors are the user's: exit 1"
    );
    let output = sandbox.run(&["build", ".", "--target", "docker"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("possible values"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn man_page_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/hpcbinder.1");
    let fresh = hpcbinder::cli::man_page();
    if std::env::var_os("HPCBINDER_UPDATE_MAN").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "man/hpcbinder.1 is stale: run `HPCBINDER_UPDATE_MAN=1 cargo test --test cli man_page` and commit it"
    );
    let text = String::from_utf8(fresh).unwrap();
    assert!(
        text.contains("\\-\\-dry\\-run") && text.contains("\\-\\-explain"),
        "every command's flags are documented"
    );
}

#[test]
fn completions_are_generated() {
    let sandbox = Sandbox::new();
    let bash = sandbox.ok(&["completions", "bash"]);
    assert!(
        bash.contains("_hpcbinder") && bash.contains("--dry-run"),
        "{bash}"
    );
    assert!(sandbox
        .ok(&["completions", "zsh"])
        .contains("#compdef hpcbinder"));
}

#[test]
fn settings_precedence_cli_env_user_site() {
    let sandbox = Sandbox::new();
    std::fs::write(
        sandbox.path().join("site.toml"),
        "store = \"/site/store\"\ntarget = \"conda\"\nchannels = [\"https://mirror.example/conda-forge\"]\npython = \"3.11\"\nbase-image = \"registry.example/base:1\"\n[mirrors]\n\"https://conda.anaconda.org\" = \"https://mirror.example\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(sandbox.path().join("config/hpcbinder")).unwrap();
    std::fs::write(
        sandbox.path().join("config/hpcbinder/config.toml"),
        "target = \"venv\"\npython = \"3.13\"\n",
    )
    .unwrap();
    let show = |extra: &[&str], target_env: Option<&str>| -> serde_json::Value {
        let mut command = sandbox.command();
        command.env_remove("HPCBINDER_STORE");
        if let Some(target) = target_env {
            command.env("HPCBINDER_TARGET", target);
        }
        let output = command
            .args(["config", "show", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        entries
            .into_iter()
            .map(|e| (e["key"].as_str().unwrap().to_string(), e))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let settings = show(&[], None);
    assert_eq!(settings["store"]["value"], "/site/store");
    assert_eq!(settings["store"]["origin"]["kind"], "site-config");
    assert_eq!(
        settings["target"]["value"], "venv",
        "user config beats site config"
    );
    assert_eq!(settings["target"]["origin"]["kind"], "user-config");
    assert_eq!(settings["python"]["value"], "3.13");
    assert_eq!(
        settings["channels"]["value"],
        serde_json::json!(["https://mirror.example/conda-forge"])
    );
    assert_eq!(settings["base-image"]["value"], "registry.example/base:1");
    assert_eq!(
        settings["mirrors"]["value"]["https://conda.anaconda.org"],
        "https://mirror.example"
    );
    assert_eq!(settings["platform"]["origin"]["kind"], "default");
    let settings = show(&["--store", "/cli/store"], Some("podman"));
    assert_eq!(
        settings["target"]["value"], "podman",
        "environment beats config files"
    );
    assert_eq!(
        settings["target"]["origin"],
        serde_json::json!({"kind": "environment", "name": "HPCBINDER_TARGET"})
    );
    assert_eq!(
        settings["store"]["value"], "/cli/store",
        "the flag beats everything"
    );
    assert_eq!(
        settings["store"]["origin"],
        serde_json::json!({"kind": "cli", "name": "--store"})
    );
    // Human form names each origin.
    let text = sandbox.ok(&["config", "show"]);
    assert!(
        text.contains("# user config") && text.contains("# site config"),
        "{text}"
    );
}

#[test]
fn bad_config_is_a_user_error_naming_file_and_line() {
    let sandbox = Sandbox::new();
    std::fs::write(
        sandbox.path().join("site.toml"),
        "store = \"/s\"\nstroe = \"/typo\"\n",
    )
    .unwrap();
    let output = sandbox.run(&["config", "show"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("site.toml:2") && err.contains("stroe"),
        "{err}"
    );
    assert!(err.contains("hint: did you mean `store`?"), "{err}");
    std::fs::write(
        sandbox.path().join("site.toml"),
        "store = \"/s\"\nstore = \"/again\"\n",
    )
    .unwrap();
    let err = stderr(&sandbox.run(&["config", "show"]));
    assert!(
        err.contains("site.toml:2: duplicate key `store`")
            && err.contains("hint: config files are TOML"),
        "{err}"
    );

    std::fs::write(
        sandbox.path().join("site.toml"),
        "container-engine = \"docker\"\n",
    )
    .unwrap();
    let output = sandbox.run(&["config", "show"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("invalid target `docker`")
            || err.contains("invalid container-engine `docker`"),
        "{err}"
    );
    assert!(
        err.contains("podman-hpc"),
        "the hint lists the engines: {err}"
    );

    std::fs::write(sandbox.path().join("site.toml"), "python = \"three\"\n").unwrap();
    assert_eq!(sandbox.run(&["config", "show"]).status.code(), Some(1));
}

#[test]
fn archives_table_is_shown_with_its_defaults_and_checked() {
    let sandbox = Sandbox::new();
    let site = sandbox.path().join("site.toml");
    std::fs::write(&site, "[archives]\nmax-entries = 500\n").unwrap();
    let output = sandbox.run(&["config", "show", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let archives = entries.iter().find(|e| e["key"] == "archives").unwrap();
    assert_eq!(
        archives["value"],
        serde_json::json!({
            "max-bytes": 4u64 << 30,
            "max-entries": 500,
            "max-ratio": 100,
            "ratio-floor-bytes": 64u64 << 20,
        })
    );
    assert_eq!(archives["origin"]["kind"], "site-config");

    std::fs::write(&site, "[archives]\nmax-bytes = 0\n").unwrap();
    let output = sandbox.run(&["config", "show"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.starts_with("error: invalid archives.max-bytes `0` (from site config ")
            && err.contains("site.toml")
            && err.contains("hint: ")
            && err.contains("1 MiB"),
        "{err}"
    );
}

#[test]
fn key_is_stable_across_paths_stores_and_runs() {
    let sandbox = Sandbox::new();
    let a = fixture(&sandbox, "conda-basic");
    let b_dir = sandbox.path().join("elsewhere/deeper/conda-basic");
    copy_tree(&fixtures().join("detect/conda-basic"), &b_dir);
    let key_a = sandbox.key(&[&a]);
    assert_eq!(key_a, sandbox.key(&[&a]), "same run twice");
    assert_eq!(
        key_a,
        sandbox.key(&[b_dir.to_str().unwrap()]),
        "path does not enter the key"
    );
    let other = Sandbox::new();
    assert_eq!(
        key_a,
        other.key(&[&a]),
        "home and store do not enter the key"
    );
}

#[test]
fn only_environment_files_enter_the_key() {
    let sandbox = Sandbox::new();
    let repo = fixture(&sandbox, "conda-basic");
    let base = sandbox.key(&[&repo]);
    std::fs::write(format!("{repo}/index.ipynb"), "{\"cells\": [\"changed\"]}").unwrap();
    std::fs::write(format!("{repo}/README.md"), "docs").unwrap();
    std::fs::create_dir_all(format!("{repo}/data")).unwrap();
    std::fs::write(format!("{repo}/data/x.csv"), "1,2").unwrap();
    assert_eq!(
        base,
        sandbox.key(&[&repo]),
        "notebooks, docs and data do not change the key"
    );
    // Moving the environment file into binder/ describes the same environment.
    std::fs::create_dir_all(format!("{repo}/binder")).unwrap();
    std::fs::rename(
        format!("{repo}/environment.yml"),
        format!("{repo}/binder/environment.yml"),
    )
    .unwrap();
    assert_eq!(base, sandbox.key(&[&repo]));
    // One byte in an env file changes it.
    let path = format!("{repo}/binder/environment.yml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push(' ');
    std::fs::write(&path, text).unwrap();
    assert_ne!(base, sandbox.key(&[&repo]));
    // The target is part of the key.
    assert_ne!(
        sandbox.key(&[&repo]),
        sandbox.key(&[&repo, "--target", "podman"])
    );
}

#[test]
fn whole_tree_enters_the_key_when_the_build_installs_the_repo() {
    let sandbox = Sandbox::new();
    let repo = fixture(&sandbox, "python-setup-py");
    let base = sandbox.key(&[&repo]);
    std::fs::write(format!("{repo}/module.py"), "x = 1\n").unwrap();
    assert_ne!(
        base,
        sandbox.key(&[&repo]),
        "the package's own code is part of the environment"
    );
    let explain = sandbox.ok(&["key", &repo, "--explain"]);
    assert!(
        explain.lines().any(|l| l.trim_start().starts_with("tree ")),
        "{explain}"
    );
}

#[test]
fn key_explain_lists_every_input() {
    let sandbox = Sandbox::new();
    let repo = fixture(&sandbox, "conda-pip-includes-requirements");
    let out = sandbox.ok(&["key", &repo, "--explain", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    let inputs = value["inputs"].as_object().unwrap();
    for name in [
        "format",
        "target",
        "platform",
        "python",
        "file:environment.yml",
        "file:requirements.txt",
        "site:channels",
    ] {
        assert!(inputs.contains_key(name), "missing {name}: {out}");
    }
    assert_eq!(value["target"], "conda");
    let digest = inputs["file:requirements.txt"].as_str().unwrap();
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(format!("{repo}/requirements.txt")).unwrap(),
        ))
    };
    assert_eq!(digest, format!("sha256:{expected}"));
    let text = sandbox.ok(&["key", &repo, "--explain"]);
    assert_eq!(text.lines().next().unwrap(), value["key"].as_str().unwrap());
}

#[test]
fn target_choice_and_refusals() {
    let sandbox = Sandbox::new();
    let conda = fixture(&sandbox, "conda-basic");
    let apt = fixture(&sandbox, "base-apt-postbuild-start");
    let python = fixture(&sandbox, "python-requirements");
    let target = |args: &[&str]| -> String {
        let mut all = vec!["key", "--json"];
        all.extend_from_slice(args);
        let value: serde_json::Value = serde_json::from_str(&sandbox.ok(&all)).unwrap();
        value["target"].as_str().unwrap().to_string()
    };
    assert_eq!(target(&[&conda]), "conda");
    assert_eq!(target(&[&python]), "venv");
    assert_eq!(target(&[&apt]), "podman", "apt.txt needs a container");
    assert_eq!(target(&[&python, "--target", "conda"]), "conda");

    let output = sandbox.run(&["build", &apt, "--dry-run", "--target", "venv"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("hint: use --target podman"),
        "{}",
        stderr(&output)
    );
    let output = sandbox.run(&["build", &conda, "--dry-run", "--target", "venv"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--target conda"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn build_dry_run_json_events() {
    let sandbox = Sandbox::new();
    let repo = fixture(&sandbox, "conda-pip-includes-requirements");
    let out = sandbox.ok(&[
        "build",
        &repo,
        "--dry-run",
        "--json",
        "--kernel-name",
        "demo",
    ]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events
        .iter()
        .all(|e| e["message"].as_str().unwrap().ends_with('\n')));
    let last = events.last().unwrap();
    let store = sandbox.store();
    let key = last["key"].as_str().unwrap().to_string();
    let mut filtered = out
        .replace(store.to_str().unwrap(), "[STORE]")
        .replace(sandbox.path().to_str().unwrap(), "[TMP]");
    filtered = filtered
        .replace(&key, "[KEY]")
        .replace(&key[..16], "[KEY16]")
        .replace(&key[..7], "[KEY7]");
    insta::assert_snapshot!(filtered);
    assert_eq!(
        last["prefix"],
        format!("{}/e/{}", store.display(), &key[..16])
    );
    assert_eq!(last["kernel"], "demo");
    assert_eq!(
        last["kernel_dir"],
        format!("{}/jupyter/kernels/demo", sandbox.path().display())
    );
    assert_eq!(last["ready"], false);

    // A marker the store accepts (see `store_accepts`) makes the plan a reuse.
    let prefix = store.join("e").join(&key[..16]);
    std::fs::create_dir_all(&prefix).unwrap();
    std::fs::write(
        store.join(format!("e/{}.toml", &key[..16])),
        ready_marker(&key, &prefix, 1),
    )
    .unwrap();
    assert!(store_accepts(&store, &key), "the marker is a valid one");
    let out = sandbox.ok(&["build", &repo, "--dry-run", "--json"]);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["ready"], true);
    assert!(
        last["steps"][0].as_str().unwrap().starts_with("reuse"),
        "{last}"
    );
}

/// A ready marker as the store writes it, for a venv built from `key` in `prefix`.
fn ready_marker(key: &str, prefix: &std::path::Path, format: u32) -> String {
    format!(
        "format = {format}\nkey = \"{key}\"\ntarget = \"venv\"\nbuildpack = \"python\"\nprefix = \"{}\"\npython = \"3.12\"\ncreated = 1700000000\nhpcbinder = \"{}\"\nlocks = []\nsource = \"test\"\n\n[inputs]\n",
        prefix.display(),
        env!("CARGO_PKG_VERSION")
    )
}

/// Whether a build would reuse what the store holds for `key` (`Store::lookup`: the
/// marker parses, has format 1, the full key and an existing prefix).
fn store_accepts(store: &std::path::Path, key: &str) -> bool {
    let store = hpcbinder::store::Store::open(store, &[]).unwrap();
    store
        .lookup(&store.slot(&key[..16]).unwrap(), key)
        .is_some()
}

/// A dry run must not promise a reuse that the build would not make: for each marker the
/// store rejects, the plan says the environment is not ready and builds it.
#[test]
fn dry_run_does_not_reuse_a_marker_the_store_rejects() {
    let sandbox = Sandbox::new();
    let repo = fixture(&sandbox, "python-requirements");
    let store = sandbox.store();
    let key = sandbox.key(&[&repo]);
    let prefix = store.join("e").join(&key[..16]);
    let other = "0".repeat(key.len());
    let rejected = [
        ("only a key", format!("key = \"{key}\"\n")),
        ("not TOML", "ready\n".to_string()),
        ("another format", ready_marker(&key, &prefix, 2)),
        (
            "another key with the same first 16 characters",
            ready_marker(&format!("{}{}", &key[..16], &other[16..]), &prefix, 1),
        ),
        ("a missing prefix", ready_marker(&key, &prefix, 1)),
    ];
    std::fs::create_dir_all(store.join("e")).unwrap();
    for (what, marker) in rejected {
        if what == "a missing prefix" {
            let _ = std::fs::remove_dir(&prefix);
        } else {
            std::fs::create_dir_all(&prefix).unwrap();
        }
        std::fs::write(store.join(format!("e/{}.toml", &key[..16])), marker).unwrap();
        assert!(!store_accepts(&store, &key), "{what}: the store rejects it");
        let out = sandbox.ok(&["build", &repo, "--dry-run", "--json"]);
        let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(last["ready"], false, "{what}: {last}");
        assert!(
            !last["steps"][0].as_str().unwrap().starts_with("reuse"),
            "{what}: {last}"
        );
    }
}

#[test]
fn container_builds_need_a_base_image_and_a_supported_buildpack() {
    let sandbox = Sandbox::new();
    let repo = fixture(&sandbox, "python-requirements");
    let output = sandbox.run(&["build", &repo, "--target", "podman"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no base image is configured"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("hint: set `base-image`"),
        "{}",
        stderr(&output)
    );
    let leftovers: Vec<_> = std::fs::read_dir(sandbox.store().join("e"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "nothing half-built is left");

    let julia = fixture(&sandbox, "julia-project");
    let output = sandbox.run(&["build", &julia, "--json", "--base-image", "debian:12"]);
    // The repository's content, like detection's refusals: exit 1.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let last: serde_json::Value =
        serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap();
    assert_eq!(last["phase"], "failed");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("a container for the julia buildpack is not implemented yet"),
        "{last}"
    );
    let output = sandbox.run(&["build", &julia, "--base-image", "debian:12"]);
    assert!(
        stderr(&output).contains("hint: add a Dockerfile")
            && !stderr(&output).contains("Building a"),
        "refused before anything is built, with a way forward: {}",
        stderr(&output)
    );
}

#[test]
fn human_output_and_quiet() {
    let sandbox = Sandbox::new();
    let repo = fixture(&sandbox, "conda-with-requirements");
    let output = sandbox.run(&["detect", &repo]);
    assert!(output.status.success());
    assert!(
        stdout(&output).starts_with("buildpack: conda\n"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("warning: requirements.txt is ignored"),
        "{}",
        stderr(&output)
    );
    let output = sandbox.run(&["detect", &repo, "-q"]);
    assert!(
        stderr(&output).is_empty(),
        "-q silences warnings: {}",
        stderr(&output)
    );
    let output = sandbox.run(&["build", &repo, "--dry-run"]);
    let out = stdout(&output);
    for field in [
        "source:",
        "buildpack: conda",
        "target:    conda",
        "key:",
        "prefix:",
        "kernel:",
        "steps:",
    ] {
        assert!(out.contains(field), "{field} missing: {out}");
    }
}

#[test]
fn repository_strings_are_sanitised_for_the_terminal() {
    let sandbox = Sandbox::new();
    let repo = sandbox.path().join("evil");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("environment.yml"),
        "dependencies:\n  - numpy\n\"weird\\e[2J\": 1\n",
    )
    .unwrap();
    let output = sandbox.run(&["detect", repo.to_str().unwrap()]);
    assert!(
        stderr(&output).contains("unknown key `weird?[2J`"),
        "{}",
        stderr(&output)
    );
    assert!(
        !stderr(&output).contains('\u{1b}'),
        "escape sequences reach the terminal"
    );
    assert!(!stdout(&output).contains('\u{1b}'));
}

/// `--with-server` (the launch service's server mode) enters the key, adds
/// jupyterhub-singleuser and JupyterLab to what is resolved, and is refused for images.
#[test]
fn with_server_enters_the_key_and_is_refused_for_images() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("plain", &[("requirements.txt", "six==1.16.0\n")]);
    let key = |extra: &[&str]| {
        let mut args = vec!["build", "--dry-run", &repo];
        args.extend_from_slice(extra);
        let plan = sandbox.ok(&args);
        plan.lines()
            .find_map(|l| l.strip_prefix("key:"))
            .unwrap_or_else(|| panic!("no key in:\n{plan}"))
            .trim()
            .to_string()
    };
    assert_ne!(key(&[]), key(&["--with-server"]));
    let output = sandbox.run(&["build", &repo, "--with-server", "--target", "podman"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--with-server builds native environments, and Charliecloud images")
            && stderr.contains("or --target charliecloud"),
        "{stderr}"
    );
}
