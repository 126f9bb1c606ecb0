//! The `NodeControl` contract (`phalanx_api::contract`) against the real node: Alice's
//! node service served over HTTP, with a channel to Bob, who makes the invoices Alice
//! pays and holds the payments the contract needs in flight. The same cases run against
//! the scripted stub in `phalanx-api`'s `contract` test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::Amount;
use lightning::types::payment::{PaymentHash, PaymentPreimage};
use phalanx_api::contract::{ContractDriver, PeerInvoice, run_all};
use phalanx_api::stub::Method;
use phalanx_api::{ApiClient, ApiError, ApiToken, serve};
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::Node;
use phalanx_node::control::NodeService;
use phalanx_node::payments::PaymentStatus;
use serde_json::Value;
use tokio::sync::oneshot;

struct NodeDriver {
    client: ApiClient,
    bob: Arc<Node>,
    /// The preimages of Bob's hold invoices, by payment hash.
    held: Mutex<HashMap<String, PaymentPreimage>>,
    _stop: oneshot::Sender<()>,
}

impl ContractDriver for NodeDriver {
    fn client(&self) -> &ApiClient {
        &self.client
    }

    /// The real node gives its own answers.
    fn expect(&self, _method: Method, _answer: Result<Value, ApiError>) {}

    fn peer_id(&self) -> String {
        self.bob.node_id().to_string()
    }

    fn foreign_address(&self) -> String {
        // Mainnet, for a node on regtest.
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into()
    }

    async fn peer_invoice(&self, amount_msat: u64) -> PeerInvoice {
        let invoice = self
            .bob
            .create_invoice(Some(amount_msat), "contract", None)
            .await
            .expect("bob makes an invoice");
        PeerInvoice {
            invoice: invoice.to_string(),
            payment_hash: invoice.payment_hash().to_string(),
        }
    }

    async fn held_invoice(&self, amount_msat: u64) -> PeerInvoice {
        let preimage = PaymentPreimage(rand::random());
        let hash: PaymentHash = preimage.into();
        let invoice = self
            .bob
            .create_hold_invoice(Some(amount_msat), hash, "contract, held", None)
            .await
            .expect("bob makes a hold invoice");
        self.held.lock().unwrap().insert(hash.to_string(), preimage);
        PeerInvoice {
            invoice: invoice.to_string(),
            payment_hash: hash.to_string(),
        }
    }

    async fn release(&self, invoice: &PeerInvoice) {
        let preimage = self.held.lock().unwrap()[&invoice.payment_hash];
        let hash: PaymentHash = preimage.into();
        wait_for(
            "bob to hold the payment",
            Duration::from_secs(30),
            || async {
                self.bob
                    .inbound_payment(hash)
                    .filter(|r| r.status == PaymentStatus::Accepted)
            },
        )
        .await;
        self.bob
            .settle_hold_invoice(preimage)
            .expect("bob settles the held payment");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_keeps_the_contract() {
    let chain = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&chain, dir.path(), "alice", None)).await;
    let bob = start(&node_config(&chain, dir.path(), "bob", None)).await;
    fund(&chain, &alice, Amount::from_sat(500_000)).await;
    open_channel(&chain, &alice, &bob, 300_000, 0).await;

    let service = Arc::new(NodeService::new());
    assert!(service.set_node(Arc::clone(&alice)).is_ok());
    let token = ApiToken::generate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, service, token.clone(), async move {
        let _ = stopped.await;
    }));
    let driver = NodeDriver {
        client: ApiClient::new(&url).unwrap().with_token(token),
        bob: Arc::clone(&bob),
        held: Mutex::default(),
        _stop: stop,
    };
    run_all(&driver).await;
    alice.shutdown().await;
    bob.shutdown().await;
}
