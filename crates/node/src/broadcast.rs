//! The fenced broadcaster: what lets a transaction leave the node, apart from the chain
//! source that carries it (bitcoind, then Esplora if configured).
//!
//! Broadcasting can be switched off for good ([`ChainClient::stop_broadcasting`]): a
//! fenced instance must never broadcast from in-memory state that may be newer than what
//! the store holds (safety rule 4). It is also tied to the leadership
//! ([`ChainClient::broadcast_only_while`]): past the lease's local deadline nothing is
//! sent, even before the node has noticed it lost the lease (a paused process that
//! wakes up runs whatever was due before its renewal task). And each broadcast first
//! confirms the lease with one store round trip ([`ChainClient::confirm_lease_with`]),
//! since a thawed VM's monotonic clock did not move while it was paused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Transaction, Txid};
use lightning::chain::chaininterface::{BroadcasterInterface, TransactionType};
use phalanx_store::{Epoch, FenceSource, LeaseStore};
use serde_json::{Value, json};

use crate::chain::{ChainClient, ChainError, RPC_TIMEOUT};

/// What allows a broadcast: not switched off, the leadership's token, the store's word.
pub(crate) struct BroadcastGate {
    /// False once switched off, for good.
    open: AtomicBool,
    /// The leadership broadcasts depend on, once won.
    lease: OnceLock<Arc<dyn FenceSource>>,
    /// The store that confirms that leadership before each broadcast.
    lease_check: OnceLock<LeaseCheck>,
}

impl Default for BroadcastGate {
    fn default() -> Self {
        Self {
            open: AtomicBool::new(true),
            lease: OnceLock::new(),
            lease_check: OnceLock::new(),
        }
    }
}

/// The store and epoch a broadcast must be confirmed with.
struct LeaseCheck {
    store: Arc<dyn LeaseStore>,
    epoch: Epoch,
    runtime: tokio::runtime::Handle,
}

