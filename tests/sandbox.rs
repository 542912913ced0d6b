//! Repository code runs in a bubblewrap sandbox (issue 10, finding 3): a postBuild and a
//! setup.py that try to write the store, read `~/.ssh`, read a service token and touch
//! another environment get nowhere, and the same repositories still build. With
//! `sandbox = "none"` the same postBuild reaches everything, which shows the sandbox is
//! what stops it. Its network reaches only the site's package sources.

mod common;

use std::path::Path;

use common::{stderr, Sandbox};

const TOKEN: &str = "hub-token-do-not-leak";

/// A sandbox with a fake SSH key in its home and an honest environment already built
/// (another user's work the attacker would like to change); returns that env's prefix.
fn victim(sandbox: &Sandbox, extra: &str) -> String {
    sandbox.native_site_config(extra);
    let ssh = sandbox.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("id_rsa"), "PRIVATE KEY\n").unwrap();
    let honest = sandbox.repo("honest", &[("requirements.txt", "six\n")]);
    let ready = sandbox.build_ready(&[&honest, "--no-kernel"]);
    ready["prefix"].as_str().unwrap().to_string()
}

/// The probes, as shell: each line of `$1` says what the code could do.
fn probes(store: &Path, home: &Path, other_prefix: &str, repo: &Path) -> String {
    format!(
        r#"report="$1"
probe() {{ if sh -c "$2" >/dev/null 2>&1; then echo "$1: yes" >> "$report"; else echo "$1: no" >> "$report"; fi; }}
probe store-visible "cat {other_prefix}.toml"
probe ssh-key "cat {home}/.ssh/id_rsa"
probe other-env "touch {other_prefix}/pwned"
probe repository "touch {repo}/pwned"
touch {store}/pwned 2>/dev/null
echo "token: [$JUPYTERHUB_API_TOKEN]" >> "$report"
"#,
        store = store.display(),
        home = home.display(),
        repo = repo.display(),
    )
}

fn build_with_token(sandbox: &Sandbox, repo: &str) -> std::process::Output {
    sandbox
        .command()
        .env("JUPYTERHUB_API_TOKEN", TOKEN)
        .args(["build", "--json", repo, "--no-kernel"])
        .output()
        .unwrap()
}

fn ready_prefix(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let ready: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("events")).unwrap();
    assert_eq!(ready["phase"], "ready", "{stdout}\n{}", stderr(output));
    ready["prefix"].as_str().unwrap().to_string()
}

#[test]
fn post_build_cannot_reach_the_store_home_secrets_or_other_environments() {
    let sandbox = Sandbox::new();
    let other = victim(&sandbox, "");
    let repo_dir = sandbox.path().join("repos/attack");
    let script = "#!/bin/sh\nsh ./probes.sh \"$VIRTUAL_ENV/report\"\n";
    let repo = sandbox.repo(
        "attack",
        &[
            ("requirements.txt", "six\n"),
            (
                "probes.sh",
                &probes(
                    &sandbox.store(),
                    &sandbox.path().join("home"),
                    &other,
                    &repo_dir,
                ),
            ),
            ("postBuild", script),
        ],
    );
    let output = build_with_token(&sandbox, &repo);
    let prefix = ready_prefix(&output);
    let report = std::fs::read_to_string(format!("{prefix}/report")).unwrap();
    assert_eq!(report.lines().count(), 5, "postBuild ran once:\n{report}");
    for line in [
        "store-visible: no",
        "ssh-key: no",
        "other-env: no",
        "token: []",
    ] {
        assert!(report.contains(line), "{line}\n{report}");
    }
    // Writes it could make went to its private copies, never to the real ones.
    assert!(!sandbox.store().join("pwned").exists());
    assert!(!Path::new(&other).join("pwned").exists());
    assert!(!repo_dir.join("pwned").exists());

    // Without the sandbox the same script reaches the key and the token: the sandbox is
    // what stopped it.
    let unconfined = Sandbox::new();
    let other = victim(&unconfined, "sandbox = \"none\"\n");
    let repo_dir = unconfined.path().join("repos/attack");
    let repo = unconfined.repo(
        "attack",
        &[
            ("requirements.txt", "six\n"),
            (
                "probes.sh",
                &probes(
                    &unconfined.store(),
                    &unconfined.path().join("home"),
                    &other,
                    &repo_dir,
                ),
            ),
            ("postBuild", script),
        ],
    );
    let prefix = ready_prefix(&build_with_token(&unconfined, &repo));
    let report = std::fs::read_to_string(format!("{prefix}/report")).unwrap();
    assert!(
        report.contains("ssh-key: yes") && report.contains(&format!("token: [{TOKEN}]")),
        "{report}"
    );
}

