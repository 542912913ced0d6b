//! `hpcbinder doctor` against a reachable and an unreachable conda channel and Python
//! index: loopback servers that answer as a channel (`noarch/repodata.json`) and as
//! PyPI's simple API do (conda-forge and PyPI are not test dependencies).

mod common;

use common::http::{Routes, Server};
use common::{stderr, Sandbox};

fn report(sandbox: &Sandbox, target: &str) -> (Option<i32>, serde_json::Value, String) {
    let output = sandbox
        .command()
        .args(["doctor", "--json"])
        .env("HPCBINDER_TARGET", target)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&output)));
    (output.status.code(), json, stderr(&output))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` check in {report:#}"))
}

#[test]
fn doctor_reports_reachable_and_unreachable_channels_and_index() {
    let sandbox = Sandbox::new();
    let channel = sandbox.path().join("served/site-forge/noarch");
    std::fs::create_dir_all(&channel).unwrap();
    std::fs::write(channel.join("repodata.json"), "{\"packages\": {}}").unwrap();
    std::fs::create_dir_all(sandbox.path().join("wheels")).unwrap();
    std::fs::write(
        sandbox.path().join("wheels/uv-0.13.9-py3-none-any.whl"),
        "not a real wheel: the page only has to list it",
    )
    .unwrap();
    let server = Server::start(Routes {
        wheels: vec![sandbox.path().join("wheels")],
        static_dir: Some(sandbox.path().join("served")),
    });
    let config = |server: &Server| {
        format!(
            "channels = [\"{}\"]\npip-index-url = \"{}\"\n",
            server.url("/static/site-forge"),
            server.url("/simple")
        )
    };
    std::fs::write(sandbox.path().join("site.toml"), config(&server)).unwrap();

    let (code, up, err) = report(&sandbox, "auto");
    assert_eq!(code, Some(0), "{up:#}{err}");
    assert_eq!(up["ok"], true);
    assert_eq!(check(&up, "channel")["status"], "ok", "{up:#}");
    assert!(check(&up, "channel")["millis"].is_u64());
    assert_eq!(check(&up, "python index")["status"], "ok", "{up:#}");
    assert_eq!(check(&up, "store locks")["status"], "ok");
    assert_eq!(check(&up, "python")["status"], "ok");
    assert_eq!(
        up["config_files"][0],
        sandbox.path().join("site.toml").to_str().unwrap()
    );
    assert!(server.hits("/static/site-forge/noarch/repodata.json") >= 1);
    assert_eq!(server.hits("/simple/uv/"), 1);

    // The same config with both servers gone: the index is needed by the default target
    // (a venv), so doctor fails with a hint; the channel is only a warning for it.
    let port = server.port;
    drop(server);
    let gone = format!(
        "channels = [\"http://127.0.0.1:{port}/static/site-forge\"]\npip-index-url = \"http://127.0.0.1:{port}/simple\"\n"
    );
    std::fs::write(sandbox.path().join("site.toml"), &gone).unwrap();
    let (code, down, _) = report(&sandbox, "auto");
    assert_eq!(code, Some(1), "{down:#}");
    assert_eq!(down["ok"], false);
    let index = check(&down, "python index");
    assert_eq!(index["status"], "fail", "{down:#}");
    assert!(index["detail"]
        .as_str()
        .unwrap()
        .contains("could not be reached"));
    assert!(index["hint"].as_str().unwrap().contains("pip-index-url"));
    assert_eq!(check(&down, "channel")["status"], "warn");

    // For a conda default target the unreachable channel is what fails.
    let (code, conda, _) = report(&sandbox, "conda");
    assert_eq!(code, Some(1));
    assert_eq!(check(&conda, "channel")["status"], "fail", "{conda:#}");

    // The table a person reads: one line per check, FAIL lines with their hint.
    let output = sandbox.run(&["doctor"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("FAIL") && table.contains("hint: set `pip-index-url`"),
        "{table}"
    );
    assert!(table.contains("cannot build here"), "{table}");
}

#[test]
fn doctor_fails_for_a_store_it_cannot_write() {
    let sandbox = Sandbox::new();
    let read_only = common::Tmpfs::mount(&sandbox.path().join("ro"), "ro,size=1m");
    let output = sandbox
        .command()
        .args(["doctor", "--json"])
        .env("HPCBINDER_STORE", read_only.path.join("store"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let store = check(&report, "store");
    assert_eq!(store["status"], "fail", "{report:#}");
    assert!(store["detail"].as_str().unwrap().contains("not writable"));
    assert!(
        !read_only.path.join("store").exists(),
        "doctor creates nothing"
    );
}
