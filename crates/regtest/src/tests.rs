//! The chain's rules, driven directly (the RPC and REST layers have their own tests, with
//! the real clients).

use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::opcodes::all::{OP_CHECKSIG, OP_CLTV, OP_CSV, OP_DROP};
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{
    Address, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxOut, Txid, Witness, absolute, transaction,
};

use crate::*;

fn chain() -> Chain {
    Chain::new(ChainSettings::default())
}

/// A chain whose wallet has `n` mature coinbases.
fn funded(n: u32) -> Chain {
    let mut chain = chain();
    let payout = chain.wallet().default_address().script_pubkey();
    for _ in 0..(100 + n) {
        chain.mine_block(&payout, None).unwrap();
    }
    chain
}

fn mine(chain: &mut Chain, blocks: u32) {
    let payout = chain.wallet().default_address().script_pubkey();
    for _ in 0..blocks {
        chain.mine_block(&payout, None).unwrap();
    }
}

struct Key {
    secret: SecretKey,
    public: CompressedPublicKey,
}

fn key(seed: u8) -> Key {
    let secp = Secp256k1::new();
    let secret = SecretKey::from_slice(&[seed; 32]).unwrap();
    Key {
        public: CompressedPublicKey(secret.public_key(&secp)),
        secret,
    }
}

/// Sends `amount` from the wallet to `script`, mines it, returns the outpoint and output.
fn fund(chain: &mut Chain, script: &ScriptBuf, amount: Amount) -> (OutPoint, TxOut) {
    let txid = chain.send_to(script, amount).unwrap();
    mine(chain, 1);
    let (tx, _) = chain.confirmed_tx(&txid).unwrap();
    let vout = tx
        .output
        .iter()
        .position(|o| &o.script_pubkey == script)
        .unwrap();
    (OutPoint::new(txid, vout as u32), tx.output[vout].clone())
}

fn spend(prevout: OutPoint, sequence: Sequence, lock_time: u32, value: Amount) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::from_consensus(lock_time),
        input: vec![TxIn {
            previous_output: prevout,
            script_sig: ScriptBuf::new(),
            sequence,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value,
            script_pubkey: Address::p2wpkh(&key(99).public, Network::Regtest).script_pubkey(),
        }],
    }
}

fn sign_p2wpkh(tx: &mut Transaction, index: usize, key: &Key, spent: &TxOut) {
    let secp = Secp256k1::new();
    let sighash = SighashCache::new(&*tx)
        .p2wpkh_signature_hash(
            index,
            &spent.script_pubkey,
            spent.value,
            EcdsaSighashType::All,
        )
        .unwrap();
    let signature = bitcoin::ecdsa::Signature {
        signature: secp.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &key.secret),
        sighash_type: EcdsaSighashType::All,
    };
    tx.input[index].witness = Witness::p2wpkh(&signature, &key.public.0);
}

fn sign_p2wsh(tx: &mut Transaction, key: &Key, witness_script: &ScriptBuf, value: Amount) {
    let secp = Secp256k1::new();
    let sighash = SighashCache::new(&*tx)
        .p2wsh_signature_hash(0, witness_script, value, EcdsaSighashType::All)
        .unwrap();
    let signature = bitcoin::ecdsa::Signature {
        signature: secp.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &key.secret),
        sighash_type: EcdsaSighashType::All,
    };
    tx.input[0].witness = Witness::from_slice(&[signature.to_vec(), witness_script.to_bytes()]);
}

/// Submits to the mempool as `sendrawtransaction` does (no `maxfeerate`).
fn submit(chain: &mut Chain, tx: Transaction) -> Result<Accepted, TxError> {
    mempool::accept(chain, tx, AcceptMode::Broadcast { max_fee_rate: None })
}

fn reason(result: Result<Accepted, TxError>) -> String {
    result.expect_err("should be rejected").message()
}

