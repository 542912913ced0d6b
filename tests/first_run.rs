//! The first build on a machine with nothing configured: which Python, a uv bootstrapped
//! into the store from a Python index (here a loopback server that speaks PyPI's simple
//! API, serving the real uv wheel and the test wheelhouse: PyPI itself is not a test
//! dependency), and the pip fallback when that is off or fails.

mod common;

use std::path::Path;

use common::http::{Routes, Server};
use common::{python_minor, stderr, test_deps, Sandbox};

/// A PATH holding python3 and the usual tools, but no uv.
const PATH_WITHOUT_UV: &str = "/usr/local/bin:/usr/bin:/bin";

fn uv_wheel_name() -> String {
    std::fs::read_dir(&test_deps().uv_wheel)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".whl"))
        .expect("scripts/test-deps downloads uv's wheel")
}

/// A loopback index with uv's wheel and the ipykernel wheelhouse.
fn loopback_pypi(uv_wheels: &Path) -> Server {
    Server::start(Routes {
        wheels: vec![uv_wheels.to_path_buf(), test_deps().wheelhouse.clone()],
        static_dir: None,
    })
}

/// A site config naming the machine's Python and the loopback index, plus `extra` lines.
fn index_site_config(sandbox: &Sandbox, server: &Server, extra: &str) {
    std::fs::write(
        sandbox.path().join("site.toml"),
        format!(
            "python = \"{}\"\npip-index-url = \"{}\"\n{extra}",
            python_minor(),
            server.url("/simple")
        ),
    )
    .unwrap();
}

/// `build --json <args>` with no uv on PATH; it must succeed. Returns the events.
fn build_without_uv(sandbox: &Sandbox, args: &[&str]) -> String {
    let output = sandbox
        .command()
        .args(["build", "--json"])
        .args(args)
        .env("PATH", PATH_WITHOUT_UV)
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}{events}", stderr(&output));
    events
}

fn interpreter(python: &str) -> String {
    let output = std::process::Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn python_is_the_python3_on_path_unless_named_and_accepts_versions_and_paths() {
    let sandbox = Sandbox::new();
    let repo = sandbox.repo("plain", &[("requirements.txt", "six\n")]);
    let minor = python_minor();
    let key_python = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["key", "--json", "--explain", repo.as_str()];
        args.extend_from_slice(extra);
        let out: serde_json::Value = serde_json::from_str(&sandbox.ok(&args)).unwrap();
        out["inputs"]["python"].clone()
    };
    // Nothing names a version: the python3 on PATH (a pyenv shim here) decides the key.
    assert_eq!(key_python(&[]), minor.as_str());
    let events = sandbox.ok(&["build", "--dry-run", "--json", &repo]);
    let real = interpreter("python3");
    assert!(
        events.contains(&format!("Using Python {minor} ({real} "))
            && events.contains("the python3 on PATH"),
        "the events say which Python and why:\n{events}"
    );
    // X.Y.Z and an interpreter path, as uv's -p reads them.
    assert_eq!(key_python(&["--python", "3.11.4"]), "3.11.4");
    let system_minor = {
        let output = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    assert_eq!(
        key_python(&["--python", "/usr/bin/python3"]),
        system_minor.as_str()
    );
    // Anything else is refused before anything happens.
    let output = sandbox.run(&["key", &repo, "--python", "python3"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("invalid python `python3`")
            && stderr(&output).contains("hint: use one of: X.Y (3.12), X.Y.Z (3.12.4)"),
        "{}",
        stderr(&output)
    );
    // The repository's own version still wins over the host's.
    let pinned = sandbox.repo(
        "pinned",
        &[
            ("requirements.txt", "six\n"),
            ("runtime.txt", "python-3.9\n"),
        ],
    );
    let out: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["key", "--json", "--explain", &pinned])).unwrap();
    assert_eq!(out["inputs"]["python"], "3.9");
}

#[test]
fn an_interpreter_path_builds_the_venv_with_that_interpreter() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    // The test config names X.Y; --python beats it with a path.
    let repo = sandbox.repo("by-path", &[("requirements.txt", "six==1.16.0\n")]);
    let ready = sandbox.build_ready(&[&repo, "--python", "/usr/bin/python3"]);
    let prefix = Path::new(ready["prefix"].as_str().unwrap());
    let config = std::fs::read_to_string(prefix.join("pyvenv.cfg")).unwrap();
    assert!(
        config.contains("home = /usr/bin"),
        "the venv is made from /usr/bin/python3:\n{config}"
    );
    assert!(ready["verified"].is_string(), "{ready}");
}

