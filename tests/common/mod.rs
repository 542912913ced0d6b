//! Shared helpers: run the real binary in a sealed environment, build git fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A sealed home for one test: temporary HOME, XDG dirs, Jupyter dir and store.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

/// Images the sandbox's builds made are removed with it: each test run tags new ones (the
/// key holds the sandbox's paths), and a CI machine filled its disk with them. An image
/// is the sandbox's when its `org.hpcbinder.source` label names a path inside it.
impl Drop for Sandbox {
    fn drop(&mut self) {
        let Ok(markers) = std::fs::read_dir(self.store().join("e")) else {
            return;
        };
        let markers: Vec<String> = markers
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter(|text| text.contains("[artifact]"))
            .collect();
        if markers.is_empty() {
            return;
        }
        // The images the markers name (a Dockerfile's image has no labels of ours), and
        // those labelled with this sandbox's sources (Charliecloud's and Apptainer's
        // intermediate Podman images).
        let named = regex::Regex::new(r"localhost/hpcbinder/[a-z0-9._-]+:[0-9a-f]{16}").unwrap();
        let mut ids: Vec<String> = markers
            .iter()
            .flat_map(|text| named.find_iter(text).map(|m| m.as_str().to_string()))
            .collect();
        let Ok(listed) = Command::new("podman")
            .args(["images", "--filter", "label=org.hpcbinder.key", "--format"])
            .arg("{{.ID}} {{index .Labels \"org.hpcbinder.source\"}}")
            .env("CONTAINERS_CONF", CONTAINERS_CONF)
            .output()
        else {
            return;
        };
        let mine = format!("{}/", self.path().display());
        ids.extend(
            String::from_utf8_lossy(&listed.stdout)
                .lines()
                .filter(|line| line.contains(&mine))
                .filter_map(|line| line.split_whitespace().next().map(str::to_string)),
        );
        if !ids.is_empty() {
            let _ = Command::new("podman")
                .args(["rmi", "--force", "--ignore"])
                .args(&ids)
                .env("CONTAINERS_CONF", CONTAINERS_CONF)
                .output();
        }
    }
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// The binary with nothing from the developer's environment: no colour, no config,
    /// fixed width, and a site config path that does not exist unless a test writes it.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hpcbinder"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.path().join("home"))
            .env("XDG_DATA_HOME", self.path().join("data"))
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("JUPYTER_DATA_DIR", self.path().join("jupyter"))
            .env("HPCBINDER_SITE_CONFIG", self.path().join("site.toml"))
            .env("HPCBINDER_STORE", self.store())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .current_dir(self.path());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run hpcbinder")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "hpcbinder {args:?} failed ({:?}):\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// The EnvKey of a repo spec.
    pub fn key(&self, args: &[&str]) -> String {
        let mut all = vec!["key"];
        all.extend_from_slice(args);
        self.ok(&all).trim().to_string()
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The repository's fixture directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Copy a directory tree (files, dirs and symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let file_type = entry.file_type().unwrap();
        if file_type.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if file_type.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A git repository built at test time, driven through libgit2.
pub struct GitRepo {
    pub repo: git2::Repository,
    pub path: PathBuf,
}

impl GitRepo {
    pub fn init(path: &Path) -> Self {
        let mut options = git2::RepositoryInitOptions::new();
        options.initial_head("main");
        let repo = git2::Repository::init_opts(path, &options).expect("git init");
        Self {
            repo,
            path: path.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    pub fn write(&self, name: &str, contents: &str) -> &Self {
        let path = self.path.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
        self
    }

    /// Stage everything and commit on HEAD; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        let mut index = self.repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let signature = git2::Signature::new(
            "Test",
            "test@example.org",
            &git2::Time::new(1_700_000_000, 0),
        )
        .unwrap();
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        self.repo
            .commit(
                Some("HEAD"),
                &signature,
                &signature,
                message,
                &tree,
                &parents,
            )
            .unwrap()
            .to_string()
    }

    pub fn branch(&self, name: &str, commit: &str) {
        let commit = self
            .repo
            .find_commit(git2::Oid::from_str(commit).unwrap())
            .unwrap();
        self.repo.branch(name, &commit, true).unwrap();
    }

    pub fn tag(&self, name: &str, commit: &str) {
        let object = self
            .repo
            .find_object(git2::Oid::from_str(commit).unwrap(), None)
            .unwrap();
        self.repo.tag_lightweight(name, &object, true).unwrap();
    }

    pub fn checkout_branch(&self, name: &str) {
        self.repo.set_head(&format!("refs/heads/{name}")).unwrap();
        self.repo
            .checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
            .unwrap();
    }
}

/// uv and the ipykernel wheelhouse, installed once by `scripts/test-deps` (PyPI the first
/// time, a cache afterwards).
pub struct TestDeps {
    pub uv: PathBuf,
    pub wheelhouse: PathBuf,
    /// uv's own wheel (the one hpcbinder's bootstrap pins), alone in a directory.
    pub uv_wheel: PathBuf,
}

/// Run one of the project's install scripts (`scripts/<name>`); returns what it printed
/// (the directory it installed into, for most). `needs` says what it downloads from.
pub fn install_script(name: &str, needs: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let output = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    assert!(
        output.status.success(),
        "scripts/{name} failed (it needs {needs} the first time):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub fn test_deps() -> &'static TestDeps {
    static DEPS: std::sync::OnceLock<TestDeps> = std::sync::OnceLock::new();
    DEPS.get_or_init(|| {
        let dir = PathBuf::from(install_script("test-deps", "PyPI"));
        TestDeps {
            uv: dir.join("tools/bin/uv"),
            wheelhouse: dir.join("wheelhouse"),
            uv_wheel: dir.join("uv-wheel"),
        }
    })
}

impl Sandbox {
    /// Site config for offline native builds: this machine's Python, uv and the
    /// wheelhouse, no index, ipykernel from pip, plus `extra` lines.
    pub fn native_site_config(&self, extra: &str) {
        let deps = test_deps();
        let python = python_minor();
        std::fs::write(
            self.path().join("site.toml"),
            format!(
                "python = \"{python}\"\nuv = \"{}\"\npip-find-links = [\"{}\"]\npip-no-index = true\nkernel-package = \"pip\"\n{extra}",
                deps.uv.display(),
                deps.wheelhouse.display()
            ),
        )
        .unwrap();
    }

    /// Write a repository from `(path, contents)` pairs; returns its path.
    pub fn repo(&self, name: &str, files: &[(&str, &str)]) -> String {
        let root = self.path().join("repos").join(name);
        for (path, contents) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            if path
                .file_name()
                .is_some_and(|n| n == "postBuild" || n == "start")
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        std::fs::create_dir_all(&root).unwrap();
        root.to_str().unwrap().to_string()
    }

    /// `build --json` and its last event, which must be `ready`.
    pub fn build_ready(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["build", "--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        let last: serde_json::Value =
            serde_json::from_str(out.lines().last().expect("events")).unwrap();
        assert_eq!(last["phase"], "ready", "{out}");
        last
    }
}

/// Start the kernelspec in `kernel_dir` as Jupyter would, run `code` and require
/// `expected` on stdout (within `seconds`).
pub fn run_cell(
    kernel_dir: &Path,
    code: &str,
    expected: &str,
    seconds: u64,
) -> hpcbinder::kernel::verify::Verified {
    hpcbinder::kernel::verify::verify(
        kernel_dir,
        code,
        expected,
        std::time::Duration::from_secs(seconds),
    )
    .unwrap_or_else(|e| panic!("kernel in {}: {e:?}", kernel_dir.display()))
}

/// A copy of the kernelspec in `kernel_dir`, written as `<into>/<its name>`, that starts the
/// same kernel with `variables` set (through `env`), so a test can give one kernel what it
/// needs without changing its own process environment.
pub fn kernel_with_env(kernel_dir: &Path, into: &Path, variables: &[(&str, &str)]) -> PathBuf {
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kernel_dir.join("kernel.json")).unwrap())
            .unwrap();
    let argv = spec["argv"].as_array().expect("argv").clone();
    let mut wrapped = vec![serde_json::Value::from("/usr/bin/env")];
    wrapped.extend(
        variables
            .iter()
            .map(|(name, value)| serde_json::Value::from(format!("{name}={value}"))),
    );
    wrapped.extend(argv);
    spec["argv"] = serde_json::Value::from(wrapped);
    let dir = into.join(kernel_dir.file_name().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kernel.json"), spec.to_string()).unwrap();
    dir
}

/// `X.Y` of the machine's `python3`.
pub fn python_minor() -> String {
    let output = Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A tmpfs mounted for one test (size-limited or read-only); unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, options: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -t tmpfs -o {options} failed: these tests run as root, as CI does"
        );
        Self {
            path: path.to_path_buf(),
        }
    }

    pub fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
pub mod bench;
pub mod browser;
pub mod channel;
pub mod http;
pub mod hub;
pub mod hubapi;
pub mod jupyter;
pub mod launch;
pub mod records;
pub mod slurm;
pub mod sse;
pub mod users;

/// The containers.conf the container tests give Podman (runc, cgroupfs, ulimits).
pub const CONTAINERS_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/containers.conf");

/// `podman` with the tests' containers.conf.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", CONTAINERS_CONF)
        .output()
        .unwrap()
}

/// The container tests' base image, made from Debian's packages by scripts/test-base-image.
pub fn base_image() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-base-image");
        let output = Command::new(&script)
            .output()
            .expect("run scripts/test-base-image");
        assert!(
            output.status.success(),
            "scripts/test-base-image failed (run scripts/container-deps first):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    })
}

impl Sandbox {
    /// Site config for container builds: the native settings plus the test base image,
    /// chroot isolation and the runc containers.conf this sandbox needs.
    pub fn container_site_config(&self, extra: &str) {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containers.conf");
        self.native_site_config(&format!(
            "base-image = \"{}\"\npodman-isolation = \"chroot\"\ncontainers-conf = \"{}\"\n{extra}",
            base_image(),
            conf.display()
        ));
    }
}

/// requirements.txt + apt.txt + postBuild + start: the issue's example repository.
pub fn container_demo(sandbox: &Sandbox) -> String {
    sandbox.repo(
        "container-demo",
        &[
            ("requirements.txt", "six==1.16.0\n"),
            ("apt.txt", "# small and quick\njq\n"),
            (
                "postBuild",
                "#!/bin/sh\nset -e\necho built-by-postbuild > \"$HOME/post-build-marker\"\n",
            ),
            (
                "start",
                "#!/bin/sh\nexport HPCBINDER_START=from-start\nexec \"$@\"\n",
            ),
            ("analysis.ipynb", "{\"cells\": []}\n"),
        ],
    )
}
