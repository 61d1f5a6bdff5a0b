//! TLS client certificates over real TCP + TLS: the broker's listener asks
//! for a certificate signed by its client CA and takes the certificate's
//! common name as the username (Mosquitto's `require_certificate` and
//! `use_identity_as_username`); veil's link presents one. The CA and every
//! certificate are made here, with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use veil_broker::{Broker, BrokerConfig, BrokerHandle, GateCounters, TlsListenerConfig};
use veil_e2e::{PATIENCE, init_logging, mqtt, repo};
use veil_link::{Link, LinkEvent, MqttSettings};

/// A certificate authority kept in memory.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf certificate and its key (PEM), with `common_name` (none when
    /// `None`) and the given alternative names.
    fn leaf(
        &self,
        common_name: Option<&str>,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate for `common_name`, written as `<file>.crt` and
    /// `<file>.key` under `dir`.
    fn client(&self, dir: &Path, file: &str, common_name: Option<&str>) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth);
        let cert_path = dir.join(format!("{file}.crt"));
        let key_path = dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert).expect("write certificate");
        std::fs::write(&key_path, key).expect("write key");
        (cert_path, key_path)
    }
}

/// A broker whose TLS listener takes usernames from client certificates
/// signed by `ca`; the plain listener keeps the password file.
struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    broker: BrokerHandle,
}

impl Setup {
    async fn start() -> Setup {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("veil test client and server CA");
        let (cert, key) = ca.leaf(
            Some("broker"),
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, &ca.pem).expect("write CA");
        std::fs::write(dir.path().join("broker.crt"), cert).expect("write certificate");
        std::fs::write(dir.path().join("broker.key"), key).expect("write key");
        let local: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut tls = TlsListenerConfig::new(
            local,
            dir.path().join("broker.crt"),
            dir.path().join("broker.key"),
        );
        tls.client_ca = Some(ca_path);
        tls.require_certificate = true;
        tls.use_identity_as_username = true;
        let broker = Broker::start(BrokerConfig {
            listen: local,
            tls: Some(tls),
            password_file: Some(repo("config/passwords")),
            acl_file: Some(repo("config/acl")),
            ..BrokerConfig::default()
        })
        .await
        .expect("broker starts");
        Setup { dir, ca, broker }
    }

    /// Link settings for the TLS listener, presenting `cert` (if any),
    /// with `username` in the CONNECT and `client_id`.
    fn settings(
        &self,
        cert: Option<(PathBuf, PathBuf)>,
        username: Option<&str>,
        client_id: &str,
    ) -> MqttSettings {
        let addr = self.broker.tls_local_addr().expect("TLS listener");
        let (client_cert_file, client_key_file) = cert.unzip();
        MqttSettings {
            url: format!("mqtts://{addr}"),
            username: username.map(str::to_string),
            password: None,
            client_id: client_id.to_string(),
            ca_file: Some(self.dir.path().join("ca.crt")),
            client_cert_file,
            client_key_file,
            backoff_min_ms: 50,
            backoff_max_ms: 500,
            persistent_session: false,
            ..MqttSettings::default()
        }
    }

    fn counters(&self) -> GateCounters {
        self.broker.counters()
    }
}

/// How a link's first connection attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Connected,
    Refused,
}

async fn first_outcome(link: &mut Link) -> Outcome {
    loop {
        match tokio::time::timeout(PATIENCE, link.events.recv()).await {
            Ok(Some(LinkEvent::Connected { .. })) => return Outcome::Connected,
            Ok(Some(LinkEvent::Disconnected { .. })) => return Outcome::Refused,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("the link reported nothing"),
        }
    }
}

async fn connect(settings: &MqttSettings) -> (Link, Outcome) {
    let mut link = Link::start(settings).expect("link settings");
    let outcome = first_outcome(&mut link).await;
    (link, outcome)
}

async fn granted(link: &mut Link, filters: &[&str]) -> Vec<bool> {
    link.handle
        .subscribe(filters.iter().map(|f| f.to_string()).collect());
    loop {
        match tokio::time::timeout(PATIENCE, link.events.recv()).await {
            Ok(Some(LinkEvent::Subscribed { granted })) => return granted,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no SUBACK"),
        }
    }
}

