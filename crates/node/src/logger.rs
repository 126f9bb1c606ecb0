//! LDK's log records into `tracing`, with the peer, channel and payment hash as fields.

use lightning::util::logger::{Level, Logger, Record};

/// Forwards LDK's log records to `tracing` under the target `ldk`.
///
/// LDK's `Trace` and `Gossip` levels are very chatty (every message of every peer); they
/// go to `tracing`'s `TRACE` level so an operator opts into them with `RUST_LOG=ldk=trace`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingLogger;

impl Logger for TracingLogger {
    fn log(&self, record: Record) {
        let peer = record.peer_id.map(|id| id.to_string());
        let channel = record.channel_id.map(|id| id.to_string());
        let payment_hash = record.payment_hash.map(|hash| hash.to_string());
        let peer = peer.as_deref().unwrap_or("");
        let channel = channel.as_deref().unwrap_or("");
        let payment_hash = payment_hash.as_deref().unwrap_or("");
        let module = record.module_path;
        match record.level {
            Level::Gossip | Level::Trace => {
                tracing::trace!(target: "ldk", module, peer, channel, payment_hash, "{}", record.args)
            }
            Level::Debug => {
                tracing::debug!(target: "ldk", module, peer, channel, payment_hash, "{}", record.args)
            }
            Level::Info => {
                tracing::info!(target: "ldk", module, peer, channel, payment_hash, "{}", record.args)
            }
            Level::Warn => {
                tracing::warn!(target: "ldk", module, peer, channel, payment_hash, "{}", record.args)
            }
            Level::Error => {
                tracing::error!(target: "ldk", module, peer, channel, payment_hash, "{}", record.args)
            }
        }
    }
}
