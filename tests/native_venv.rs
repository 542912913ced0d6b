//! Real venv builds with uv from a local wheelhouse (filled from PyPI by scripts/test-deps),
//! registered as kernels that start and answer a cell over the Jupyter protocol.

mod common;

use std::path::Path;

use common::{stderr, Sandbox};

fn realpath(path: &str) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

#[test]
fn venv_build_registers_a_verified_kernel_and_reuses_it() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "six-demo",
        &[("requirements.txt", "six==1.16.0\n"), ("demo.ipynb", "{}")],
    );
    let ready = sandbox.build_ready(&[&repo]);
    let prefix = ready["prefix"].as_str().unwrap();
    let key = ready["key"].as_str().unwrap();
    assert_eq!(ready["reused"], false);
    assert_eq!(ready["target"], "venv");
    assert_eq!(
        ready["verified"],
        realpath(prefix),
        "the kernel ran a cell in the env"
    );
    assert_eq!(
        prefix,
        sandbox.store().join("e").join(&key[..16]).to_str().unwrap()
    );
    assert!(
        sandbox
            .store()
            .join(format!("e/{}.toml", &key[..16]))
            .is_file(),
        "ready marker"
    );

    // The kernelspec: absolute helper, absolute python, {connection_file} as its own element.
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    assert!(kernel_dir.starts_with(sandbox.path().join("jupyter/kernels")));
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kernel_dir.join("kernel.json")).unwrap())
            .unwrap();
    let argv: Vec<&str> = spec["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        argv[0],
        kernel_dir.join("kernel-helper.sh").to_str().unwrap()
    );
    assert_eq!(argv[1], format!("{prefix}/bin/python"));
    assert_eq!(
        &argv[2..],
        ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    );
    assert!(spec["display_name"].as_str().unwrap().contains("six-demo"));

    // The lock holds exactly what is installed, with hashes, including the added ipykernel.
    let lock = std::fs::read_to_string(format!("{prefix}/hpcbinder/requirements.lock")).unwrap();
    assert!(
        lock.contains("six==1.16.0")
            && lock.contains("--hash=sha256:")
            && lock.contains("ipykernel=="),
        "{lock}"
    );

    // A package from the requirements is importable in the kernel, started by hpcbinder's
    // verifier and, independently of it, by jupyter_client as a Jupyter server would.
    let cell = "import six, sys; print(sys.prefix, six.__version__)";
    let expected = format!("{} 1.16.0", realpath(prefix));
    common::run_cell(kernel_dir, cell, &expected, 60);
    common::jupyter::run_cell(kernel_dir, cell, &expected, 60);

    // Group-shareable: nothing world-writable anywhere in the env.
    for entry in walkdir::WalkDir::new(prefix)
        .into_iter()
        .map(Result::unwrap)
    {
        use std::os::unix::fs::PermissionsExt;
        if !entry.file_type().is_symlink() {
            let mode = entry.metadata().unwrap().permissions().mode();
            assert_eq!(
                mode & 0o002,
                0,
                "{} is world-writable",
                entry.path().display()
            );
            assert_ne!(
                mode & 0o040,
                0,
                "{} is not group-readable",
                entry.path().display()
            );
        }
    }

    // Second build: a cache hit that still registers the kernel.
    std::fs::remove_dir_all(kernel_dir).unwrap();
    let again = sandbox.build_ready(&[&repo, "--no-verify"]);
    assert_eq!(again["reused"], true);
    assert_eq!(again["prefix"], prefix);
    assert!(kernel_dir.join("kernel.json").is_file());
}

#[test]
fn post_build_and_start_run_in_the_environment() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "scripts",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("postBuild", "#!/bin/sh\nset -e\necho \"$VIRTUAL_ENV\" > \"$VIRTUAL_ENV/post-build-ran\"\ntest -f requirements.txt\n"),
            ("start", "#!/bin/sh\nexport HPCBINDER_START=from-start\nexec \"$@\"\n"),
        ],
    );
    let ready = sandbox.build_ready(&[&repo]);
    let prefix = ready["prefix"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("{prefix}/post-build-ran"))
            .unwrap()
            .trim(),
        prefix,
        "postBuild ran inside the env, from the repo root"
    );
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    common::run_cell(
        kernel_dir,
        "import os; print(os.environ['HPCBINDER_START'])",
        "from-start",
        60,
    );
}

