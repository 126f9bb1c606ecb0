//! The fail-stop rule for monitor writes.
//!
//! LDK's persister reports a failed write as `UnrecoverableError`, on which LDK panics.
//! Phalanx instead stops the node: the update is reported `InProgress` (so LDK neither
//! proceeds with the channel nor treats the update as durable) and the node's
//! [`FailStop`] fires; the node then shuts down without writing or broadcasting further,
//! and the next instance reloads from the store, where the ChannelManager (always
//! written before its monitors in deferred mode) replays the update.

use lightning::chain::ChannelMonitorUpdateStatus;
use lightning::chain::chainmonitor::Persist;
use lightning::chain::channelmonitor::{ChannelMonitor, ChannelMonitorUpdate};
use lightning::sign::ecdsa::EcdsaChannelSigner;
use lightning::util::persist::MonitorName;
use tokio::sync::watch;

/// A one-way switch that stops the node, with the first reason given.
#[derive(Debug, Clone)]
pub struct FailStop {
    reason: watch::Sender<Option<String>>,
}

impl Default for FailStop {
    fn default() -> Self {
        Self::new()
    }
}

impl FailStop {
    /// A switch not yet thrown.
    pub fn new() -> Self {
        Self {
            reason: watch::channel(None).0,
        }
    }

    /// Throws the switch; the first reason wins.
    pub fn trigger(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            tracing::error!(%reason, "stopping the node");
            *current = Some(reason);
            true
        });
    }

    /// Why the switch was thrown, if it was.
    pub fn reason(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Resolves when the switch is thrown, with its reason.
    pub async fn triggered(&self) -> String {
        let mut receiver = self.reason.subscribe();
        loop {
            if let Some(reason) = receiver.borrow_and_update().clone() {
                return reason;
            }
            if receiver.changed().await.is_err() {
                // The sender lives in self, so this cannot happen while we are borrowed.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Wraps LDK's monitor persister so that a failed write stops the node (see the module).
pub struct FailStopPersister<P> {
    inner: P,
    fail_stop: FailStop,
}

impl<P> FailStopPersister<P> {
    /// Wraps `inner`, throwing `fail_stop` on any failed write.
    pub fn new(inner: P, fail_stop: FailStop) -> Self {
        Self { inner, fail_stop }
    }

    /// The wrapped persister.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn check(
        &self,
        status: ChannelMonitorUpdateStatus,
        what: &str,
        monitor: &MonitorName,
    ) -> ChannelMonitorUpdateStatus {
        match status {
            ChannelMonitorUpdateStatus::UnrecoverableError => {
                self.fail_stop.trigger(format!(
                    "writing {what} of channel monitor {monitor} failed"
                ));
                ChannelMonitorUpdateStatus::InProgress
            }
            other => other,
        }
    }
}

impl<S: EcdsaChannelSigner, P: Persist<S>> Persist<S> for FailStopPersister<P> {
    fn persist_new_channel(
        &self,
        monitor_name: MonitorName,
        monitor: &ChannelMonitor<S>,
    ) -> ChannelMonitorUpdateStatus {
        if self.fail_stop.reason().is_some() {
            return ChannelMonitorUpdateStatus::InProgress;
        }
        let status = self.inner.persist_new_channel(monitor_name, monitor);
        self.check(status, "the first version", &monitor_name)
    }

    fn update_persisted_channel(
        &self,
        monitor_name: MonitorName,
        monitor_update: Option<&ChannelMonitorUpdate>,
        monitor: &ChannelMonitor<S>,
    ) -> ChannelMonitorUpdateStatus {
        if self.fail_stop.reason().is_some() {
            return ChannelMonitorUpdateStatus::InProgress;
        }
        let status = self
            .inner
            .update_persisted_channel(monitor_name, monitor_update, monitor);
        self.check(status, "an update", &monitor_name)
    }

    fn archive_persisted_channel(&self, monitor_name: MonitorName) {
        if self.fail_stop.reason().is_none() {
            self.inner.archive_persisted_channel(monitor_name);
        }
    }
}
