//! The built-in funding wallet: deterministic P2WPKH keys, used by `getnewaddress`,
//! `sendtoaddress` and tests that need coins.

use std::collections::HashMap;

use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv};
use bitcoin::hashes::{Hash, sha256};
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Address, CompressedPublicKey, Network, ScriptBuf, Transaction, TxOut, Witness};

/// One key of the wallet.
#[derive(Clone)]
struct WalletKey {
    secret: SecretKey,
    public: CompressedPublicKey,
    address: Address,
}

/// Deterministic keys from a fixed seed (the chain is for tests; its coins are worthless).
pub struct Wallet {
    secp: Secp256k1<All>,
    account: Xpriv,
    keys: Vec<WalletKey>,
    by_script: HashMap<ScriptBuf, usize>,
}

impl Default for Wallet {
    fn default() -> Self {
        Self::new()
    }
}

impl Wallet {
    /// The wallet of every regtest chain (same seed, same addresses).
    pub fn new() -> Self {
        let secp = Secp256k1::new();
        let seed = sha256::Hash::hash(b"phalanx regtest funding wallet");
        let master = Xpriv::new_master(Network::Regtest, seed.as_byte_array()).expect("valid seed");
        let path: DerivationPath = "m/84'/1'/0'/0".parse().expect("valid path");
        let account = master.derive_priv(&secp, &path).expect("derivable");
        let mut wallet = Self {
            secp,
            account,
            keys: Vec::new(),
            by_script: HashMap::new(),
        };
        wallet.new_address();
        wallet
    }

    /// A new receive address.
    pub fn new_address(&mut self) -> Address {
        let index = self.keys.len() as u32;
        let child = self
            .account
            .derive_priv(
                &self.secp,
                &[ChildNumber::from_normal_idx(index).expect("index")],
            )
            .expect("derivable");
        let secret = child.private_key;
        let public = CompressedPublicKey(secret.public_key(&self.secp));
        let address = Address::p2wpkh(&public, Network::Regtest);
        self.by_script
            .insert(address.script_pubkey(), self.keys.len());
        self.keys.push(WalletKey {
            secret,
            public,
            address: address.clone(),
        });
        address
    }

    /// The first address (a stable default payout for mining).
    pub fn default_address(&self) -> Address {
        self.keys[0].address.clone()
    }

    /// Whether `script` pays this wallet.
    pub fn owns(&self, script: &ScriptBuf) -> bool {
        self.by_script.contains_key(script)
    }

    /// Signs every input of `tx`, each spending the wallet output in `spent` (input order).
    pub fn sign(&self, tx: &mut Transaction, spent: &[TxOut]) {
        let mut witnesses = Vec::with_capacity(tx.input.len());
        {
            let mut cache = SighashCache::new(&*tx);
            for (index, output) in spent.iter().enumerate() {
                let key = &self.keys[self.by_script[&output.script_pubkey]];
                let sighash = cache
                    .p2wpkh_signature_hash(
                        index,
                        &output.script_pubkey,
                        output.value,
                        EcdsaSighashType::All,
                    )
                    .expect("p2wpkh input");
                let message = Message::from_digest(sighash.to_byte_array());
                let signature = bitcoin::ecdsa::Signature {
                    signature: self.secp.sign_ecdsa(&message, &key.secret),
                    sighash_type: EcdsaSighashType::All,
                };
                witnesses.push(Witness::p2wpkh(&signature, &key.public.0));
            }
        }
        for (input, witness) in tx.input.iter_mut().zip(witnesses) {
            input.witness = witness;
        }
    }
}

/// Why the built-in wallet could not send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not enough mature coins (Core's RPC_WALLET_INSUFFICIENT_FUNDS).
    #[error("Insufficient funds")]
    InsufficientFunds,
    /// The amount is below the dust limit.
    #[error("Transaction amount too small")]
    InvalidAmount,
    /// The mempool refused the transaction.
    #[error("{}", .0.message())]
    Rejected(crate::TxError),
}

