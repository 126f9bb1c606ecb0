//! The fronts scenario: Alice is a cluster of two backends on PostgreSQL behind two
//! keyless fronts, and the fronts behind haproxy. Bob knows Alice only by the balancer's
//! address: he connects there, Alice opens a channel over that connection, and payments
//! stream both ways while, round after round, the front holding Bob is killed (Bob comes
//! back through the other one) or the active backend is killed (the fronts attach to the
//! new one, which Bob reaches again through them), or a peer floods a front with a
//! synthetic graph's gossip through the balancer (the front checks it and hands the
//! backend what is new, while payments go on; that peer, gossip only, stays connected
//! when a later round kills the active backend). After each round Alice and Bob pay each
//! other's BOLT 12 offer: the invoice requests and invoices are onion messages, which
//! cross the fronts to whichever backend is active. Afterwards: nothing lost or doubled,
//! no force close, never two active, and no front process ever held the node's secret
//! (in its memory, its log or its environment).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::secp256k1::PublicKey;
use lightning::sign::{KeysManager, NodeSigner, Recipient};
use phalanx_devnet::harness::usable_with;
use phalanx_gossip_sim::{ReplayPeer, Shape, SyntheticGraph};
use phalanx_link::Role;
use phalanx_link::pki::LinkCa;
use phalanx_secrets::{FileSeedProvider, SeedProvider};
use phalanx_testkit::haproxy::{Haproxy, Server};
use phalanx_testkit::process::{free_port, memory_contains};

use crate::cluster::{Cluster, Disruption, OwnServer, PAYMENTS_PER_ROUND};
use crate::nodes::wait_for;
use crate::process::{ConfigFile, FailureLogs, LogFile, NodeBinary, NodeProcess, spawn};
use crate::scenario::{STREAM_TIMEOUT, Watched, until_disruption};
use crate::stream::{Attempt, Outcome, Stream, Way};
use crate::world::{Backend, Channel, World};

/// What each round does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontDisruption {
    /// `kill -9` of the front Bob is connected through.
    KillFront,
    /// `kill -9` of the active backend, the fronts left in place.
    KillActiveBackend,
    /// A peer connects through the balancer and sends its front a synthetic graph of
    /// [`FLOOD_CHANNELS`] channels (tens of thousands of messages) as a full sync.
    GossipFlood,
}

/// The flood's graph: 2,000 nodes and 8,000 channels, both directions updated (26,000
/// messages, each signed, each channel funded on the chain).
const FLOOD_NODES: usize = 2_000;
const FLOOD_CHANNELS: usize = 8_000;
/// How long a front may take to check the flood (a debug build, on a busy machine).
const FLOOD_TIMEOUT: Duration = Duration::from_secs(300);

/// A flood round: how long the front took, and the payments' median time to success
/// before and during it.
#[derive(Debug)]
#[allow(dead_code)] // Read through Debug, in the scenario's report.
struct Flood {
    messages: usize,
    front: &'static str,
    ingested: Duration,
    median_before: Option<Duration>,
    payments_before: usize,
    median_during: Option<Duration>,
    payments_during: usize,
}

/// How long a round's disruption kept Bob from Alice.
#[derive(Debug)]
#[allow(dead_code)] // Read through Debug, in the scenario's report.
struct Recovery {
    disruption: FrontDisruption,
    /// Until Bob's channel was usable again.
    reconnected: Duration,
    /// Until a payment succeeded after it.
    paying: Duration,
}

/// One front process, on a fixed peer port (a restarted front takes it again, as behind
/// a balancer that lists it).
struct FrontProcess {
    name: &'static str,
    listen: SocketAddr,
    /// Its API's port, fixed too: the balancer checks `/v1/ready` there.
    api_port: u16,
    process: NodeProcess,
    api: String,
}

struct Fronts {
    binary: NodeBinary,
    certs: std::path::PathBuf,
    backends: String,
    all: Vec<FrontProcess>,
}

