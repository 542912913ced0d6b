//! The launch service's settings: the site config's `[serve]` table, and what the Hub
//! tells a service through its environment (`reference/binderhub-hpc.md` §4.4).

use std::net::SocketAddr;
use std::time::Duration;

use crate::variables;

pub use crate::settings::ServeTable;

/// The `[serve]` keys and what they set (the man page's CONFIGURATION).
pub const KEYS: &[(&str, &str)] = &[
    (
        "max-builds",
        "builds running at once (default: half the CPUs, at least 1); more wait in a queue",
    ),
    (
        "max-builds-per-user",
        "builds one user may have running or queued (default 2)",
    ),
    (
        "build-timeout",
        "seconds before a build is killed (default 3600)",
    ),
    (
        "failed-build-retry",
        "seconds a failure is reported again before the spec builds again (default 300)",
    ),
    (
        "banned-specs",
        "regexes of specs (after the provider) that may not build, as BinderHub's",
    ),
    (
        "allowed-specs",
        "regexes of the only specs that may build, when given",
    ),
    ("providers", "enabled providers (default gh, gl, git, gist; zenodo, figshare, dataverse, hydroshare and ckan when enabled: records through the [records] table)"),
    (
        "build-token-expires",
        "seconds a launch page's build token is valid (default 300)",
    ),
    (
        "shutdown-grace",
        "seconds SIGTERM waits for running builds before killing them (default 600)",
    ),
    (
        "launch",
        "none (default): build and report; kernel: then start the user's server, whose \
         JUPYTER_PATH holds the store's kernels; server: build with --with-server, then \
         start a named server per launch inside the environment, in the repository at the \
         built commit (contrib/jupyterhub_config.py makes the spawner do so)",
    ),
    (
        "named-server-limit",
        "launch = server: named servers one user may have (BinderHub's \
         named_server_limit_per_user; default 0, no limit of the service's own)",
    ),
    (
        "content",
        "none (default), or nbgitpuller: pull the repository into the user's server and \
         point its notebooks at the environment's kernel (the service needs access:servers)",
    ),
    (
        "content-folder",
        "the folder of the user's home the repository goes to (default: its short name)",
    ),
];

/// The providers the service knows.
pub const PROVIDERS: &[&str] = &[
    "gh",
    "gl",
    "git",
    "gist",
    "zenodo",
    "figshare",
    "dataverse",
    "hydroshare",
    "ckan",
];

/// Why the service's settings are wrong.
#[derive(Debug, thiserror::Error)]
pub enum ServeConfigError {
    /// A regex of banned-specs or allowed-specs does not compile.
    #[error("[serve] {key}: `{pattern}` is not a valid regex: {message}")]
    Regex {
        /// The key.
        key: &'static str,
        /// The pattern.
        pattern: String,
        /// The regex crate's message.
        message: String,
    },
    /// A provider that does not exist.
    #[error("[serve] providers: unknown provider `{0}` (known: gh, gl, git, gist, zenodo, figshare, dataverse, hydroshare, ckan)")]
    Provider(String),
    /// An unknown content mode.
    #[error("[serve] content: unknown mode `{0}` (known: none, nbgitpuller)")]
    Content(String),
    /// A content folder that is not one plain name.
    #[error("[serve] content-folder: `{0}` must be one folder name (letters, digits, . _ -)")]
    ContentFolder(String),
    /// An unknown launch mode.
    #[error("[serve] launch: unknown mode `{0}` (known: none, kernel, server)")]
    Launch(String),
    /// A number that cannot work.
    #[error("[serve] {0} must be at least 1")]
    Zero(&'static str),
    /// No address to listen on.
    #[error(
        "cannot listen on `{0}`: expected IP:PORT (from --ip/--port or JUPYTERHUB_SERVICE_URL)"
    )]
    Address(String),
}

impl crate::diagnostic::Diagnostic for ServeConfigError {
    fn blame(&self) -> crate::diagnostic::Blame {
        crate::diagnostic::Blame::User
    }

    fn hint(&self) -> Option<String> {
        Some("fix the [serve] table of the site config (hpcbinder config show lists it)".into())
    }
}

