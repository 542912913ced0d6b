//! Every environment variable hpcbinder reads, in one place, each documented.

/// The store directory (environments, images, caches); beats config files.
pub const HPCBINDER_STORE: &str = "HPCBINDER_STORE";
/// The default build target (`auto`, `conda`, `venv`, `podman`, ...); beats config files.
pub const HPCBINDER_TARGET: &str = "HPCBINDER_TARGET";
/// Path of the user config file; default `$XDG_CONFIG_HOME/hpcbinder/config.toml`.
pub const HPCBINDER_CONFIG: &str = "HPCBINDER_CONFIG";
/// Path of the site config file (written by the centre); default `/etc/hpcbinder/config.toml`.
pub const HPCBINDER_SITE_CONFIG: &str = "HPCBINDER_SITE_CONFIG";
/// Disables colour when set to anything non-empty (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";
/// The user's home directory.
pub const HOME: &str = "HOME";
/// XDG base directory for data (default store location).
pub const XDG_DATA_HOME: &str = "XDG_DATA_HOME";
/// XDG base directory for configuration (user config file).
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
/// XDG base directory for per-user caches (the interpreter probe cache).
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// pyenv's selected version: part of the interpreter probe cache's key.
pub const PYENV_VERSION: &str = "PYENV_VERSION";
/// Jupyter's data directory; kernelspecs go in its `kernels/` folder.
pub const JUPYTER_DATA_DIR: &str = "JUPYTER_DATA_DIR";
/// The launch service's URL prefix behind the Hub's proxy (`/services/<name>/`).
pub const JUPYTERHUB_SERVICE_PREFIX: &str = "JUPYTERHUB_SERVICE_PREFIX";
/// The Hub's REST API (`http://127.0.0.1:8081/hub/api`), for the launch service.
pub const JUPYTERHUB_API_URL: &str = "JUPYTERHUB_API_URL";
/// The launch service's own Hub API token (also its OAuth client secret). Never passed on
/// to builds.
pub const JUPYTERHUB_API_TOKEN: &str = "JUPYTERHUB_API_TOKEN";
/// The address the Hub proxies the launch service at (`http://127.0.0.1:10101`).
pub const JUPYTERHUB_SERVICE_URL: &str = "JUPYTERHUB_SERVICE_URL";
/// The launch service's name in the Hub (`binder`).
pub const JUPYTERHUB_SERVICE_NAME: &str = "JUPYTERHUB_SERVICE_NAME";
/// The launch service's OAuth client id (`service-<name>`).
pub const JUPYTERHUB_CLIENT_ID: &str = "JUPYTERHUB_CLIENT_ID";
/// Where the Hub sends browsers back after login (`/services/<name>/oauth_callback`).
pub const JUPYTERHUB_OAUTH_CALLBACK_URL: &str = "JUPYTERHUB_OAUTH_CALLBACK_URL";
/// The Hub's base URL (`/`), under which `hub/api/oauth2/authorize` lives.
pub const JUPYTERHUB_BASE_URL: &str = "JUPYTERHUB_BASE_URL";
/// The Hub's public URL, when set: launch links and badges use it.
pub const JUPYTERHUB_PUBLIC_URL: &str = "JUPYTERHUB_PUBLIC_URL";
/// A Software Heritage API token, sent as a bearer token to its API (which limits
/// anonymous requests); never written anywhere.
pub const SWH_TOKEN: &str = "SWH_TOKEN";

/// The variables a user or centre sets, with what they do (the man page's ENVIRONMENT).
pub const DOCUMENTED: &[(&str, &str)] = &[
    (HPCBINDER_STORE, "The store directory; beats config files."),
    (
        HPCBINDER_TARGET,
        "The default build target; beats config files.",
    ),
    (
        HPCBINDER_CONFIG,
        "The user config file (default $XDG_CONFIG_HOME/hpcbinder/config.toml).",
    ),
    (
        HPCBINDER_SITE_CONFIG,
        "The site config file (default /etc/hpcbinder/config.toml).",
    ),
    (
        JUPYTER_DATA_DIR,
        "Jupyter's data directory; kernelspecs go in its kernels/ folder.",
    ),
    (NO_COLOR, "Disables colour when set to anything non-empty."),
    (
        SWH_TOKEN,
        "A Software Heritage API token for swh: sources (its API limits anonymous requests).",
    ),
    (
        JUPYTERHUB_SERVICE_PREFIX,
        "serve: the URL prefix the Hub's proxy serves the service at (set by the Hub).",
    ),
    (
        JUPYTERHUB_API_URL,
        "serve: the Hub's REST API, for token checks and OAuth (set by the Hub).",
    ),
    (
        JUPYTERHUB_API_TOKEN,
        "serve: the service's Hub token and OAuth secret (set by the Hub; never given to builds).",
    ),
    (
        JUPYTERHUB_SERVICE_URL,
        "serve: the address to listen on unless --ip/--port say otherwise (set by the Hub).",
    ),
];

/// The first file named `program` in a `PATH` directory.
pub fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Read a variable, treating an empty value as unset.
pub fn get(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
