//! A cheating counterparty, for tests only.
//!
//! Given the bytes of a channel monitor saved at an earlier state and the seed of the
//! node it belongs to, it signs that node's holder commitment of that state, which the
//! node has since revoked. Broadcasting it is the cheat that the other side's monitor
//! must punish with a justice transaction.

use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::Transaction;
use lightning::chain::BlockLocator;
use lightning::chain::channelmonitor::ChannelMonitor;
use lightning::sign::{InMemorySigner, KeysManager};
use lightning::util::logger::{Logger, Record};
use lightning::util::ser::ReadableArgs;
use phalanx_secrets::Seed;

struct Silent;

impl Logger for Silent {
    fn log(&self, _record: Record) {}
}

/// The fully signed commitment transaction(s) of the monitor state in `monitor_bytes`,
/// signed with the keys of `seed` (the node's seed, as `Node` derives its keys from it).
pub fn revoked_commitment(monitor_bytes: &[u8], seed: &Seed) -> Result<Vec<Transaction>, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let keys = KeysManager::new(&seed.ldk_seed(), now.as_secs(), now.subsec_nanos(), true);
    let (_, monitor) = <(BlockLocator, ChannelMonitor<InMemorySigner>)>::read(
        &mut &monitor_bytes[..],
        (&keys, &keys),
    )
    .map_err(|err| format!("cannot read the monitor snapshot: {err:?}"))?;
    Ok(monitor.unsafe_get_latest_holder_commitment_txn(&Silent))
}
