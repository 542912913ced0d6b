//! Findings of the audit of hostile repositories (issue 10), each reproduced: kernel
//! names that leave the kernels directory or take another repository's kernel,
//! Containerfile injection through `variables:` names, symlinked directories that lead
//! out of the repository, and spec files built to make parsing take forever.

mod common;

use std::time::{Duration, Instant};

use common::{stderr, Sandbox};

#[test]
fn kernel_names_must_be_jupyters_and_never_take_another_repositorys_kernel() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("names", &[("requirements.txt", "six==1.16.0\n")]);
    // A victim directory that the old `--kernel-name /tmp/x/victim` removed.
    let victim = sandbox.path().join("victim/important");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("data.txt"), "keep me").unwrap();
    for name in [
        "../../escape",
        &sandbox.path().join("victim").display().to_string(),
        "..",
        "a b",
        "ok\nno",
        &"x".repeat(101),
    ] {
        let output = sandbox.run(&["build", &repo, "--no-verify", "--kernel-name", name]);
        assert_eq!(output.status.code(), Some(1), "{name}: {}", stderr(&output));
        assert!(
            stderr(&output).contains("invalid kernel name")
                && stderr(&output).contains("hint: kernel names are letters, digits"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(
        std::fs::read_to_string(victim.join("data.txt")).unwrap(),
        "keep me"
    );
    assert!(!sandbox.path().join("escape").exists());
    assert!(
        !sandbox.store().join("e").exists()
            || std::fs::read_dir(sandbox.store().join("e"))
                .unwrap()
                .count()
                == 0,
        "refused before anything was built"
    );

    // Another repository cannot take the name; --replace can.
    sandbox.build_ready(&[&repo, "--no-verify", "--kernel-name", "team"]);
    let other = sandbox.repo("other", &[("requirements.txt", "six==1.16.0\n# other\n")]);
    let output = sandbox.run(&["build", &other, "--no-verify", "--kernel-name", "team"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("a kernel named `team`")
            && stderr(&output).contains("belongs to another environment")
            && stderr(&output).contains("--replace"),
        "{}",
        stderr(&output)
    );
    let kernel = sandbox.path().join("jupyter/kernels/team/kernel.json");
    let before = std::fs::read_to_string(&kernel).unwrap();
    assert!(before.contains("names"), "{before}");
    sandbox.build_ready(&[&other, "--no-verify", "--kernel-name", "team", "--replace"]);
    assert!(std::fs::read_to_string(&kernel).unwrap().contains("other"));

    // The same repository's kernel follows it to a new environment.
    std::fs::write(
        std::path::Path::new(&other).join("requirements.txt"),
        "six==1.16.0\n# changed\n",
    )
    .unwrap();
    sandbox.build_ready(&[&other, "--no-verify", "--kernel-name", "team"]);

    // A kernelspec hpcbinder did not write is not replaced either.
    let foreign = sandbox.path().join("jupyter/kernels/python3");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("kernel.json"),
        r#"{"argv": ["python3"], "display_name": "Python 3", "language": "python"}"#,
    )
    .unwrap();
    let output = sandbox.run(&["build", &repo, "--no-verify", "--kernel-name", "python3"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("not written by hpcbinder"));
}

#[test]
fn variable_names_cannot_inject_containerfile_lines() {
    let sandbox = Sandbox::new();
    let repo = sandbox.repo(
        "inject",
        &[(
            "environment.yml",
            "dependencies: [python=3.11]\nvariables:\n  \"A=1\\nUSER root\\nRUN touch /pwned\\nENV B\": x\n",
        )],
    );
    for args in [
        vec!["detect", repo.as_str()],
        vec![
            "build",
            repo.as_str(),
            "--target",
            "podman",
            "--dry-run",
            "--base-image",
            "debian:12",
        ],
    ] {
        let output = sandbox.run(&args);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("environment.yml:")
                && stderr(&output).contains("is not a variable name"),
            "{}",
            stderr(&output)
        );
        assert!(!String::from_utf8_lossy(&output.stdout).contains("USER root"));
    }
}

#[test]
fn symlinked_directories_do_not_lead_out_of_the_repository() {
    let sandbox = Sandbox::new();
    let outside = sandbox.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("requirements.txt"), "secret-package==1.0\n").unwrap();
    std::fs::write(outside.join("passwd"), "root:x:0:0\n").unwrap();
    let repo = sandbox.repo(
        "links",
        &[
            ("requirements.txt", "six\n-r sub/passwd\n"),
            ("notes.md", ""),
        ],
    );
    let repo_path = std::path::Path::new(&repo);
    std::os::unix::fs::symlink(&outside, repo_path.join("sub")).unwrap();
    // `-r sub/passwd` through a symlinked directory: refused as leaving the repository.
    let output = sandbox.run(&["detect", &repo, "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("requirements.txt:2: includes `sub/passwd`, which is outside the repository"),
        "{}",
        stderr(&output)
    );
    // An absolute include is not mistaken for a file inside the repository.
    std::fs::create_dir_all(repo_path.join("etc")).unwrap();
    std::fs::write(repo_path.join("etc/decoy"), "six\n").unwrap();
    std::fs::write(repo_path.join("requirements.txt"), "-r /etc/decoy\n").unwrap();
    let output = sandbox.run(&["detect", &repo]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("outside the repository"),
        "{}",
        stderr(&output)
    );
    // environment.yml's pip section: `-r /abs` is refused the same way.
    let conda = sandbox.repo(
        "pip-abs",
        &[(
            "environment.yml",
            &format!(
                "dependencies:\n  - python=3.11\n  - pip:\n    - -r {}\n",
                outside.join("requirements.txt").display()
            ),
        )],
    );
    let output = sandbox.run(&["detect", &conda]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("environment.yml:4: the pip section includes")
            && stderr(&output).contains("outside the repository"),
        "{}",
        stderr(&output)
    );
    // `binder -> /outside`: nothing in it is read.
    let binder = sandbox.repo("binder-link", &[("README.md", "")]);
    std::os::unix::fs::symlink(&outside, std::path::Path::new(&binder).join("binder")).unwrap();
    let output = sandbox.run(&["key", &binder, "--json", "--explain"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(!text.contains("file:requirements.txt"), "{text}");
    assert!(text.contains("leaves the repository"), "{text}");
    // `start -> /proc/self/environ` (the builder's environment, a service token with it)
    // and `postBuild -> a script elsewhere`: refused, nothing built.
    for (name, target) in [
        ("start", std::path::PathBuf::from("/proc/self/environ")),
        ("postBuild", outside.join("passwd")),
    ] {
        let linked = sandbox.repo(&format!("{name}-link"), &[("requirements.txt", "six\n")]);
        std::os::unix::fs::symlink(&target, std::path::Path::new(&linked).join(name)).unwrap();
        let output = sandbox.run(&["build", &linked, "--dry-run"]);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output).contains(&format!("{name} is a symlink that leaves the repository")),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn hostile_spec_files_fail_fast_with_a_clear_error() {
    let sandbox = Sandbox::new();
    let brackets = sandbox.repo("brackets", &[("environment.yml", &"[".repeat(320 * 1024))]);
    let start = Instant::now();
    let output = sandbox.run(&["detect", &brackets]);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("environment.yml:1: nested more than 64 levels deep"),
        "{}",
        stderr(&output)
    );
    let big = sandbox.repo("big", &[("requirements.txt", &"six\n".repeat(300 * 1024))]);
    let output = sandbox.run(&["detect", &big]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("too large for a spec file (the limit is 1 MiB)"),
        "{}",
        stderr(&output)
    );
}

/// Credentials in a clone URL reach neither the cached clone's config (readable by other
/// members of a shared store), nor kernel names, nor any message. The server here is a
/// closed loopback port: the fetch fails, after the clone's config was written.
#[test]
fn credentials_in_clone_urls_are_never_written_or_printed() {
    let sandbox = Sandbox::new();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let query = Sandbox::new();
    for (sandbox, url) in [
        (
            &sandbox,
            format!("https://alice:SECRET-TOKEN@127.0.0.1:{port}/org/repo.git"),
        ),
        (&sandbox, format!("https://SECRET-TOKEN@127.0.0.1:{port}")),
        // Only printed forms matter here: git keeps a query in the remote's URL.
        (
            &query,
            format!("https://127.0.0.1:{port}/org/repo.git?private_token=SECRET-TOKEN"),
        ),
    ] {
        let output = sandbox.run(&["build", "--json", &url, "--dry-run"]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output)
        );
        assert_eq!(output.status.code(), Some(2), "{all}");
        assert!(!all.contains("SECRET-TOKEN"), "{all}");
        assert!(all.contains("could not fetch"), "{all}");
    }
    let cache = sandbox.store().join("cache");
    for entry in walkdir::WalkDir::new(&cache).into_iter().flatten() {
        if entry.file_type().is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
            assert!(
                !text.contains("SECRET-TOKEN"),
                "{} holds the token:\n{text}",
                entry.path().display()
            );
        }
    }
}

/// Without HOME (or JUPYTER_DATA_DIR) a kernelspec used to land under the working
/// directory with a relative argv[0]: now the build refuses before building.
#[test]
fn no_home_means_no_kernel_in_the_working_directory() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo("homeless", &[("requirements.txt", "six==1.16.0\n")]);
    let output = sandbox
        .command()
        .args(["build", &repo, "--no-verify"])
        .env_remove("HOME")
        .env_remove("JUPYTER_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("neither JUPYTER_DATA_DIR nor HOME is set")
            && stderr(&output).contains("hint: pass --kernel-dir DIR"),
        "{}",
        stderr(&output)
    );
    assert!(!sandbox.path().join(".local").exists());
}

/// uv expands `${VAR}` in the requirement lines hpcbinder writes: a Pipfile path naming a
/// directory called `${HOME}` would have pointed uv at the builder's home.
#[test]
fn paths_uv_would_expand_are_refused() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "expand",
        &[
            ("Pipfile", "[packages]\nescape = {path = \"${HOME}\"}\n"),
            (
                "${HOME}/setup.py",
                "from setuptools import setup\nsetup(name='escape')\n",
            ),
        ],
    );
    let output = sandbox.run(&["build", &repo, "--no-verify"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("holds `$` or a line break"),
        "{}",
        stderr(&output)
    );
}

