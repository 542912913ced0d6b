//! Real users for the tests that need them: a group `hpcb-share` with two members made
//! with `useradd` (kept between runs), a store they share, and hpcbinder run as them.
//! Needs root (CI and the README's test command run as root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{stdout, test_deps};

pub const GROUP: &str = "hpcb-share";
pub const ALICE: &str = "hpcb-alice";
pub const MALLORY: &str = "hpcb-mallory";
/// A second honest user (the launch service's tests: two users launching one link).
pub const CAROL: &str = "hpcb-carol";

/// Make the group and the two users once (kept between runs: `useradd` is not free).
pub fn users() {
    let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("getent").args(["group", GROUP])) {
        assert!(
            ok(Command::new("groupadd").arg(GROUP)),
            "groupadd {GROUP} (these tests need root)"
        );
    }
    for user in [ALICE, MALLORY, CAROL] {
        if !ok(Command::new("id").arg(user)) {
            assert!(
                ok(Command::new("useradd").args(["-m", "-G", GROUP, user])),
                "useradd {user}"
            );
        }
    }
}

pub fn uid(user: &str) -> u32 {
    let output = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A world-readable directory holding what both users build with: the store (group
/// `hpcb-share`, 2775), uv and the wheelhouse (copies: root's cache is private), a
/// repository, and a site config.
pub struct Shared {
    pub dir: tempfile::TempDir,
}

impl Shared {
    pub fn new(store_mode: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let deps = test_deps();
        let tools = dir.path().join("tools");
        std::fs::create_dir(&tools).unwrap();
        std::fs::copy(&deps.uv, tools.join("uv")).unwrap();
        let wheels = dir.path().join("wheelhouse");
        super::copy_tree(&deps.wheelhouse, &wheels);
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let status = Command::new("chgrp")
            .arg(GROUP)
            .arg(&store)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(store_mode)).unwrap();
        std::fs::write(
            dir.path().join("site.toml"),
            format!(
                "python = \"/usr/bin/python3\"\nuv = \"{}\"\npip-find-links = [\"{}\"]\npip-no-index = true\n",
                tools.join("uv").display(),
                wheels.display()
            ),
        )
        .unwrap();
        let shared = Self { dir };
        shared.repo("repo", "six\n");
        shared
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// A repository with this requirements.txt, readable by everyone.
    pub fn repo(&self, name: &str, requirements: &str) -> String {
        let repo = self.path().join(name);
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("requirements.txt"), requirements).unwrap();
        repo.display().to_string()
    }

    /// hpcbinder as `user` under `umask`, with a clean environment.
    pub fn hpcbinder(&self, user: &str, umask: &str, args: &[&str]) -> Output {
        let home = format!("/home/{user}");
        Command::new("runuser")
            .args(["-u", user, "--", "env", "-i"])
            .arg("PATH=/usr/bin:/bin")
            .arg(format!("HOME={home}"))
            .arg(format!(
                "HPCBINDER_SITE_CONFIG={}",
                self.path().join("site.toml").display()
            ))
            .arg(format!("HPCBINDER_CONFIG={home}/hpcbinder.toml"))
            .arg(format!("HPCBINDER_STORE={}", self.store().display()))
            .arg(format!("JUPYTER_DATA_DIR={home}/jupyter-{}", self.tag()))
            .arg(format!("XDG_CACHE_HOME={home}/cache"))
            .args(["NO_COLOR=1", "sh", "-c", "umask \"$0\"; exec \"$@\"", umask])
            .arg(env!("CARGO_BIN_EXE_hpcbinder"))
            .args(args)
            .current_dir(self.path())
            .output()
            .unwrap()
    }

    /// A tag unique to this store, so kernels of earlier runs do not collide.
    pub fn tag(&self) -> String {
        self.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches('.')
            .to_string()
    }

    /// `build --json` as `user`: its events, and the ready event (`None` on failure).
    pub fn build(
        &self,
        user: &str,
        umask: &str,
        args: &[&str],
    ) -> (Output, Option<serde_json::Value>) {
        let mut all = vec!["build", "--json"];
        all.extend_from_slice(args);
        let output = self.hpcbinder(user, umask, &all);
        let ready = stdout(&output)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["phase"] == "ready");
        (output, ready)
    }
}

/// A shell command as `user`; its output.
pub fn as_user(user: &str, script: &str) -> Output {
    Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", script])
        .output()
        .unwrap()
}

/// The pids and command lines (`pgrep -a`) of `user`'s processes whose command line
/// contains `pattern`.
pub fn processes_of(user: &str, pattern: &str) -> Vec<String> {
    let output = Command::new("pgrep")
        .args(["-a", "-u", &uid(user).to_string(), "-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
