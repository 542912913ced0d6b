//! How each buildpack's environment gets into an image, built for real with Podman from
//! the debootstrapped base image: conda environments linked for `/opt/env` from a local
//! `file://` channel written by the tests (conda-forge cannot be reached from here), R
//! with IRkernel from Debian's packages, and a repository's own Dockerfile.

mod common;

use std::path::Path;

use common::channel::{Channel, Package};
use common::{podman, Sandbox};

/// An environment.yml from a local channel whose `python` is a venv stub of Debian's
/// /usr/bin/python3.11, which the bookworm base image has at the same path.
fn conda_repo(sandbox: &Sandbox) -> String {
    let interpreter = "/usr/bin/python3";
    assert!(
        Path::new(interpreter).exists(),
        "the conda image test needs Debian's python3 on the host, as in the base image"
    );
    let mut channel = Channel::new(&sandbox.path().join("channel"));
    let python = channel.add_python_stub_of(interpreter);
    channel.add(&Package::hello());
    let env = format!(
        "name: demo\nchannels:\n  - {}\n  - nodefaults\ndependencies:\n  - python={python}\n  - hpcb-hello\n  - pip:\n    - six==1.16.0\nvariables:\n  HPCB_VARIABLE: from-env-file\n",
        channel.url()
    );
    sandbox.repo(
        "conda-image",
        &[
            ("environment.yml", &env),
            ("apt.txt", "jq\n"),
            ("analysis.ipynb", "{}"),
        ],
    )
}

#[test]
fn conda_images_hold_the_native_lock_and_run_their_kernels() {
    let sandbox = Sandbox::new();
    sandbox.container_site_config("");
    let repo = conda_repo(&sandbox);
    let cell = "import hpcb_hello, os, six, sys; print(sys.prefix, hpcb_hello.VERSION, six.__version__, os.environ.get('HPCB_VARIABLE'), open(sys.prefix + '/share/hpcb-hello/prefix.txt').read().strip())";
    let expected = "/opt/env 1.0 1.16.0 from-env-file installed at /opt/env";

    let ready = sandbox.build_ready(&[&repo, "--target", "podman"]);
    assert_eq!(ready["verified"], "/opt/env", "answered through podman run");
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    // Placeholders were rewritten for /opt/env.
    common::run_cell(kernel_dir, cell, expected, 120);

    // Charliecloud: the image's ENV (CONDA_PREFIX, `variables:`) survives the export.
    let ch = sandbox.build_ready(&[&repo, "--target", "charliecloud"]);
    assert_eq!(ch["verified"], "/opt/env", "answered through ch-run");
    let kernel_dir = Path::new(ch["kernel_dir"].as_str().unwrap());
    common::run_cell(kernel_dir, cell, expected, 120);

    // The same spec built natively (without apt.txt, which needs a container) holds the
    // same packages: identical conda and pip locks.
    std::fs::remove_file(format!("{repo}/apt.txt")).unwrap();
    let native = sandbox.build_ready(&[&repo, "--target", "conda"]);
    for lock in ["pixi.lock", "conda-linux-64.lock", "pip.lock"] {
        let read = |ready: &serde_json::Value| {
            let path = Path::new(ready["prefix"].as_str().unwrap())
                .join("hpcbinder")
                .join(lock);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // uv's comments name the paths it ran with; the requirements and hashes count.
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            read(&ready),
            read(&native),
            "{lock} differs between image and native env"
        );
    }
    let pip_lock = std::fs::read_to_string(
        Path::new(ready["prefix"].as_str().unwrap()).join("hpcbinder/pip.lock"),
    )
    .unwrap();
    assert!(pip_lock.contains("six==1.16.0") && pip_lock.contains("--hash=sha256:"));

    // --dry-run shows how the prefix gets in; nothing conda-specific runs in the build.
    let dry = sandbox.ok(&["build", &repo, "--target", "podman", "--dry-run"]);
    assert!(
        dry.contains("COPY --chown=1000:1000 hpcbinder/prefix/ /opt/env/"),
        "{dry}"
    );
    assert!(dry.contains("ENV HPCB_VARIABLE=\"from-env-file\""), "{dry}");
    assert!(dry.contains("-r /opt/hpcbinder/pip.lock"), "{dry}");
}

