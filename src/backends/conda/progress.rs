//! rattler's installer progress as hpcbinder events: downloads and links, counted against
//! the transaction's size, so terminals and SSE clients see real progress.
//!
//! rattler wants a `'static` reporter, and ours is borrowed for the build: the adapter
//! sends counts down a channel, and [`forward`], run beside the install, turns them into
//! events.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use rattler::install::Transaction;
use rattler_conda_types::{PrefixRecord, RepoDataRecord};

use crate::events::{Event, Phase, Reporter};

/// One step done.
pub(super) enum Step {
    /// The transaction's package count.
    Total(usize),
    /// A package downloaded into the cache.
    Downloaded,
    /// A package linked into the prefix.
    Linked,
}

/// The adapter handed to rattler's installer.
pub(super) struct Progress {
    sender: UnboundedSender<Step>,
}

impl Progress {
    /// An adapter and the receiving end for [`forward`].
    pub(super) fn channel() -> (Self, UnboundedReceiver<Step>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (Self { sender }, receiver)
    }
}

/// Turn the adapter's steps into events until the installer is done (the sender dropped).
/// Events are emitted about every tenth of the way, and at the end.
pub(super) async fn forward(mut receiver: UnboundedReceiver<Step>, reporter: &dyn Reporter) {
    let total = AtomicUsize::new(0);
    let (mut downloaded, mut linked) = (0usize, 0usize);
    let mut last_reported = (0usize, 0usize);
    while let Some(step) = receiver.recv().await {
        let total_now = total.load(Ordering::Relaxed).max(1);
        let (what, done) = match step {
            Step::Total(count) => {
                total.store(count, Ordering::Relaxed);
                continue;
            }
            Step::Downloaded => {
                downloaded += 1;
                ("Downloaded", downloaded)
            }
            Step::Linked => {
                linked += 1;
                ("Linked", linked)
            }
        };
        let previous = if what == "Linked" {
            &mut last_reported.1
        } else {
            &mut last_reported.0
        };
        let step_size = (total_now / 10).max(1);
        if done == total_now || done >= *previous + step_size {
            *previous = done;
            let mut event = Event::new(
                Phase::Building,
                format!("{what} {done} of {total_now} conda packages"),
            );
            event.progress = Some(done as f64 / total_now as f64);
            reporter.report(event);
        }
    }
}

impl rattler::install::Reporter for Progress {
    fn on_transaction_start(&self, transaction: &Transaction<PrefixRecord, RepoDataRecord>) {
        let _ = self.sender.send(Step::Total(transaction.operations.len()));
    }
    fn on_transaction_operation_start(&self, _: usize) {}
    fn on_populate_cache_start(&self, operation: usize, _: &RepoDataRecord) -> usize {
        operation
    }
    fn on_validate_start(&self, cache_entry: usize) -> usize {
        cache_entry
    }
    fn on_validate_complete(&self, _: usize) {}
    fn on_download_start(&self, cache_entry: usize) -> usize {
        cache_entry
    }
    fn on_download_progress(&self, _: usize, _: u64, _: Option<u64>) {}
    fn on_download_completed(&self, _: usize) {
        let _ = self.sender.send(Step::Downloaded);
    }
    fn on_populate_cache_complete(&self, _: usize) {}
    fn on_unlink_start(&self, operation: usize, _: &PrefixRecord) -> usize {
        operation
    }
    fn on_unlink_complete(&self, _: usize) {}
    fn on_link_start(&self, operation: usize, _: &RepoDataRecord) -> usize {
        operation
    }
    fn on_link_complete(&self, _: usize) {
        let _ = self.sender.send(Step::Linked);
    }
    fn on_transaction_operation_complete(&self, _: usize) {}
    fn on_transaction_complete(&self) {}
    fn on_post_link_start(&self, _: &str, _: &str) -> usize {
        0
    }
    fn on_post_link_complete(&self, _: usize, _: bool) {}
    fn on_pre_unlink_start(&self, _: &str, _: &str) -> usize {
        0
    }
    fn on_pre_unlink_complete(&self, _: usize, _: bool) {}
}
