//! Container targets built for real: Podman images from a base image made with
//! debootstrap (nothing pulled from a public registry), run through `podman run` (runc),
//! converted to Charliecloud directory + squashfs images run with `ch-run`, to SIF files
//! checked with `siftool` and run from their squashfs root with `ch-run`, and migrated by
//! a real podman-hpc. Shifter's registry push is in `shifter_registry.rs`; how each
//! buildpack's environment gets into an image, in `container_buildpacks.rs`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{podman, stderr, Sandbox, CONTAINERS_CONF};

#[test]
fn podman_image_runs_a_verified_kernel_and_notebook_changes_reuse_it() {
    let sandbox = Sandbox::new();
    sandbox.container_site_config("");
    let repo = common::container_demo(&sandbox);
    let ready = sandbox.build_ready(&[&repo, "--target", "podman"]);
    let key = ready["key"].as_str().unwrap();
    let image = ready["image"].as_str().unwrap();
    assert_eq!(
        image,
        format!("localhost/hpcbinder/container-demo:{}", &key[..16])
    );
    assert_eq!(
        ready["verified"], "/opt/env",
        "the kernel answered from inside the image, through podman run"
    );

    // The image carries the key; the kernel sees the apt package, postBuild's work and start.
    let labels = podman(&[
        "image",
        "inspect",
        "--format",
        "{{index .Labels \"org.hpcbinder.key\"}}",
        image,
    ]);
    assert_eq!(String::from_utf8_lossy(&labels.stdout).trim(), key);
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    let helper = std::fs::read_to_string(kernel_dir.join("kernel-helper.sh")).unwrap();
    assert!(
        helper.contains("podman run --rm -i --init --name \"$name\" --network host")
            && helper.contains("$runtime_dir:$runtime_dir"),
        "{helper}"
    );
    let cell = "import os, shutil, six; print(six.__version__, bool(shutil.which('jq')), open(os.path.expanduser('~/post-build-marker')).read().strip(), os.environ['HPCBINDER_START'])";
    let expected = "1.16.0 True built-by-postbuild from-start";
    common::run_cell(kernel_dir, cell, expected, 120);
    // The same through jupyter_client, independently of hpcbinder's verifier.
    common::jupyter::run_cell(kernel_dir, cell, expected, 120);
    // Stopped as Jupyter stops kernels (shutdown_request): no container is left running.
    let left = podman(&[
        "ps",
        "--all",
        "--quiet",
        "--filter",
        &format!("ancestor={image}"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "containers left behind"
    );
    // SIGTERM (`podman stop`) ends a running kernel's container promptly: the kernel is
    // not PID 1 (`--init`), so it does not ignore the signal (issue 11, finding 3).
    let hold = sandbox.path().join("release-kernel");
    let (mut command, _scratch) = common::jupyter::start_and_kill_command(
        kernel_dir,
        &format!("hold:{}", hold.display()),
        120,
    );
    let mut holder = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let running = loop {
        let ids = podman(&["ps", "--quiet", "--filter", &format!("ancestor={image}")]);
        let ids = String::from_utf8_lossy(&ids.stdout).trim().to_string();
        if !ids.is_empty() {
            break ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kernel never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let stopping = std::time::Instant::now();
    let stopped = podman(&["stop", "--time", "10", &running]);
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "SIGTERM took {:?} (podman waited for its SIGKILL)",
        stopping.elapsed()
    );
    std::fs::write(&hold, "").unwrap();
    let _ = holder.wait();
    // Killed as Jupyter kills a hung kernel (issue 11, finding 3), or the launcher alone
    // by SIGKILL: the container ends within seconds all the same.
    for mode in ["now", "sigkill"] {
        common::jupyter::start_and_kill(kernel_dir, mode, 120);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let left = podman(&[
                "ps",
                "--all",
                "--quiet",
                "--filter",
                &format!("ancestor={image}"),
            ]);
            if String::from_utf8_lossy(&left.stdout).trim().is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: a container outlived its kernel"
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    // A notebook-only change keeps the key: no rebuild. An env change gives a new key.
    std::fs::write(
        format!("{repo}/analysis.ipynb"),
        "{\"cells\": [\"edited\"]}\n",
    )
    .unwrap();
    let again = sandbox.build_ready(&[&repo, "--target", "podman"]);
    assert_eq!(again["reused"], true);
    assert_eq!(again["image"], image);
    std::fs::write(
        format!("{repo}/requirements.txt"),
        "six==1.16.0\n# changed\n",
    )
    .unwrap();
    assert_ne!(sandbox.key(&[&repo, "--target", "podman"]), key);

    // A local package the requirements name is built inside the image build, never on
    // the host (issue 10, finding 3), and the kernel imports it.
    std::fs::write(
        format!("{repo}/requirements.txt"),
        "six==1.16.0\n./localpkg\n",
    )
    .unwrap();
    std::fs::create_dir_all(format!("{repo}/localpkg/localpkg")).unwrap();
    std::fs::write(
        format!("{repo}/localpkg/setup.py"),
        "from setuptools import setup\nsetup(name='localpkg', version='1.0', packages=['localpkg'])\n",
    )
    .unwrap();
    std::fs::write(
        format!("{repo}/localpkg/localpkg/__init__.py"),
        "VALUE = 'built-in-the-image'\n",
    )
    .unwrap();
    let local = sandbox.build_ready(&[&repo, "--target", "podman"]);
    common::run_cell(
        Path::new(local["kernel_dir"].as_str().unwrap()),
        "import localpkg; print(localpkg.VALUE)",
        "built-in-the-image",
        120,
    );
}

#[test]
fn charliecloud_and_apptainer_images_run_under_ch_run() {
    let sandbox = Sandbox::new();
    sandbox.container_site_config("");
    let repo = common::container_demo(&sandbox);

    let ready = sandbox.build_ready(&[&repo, "--target", "charliecloud"]);
    let image = ready["image"].as_str().unwrap();
    assert!(
        Path::new(image).join("opt/env/bin/python").exists(),
        "a Charliecloud directory image"
    );
    assert_eq!(
        ready["verified"], "/opt/env",
        "the kernel answered through ch-run"
    );
    let squashfs = Path::new(ready["prefix"].as_str().unwrap()).join("image.sqfs");
    let listing = Command::new("unsquashfs")
        .arg("-l")
        .arg(&squashfs)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("opt/env/bin/python"));
    // The kernel through jupyter_client, independently of hpcbinder's verifier.
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    common::jupyter::run_cell(
        kernel_dir,
        "import os, six, sys; print(sys.prefix, six.__version__, os.environ['HPCBINDER_START'])",
        "/opt/env 1.16.0 from-start",
        120,
    );
    // Killed as Jupyter kills a hung kernel, or the launcher alone by SIGKILL: ch-run
    // execs into the kernel, so nothing of it is left (issue 11, finding 3).
    let charliecloud_kernels = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains("/mnt/hpcbinder/"))
            .count()
    };
    for mode in ["now", "sigkill"] {
        common::jupyter::start_and_kill(kernel_dir, mode, 120);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while charliecloud_kernels() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: a ch-run kernel outlived its launcher"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Apptainer: where it is installed, the kernel is verified through `apptainer exec`.
    // Without it, the SIF is written with siftool and verification is skipped (never
    // claimed); either way the SIF's squashfs root is run with ch-run below.
    let ready = sandbox.build_ready(&[&repo, "--target", "apptainer"]);
    let sif = ready["image"].as_str().unwrap();
    assert!(sif.ends_with("image.sif"));
    if on_path("apptainer") {
        assert_eq!(ready["verified"], "/opt/env", "{ready}");
        assert!(ready["verification"].is_null(), "{ready}");
        common::jupyter::run_cell(
            Path::new(ready["kernel_dir"].as_str().unwrap()),
            "import six, sys; print(sys.prefix, six.__version__)",
            "/opt/env 1.16.0",
            120,
        );
    } else {
        assert!(
            ready["verification"]
                .as_str()
                .unwrap()
                .starts_with("skipped: `apptainer` is not installed"),
            "{ready}"
        );
        assert!(ready["verified"].is_null(), "{ready}");
    }
    let list = Command::new("siftool")
        .args(["list", sif])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("FS") && list.contains("Squashfs"), "{list}");
    let info = Command::new("siftool")
        .args(["info", "1", sif])
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let work = sandbox.path().join("sif-root");
    std::fs::create_dir_all(&work).unwrap();
    let dump = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "siftool dump 1 {sif} > {}/root.sqfs",
            work.display()
        ))
        .status()
        .unwrap();
    assert!(dump.success());
    let unpack = Command::new("unsquashfs")
        .args(["-q", "-no-progress", "-d"])
        .arg(work.join("root"))
        .arg(work.join("root.sqfs"))
        .status()
        .unwrap();
    assert!(unpack.success());
    let run = Command::new("ch-run")
        .arg(work.join("root"))
        .args([
            "--",
            "/opt/env/bin/python",
            "-c",
            "import six, sys; print(sys.prefix, six.__version__)",
        ])
        .env("USER", "root")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "/opt/env 1.16.0",
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Whether `tool` is an executable on this process's PATH, which the sandboxed hpcbinder
/// inherits.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// podman-hpc from PyPI with a static mksquashfs built from Debian's source
/// (`scripts/podman-hpc-deps`); returns the directory to put on PATH.
fn podman_hpc_bin() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/podman-hpc-deps");
    let output = Command::new(&script).output().unwrap();
    assert!(
        output.status.success(),
        "scripts/podman-hpc-deps failed (run scripts/container-deps first):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn podman_hpc_migrates_to_a_group_readable_squash_dir_and_runs_the_kernel_from_it() {
    let sandbox = Sandbox::new();
    let squash = sandbox.path().join("squash");
    sandbox.container_site_config(&format!("squash-dir = \"{}\"\n", squash.display()));
    let repo = sandbox.repo(
        "hpc-demo",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("analysis.ipynb", "{}"),
        ],
    );
    // podman-hpc's own site config, as a centre writes /etc/podman_hpc/podman_hpc.yaml:
    // each user's build storage (fuse-overlayfs, as at NERSC) lives in this sandbox.
    let hpc = sandbox.path().join("podman-hpc");
    let conf = hpc.join("podman_hpc.yaml");
    std::fs::create_dir_all(&hpc).unwrap();
    std::fs::write(
        &conf,
        format!(
            "podman_bin: /usr/bin/podman\ngraph_root_template: {0}/graph\nrun_root_template: {0}/run\nconfig_home_template: {0}/config\n",
            hpc.display()
        ),
    )
    .unwrap();
    let path = format!("{}:{}", podman_hpc_bin(), std::env::var("PATH").unwrap());
    let podman_hpc = |args: &[&str]| {
        let output = Command::new("podman-hpc")
            .args(args)
            .env("PATH", &path)
            .env("USER", "root")
            .env("PODMANHPC_CONFIG_FILE", &conf)
            .env("SQUASH_DIR", &squash)
            .env("CONTAINERS_CONF", CONTAINERS_CONF)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "podman-hpc {args:?}: {}",
            stderr(&output)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    // The per-user store starts empty; the base image comes in as a centre would pull it.
    let archive = hpc.join("base.tar");
    let saved = podman(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        common::base_image(),
    ]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    podman_hpc(&["load", "-i", archive.to_str().unwrap()]);

    // podman-hpc exits 0 when its mksquashfs fails: hpcbinder checks for the squash file.
    let output = sandbox
        .command()
        .args(["build", &repo, "--target", "podman-hpc"])
        .env("PATH", &path)
        .env("USER", "root")
        .env("PODMANHPC_CONFIG_FILE", &conf)
        .env("PODMANHPC_MKSQUASHFS_BIN", "/bin/false")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("podman-hpc migrate left no squash file")
            && stderr(&output).contains("hint: podman-hpc needs a static mksquashfs"),
        "{}",
        stderr(&output)
    );
    assert!(
        std::fs::read_dir(sandbox.store().join("e"))
            .unwrap()
            .next()
            .is_none(),
        "nothing is marked ready"
    );

    // Under a private umask (077), as on many login nodes: the group still gets read access.
    let sealed = sandbox.command();
    let mut command = Command::new("sh");
    command.env_clear();
    for (name, value) in sealed.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    let output = command
        .current_dir(sandbox.path())
        .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_hpcbinder"))
        .args(["build", "--json", &repo, "--target", "podman-hpc"])
        .env("PATH", &path)
        .env("USER", "root")
        .env("PODMANHPC_CONFIG_FILE", &conf)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    let ready: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(ready["phase"], "ready", "{out}");
    assert_eq!(
        ready["verified"], "/opt/env",
        "the kernel answered through podman-hpc run"
    );
    // The image's layers are progress events (`STEP n/m`), ending at 1.
    let steps: Vec<f64> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("STEP "))
        })
        .filter_map(|e| e["progress"].as_f64())
        .collect();
    assert!(
        steps.len() >= 3 && steps.last() == Some(&1.0) && steps.windows(2).all(|w| w[0] < w[1]),
        "{steps:?}\n{out}"
    );
    let image = ready["image"].as_str().unwrap().to_string();

    // The migrated squashfs holds the environment and is readable by the group.
    let squashfs = ready["squashfs"]
        .as_str()
        .expect("the squash file in the ready event");
    assert!(squashfs.starts_with(squash.to_str().unwrap()), "{squashfs}");
    let listing = Command::new("unsquashfs")
        .arg("-l")
        .arg(squashfs)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("opt/env/bin/python"),
        "the image's top layer holds the environment"
    );
    for entry in walkdir::WalkDir::new(&squash) {
        use std::os::unix::fs::PermissionsExt;
        let entry = entry.unwrap();
        if entry.file_type().is_symlink() {
            continue;
        }
        let mode = entry.metadata().unwrap().permissions().mode();
        assert_eq!(
            mode & 0o040,
            0o040,
            "{} is not group-readable",
            entry.path().display()
        );
        assert_eq!(
            mode & 0o002,
            0,
            "{} is world-writable",
            entry.path().display()
        );
    }

    // The kernel runs from the squash dir alone: the build store's copy is removed.
    podman_hpc(&["rmi", &image]);
    let images = podman_hpc(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ReadOnly}}",
    ]);
    assert!(images.contains(&format!("{image} true")), "{images}");
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    let helper = std::fs::read_to_string(kernel_dir.join("kernel-helper.sh")).unwrap();
    assert!(
        helper.contains("exec podman-hpc run --rm -i --init --name \"$name\" --network host")
            && helper.contains(&format!("SQUASH_DIR='{}'", squash.display())),
        "{helper}"
    );
    // The kernel needs podman-hpc on PATH and its config, as on a login node: a copy of
    // the kernelspec that sets them (this process's environment is shared by other tests).
    let wrapped = common::kernel_with_env(
        kernel_dir,
        &sandbox.path().join("wrapped-kernels"),
        &[
            ("PATH", &path),
            ("PODMANHPC_CONFIG_FILE", conf.to_str().unwrap()),
            ("USER", "root"),
        ],
    );
    let cell = "import six, sys; print(sys.prefix, six.__version__)";
    common::run_cell(&wrapped, cell, "/opt/env 1.16.0", 120);
    common::jupyter::run_cell(&wrapped, cell, "/opt/env 1.16.0", 120);
    // Killed as Jupyter kills a hung kernel, or the launcher alone by SIGKILL: the
    // container goes within seconds all the same (issue 11, finding 3).
    for mode in ["now", "sigkill"] {
        common::jupyter::start_and_kill(&wrapped, mode, 120);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !podman_hpc(&["ps", "--quiet"]).trim().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: a podman-hpc container outlived its kernel"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // The kernel's container is cleaned up after its shutdown (podman's cleanup runs after
    // the client exits): wait for it before the sandbox, which holds the storage, goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = podman_hpc(&["ps", "--all", "--quiet"]);
        if left.trim().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containers left behind: {left}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for mount in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
        if mount.starts_with(hpc.to_str().unwrap()) {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

#[test]
fn dry_run_containerfile_only_and_bad_input() {
    let sandbox = Sandbox::new();
    sandbox.container_site_config("");
    let repo = common::container_demo(&sandbox);
    let plan = sandbox.ok(&["build", &repo, "--target", "podman", "--dry-run"]);
    assert!(
        plan.contains("containerfile:") && plan.contains(&format!("FROM {}", common::base_image())),
        "{plan}"
    );
    let env_line = plan
        .lines()
        .position(|l| l.starts_with("COPY hpcbinder/env/"))
        .unwrap();
    let repo_line = plan
        .lines()
        .position(|l| l.starts_with("COPY --chown=1000:1000 repo/"))
        .unwrap();
    assert!(
        env_line < repo_line,
        "environment files are copied before the repository"
    );

    let out = sandbox.path().join("context");
    let containerfile = sandbox.ok(&[
        "build",
        &repo,
        "--target",
        "podman",
        "--containerfile-only",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        containerfile.trim(),
        out.join("Containerfile").to_str().unwrap()
    );
    for file in [
        "Containerfile",
        "hpcbinder/uv",
        "hpcbinder/ca-bundle.crt",
        "hpcbinder/env/requirements.lock",
        "repo/apt.txt",
    ] {
        assert!(out.join(file).exists(), "{file} missing from the context");
    }
    let lock = std::fs::read_to_string(out.join("hpcbinder/env/requirements.lock")).unwrap();
    assert!(lock.contains("six==1.16.0") && lock.contains("--hash=sha256:"));

    // Missing engine, missing base image: clear errors, nothing marked ready.
    let output = sandbox.run(&["build", &repo, "--target", "podman-hpc"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("podman-hpc is not available"),
        "{}",
        stderr(&output)
    );
    sandbox.container_site_config("");
    let config = std::fs::read_to_string(sandbox.path().join("site.toml"))
        .unwrap()
        .replace(
            common::base_image(),
            "localhost/hpcbinder-test/no-such-image:1",
        );
    std::fs::write(sandbox.path().join("site.toml"), config).unwrap();
    let output = sandbox.run(&["build", &repo, "--target", "podman"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("base image localhost/hpcbinder-test/no-such-image:1 is not available"),
        "{}",
        stderr(&output)
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
    assert_eq!(markers, 0);
}

/// Needs PyPI (through this machine's TLS-intercepting proxy, as at many HPC sites).
#[test]
fn downloads_inside_the_build_use_the_site_ca_bundle_pypi() {
    let sandbox = Sandbox::new();
    let deps = common::test_deps();
    let write_config = |extra: &str| {
        std::fs::write(
            sandbox.path().join("site.toml"),
            format!(
                "python = \"{}\"\nuv = \"{}\"\nbase-image = \"{}\"\npodman-isolation = \"chroot\"\ncontainers-conf = \"{CONTAINERS_CONF}\"\n{extra}",
                common::python_minor(),
                deps.uv.display(),
                common::base_image()
            ),
        )
        .unwrap();
    };
    let repo = sandbox.repo("from-pypi", &[("requirements.txt", "six==1.16.0\n")]);

    // The host's bundle (the default): resolving here and downloading inside the build work.
    write_config("");
    let ready = sandbox.build_ready(&[&repo, "--target", "podman"]);
    assert_eq!(ready["verified"], "/opt/env");

    // An empty bundle and a ready lock (so nothing is resolved on the host): the download
    // inside the build cannot trust the proxy, and the build fails.
    let lock = Path::new(ready["prefix"].as_str().unwrap()).join("hpcbinder/requirements.lock");
    let empty = sandbox.path().join("empty-ca.crt");
    std::fs::write(&empty, "").unwrap();
    write_config(&format!("ca-bundle = \"{}\"\n", empty.display()));
    let output = sandbox.run(&[
        "build",
        &repo,
        "--target",
        "podman",
        "--no-kernel",
        "--from-lock",
        lock.to_str().unwrap(),
    ]);
    assert!(
        !output.status.success(),
        "a build without the proxy's CA must not reach PyPI"
    );
    let err = stderr(&output);
    assert!(err.contains("podman build failed"), "{err}");
    assert!(
        err.contains("certificate") || err.contains("error sending request"),
        "not a TLS failure: {err}"
    );
}
