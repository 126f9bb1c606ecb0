//! A regtest chain for a test: the in-process [`Regtest`] (to inspect every transaction
//! it saw) and a [`ChainControl`] over its RPC (as the devnet drives a real bitcoind).

use std::ops::Deref;

use bitcoin::{OutPoint, Txid};
use phalanx_devnet::chain::ChainControl;
use phalanx_devnet::run::chain_config_from_url;
use phalanx_node::config::ChainConfig;
use phalanx_regtest::{ChainSettings, Regtest, RegtestConfig};

/// A regtest chain with coins in its wallet. Dereferences to the [`Regtest`].
pub struct TestChain {
    regtest: Regtest,
    control: ChainControl,
}

impl TestChain {
    /// Starts a chain (fees of 2 sat/vB) and mines 101 blocks to its wallet, so that it
    /// has coins to give.
    pub async fn start() -> Self {
        phalanx_testkit::init_tracing();
        let regtest = Regtest::start(RegtestConfig {
            chain: ChainSettings {
                fee_rate: bitcoin::FeeRate::from_sat_per_vb_u32(2),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .expect("regtest starts");
        regtest.mine(101, None);
        let config = chain_config_from_url(&regtest.rpc_url_with_credentials())
            .expect("the regtest URL is a chain URL");
        let control = ChainControl::connect(config)
            .await
            .expect("the chain answers its RPC");
        Self { regtest, control }
    }

    /// The chain over its RPC.
    pub fn control(&self) -> &ChainControl {
        &self.control
    }

    /// How nodes reach it.
    pub fn config(&self) -> &ChainConfig {
        self.control.config()
    }

    /// How many transactions the chain has seen (mempool and blocks) so far.
    pub fn transaction_count(&self) -> usize {
        self.regtest.chain().history().transactions().len()
    }

    /// The transactions seen since there were `count` of them.
    pub fn transactions_since(&self, count: usize) -> Vec<Txid> {
        let chain = self.regtest.chain();
        let history = chain.history();
        history.transactions()[count.min(history.transactions().len())..]
            .iter()
            .map(|seen| seen.txid)
            .collect()
    }

    /// Every transaction the chain has seen that spends `outpoint`.
    pub fn spenders(&self, outpoint: OutPoint) -> Vec<Txid> {
        self.regtest
            .chain()
            .history()
            .transactions()
            .iter()
            .filter(|seen| seen.tx.input.iter().any(|i| i.previous_output == outpoint))
            .map(|seen| seen.txid)
            .collect()
    }
}

impl Deref for TestChain {
    type Target = Regtest;

    fn deref(&self) -> &Regtest {
        &self.regtest
    }
}