/// The service's resolved settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The URL prefix, with leading and trailing `/`.
    pub prefix: String,
    /// The Hub API (`.../hub/api`, no trailing `/`), when running under a Hub.
    pub hub_api: Option<String>,
    /// The service's Hub token (OAuth client secret).
    pub hub_token: Option<String>,
    /// The service's name in the Hub.
    pub name: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth redirect URI (a path or URL).
    pub callback: String,
    /// The Hub's base URL path (`/`).
    pub hub_base: String,
    /// The public URL, when known.
    pub public_url: Option<String>,
    /// See [`ServeTable`].
    pub max_builds: usize,
    /// See [`ServeTable`].
    pub max_builds_per_user: usize,
    /// See [`ServeTable`].
    pub build_timeout: Duration,
    /// See [`ServeTable`].
    pub failed_build_retry: Duration,
    /// Compiled banned-specs.
    pub banned: Vec<regex::Regex>,
    /// Compiled allowed-specs.
    pub allowed: Vec<regex::Regex>,
    /// Enabled providers.
    pub providers: Vec<String>,
    /// See [`ServeTable`].
    pub build_token_expires: Duration,
    /// See [`ServeTable`].
    pub shutdown_grace: Duration,
    /// What follows a build.
    pub launch: Launch,
    /// `launch = "server"`: named servers per user (0: no limit of the service's own).
    pub named_server_limit: usize,
    /// Whether the service pulls the repository into the server with nbgitpuller.
    pub nbgitpuller: bool,
    /// nbgitpuller's target folder, when the site sets one.
    pub content_folder: Option<String>,
    /// Builds are Slurm jobs (`builder = "slurm"`): `build --submit`.
    pub slurm: bool,
}

/// What follows a build (`[serve] launch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Report the build only.
    None,
    /// The user's default server, with the environment's kernel.
    Kernel,
    /// A named server running inside the environment (BinderHub's model).
    Server,
}

