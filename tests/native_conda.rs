//! Real conda environments, solved and installed in-process by rattler from a local
//! `file://` channel built by the test (conda-forge cannot be reached from here), with
//! Python from a venv-stub package and ipykernel from the wheelhouse through uv.

mod common;

use std::path::Path;

use common::channel::{Channel, Package};
use common::{stderr, Sandbox};

/// A channel with the python stub and `hpcb-hello` (noarch python, with a prefix placeholder).
fn channel(sandbox: &Sandbox) -> (Channel, String) {
    let mut channel = Channel::new(&sandbox.path().join("channel"));
    let python = channel.add_python_stub();
    channel.add(&Package::hello());
    (channel, python)
}

fn environment(channel: &Channel, python: &str, extra: &str) -> String {
    format!(
        "name: demo\nchannels:\n  - {}\n  - nodefaults\ndependencies:\n  - python={python}\n  - hpcb-hello\n{extra}",
        channel.url()
    )
}

#[test]
fn conda_env_from_a_local_channel_with_a_verified_kernel() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let (channel, python) = channel(&sandbox);
    let env = environment(
        &channel,
        &python,
        "  - pip:\n    - six==1.16.0\nvariables:\n  HPCB_VARIABLE: from-env-file\n",
    );
    let repo = sandbox.repo(
        "conda-demo",
        &[("environment.yml", &env), ("analysis.ipynb", "{}")],
    );
    let ready = sandbox.build_ready(&[&repo]);
    assert_eq!(ready["target"], "conda");
    let prefix = ready["prefix"].as_str().unwrap();
    assert_eq!(
        ready["verified"],
        std::fs::canonicalize(prefix).unwrap().to_str().unwrap()
    );

    // Conda packages, the pip section and variables are all there in the kernel, started by
    // hpcbinder's verifier and, independently of it, by jupyter_client.
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    let cell = "import os, hpcb_hello, six; print(hpcb_hello.VERSION, six.__version__, os.environ['HPCB_VARIABLE'], os.environ['CONDA_PREFIX'])";
    let expected = format!("1.0 1.16.0 from-env-file {prefix}");
    common::run_cell(kernel_dir, cell, &expected, 60);
    common::jupyter::run_cell(kernel_dir, cell, &expected, 60);

    // The prefix placeholder was replaced by the real (short) prefix.
    let text = std::fs::read_to_string(format!("{prefix}/share/hpcb-hello/prefix.txt")).unwrap();
    assert_eq!(text, format!("installed at {prefix}\n"));
    assert!(
        prefix.len() < sandbox.store().to_str().unwrap().len() + 20,
        "short prefix: <store>/e/<16 hex>"
    );

    // Files come from the store's package cache as hardlinks, not copies.
    use std::os::unix::fs::MetadataExt;
    let init = std::fs::metadata(format!("{prefix}/pyvenv.cfg")).unwrap();
    assert!(
        init.nlink() >= 2,
        "expected a hardlink from the package cache"
    );

    // Locks: pixi.lock and an @EXPLICIT file with exact URLs and sha256; a pip lock with hashes.
    let pixi = std::fs::read_to_string(format!("{prefix}/hpcbinder/pixi.lock")).unwrap();
    assert!(
        pixi.contains("hpcb-hello-1.0-py_0.conda") && pixi.contains("sha256"),
        "{pixi}"
    );
    let explicit =
        std::fs::read_to_string(format!("{prefix}/hpcbinder/conda-linux-64.lock")).unwrap();
    assert!(
        explicit.contains("@EXPLICIT") && explicit.contains("hpcb-hello-1.0-py_0.conda#sha256:"),
        "{explicit}"
    );
    let pip = std::fs::read_to_string(format!("{prefix}/hpcbinder/pip.lock")).unwrap();
    assert!(
        pip.contains("six==1.16.0") && pip.contains("--hash=sha256:"),
        "{pip}"
    );

    // The same lock rebuilds the conda part in another store without a solve.
    let other = Sandbox::new();
    other.native_site_config("");
    let lock = format!("{prefix}/hpcbinder/pixi.lock");
    let again = other.build_ready(&[&repo, "--from-lock", &lock, "--no-verify"]);
    let rebuilt = again["prefix"].as_str().unwrap();
    assert!(Path::new(&format!(
        "{rebuilt}/lib/python{python}/site-packages/hpcb_hello/__init__.py"
    ))
    .is_file());
}

