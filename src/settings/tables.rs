//! The config files' tables (`[serve]`, `[slurm]`), as written; their users resolve them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[serve]` table of a config file, as written (all optional); `hpcbinder serve`
/// resolves it (`serve::ServeConfig`).
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeTable {
    /// Builds running at once; more wait in the queue.
    pub max_builds: Option<usize>,
    /// Builds one user may have running or queued at once.
    pub max_builds_per_user: Option<usize>,
    /// Seconds before a build is killed.
    pub build_timeout: Option<u64>,
    /// Seconds a failed build's failure is reported again instead of rebuilding.
    pub failed_build_retry: Option<u64>,
    /// Regexes (matched at the start of `<spec>`, case-insensitive) that may not build.
    pub banned_specs: Option<Vec<String>>,
    /// Regexes of the only specs that may build, when given.
    pub allowed_specs: Option<Vec<String>>,
    /// The enabled providers (`gh`, `gl`, `git`, `gist`).
    pub providers: Option<Vec<String>>,
    /// Seconds a launch page's build token is valid.
    pub build_token_expires: Option<u64>,
    /// Seconds SIGTERM waits for running builds before killing them.
    pub shutdown_grace: Option<u64>,
    /// What follows a build: `none` (report it), `kernel` (the user's server, with the
    /// environment's kernel in the shared kernels directory) or `server` (a named server
    /// per launch that runs inside the environment, BinderHub's model).
    pub launch: Option<String>,
    /// `launch = "server"`: the named servers a user may have (BinderHub's
    /// `named_server_limit_per_user`; 0: no limit of the service's own).
    pub named_server_limit: Option<usize>,
    /// How the repository's files reach the launched server: `none` or `nbgitpuller`.
    pub content: Option<String>,
    /// The folder of the user's home nbgitpuller puts the repository in (default: the
    /// repository's short name).
    pub content_folder: Option<String>,
}

/// Where builds run (the `builder` key).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Builder {
    /// On this machine.
    #[default]
    Local,
    /// As Slurm batch jobs (`build --submit`).
    Slurm,
}

/// The `[slurm]` table: how build jobs are submitted (all optional; unset options are
/// left to the site's Slurm defaults). `[slurm.target.<target>]` tables override any of
/// them for builds of that target (image builds may need another partition).
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SlurmTable {
    /// `sbatch --partition`.
    pub partition: Option<String>,
    /// `sbatch --qos`.
    pub qos: Option<String>,
    /// `sbatch --account`.
    pub account: Option<String>,
    /// `sbatch --time` (Slurm's formats: minutes, MM:SS, HH:MM:SS, D-HH:MM...).
    pub time: Option<String>,
    /// `sbatch --cpus-per-task`.
    pub cpus: Option<u32>,
    /// `sbatch --mem` (e.g. 8G).
    pub memory: Option<String>,
    /// Any other `sbatch` arguments, each one argument (e.g. `--constraint=cpu`).
    pub sbatch_args: Option<Vec<String>>,
    /// The hpcbinder executable jobs run (default: this one; it must be at the same
    /// path on the compute nodes, as on a shared filesystem).
    pub hpcbinder: Option<PathBuf>,
    /// Per-target overrides: `[slurm.target.podman]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<BTreeMap<String, SlurmTable>>,
}

impl SlurmTable {
    /// The options for a build of `target`: its `[slurm.target.<target>]` values over
    /// the table's, and the table's `sbatch-args` followed by the target's.
    pub fn for_target(&self, target: &str) -> SlurmTable {
        let mut options = self.clone();
        options.target = None;
        let Some(over) = self.target.as_ref().and_then(|t| t.get(target)) else {
            return options;
        };
        let pick = |a: &Option<String>, b: &Option<String>| b.clone().or_else(|| a.clone());
        options.partition = pick(&self.partition, &over.partition);
        options.qos = pick(&self.qos, &over.qos);
        options.account = pick(&self.account, &over.account);
        options.time = pick(&self.time, &over.time);
        options.memory = pick(&self.memory, &over.memory);
        options.cpus = over.cpus.or(self.cpus);
        options.hpcbinder = over.hpcbinder.clone().or_else(|| self.hpcbinder.clone());
        let mut args = self.sbatch_args.clone().unwrap_or_default();
        args.extend(over.sbatch_args.clone().unwrap_or_default());
        options.sbatch_args = (!args.is_empty()).then_some(args);
        options
    }

    /// The `sbatch` arguments these options give.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let named = [
            ("--partition", &self.partition),
            ("--qos", &self.qos),
            ("--account", &self.account),
            ("--time", &self.time),
            ("--mem", &self.memory),
        ];
        for (flag, value) in named {
            if let Some(value) = value {
                args.push(format!("{flag}={value}"));
            }
        }
        if let Some(cpus) = self.cpus {
            args.push(format!("--cpus-per-task={cpus}"));
        }
        args.extend(self.sbatch_args.clone().unwrap_or_default());
        args
    }

    /// What is wrong with the table, if anything: the value, and what is allowed.
    pub fn problem(&self) -> Option<(String, String)> {
        let targets: Vec<&str> = crate::target::Target::ALL
            .iter()
            .map(|t| t.name())
            .collect();
        for (name, over) in self.target.iter().flatten() {
            if !targets.contains(&name.as_str()) {
                return Some((
                    format!("[slurm.target.{name}]"),
                    format!("a target: {}", targets.join(", ")),
                ));
            }
            if over.target.is_some() {
                return Some((
                    format!("[slurm.target.{name}.target]"),
                    "no nested target tables".into(),
                ));
            }
        }
        let args = self.sbatch_args.iter().flatten();
        let wrong = args.chain(
            self.target
                .iter()
                .flat_map(|t| t.values().flat_map(|o| o.sbatch_args.iter().flatten())),
        );
        for arg in wrong {
            // hpcbinder owns the job's name, output and error files and its wait.
            for owned in [
                "--output",
                "-o",
                "--error",
                "-e",
                "--parsable",
                "--wait",
                "-W",
                "--wrap",
            ] {
                if arg == owned || arg.starts_with(&format!("{owned}=")) {
                    return Some((
                        format!("sbatch-args = [\"{arg}\"]"),
                        "sbatch arguments other than --output, --error, --parsable, --wait and --wrap (hpcbinder sets those)".into(),
                    ));
                }
            }
        }
        None
    }
}

