//! What the tests of fronts share: a node serving fronts, and fronts for it.

use std::sync::Arc;
use std::time::Duration;

use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_frontend::{Front, FrontConfig};
use phalanx_link::Role;
use phalanx_link::pki::LinkCa;
use phalanx_node::Node;
use phalanx_node::config::LinkConfig;

/// A front named `name` for `backend`, on a loopback port.
pub async fn front(ca: &LinkCa, name: &str, backend: &Node) -> Front {
    Front::start(FrontConfig {
        name: name.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        backends: vec![backend.link_address().expect("the node serves fronts")],
        identity: ca.identity(Role::Front, name).unwrap(),
        ecdh_timeout: Duration::from_secs(5),
        node_key: None,
        public_address: None,
    })
    .await
    .unwrap()
}

/// Bob, a node serving fronts (his link's certificates written as `phalanx link-certs`
/// writes them), and the CA that signed them.
pub async fn fronted_bob(regtest: &TestChain, dir: &std::path::Path) -> (Arc<Node>, LinkCa) {
    let ca = LinkCa::generate("front-test").unwrap();
    let certs = dir.join("link");
    std::fs::create_dir(&certs).unwrap();
    let issued = ca.issue(Role::Backend, "bob-1").unwrap();
    for (file, pem) in [
        ("bob-1.crt", issued.cert_pem.as_str()),
        ("bob-1.key", issued.key_pem.as_str()),
        ("ca.crt", ca.cert_pem().as_str()),
    ] {
        std::fs::write(certs.join(file), pem).unwrap();
    }
    let mut bob_config = node_config(regtest, dir, "bob", None);
    bob_config.link = Some(LinkConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        certificate: certs.join("bob-1.crt"),
        key: certs.join("bob-1.key"),
        ca: certs.join("ca.crt"),
    });
    (start(&bob_config).await, ca)
}