impl ServeConfig {
    /// Resolve the table, the command line's address and the Hub's variables.
    pub fn resolve(
        table: &ServeTable,
        ip: Option<&str>,
        port: Option<u16>,
    ) -> Result<Self, ServeConfigError> {
        let regexes = |key: &'static str, patterns: &Option<Vec<String>>| {
            patterns
                .iter()
                .flatten()
                .map(|pattern| {
                    // re.match: anchored at the start, case-insensitive.
                    regex::RegexBuilder::new(&format!("^(?:{pattern})"))
                        .case_insensitive(true)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| ServeConfigError::Regex {
                            key,
                            pattern: pattern.clone(),
                            message: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let providers = table
            .providers
            .clone()
            .unwrap_or_else(|| PROVIDERS.iter().map(|p| p.to_string()).collect());
        if let Some(unknown) = providers.iter().find(|p| !PROVIDERS.contains(&p.as_str())) {
            return Err(ServeConfigError::Provider(unknown.clone()));
        }
        let at_least_one = |key: &'static str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(ServeConfigError::Zero(key)),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let name =
            variables::get(variables::JUPYTERHUB_SERVICE_NAME).unwrap_or_else(|| "binder".into());
        let mut prefix =
            variables::get(variables::JUPYTERHUB_SERVICE_PREFIX).unwrap_or_else(|| "/".into());
        if !prefix.starts_with('/') {
            prefix.insert(0, '/');
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let listen = listen_address(ip, port)?;
        let launch = match table.launch.as_deref() {
            None | Some("none") => Launch::None,
            Some("kernel") => Launch::Kernel,
            Some("server") => Launch::Server,
            Some(other) => return Err(ServeConfigError::Launch(other.to_string())),
        };
        let nbgitpuller = match table.content.as_deref() {
            None | Some("none") => false,
            Some("nbgitpuller") => true,
            Some(other) => return Err(ServeConfigError::Content(other.to_string())),
        };
        if let Some(folder) = &table.content_folder {
            let plain = !folder.is_empty()
                && folder != "."
                && folder != ".."
                && folder
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !plain {
                return Err(ServeConfigError::ContentFolder(folder.clone()));
            }
        }
        Ok(Self {
            listen,
            hub_api: variables::get(variables::JUPYTERHUB_API_URL)
                .map(|u| u.trim_end_matches('/').to_string()),
            hub_token: variables::get(variables::JUPYTERHUB_API_TOKEN),
            client_id: variables::get(variables::JUPYTERHUB_CLIENT_ID)
                .unwrap_or_else(|| format!("service-{name}")),
            callback: variables::get(variables::JUPYTERHUB_OAUTH_CALLBACK_URL)
                .unwrap_or_else(|| format!("{prefix}oauth_callback")),
            hub_base: variables::get(variables::JUPYTERHUB_BASE_URL).unwrap_or_else(|| "/".into()),
            public_url: variables::get(variables::JUPYTERHUB_PUBLIC_URL),
            name,
            prefix,
            max_builds: at_least_one("max-builds", table.max_builds, (cpus / 2).max(1))?,
            max_builds_per_user: at_least_one("max-builds-per-user", table.max_builds_per_user, 2)?,
            build_timeout: Duration::from_secs(table.build_timeout.unwrap_or(3600).max(1)),
            failed_build_retry: Duration::from_secs(table.failed_build_retry.unwrap_or(300)),
            banned: regexes("banned-specs", &table.banned_specs)?,
            allowed: regexes("allowed-specs", &table.allowed_specs)?,
            providers,
            build_token_expires: Duration::from_secs(
                table.build_token_expires.unwrap_or(300).max(1),
            ),
            shutdown_grace: Duration::from_secs(table.shutdown_grace.unwrap_or(600)),
            launch,
            named_server_limit: table.named_server_limit.unwrap_or(0),
            nbgitpuller,
            content_folder: table.content_folder.clone(),
            slurm: false,
        })
    }

    /// BinderHub's `is_banned`: banned when a banned pattern matches, or when allowed
    /// patterns exist and none matches.
    pub fn is_banned(&self, spec: &str) -> bool {
        self.banned.iter().any(|r| r.is_match(spec))
            || (!self.allowed.is_empty() && !self.allowed.iter().any(|r| r.is_match(spec)))
    }

    /// The access scope a user needs.
    pub fn access_scope(&self) -> String {
        format!("access:services!service={}", self.name)
    }
}

/// `--ip`/`--port`, else the Hub's `JUPYTERHUB_SERVICE_URL`, else 127.0.0.1:8585.
fn listen_address(ip: Option<&str>, port: Option<u16>) -> Result<SocketAddr, ServeConfigError> {
    let from_hub = variables::get(variables::JUPYTERHUB_SERVICE_URL)
        .and_then(|u| url::Url::parse(&u).ok())
        .and_then(|u| Some((u.host_str()?.to_string(), u.port_or_known_default()?)));
    let (hub_ip, hub_port) = from_hub.unwrap_or(("127.0.0.1".into(), 8585));
    let ip = ip.map(str::to_string).unwrap_or(hub_ip);
    let ip = ip.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = port.unwrap_or(hub_port);
    let text = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let text = if text.starts_with("localhost:") {
        text.replacen("localhost", "127.0.0.1", 1)
    } else {
        text
    };
    text.parse().map_err(|_| ServeConfigError::Address(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(table: ServeTable) -> ServeConfig {
        ServeConfig::resolve(&table, Some("127.0.0.1"), Some(1)).unwrap()
    }

    #[test]
    fn banned_and_allowed_specs_follow_binderhub() {
        let c = config(ServeTable {
            banned_specs: Some(vec!["evil/.*".into()]),
            ..Default::default()
        });
        assert!(c.is_banned("Evil/repo/HEAD"), "case-insensitive");
        assert!(
            !c.is_banned("good/evil/HEAD"),
            "anchored at the start, as re.match"
        );
        let c = config(ServeTable {
            allowed_specs: Some(vec!["org/.*".into()]),
            banned_specs: Some(vec!["org/bad".into()]),
            ..Default::default()
        });
        assert!(!c.is_banned("org/good/HEAD"));
        assert!(c.is_banned("org/bad/HEAD"));
        assert!(c.is_banned("other/repo/HEAD"), "not on the allowed list");
    }

    #[test]
    fn bad_settings_are_errors() {
        let bad = |table: ServeTable| ServeConfig::resolve(&table, Some("127.0.0.1"), Some(1));
        assert!(matches!(
            bad(ServeTable {
                banned_specs: Some(vec!["(".into()]),
                ..Default::default()
            }),
            Err(ServeConfigError::Regex { .. })
        ));
        assert!(matches!(
            bad(ServeTable {
                providers: Some(vec!["bitbucket".into()]),
                ..Default::default()
            }),
            Err(ServeConfigError::Provider(_))
        ));
        assert!(matches!(
            bad(ServeTable {
                max_builds: Some(0),
                ..Default::default()
            }),
            Err(ServeConfigError::Zero("max-builds"))
        ));
        assert!(matches!(
            ServeConfig::resolve(&ServeTable::default(), Some("not an ip"), Some(1)),
            Err(ServeConfigError::Address(_))
        ));
    }
}
