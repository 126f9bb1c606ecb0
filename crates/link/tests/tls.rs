//! Mutual TLS on the link: ends of one cluster's CA connect; any other certificate, or a
//! front posing as a backend, is refused.

use futures::{SinkExt, StreamExt};
use phalanx_link::pki::LinkCa;
use phalanx_link::tls::{LinkIdentity, expected_name};
use phalanx_link::{Frame, LinkCodec, LinkError, Role};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::Framed;

fn identity(ca: &LinkCa, role: Role, name: &str) -> LinkIdentity {
    ca.identity(role, name).unwrap()
}

/// A backend listening with `server`, a front dialling it with `client` for `role`'s
/// name; returns what each side's handshake gave, and a ping answered if both passed.
async fn connect(
    server: &LinkIdentity,
    client: &LinkIdentity,
    dialled: Role,
) -> (Result<(), String>, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server_config().unwrap());
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut link = Framed::new(tls, LinkCodec::default());
        match link.next().await {
            Some(Ok(Frame::LinkPing { nonce })) => {
                link.send(Frame::LinkPong { nonce }).await.unwrap();
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    });
    let connector = TlsConnector::from(client.client_config().unwrap());
    let tcp = TcpStream::connect(address).await.unwrap();
    let dialled = async {
        let tls = connector
            .connect(expected_name(dialled), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut link = Framed::new(tls, LinkCodec::default());
        link.send(Frame::LinkPing { nonce: 9 })
            .await
            .map_err(|e| e.to_string())?;
        match link.next().await {
            Some(Ok(Frame::LinkPong { nonce: 9 })) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
    .await;
    let served = serving.await.unwrap();
    (served, dialled)
}

#[tokio::test]
async fn ends_of_one_cluster_connect_and_exchange_frames() {
    let ca = LinkCa::generate("test").unwrap();
    let (served, dialled) = connect(
        &identity(&ca, Role::Backend, "backend-1"),
        &identity(&ca, Role::Front, "front-1"),
        Role::Backend,
    )
    .await;
    served.unwrap();
    dialled.unwrap();
}

#[tokio::test]
async fn a_front_of_another_ca_is_refused_by_the_backend() {
    let ours = LinkCa::generate("ours").unwrap();
    let theirs = LinkCa::generate("theirs").unwrap();
    // The stranger trusts our CA (it has our certificate), but its own is of another.
    let stranger = {
        let cert = theirs.issue(Role::Front, "front-x").unwrap();
        LinkIdentity::from_pem(&cert.cert_pem, &cert.key_pem, &ours.cert_pem()).unwrap()
    };
    let (served, dialled) = connect(
        &identity(&ours, Role::Backend, "backend-1"),
        &stranger,
        Role::Backend,
    )
    .await;
    let served = served.unwrap_err();
    assert!(served.contains("certificate"), "{served}");
    assert!(dialled.is_err());
}

#[tokio::test]
async fn a_backend_of_another_ca_is_refused_by_the_front() {
    let ours = LinkCa::generate("ours").unwrap();
    let theirs = LinkCa::generate("theirs").unwrap();
    let impostor = {
        let cert = theirs.issue(Role::Backend, "backend-x").unwrap();
        LinkIdentity::from_pem(&cert.cert_pem, &cert.key_pem, &ours.cert_pem()).unwrap()
    };
    let (served, dialled) = connect(
        &impostor,
        &identity(&ours, Role::Front, "front-1"),
        Role::Backend,
    )
    .await;
    let dialled = dialled.unwrap_err();
    assert!(dialled.contains("certificate"), "{dialled}");
    assert!(served.is_err());
}

#[tokio::test]
async fn a_front_certificate_cannot_pose_as_a_backend() {
    let ca = LinkCa::generate("test").unwrap();
    let (served, dialled) = connect(
        &identity(&ca, Role::Front, "front-2"),
        &identity(&ca, Role::Front, "front-1"),
        Role::Backend,
    )
    .await;
    let dialled = dialled.unwrap_err();
    assert!(dialled.contains("not valid for name"), "{dialled}");
    assert!(served.is_err());
}

#[test]
fn bad_pem_is_a_clear_error_that_quotes_no_key() {
    let ca = LinkCa::generate("test").unwrap();
    let cert = ca.issue(Role::Front, "front-1").unwrap();
    let err =
        LinkIdentity::from_pem("not a certificate", &cert.key_pem, &ca.cert_pem()).unwrap_err();
    assert!(matches!(err, LinkError::Config(_)), "{err}");
    assert!(err.to_string().contains("no certificate"), "{err}");

    // A key cut in half: the error says so without quoting any of it.
    let half = &cert.key_pem[..cert.key_pem.len() / 2];
    let err = LinkIdentity::from_pem(&cert.cert_pem, half, &ca.cert_pem()).unwrap_err();
    assert!(err.to_string().contains("no valid private key"), "{err}");
    let body: String = cert
        .key_pem
        .lines()
        .nth(1)
        .unwrap()
        .chars()
        .take(16)
        .collect();
    assert!(!err.to_string().contains(&body), "{err}");

    let err = LinkIdentity::from_pem(&cert.cert_pem, &cert.key_pem, "").unwrap_err();
    assert!(err.to_string().contains("CA"), "{err}");
    // The debug form of an issued certificate hides its key.
    assert!(!format!("{cert:?}").contains(&body));
}