/// R from the base image's distribution (Debian's r-base-core and r-cran-irkernel,
/// installed from Debian's mirror in the build), install.R run before the repository, and
/// the site's CRAN mirror at the runtime.txt date. CRAN itself cannot be reached from here,
/// so install.R does not install from it.
#[test]
fn r_image_runs_an_irkernel_with_the_site_cran_mirror() {
    let sandbox = Sandbox::new();
    sandbox.container_site_config(
        "cran-mirror = \"https://packagemanager.example.org/cran/{date}\"\n",
    );
    let repo = sandbox.repo(
        "r-demo",
        &[
            ("runtime.txt", "r-4.2-2023-01-15\n"),
            (
                "install.R",
                "writeLines(getOption('repos')[['CRAN']], '/opt/install-r-saw-cran.txt')\n",
            ),
            ("analysis.ipynb", "{}"),
        ],
    );
    let ready = sandbox.build_ready(&[&repo, "--target", "podman"]);
    assert_eq!(
        ready["verified"], "hpcbinder-ok",
        "IRkernel answered through podman run"
    );
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    let kernel: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kernel_dir.join("kernel.json")).unwrap())
            .unwrap();
    assert_eq!(kernel["language"], "R");
    let cell = "cat(readLines('/opt/install-r-saw-cran.txt'), packageVersion('IRkernel') >= '1.0')";
    let expected = "https://packagemanager.example.org/cran/2023-01-15 TRUE";
    common::run_cell(kernel_dir, cell, expected, 120);
    // IRkernel through jupyter_client too, independently of hpcbinder's verifier.
    common::jupyter::run_cell(kernel_dir, cell, expected, 120);
    assert!(
        ready["runtime"].as_str().unwrap().starts_with("4.2."),
        "bookworm's R, as runtime.txt asks: {}",
        ready["runtime"]
    );

    // Another R version than the distribution's: built, with a warning that says so.
    let older = sandbox.repo(
        "r-older",
        &[
            ("runtime.txt", "r-4.1-2022-01-01\n"),
            ("analysis.ipynb", "{}"),
        ],
    );
    let output = sandbox.run(&["build", &older, "--target", "podman", "--no-kernel"]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(
        common::stderr(&output)
            .contains("warning: runtime.txt asks for R 4.1; the image has R 4.2."),
        "{}",
        common::stderr(&output)
    );

    // The mirror is a site input: changing it changes the key.
    sandbox.container_site_config("cran-mirror = \"https://cloud.r-project.org\"\n");
    assert_ne!(
        sandbox.key(&[&repo, "--target", "podman"]),
        ready["key"].as_str().unwrap()
    );
}

#[test]
fn a_repository_dockerfile_is_built_as_it_is() {
    let sandbox = Sandbox::new();
    sandbox.container_site_config("");
    let dockerfile = format!(
        "FROM {}\nCOPY hello.txt /hello.txt\nRUN test -f /hello.txt\n",
        common::base_image()
    );
    let repo = sandbox.repo(
        "dockerfile",
        &[("Dockerfile", &dockerfile), ("hello.txt", "hi\n")],
    );
    let ready = sandbox.build_ready(&[&repo, "--target", "podman", "--no-kernel"]);
    let image = ready["image"].as_str().unwrap();
    let run = podman(&["run", "--rm", image, "cat", "/hello.txt"]);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hi",
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The kernel names the image's own Python by its absolute path, found in the image.
    let again = sandbox.build_ready(&[&repo, "--target", "podman", "--no-verify"]);
    assert_eq!(again["reused"], true);
    let kernel_dir = Path::new(again["kernel_dir"].as_str().unwrap());
    let helper = std::fs::read_to_string(kernel_dir.join("kernel-helper.sh")).unwrap();
    assert!(
        helper.contains(&format!(
            "'{image}' '/usr/bin/python3' -m ipykernel_launcher"
        )),
        "{helper}"
    );
}