#[tokio::test]
async fn a_certificate_authenticates_as_its_common_name_with_that_users_acl() {
    let setup = Setup::start().await;
    let cert = setup.ca.client(setup.dir.path(), "devA", Some("devA"));

    // No password anywhere: the certificate is the credential.
    let (mut dev, outcome) = connect(&setup.settings(Some(cert.clone()), Some("devA"), "")).await;
    assert_eq!(outcome, Outcome::Connected);
    // devA's ACL: its own result topic, not devB's.
    assert_eq!(
        granted(
            &mut dev,
            &["veil/v1/dev/devA/result", "veil/v1/dev/devB/result"]
        )
        .await,
        vec![true, false]
    );
    let mut server_b = Link::start(&mqtt(setup.broker.local_addr(), "server-b")).expect("link");
    assert_eq!(first_outcome(&mut server_b).await, Outcome::Connected);
    server_b.handle.publish(
        "veil/v1/dev/devA/result",
        b"over mutual TLS".to_vec(),
        false,
    );
    let delivered = loop {
        match tokio::time::timeout(PATIENCE, dev.events.recv()).await {
            Ok(Some(LinkEvent::Message(m))) => break m,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no delivery"),
        }
    };
    assert_eq!(delivered.topic, "veil/v1/dev/devA/result");
    assert_eq!(&delivered.payload[..], b"over mutual TLS");
    dev.close().await;

    // No username in the CONNECT: the certificate's name is used.
    let (mut anonymous, outcome) = connect(&setup.settings(Some(cert.clone()), None, "devA")).await;
    assert_eq!(outcome, Outcome::Connected);
    assert_eq!(
        granted(
            &mut anonymous,
            &["veil/v1/dev/devA/result", "veil/v1/dev/devB/result"]
        )
        .await,
        vec![true, false]
    );
    anonymous.close().await;

    // A CONNECT naming another user than the certificate is refused.
    let before = setup.counters();
    let (other, outcome) = connect(&setup.settings(Some(cert), Some("devB"), "devB")).await;
    assert_eq!(outcome, Outcome::Refused);
    other.abort();
    assert_eq!(
        setup.counters().certificate_refused,
        before.certificate_refused + 1
    );
    server_b.close().await;
    setup.broker.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let setup = Setup::start().await;
    let stranger = Ca::new("some other CA");
    let cert = stranger.client(setup.dir.path(), "stranger", Some("devA"));
    let (link, outcome) = connect(&setup.settings(Some(cert), Some("devA"), "devA")).await;
    assert_eq!(outcome, Outcome::Refused);
    link.abort();
    let counters = setup.counters();
    assert!(counters.tls_refused >= 1, "{counters}");
    assert_eq!(counters.certificate_refused, 0, "{counters}");
    setup.broker.shutdown().await;
}

#[tokio::test]
async fn no_certificate_is_refused_when_one_is_required() {
    let setup = Setup::start().await;
    let mut settings = setup.settings(None, Some("devA"), "devA");
    // A valid password does not stand in for the certificate.
    settings.password = Some("demo-devA".into());
    let (link, outcome) = connect(&settings).await;
    assert_eq!(outcome, Outcome::Refused);
    link.abort();
    let counters = setup.counters();
    assert!(counters.tls_refused >= 1, "{counters}");
    setup.broker.shutdown().await;
}

#[tokio::test]
async fn common_names_that_are_no_usernames_are_refused() {
    let setup = Setup::start().await;
    let names = [
        ("wildcard-plus", Some("dev+1")),
        ("wildcard-hash", Some("#")),
        ("slash", Some("devA/x")),
        ("empty", Some("")),
        ("none", None),
    ];
    for (file, cn) in names {
        let cert = setup.ca.client(setup.dir.path(), file, cn);
        let before = setup.counters().certificate_refused;
        let (link, outcome) = connect(&setup.settings(Some(cert), None, "")).await;
        assert_eq!(outcome, Outcome::Refused, "{cn:?}");
        link.abort();
        assert_eq!(setup.counters().certificate_refused, before + 1, "{cn:?}");
    }
    setup.broker.shutdown().await;
}

#[tokio::test]
async fn client_id_rules_apply_to_the_certificate_user() {
    let setup = Setup::start().await;
    let dev_a = setup.ca.client(setup.dir.path(), "devA", Some("devA"));
    // Its own name followed by '-' is the user's.
    let (own, outcome) = connect(&setup.settings(Some(dev_a.clone()), None, "devA-fetch")).await;
    assert_eq!(outcome, Outcome::Connected);
    own.close().await;
    // Another device's id, or a server's, is not.
    for id in ["devB", "server-a", "devAB"] {
        let before = setup.counters().client_id_refused;
        let (link, outcome) = connect(&setup.settings(Some(dev_a.clone()), None, id)).await;
        assert_eq!(outcome, Outcome::Refused, "{id}");
        link.abort();
        assert_eq!(setup.counters().client_id_refused, before + 1, "{id}");
    }
    // A certificate user missing from the password file still may not
    // take ids that belong to a user of it: "server" may not be server-a.
    let server = setup.ca.client(setup.dir.path(), "server", Some("server"));
    let before = setup.counters().client_id_refused;
    let (link, outcome) = connect(&setup.settings(Some(server.clone()), None, "server-a")).await;
    assert_eq!(outcome, Outcome::Refused);
    link.abort();
    assert_eq!(setup.counters().client_id_refused, before + 1);
    let (link, outcome) = connect(&setup.settings(Some(server), None, "server-7")).await;
    assert_eq!(outcome, Outcome::Connected);
    link.close().await;
    setup.broker.shutdown().await;
}
