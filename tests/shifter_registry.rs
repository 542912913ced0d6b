//! The Shifter target: images pushed to a real local `docker-registry` (started and
//! stopped by the test), whose `shifterimg pull` is a recording shim here (Shifter
//! itself cannot run on this machine), and a registry that refuses the push.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::{stderr, Sandbox};

struct Registry {
    child: Child,
    address: String,
}

impl Registry {
    /// `docker-registry` on a free loopback port. The port is free when picked, but another
    /// process (a kernel of a parallel test, say) may bind it before the registry does:
    /// then the registry exits with "address already in use" and starts again on a fresh
    /// port, a bounded number of times. Any other failure ends the test with its log.
    fn start(sandbox: &Sandbox) -> Self {
        let config = sandbox.path().join("registry.yml");
        let log = sandbox.path().join("registry.log");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let address = format!("127.0.0.1:{port}");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                    sandbox.path().join("registry-data").display()
                ),
            )
            .unwrap();
            let output = std::fs::File::create(&log).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if answers_as_registry(&address) {
                    return Self { child, address };
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer on {address} within 30 s:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                text.contains("address already in use"),
                "docker-registry exited ({status}):\n{text}"
            );
        }
        panic!(
            "docker-registry found its port taken five times:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

/// Whether what listens on `address` is a registry (not whatever took the port first).
fn answers_as_registry(address: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /v2/ HTTP/1.0\r\nHost: {address}\r\n\r\n").is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .to_ascii_lowercase()
        .contains("docker-distribution-api-version: registry/2.0")
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn shifter_pushes_to_a_real_registry_and_a_refusing_registry_fails_cleanly() {
    let sandbox = Sandbox::new();
    let registry = Registry::start(&sandbox);
    sandbox.container_site_config(&format!(
        "registry = \"{}/hpcbinder\"\nregistry-tls-verify = false\n",
        registry.address
    ));
    // shifterimg does not exist here: this shim records the call hpcbinder makes.
    let bin = sandbox.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = sandbox.path().join("shifterimg-calls");
    std::fs::write(
        bin.join("shifterimg"),
        format!("#!/bin/sh\necho \"$@\" >> {}\n", record.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.join("shifterimg"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let repo = common::container_demo(&sandbox);

    let output = sandbox
        .command()
        .args(["build", "--json", &repo, "--target", "shifter"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let ready: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let image = ready["image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("{}/hpcbinder/container-demo:", registry.address)),
        "{image}"
    );
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "the image is in the registry: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("org.hpcbinder.key"));
    assert_eq!(
        std::fs::read_to_string(&record).unwrap().trim(),
        format!("pull docker:{image}")
    );
    let helper = std::fs::read_to_string(
        Path::new(ready["kernel_dir"].as_str().unwrap()).join("kernel-helper.sh"),
    )
    .unwrap();
    assert!(
        helper.contains(&format!(
            "exec shifter '--image=docker:{image}' '/opt/env/bin/python' -m ipykernel_launcher -f"
        )),
        "{helper}"
    );
    assert!(
        ready["verification"]
            .as_str()
            .unwrap()
            .starts_with("skipped"),
        "shifter cannot run here: never reported as verified"
    );

    // A registry that refuses the push (nothing listens): a clear error, nothing ready.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sandbox.container_site_config(&format!(
        "registry = \"127.0.0.1:{dead}/hpcbinder\"\nregistry-tls-verify = false\n"
    ));
    std::fs::write(
        format!("{repo}/requirements.txt"),
        "six==1.16.0\n# another key\n",
    )
    .unwrap();
    let output = sandbox
        .command()
        .args(["build", &repo, "--target", "shifter"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("pushing to 127.0.0.1"),
        "{}",
        stderr(&output)
    );
    let key = sandbox.key(&[&repo, "--target", "shifter"]);
    assert!(!sandbox
        .store()
        .join(format!("e/{}.toml", &key[..16]))
        .exists());
}