#[test]
fn uv_is_bootstrapped_from_a_loopback_index_once_per_store_with_a_hashed_lock() {
    let deps = test_deps();
    let server = loopback_pypi(&deps.uv_wheel);
    let wheel = uv_wheel_name();
    let sandbox = Sandbox::new();
    index_site_config(&sandbox, &server, "");
    let repo = sandbox.repo("first", &[("requirements.txt", "six==1.16.0\n")]);
    let events = build_without_uv(&sandbox, &[&repo]);
    assert!(
        events.contains("uv is not on PATH; installing uv 0.13.9 into the store"),
        "{events}"
    );
    let uv = sandbox.store().join("tools/uv-0.13.9/uv");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&uv).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o755,
        "group- and world-readable, writable by nobody else"
    );
    let last: serde_json::Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    let lock = Path::new(last["prefix"].as_str().unwrap()).join("hpcbinder/requirements.lock");
    let lock = std::fs::read_to_string(lock).unwrap();
    assert!(
        lock.contains("six==1.16.0") && lock.contains("--hash=sha256:"),
        "the bootstrapped uv wrote a hashed lock:\n{lock}"
    );
    assert!(!events.contains("falling back"), "{events}");
    assert_eq!(server.hits(&format!("/files/{wheel}")), 1);

    // Four first builds at once in a new store: one download, four hashed locks.
    let sandbox = Sandbox::new();
    index_site_config(&sandbox, &server, "");
    let children: Vec<_> = (0..4)
        .map(|i| {
            let repo = sandbox.repo(
                &format!("concurrent-{i}"),
                &[("requirements.txt", &format!("six==1.16.0\n# {i}\n"))],
            );
            sandbox
                .command()
                .args(["build", "--json", "--no-verify", &repo])
                .env("PATH", PATH_WITHOUT_UV)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let events = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}{events}", stderr(&output));
        assert!(!events.contains("falling back"), "{events}");
    }
    assert_eq!(
        server.hits(&format!("/files/{wheel}")),
        2,
        "one more download for the second store, whatever the concurrency"
    );
    let leftovers: Vec<_> = std::fs::read_dir(sandbox.store().join("tools"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("uv-0.13.9")]);
}

#[test]
fn a_tampered_uv_wheel_is_refused_and_the_pip_fallback_builds() {
    let deps = test_deps();
    let sandbox = Sandbox::new();
    let wheel = uv_wheel_name();
    // The same file name with one byte more: its sha256 is not the pinned one.
    let tampered = sandbox.path().join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    let mut bytes = std::fs::read(deps.uv_wheel.join(&wheel)).unwrap();
    bytes.push(0);
    std::fs::write(tampered.join(&wheel), bytes).unwrap();
    let server = loopback_pypi(&tampered);
    index_site_config(&sandbox, &server, "");
    let repo = sandbox.repo("tampered", &[("requirements.txt", "six==1.16.0\n")]);
    let events = build_without_uv(&sandbox, &[&repo]);
    assert!(events.contains("not the pinned"), "{events}");
    assert!(
        events.contains("falling back to `python -m pip`"),
        "{events}"
    );
    assert!(
        !sandbox.store().join("tools/uv-0.13.9").exists(),
        "nothing half-installed is left where a later build would trust it"
    );
}

#[test]
fn uv_bootstrap_off_downloads_nothing_and_falls_back_to_pip() {
    let deps = test_deps();
    let server = loopback_pypi(&deps.uv_wheel);
    let sandbox = Sandbox::new();
    index_site_config(&sandbox, &server, "uv-bootstrap = false\n");
    let repo = sandbox.repo("off", &[("requirements.txt", "six==1.16.0\n")]);
    let events = build_without_uv(&sandbox, &["--no-verify", &repo]);
    assert!(
        events.contains("falling back to `python -m pip`"),
        "{events}"
    );
    assert_eq!(server.hits(&format!("/files/{}", uv_wheel_name())), 0);
    assert_eq!(
        std::fs::read_dir(sandbox.store().join("tools"))
            .unwrap()
            .count(),
        0,
        "no uv installed into the store"
    );
}