impl Fronts {
    async fn start(
        &mut self,
        name: &'static str,
        listen: SocketAddr,
        api_port: u16,
    ) -> FrontProcess {
        let file = |suffix: &str| {
            self.certs
                .join(format!("{name}.{suffix}"))
                .display()
                .to_string()
        };
        let (certificate, key) = (file("crt"), file("key"));
        let ca = self.certs.join("ca.crt").display().to_string();
        let listen_text = listen.to_string();
        let api_listen = format!("127.0.0.1:{api_port}");
        let mut process = spawn(
            &self.binary,
            name,
            &[
                "front",
                "--name",
                name,
                "--listen",
                &listen_text,
                "--backends",
                &self.backends,
                "--certificate",
                &certificate,
                "--key",
                &key,
                "--ca",
                &ca,
                "--api-listen",
                &api_listen,
            ],
            &[],
            LogFile::Temporary,
        );
        let line = process.wait_line("front started").await;
        let api = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("api="))
            .expect("the front's API address")
            .to_owned();
        FrontProcess {
            name,
            listen,
            api_port,
            process,
            api,
        }
    }

    /// The index of the front that holds a session for Bob.
    async fn holding_bob(&self) -> usize {
        wait_for("a front holding Bob's session", STREAM_TIMEOUT, || async {
            for (index, front) in self.all.iter().enumerate() {
                if front_sessions(&front.api).await == Some(1) {
                    return Some(index);
                }
            }
            None
        })
        .await
    }
}

/// `GET /v1/state` of a front.
async fn front_state(api: &str) -> Option<serde_json::Value> {
    let (status, body) = phalanx_testkit::http::get(api, "/v1/state").await.ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// `GET /v1/state`'s `sessions` of a front.
async fn front_sessions(api: &str) -> Option<u64> {
    front_state(api).await?["sessions"].as_u64()
}

/// The value of `series` (its name and labels, as printed) in a metrics text; 0 if the
/// series has no line yet (a counter never incremented).
pub fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .unwrap_or(0)
}

/// `phalanx_front_gossip_total{outcome}` of a backend; `None` if it cannot be read.
async fn gossip_from_fronts(api: &phalanx_api::ApiClient, outcome: &str) -> Option<u64> {
    let text = api.metrics().await.ok()?;
    Some(metric_value(
        &text,
        &format!("phalanx_front_gossip_total{{outcome=\"{outcome}\"}}"),
    ))
}

/// Writes the link's CA and certificates (one shared by the backends, named `backend`,
/// and one per front) into `dir`.
pub fn write_certs(dir: &Path, fronts: &[&str]) {
    std::fs::create_dir_all(dir).expect("the certificates' directory");
    let ca = LinkCa::generate("alice").expect("a link CA");
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).expect("write ca.crt");
    let issued = [(Role::Backend, "backend")]
        .into_iter()
        .chain(fronts.iter().map(|name| (Role::Front, *name)));
    for (role, name) in issued {
        let cert = ca.issue(role, name).expect("a link certificate");
        std::fs::write(dir.join(format!("{name}.crt")), &cert.cert_pem).expect("write a crt");
        std::fs::write(dir.join(format!("{name}.key")), cert.key_pem.as_bytes())
            .expect("write a key");
    }
}

/// The `[link]` table of a backend using the certificates [`write_certs`] wrote in
/// `certs`.
pub fn link_section(certs: &Path) -> String {
    format!(
        "[link]\ncertificate = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        certs.join("backend.crt").display(),
        certs.join("backend.key").display(),
        certs.join("ca.crt").display(),
    )
}

