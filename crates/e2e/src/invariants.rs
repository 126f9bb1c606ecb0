//! The invariants every scenario must leave true, one named check each. A check returns
//! its violations (empty: it holds); tests assert the list is empty with [`assert_none`],
//! benchmarks and the devnet count and print it. The checks that need no test chain
//! (the ledgers, a funding left unspent) are `phalanx_devnet::invariants`', which the
//! devnet runs, and are re-exported here. Checks of a state that takes a moment
//! to settle (records written, HTLCs removed) are polled with [`settled`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bitcoin::OutPoint;
use phalanx_api::{ApiClient, ChannelState, ServerState};
use phalanx_node::Node;
use phalanx_store::{LeaseInfo, Store};

pub use phalanx_devnet::invariants::{Entry, Ledger, Status, funding_unspent, ledger_violations};

use crate::chain::TestChain;
use crate::stream::{Attempt, Outcome, Way};

/// How long a watch's store read may take before a sweep skips the lease.
const LEASE_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Fails the test if `violations` is not empty, naming the invariant and the first few.
pub fn assert_none(invariant: &str, violations: &[String]) {
    assert!(
        violations.is_empty(),
        "{invariant}: {} violations (the first 20):\n{}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Runs `check` until it finds nothing or `timeout` passes; returns what it found last.
pub async fn settled<F, Fut>(timeout: Duration, mut check: F) -> Vec<String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let found = check().await;
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// **No force close**: nothing on the chain ever spent a channel's funding output.
pub fn no_force_close(chain: &TestChain, fundings: &[OutPoint]) -> Vec<String> {
    fundings
        .iter()
        .filter_map(|funding| {
            let spenders = chain.spenders(*funding);
            (!spenders.is_empty()).then(|| {
                format!("the funding output {funding} was spent (a force close?) by {spenders:?}")
            })
        })
        .collect()
}

/// **The chain was quiet** since it had seen `count` transactions: a payment stream needs
/// none, so any would come from an instance acting where it must not (a stale one
/// broadcasting from memory, a sweep of a closed channel).
pub fn chain_quiet_since(chain: &TestChain, count: usize) -> Vec<String> {
    chain
        .transactions_since(count)
        .into_iter()
        .map(|txid| format!("transaction {txid} reached the chain during the stream"))
        .collect()
}

/// **The channel is usable again** on both sides: Bob's (in process) and Alice's (over
/// her API), the one whose funding is `funding`.
pub async fn channel_usable(bob: &Node, alice: &ApiClient, funding: OutPoint) -> Vec<String> {
    let mut found = Vec::new();
    if !bob_channel(bob, funding).is_some_and(|(usable, _)| usable) {
        found.push(format!("bob's channel {funding} is not usable"));
    }
    let funding_txid = funding.txid.to_string();
    match alice.list_channels().await {
        Ok(channels) => {
            let usable = channels.iter().any(|c| {
                c.funding_txid.as_deref() == Some(&funding_txid)
                    && c.funding_output_index == Some(funding.vout)
                    && c.is_usable
                    && c.state == ChannelState::Ready
            });
            if !usable {
                found.push(format!(
                    "alice's channel {funding} is not usable: {channels:?}"
                ));
            }
        }
        Err(err) => found.push(format!("alice does not list her channels: {err}")),
    }
    found
}

/// **The balances add up**: what Bob can send over the channel on `funding` changed by
/// exactly what he received less what he sent in the stream (a direct channel: no fees;
/// Bob did not fund it: no commitment fee).
pub fn balances_add_up(
    attempts: &[Attempt],
    bob: &Node,
    funding: OutPoint,
    bob_outbound_before: u64,
) -> Vec<String> {
    let total = |way| -> u64 {
        attempts
            .iter()
            .filter(|a| a.way == way && a.outcome == Outcome::Succeeded)
            .map(|a| a.amount_msat)
            .sum()
    };
    let expected = bob_outbound_before + total(Way::AliceToBob) - total(Way::BobToAlice);
    let actual = bob_channel(bob, funding).map(|(_, outbound)| outbound);
    if actual == Some(expected) {
        return Vec::new();
    }
    vec![format!(
        "bob can send {actual:?} msat over the channel, not {expected} ({bob_outbound_before} \
         before, +{} received, -{} sent)",
        total(Way::AliceToBob),
        total(Way::BobToAlice)
    )]
}

/// Bob's channel on `funding`: whether it is usable, and what he can send over it.
pub fn bob_channel(bob: &Node, funding: OutPoint) -> Option<(bool, u64)> {
    bob.list_channels()
        .iter()
        .find(|c| c.funding_txo.map(|o| o.into_bitcoin_outpoint()) == Some(funding))
        .map(|c| (c.is_usable, c.outbound_capacity_msat))
}

/// **Every payment resolved exactly once**: each of the stream's payments is resolved
/// (succeeded or failed) exactly once on each side, the payer and the payee agree with
/// what the stream saw, and nobody has payments the stream did not make.
pub fn payment_violations(attempts: &[Attempt], alice: &Ledger, bob: &Ledger) -> Vec<String> {
    let mut found = [alice, bob]
        .into_iter()
        .flat_map(Ledger::own_violations)
        .collect::<Vec<_>>();
    for attempt in attempts {
        let (payer, payee) = match attempt.way {
            Way::AliceToBob => (alice, bob),
            Way::BobToAlice => (bob, alice),
        };
        let hash = &attempt.payment_hash;
        let slot = attempt.slot;
        let sent = payer.sent(hash);
        let received = payee.received(hash);
        let (p, q) = (payer.name(), payee.name());
        match &attempt.outcome {
            Outcome::NotRecorded(why) => {
                if !sent.is_empty() {
                    found.push(format!(
                        "payment {slot} ({hash}): {p} refused it ({why}) yet recorded {sent:?}"
                    ));
                }
                if !received.is_empty() {
                    found.push(format!(
                        "payment {slot} ({hash}): {q} received it though {p} refused it ({why})"
                    ));
                }
            }
            Outcome::Succeeded => {
                if sent.iter().map(|e| e.status).collect::<Vec<_>>() != [Status::Succeeded] {
                    found.push(format!(
                        "payment {slot} ({hash}): {p} saw it succeed, its records say {sent:?}"
                    ));
                }
                let once =
                    received.len() == 1 && received[0].amount_msat == Some(attempt.amount_msat);
                if !once {
                    found.push(format!(
                        "payment {slot} ({hash}) of {} msat: {p} saw it succeed, {q} received \
                         {received:?}",
                        attempt.amount_msat
                    ));
                }
            }
            Outcome::Failed(why) => {
                if sent.iter().map(|e| e.status).collect::<Vec<_>>() != [Status::Failed] {
                    found.push(format!(
                        "payment {slot} ({hash}): {p} saw it fail ({why}), its records say {sent:?}"
                    ));
                }
                if !received.is_empty() {
                    found.push(format!(
                        "payment {slot} ({hash}): {q} received it though {p} saw it fail ({why})"
                    ));
                }
            }
        }
    }
    // Nothing sent or received that the stream did not make.
    let made: HashMap<&str, &Attempt> = attempts
        .iter()
        .map(|a| (a.payment_hash.as_str(), a))
        .collect();
    for (ledger, way) in [(alice, Way::AliceToBob), (bob, Way::BobToAlice)] {
        for hash in ledger.outbound_hashes() {
            if made.get(hash).is_none_or(|a| a.way != way) {
                found.push(format!(
                    "{} has an outbound payment {hash} the stream never made",
                    ledger.name()
                ));
            }
        }
    }
    for (ledger, way) in [(alice, Way::BobToAlice), (bob, Way::AliceToBob)] {
        for hash in ledger.inbound_hashes() {
            if !ledger.received(hash).is_empty() && made.get(hash).is_none_or(|a| a.way != way) {
                found.push(format!(
                    "{} received a payment {hash} the stream never made",
                    ledger.name()
                ));
            }
        }
    }
    found
}

/// [`payment_violations`] of Alice (over her API) and Bob (in process) right now.
pub async fn every_payment_resolved_once(
    attempts: &[Attempt],
    bob: &Node,
    alice: &ApiClient,
) -> Vec<String> {
    match alice.list_payments().await {
        Ok(payments) => payment_violations(
            attempts,
            &Ledger::of_api("alice", &payments),
            &Ledger::of_node("bob", &bob.list_payments()),
        ),
        Err(err) => vec![format!("alice does not list her payments: {err}")],
    }
}

/// **One writer per epoch**: the store's epoch history is in order (newest first, epochs
/// and times descending) and each leadership an instance announced (`node started`) is
/// recorded under that instance. Also returns how many epochs were won but never
/// announced (an instance that won and then stopped while loading).
pub async fn epoch_history_violations(
    store: &dyn Store,
    announced: &[(&'static str, u64)],
) -> (Vec<String>, usize) {
    let history = match store.epoch_history(10_000).await {
        Ok(history) => history,
        Err(err) => return (vec![format!("the store's epoch history: {err}")], 0),
    };
    let mut found = Vec::new();
    for pair in history.windows(2) {
        if !(pair[0].epoch > pair[1].epoch
            && pair[0].acquired_at_unix_ms >= pair[1].acquired_at_unix_ms)
        {
            found.push(format!("the epoch history is out of order: {pair:?}"));
        }
    }
    for (id, epoch) in announced {
        let record = history.iter().find(|r| r.epoch.0 == *epoch);
        if record.is_none_or(|r| r.holder != *id) {
            found.push(format!(
                "instance {id} announced epoch {epoch}; the store's history says {record:?}"
            ));
        }
    }
    let first = announced.first().map_or(0, |(_, epoch)| *epoch);
    let won = history.iter().filter(|r| r.epoch.0 >= first).count();
    (found, won.saturating_sub(announced.len()))
}

/// When the store granted `epoch`, by its clock (the machine's: the store runs here).
pub async fn epoch_won_at(store: &dyn Store, epoch: u64) -> SystemTime {
    let history = store
        .epoch_history(16)
        .await
        .expect("the store's epoch history");
    let record = history
        .iter()
        .find(|r| r.epoch.0 == epoch)
        .unwrap_or_else(|| panic!("epoch {epoch} is in the history: {history:?}"));
    SystemTime::UNIX_EPOCH + Duration::from_millis(record.acquired_at_unix_ms as u64)
}

/// **Never two active**: polls every instance's state and the store's lease every 50 ms,
/// and records each sweep that saw two instances `SERVER_ACTIVE`, one `SERVER_ACTIVE`
/// while the store said another held the lease (the same lease read before and after
/// the states), or the epoch go down.
pub struct SplitBrainWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl SplitBrainWatch {
    /// Starts watching `instances` (by id; the list may grow) and `store`.
    pub fn start(
        instances: Arc<Mutex<Vec<(&'static str, ApiClient)>>>,
        store: Arc<dyn Store>,
    ) -> Self {
        let stop = tokio::sync::watch::channel(false).0;
        let mut stopped = stop.subscribe();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut highest_epoch = 0;
            while !*stopped.borrow() {
                let known = instances.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let before = read_lease(&*store).await;
                let states = futures::future::join_all(known.iter().map(|(id, api)| {
                    let probe = api.clone().with_timeout(Duration::from_millis(500));
                    async move { (*id, probe.state().await.ok()) }
                }))
                .await;
                let after = read_lease(&*store).await;
                let active: Vec<&str> = states
                    .iter()
                    .filter(|(_, s)| *s == Some(ServerState::ServerActive))
                    .map(|(id, _)| *id)
                    .collect();
                if active.len() > 1 {
                    seen.push(format!("{} instances active: {states:?}", active.len()));
                }
                if let (Some(before), Some(after)) = (&before, &after)
                    && before == after
                {
                    for id in &active {
                        if *id != before.holder {
                            seen.push(format!(
                                "instance {id} was SERVER_ACTIVE while the store said {} \
                                 held epoch {}",
                                before.holder, before.epoch
                            ));
                        }
                    }
                }
                for lease in [&before, &after].into_iter().flatten() {
                    if lease.epoch.0 < highest_epoch {
                        seen.push(format!(
                            "the store's epoch went down from {highest_epoch} to {}",
                            lease.epoch
                        ));
                    }
                    highest_epoch = highest_epoch.max(lease.epoch.0);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stopped.changed() => {}
                }
            }
            seen
        });
        Self { stop, task }
    }

    /// Stops watching; returns every breach seen.
    pub async fn stop(self) -> Vec<String> {
        self.stop.send_replace(true);
        self.task.await.expect("the watch ran")
    }
}

/// The store's lease, if it answers in time and someone holds it unexpired.
async fn read_lease(store: &dyn Store) -> Option<LeaseInfo> {
    match tokio::time::timeout(LEASE_READ_TIMEOUT, store.current_lease()).await {
        Ok(Ok(Some(lease))) if lease.expires_in.is_none_or(|left| !left.is_zero()) => Some(lease),
        _ => None,
    }
}