/// Broadcasts through the `sendrawtransaction` RPC; returns Core's (code, message).
fn broadcast(chain: &mut Chain, tx: &Transaction) -> Result<Txid, (i32, String)> {
    let hex = bitcoin::consensus::encode::serialize_hex(tx);
    rpc::call(chain, "sendrawtransaction", &serde_json::json!([hex]))
        .map(|(value, _)| value.as_str().unwrap().parse().unwrap())
        .map_err(|err| (err.code, err.message))
}

#[test]
fn coinbases_mature_after_100_blocks_and_pay_the_subsidy() {
    let mut chain = funded(0);
    assert_eq!(chain.height(), 100);
    // Only the first coinbase (height 1) is spendable in block 101.
    assert_eq!(chain.wallet_balance(), Amount::from_btc(50.0).unwrap());
    mine(&mut chain, 1);
    assert_eq!(chain.wallet_balance(), Amount::from_btc(100.0).unwrap());
    // Every block's time is above the median of the 11 before it.
    for height in 1..=chain.height() {
        let entry = chain.entry(&chain.hash_at(height).unwrap()).unwrap();
        assert!(entry.block.header.time > chain.median_time_past_at(height - 1));
    }
}

#[test]
fn spending_an_immature_coinbase_is_refused() {
    let mut chain = funded(0);
    let key = key(1);
    let coinbase = chain.entry(&chain.tip()).unwrap().block.txdata[0].clone();
    let prevout = OutPoint::new(coinbase.compute_txid(), 0);
    // The wallet owns it, but it is 1 block deep.
    let mut tx = spend(prevout, Sequence::MAX, 0, Amount::from_btc(49.0).unwrap());
    tx.output[0].script_pubkey = Address::p2wpkh(&key.public, Network::Regtest).script_pubkey();
    let spent = [coinbase.output[0].clone()];
    chain.wallet.sign(&mut tx, &spent);
    let message = reason(submit(&mut chain, tx));
    assert_eq!(
        message,
        "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 1"
    );
}

#[test]
fn double_spend_needs_more_fee_and_replaces() {
    let mut chain = funded(1);
    let key = key(2);
    let script = Address::p2wpkh(&key.public, Network::Regtest).script_pubkey();
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(100_000));
    let mut first = spend(
        outpoint,
        Sequence::ENABLE_RBF_NO_LOCKTIME,
        0,
        Amount::from_sat(99_000),
    );
    sign_p2wpkh(&mut first, 0, &key, &output);
    let first_id = submit(&mut chain, first).unwrap().txid;

    let mut cheaper = spend(
        outpoint,
        Sequence::ENABLE_RBF_NO_LOCKTIME,
        0,
        Amount::from_sat(99_500),
    );
    sign_p2wpkh(&mut cheaper, 0, &key, &output);
    let message = reason(submit(&mut chain, cheaper));
    assert!(
        message.starts_with("insufficient fee, rejecting replacement"),
        "{message}"
    );
    assert!(chain.mempool().contains(&first_id));

    let mut richer = spend(
        outpoint,
        Sequence::ENABLE_RBF_NO_LOCKTIME,
        0,
        Amount::from_sat(90_000),
    );
    sign_p2wpkh(&mut richer, 0, &key, &output);
    let accepted = submit(&mut chain, richer).unwrap();
    assert_eq!(accepted.replaced, vec![first_id]);
    assert!(!chain.mempool().contains(&first_id));
    // Both were broadcast: the record keeps the replaced one too.
    assert!(chain.history().contains(&first_id));
    mine(&mut chain, 1);
    assert!(chain.confirmed_tx(&accepted.txid).is_some());
    assert!(chain.mempool().is_empty());
}

