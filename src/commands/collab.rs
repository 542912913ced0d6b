//! `pin`, `unpin`, `pins`, `list`, `show`, `rm`, `gc`, `export`, `jupyter-path`,
//! `kernel add`: the collaboration and store-management commands ([`crate::collab`]).

use crate::cli::PinArgs;
use crate::collab::{self, inventory, CollabError};
use crate::error::ExitStatus;
use crate::events::Reporter;
use crate::pipeline::{self, Action, Options, Repository};
use crate::plan::KernelOptions;
use crate::printer::{sanitize_line, Printer};
use crate::settings::Settings;
use crate::store::Store;

fn open(settings: &Settings) -> anyhow::Result<Store> {
    Ok(Store::open(&settings.store, &settings.store_maintainers)?)
}

fn when(seconds: u64) -> String {
    let age = crate::store::now().saturating_sub(seconds);
    match age {
        0..=119 => format!("{age} s ago"),
        120..=7199 => format!("{} min ago", age / 60),
        7200..=172_799 => format!("{} h ago", age / 3600),
        _ => format!("{} days ago", age / 86_400),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0..=1_048_575 => format!("{} KiB", bytes / 1024),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", bytes as f64 / 1_073_741_824.0),
    }
}

/// `pin NAME ...`.
pub fn pin(
    args: &PinArgs,
    settings: &Settings,
    printer: &Printer,
    reporter: &dyn Reporter,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    collab::check_name(&args.name)?;
    let store = open(settings)?;
    if args.history {
        let pins = collab::read_pins(store.root(), settings)?;
        let pin = pins.get(&args.name).ok_or_else(|| CollabError::NoPin {
            name: args.name.clone(),
        })?;
        if json {
            printer.data(&serde_json::to_string_pretty(pin)?);
            return Ok(ExitStatus::Success);
        }
        let count = pin.history.len();
        for (index, target) in pin.history.iter().enumerate() {
            printer.data(&format!(
                "{:>3}  {}  {}  {} by {}",
                count - index,
                &target.key[..16],
                sanitize_line(&crate::source::redact(&target.source)),
                when(target.at),
                target.by
            ));
        }
        printer.data(&format!(
            "now  {}  {}  {} by {}",
            &pin.current.key[..16],
            sanitize_line(&crate::source::redact(&pin.current.source)),
            when(pin.current.at),
            pin.current.by
        ));
        return Ok(ExitStatus::Success);
    }
    let pinned = if let Some(steps) = args.rollback {
        collab::rollback(&store, settings, &args.name, steps, reporter)?
    } else if let Some(key) = &args.key {
        collab::require_maintainer(&store, settings, &format!("pin `{}`", args.name))?;
        let entry = inventory::resolve(&store, settings, key)?;
        pin_entry(&store, settings, args, &entry, reporter)?
    } else if args.repo.is_some() || !args.from_lock.is_empty() {
        let (repo, from_lock) = match &args.repo {
            Some(repo) => (repo.clone(), args.from_lock.clone()),
            None => (lock_repository(settings, &args.from_lock)?, Vec::new()),
        };
        // Refused before anything is built.
        collab::require_maintainer(&store, settings, &format!("pin `{}`", args.name))?;
        let options = Options {
            kernel: KernelOptions::default(),
            register_kernel: false,
            verify: false,
            from_lock,
            replace_kernel: false,
            action: Action::Build,
        };
        let repository = Repository {
            spec: repo,
            reference: args.reference.clone(),
        };
        let outcome = match pipeline::run(&repository, settings, &options, reporter)? {
            pipeline::Outcome::Built { outcome, .. } => outcome,
            _ => unreachable!("a build was asked for"),
        };
        let entry = inventory::resolve(&store, settings, &outcome.key)?;
        pin_entry(&store, settings, args, &entry, reporter)?
    } else {
        anyhow::bail!(CollabError::NothingToPin {
            name: args.name.clone(),
        });
    };
    if json {
        printer.data(&serde_json::to_string_pretty(&pinned)?);
    } else {
        printer.info(&format!(
            "Pinned {} to {} ({}); kernel \"{}\" in {}",
            args.name,
            &pinned.current.key[..16],
            sanitize_line(&crate::source::redact(&pinned.current.source)),
            sanitize_line(&collab::display_name(&args.name, &pinned)),
            collab::kernels_dir(settings).join(&args.name).display()
        ));
        printer.data(&pinned.current.key);
    }
    Ok(ExitStatus::Success)
}

