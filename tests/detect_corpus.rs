//! The detection corpus: every folder under `fixtures/detect/` is a repository; each
//! snapshots its `detect --json` (minus the machine-specific source identity) or, for
//! malformed repositories, its exit code and error.
//!
//! One test per case, so a failing case names itself and the others still run; a new
//! folder must be listed in `corpus!` below (`every_folder_is_a_listed_case` says so).

mod common;

use common::{fixtures, stderr, Sandbox};

/// What `detect` must do with a case.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// Exit 0 with the plan on stdout.
    Detected,
    /// Exit 1 (the repository is wrong or unsupported) with the error on stderr.
    Refused,
}

/// One `#[test]` per `test_name: "folder" => Outcome`, and `CASES`, the folders listed.
macro_rules! corpus {
    ($($test:ident: $case:literal => $outcome:ident,)*) => {
        $(
            #[test]
            fn $test() {
                check($case, Outcome::$outcome);
            }
        )*

        const CASES: &[&str] = &[$($case),*];
    };
}

corpus! {
    base_apt_postbuild_start: "base-apt-postbuild-start" => Detected,
    binder_dir: "binder-dir" => Detected,
    binder_dir_apt_start: "binder-dir-apt-start" => Detected,
    both_binder_dirs: "both-binder-dirs" => Refused,
    conda_basic: "conda-basic" => Detected,
    conda_explicit_as_environment: "conda-explicit-as-environment" => Detected,
    conda_lock_over_environment: "conda-lock-over-environment" => Detected,
    conda_nodefaults_variables: "conda-nodefaults-variables" => Detected,
    conda_pip_includes_requirements: "conda-pip-includes-requirements" => Detected,
    conda_python_2: "conda-python-2" => Detected,
    conda_python_lower_bound: "conda-python-lower-bound" => Detected,
    conda_python_space_star: "conda-python-space-star" => Detected,
    conda_runtime_ignored: "conda-runtime-ignored" => Detected,
    conda_with_pipfile: "conda-with-pipfile" => Detected,
    conda_with_requirements: "conda-with-requirements" => Detected,
    conda_yaml_extension: "conda-yaml-extension" => Detected,
    default_empty: "default-empty" => Detected,
    docker_binder_dir: "docker-binder-dir" => Detected,
    docker_legacy: "docker-legacy" => Refused,
    docker_simple: "docker-simple" => Detected,
    dot_binder_dir: "dot-binder-dir" => Detected,
    err_apt_name: "err-apt-name" => Refused,
    err_conda_channel: "err-conda-channel" => Refused,
    err_conda_dependency_type: "err-conda-dependency-type" => Refused,
    err_conda_lock_shape: "err-conda-lock-shape" => Refused,
    err_conda_not_mapping: "err-conda-not-mapping" => Refused,
    err_explicit_line: "err-explicit-line" => Refused,
    err_julia_project_toml: "err-julia-project-toml" => Refused,
    err_pip_include_missing: "err-pip-include-missing" => Refused,
    err_pipfile_lock_json: "err-pipfile-lock-json" => Refused,
    err_pixi_toml: "err-pixi-toml" => Refused,
    err_pyproject_toml: "err-pyproject-toml" => Refused,
    err_requirements_missing_include: "err-requirements-missing-include" => Refused,
    err_runtime: "err-runtime" => Refused,
    err_runtime_bad_date: "err-runtime-bad-date" => Refused,
    err_uv_lock_shape: "err-uv-lock-shape" => Refused,
    err_yaml_syntax: "err-yaml-syntax" => Refused,
    explicit_per_platform: "explicit-per-platform" => Detected,
    julia_project: "julia-project" => Detected,
    julia_require: "julia-require" => Refused,
    nix_simple: "nix-simple" => Detected,
    pipfile_basic: "pipfile-basic" => Detected,
    pipfile_lock: "pipfile-lock" => Detected,
    pipfile_with_requirements: "pipfile-with-requirements" => Detected,
    pipfile_with_setup_py: "pipfile-with-setup-py" => Detected,
    pixi_lock: "pixi-lock" => Detected,
    pixi_local_channel: "pixi-local-channel" => Detected,
    pixi_over_environment: "pixi-over-environment" => Detected,
    pixi_without_lock: "pixi-without-lock" => Detected,
    pylock_over_requirements: "pylock-over-requirements" => Detected,
    python_editable_install: "python-editable-install" => Detected,
    python_pyproject_package: "python-pyproject-package" => Detected,
    python_pyproject_tools_only: "python-pyproject-tools-only" => Detected,
    python_pyproject_with_requirements: "python-pyproject-with-requirements" => Detected,
    python_requirements: "python-requirements" => Detected,
    python_requirements_hashes: "python-requirements-hashes" => Detected,
    python_requirements_includes: "python-requirements-includes" => Detected,
    python_runtime: "python-runtime" => Detected,
    python_runtime_only: "python-runtime-only" => Detected,
    python_setup_py: "python-setup-py" => Detected,
    r_description: "r-description" => Detected,
    r_description_binder_dir: "r-description-binder-dir" => Detected,
    r_description_environment: "r-description-environment" => Detected,
    r_install_only: "r-install-only" => Detected,
    r_runtime_date: "r-runtime-date" => Detected,
    r_runtime_no_date: "r-runtime-no-date" => Detected,
    r_with_environment: "r-with-environment" => Detected,
    r_with_pipfile: "r-with-pipfile" => Detected,
    symlink_inside_repo: "symlink-inside-repo" => Detected,
    symlink_leaves_repo: "symlink-leaves-repo" => Refused,
    uv_lock: "uv-lock" => Detected,
}

fn check(case: &str, outcome: Outcome) {
    let sandbox = Sandbox::new();
    let root = fixtures().join("detect");
    let dir = root.join(case);
    assert!(dir.is_dir(), "{} is missing", dir.display());
    let output = sandbox.run(&["detect", dir.to_str().unwrap(), "--json"]);
    let code = output.status.code();
    let snapshot = if output.status.success() {
        let mut value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let source = value
            .as_object_mut()
            .unwrap()
            .remove("source")
            .expect("source identity");
        assert_eq!(source["kind"], "directory", "{case}");
        serde_json::to_string_pretty(&value).unwrap()
    } else {
        format!(
            "exit code: {code:?}\n{}",
            stderr(&output).replace(root.to_str().unwrap(), "[FIXTURES]")
        )
    };
    match outcome {
        Outcome::Detected => assert_eq!(code, Some(0), "{case} must succeed:\n{snapshot}"),
        Outcome::Refused => assert_eq!(
            code,
            Some(1),
            "{case} must fail with exit code 1:\n{snapshot}"
        ),
    }
    insta::assert_snapshot!(case, snapshot);
}

#[test]
fn every_folder_is_a_listed_case() {
    let mut folders: Vec<String> = std::fs::read_dir(fixtures().join("detect"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let unlisted: Vec<&String> = folders
        .iter()
        .filter(|folder| !CASES.contains(&folder.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "folders under fixtures/detect not listed in corpus! (tests/detect_corpus.rs): {unlisted:?}"
    );
    let mut listed = CASES.to_vec();
    listed.sort_unstable();
    listed.dedup();
    assert_eq!(listed.len(), CASES.len(), "a case is listed twice");
    assert!(
        CASES.len() >= 40,
        "the corpus must hold at least 40 cases, found {}",
        CASES.len()
    );
}