/// A remote repository may use only the package sources the site allows (finding 16):
/// the public hosts by default, `package-sources` when the site lists them; never a
/// loopback server, a `--trusted-host`, or a lock's URL elsewhere. Served by a real
/// `git daemon` on loopback; the same repository as a local directory is the user's
/// own and builds its plan, unless the site turns local sources off (the service's
/// setting), when local paths and images in this machine's storage are refused too.
#[test]
fn remote_repositories_use_only_the_package_sources_the_site_allows() {
    let sandbox = Sandbox::new();
    let served = sandbox.path().join("served");
    let repos: &[(&str, &str, &str)] = &[
        ("loopback-index", "requirements.txt", "--index-url http://127.0.0.1:1/simple\nsix\n"),
        ("pytorch", "requirements.txt", "--extra-index-url https://download.pytorch.org/whl/cpu\nsix\n"),
        ("trusted", "requirements.txt", "--trusted-host pypi.org\nsix\n"),
        ("internal-channel", "environment.yml", "channels:\n  - https://internal.example/conda\ndependencies:\n  - python=3.11\n"),
        ("public-channel", "environment.yml", "channels:\n  - conda-forge\n  - https://conda.anaconda.org/bioconda\ndependencies:\n  - python=3.11\n"),
        ("metadata-lock", "explicit-linux-64.txt", "@EXPLICIT\nhttp://169.254.169.254/latest/python-3.11.0-h0_0.conda#0123456789abcdef0123456789abcdef\n"),
        ("local-image", "Dockerfile", "FROM localhost/hpcbinder-test/tenant:1\n"),
    ];
    for (name, file, contents) in repos {
        let repo = common::GitRepo::init(&served.join(name));
        repo.write(file, contents);
        repo.commit(name);
    }
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    // git-daemon itself (not the `git daemon` wrapper, whose child would outlive a kill),
    // with no inherited output pipes.
    let exec_path = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .unwrap();
    let exec_path = String::from_utf8(exec_path.stdout).unwrap();
    let mut daemon =
        std::process::Command::new(std::path::Path::new(exec_path.trim()).join("git-daemon"))
            .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", served.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git-daemon");
    let url = |name: &str| format!("git://127.0.0.1:{port}/{name}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::process::Command::new("git")
        .args(["ls-remote", &url("pytorch")])
        .output()
        .map_or(true, |o| !o.status.success())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let plan = |name: &str, target: &str| {
        let output = sandbox.run(&["build", &url(name), "--dry-run", "--target", target]);
        (output.status.code(), stderr(&output))
    };
    let refused = "names package sources the site does not allow";
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "loopback-index",
            "venv",
            Some("requirements.txt: --index-url http://127.0.0.1:1/simple"),
        ),
        (
            "pytorch",
            "venv",
            Some("requirements.txt: --extra-index-url https://download.pytorch.org/whl/cpu"),
        ),
        (
            "trusted",
            "venv",
            Some("requirements.txt: --trusted-host pypi.org"),
        ),
        (
            "internal-channel",
            "conda",
            Some("environment.yml: channel https://internal.example/conda"),
        ),
        ("public-channel", "conda", None),
        (
            "metadata-lock",
            "conda",
            Some("explicit-linux-64.txt: http://169.254.169.254/latest/"),
        ),
    ];
    for (name, target, expected) in cases {
        let (code, err) = plan(name, target);
        match expected {
            Some(expected) => {
                assert_eq!(code, Some(1), "{name}: {err}");
                assert!(
                    err.contains(refused) && err.contains(expected),
                    "{name}: {err}"
                );
            }
            None => assert_eq!(code, Some(0), "{name}: {err}"),
        }
    }
    // The site lists what it allows: the PyTorch index now, and no longer bioconda.
    std::fs::write(
        sandbox.path().join("site.toml"),
        "package-sources = [\"https://download.pytorch.org/whl\", \"conda-forge\"]\n",
    )
    .unwrap();
    assert_eq!(plan("pytorch", "venv").0, Some(0));
    let (code, err) = plan("public-channel", "conda");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("channel https://conda.anaconda.org/bioconda")
            && !err.contains("channel conda-forge"),
        "{err}"
    );
    // The same repository, local: the user's own choice.
    let local = served.join("loopback-index");
    let output = sandbox.run(&["build", local.to_str().unwrap(), "--dry-run"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // Without local sources (the service): no local path, no loopback source, no image
    // from this machine's storage or behind a short name, whoever's repository it is.
    std::fs::write(sandbox.path().join("site.toml"), "local-sources = false\n").unwrap();
    let output = sandbox.run(&["build", local.to_str().unwrap(), "--dry-run"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("is a path on this machine, and this site allows no local sources"),
        "{}",
        stderr(&output)
    );
    // Nor a repository on this machine's network address, unless the site lists its host
    // (a site's own git server on loopback, as here).
    let (code, err) = plan("loopback-index", "venv");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("this machine or a link-local address"),
        "{err}"
    );
    std::fs::write(
        sandbox.path().join("site.toml"),
        "local-sources = false\nsource-hosts = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    let (code, err) = plan("loopback-index", "venv");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("allows no package sources on this machine"),
        "{err}"
    );
    let (code, err) = plan("local-image", "podman");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Dockerfile: image localhost/hpcbinder-test/tenant:1 (it is on this machine)"),
        "{err}"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A site index URL with a credential stays out of every artefact and every output
/// (finding 17): the Containerfile reads it from a build secret, `key --explain`,
/// the plan and `config show` redact it.
#[test]
fn index_credentials_stay_out_of_containerfiles_keys_and_output() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config(
        "base-image = \"localhost/hpcbinder-test/any:1\"\npip-index-url = \"https://builder:s3cret@127.0.0.1:9/simple\"\n",
    );
    let repo = sandbox.repo("indexed", &[("requirements.txt", "six\n")]);
    let out = sandbox.path().join("context");
    sandbox.ok(&[
        "build",
        &repo,
        "--target",
        "podman",
        "--containerfile-only",
        out.to_str().unwrap(),
    ]);
    let containerfile = std::fs::read_to_string(out.join("Containerfile")).unwrap();
    assert!(
        containerfile.contains("RUN --mount=type=secret,id=pip-index export UV_INDEX_URL=\"$(cat /run/secrets/pip-index)\""),
        "{containerfile}"
    );
    for (what, text) in [
        ("Containerfile", containerfile),
        ("key --explain", sandbox.ok(&["key", &repo, "--explain"])),
        (
            "the plan",
            sandbox.ok(&["build", &repo, "--target", "podman", "--dry-run", "--json"]),
        ),
        ("config show", sandbox.ok(&["config", "show"])),
        (
            "config show --json",
            sandbox.ok(&["config", "show", "--json"]),
        ),
    ] {
        assert!(
            !text.contains("s3cret"),
            "{what} shows the credential:\n{text}"
        );
    }
}

/// uv is given only what hpcbinder wrote from lines detection checked (finding 13):
/// `-r` includes are inlined, `-c` constraints copied beside them, and no repository
/// path reaches uv. A line uv would expand (`${VAR}`) or a local path leaving the
/// repository, in a requirements file, an environment.yml pip section or a lock, is
/// refused at detection with its file and line.
#[test]
fn uv_reads_only_what_hpcbinder_wrote() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repo = sandbox.repo(
        "inlined",
        &[
            ("requirements.txt", "-r reqs/base.txt\n-c reqs/pins.txt\n"),
            ("reqs/base.txt", "six  # the one package\n"),
            ("reqs/pins.txt", "six==1.16.0\n"),
        ],
    );
    let ready = sandbox.build_ready(&[&repo, "--no-verify"]);
    let prefix = std::path::Path::new(ready["prefix"].as_str().unwrap());
    let input = std::fs::read_to_string(prefix.join("hpcbinder/requirements.in")).unwrap();
    let constraints = prefix.join("hpcbinder/constraints.txt");
    assert!(input.contains("\nsix\n"), "{input}");
    assert!(
        input.contains(&format!("-c {}", constraints.display())),
        "{input}"
    );
    assert!(!input.contains("-r ") && !input.contains(&repo), "{input}");
    assert_eq!(
        std::fs::read_to_string(&constraints).unwrap(),
        "six==1.16.0\n"
    );
    let lock = std::fs::read_to_string(prefix.join("hpcbinder/requirements.lock")).unwrap();
    assert!(lock.contains("six==1.16.0"), "{lock}");
    // The copied constraints are what uv resolves against: one nothing satisfies fails.
    std::fs::write(format!("{repo}/reqs/pins.txt"), "six>=99\n").unwrap();
    let output = sandbox.run(&["build", &repo, "--no-verify"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("six"), "{}", stderr(&output));

    let outside = sandbox.path().join("outside-pkg");
    std::fs::create_dir_all(&outside).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "requirements.txt",
            "six\n${HOME}/pkg\n".into(),
            "requirements.txt:2: `${HOME}/pkg` names an environment variable",
        ),
        (
            "requirements.txt",
            format!("six\nescape @ file://{}\n", outside.display()),
            "is outside the repository",
        ),
        (
            "requirements.txt",
            "-e ../outside-pkg\n".into(),
            "requirements.txt:1: `-e ../outside-pkg` installs `../outside-pkg`, which is outside the repository",
        ),
        (
            "environment.yml",
            "dependencies:\n  - python=3.11\n  - pip:\n    - six\n    - ${HOME}/pkg\n".into(),
            "environment.yml:5: `${HOME}/pkg` names an environment variable",
        ),
        (
            "pylock.toml",
            format!(
                "lock-version = \"1.0\"\ncreated-by = \"test\"\n[[packages]]\nname = \"escape\"\ndirectory = {{ path = \"{}\" }}\n",
                outside.display()
            ),
            "pylock.toml:5: a package's path",
        ),
        (
            "uv.lock",
            "version = 1\n[[package]]\nname = \"escape\"\nversion = \"1.0\"\nsource = { directory = \"../../outside-pkg\" }\n".into(),
            "uv.lock:5: a package's path `../../outside-pkg` is outside the repository",
        ),
    ];
    for (index, (file, contents, expected)) in cases.iter().enumerate() {
        let hostile = sandbox.repo(&format!("hostile-{index}"), &[(file, contents)]);
        let output = sandbox.run(&["detect", &hostile]);
        assert_eq!(output.status.code(), Some(1), "{file}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(expected),
            "{file}: {}",
            stderr(&output)
        );
    }
}