impl crate::Chain {
    /// The wallet's spendable coins: mature confirmed outputs and unconfirmed ones of its
    /// own mempool transactions, not spent in the mempool.
    pub fn wallet_coins(&self) -> Vec<(bitcoin::OutPoint, TxOut)> {
        let next_height = self.height() + 1;
        let spent = self.mempool.spent_outpoints();
        let mut coins: Vec<(bitcoin::OutPoint, TxOut)> = self
            .utxos
            .iter()
            .filter(|(outpoint, coin)| {
                self.wallet.owns(&coin.output.script_pubkey)
                    && !spent.contains(outpoint)
                    && (!coin.is_coinbase
                        || next_height - coin.height >= crate::params::COINBASE_MATURITY)
            })
            .map(|(outpoint, coin)| (*outpoint, coin.output.clone()))
            .collect();
        for entry in self.mempool.sorted_entries() {
            for (vout, output) in entry.tx.output.iter().enumerate() {
                let outpoint = bitcoin::OutPoint::new(entry.txid, vout as u32);
                if self.wallet.owns(&output.script_pubkey) && !spent.contains(&outpoint) {
                    coins.push((outpoint, output.clone()));
                }
            }
        }
        coins
    }

    /// The wallet's spendable balance.
    pub fn wallet_balance(&self) -> bitcoin::Amount {
        self.wallet_coins().iter().map(|(_, o)| o.value).sum()
    }

    /// Pays `amount` to `script` from the built-in wallet at the chain's fee rate, change
    /// back to the wallet, and submits the transaction to the mempool (Core's
    /// `sendtoaddress`).
    pub fn send_to(
        &mut self,
        script: &ScriptBuf,
        amount: bitcoin::Amount,
    ) -> Result<bitcoin::Txid, SendError> {
        let tx = self.build_send(script, amount)?;
        crate::mempool::accept(
            self,
            tx,
            crate::AcceptMode::Broadcast { max_fee_rate: None },
        )
        .map(|accepted| accepted.txid)
        .map_err(SendError::Rejected)
    }

    /// Builds and signs what [`send_to`](Self::send_to) would send, without submitting it
    /// (for tests that broadcast through another path).
    pub fn build_send(
        &mut self,
        script: &ScriptBuf,
        amount: bitcoin::Amount,
    ) -> Result<Transaction, SendError> {
        const DUST: u64 = 546;
        if amount.to_sat() < DUST {
            return Err(SendError::InvalidAmount);
        }
        let mut coins = self.wallet_coins();
        coins.sort_by(|a, b| b.1.value.cmp(&a.1.value).then(a.0.cmp(&b.0)));
        let rate = self.settings.fee_rate;
        let change_script = self.wallet.new_address().script_pubkey();
        // vbytes: overhead 11, P2WPKH input 68, outputs 9 + script length.
        let vsize = |inputs: usize, with_change: bool| -> u64 {
            let outputs = 9
                + script.len() as u64
                + if with_change {
                    9 + change_script.len() as u64
                } else {
                    0
                };
            11 + 68 * inputs as u64 + outputs
        };
        let fee = |vbytes: u64| {
            bitcoin::Amount::from_sat((rate.to_sat_per_kwu() * 4 * vbytes).div_ceil(1000))
        };
        let mut selected = Vec::new();
        let mut total = bitcoin::Amount::ZERO;
        for coin in coins {
            total += coin.1.value;
            selected.push(coin);
            if total >= amount + fee(vsize(selected.len(), true)) {
                break;
            }
        }
        let needed_without_change = amount + fee(vsize(selected.len(), false));
        if total < needed_without_change {
            return Err(SendError::InsufficientFunds);
        }
        let mut outputs = vec![TxOut {
            value: amount,
            script_pubkey: script.clone(),
        }];
        let with_change_fee = fee(vsize(selected.len(), true));
        if total >= amount + with_change_fee + bitcoin::Amount::from_sat(DUST) {
            outputs.push(TxOut {
                value: total - amount - with_change_fee,
                script_pubkey: change_script,
            });
        }
        let mut tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: selected
                .iter()
                .map(|(outpoint, _)| bitcoin::TxIn {
                    previous_output: *outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence: bitcoin::Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs,
        };
        let spent: Vec<TxOut> = selected.into_iter().map(|(_, output)| output).collect();
        self.wallet.sign(&mut tx, &spent);
        Ok(tx)
    }
}