#[test]
fn csv_spend_one_block_early_is_refused() {
    let mut chain = funded(1);
    let key = key(3);
    let delay = 5;
    let witness_script = Builder::new()
        .push_int(delay)
        .push_opcode(OP_CSV)
        .push_opcode(OP_DROP)
        .push_key(&key.public.into())
        .push_opcode(OP_CHECKSIG)
        .into_script();
    let script = ScriptBuf::new_p2wsh(&witness_script.wscript_hash());
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(50_000));
    // Confirmed at height h; with a 5-block delay it can be in block h + 5.
    let make = || {
        let mut tx = spend(
            outpoint,
            Sequence::from_height(delay as u16),
            0,
            Amount::from_sat(40_000),
        );
        sign_p2wsh(&mut tx, &key, &witness_script, output.value);
        tx
    };
    mine(&mut chain, 3); // tip = h + 3: the next block is h + 4, one too early
    let message = reason(submit(&mut chain, make()));
    assert_eq!(message, "non-BIP68-final");
    mine(&mut chain, 1);
    submit(&mut chain, make()).unwrap();
}

#[test]
fn cltv_before_its_height_is_refused() {
    let mut chain = funded(1);
    let key = key(4);
    let unlock = chain.height() + 10;
    let witness_script = Builder::new()
        .push_int(i64::from(unlock))
        .push_opcode(OP_CLTV)
        .push_opcode(OP_DROP)
        .push_key(&key.public.into())
        .push_opcode(OP_CHECKSIG)
        .into_script();
    let script = ScriptBuf::new_p2wsh(&witness_script.wscript_hash());
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(50_000));
    let make = |lock_time: u32| {
        let mut tx = spend(
            outpoint,
            Sequence::ENABLE_LOCKTIME_NO_RBF,
            lock_time,
            Amount::from_sat(40_000),
        );
        sign_p2wsh(&mut tx, &key, &witness_script, output.value);
        tx
    };
    // nLockTime = unlock is not final until the block after `unlock`.
    let message = reason(submit(&mut chain, make(unlock)));
    assert_eq!(message, "non-final");
    // A final nLockTime (the tip's height) below what the script demands fails the script.
    let final_lock_time = chain.height();
    let message = reason(submit(&mut chain, make(final_lock_time)));
    assert!(
        message.starts_with("mandatory-script-verify-flag-failed"),
        "{message}"
    );
    while chain.height() < unlock {
        mine(&mut chain, 1);
    }
    submit(&mut chain, make(unlock)).unwrap();
}

#[test]
fn a_bad_signature_is_refused() {
    let mut chain = funded(1);
    let key = key(5);
    let script = Address::p2wpkh(&key.public, Network::Regtest).script_pubkey();
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(50_000));
    let mut tx = spend(outpoint, Sequence::MAX, 0, Amount::from_sat(40_000));
    sign_p2wpkh(&mut tx, 0, &key, &output);
    let mut witness: Vec<Vec<u8>> = tx.input[0].witness.iter().map(|w| w.to_vec()).collect();
    witness[0][10] ^= 0x01;
    tx.input[0].witness = Witness::from_slice(&witness);
    let message = reason(submit(&mut chain, tx));
    assert!(
        message.starts_with("mandatory-script-verify-flag-failed"),
        "{message}"
    );
}

#[test]
fn a_taproot_signature_over_a_wrong_prevout_amount_is_refused() {
    let mut chain = funded(1);
    let secp = Secp256k1::new();
    let keypair = Keypair::from_secret_key(&secp, &key(6).secret);
    let (internal, _) = keypair.x_only_public_key();
    let script = Address::p2tr(&secp, internal, None, Network::Regtest).script_pubkey();
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(60_000));
    let sign = |claimed: Amount| {
        let mut tx = spend(outpoint, Sequence::MAX, 0, Amount::from_sat(50_000));
        let prevouts = [TxOut {
            value: claimed,
            script_pubkey: output.script_pubkey.clone(),
        }];
        let sighash = SighashCache::new(&tx)
            .taproot_key_spend_signature_hash(0, &Prevouts::All(&prevouts), TapSighashType::Default)
            .unwrap();
        let tweaked = keypair.tap_tweak(&secp, None);
        let signature = secp.sign_schnorr(
            &Message::from_digest(sighash.to_byte_array()),
            &tweaked.to_keypair(),
        );
        tx.input[0].witness = Witness::from_slice(&[signature.as_ref().to_vec()]);
        tx
    };
    let message = reason(submit(&mut chain, sign(Amount::from_sat(60_001))));
    assert!(
        message.starts_with("mandatory-script-verify-flag-failed"),
        "{message}"
    );
    submit(&mut chain, sign(output.value)).unwrap();
}

