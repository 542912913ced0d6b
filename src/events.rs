//! Progress events with BinderHub's phases, and the reporters that show them.
//!
//! Library code reports through [`Reporter`] and never prints. The same [`Event`] becomes an
//! indicatif spinner on a terminal, one plain line per event in a batch log, or one JSON
//! object per line with `--json` (the objects BinderHub's build API streams as SSE).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::printer::{sanitize, Printer};

/// BinderHub's build phases (`reference/binderhub-hpc.md` §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Queued behind something (a lock, another build).
    Waiting,
    /// Getting the repository.
    Fetching,
    /// Detecting, planning, building.
    Building,
    /// Sending an image to a registry.
    Pushing,
    /// The environment exists.
    Built,
    /// Starting a kernel or server.
    Launching,
    /// Finished; carries the result.
    Ready,
    /// Finished with an error.
    Failed,
}

/// One progress event. `message` ends with a newline, as BinderHub's do.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Event {
    /// The phase this event belongs to.
    pub phase: Phase,
    /// Human-readable text, newline-terminated.
    pub message: String,
    /// Fraction done, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// Extra fields (`key`, `prefix`, `kernel`, ...), flattened into the object.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    /// An event with a message and no extra fields.
    pub fn new(phase: Phase, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if !message.ends_with('\n') {
            message.push('\n');
        }
        Self {
            phase,
            message,
            progress: None,
            fields: serde_json::Map::new(),
        }
    }

    /// A warning: a `building` event whose message starts with `warning: ` and whose
    /// `level` field is `warning`, so JSON and SSE clients see it and terminals show it
    /// as a warning whatever the verbosity.
    pub fn warning(message: impl Into<String>) -> Self {
        let mut event = Self::new(Phase::Building, format!("warning: {}", message.into()));
        event.fields.insert("level".into(), "warning".into());
        event
    }

    /// Whether this is a [`Event::warning`].
    pub fn is_warning(&self) -> bool {
        self.fields.get("level").and_then(|l| l.as_str()) == Some("warning")
    }

    /// Add the fields of a serialisable struct (must serialise to an object).
    pub fn with_fields(mut self, value: &impl Serialize) -> Self {
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(value) {
            self.fields.extend(map);
        }
        self
    }
}

/// Where events go.
pub trait Reporter: Send + Sync {
    /// Report one event.
    fn report(&self, event: Event);
}

/// Convenience methods over [`Reporter`].
pub trait ReporterExt: Reporter {
    /// Report a phase with a message.
    fn phase(&self, phase: Phase, message: impl Into<String>) {
        self.report(Event::new(phase, message));
    }

    /// Report a warning ([`Event::warning`]).
    fn warning(&self, message: impl Into<String>) {
        self.report(Event::warning(message));
    }
}

impl<T: Reporter + ?Sized> ReporterExt for T {}

/// One JSON object per line on stdout.
#[derive(Debug)]
pub struct JsonReporter {
    printer: Printer,
}

impl JsonReporter {
    /// A reporter printing through `printer`'s data channel.
    pub fn new(printer: Printer) -> Self {
        Self { printer }
    }
}

impl Reporter for JsonReporter {
    fn report(&self, event: Event) {
        if let Ok(line) = serde_json::to_string(&event) {
            self.printer.data(&line);
        }
    }
}

/// People-facing progress on stderr: a spinner on a terminal, else a line per event.
pub struct TerminalReporter {
    printer: Printer,
    spinner: Mutex<Option<indicatif::ProgressBar>>,
    log_lines: bool,
}

impl TerminalReporter {
    /// A reporter for `printer`; animates only when stderr is a terminal. Off a terminal,
    /// `log_lines` decides whether each event is a line (long builds in batch logs) or
    /// shown only with `-v` (quick commands whose output is the result).
    pub fn new(printer: Printer, log_lines: bool) -> Self {
        Self {
            printer,
            spinner: Mutex::new(None),
            log_lines,
        }
    }
}

impl Reporter for TerminalReporter {
    fn report(&self, event: Event) {
        let text = sanitize(event.message.trim_end());
        let finished = matches!(event.phase, Phase::Ready | Phase::Failed);
        let Ok(mut spinner) = self.spinner.lock() else {
            return;
        };
        if event.is_warning() {
            let text = text.strip_prefix("warning: ").unwrap_or(&text);
            match spinner.as_ref() {
                Some(bar) => bar.suspend(|| self.printer.warning(text)),
                None => self.printer.warning(text),
            }
            return;
        }
        if self.printer.can_animate() {
            if finished {
                if let Some(bar) = spinner.take() {
                    bar.finish_and_clear();
                }
                return;
            }
            let bar = spinner.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.enable_steady_tick(Duration::from_millis(100));
                bar
            });
            match download_bytes(&event) {
                // A download: a bar of bytes, with its rate and time left when the size
                // is known.
                Some((done, total)) => {
                    let file = text.split(": ").next().unwrap_or(&text);
                    let template = match total {
                        Some(total) => {
                            bar.set_length(total);
                            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
                        }
                        None => {
                            bar.unset_length();
                            "{spinner} {msg} {bytes} {binary_bytes_per_sec}"
                        }
                    };
                    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_position(done);
                    bar.set_message(format!("{:>9} {file}", phase_label(event.phase)));
                }
                None => {
                    if bar.length().is_some() || bar.position() > 0 {
                        bar.set_style(indicatif::ProgressStyle::default_spinner());
                        bar.unset_length();
                        bar.set_position(0);
                    }
                    bar.set_message(format!("{:>9} {text}", phase_label(event.phase)));
                }
            }
        } else if !finished {
            // Batch logs (Slurm) get one plain line per event.
            let line = format!("{:>9} {text}", phase_label(event.phase));
            if self.log_lines {
                self.printer.info(&line);
            } else {
                self.printer.debug(&line);
            }
        }
    }
}

impl Drop for TerminalReporter {
    fn drop(&mut self) {
        if let Ok(mut spinner) = self.spinner.lock() {
            if let Some(bar) = spinner.take() {
                bar.finish_and_clear();
            }
        }
    }
}

/// The bytes a download event says are done, and of how many (`bytes`, `total_bytes`).
fn download_bytes(event: &Event) -> Option<(u64, Option<u64>)> {
    let done = event.fields.get("bytes")?.as_u64()?;
    Some((
        done,
        event.fields.get("total_bytes").and_then(|t| t.as_u64()),
    ))
}

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Waiting => "waiting",
        Phase::Fetching => "fetching",
        Phase::Building => "building",
        Phase::Pushing => "pushing",
        Phase::Built => "built",
        Phase::Launching => "launching",
        Phase::Ready => "ready",
        Phase::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_serialises_with_flattened_fields() {
        #[derive(Serialize)]
        struct Extra {
            key: &'static str,
        }
        let event = Event::new(Phase::Ready, "done").with_fields(&Extra { key: "abc" });
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"phase":"ready","message":"done\n","key":"abc"}"#
        );
    }
}
