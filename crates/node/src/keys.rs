//! Channel keys from LDK's `KeysManager`, with closing outputs paid to the on-chain wallet.
//!
//! LDK's own destination and shutdown scripts belong to keys only the `KeysManager` can
//! spend, which would need a second sweep to reach the wallet. Taking them from the
//! wallet instead (each a fresh address, persisted before LDK sees it) puts cooperative
//! closes and penalty claims straight into the wallet.

use std::sync::Arc;

use bitcoin::ScriptBuf;
use lightning::ln::script::ShutdownScript;
use lightning::sign::{InMemorySigner, KeysManager, SignerProvider};

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
