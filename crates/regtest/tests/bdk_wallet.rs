//! A BDK wallet synced through `bdk_bitcoind_rpc` (which uses `bitcoincore-rpc`, as
//! against a real bitcoind) receives, spends, and follows a reorg on the regtest chain.

use bdk_bitcoind_rpc::bitcoincore_rpc::{Auth, Client, RpcApi};
use bdk_bitcoind_rpc::{Emitter, NO_EXPECTED_MEMPOOL_TXS};
use bdk_wallet::{KeychainKind, SignOptions, Wallet};
use bitcoin::bip32::Xpriv;
use bitcoin::{Amount, Network};
use phalanx_regtest::{Regtest, RegtestConfig};

fn wallet() -> Wallet {
    let master = Xpriv::new_master(Network::Regtest, &[42u8; 32]).unwrap();
    Wallet::create(
        format!("wpkh({master}/84'/1'/0'/0/*)"),
        format!("wpkh({master}/84'/1'/0'/1/*)"),
    )
    .network(Network::Regtest)
    .create_wallet_no_persist()
    .unwrap()
}

/// What `bdk_wallet`'s own bitcoind example does: blocks, then the mempool.
fn sync(wallet: &mut Wallet, rpc: &Client) {
    let unconfirmed: Vec<_> = wallet
        .transactions()
        .filter(|tx| tx.chain_position.is_unconfirmed())
        .map(|tx| tx.tx_node.tx.clone())
        .collect();
    let mut emitter = Emitter::new(rpc, wallet.latest_checkpoint(), 0, unconfirmed);
    while let Some(event) = emitter.next_block().unwrap() {
        let height = event.block_height();
        let connected_to = event.connected_to();
        wallet
            .apply_block_connected_to(&event.block, height, connected_to)
            .unwrap();
    }
    let mempool = emitter.mempool().unwrap();
    wallet.apply_evicted_txs(mempool.evicted);
    wallet.apply_unconfirmed_txs(mempool.update);
}

#[test]
fn bdk_wallet_receives_spends_and_follows_a_reorg() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let regtest = runtime
        .block_on(Regtest::start(RegtestConfig::default()))
        .unwrap();
    regtest.mine(101, None);
    let rpc = Client::new(
        &regtest.rpc_url(),
        Auth::UserPass(regtest.rpc_user().into(), regtest.rpc_password().into()),
    )
    .unwrap();
    let info = rpc.get_blockchain_info().unwrap();
    assert_eq!(info.chain, Network::Regtest);
    assert_eq!(info.blocks, 101);

    let mut wallet = wallet();
    let _ = NO_EXPECTED_MEMPOOL_TXS;
    let receive = wallet.reveal_next_address(KeychainKind::External).address;

    // Receive: unconfirmed first, then confirmed.
    let funding = rpc
        .send_to_address(
            &receive,
            Amount::from_btc(1.0).unwrap(),
            None,
            None,
            None,
            None,
            None,
            None,
        )
        .unwrap();
    sync(&mut wallet, &rpc);
    assert_eq!(
        wallet.balance().untrusted_pending,
        Amount::from_btc(1.0).unwrap()
    );
    regtest.mine(1, None);
    sync(&mut wallet, &rpc);
    assert_eq!(wallet.balance().confirmed, Amount::from_btc(1.0).unwrap());
    assert_eq!(wallet.latest_checkpoint().hash(), regtest.chain().tip());
    assert!(rpc.get_raw_transaction(&funding, None).is_ok());

    // Spend back to the chain's wallet.
    let back = regtest.chain().wallet().default_address();
    let mut builder = wallet.build_tx();
    builder.add_recipient(back.script_pubkey(), Amount::from_btc(0.4).unwrap());
    let mut psbt = builder.finish().unwrap();
    #[allow(deprecated)] // the replacement needs the wallet's key map; this is a test
    let signed = wallet.sign(&mut psbt, SignOptions::default()).unwrap();
    assert!(signed);
    let spend = psbt.extract_tx().unwrap();
    let spend_id = rpc.send_raw_transaction(&spend).unwrap();
    regtest.mine(1, None);
    sync(&mut wallet, &rpc);
    let confirmed_balance = wallet.balance().confirmed;
    assert!(confirmed_balance < Amount::from_btc(0.6).unwrap());
    assert!(confirmed_balance > Amount::from_btc(0.59).unwrap());
    let spend_block = regtest.chain().confirmed_tx(&spend_id).unwrap().1;

    // Reorg: the spend's block goes away and the spend returns to the mempool; two blocks
    // on the new branch mine it again. (BDK's emitter learns of a reorg from the blocks
    // that replace the stale ones, as it does against bitcoind.)
    rpc.invalidate_block(&spend_block).unwrap();
    let mempool = rpc.get_raw_mempool().unwrap();
    assert_eq!(mempool, vec![spend_id]);
    regtest.mine(2, None);
    sync(&mut wallet, &rpc);
    assert_eq!(wallet.latest_checkpoint().hash(), regtest.chain().tip());
    let mined = wallet
        .transactions()
        .find(|tx| tx.tx_node.txid == spend_id)
        .unwrap();
    let new_block = regtest.chain().confirmed_tx(&spend_id).unwrap().1;
    assert_ne!(new_block, spend_block);
    match mined.chain_position {
        bdk_wallet::chain::ChainPosition::Confirmed { anchor, .. } => {
            assert_eq!(anchor.block_id.hash, new_block)
        }
        other => panic!("spend not confirmed after the reorg: {other:?}"),
    }
    assert_eq!(wallet.balance().confirmed, confirmed_balance);

    // And back: the old branch has less work now (1 block vs 2), so reconsidering it
    // changes nothing.
    rpc.reconsider_block(&spend_block).unwrap();
    sync(&mut wallet, &rpc);
    assert_eq!(wallet.latest_checkpoint().hash(), regtest.chain().tip());
    drop(regtest);
}

