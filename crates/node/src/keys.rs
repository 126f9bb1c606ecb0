//! Channel keys from LDK's `KeysManager`, with closing outputs paid to the on-chain wallet.
//!
//! LDK's own destination and shutdown scripts belong to keys only the `KeysManager` can
//! spend, which would need a second sweep to reach the wallet. Taking them from the
//! wallet instead (each a fresh address, persisted before LDK sees it) puts cooperative
//! closes and penalty claims straight into the wallet.

use std::sync::Arc;

use bitcoin::absolute::LockTime;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{ScriptBuf, Transaction, TxOut};
use lightning::ln::script::ShutdownScript;
use lightning::sign::{
    InMemorySigner, KeysManager, OutputSpender, SignerProvider, SpendableOutputDescriptor,
};

use crate::wallet::OnchainWallet;

/// LDK's signer provider for the channel manager.
pub struct WalletKeys {
    keys: Arc<KeysManager>,
    wallet: Arc<OnchainWallet>,
}

impl WalletKeys {
    /// Channel keys from `keys`, closing outputs to `wallet`.
    pub fn new(keys: Arc<KeysManager>, wallet: Arc<OnchainWallet>) -> Self {
        Self { keys, wallet }
    }

    fn wallet_script(&self) -> Result<ScriptBuf, ()> {
        match self.wallet.new_address() {
            Ok(address) => Ok(address.script_pubkey()),
            Err(err) => {
                // LDK refuses the channel operation that asked; nothing is lost.
                tracing::error!(error = %err, "cannot reveal a wallet address for a channel");
                Err(())
            }
        }
    }
}

impl SignerProvider for WalletKeys {
    type EcdsaSigner = InMemorySigner;

    fn generate_channel_keys_id(&self, inbound: bool, user_channel_id: u128) -> [u8; 32] {
        self.keys.generate_channel_keys_id(inbound, user_channel_id)
    }

    fn derive_channel_signer(&self, channel_keys_id: [u8; 32]) -> InMemorySigner {
        self.keys.derive_channel_signer(channel_keys_id)
    }

    fn get_destination_script(&self, _channel_keys_id: [u8; 32]) -> Result<ScriptBuf, ()> {
        self.wallet_script()
    }

    fn get_shutdown_scriptpubkey(&self) -> Result<ShutdownScript, ()> {
        let script = self.wallet_script()?;
        ShutdownScript::try_from(script).map_err(|err| {
            tracing::error!(error = ?err, "the wallet's address is not a valid shutdown script");
        })
    }
}

/// The output sweeper's spender: LDK's keys, for every output but those that already pay
/// the wallet.
///
/// A cooperative close (and a penalty claim) pays the wallet's own address (see
/// [`WalletKeys`]); LDK still reports it as a `StaticOutput` to sweep, which the
/// `KeysManager` cannot sign for, and the sweeper spends all its pending outputs in one
/// transaction: one such output made every later sweep fail, force-close outputs
/// included. Such outputs are the wallet's already; they are left out here (the node
/// also stops handing them to the sweeper), so sweepers that persisted them before keep
/// working, and forget them once the wallet spends them.
pub struct SweepSpender {
    keys: Arc<KeysManager>,
    wallet: Arc<OnchainWallet>,
}

impl SweepSpender {
    /// Spends with `keys`, leaving out `wallet`'s own outputs.
    pub fn new(keys: Arc<KeysManager>, wallet: Arc<OnchainWallet>) -> Self {
        Self { keys, wallet }
    }

    /// Whether the sweeper should leave `descriptor` to the wallet.
    pub fn pays_the_wallet(&self, descriptor: &SpendableOutputDescriptor) -> bool {
        matches!(descriptor, SpendableOutputDescriptor::StaticOutput { output, .. }
            if self.wallet.is_mine(&output.script_pubkey))
    }
}

impl OutputSpender for SweepSpender {
    fn spend_spendable_outputs(
        &self,
        descriptors: &[&SpendableOutputDescriptor],
        outputs: Vec<TxOut>,
        change_destination_script: ScriptBuf,
        feerate_sat_per_1000_weight: u32,
        locktime: Option<LockTime>,
        secp_ctx: &Secp256k1<All>,
    ) -> Result<Transaction, ()> {
        let to_spend: Vec<&SpendableOutputDescriptor> = descriptors
            .iter()
            .copied()
            .filter(|descriptor| !self.pays_the_wallet(descriptor))
            .collect();
        if to_spend.is_empty() {
            // Only the wallet's own outputs: nothing for the sweeper to do.
            return Err(());
        }
        self.keys.spend_spendable_outputs(
            &to_spend,
            outputs,
            change_destination_script,
            feerate_sat_per_1000_weight,
            locktime,
            secp_ctx,
        )
    }
}
