//! Build targets: what the command line's `--target` and the `target` setting name. A
//! leaf module (it imports nothing of the crate), so settings, planning and the builders
//! can all name targets without depending on each other.

use serde::Serialize;

/// Where an environment is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Pick from the spec and site config.
    Auto,
    /// A conda environment (rattler).
    Conda,
    /// A Python venv (uv or pip).
    Venv,
    /// A Podman image.
    Podman,
    /// A podman-hpc image, migrated to squashfs.
    PodmanHpc,
    /// An Apptainer SIF.
    Apptainer,
    /// A Shifter image (pushed to a registry, then pulled by shifterimg).
    Shifter,
    /// A Charliecloud image (directory and squashfs).
    Charliecloud,
}

impl Target {
    /// Every target, in help order.
    pub const ALL: &'static [Target] = &[
        Self::Auto,
        Self::Conda,
        Self::Venv,
        Self::Podman,
        Self::PodmanHpc,
        Self::Apptainer,
        Self::Shifter,
        Self::Charliecloud,
    ];
    /// The container targets.
    pub const CONTAINERS: &'static [Target] = &[
        Self::Podman,
        Self::PodmanHpc,
        Self::Apptainer,
        Self::Shifter,
        Self::Charliecloud,
    ];

    /// The name used on the command line and in config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Conda => "conda",
            Self::Venv => "venv",
            Self::Podman => "podman",
            Self::PodmanHpc => "podman-hpc",
            Self::Apptainer => "apptainer",
            Self::Shifter => "shifter",
            Self::Charliecloud => "charliecloud",
        }
    }

    /// Parse a name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// Whether this target produces a container image.
    pub fn is_container(self) -> bool {
        Self::CONTAINERS.contains(&self)
    }
}