/// An image's local packages are built inside the image build, never on the host
/// (finding 3): `--containerfile-only` of a requirements file holding `.` does not run
/// the repository's setup.py, even with the sandbox off; the line goes to
/// `local-requirements.txt`, installed after the repository is copied in.
#[test]
fn image_builds_run_no_repository_code_on_the_host() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config(
        "sandbox = \"none\"\nbase-image = \"localhost/hpcbinder-test/any:1\"\n",
    );
    let marker = sandbox.path().join("setup-py-ran-on-the-host");
    let repo = sandbox.repo(
        "local-package",
        &[
            ("requirements.txt", "six\n.\n"),
            (
                "setup.py",
                &format!(
                    "import pathlib\npathlib.Path({:?}).write_text('x')\nfrom setuptools import setup\nsetup(name='local', version='1.0')\n",
                    marker.display().to_string()
                ),
            ),
        ],
    );
    let out = sandbox.path().join("context");
    sandbox.ok(&[
        "build",
        &repo,
        "--target",
        "podman",
        "--containerfile-only",
        out.to_str().unwrap(),
    ]);
    assert!(!marker.exists(), "setup.py ran on the host");
    assert_eq!(
        std::fs::read_to_string(out.join("hpcbinder/env/local-requirements.txt")).unwrap(),
        ".\n"
    );
    let lock = std::fs::read_to_string(out.join("hpcbinder/env/requirements.lock")).unwrap();
    assert!(lock.contains("six==") && !lock.contains("local"), "{lock}");
    let containerfile = std::fs::read_to_string(out.join("Containerfile")).unwrap();
    let repo_line = containerfile.find("COPY --chown=1000:1000 repo/").unwrap();
    let local_line = containerfile
        .find("-r /opt/hpcbinder/local-requirements.txt")
        .unwrap_or_else(|| panic!("{containerfile}"));
    assert!(repo_line < local_line, "{containerfile}");
    // A native build of the same repository does run it: in the sandbox, when on.
    let output = sandbox.run(&["build", &repo, "--no-kernel"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(marker.exists(), "the native build installs the package");
}