#[test]
fn failing_post_build_leaves_nothing_ready() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "broken",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("postBuild", "#!/bin/sh\necho about to fail\nexit 3\n"),
        ],
    );
    let output = sandbox.run(&["build", &repo]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("postBuild failed (exit 3)") && err.contains("about to fail"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    let entries: Vec<_> = std::fs::read_dir(sandbox.store().join("e"))
        .unwrap()
        .collect();
    assert!(entries.is_empty(), "no prefix and no marker are left");
}

#[test]
fn a_kernel_that_does_not_start_fails_verification_but_keeps_the_env() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "bad-start",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("start", "#!/bin/sh\necho start is broken >&2\nexit 7\n"),
        ],
    );
    let output = sandbox.run(&["build", &repo, "--kernel-name", "bad"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("failed verification") && err.contains("start is broken"),
        "{err}"
    );
    assert!(
        !sandbox.path().join("jupyter/kernels/bad").exists(),
        "a broken kernelspec is not left behind"
    );
    let markers = std::fs::read_dir(sandbox.store().join("e"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert_eq!(markers, 1, "the environment itself is built and kept");
}

#[test]
fn unknown_package_and_missing_python_are_user_errors() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "typo",
        &[("requirements.txt", "sixx-does-not-exist==1.0\n")],
    );
    let output = sandbox.run(&["build", &repo]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("sixx-does-not-exist"),
        "{}",
        stderr(&output)
    );
    assert!(std::fs::read_dir(sandbox.store().join("e"))
        .unwrap()
        .next()
        .is_none());

    // Missing interpreters fall back to the site's conda channels: an empty local one
    // here, which has no Python either (and keeps the test off the network). It stays the
    // site config for the rest of this test.
    let empty_channel = sandbox.path().join("empty-channel");
    common::channel::Channel::new(&empty_channel);
    sandbox.native_site_config(&format!(
        "channels = [\"file://{}\"]\n",
        empty_channel.display()
    ));
    // The site's Python beats runtime.txt, and the user is told.
    let old = sandbox.repo("old-python", &[("runtime.txt", "python-3.4\n")]);
    let output = sandbox.run(&["build", &old, "--dry-run"]);
    assert!(
        stderr(&output).contains("runtime.txt asks for Python 3.4"),
        "{}",
        stderr(&output)
    );
    let output = sandbox.run(&["build", &old, "--python", "3.4"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no Python 3.4 interpreter"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("hint: install or `module load` Python 3.4"),
        "{}",
        stderr(&output)
    );
    // A supported version that is not installed here: hpcbinder says so and tries the
    // site's conda channels (the empty one above), which do not have it either.
    let output = sandbox.run(&["build", &old, "--python", "3.9"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no Python 3.9 interpreter"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn repository_package_is_installed_and_from_lock_rebuilds_without_resolving() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "package",
        &[
            ("pyproject.toml", "[project]\nname = \"hpcb-demo\"\nversion = \"0.1\"\ndependencies = [\"six\"]\n\n[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n"),
            ("hpcb_demo/__init__.py", "ANSWER = 42\n"),
            ("requirements.txt", "six==1.16.0\n"),
        ],
    );
    let ready = sandbox.build_ready(&[&repo]);
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    // The repository itself is installed, as repo2docker does.
    common::run_cell(
        kernel_dir,
        "import hpcb_demo; print(hpcb_demo.ANSWER)",
        "42",
        60,
    );

    // The lock of that build rebuilds the same packages elsewhere, without resolving.
    let lock = format!(
        "{}/hpcbinder/requirements.lock",
        ready["prefix"].as_str().unwrap()
    );
    let other = Sandbox::new();
    other.native_site_config("");
    let plain = other.repo("plain", &[("requirements.txt", "six\n")]);
    let again = other.build_ready(&[&plain, "--from-lock", &lock]);
    let installed = std::fs::read_to_string(format!(
        "{}/hpcbinder/requirements.lock",
        again["prefix"].as_str().unwrap()
    ))
    .unwrap();
    assert_eq!(installed, std::fs::read_to_string(&lock).unwrap());
    assert_ne!(
        again["key"].as_str().unwrap(),
        other.key(&[&plain]),
        "the lock enters the key"
    );
}

#[test]
fn site_modules_are_loaded_by_the_kernel_helper() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("modules = [\"gcc/12.2\", \"cray-python\"]\n");
    // `module` is a shell function on HPC systems; an executable on PATH stands in for it
    // here and records what the helper asked for.
    let bin = sandbox.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = sandbox.path().join("module-calls");
    std::fs::write(
        bin.join("module"),
        format!("#!/bin/sh\necho \"$@\" >> {}\n", record.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("module"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = sandbox.repo("modules", &[("requirements.txt", "six==1.16.0\n")]);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // The build's verification starts the kernel in the sandbox, where the stub cannot
    // write the record (it sees an empty /tmp): started here, as Jupyter would, it does.
    let output = sandbox
        .command()
        .args(["build", "--json", &repo])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let events = String::from_utf8_lossy(&output.stdout);
    let ready: serde_json::Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    assert!(events.contains("Kernel answered"), "{events}");
    let kernel = common::kernel_with_env(
        Path::new(ready["kernel_dir"].as_str().unwrap()),
        &sandbox.path().join("kernel-with-path"),
        &[("PATH", &path)],
    );
    common::run_cell(&kernel, "print('ok')", "ok", 60);
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "load gcc/12.2 cray-python\n"
    );
}

#[test]
fn without_uv_pip_is_used_with_a_warning() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    // Same config minus `uv`, and a PATH without uv.
    let config = std::fs::read_to_string(sandbox.path().join("site.toml")).unwrap();
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("uv ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(sandbox.path().join("site.toml"), config).unwrap();
    let repo = sandbox.repo("pip-only", &[("requirements.txt", "six==1.16.0\n")]);
    let output = sandbox
        .command()
        .args(["build", "--json", &repo])
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}{events}", stderr(&output));
    assert!(
        events.contains("uv not found; falling back to `python -m pip`"),
        "{events}"
    );
    assert!(events.contains("\"verified\""), "{events}");
}

#[test]
fn lock_files_the_repository_brings_are_installed_as_they_are() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let deps = common::test_deps();
    let uv = |dir: &str, args: &[&str]| {
        let output = std::process::Command::new(&deps.uv)
            .args(args)
            .args(["--offline", "--no-index", "--find-links"])
            .arg(&deps.wheelhouse)
            .current_dir(dir)
            .env("UV_CACHE_DIR", sandbox.path().join("uv-cache"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "uv {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let six_hash =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wheelhouse.txt"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("six=="))
            .and_then(|l| l.split("--hash=").nth(1))
            .unwrap()
            .to_string();
    let check = |ready: &serde_json::Value| {
        let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
        common::run_cell(
            kernel_dir,
            "import six; print(six.__version__)",
            "1.16.0",
            60,
        );
    };

    // uv.lock (+ pyproject.toml): `uv sync --frozen` into the environment.
    let project = sandbox.repo(
        "uv-project",
        &[(
            "pyproject.toml",
            "[project]\nname = \"uvdemo\"\nversion = \"0.1\"\nrequires-python = \">=3.10\"\ndependencies = [\"six==1.16.0\"]\n\n[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n",
        ), ("uvdemo/__init__.py", "")],
    );
    uv(&project, &["lock"]);
    let ready = sandbox.build_ready(&[&project]);
    check(&ready);
    assert!(Path::new(ready["prefix"].as_str().unwrap())
        .join("hpcbinder/uv.lock")
        .is_file());

    // pylock.toml (PEP 751), written by uv.
    let pylock = sandbox.repo("pylock", &[("requirements.in", "six==1.16.0\n")]);
    uv(
        &pylock,
        &[
            "pip",
            "compile",
            "requirements.in",
            "-o",
            "pylock.toml",
            "--python-version",
            &common::python_minor(),
        ],
    );
    std::fs::remove_file(format!("{pylock}/requirements.in")).unwrap();
    let ready = sandbox.build_ready(&[&pylock]);
    assert_eq!(ready["target"], "venv");
    check(&ready);

    // Pipfile.lock: its pins are installed in hash-checking mode (with a wrong hash the
    // install fails).
    let lock = format!(
        "{{\"_meta\": {{\"requires\": {{\"python_version\": \"{}\"}}}}, \"default\": {{\"six\": {{\"version\": \"==1.16.0\", \"hashes\": [\"{six_hash}\"]}}}}, \"develop\": {{}}}}\n",
        common::python_minor()
    );
    let pipfile = sandbox.repo(
        "pipfile",
        &[
            ("Pipfile", "[packages]\nsix = \"*\"\n"),
            ("Pipfile.lock", &lock),
        ],
    );
    let ready = sandbox.build_ready(&[&pipfile]);
    check(&ready);
    let tampered_lock = lock.replace(&six_hash[10..20], "0000000000");
    let tampered = sandbox.repo(
        "pipfile-tampered",
        &[
            ("Pipfile", "[packages]\nsix = \"*\"\n"),
            ("Pipfile.lock", &tampered_lock),
        ],
    );
    let output = sandbox.run(&["build", &tampered]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a Pipfile.lock hash mismatch must fail: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).to_lowercase().contains("hash"),
        "{}",
        stderr(&output)
    );
}

/// repo2docker's own `pipfile/setup-py-explicit` and `setup-py-explicit-in-binder-dir`
/// cases (a Pipfile entry `{path = ..., editable = true}` naming the repository), and the
/// same forms in a requirements file.
#[test]
fn pipfile_and_requirements_path_entries_install_what_they_name() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let setup_py = "from setuptools import find_packages, setup\nsetup(name=\"Dummy\", version=\"1.0.0\", packages=find_packages(), install_requires=[\"six==1.16.0\"])\n";
    for (name, pipfile, path) in [
        ("setup-py-explicit", "Pipfile", "."),
        ("setup-py-explicit-in-binder-dir", ".binder/Pipfile", ".."),
    ] {
        let repo = sandbox.repo(
            name,
            &[
                (
                    pipfile,
                    &format!(
                        "[packages]\nsix = \"*\"\ndummy = {{path=\"{path}\", editable=true}}\n"
                    ),
                ),
                ("setup.py", setup_py),
                ("dummy/__init__.py", "X = 1\n"),
            ],
        );
        let ready = sandbox.build_ready(&[&repo]);
        let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
        common::run_cell(
            kernel_dir,
            "import dummy, six; print(dummy.X, six.__version__)",
            "1 1.16.0",
            60,
        );
    }

    // requirements.txt: `-e .` and a local directory.
    let repo = sandbox.repo(
        "requirements-paths",
        &[
            ("requirements.txt", "-e .\n./vendored\n"),
            ("setup.py", setup_py),
            ("dummy/__init__.py", "X = 2\n"),
            (
                "vendored/pyproject.toml",
                "[project]\nname = \"vendored\"\nversion = \"0.1\"\n[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n",
            ),
            ("vendored/vendored/__init__.py", "Y = 3\n"),
        ],
    );
    let ready = sandbox.build_ready(&[&repo]);
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    common::run_cell(
        kernel_dir,
        "import dummy, vendored, six; print(dummy.X, vendored.Y, six.__version__)",
        "2 3 1.16.0",
        60,
    );

    // A Pipfile path that leaves the repository is refused, naming the Pipfile.
    let outside = sandbox.repo(
        "outside",
        &[(
            "Pipfile",
            "[packages]\nescape = {path=\"../setup-py-explicit\"}\n",
        )],
    );
    let output = sandbox.run(&["build", &outside]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("Pipfile") && stderr(&output).contains("outside the repository"),
        "{}",
        stderr(&output)
    );
}