#[test]
fn invalidate_puts_transactions_back_and_reconsider_restores() {
    let mut chain = funded(1);
    let target = Address::p2wpkh(&key(7).public, Network::Regtest).script_pubkey();
    let txid = chain.send_to(&target, Amount::from_sat(70_000)).unwrap();
    mine(&mut chain, 2);
    let (_, block) = chain
        .confirmed_tx(&txid)
        .map(|(t, b)| (t.clone(), b))
        .unwrap();
    let old_tip = chain.tip();
    let height_before = chain.height();

    chain.invalidate_block(&block).unwrap();
    assert_eq!(chain.height(), height_before - 2);
    assert!(chain.confirmed_tx(&txid).is_none());
    assert!(chain.mempool().contains(&txid), "back in the mempool");
    assert_eq!(chain.confirmations(&old_tip), -1);
    assert!(matches!(
        chain.history().events().last(),
        Some(ChainEvent::Disconnected { .. })
    ));

    // A new branch, longer than nothing: the transaction is mined again there.
    mine(&mut chain, 1);
    assert!(chain.confirmed_tx(&txid).is_some());

    // Reconsidering brings back the old branch (more work: 2 blocks vs 1).
    chain.reconsider_block(&block).unwrap();
    assert_eq!(chain.tip(), old_tip);
    assert_eq!(chain.confirmed_tx(&txid).unwrap().1, block);
    assert!(chain.mempool().is_empty());
}

#[test]
fn a_mined_conflict_evicts_the_mempool_transaction() {
    let mut chain = funded(1);
    let key = key(8);
    let script = Address::p2wpkh(&key.public, Network::Regtest).script_pubkey();
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(100_000));
    let mut in_mempool = spend(outpoint, Sequence::MAX, 0, Amount::from_sat(90_000));
    sign_p2wpkh(&mut in_mempool, 0, &key, &output);
    let mempool_id = submit(&mut chain, in_mempool).unwrap().txid;
    let mut mined = spend(outpoint, Sequence::MAX, 0, Amount::from_sat(95_000));
    sign_p2wpkh(&mut mined, 0, &key, &output);
    let payout = chain.wallet().default_address().script_pubkey();
    chain
        .mine_block(&payout, Some(vec![mined.clone()]))
        .unwrap();
    assert!(!chain.mempool().contains(&mempool_id));
    assert!(chain.confirmed_tx(&mined.compute_txid()).is_some());
}

#[test]
fn a_package_pays_for_a_zero_fee_parent() {
    let mut chain = funded(1);
    let key = key(9);
    let script = Address::p2wpkh(&key.public, Network::Regtest).script_pubkey();
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(100_000));
    let mut parent = spend(outpoint, Sequence::MAX, 0, Amount::from_sat(100_000));
    parent.output[0].script_pubkey = script.clone();
    sign_p2wpkh(&mut parent, 0, &key, &output);
    let message = reason(submit(&mut chain, parent.clone()));
    assert!(message.starts_with("min relay fee not met"), "{message}");
    let mut child = spend(
        OutPoint::new(parent.compute_txid(), 0),
        Sequence::MAX,
        0,
        Amount::from_sat(95_000),
    );
    sign_p2wpkh(&mut child, 0, &key, &parent.output[0]);
    let results = mempool::accept_package(&mut chain, vec![parent.clone(), child.clone()]).unwrap();
    assert!(results.iter().all(|r| r.result.is_ok()), "{results:?}");
    assert!(chain.mempool().contains(&parent.compute_txid()));
    assert!(chain.mempool().contains(&child.compute_txid()));
    mine(&mut chain, 1);
    assert!(chain.mempool().is_empty());
}