#[test]
fn channel_errors_unsolvable_specs_and_bad_hashes_are_clear() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let (mut channel, python) = channel(&sandbox);

    let missing = sandbox.repo(
        "missing-channel",
        &[(
            "environment.yml",
            "channels: [file:///nonexistent/channel]\ndependencies: [python]\n",
        )],
    );
    let output = sandbox.run(&["build", &missing]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("cannot read the conda channel"),
        "{}",
        stderr(&output)
    );

    let unsolvable = sandbox.repo(
        "unsolvable",
        &[(
            "environment.yml",
            &environment(&channel, &python, "  - hpcb-hello>=99\n"),
        )],
    );
    let output = sandbox.run(&["build", &unsolvable]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("cannot be solved") && stderr(&output).contains("hpcb-hello"),
        "{}",
        stderr(&output)
    );

    channel.corrupt_sha256("noarch", "hpcb-hello-1.0-py_0.conda");
    let tampered = sandbox.repo(
        "tampered",
        &[("environment.yml", &environment(&channel, &python, ""))],
    );
    let output = sandbox.run(&["build", &tampered]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).to_lowercase().contains("hash") || stderr(&output).contains("sha256"),
        "{}",
        stderr(&output)
    );

    let leftovers: Vec<_> = std::fs::read_dir(sandbox.store().join("e"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        leftovers.is_empty(),
        "failed builds leave nothing in e/: {leftovers:?}"
    );
}