/// Point `args.name` at the environment `entry`.
fn pin_entry(
    store: &Store,
    settings: &Settings,
    args: &PinArgs,
    entry: &inventory::Entry,
    reporter: &dyn Reporter,
) -> anyhow::Result<collab::Pin> {
    let ready = collab::ready_of(
        store,
        &collab::PinTarget {
            key: entry.key.clone(),
            slot: entry.slot.clone(),
            source: entry.source.clone(),
            target: entry.target.clone(),
            at: 0,
            by: String::new(),
        },
    )?;
    collab::pin_ready(
        store,
        settings,
        &args.name,
        collab::Choice {
            ready: &ready,
            slot: &entry.slot,
            display_name: args.display_name.clone(),
        },
        !args.no_verify,
        reporter,
    )
}

/// `unpin NAME`.
pub fn unpin(name: &str, settings: &Settings, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let store = open(settings)?;
    let removed = collab::unpin(&store, settings, name)?;
    printer.info(&format!(
        "Unpinned {name} (it pointed at {}); the environment stays until gc",
        &removed.current.key[..16]
    ));
    Ok(ExitStatus::Success)
}

/// `pins`.
pub fn pins(settings: &Settings, printer: &Printer, json: bool) -> anyhow::Result<ExitStatus> {
    let store = open(settings)?;
    let pins = collab::read_pins(store.root(), settings)?;
    if json {
        printer.data(&serde_json::to_string_pretty(&pins)?);
        return Ok(ExitStatus::Success);
    }
    if pins.is_empty() {
        printer
            .info("No pins in this store; a maintainer adds one with `hpcbinder pin NAME <repo>`");
    }
    for (name, pin) in &pins {
        printer.data(&format!(
            "{name}  {}  {}  {} by {}",
            &pin.current.key[..16],
            sanitize_line(&crate::source::redact(&pin.current.source)),
            when(pin.current.at),
            pin.current.by
        ));
    }
    Ok(ExitStatus::Success)
}

/// `list`.
pub fn list(settings: &Settings, printer: &Printer, json: bool) -> anyhow::Result<ExitStatus> {
    let store = open(settings)?;
    let entries = inventory::entries(&store, settings)?;
    if json {
        printer.data(&serde_json::to_string_pretty(&entries)?);
        return Ok(ExitStatus::Success);
    }
    for entry in &entries {
        printer.data(&format!(
            "{}  {:<8} {:>10}  built {}  used {}  {}{}{}",
            entry.slot,
            entry.target,
            size(entry.size),
            when(entry.built),
            entry.last_used.map_or_else(|| "never".into(), when),
            sanitize_line(&entry.source),
            if entry.pins.is_empty() {
                String::new()
            } else {
                format!("  pins: {}", entry.pins.join(", "))
            },
            if entry.kernels.is_empty() {
                String::new()
            } else {
                format!("  kernels: {}", entry.kernels.join(", "))
            },
        ));
    }
    Ok(ExitStatus::Success)
}

/// `show NAME|KEY`.
pub fn show(
    what: &str,
    settings: &Settings,
    printer: &Printer,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let store = open(settings)?;
    let entry = inventory::resolve(&store, settings, what)?;
    let packages = inventory::packages(&entry);
    if json {
        #[derive(serde::Serialize)]
        struct Shown<'a> {
            #[serde(flatten)]
            entry: &'a inventory::Entry,
            packages: &'a [inventory::Package],
        }
        printer.data(&serde_json::to_string_pretty(&Shown {
            entry: &entry,
            packages: &packages,
        })?);
        return Ok(ExitStatus::Success);
    }
    printer.data(&format!("key:      {}", entry.key));
    printer.data(&format!("source:   {}", sanitize_line(&entry.source)));
    printer.data(&format!("target:   {}", entry.target));
    printer.data(&format!("prefix:   {}", entry.prefix.display()));
    printer.data(&format!("size:     {}", size(entry.size)));
    printer.data(&format!(
        "built:    {} by {}",
        when(entry.built),
        entry.built_by
    ));
    printer.data(&format!(
        "used:     {}{}",
        entry.last_used.map_or_else(|| "never".into(), when),
        if entry.in_use {
            " (a kernel runs now)"
        } else {
            ""
        }
    ));
    printer.data(&format!("pins:     {}", entry.pins.join(", ")));
    printer.data(&format!("kernels:  {}", entry.kernels.join(", ")));
    printer.data(&format!("locks:    {}", entry.locks.join(", ")));
    printer.data(&format!("packages: {}", packages.len()));
    for package in &packages {
        printer.data(&format!(
            "  {} {} {} {}",
            package.kind, package.name, package.version, package.sha256
        ));
    }
    Ok(ExitStatus::Success)
}