#[test]
fn a_mock_clock_gives_deterministic_increasing_times() {
    let mut chain = Chain::new(ChainSettings {
        mock_time: Some(1_800_000_000),
        ..Default::default()
    });
    mine(&mut chain, 30);
    let times: Vec<u32> = (1..=30)
        .map(|h| {
            chain
                .entry(&chain.hash_at(h).unwrap())
                .unwrap()
                .block
                .header
                .time
        })
        .collect();
    // With a frozen clock, each block is one second past the median of its 11 ancestors.
    assert!(times.iter().all(|t| *t >= 1_800_000_000));
    for height in 1..=30u32 {
        assert!(times[height as usize - 1] > chain.median_time_past_at(height - 1));
    }
    let again = {
        let mut other = Chain::new(ChainSettings {
            mock_time: Some(1_800_000_000),
            ..Default::default()
        });
        mine(&mut other, 30);
        (1..=30)
            .map(|h| {
                other
                    .entry(&other.hash_at(h).unwrap())
                    .unwrap()
                    .block
                    .header
                    .time
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(times, again);
}

#[test]
fn already_confirmed_and_missing_inputs_are_told_apart() {
    let mut chain = funded(1);
    let target = Address::p2wpkh(&key(10).public, Network::Regtest).script_pubkey();
    let txid = chain.send_to(&target, Amount::from_sat(70_000)).unwrap();
    let tx = chain.mempool().get(&txid).unwrap().tx.clone();
    mine(&mut chain, 1);
    let err = submit(&mut chain, tx).unwrap_err();
    assert_eq!(err, TxError::AlreadyInChain);
    let orphan = spend(
        OutPoint::new(Txid::all_zeros(), 7),
        Sequence::MAX,
        0,
        Amount::from_sat(1_000),
    );
    let err = submit(&mut chain, orphan).unwrap_err();
    assert_eq!(err, TxError::MissingInputs);
}

#[test]
fn rejections_carry_cores_rpc_codes() {
    let mut chain = funded(1);
    let key = key(11);
    let script = Address::p2wpkh(&key.public, Network::Regtest).script_pubkey();
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(100_000));

    // -26 for every mempool rejection: here a bad signature.
    let mut tx = spend(outpoint, Sequence::MAX, 0, Amount::from_sat(90_000));
    sign_p2wpkh(&mut tx, 0, &key, &output);
    let mut forged = tx.clone();
    let mut witness: Vec<Vec<u8>> = forged.input[0].witness.iter().map(|w| w.to_vec()).collect();
    witness[0][5] ^= 1;
    forged.input[0].witness = Witness::from_slice(&witness);
    let (code, message) = broadcast(&mut chain, &forged).unwrap_err();
    assert_eq!(code, -26);
    assert!(
        message.starts_with("mandatory-script-verify-flag-failed"),
        "{message}"
    );

    // Accepted; sending it again answers the txid (Core does the same).
    let txid = broadcast(&mut chain, &tx).unwrap();
    assert_eq!(broadcast(&mut chain, &tx).unwrap(), txid);

    // A double spend paying less: -26 insufficient fee.
    let mut cheaper = spend(outpoint, Sequence::MAX, 0, Amount::from_sat(95_000));
    sign_p2wpkh(&mut cheaper, 0, &key, &output);
    let (code, message) = broadcast(&mut chain, &cheaper).unwrap_err();
    assert_eq!(code, -26);
    assert!(
        message.starts_with("insufficient fee, rejecting replacement"),
        "{message}"
    );

    // Confirmed: -27.
    mine(&mut chain, 1);
    assert_eq!(
        broadcast(&mut chain, &tx).unwrap_err(),
        (-27, "Transaction outputs already in utxo set".into())
    );

    // Missing inputs: -25.
    let orphan = spend(
        OutPoint::new(Txid::all_zeros(), 3),
        Sequence::MAX,
        0,
        Amount::from_sat(1_000),
    );
    assert_eq!(
        broadcast(&mut chain, &orphan).unwrap_err(),
        (-25, "bad-txns-inputs-missingorspent".into())
    );

    // Immature coinbase: -26 with Core's detail.
    let tip_coinbase = chain.tip_entry().block.txdata[0].clone();
    let mut early = spend(
        OutPoint::new(tip_coinbase.compute_txid(), 0),
        Sequence::MAX,
        0,
        Amount::from_btc(1.0).unwrap(),
    );
    chain
        .wallet
        .sign(&mut early, &[tip_coinbase.output[0].clone()]);
    assert_eq!(
        broadcast(&mut chain, &early).unwrap_err(),
        (
            -26,
            "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 1".into()
        )
    );

    // Over maxfeerate (0.10 BTC/kvB by default): -25 with Core's text.
    let key2 = crate::tests::key(12);
    let script2 = Address::p2wpkh(&key2.public, Network::Regtest).script_pubkey();
    let (outpoint2, output2) = fund(&mut chain, &script2, Amount::from_sat(5_000_000));
    let mut burn = spend(outpoint2, Sequence::MAX, 0, Amount::from_sat(1_000));
    sign_p2wpkh(&mut burn, 0, &key2, &output2);
    assert_eq!(
        broadcast(&mut chain, &burn).unwrap_err(),
        (
            -25,
            "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)".into()
        )
    );
    // With maxfeerate 0 (no limit) it goes through.
    let hex = bitcoin::consensus::encode::serialize_hex(&burn);
    rpc::call(
        &mut chain,
        "sendrawtransaction",
        &serde_json::json!([hex, 0]),
    )
    .unwrap();
}

#[test]
fn testmempoolaccept_and_submitpackage_answer_in_cores_shape() {
    let mut chain = funded(1);
    let key = key(13);
    let script = Address::p2wpkh(&key.public, Network::Regtest).script_pubkey();
    let (outpoint, output) = fund(&mut chain, &script, Amount::from_sat(100_000));
    let mut parent = spend(outpoint, Sequence::MAX, 0, Amount::from_sat(100_000));
    parent.output[0].script_pubkey = script.clone();
    sign_p2wpkh(&mut parent, 0, &key, &output);
    let mut child = spend(
        OutPoint::new(parent.compute_txid(), 0),
        Sequence::MAX,
        0,
        Amount::from_sat(96_000),
    );
    sign_p2wpkh(&mut child, 0, &key, &parent.output[0]);
    let hex = |tx: &Transaction| bitcoin::consensus::encode::serialize_hex(tx);

    let (tested, _) = rpc::call(
        &mut chain,
        "testmempoolaccept",
        &serde_json::json!([[hex(&parent)]]),
    )
    .unwrap();
    assert_eq!(tested[0]["allowed"], false);
    assert_eq!(tested[0]["reject-reason"], "min relay fee not met");
    assert!(chain.mempool().is_empty(), "testing changes nothing");

    let (submitted, _) = rpc::call(
        &mut chain,
        "submitpackage",
        &serde_json::json!([[hex(&parent), hex(&child)]]),
    )
    .unwrap();
    assert_eq!(submitted["package_msg"], "success");
    let results = submitted["tx-results"].as_object().unwrap();
    assert_eq!(results.len(), 2);
    let child_result = &results[&child.compute_wtxid().to_string()];
    assert_eq!(child_result["txid"], child.compute_txid().to_string());
    assert_eq!(child_result["fees"]["base"], serde_json::json!(0.00004));
    assert!(chain.mempool().contains(&parent.compute_txid()));

    let (entry, _) = rpc::call(
        &mut chain,
        "getmempoolentry",
        &serde_json::json!([child.compute_txid().to_string()]),
    )
    .unwrap();
    assert_eq!(entry["ancestorcount"], 2);
    assert_eq!(
        entry["depends"],
        serde_json::json!([parent.compute_txid().to_string()])
    );
    let (info, _) = rpc::call(&mut chain, "getmempoolinfo", &serde_json::json!([])).unwrap();
    assert_eq!(info["size"], 2);
}
