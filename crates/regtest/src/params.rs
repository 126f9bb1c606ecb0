//! Bitcoin Core's regtest consensus parameters, as far as this chain needs them.

use bitcoin::block::Header;
use bitcoin::{Amount, Block, CompactTarget, Network};

/// The proof-of-work limit and every block's `bits` on regtest (no retargeting).
pub const POW_LIMIT_BITS: u32 = 0x207f_ffff;

/// Blocks between subsidy halvings on regtest.
pub const SUBSIDY_HALVING_INTERVAL: u32 = 150;

/// Confirmations a coinbase output needs before it can be spent.
pub const COINBASE_MATURITY: u32 = 100;

/// The most money there will ever be, in satoshis (Bitcoin Core's `MAX_MONEY`).
pub const MAX_MONEY: u64 = 21_000_000 * 100_000_000;

/// Consensus limit on a block's weight.
pub const MAX_BLOCK_WEIGHT: u64 = 4_000_000;

/// The version bits every mined block signals (`VERSIONBITS_TOP_BITS`).
pub const BLOCK_VERSION: i32 = 0x2000_0000;

/// The script verification flags of every block on regtest, where every soft fork is
/// active from the start: P2SH, DERSIG, NULLDUMMY, CLTV, CSV, WITNESS, TAPROOT.
pub const SCRIPT_FLAGS: u32 = bitcoinconsensus::VERIFY_P2SH
    | bitcoinconsensus::VERIFY_DERSIG
    | bitcoinconsensus::VERIFY_NULLDUMMY
    | bitcoinconsensus::VERIFY_CHECKLOCKTIMEVERIFY
    | bitcoinconsensus::VERIFY_CHECKSEQUENCEVERIFY
    | bitcoinconsensus::VERIFY_WITNESS
    | bitcoinconsensus::VERIFY_TAPROOT;

/// Transactions' `nLockTime` values at or above this are Unix times, below it heights.
pub const LOCKTIME_THRESHOLD: u32 = 500_000_000;

/// The regtest genesis block.
pub fn genesis_block() -> Block {
    bitcoin::constants::genesis_block(Network::Regtest)
}

/// The block subsidy at `height`: 50 BTC, halved every 150 blocks.
pub fn block_subsidy(height: u32) -> Amount {
    let halvings = height / SUBSIDY_HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat((50 * 100_000_000u64) >> halvings)
}

/// The `bits` every regtest block carries.
pub fn pow_limit() -> CompactTarget {
    CompactTarget::from_consensus(POW_LIMIT_BITS)
}

/// Bitcoin Core's `GetDifficulty` for a header (about 4.66e-10 on regtest).
pub fn difficulty(header: &Header) -> f64 {
    let bits = header.bits.to_consensus();
    let mut shift = (bits >> 24) & 0xff;
    let mut diff = 0x0000_ffff as f64 / (bits & 0x00ff_ffff) as f64;
    while shift < 29 {
        diff *= 256.0;
        shift += 1;
    }
    while shift > 29 {
        diff /= 256.0;
        shift -= 1;
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsidy_halves_every_150_blocks() {
        assert_eq!(block_subsidy(0), Amount::from_btc(50.0).unwrap());
        assert_eq!(block_subsidy(149), Amount::from_btc(50.0).unwrap());
        assert_eq!(block_subsidy(150), Amount::from_btc(25.0).unwrap());
        assert_eq!(block_subsidy(300), Amount::from_btc(12.5).unwrap());
        assert_eq!(block_subsidy(150 * 64), Amount::ZERO);
    }

    #[test]
    fn genesis_is_regtest_with_the_pow_limit() {
        let genesis = genesis_block();
        assert_eq!(
            genesis.block_hash().to_string(),
            "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
        );
        assert_eq!(genesis.header.bits, pow_limit());
        assert!((difficulty(&genesis.header) - 4.656542373906925e-10).abs() < 1e-20);
    }
}