/// `rm KEY`.
pub fn rm(
    key: &str,
    force: bool,
    settings: &Settings,
    printer: &Printer,
    reporter: &dyn Reporter,
) -> anyhow::Result<ExitStatus> {
    let store = open(settings)?;
    let freed = inventory::remove(&store, settings, key, force, reporter)?;
    printer.info(&format!("Removed {} ({})", freed.what, size(freed.bytes)));
    Ok(ExitStatus::Success)
}

/// `gc`.
pub fn gc(
    older_than: Option<u64>,
    dry_run: bool,
    settings: &Settings,
    printer: &Printer,
    reporter: &dyn Reporter,
    json: bool,
) -> anyhow::Result<ExitStatus> {
    let store = open(settings)?;
    let freed = inventory::gc(&store, settings, older_than, dry_run, reporter)?;
    if json {
        printer.data(&serde_json::to_string_pretty(&freed)?);
        return Ok(ExitStatus::Success);
    }
    let verb = if dry_run { "Would remove" } else { "Removed" };
    for item in &freed {
        printer.data(&format!(
            "{verb} {} {} ({})",
            item.what,
            item.path.display(),
            size(item.bytes)
        ));
    }
    let total: u64 = freed.iter().map(|f| f.bytes).sum();
    printer.info(&format!(
        "{} {} item(s), {} in all",
        if dry_run { "Would free" } else { "Freed" },
        freed.len(),
        size(total)
    ));
    Ok(ExitStatus::Success)
}

/// `export NAME|KEY`.
pub fn export(
    what: &str,
    format: Option<&str>,
    output: Option<&std::path::Path>,
    settings: &Settings,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let store = open(settings)?;
    let entry = inventory::resolve(&store, settings, what)?;
    let file = inventory::export_file(&entry, format)?;
    let text = fs_err::read_to_string(&file)?;
    match output {
        Some(path) => {
            fs_err::write(path, &text)?;
            printer.info(&format!(
                "Wrote {} to {}; rebuild it with `hpcbinder build <repo> --from-lock {}`",
                file.file_name().unwrap_or_default().to_string_lossy(),
                path.display(),
                path.display()
            ));
        }
        None => printer.data(text.trim_end()),
    }
    Ok(ExitStatus::Success)
}

/// `jupyter-path`.
pub fn jupyter_path(settings: &Settings, printer: &Printer) -> anyhow::Result<ExitStatus> {
    printer.data(&format!("JUPYTER_PATH={}", collab::jupyter_path(settings)));
    Ok(ExitStatus::Success)
}

/// `kernel add NAME`.
pub fn kernel_add(
    name: &str,
    kernel_dir: Option<&std::path::Path>,
    settings: &Settings,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let dir = kernel_dir.map_or_else(
        crate::plan::default_kernels_dir,
        std::path::Path::to_path_buf,
    );
    let added = collab::kernel_add(&settings.store, settings, name, &dir)?;
    printer.info(&format!(
        "Added kernel {name} to {}; it follows the pin",
        added.display()
    ));
    Ok(ExitStatus::Success)
}

/// A repository made of an exported lock alone (`pin NAME --from-lock FILE`): the lock as
/// the one spec file a build detects (an `@EXPLICIT` file, or a hashed requirements.txt,
/// both installed without a solve), in this user's cache under the lock's digest.
fn lock_repository(settings: &Settings, locks: &[std::path::PathBuf]) -> anyhow::Result<String> {
    use sha2::Digest;
    let [lock] = locks else {
        anyhow::bail!(crate::plan::PlanError::FromLocks { count: locks.len() });
    };
    let text = fs_err::read_to_string(lock)?;
    let name = if text.lines().any(|l| l.trim() == "@EXPLICIT") {
        format!("conda-{}.lock", settings.conda.platform)
    } else if text
        .lines()
        .any(|l| l.trim_start().starts_with("--hash=sha256:"))
    {
        "requirements.txt".to_string()
    } else {
        anyhow::bail!(CollabError::NotALock { file: lock.clone() });
    };
    let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let dir = crate::store::user_cache_at(&settings.store)
        .join("from-lock")
        .join(&digest[..16]);
    fs_err::create_dir_all(&dir)?;
    fs_err::write(dir.join(name), text)?;
    Ok(dir.display().to_string())
}
