//! Invariants that need no test chain, so that the devnet checks them too: both nodes'
//! payment ledgers agree (each payment resolved exactly once on each side), and the
//! channels' funding outputs are unspent (no force close). Each check returns its
//! violations; empty means it holds. `phalanx-e2e` adds the checks that need the
//! in-process chain or a cluster.

use std::collections::HashMap;

use bitcoin::OutPoint;
use phalanx_api::{Payment, PaymentDirection};
use phalanx_node::payments::{Direction, PaymentRecord, PaymentStatus};

use std::time::Duration;

use phalanx_node::Node;

use crate::chain::ChainControl;

/// A payment record, whoever keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where it stands.
    pub status: Status,
    /// Its amount, when recorded.
    pub amount_msat: Option<u64>,
}

/// Where a payment stands, on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not resolved.
    Pending,
    /// Paid, or received.
    Succeeded,
    /// Will not complete.
    Failed,
}

/// One node's payment records, by direction and payment hash.
pub struct Ledger {
    name: &'static str,
    outbound: HashMap<String, Vec<Entry>>,
    inbound: HashMap<String, Vec<Entry>>,
}

impl Ledger {
    /// The ledger of a node read over its API.
    pub fn of_api(name: &'static str, payments: &[Payment]) -> Self {
        let mut ledger = Ledger::new(name);
        for p in payments {
            let status = match p.status {
                phalanx_api::PaymentStatus::Pending => Status::Pending,
                phalanx_api::PaymentStatus::Succeeded => Status::Succeeded,
                phalanx_api::PaymentStatus::Failed => Status::Failed,
            };
            ledger.add(
                p.direction == PaymentDirection::Outbound,
                &p.payment_hash,
                status,
                p.amount_msat,
            );
        }
        ledger
    }

    /// The ledger of an in-process node.
    pub fn of_node(name: &'static str, records: &[PaymentRecord]) -> Self {
        let mut ledger = Ledger::new(name);
        for r in records {
            let status = match r.status {
                PaymentStatus::Pending | PaymentStatus::Accepted => Status::Pending,
                PaymentStatus::Succeeded => Status::Succeeded,
                PaymentStatus::Failed => Status::Failed,
            };
            ledger.add(
                r.direction == Direction::Outbound,
                &r.payment_hash,
                status,
                r.amount_msat,
            );
        }
        ledger
    }

    fn new(name: &'static str) -> Self {
        Self {
            name,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
        }
    }

    fn add(&mut self, outbound: bool, hash: &str, status: Status, amount_msat: Option<u64>) {
        let side = if outbound {
            &mut self.outbound
        } else {
            &mut self.inbound
        };
        side.entry(hash.to_owned()).or_default().push(Entry {
            status,
            amount_msat,
        });
    }

    /// Whose ledger this is.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The hashes of its outbound payments.
    pub fn outbound_hashes(&self) -> impl Iterator<Item = &str> {
        self.outbound.keys().map(String::as_str)
    }

    /// The hashes of its inbound payments.
    pub fn inbound_hashes(&self) -> impl Iterator<Item = &str> {
        self.inbound.keys().map(String::as_str)
    }

    /// What it recorded of paying `hash`.
    pub fn sent(&self, hash: &str) -> &[Entry] {
        self.outbound.get(hash).map_or(&[], Vec::as_slice)
    }

    /// What it recorded of receiving `hash`, succeeded only.
    pub fn received(&self, hash: &str) -> Vec<Entry> {
        self.inbound
            .get(hash)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|e| e.status == Status::Succeeded)
            .copied()
            .collect()
    }

    /// What is wrong within this ledger alone: a payment recorded twice, or still
    /// pending (call it once the payments settled).
    pub fn own_violations(&self) -> Vec<String> {
        let name = self.name;
        let mut found = Vec::new();
        for (hash, entries) in &self.outbound {
            if entries.len() > 1 {
                found.push(format!(
                    "{name} has {} records of payment {hash}",
                    entries.len()
                ));
            }
            if entries.iter().any(|e| e.status == Status::Pending) {
                found.push(format!("{name}'s payment {hash} is still pending"));
            }
        }
        for (hash, entries) in &self.inbound {
            if entries.len() > 1 {
                found.push(format!(
                    "{name} has {} records of receiving {hash}",
                    entries.len()
                ));
            }
        }
        found
    }
}

