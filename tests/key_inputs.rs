//! What the key covers beyond the repository's files: the recipe (Containerfile fragments
//! used), the container settings that change an image, and where a venv's Python comes
//! from (a planned decision, so one key never means two different environments).

mod common;

use common::{python_minor, Sandbox};

fn inputs(sandbox: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["key", "--json", "--explain"];
    all.extend_from_slice(args);
    let out: serde_json::Value = serde_json::from_str(&sandbox.ok(&all)).unwrap();
    out["inputs"].clone()
}

#[test]
fn the_recipe_and_image_settings_enter_the_key() {
    let sandbox = Sandbox::new();
    std::fs::write(
        sandbox.path().join("site.toml"),
        "base-image = \"localhost/base:1\"\n",
    )
    .unwrap();
    let plain = sandbox.repo("plain", &[("requirements.txt", "six\n")]);
    let with_apt = sandbox.repo("apt", &[("requirements.txt", "six\n"), ("apt.txt", "jq\n")]);
    let podman = inputs(&sandbox, &[&plain, "--target", "podman"]);
    let recipe = podman["recipe"].as_str().unwrap();
    assert!(recipe.starts_with("sha256:"), "{podman:#}");
    assert!(podman["site:ca-bundle"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    // apt.txt renders one more fragment: another recipe, not only another file input.
    let apt = inputs(&sandbox, &[&with_apt, "--target", "podman"]);
    assert_ne!(apt["recipe"], podman["recipe"]);
    // Native builds name the native recipe's version.
    assert_eq!(
        inputs(&sandbox, &[&plain, "--target", "venv"])["recipe"],
        "native-1"
    );
    // podman-build-args change the image: they change the key.
    let before = sandbox.key(&[&plain, "--target", "podman"]);
    std::fs::write(
        sandbox.path().join("site.toml"),
        "base-image = \"localhost/base:1\"\npodman-build-args = [\"--squash\"]\n",
    )
    .unwrap();
    let after = inputs(&sandbox, &[&plain, "--target", "podman"]);
    assert_eq!(after["site:podman-build-args"], "--squash");
    assert_ne!(before, sandbox.key(&[&plain, "--target", "podman"]));
}

#[test]
fn where_a_venv_python_comes_from_is_planned_and_keyed() {
    let sandbox = Sandbox::new();
    let here = sandbox.repo(
        "here",
        &[
            ("requirements.txt", "six\n"),
            ("runtime.txt", &format!("python-{}\n", python_minor())),
        ],
    );
    assert_eq!(inputs(&sandbox, &[&here])["python-source"], "interpreter");
    // A Python this machine does not have comes from the conda channels.
    let elsewhere = sandbox.repo(
        "elsewhere",
        &[
            ("requirements.txt", "six\n"),
            ("runtime.txt", "python-3.4\n"),
        ],
    );
    let planned = inputs(&sandbox, &[&elsewhere]);
    assert_eq!(planned["python-source"], "conda", "{planned:#}");
    assert_eq!(planned["python"], "3.4");
}

/// A site index URL with a token enters the key (and so `key --explain` and every ready
/// marker) without the token; another token for the same mirror is the same key.
#[test]
fn site_credentials_stay_out_of_the_key() {
    let sandbox = Sandbox::new();
    let repo = sandbox.repo("private-index", &[("requirements.txt", "six\n")]);
    let site = |token: &str| {
        std::fs::write(
            sandbox.path().join("site.toml"),
            format!("pip-index-url = \"https://ci:{token}@mirror.example/simple\"\n"),
        )
        .unwrap();
    };
    site("SECRET-ONE");
    let first = inputs(&sandbox, &[&repo]);
    assert_eq!(
        first["site:pip-index-url"],
        "https://****@mirror.example/simple"
    );
    let explained = sandbox.ok(&["key", "--explain", &repo]);
    assert!(!explained.contains("SECRET-ONE"), "{explained}");
    let key = sandbox.key(&[&repo]);
    site("SECRET-TWO");
    assert_eq!(sandbox.key(&[&repo]), key);
}