/// The node's secret key and the seed it comes from, as the byte strings to look for.
async fn secrets_of(alice_dir: &Path) -> (Vec<Vec<u8>>, PublicKey) {
    let seed = FileSeedProvider::new(alice_dir.join("seed"), false)
        .seed()
        .await
        .expect("alice's seed file");
    let keys = KeysManager::new(&seed.ldk_seed(), 0, 0, true);
    let node_secret = keys.get_node_secret_key();
    let node_id = keys.get_node_id(Recipient::Node).expect("the node id");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let needles = vec![
        node_secret.secret_bytes().to_vec(),
        hex(&node_secret.secret_bytes()).into_bytes(),
        seed.as_bytes().to_vec(),
        seed.ldk_seed().to_vec(),
    ];
    (needles, node_id)
}

/// How long an offer's payment may take: the invoice request and the invoice are onion
/// messages, which LDK sends again on its timer if the first are lost.
const OFFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Alice pays an offer of Bob's and Bob one of Alice's, each once (no retry: a payment
/// after a recovery must go through), and records both beside the stream, at the amount
/// the payee received: on a direct channel that is what moved (the payer, introduction
/// node of the payee's blinded path, takes no fee from itself, so the payee gets the
/// path's fee budget on top).
async fn pay_offers_both_ways(
    stream: &Stream,
    alice: &phalanx_api::ApiClient,
    bob: &phalanx_node::Node,
    round: usize,
) {
    let began = Instant::now();
    let amount_msat = 7_000_000 + round as u64 * 1_000;
    let offer = bob
        .create_offer(Some(amount_msat), &format!("round {round}"))
        .expect("bob makes an offer");
    // Without waiting, and then followed by its id: until the invoice comes back, the
    // payment has no hash to be found by.
    let under_way = alice
        .pay_offer(&phalanx_api::PayOfferRequest {
            offer: offer.to_string(),
            amount_msat: None,
            wait: false,
            timeout_secs: None,
        })
        .await
        .expect("alice takes the payment of bob's offer");
    let paid = loop {
        let paid = alice
            .get_payment_by_id(&under_way.payment_id)
            .await
            .expect("alice knows her payment by its id");
        if paid.status != phalanx_api::PaymentStatus::Pending || began.elapsed() > OFFER_TIMEOUT {
            break paid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        paid.status,
        phalanx_api::PaymentStatus::Succeeded,
        "round {round}: alice paying bob's offer: {paid:?}"
    );
    assert_eq!(paid.payment_id, under_way.payment_id);
    let hash = crate::stream::hex32(&paid.payment_hash)
        .map(lightning::types::payment::PaymentHash)
        .expect("a payment hash");
    let received = bob
        .wait_inbound(hash, OFFER_TIMEOUT)
        .await
        .expect("bob received alice's payment");
    stream.record_beside(Attempt {
        slot: usize::MAX - 2 * round,
        way: Way::AliceToBob,
        payment_hash: paid.payment_hash.clone(),
        amount_msat: received.amount_msat.expect("an amount received"),
        outcome: Outcome::Succeeded,
        began,
        took: began.elapsed(),
    });

    let began = Instant::now();
    let offer = alice
        .create_offer(&phalanx_api::CreateOfferRequest {
            amount_msat: Some(amount_msat),
            description: format!("round {round}"),
        })
        .await
        .expect("alice makes an offer");
    let id = bob
        .pay_offer(&offer.offer, None)
        .await
        .expect("bob pays alice's offer");
    let sent = bob
        .wait_payment(id, OFFER_TIMEOUT)
        .await
        .expect("bob's payment is known");
    assert_eq!(
        sent.status,
        phalanx_node::payments::PaymentStatus::Succeeded,
        "round {round}: bob paying alice's offer: {sent:?}"
    );
    let received = alice
        .get_payment(&sent.payment_hash)
        .await
        .expect("alice received bob's payment");
    // An inbound payment's id is its hash.
    assert_eq!(
        alice.get_payment_by_id(&sent.payment_hash).await.ok(),
        Some(received.clone())
    );
    stream.record_beside(Attempt {
        slot: usize::MAX - 2 * round - 1,
        way: Way::BobToAlice,
        payment_hash: sent.payment_hash.clone(),
        amount_msat: received.amount_msat.expect("an amount received"),
        outcome: Outcome::Succeeded,
        began,
        took: began.elapsed(),
    });
}

/// Runs `rounds` rounds, alternating `disruptions`, during one payment stream.
pub async fn fronts_under_disruption(
    binary: NodeBinary,
    disruptions: &[FrontDisruption],
    rounds: usize,
) {
    let began = Instant::now();
    let mut own_server = None;
    let world = World::set_up("fronts", |dir| {
        let (server, url) = OwnServer::for_scenario(Backend::Postgres, Disruption::Kill, dir);
        own_server = Some(server);
        url
    })
    .await;
    let server = own_server.expect("the store was made");
    let certs = world.dir.join("link");
    write_certs(&certs, &["front-1", "front-2"]);

    let link_ports = [free_port(), free_port()];
    let alice_dir = world.dir.join("alice");
    let config = ConfigFile::new(&alice_dir, &world.store_url, "alice", world.chain.config())
        .extra(link_section(&certs))
        .write(&binary);
    let link = |port: u16| vec!["--link-listen".to_owned(), format!("127.0.0.1:{port}")];
    let mut cluster = Cluster::start_with(
        binary.clone(),
        config,
        world.store_url.clone(),
        false,
        vec![("a", link(link_ports[0])), ("b", link(link_ports[1]))],
    )
    .await;
    let mut fronts = Fronts {
        binary: binary.clone(),
        certs,
        backends: format!("127.0.0.1:{},127.0.0.1:{}", link_ports[0], link_ports[1]),
        all: Vec::new(),
    };
    for name in ["front-1", "front-2"] {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let front = fronts.start(name, listen, free_port()).await;
        fronts.all.push(front);
    }
    // The balancer sends peers only to fronts attached to a backend (`/v1/ready`).
    let servers: Vec<Server> = fronts
        .all
        .iter()
        .map(|front| Server {
            address: front.listen,
            ready_port: Some(front.api_port),
        })
        .collect();
    let haproxy = Haproxy::start_servers(&servers).expect("haproxy starts");
    let logs = FailureLogs::new()
        .with("the store server's log", || server.log_tail())
        .with("haproxy's log", || haproxy.log_tail());

    // The flood's channels are funded before Alice's, so its blocks are long confirmed.
    let flood_graph = disruptions
        .contains(&FrontDisruption::GossipFlood)
        .then(|| {
            Arc::new(
                SyntheticGraph::build(
                    Shape::new(FLOOD_NODES, FLOOD_CHANNELS),
                    &mut world.chain.chain(),
                )
                .expect("the flood's graph"),
            )
        });
    let watched = Watched::start(&cluster, &world, &alice_dir).await;
    let alice = watched.alice.clone();
    let (secrets, alice_id) = secrets_of(&alice_dir).await;

    // Bob knows Alice by the balancer's address only; Alice opens the channel over the
    // connection he made.
    world
        .bob
        .connect_peer(alice_id, haproxy.address())
        .await
        .expect("bob reaches alice through the balancer and a front");
    world.fund_alice(&alice).await;
    let channel = Channel::open_to(&world, &alice, None).await;

    let (stream, mut workers) = watched.stream(&world, rounds);
    let stream_began = Instant::now();
    let mut recoveries = Vec::with_capacity(rounds);
    let mut floods = Vec::new();
    // The flood's peer, kept: it only gossips, so the fronts keep it across failovers.
    let mut flooder: Option<ReplayPeer> = None;
    // The front the flood went to, and its process; what it handed the backend.
    let mut flooded = None;
    let mut handed = 0u64;
    let mut target = 0;
    for round in 0..rounds {
        target += PAYMENTS_PER_ROUND;
        until_disruption(&stream, target, &mut workers, &mut cluster, &alice).await;
        let disruption = disruptions[round % disruptions.len()];
        let before = stream.succeeded();
        let since = Instant::now();
        let flooder_before = flooder
            .as_ref()
            .filter(|peer| peer.is_connected(&alice_id))
            .map(ReplayPeer::disconnections);
        match disruption {
            FrontDisruption::GossipFlood => {
                let graph = flood_graph.clone().expect("built above");
                let peer = ReplayPeer::new(Arc::clone(&graph), [0x5e; 32]);
                assert!(
                    peer.connect(alice_id, haproxy.address()).await,
                    "the flooding peer reaches a front"
                );
                let channels = graph.good_channels().len() as u64;
                // The front the flood went to, once its graph holds every channel or stops
                // growing after the peer sent everything (then the assertion below says
                // what is missing).
                let (mut seen, mut changed) = ((None, 0), Instant::now());
                let (front, taken) = loop {
                    assert!(
                        since.elapsed() < FLOOD_TIMEOUT,
                        "no front took the flood within {FLOOD_TIMEOUT:?}: {seen:?}"
                    );
                    let mut largest = (None, 0);
                    for front in &fronts.all {
                        let state = front_state(&front.api).await.unwrap_or_default();
                        let taken = state["graph_channels"].as_u64().unwrap_or(0);
                        if taken > largest.1 {
                            largest = (Some(front.name), taken);
                        }
                    }
                    if let (Some(name), taken) = largest
                        && (taken >= channels
                            || (largest == seen
                                && peer.finished()
                                && changed.elapsed() > Duration::from_secs(5)))
                    {
                        break (name, taken);
                    }
                    if largest != seen {
                        (seen, changed) = (largest, Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                assert_eq!(
                    taken, channels,
                    "{front} took {taken} of the flood's {channels} channels"
                );
                let ingested = since.elapsed();
                let flooded_front = fronts
                    .all
                    .iter()
                    .find(|f| f.name == front)
                    .expect("the flooded front runs");
                flooded = Some((flooded_front.name, flooded_front.process.child.id()));
                // The backend's router got all the front took, once: nothing it was handed
                // was refused.
                let api = cluster.active_instance().api.clone();
                let front_api = flooded_front.api.clone();
                handed = wait_for(
                    "the backend's router to hold what the front took",
                    FLOOD_TIMEOUT,
                    || async {
                        let handed =
                            front_state(&front_api).await?["gossip_to_backend"].as_u64()?;
                        let new = gossip_from_fronts(&api, "new").await?;
                        (handed > 0 && new >= handed).then_some(handed)
                    },
                )
                .await;
                assert_eq!(gossip_from_fronts(&api, "ignored").await, Some(0));
                let (median_before, payments_before) = stream.median_success(stream_began, since);
                let (median_during, payments_during) =
                    stream.median_success(since, since + ingested);
                floods.push(Flood {
                    messages: graph.messages(),
                    front,
                    ingested,
                    median_before,
                    payments_before,
                    median_during,
                    payments_during,
                });
                flooder = Some(peer);
            }
            FrontDisruption::KillFront => {
                let index = fronts.holding_bob().await;
                let mut killed = fronts.all.remove(index);
                killed.process.kill().await;
                // As a supervisor would: the front comes back on its port.
                let again = fronts
                    .start(killed.name, killed.listen, killed.api_port)
                    .await;
                fronts.all.push(again);
            }
            FrontDisruption::KillActiveBackend => {
                cluster.kill_active(round).await;
                cluster.restart_stopped(round).await;
            }
        }
        // Bob notices the loss (the connection reset, or the front disconnecting its
        // peers when its backend went), then is back: a new session through a front,
        // the channel reestablished with the active instance.
        let bob = &world.bob;
        // Bounded, and not required: a reconnection quicker than the 50 ms polls would
        // leave no loss to see.
        if disruption != FrontDisruption::GossipFlood {
            let _ = phalanx_devnet::harness::wait_for(
                "bob to lose alice",
                Duration::from_secs(2),
                || async { (!usable_with(bob, alice_id)).then_some(()) },
            )
            .await;
        }
        wait_for("bob to reach alice again", STREAM_TIMEOUT, || async {
            usable_with(bob, alice_id).then_some(())
        })
        .await;
        let reconnected = since.elapsed();
        wait_for("payments to succeed again", STREAM_TIMEOUT, || async {
            (stream.succeeded() > before).then_some(())
        })
        .await;
        recoveries.push(Recovery {
            disruption,
            reconnected,
            paying: since.elapsed(),
        });
        // Onion messages reach whichever backend is active, through the fronts: each pays
        // the other's offer.
        pay_offers_both_ways(&stream, &alice, &world.bob, round).await;
        // The instance that took over gets the flooded front's whole graph when the
        // front attaches to it (it has only what it last persisted).
        // (Unless that front was killed since: a restarted front's graph is empty.)
        if disruption == FrontDisruption::KillActiveBackend
            && flood_graph.is_some()
            && fronts
                .all
                .iter()
                .any(|front| Some((front.name, front.process.child.id())) == flooded)
        {
            let api = cluster.active_instance().api.clone();
            let messages = handed;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let new = gossip_from_fronts(&api, "new").await.unwrap_or(0);
                let ignored = gossip_from_fronts(&api, "ignored").await.unwrap_or(0);
                if new + ignored >= messages {
                    break;
                }
                if Instant::now() > deadline {
                    let mut states = Vec::new();
                    for front in &fronts.all {
                        states.push(front_state(&front.api).await);
                    }
                    panic!(
                        "round {round}: the new instance got {new} new and {ignored} known \
                         messages of the {messages} the fronts hold: {states:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A gossip-only peer outlives the active backend's death: its front keeps it
        // and introduces it to the next backend.
        if disruption == FrontDisruption::KillActiveBackend
            && let (Some(peer), Some(disconnections)) = (&flooder, flooder_before)
        {
            assert!(
                peer.is_connected(&alice_id) && peer.disconnections() == disconnections,
                "round {round}: the gossip-only peer was disconnected by a backend's death"
            );
        }
    }

    let (attempts, _) = watched
        .finish(&stream, workers, &world, &channel, &cluster)
        .await;

    // No front holds the node's secret or seed: not in memory, log or environment. The
    // same search finds the secret in the active backend (it can find what it seeks).
    let needles: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    let backend_pid = cluster.active_instance().process.child.id();
    let in_backend = memory_contains(backend_pid, &needles).expect("read the backend's memory");
    assert!(
        in_backend[0],
        "the search finds the node secret in the backend"
    );
    for front in &fronts.all {
        let pid = front.process.child.id();
        let found = memory_contains(pid, &needles).expect("read a front's memory");
        assert_eq!(
            found,
            vec![false; needles.len()],
            "{} holds a secret",
            front.name
        );
        let log = front.process.stderr();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for needle in &needles {
            assert!(
                !log.as_bytes().windows(needle.len()).any(|w| w == *needle)
                    && !environ.windows(needle.len()).any(|w| w == *needle),
                "{}'s log or environment holds a secret",
                front.name
            );
        }
    }

    println!(
        "fronts: {rounds} rounds, {} payments in {} tries; recoveries: {recoveries:?}; \
         floods: {floods:?}; {:?} in all",
        stream.payments(),
        attempts.len(),
        began.elapsed()
    );
    for front in &mut fronts.all {
        let status = front.process.terminate().await;
        assert_eq!(status.code(), Some(0), "{}", front.process.stderr());
    }
    cluster.terminate_all().await;
    drop(logs);
    drop(haproxy);
    drop(server);
    world.bob.shutdown().await;
}