#[test]
fn setup_py_cannot_reach_the_store_home_secrets_or_other_environments() {
    let sandbox = Sandbox::new();
    let other = victim(&sandbox, "");
    let repo_dir = sandbox.path().join("repos/package");
    let setup = format!(
        r#"import os, pathlib
from setuptools import setup

def attempt(action):
    try:
        action()
        return "yes"
    except Exception:
        return "no"

found = {{
    "store": attempt(lambda: pathlib.Path("{other}.toml").read_text()),
    "ssh": attempt(lambda: pathlib.Path("{home}/.ssh/id_rsa").read_text()),
    "other": attempt(lambda: pathlib.Path("{other}/pwned").write_text("x")),
    "token": os.environ.get("JUPYTERHUB_API_TOKEN", ""),
}}
attempt(lambda: pathlib.Path("{store}/pwned").write_text("x"))
pathlib.Path("leak").mkdir(exist_ok=True)
pathlib.Path("leak/__init__.py").write_text("FOUND = %r\n" % (found,))
setup(name="leak", version="1.0", packages=["leak"])
"#,
        store = sandbox.store().display(),
        home = sandbox.path().join("home").display(),
    );
    let repo = sandbox.repo("package", &[("setup.py", &setup)]);
    let output = build_with_token(&sandbox, &repo);
    let prefix = ready_prefix(&output);
    let leak = walkdir::WalkDir::new(&prefix)
        .into_iter()
        .flatten()
        .find(|e| e.path().ends_with("site-packages/leak/__init__.py"))
        .unwrap_or_else(|| panic!("leak was not installed: {}", stderr(&output)));
    let found = std::fs::read_to_string(leak.path()).unwrap();
    assert!(
        found.contains("'store': 'no'")
            && found.contains("'ssh': 'no'")
            && found.contains("'other': 'no'")
            && found.contains("'token': ''"),
        "{found}"
    );
    assert!(!sandbox.store().join("pwned").exists());
    assert!(!Path::new(&other).join("pwned").exists());
    // The build wrote `build/` and `leak.egg-info` into its copy, not the checkout.
    assert!(!repo_dir.join("leak.egg-info").exists());
    assert!(!repo_dir.join("leak").exists());
}

/// A loopback HTTP server answering every request with `body`; returns its port.
fn http_server(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Repository code has its own network: through hpcbinder's proxy it reaches a package
/// source the site allows (a loopback server standing for the site's mirror), and gets
/// 403 from anything else (a loopback server standing for a metadata service or the
/// hub's API), which the build reports; a direct connection finds nothing. With
/// `sandbox-network = "host"` the direct connection gets through: the sandbox is what
/// stops it.
#[test]
fn post_build_reaches_only_the_sites_package_sources() {
    let source = http_server("from-the-mirror");
    let forbidden = http_server("instance-secrets");
    let probe = format!(
        r#"#!/bin/sh
python3 - "$VIRTUAL_ENV/net-report" <<'PY'
import socket, sys, urllib.error, urllib.request
out = open(sys.argv[1], "w")
def fetch(name, url):
    try:
        out.write(f"{{name}}: {{urllib.request.urlopen(url, timeout=10).read().decode()}}\n")
    except urllib.error.HTTPError as e:
        out.write(f"{{name}}: {{e.code}}\n")
    except Exception as e:
        out.write(f"{{name}}: {{type(e).__name__}}\n")
fetch("source", "http://127.0.0.1:{source}/simple/")
fetch("forbidden", "http://127.0.0.1:{forbidden}/latest/meta-data")
try:
    socket.create_connection(("127.0.0.1", {forbidden}), timeout=5).close()
    out.write("direct: connected\n")
except OSError as e:
    out.write(f"direct: {{type(e).__name__}}\n")
PY
"#
    );
    for (network, expected) in [
        (
            "packages",
            "source: from-the-mirror\nforbidden: 403\ndirect: ConnectionRefusedError\n",
        ),
        ("host", "direct: connected\n"),
    ] {
        let sandbox = Sandbox::new();
        sandbox.native_site_config(&format!(
            "package-sources = [\"http://127.0.0.1:{source}/simple\"]\nsandbox-network = \"{network}\"\n"
        ));
        let repo = sandbox.repo(
            "net",
            &[("requirements.txt", "six\n"), ("postBuild", &probe)],
        );
        let output = build_with_token(&sandbox, &repo);
        let prefix = ready_prefix(&output);
        let report = std::fs::read_to_string(format!("{prefix}/net-report")).unwrap();
        assert!(report.ends_with(expected), "{network}:\n{report}");
        let events = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            events.contains("postBuild tried to reach 127.0.0.1, which the sandbox refused"),
            network == "packages",
            "{events}"
        );
    }
}

/// The repository's `start` runs when the build verifies the kernel: in the sandbox too.
/// It tries to copy the SSH key and the service token out, and to write into the store;
/// nothing arrives. With `sandbox = "none"` the same `start` gets both out.
#[test]
fn start_at_verification_cannot_reach_the_home_secrets_or_the_store() {
    let start = |loot: &Path, store: &Path, home: &Path| {
        format!(
            "#!/bin/sh\nmkdir -p {loot}\ncp {home}/.ssh/id_rsa {loot}/key 2>/dev/null\necho \"$JUPYTERHUB_API_TOKEN\" > {loot}/token 2>/dev/null\ntouch {store}/pwned 2>/dev/null\nexec \"$@\"\n",
            loot = loot.display(),
            store = store.display(),
            home = home.display(),
        )
    };
    for (extra, escapes) in [("", false), ("sandbox = \"none\"\n", true)] {
        let sandbox = Sandbox::new();
        victim(&sandbox, extra);
        let loot = sandbox.path().join("loot");
        let repo = sandbox.repo(
            "start",
            &[
                ("requirements.txt", "six\n"),
                (
                    "start",
                    &start(&loot, &sandbox.store(), &sandbox.path().join("home")),
                ),
            ],
        );
        let output = sandbox
            .command()
            .env("JUPYTERHUB_API_TOKEN", TOKEN)
            .args(["build", "--json", &repo])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        ready_prefix(&output);
        assert!(stdout.contains("Kernel answered"), "{stdout}");
        assert_eq!(loot.join("key").exists(), escapes, "{extra}");
        assert_eq!(
            std::fs::read_to_string(loot.join("token")).unwrap_or_default(),
            if escapes {
                format!("{TOKEN}\n")
            } else {
                String::new()
            },
        );
        assert_eq!(sandbox.store().join("pwned").exists(), escapes);
    }
}