/// The `[records]` table: where archived records (DOIs, Zenodo, Figshare, Dataverse,
/// HydroShare, CKAN, Software Heritage) are looked up. Each is a base URL; tests and sites
/// with mirrors point them elsewhere.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RecordsTable {
    /// The DOI resolver whose handle API (`/api/handles/<doi>`) turns a DOI into a URL
    /// (default https://doi.org).
    pub doi_resolver: Option<String>,
    /// Zenodo (default https://zenodo.org): its records API is `<zenodo>/api/records/`.
    pub zenodo: Option<String>,
    /// Figshare's pages (default https://figshare.com), which its DOIs resolve to.
    pub figshare: Option<String>,
    /// Figshare's API (default https://api.figshare.com/v2).
    pub figshare_api: Option<String>,
    /// Where Figshare's files may be downloaded from, besides its API's host (default
    /// https://ndownloader.figshare.com).
    pub figshare_downloads: Option<Vec<String>>,
    /// The Dataverse installations a DOI may resolve to (default: a list of public ones;
    /// repo2docker reads the same from IQSS's installations list).
    pub dataverse: Option<Vec<String>>,
    /// HydroShare (default https://www.hydroshare.org).
    pub hydroshare: Option<String>,
    /// The CKAN sites datasets may come from (default https://demo.ckan.org and
    /// https://catalog.data.gov): a launch link names any URL, so only these are fetched.
    pub ckan: Option<Vec<String>>,
    /// Software Heritage's API (default https://archive.softwareheritage.org/api/1).
    pub software_heritage: Option<String>,
    /// Seconds to wait for a provider preparing a download (a HydroShare bag, a Software
    /// Heritage vault bundle), default 600.
    pub prepare_timeout: Option<u64>,
}

impl RecordsTable {
    /// The DOI resolver's base URL, without a trailing `/`.
    pub fn doi_resolver(&self) -> &str {
        self.doi_resolver
            .as_deref()
            .unwrap_or("https://doi.org")
            .trim_end_matches('/')
    }

    /// Figshare's pages' base URL, without a trailing `/`.
    pub fn figshare(&self) -> &str {
        self.figshare
            .as_deref()
            .unwrap_or("https://figshare.com")
            .trim_end_matches('/')
    }

    /// Figshare's API base URL, without a trailing `/`.
    pub fn figshare_api(&self) -> &str {
        self.figshare_api
            .as_deref()
            .unwrap_or("https://api.figshare.com/v2")
            .trim_end_matches('/')
    }

    /// The hosts Figshare's files may come from.
    pub fn figshare_downloads(&self) -> Vec<String> {
        self.figshare_downloads
            .clone()
            .unwrap_or_else(|| vec!["https://ndownloader.figshare.com".into()])
    }

    /// The Dataverse installations' base URLs, without a trailing `/`.
    pub fn dataverse(&self) -> Vec<String> {
        let defaults = [
            "https://dataverse.harvard.edu",
            "https://demo.dataverse.org",
            "https://dataverse.nl",
            "https://borealisdata.ca",
            "https://dataverse.no",
            "https://data.qdr.syr.edu",
            "https://recherche.data.gouv.fr",
        ];
        self.dataverse
            .clone()
            .unwrap_or_else(|| defaults.iter().map(|s| s.to_string()).collect())
            .into_iter()
            .map(|s| s.trim_end_matches('/').to_string())
            .collect()
    }

    /// HydroShare's base URL, without a trailing `/`.
    pub fn hydroshare(&self) -> &str {
        self.hydroshare
            .as_deref()
            .unwrap_or("https://www.hydroshare.org")
            .trim_end_matches('/')
    }

    /// The CKAN sites' base URLs, without a trailing `/`.
    pub fn ckan(&self) -> Vec<String> {
        self.ckan
            .clone()
            .unwrap_or_else(|| {
                vec![
                    "https://demo.ckan.org".into(),
                    "https://catalog.data.gov".into(),
                ]
            })
            .into_iter()
            .map(|s| s.trim_end_matches('/').to_string())
            .collect()
    }

    /// Software Heritage's API base URL, without a trailing `/`.
    pub fn software_heritage(&self) -> &str {
        self.software_heritage
            .as_deref()
            .unwrap_or("https://archive.softwareheritage.org/api/1")
            .trim_end_matches('/')
    }

    /// How long to wait for a provider preparing a download.
    pub fn prepare_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.prepare_timeout.unwrap_or(600))
    }

    /// Zenodo's base URL, without a trailing `/`.
    pub fn zenodo(&self) -> &str {
        self.zenodo
            .as_deref()
            .unwrap_or("https://zenodo.org")
            .trim_end_matches('/')
    }
}