impl ChainClient {
    /// Never broadcast again (the instance is fenced or stopping).
    pub fn stop_broadcasting(&self) {
        if self.gate.open.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                "broadcasting stopped: this instance will not send transactions any more"
            );
        }
    }

    /// Broadcasts only while `lease` gives a token (its holder has not lost it and its
    /// local deadline has not passed). Set once, before anything is broadcast.
    pub fn broadcast_only_while(&self, lease: Arc<dyn FenceSource>) {
        if self.gate.lease.set(lease).is_err() {
            tracing::warn!("the broadcaster was already tied to a leadership");
        }
    }

    /// Before each broadcast, confirms with one round trip to `store` (run on
    /// `store_runtime`) that the lease is still `epoch`'s. The local deadline alone cannot
    /// tell: the monotonic clock does not advance while a VM is paused, so a thawed
    /// ex-leader believes its lease runs while a standby has long taken over. Set once.
    pub fn confirm_lease_with(
        &self,
        store: Arc<dyn LeaseStore>,
        epoch: Epoch,
        store_runtime: tokio::runtime::Handle,
    ) {
        let check = LeaseCheck {
            store,
            epoch,
            runtime: store_runtime,
        };
        if self.gate.lease_check.set(check).is_err() {
            tracing::warn!("the broadcaster already confirms a lease");
        }
    }

    /// Confirms the lease (see [`Self::confirm_lease_with`]); a lease another epoch
    /// holds switches broadcasting off for good.
    async fn confirm_lease(&self) -> Result<(), ChainError> {
        let Some(check) = self.gate.lease_check.get() else {
            return Ok(());
        };
        let store = Arc::clone(&check.store);
        let read = check
            .runtime
            .spawn(async move { store.current_lease().await });
        let answer = match tokio::time::timeout(RPC_TIMEOUT, read).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(join)) => {
                return Err(ChainError::LeaseNotConfirmed(format!(
                    "the lease check failed: {join}"
                )));
            }
            Err(_) => {
                return Err(ChainError::LeaseNotConfirmed(format!(
                    "the store did not answer within {RPC_TIMEOUT:?}"
                )));
            }
        };
        match answer {
            Ok(Some(info))
                if info.epoch == check.epoch
                    && info.expires_in != Some(std::time::Duration::ZERO) =>
            {
                Ok(())
            }
            Ok(other) => {
                self.stop_broadcasting();
                let now = match other {
                    Some(info) => format!("{} holds epoch {}", info.holder, info.epoch),
                    None => "nobody holds it".to_owned(),
                };
                Err(ChainError::LeaseNotConfirmed(format!(
                    "the lease of epoch {} is gone ({now})",
                    check.epoch
                )))
            }
            Err(err) => Err(ChainError::LeaseNotConfirmed(format!(
                "the store could not confirm the lease: {}",
                err.report()
            ))),
        }
    }

    /// Whether broadcasting is still allowed.
    pub fn is_broadcasting(&self) -> bool {
        self.gate.open.load(Ordering::SeqCst)
            && self
                .gate
                .lease
                .get()
                .is_none_or(|lease| lease.current_token().is_ok())
    }

    /// Broadcasts one transaction, or a package (child last) with `submitpackage`.
    /// Switched off ([`Self::is_broadcasting`]), it sends nothing and says so.
    pub async fn broadcast(&self, txs: Vec<Transaction>) -> Result<Vec<Txid>, ChainError> {
        if !self.is_broadcasting() {
            return Err(ChainError::BroadcastStopped);
        }
        self.confirm_lease().await?;
        let txs = topological(txs);
        // Each sink checks the deadline again: the round trips before it take time.
        if !self.is_broadcasting() {
            return Err(ChainError::BroadcastStopped);
        }
        let through_bitcoind = self.broadcast_to_bitcoind(&txs).await;
        let Some(esplora) = &self.esplora else {
            return through_bitcoind;
        };
        if !self.is_broadcasting() {
            return through_bitcoind;
        }
        // Parents first, so each child finds its inputs.
        let mut esplora_accepted_all = true;
        for tx in &txs {
            let txid = tx.compute_txid();
            match esplora.broadcast(tx).await {
                Ok(_) => tracing::debug!(%txid, url = esplora.url(), "broadcast to esplora"),
                Err(err) => {
                    esplora_accepted_all = false;
                    tracing::warn!(%txid, url = esplora.url(), error = %err, "esplora refused the transaction");
                }
            }
        }
        match through_bitcoind {
            Err(err) if esplora_accepted_all => {
                tracing::warn!(error = %err, "bitcoind refused a broadcast that esplora accepted");
                Ok(txs.iter().map(Transaction::compute_txid).collect())
            }
            other => other,
        }
    }

    async fn broadcast_to_bitcoind(&self, txs: &[Transaction]) -> Result<Vec<Txid>, ChainError> {
        if txs.len() == 1 {
            let answer = self
                .call("sendrawtransaction", &[json!(serialize_hex(&txs[0]))])
                .await?;
            let txid = answer
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| ChainError::Invalid {
                    method: "sendrawtransaction",
                    message: answer.to_string(),
                })?;
            return Ok(vec![txid]);
        }
        let hexes: Vec<Value> = txs.iter().map(|tx| json!(serialize_hex(tx))).collect();
        let answer = self.call("submitpackage", &[Value::Array(hexes)]).await?;
        if answer["package_msg"] != "success" {
            return Err(ChainError::Invalid {
                method: "submitpackage",
                message: answer.to_string(),
            });
        }
        Ok(txs.iter().map(Transaction::compute_txid).collect())
    }
}

/// Parents before children (LDK hands packages in no particular order).
fn topological(mut txs: Vec<Transaction>) -> Vec<Transaction> {
    let mut ordered = Vec::with_capacity(txs.len());
    while !txs.is_empty() {
        let ids: Vec<Txid> = txs.iter().map(Transaction::compute_txid).collect();
        let ready = txs
            .iter()
            .position(|tx| {
                tx.input
                    .iter()
                    .all(|input| !ids.contains(&input.previous_output.txid))
            })
            .unwrap_or(0);
        ordered.push(txs.remove(ready));
    }
    ordered
}

impl BroadcasterInterface for ChainClient {
    fn broadcast_transactions(&self, txs: &[(&Transaction, TransactionType)]) {
        if !self.is_broadcasting() {
            for (tx, kind) in txs {
                tracing::warn!(txid = %tx.compute_txid(), ?kind, "not broadcasting: broadcasting is stopped");
            }
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let owned: Vec<Transaction> = txs.iter().map(|(tx, _)| (*tx).clone()).collect();
        let kinds: Vec<String> = txs.iter().map(|(_, kind)| format!("{kind:?}")).collect();
        // LDK rebroadcasts what does not confirm, so a failure here is only logged.
        self.runtime.spawn(async move {
            let txids: Vec<Txid> = owned.iter().map(Transaction::compute_txid).collect();
            match me.broadcast(owned).await {
                Ok(_) => tracing::info!(?txids, ?kinds, "broadcast"),
                Err(err) => {
                    tracing::warn!(?txids, ?kinds, error = %err, "broadcast failed; LDK will retry")
                }
            }
        });
    }
}
