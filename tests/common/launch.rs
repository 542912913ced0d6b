//! What the launch service's tests with real users and a browser share: the service's
//! sealed environment inside the Hub, the users' trust in the tests' repositories, a
//! browser following a launch link through the Hub's login, and a notebook cell run as a
//! user runs it.

use std::time::{Duration, Instant};

use super::browser::Browser;
use super::hub::Hub;
use super::Sandbox;

/// The service's environment inside the Hub: the sandbox's home, config and store.
pub fn service_environment(sandbox: &Sandbox) -> Vec<(String, String)> {
    let p = |name: &str| sandbox.path().join(name).display().to_string();
    [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", p("home")),
        ("XDG_DATA_HOME", p("data")),
        ("XDG_CONFIG_HOME", p("config")),
        ("JUPYTER_DATA_DIR", p("jupyter")),
        ("HPCBINDER_SITE_CONFIG", p("site.toml")),
        ("HPCBINDER_STORE", sandbox.store().display().to_string()),
        ("NO_COLOR", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The test's repositories are root's local folders, which git refuses to read for
/// another user ("dubious ownership", even through file://) unless the user's own config
/// says so; a site's repositories are remote. These users exist for the tests.
pub fn trust_repositories(user: &str) {
    let config = format!("/home/{user}/.gitconfig");
    std::fs::write(&config, "[safe]\n\tdirectory = *\n").unwrap();
    let status = std::process::Command::new("chown")
        .args([&format!("{user}:"), &config])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A browser opening the launch link of `spec`'s notebook, logging in at the Hub's form
/// (where the service's OAuth sends it) as `user`.
pub fn open_notebook_launch_link(hub: &Hub, spec: &str, user: &str) -> Browser {
    let browser = Browser::start();
    browser.goto(&hub.url(&format!(
        "/services/binder/v2/{spec}?urlpath=lab/tree/notebooks/index.ipynb"
    )));
    browser.wait_for("the Hub's login form", 60, |b| {
        b.find("input[name=username]").is_some()
    });
    browser.type_into(&browser.find("input[name=username]").unwrap(), user);
    browser.type_into(&browser.find("input[name=password]").unwrap(), "anything");
    browser.click(&browser.find("#login_submit").unwrap());
    browser
}

/// Follow a server-mode launch in `browser` (logged in as `user`): the build log on the
/// launch page, then JupyterLab in a named server with the repository's notebook open
/// (within `seconds`). The lab's URL.
pub fn wait_for_named_server_lab(browser: &Browser, user: &str, seconds: u64) -> String {
    browser.wait_for("build log lines on the launch page", 120, |b| {
        b.text("#log").contains("for a single-user server")
    });
    let prefix = format!("/user/{user}/");
    browser.wait_for("JupyterLab in the named server", seconds, |b| {
        let url = b.url();
        url.contains(&prefix)
            && url.ends_with("/lab/tree/notebooks/index.ipynb")
            && b.find(".jp-Notebook .jp-Cell .cm-content").is_some()
    });
    browser.url()
}

/// Run the open notebook's first cell as a user does (click into it, Shift+Enter) and
/// wait for an output holding `expected`. JupyterLab may still be restoring its layout
/// when the notebook first shows (a click then lands nowhere), so the click is repeated
/// until the cell is in edit mode, and the keys until the cell has run.
pub fn run_first_cell(browser: &Browser, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let cell = ".jp-Notebook .jp-Cell .cm-content";
    loop {
        if let Some(editor) = browser.find(cell) {
            browser.click(&editor);
            std::thread::sleep(Duration::from_millis(500));
            if browser.text("#jp-main-statusbar").contains("Mode: Edit") {
                browser.chord(&["\u{E008}", "\u{E007}"]);
                let ran = Instant::now() + Duration::from_secs(30);
                while Instant::now() < ran {
                    if browser.text(".jp-OutputArea-output").contains(expected) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the first cell did not print {expected}; the browser is at {}: {}",
            browser.url(),
            browser.text("body")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Write the launch tests' repository content into `git`: a local package
/// (`localpkg.VALUE`, installed by the requirements' `./localpkg`) that exists only in
/// the repository, and `notebooks/index.ipynb` whose one Python cell is `source`.
pub fn write_package_and_notebook(git: &super::GitRepo, source: &[&str]) {
    git.write(
        "localpkg/setup.py",
        "from setuptools import setup\nsetup(name='localpkg', version='1.0', packages=['localpkg'])\n",
    );
    git.write(
        "localpkg/localpkg/__init__.py",
        "VALUE = 'only-in-the-repository'\n",
    );
    let notebook = serde_json::json!({
        "cells": [{
            "cell_type": "code", "execution_count": null, "id": "first", "metadata": {},
            "outputs": [],
            "source": source,
        }],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
            "language_info": {"name": "python"}
        },
        "nbformat": 4, "nbformat_minor": 5
    });
    git.write(
        "notebooks/index.ipynb",
        &serde_json::to_string_pretty(&notebook).unwrap(),
    );
}