/// **Every payment resolved exactly once**, by the two ledgers alone (no record of what
/// the payers were told): neither has a payment recorded twice or still pending, every
/// payment one side saw succeed the other received exactly once with the same amount,
/// and nothing was received that the other side did not pay or saw fail.
pub fn ledger_violations(a: &Ledger, b: &Ledger) -> Vec<String> {
    let mut found: Vec<String> = [a, b]
        .into_iter()
        .flat_map(Ledger::own_violations)
        .collect();
    for (payer, payee) in [(a, b), (b, a)] {
        let (p, q) = (payer.name(), payee.name());
        for hash in payer.outbound_hashes() {
            let sent = payer.sent(hash);
            let received = payee.received(hash);
            match sent.first().map(|e| e.status) {
                Some(Status::Succeeded) => {
                    let once =
                        received.len() == 1 && received[0].amount_msat == sent[0].amount_msat;
                    if !once {
                        found.push(format!(
                            "{p} paid {hash} ({:?} msat), {q} received {received:?}",
                            sent[0].amount_msat
                        ));
                    }
                }
                Some(Status::Failed) if !received.is_empty() => {
                    found.push(format!("{q} received {hash} though {p} saw it fail"))
                }
                _ => {}
            }
        }
        for hash in payee.inbound_hashes() {
            if !payee.received(hash).is_empty() && payer.sent(hash).is_empty() {
                // Received from somebody else (a third node), or from nobody.
                found.push(format!("{q} received {hash}, which {p} never paid"));
            }
        }
    }
    found
}

/// **No force close**, over the chain's RPC: each funding output is still unspent, in
/// the chain and its mempool (`gettxout` with the mempool).
pub async fn funding_unspent(chain: &ChainControl, fundings: &[OutPoint]) -> Vec<String> {
    let mut found = Vec::new();
    for funding in fundings {
        match chain.is_unspent(funding).await {
            Ok(true) => {}
            Ok(false) => found.push(format!(
                "the funding output {funding} was spent (a force close?)"
            )),
            Err(err) => found.push(format!(
                "the funding output {funding} cannot be read: {err}"
            )),
        }
    }
    found
}

/// How long the payments may take to settle on both sides before the invariants count.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The invariants between two nodes with channels only to each other (the devnet's,
/// the payments benchmark's), checked until they hold or
/// [`SETTLE_TIMEOUT`] passes: both ledgers agree, every channel's funding is unspent.
pub async fn between(chain: &ChainControl, alice: &Node, bob: &Node) -> Vec<String> {
    let fundings: Vec<bitcoin::OutPoint> = alice
        .list_channels()
        .iter()
        .filter_map(|c| c.funding_txo.map(|o| o.into_bitcoin_outpoint()))
        .collect();
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut found = ledger_violations(
            &Ledger::of_node("alice", &alice.list_payments()),
            &Ledger::of_node("bob", &bob.list_payments()),
        );
        found.extend(funding_unspent(chain, &fundings).await);
        if found.is_empty() || std::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(direction: Direction, hash: &str, status: PaymentStatus) -> PaymentRecord {
        let mut record = PaymentRecord::pending(direction, hash.into(), hash.into());
        record.status = status;
        record.amount_msat = Some(1_000);
        record
    }

    fn check(alice: &[PaymentRecord], bob: &[PaymentRecord]) -> Vec<String> {
        ledger_violations(
            &Ledger::of_node("alice", alice),
            &Ledger::of_node("bob", bob),
        )
    }

    #[test]
    fn ledgers_that_agree_have_no_violation() {
        let alice = [
            record(Direction::Outbound, "aa", PaymentStatus::Succeeded),
            record(Direction::Outbound, "bb", PaymentStatus::Failed),
            record(Direction::Inbound, "cc", PaymentStatus::Succeeded),
        ];
        let bob = [
            record(Direction::Inbound, "aa", PaymentStatus::Succeeded),
            record(Direction::Inbound, "bb", PaymentStatus::Failed),
            record(Direction::Outbound, "cc", PaymentStatus::Succeeded),
        ];
        assert_eq!(check(&alice, &bob), Vec::<String>::new());
    }

    #[test]
    fn lost_doubled_pending_and_unpaid_payments_are_named() {
        let paid = record(Direction::Outbound, "aa", PaymentStatus::Succeeded);
        // Paid, never received.
        assert_eq!(check(std::slice::from_ref(&paid), &[]).len(), 1);
        // Received twice.
        let received = record(Direction::Inbound, "aa", PaymentStatus::Succeeded);
        let found = check(
            std::slice::from_ref(&paid),
            &[received.clone(), received.clone()],
        );
        assert!(found.iter().any(|v| v.contains("2 records")), "{found:?}");
        // Received though the payer saw it fail.
        let failed = record(Direction::Outbound, "aa", PaymentStatus::Failed);
        assert_eq!(check(&[failed], std::slice::from_ref(&received)).len(), 1);
        // Still pending once settled.
        let pending = record(Direction::Outbound, "aa", PaymentStatus::Pending);
        assert!(check(&[pending], &[])[0].contains("pending"));
        // Received from nobody.
        assert_eq!(check(&[], &[received]).len(), 1);
    }
}