#[test]
fn channel_alias_mirrors_and_virtual_packages_come_from_site_config() {
    let sandbox = Sandbox::new();
    // A channel named `site-forge` under a local root stands in for a centre's mirror.
    let root = sandbox.path().join("mirror-root");
    let mut channel = Channel::new(&root.join("site-forge"));
    let python = channel.add_python_stub();
    let mut modern = Package::noarch_python("needs-new-glibc", "1.0");
    modern.depends.push("__glibc >=2.28".into());
    modern.files.push((
        "site-packages/needs_new_glibc.py".into(),
        "OK = True\n".into(),
        false,
    ));
    channel.add(&modern);
    let env = format!(
        "channels: [site-forge]\ndependencies:\n  - python={python}\n  - needs-new-glibc\n"
    );
    let repo = sandbox.repo("alias", &[("environment.yml", &env)]);

    // channel-alias: a bare channel name resolves under the site's alias.
    sandbox.native_site_config(&format!(
        "channel-alias = \"file://{}\"\nvirtual-packages = [\"__unix=0=0\", \"__linux=5.14=0\", \"__glibc=2.31=0\"]\n",
        root.display()
    ));
    let ready = sandbox.build_ready(&[&repo, "--no-verify"]);
    let pixi = std::fs::read_to_string(format!(
        "{}/hpcbinder/pixi.lock",
        ready["prefix"].as_str().unwrap()
    ))
    .unwrap();
    assert!(
        pixi.contains(&format!("file://{}/site-forge", root.display()))
            || pixi.contains(&root.display().to_string()),
        "{pixi}"
    );

    // The compute nodes' glibc, set in config, is what the solve sees.
    sandbox.native_site_config(&format!(
        "channel-alias = \"file://{}\"\nvirtual-packages = [\"__unix=0=0\", \"__linux=3.10=0\", \"__glibc=2.17=0\"]\n",
        root.display()
    ));
    let output = sandbox.run(&["build", &repo, "--no-verify"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("__glibc"), "{}", stderr(&output));

    // mirrors: a channel URL the machine cannot reach is rewritten to the site's mirror.
    let other = Sandbox::new();
    other.native_site_config(&format!(
        "[mirrors]\n\"https://conda.example.invalid\" = \"file://{}\"\n",
        root.display()
    ));
    let env = format!("channels: [\"https://conda.example.invalid/site-forge\"]\ndependencies:\n  - python={python}\n  - needs-new-glibc\n");
    let repo = other.repo("mirrored", &[("environment.yml", &env)]);
    let output = other.run(&["build", &repo, "--no-verify", "--no-kernel"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn an_explicit_file_is_installed_without_a_solve_and_its_hashes_are_checked() {
    use sha2::{Digest, Sha256};
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let mut channel = Channel::new(&sandbox.path().join("channel"));
    channel.add_python_stub();
    let mut hello = Package::noarch_python("hpcb-hello", "1.0");
    hello.files.push((
        "site-packages/hpcb_hello/__init__.py".into(),
        "VERSION = '1.0'\n".into(),
        false,
    ));
    let hello_archive = channel.add(&hello);
    let python_archive = std::fs::read_dir(channel.dir.join("linux-64"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "conda"))
        .unwrap();
    let line = |archive: &std::path::PathBuf| {
        let sha = hex::encode(Sha256::digest(std::fs::read(archive).unwrap()));
        format!("file://{}#sha256:{sha}", archive.display())
    };
    let explicit = format!(
        "# platform: linux-64\n@EXPLICIT\n{}\n{}\n",
        line(&python_archive),
        line(&hello_archive)
    );
    let repo = sandbox.repo("explicit", &[("conda-linux-64.lock", &explicit)]);
    let ready = sandbox.build_ready(&[&repo]);
    assert_eq!(ready["target"], "conda");
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    common::run_cell(
        kernel_dir,
        "import hpcb_hello; print(hpcb_hello.VERSION)",
        "1.0",
        60,
    );

    // A hash that does not match the archive is refused; nothing is left ready.
    let wrong = explicit.replace(
        &line(&hello_archive),
        &format!(
            "file://{}#sha256:{}",
            hello_archive.display(),
            "0".repeat(64)
        ),
    );
    let repo = sandbox.repo("explicit-tampered", &[("conda-linux-64.lock", &wrong)]);
    let other = Sandbox::new();
    other.native_site_config("");
    let output = other.run(&["build", &repo]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).to_lowercase().contains("hash") || stderr(&output).contains("sha256"),
        "{}",
        stderr(&output)
    );
    assert!(std::fs::read_dir(other.store().join("e"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn conda_lock_files_and_pixi_manifests_without_locks_build() {
    use sha2::{Digest, Sha256};
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let (channel, python) = channel(&sandbox);
    let check = |ready: &serde_json::Value, code: &str, expected: &str| {
        assert_eq!(ready["target"], "conda");
        let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
        common::run_cell(kernel_dir, code, expected, 60);
    };

    // conda-lock.yml: the locked URLs and sha256, no solve.
    let archives: Vec<std::path::PathBuf> = ["linux-64", "noarch"]
        .iter()
        .flat_map(|subdir| {
            std::fs::read_dir(channel.dir.join(subdir))
                .unwrap()
                .map(|e| e.unwrap().path())
        })
        .filter(|p| p.extension().is_some_and(|x| x == "conda"))
        .collect();
    let mut lock =
        String::from("version: 1\nmetadata:\n  platforms: [linux-64]\n  channels: []\npackage:\n");
    for archive in &archives {
        let name = archive
            .file_name()
            .unwrap()
            .to_string_lossy()
            .split('-')
            .next()
            .unwrap()
            .to_string();
        let sha = hex::encode(Sha256::digest(std::fs::read(archive).unwrap()));
        lock.push_str(&format!(
            "- name: {name}\n  version: '1'\n  manager: conda\n  platform: linux-64\n  url: file://{}\n  hash:\n    sha256: {sha}\n",
            archive.display()
        ));
    }
    // Its pip packages: installed from their URL, held to their sha256.
    let wheel = common::test_deps()
        .wheelhouse
        .join("six-1.16.0-py2.py3-none-any.whl");
    let wheel_sha = hex::encode(Sha256::digest(std::fs::read(&wheel).unwrap()));
    let pip_entry = |sha: &str| {
        format!(
            "- name: six\n  version: 1.16.0\n  manager: pip\n  platform: linux-64\n  dependencies: {{}}\n  url: file://{}\n  hash:\n    sha256: {sha}\n",
            wheel.display()
        )
    };
    let repo = sandbox.repo(
        "conda-lock",
        &[(
            "conda-lock.yml",
            &format!("{lock}{}", pip_entry(&wheel_sha)),
        )],
    );
    check(
        &sandbox.build_ready(&[&repo]),
        "import hpcb_hello, six; print(hpcb_hello.VERSION, six.__version__)",
        "1.0 1.16.0",
    );
    // The image preview shows the pip step exactly when the lock has pip packages (with
    // ipykernel from conda, so nothing else asks for pip).
    let user_config = sandbox.path().join("config/hpcbinder/config.toml");
    std::fs::create_dir_all(user_config.parent().unwrap()).unwrap();
    std::fs::write(&user_config, "kernel-package = \"conda\"\n").unwrap();
    let preview = |repo: &str| {
        sandbox.ok(&[
            "build",
            repo,
            "--target",
            "podman",
            "--dry-run",
            "--base-image",
            "debian:12",
        ])
    };
    let conda_only = sandbox.repo("conda-lock-conda-only", &[("conda-lock.yml", &lock)]);
    assert!(!preview(&conda_only).contains("pip.lock"));
    assert!(preview(&repo).contains("-r /opt/hpcbinder/pip.lock"));
    std::fs::remove_file(&user_config).unwrap();

    let wrong = "0".repeat(64);
    let tampered = sandbox.repo(
        "conda-lock-tampered",
        &[("conda-lock.yml", &format!("{lock}{}", pip_entry(&wrong)))],
    );
    let output = sandbox.run(&["build", &tampered]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains(&format!(
            "has sha256 {wheel_sha}, but the lock file says {wrong}"
        )),
        "{}",
        stderr(&output)
    );

    // pixi.toml without pixi.lock: channels, [dependencies] and [pypi-dependencies] solved.
    let manifest = format!(
        "[workspace]\nname = \"demo\"\nchannels = [\"{}\"]\nplatforms = [\"linux-64\"]\n\n[dependencies]\npython = \"{python}.*\"\nhpcb-hello = \"*\"\n\n[pypi-dependencies]\nsix = \"==1.16.0\"\n",
        channel.url()
    );
    let repo = sandbox.repo("pixi", &[("pixi.toml", &manifest)]);
    check(
        &sandbox.build_ready(&[&repo]),
        "import hpcb_hello, six; print(hpcb_hello.VERSION, six.__version__)",
        "1.0 1.16.0",
    );
}

#[test]
fn a_venv_whose_python_is_not_installed_gets_it_from_conda() {
    let sandbox = Sandbox::new();
    let (channel, _) = channel(&sandbox);
    sandbox.native_site_config(&format!("channels = [\"{}\"]\n", channel.url()));
    let repo = sandbox.repo("no-python-here", &[("requirements.txt", "six==1.16.0\n")]);
    // No Python anywhere on PATH (uv is configured by its absolute path).
    let empty = sandbox.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let output = sandbox
        .command()
        .args(["build", "--json", &repo])
        .env("PATH", &empty)
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}{events}", stderr(&output));
    assert!(
        events.contains("building a conda environment with Python"),
        "{events}"
    );
    let ready: serde_json::Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    assert_eq!(ready["target"], "venv");
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    common::run_cell(
        kernel_dir,
        "import six; print(six.__version__)",
        "1.16.0",
        60,
    );
}

#[test]
fn ipykernel_comes_from_the_python_index_when_the_channels_lack_it() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    // The default kernel-package (auto): the test channel has no ipykernel.
    let site = sandbox.path().join("site.toml");
    let config: String = std::fs::read_to_string(&site)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("kernel-package"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&site, &config).unwrap();
    let (channel, python) = channel(&sandbox);
    let repo = sandbox.repo(
        "no-kernel-in-channel",
        &[("environment.yml", &environment(&channel, &python, ""))],
    );
    let output = sandbox.run(&["build", "--json", &repo]);
    let events = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}{events}", stderr(&output));
    assert!(
        events.contains("its channels do not have it; installing ipykernel from the Python index"),
        "{events}"
    );
    let last: serde_json::Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    let prefix = last["prefix"].as_str().unwrap();
    // Linking reports real progress, ending with every package linked.
    let linked: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Linked "))
        })
        .collect();
    assert_eq!(
        linked.last().and_then(|e| e["progress"].as_f64()),
        Some(1.0),
        "{events}"
    );
    let pip = std::fs::read_to_string(format!("{prefix}/hpcbinder/pip.lock")).unwrap();
    assert!(
        pip.contains("ipykernel==") && pip.contains("--hash=sha256:"),
        "{pip}"
    );
    let kernel_dir = Path::new(last["kernel_dir"].as_str().unwrap());
    common::run_cell(
        kernel_dir,
        "import ipykernel, hpcb_hello, sys; print(sys.prefix)",
        &std::fs::canonicalize(prefix).unwrap().display().to_string(),
        60,
    );

    // kernel-package = "conda" still forces the channels: a clear, solver-level error.
    std::fs::write(&site, format!("{config}kernel-package = \"conda\"\n")).unwrap();
    let forced = sandbox.repo(
        "forced-conda",
        &[(
            "environment.yml",
            &environment(&channel, &python, "  - hpcb-hello>=1.0\n"),
        )],
    );
    let output = sandbox.run(&["build", &forced]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("ipykernel"), "{}", stderr(&output));
}

/// A package whose `paths.json` leads out of the prefix (`..`, or a file under a symlink
/// the environment makes) is refused before anything is linked: the file it names
/// survives, and nothing is left ready (issue 10, finding 15).
#[test]
fn a_package_path_that_leaves_the_prefix_is_refused_before_linking() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let victim = sandbox.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let outside = sandbox.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut channel = Channel::new(&sandbox.path().join("channel"));
    let python = channel.add_python_stub();
    // From <store>/e/<key16>, enough `..` to reach the root, then the victim's path.
    let climb = "../".repeat(32);
    let entry = |path: String| serde_json::json!({"_path": path, "path_type": "hardlink", "sha256": "0".repeat(64), "size_in_bytes": 7});
    let mut dotdot = Package::noarch_python("hpcb-dotdot", "1.0");
    dotdot
        .files
        .push(("share/ok.txt".into(), "ok\n".into(), false));
    dotdot.raw_paths.push(entry(format!(
        "{climb}{}",
        victim.display().to_string().trim_start_matches('/')
    )));
    channel.add(&dotdot);
    let mut through = Package::noarch_python("hpcb-through", "1.0");
    through
        .symlinks
        .push(("share/evil".into(), outside.display().to_string()));
    through.raw_paths.push(entry("share/evil/owned.txt".into()));
    channel.add(&through);
    for (name, why) in [
        ("hpcb-dotdot", "leaves the environment through `..`"),
        ("hpcb-through", "goes through a symlink"),
    ] {
        let env = format!(
            "channels:\n  - {}\n  - nodefaults\ndependencies:\n  - python={python}\n  - {name}\n",
            channel.url()
        );
        let repo = sandbox.repo(name, &[("environment.yml", &env)]);
        let output = sandbox.run(&["build", &repo, "--no-kernel"]);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output).contains(&format!("the package {name} would write"))
                && stderr(&output).contains(why),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(std::fs::read_dir(sandbox.store().join("e"))
        .unwrap()
        .next()
        .is_none());
}
