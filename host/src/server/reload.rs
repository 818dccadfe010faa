//! Hot reload for a running server: rescans the bundle directories on an
//! interval and publishes what failed for `/healthz`.

use std::time::Duration;

use super::{AppState, BundleProblem};
use crate::ensemble::watch::{BundleWatcher, ScanReport};

/// Log what a scan changed, count failures and publish the bundles that
/// are broken now.
pub fn publish(state: &AppState, watcher: &BundleWatcher, report: &ScanReport) {
    for name in &report.added {
        tracing::info!(expert = name, "expert loaded");
    }
    for name in &report.replaced {
        tracing::info!(expert = name, "expert replaced by a new version");
    }
    for name in &report.removed {
        tracing::info!(expert = name, "expert removed");
    }
    state
        .metrics()
        .bundle_errors
        .inc_by(report.failed.len() as u64);
    state.set_bundle_problems(
        watcher
            .problems()
            .into_iter()
            .map(|(path, error)| BundleProblem {
                path: path.display().to_string(),
                error,
            })
            .collect(),
    );
}

/// Rescan `watcher`'s directories every `interval` until the task is
/// aborted.
pub fn spawn_reloader(
    state: AppState,
    mut watcher: BundleWatcher,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let report = watcher.scan(state.ensemble()).await;
            publish(&state, &watcher, &report);
        }
    })
}
