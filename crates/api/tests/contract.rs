//! The `NodeControl` contract against the scripted stub: the server and the client carry
//! each answer the contract prescribes, and each request reaches the node as it was
//! made. The same cases run against the real node in `phalanx-node`'s `contract` test.

use std::sync::Arc;

use phalanx_api::contract::{ContractDriver, PeerInvoice, run_all};
use phalanx_api::stub::{Method, StubNode};
use phalanx_api::{ApiClient, ApiError, ApiToken, serve};
use serde_json::Value;
use tokio::sync::oneshot;

/// The stub served over HTTP, scripted with the contract's answers.
struct StubDriver {
    node: Arc<StubNode>,
    client: ApiClient,
    _stop: oneshot::Sender<()>,
}

impl StubDriver {
    async fn start() -> Self {
        let node = Arc::new(StubNode::new());
        let token = ApiToken::generate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            Arc::clone(&node),
            token.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            node,
            client: ApiClient::new(&url).unwrap().with_token(token),
            _stop: stop,
        }
    }
}

impl ContractDriver for StubDriver {
    fn client(&self) -> &ApiClient {
        &self.client
    }

    fn expect(&self, method: Method, answer: Result<Value, ApiError>) {
        self.node.reply_json(method, answer);
    }

    fn peer_id(&self) -> String {
        "02aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()
    }

    fn foreign_address(&self) -> String {
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into()
    }

    async fn peer_invoice(&self, amount_msat: u64) -> PeerInvoice {
        PeerInvoice {
            invoice: format!("lnbcrt{amount_msat}n1stubinvoice"),
            payment_hash: format!("{:064x}", amount_msat),
        }
    }

    async fn held_invoice(&self, amount_msat: u64) -> PeerInvoice {
        PeerInvoice {
            invoice: format!("lnbcrt{amount_msat}n1stubheld"),
            payment_hash: format!("{:064x}", amount_msat + 1),
        }
    }

    async fn release(&self, _invoice: &PeerInvoice) {}
}

#[tokio::test]
async fn the_stub_carries_the_contract() {
    let driver = StubDriver::start().await;
    run_all(&driver).await;
    // Every answer the contract prescribed was asked for: each case made the calls it
    // meant, and each reached the node.
    assert_eq!(driver.node.unanswered(), 0, "{:?}", driver.node.calls());
    let infos = driver
        .node
        .calls()
        .iter()
        .filter(|c| c.method == Method::Info)
        .count();
    assert_eq!(infos, 1, "info was asked once");
}