/// BDK's compact-filter scanner (`getblockheader` + `getblockfilter`) finds exactly the
/// blocks that pay or spend a watched script: the filters are real BIP158 filters.
#[test]
fn bdk_filter_iter_finds_the_blocks_that_touch_a_script() {
    use bdk_bitcoind_rpc::bip158::FilterIter;
    use bdk_wallet::chain::{BlockId, CheckPoint};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let regtest = runtime
        .block_on(Regtest::start(RegtestConfig::default()))
        .unwrap();
    regtest.mine(101, None);
    let rpc = Client::new(
        &regtest.rpc_url(),
        Auth::UserPass(regtest.rpc_user().into(), regtest.rpc_password().into()),
    )
    .unwrap();
    let mut wallet = wallet();
    let watched = wallet.reveal_next_address(KeychainKind::External).address;
    let mut touching = Vec::new();
    // Paid in block 103, spent (by the BDK wallet) in block 106; empty blocks around.
    regtest.mine(1, None);
    rpc.send_to_address(
        &watched,
        Amount::from_btc(2.0).unwrap(),
        None,
        None,
        None,
        None,
        None,
        None,
    )
    .unwrap();
    touching.extend(regtest.mine(1, None));
    regtest.mine(2, None);
    sync(&mut wallet, &rpc);
    let mut builder = wallet.build_tx();
    builder
        .drain_wallet()
        .drain_to(regtest.chain().wallet().default_address().script_pubkey());
    let mut psbt = builder.finish().unwrap();
    #[allow(deprecated)]
    let signed = wallet.sign(&mut psbt, SignOptions::default()).unwrap();
    assert!(signed);
    rpc.send_raw_transaction(&psbt.extract_tx().unwrap())
        .unwrap();
    touching.extend(regtest.mine(1, None));
    regtest.mine(3, None);

    let genesis = regtest.chain().hash_at(0).unwrap();
    let start = CheckPoint::new(BlockId {
        height: 0,
        hash: genesis,
    });
    let mut matched = Vec::new();
    let mut last = None;
    for event in FilterIter::new(&rpc, start, [watched.script_pubkey()]) {
        let event = event.unwrap();
        if let Some(block) = &event.block {
            matched.push(block.block_hash());
        }
        last = Some(event.cp);
    }
    assert_eq!(last.unwrap().hash(), regtest.chain().tip());
    for hash in &touching {
        assert!(
            matched.contains(hash),
            "block {hash} touches the script but did not match"
        );
    }
    // BIP158 allows rare false positives; with 110 blocks there should be at most a few.
    assert!(
        matched.len() <= touching.len() + 2,
        "{} matches",
        matched.len()
    );
}
