//! The solve: channels through the site's alias and mirrors, repodata, virtual packages,
//! resolvo.

use std::fmt::Write as _;

use rattler_cache::package_cache::PackageCache;
use rattler_conda_types::{
    Channel, ChannelConfig, GenericVirtualPackage, MatchSpec, ParseStrictness, RepoDataRecord,
    Subdir,
};
use rattler_repodata_gateway::Gateway;
use rattler_solve::{resolvo, SolverImpl, SolverTask};

use crate::backends::process::BuildError;
use crate::backends::{spec_has_ipykernel, Context};
use crate::detect::CondaSpec;
use crate::events::{Phase, ReporterExt};
use crate::key;

/// What a solve gives the installer.
pub(super) struct Solved {
    /// The records to link.
    pub records: Vec<RepoDataRecord>,
    /// The specs solved for.
    pub specs: Vec<MatchSpec>,
    /// The channels' URLs.
    pub channels: Vec<String>,
    /// ipykernel is to come from the Python index (the channels lack it).
    pub kernel_from_pip: bool,
}

/// Channels, repodata, virtual packages, resolvo.
pub(super) async fn solve(
    context: &Context<'_>,
    conda: &CondaSpec,
    platform: &Subdir,
    package_cache: &PackageCache,
) -> anyhow::Result<Solved> {
    let request = context.request;
    let settings = request.settings;
    let config = ChannelConfig {
        // URL joining drops a last path segment without a trailing slash
        // (`https://mirror/conda` + `conda-forge` would become `https://mirror/conda-forge`).
        channel_alias: url::Url::parse(&format!(
            "{}/",
            settings.conda.channel_alias.trim_end_matches('/')
        ))
        .map_err(|e| BuildError::Setting {
            setting: "channel-alias",
            value: settings.conda.channel_alias.clone(),
            message: e.to_string(),
        })?,
        root_dir: context.repo().to_path_buf(),
    };
    let names: Vec<&String> = if conda.channels.iter().any(|c| c != "nodefaults") {
        conda
            .channels
            .iter()
            .filter(|c| *c != "nodefaults")
            .collect()
    } else {
        settings.conda.channels.iter().collect()
    };
    let mut channels = Vec::new();
    for name in names {
        let channel = Channel::from_str(name, &config).map_err(|e| BuildError::Channel {
            channel: name.clone(),
            message: e.to_string(),
        })?;
        channels.push(mirrored(channel, &settings.conda.mirrors));
    }
    let mut specs = Vec::new();
    for dependency in &conda.dependencies {
        specs.push(
            MatchSpec::from_str(dependency, ParseStrictness::Lenient).map_err(|e| {
                BuildError::Package {
                    message: format!("`{dependency}` is not a valid conda spec: {e}"),
                }
            })?,
        );
    }
    let names_python = |s: &MatchSpec| {
        s.name
            .as_exact()
            .is_some_and(|n| n.as_normalized() == "python")
    };
    if !specs.iter().any(names_python) {
        let (version, _) = key::python_version(request.spec, settings);
        specs.push(MatchSpec::from_str(
            &format!("python {version}.*"),
            ParseStrictness::Lenient,
        )?);
    }
    // ipykernel when the spec lacks it: from the channels (`kernel-package = "conda"`),
    // from the Python index (`"pip"`), or from the channels when they have it, else the
    // index (`"auto"`, the default).
    let needs_kernel = !spec_has_ipykernel(request.spec, context.repo());
    let kernel_spec = MatchSpec::from_str("ipykernel", ParseStrictness::Lenient)?;
    let mut query_specs = specs.clone();
    if needs_kernel && settings.conda.kernel_package != "pip" {
        query_specs.push(kernel_spec.clone());
    }
    context.reporter.phase(
        Phase::Building,
        format!(
            "Reading repodata from {}",
            channels
                .iter()
                .map(|c| c.base_url.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let gateway = Gateway::builder()
        .with_cache_dir(crate::store::user_cache_at(context.store.root()).join("repodata"))
        .with_package_cache(package_cache.clone())
        .finish();
    let repodata = gateway
        .query(channels.clone(), [*platform, Subdir::NoArch], query_specs)
        .recursive(true)
        .await
        .map_err(|e| BuildError::Channel {
            channel: channels
                .iter()
                .map(|c| c.base_url.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            message: error_chain(&e),
        })?;
    let mut kernel_from_pip = false;
    if needs_kernel && settings.conda.kernel_package != "pip" {
        let channels_have_it = repodata
            .iter()
            .flat_map(|r| r.iter())
            .any(|record| record.package_record.name.as_normalized() == "ipykernel");
        if channels_have_it || settings.conda.kernel_package == "conda" {
            context.reporter.phase(
                Phase::Building,
                "Adding ipykernel: the environment does not list it",
            );
            specs.push(kernel_spec);
        } else {
            context.reporter.warning(
                "the environment does not list ipykernel and its channels do not have it; installing ipykernel from the Python index instead (set kernel-package to choose one source)",
            );
            kernel_from_pip = true;
        }
    }
    let virtual_packages = virtual_packages(&settings.conda.virtual_packages)?;
    context
        .reporter
        .phase(Phase::Building, format!("Solving {} specs", specs.len()));
    let task = SolverTask {
        specs: specs.clone(),
        virtual_packages,
        ..SolverTask::from_iter(repodata.iter())
    };
    let solution = resolvo::Solver.solve(task).map_err(|e| match e {
        rattler_solve::SolveError::Unsolvable(reasons) => BuildError::Unsolvable {
            message: reasons.join("\n"),
        },
        other => BuildError::Unsolvable {
            message: other.to_string(),
        },
    })?;
    let urls = channels.iter().map(|c| c.base_url.to_string()).collect();
    Ok(Solved {
        records: solution.records,
        specs,
        channels: urls,
        kernel_from_pip,
    })
}

pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    message
}

/// The site's default channels as the solver would read them (through `channel-alias`
/// and `mirrors`): `(name, base URL)`, for `doctor`.
pub fn site_channels(
    settings: &crate::settings::Settings,
) -> Vec<(String, Result<url::Url, String>)> {
    let alias = url::Url::parse(&format!(
        "{}/",
        settings.conda.channel_alias.trim_end_matches('/')
    ));
    let root_dir = std::env::current_dir().unwrap_or_default();
    settings
        .conda
        .channels
        .iter()
        .map(|name| {
            let url = match &alias {
                Err(e) => Err(format!(
                    "invalid channel-alias `{}`: {e}",
                    settings.conda.channel_alias
                )),
                Ok(alias) => Channel::from_str(
                    name,
                    &ChannelConfig {
                        channel_alias: alias.clone(),
                        root_dir: root_dir.clone(),
                    },
                )
                .map_err(|e| e.to_string())
                .and_then(|channel| {
                    url::Url::parse(
                        &mirrored(channel, &settings.conda.mirrors)
                            .base_url
                            .to_string(),
                    )
                    .map_err(|e| e.to_string())
                }),
            };
            (name.clone(), url)
        })
        .collect()
}

/// Point a channel at the site's mirror when one is configured for its URL prefix.
fn mirrored(channel: Channel, mirrors: &std::collections::BTreeMap<String, String>) -> Channel {
    let base = channel.base_url.to_string();
    for (from, to) in mirrors {
        if let Some(rest) = base.strip_prefix(from.trim_end_matches('/')) {
            let url = format!("{}{rest}", to.trim_end_matches('/'));
            if let Ok(url) = url::Url::parse(&url) {
                return Channel::from_url(url);
            }
        }
    }
    channel
}

/// Configured virtual packages (`__glibc=2.28`), else those of this machine.
fn virtual_packages(configured: &[String]) -> anyhow::Result<Vec<GenericVirtualPackage>> {
    if configured.is_empty() {
        let detected = rattler_virtual_packages::VirtualPackages::detect(
            &rattler_virtual_packages::VirtualPackageOverrides::from_env(),
            None,
        )?;
        return Ok(detected.into_generic_virtual_packages().collect());
    }
    configured
        .iter()
        .map(|text| {
            serde_json::from_value(serde_json::Value::String(text.clone())).map_err(|e| {
                BuildError::Setting {
                    setting: "virtual-packages",
                    value: text.clone(),
                    message: e.to_string(),
                }
                .into()
            })
        })
        .collect()
}
