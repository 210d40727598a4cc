//! TLS on the gRPC port (`tokenvend_server::tls`): handshakes, certificate reloads and client
//! certificates, against a real tonic server and a rustls client. Certificates are made
//! afresh by rcgen in a temporary directory for each test.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::{CommandFactory, Parser};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokenvend_server::tls::{ClientAuth, TlsAcceptor, TlsArgs, peer_identities};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Upper bound on anything a test waits for; a healthy run takes milliseconds.
const BOUND: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- certificates

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

impl Ca {
    fn issue(&self, cn: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn server(&self, cn: &str) -> Leaf {
        self.issue(
            cn,
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, cn: &str, sans: Vec<SanType>) -> Leaf {
        self.issue(cn, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

// ---------------------------------------------------------------- files and arguments

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl Files {
    fn new(server: &Leaf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = Self {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: dir.path().join("client-ca.pem"),
            _dir: dir,
        };
        files.install(server);
        files
    }

    fn install(&self, server: &Leaf) {
        write(&self.cert, &server.cert_pem);
        write(&self.key, &server.key_pem);
    }

    fn args(&self, client_ca: Option<&Ca>, client_auth: ClientAuth) -> TlsArgs {
        if let Some(ca) = client_ca {
            write(&self.client_ca, &ca.pem);
        }
        TlsArgs {
            cert_file: Some(self.cert.clone()),
            key_file: Some(self.key.clone()),
            client_ca_file: client_ca.map(|_| self.client_ca.clone()),
            client_auth,
            reload_interval: Duration::from_secs(10),
        }
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}

// ---------------------------------------------------------------- server

/// A health-only tonic server on the acceptor, recording `peer_identities` of every call.
struct Running {
    addr: SocketAddr,
    identities: Arc<Mutex<Vec<Vec<String>>>>,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Running {
    fn identities(&self) -> Vec<Vec<String>> {
        self.identities.lock().unwrap().clone()
    }
}

async fn serve(acceptor: &TlsAcceptor) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let identities = Arc::new(Mutex::new(Vec::new()));
    let seen = identities.clone();
    let record = tower::util::MapRequestLayer::new(move |req: http::Request<tonic::body::Body>| {
        seen.lock().unwrap().push(peer_identities(&req));
        req
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    let stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .layer(record)
        .add_service(health)
        .serve_with_incoming_shutdown(acceptor.incoming(listener), stop.clone().cancelled_owned());
    tokio::spawn(async move { server.await.expect("the server ended with an error") });
    Running {
        addr,
        identities,
        stop,
    }
}

// ---------------------------------------------------------------- clients

fn client_config(trust: &[&Ca], identity: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in trust {
        roots.add(ca.der.clone()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(localhost(), tcp)
        .await
}

/// A gRPC channel whose connections go through our rustls client (tonic's own TLS would
/// hide what the server presented).
async fn channel(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Channel, String> {
    let endpoint = Endpoint::from_static("http://localhost");
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        async move {
            let tls = tls_connect(addr, config).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    }));
    tokio::time::timeout(BOUND, connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e:?}"))
}

async fn health(channel: &Channel) -> Result<(), String> {
    let mut client = HealthClient::new(channel.clone());
    let call = client.check(HealthCheckRequest {
        service: String::new(),
    });
    let reply = tokio::time::timeout(BOUND, call)
        .await
        .map_err(|_| "call timed out".to_owned())?
        .map_err(|status| format!("call: {status:?}"))?;
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    Ok(())
}

/// A fresh connection and one health call.
async fn call(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<(), String> {
    health(&channel(addr, config).await?).await
}

/// The subject CN of the certificate the server presents to a client trusting `ca`.
async fn served_cn(addr: SocketAddr, ca: &Ca) -> std::io::Result<String> {
    let tls = tls_connect(addr, client_config(&[ca], None)).await?;
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN must pick h2"
    );
    let leaf = &session.peer_certificates().expect("a server certificate")[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    let cn = cert.subject().iter_common_name().next().expect("a CN");
    Ok(cn.as_str().unwrap().to_owned())
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// The server spoke HTTP/2 (its SETTINGS frame) over the session.
    Accepted,
    Alert(AlertDescription),
    Other(String),
}

/// How the server judged a client's certificate. In TLS 1.3 the client completes its side of
/// the handshake before the server has checked the client's certificate, so the verdict (an
/// alert, or the server's first HTTP/2 frame) arrives with the first read.
async fn verdict(addr: SocketAddr, config: Arc<ClientConfig>) -> Verdict {
    let mut tls = match tls_connect(addr, config).await {
        Ok(tls) => tls,
        Err(e) => return classify(e),
    };
    let mut buf = [0u8; 16];
    match tokio::time::timeout(BOUND, tls.read(&mut buf))
        .await
        .expect("the server neither answered nor refused")
    {
        Ok(0) => Verdict::Other("closed without an alert".into()),
        Ok(_) => Verdict::Accepted,
        Err(e) => classify(e),
    }
}

fn classify(e: std::io::Error) -> Verdict {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => Verdict::Alert(*alert),
        _ => Verdict::Other(e.to_string()),
    }
}

fn billing_client(ca: &Ca) -> Leaf {
    ca.client(
        "svc-billing",
        vec![
            SanType::DnsName("svc-billing.payments.svc".try_into().unwrap()),
            SanType::URI(
                "spiffe://cluster/ns/payments/sa/billing"
                    .try_into()
                    .unwrap(),
            ),
            SanType::Rfc822Name("billing@payments.example".try_into().unwrap()),
        ],
    )
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn tls_serves_grpc_to_a_client_trusting_the_ca_and_refuses_plaintext() {
    let ca = new_ca("server CA");
    let files = Files::new(&ca.server("server-one"));
    let acceptor = TlsAcceptor::load(&files.args(None, ClientAuth::Optional)).unwrap();
    let server = serve(&acceptor).await;

    call(server.addr, client_config(&[&ca], None))
        .await
        .unwrap();
    assert_eq!(served_cn(server.addr, &ca).await.unwrap(), "server-one");
    // Without a client CA nobody is asked for a certificate: no identities.
    assert_eq!(server.identities(), vec![Vec::<String>::new()]);

    let plaintext = async {
        let channel = Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|e| format!("{e:?}"))
    };
    let plaintext = tokio::time::timeout(BOUND, plaintext)
        .await
        .expect("a plaintext client must be refused, not left hanging");
    assert!(
        plaintext.is_err(),
        "plaintext call succeeded: {plaintext:?}"
    );

    let stranger = new_ca("some other CA");
    assert!(
        call(server.addr, client_config(&[&stranger], None))
            .await
            .is_err()
    );

    // Failed handshakes do not end the incoming stream.
    call(server.addr, client_config(&[&ca], None))
        .await
        .unwrap();
    assert_eq!(server.identities().len(), 2);
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections_only() {
    let old_ca = new_ca("old CA");
    let new_ca = new_ca("new CA");
    let files = Files::new(&old_ca.server("server-old"));
    let acceptor = TlsAcceptor::load(&files.args(None, ClientAuth::Optional)).unwrap();
    let server = serve(&acceptor).await;

    let established = channel(server.addr, client_config(&[&old_ca], None))
        .await
        .unwrap();
    health(&established).await.unwrap();
    assert!(!acceptor.reload_now().unwrap(), "nothing changed yet");

    files.install(&new_ca.server("server-new"));
    assert!(acceptor.reload_now().unwrap());
    assert!(!acceptor.reload_now().unwrap(), "already loaded");

    assert_eq!(served_cn(server.addr, &new_ca).await.unwrap(), "server-new");
    call(server.addr, client_config(&[&new_ca], None))
        .await
        .unwrap();
    assert!(
        call(server.addr, client_config(&[&old_ca], None))
            .await
            .is_err(),
        "new connections must get the new certificate"
    );
    // The connection made before the reload keeps its session. (Were it dropped, the
    // channel would reconnect trusting only the old CA, and fail.)
    health(&established).await.unwrap();
}

#[tokio::test]
async fn an_unusable_replacement_keeps_the_previous_certificate_serving() {
    let ca = new_ca("server CA");
    let files = Files::new(&ca.server("server-good"));
    let acceptor = TlsAcceptor::load(&files.args(None, ClientAuth::Optional)).unwrap();
    let server = serve(&acceptor).await;

    write(&files.cert, "not a certificate\n");
    let error = acceptor.reload_now().unwrap_err();
    assert_eq!(error.setting, "TOKENVEND_TLS_CERT_FILE", "{error}");
    assert!(error.to_string().contains("tls.crt"), "{error}");
    assert!(
        !acceptor.reload_now().unwrap(),
        "the same broken contents are reported once"
    );
    assert_eq!(served_cn(server.addr, &ca).await.unwrap(), "server-good");

    // A valid certificate with someone else's key.
    let other = ca.server("server-other");
    write(&files.cert, &other.cert_pem);
    write(&files.key, &ca.server("server-third").key_pem);
    let error = acceptor.reload_now().unwrap_err();
    assert_eq!(error.setting, "TOKENVEND_TLS_KEY_FILE", "{error}");
    assert!(error.problem.contains("does not belong"), "{error}");
    assert_eq!(served_cn(server.addr, &ca).await.unwrap(), "server-good");
    call(server.addr, client_config(&[&ca], None))
        .await
        .unwrap();

    // Fixed: the next check takes it.
    write(&files.key, &other.key_pem);
    assert!(acceptor.reload_now().unwrap());
    assert_eq!(served_cn(server.addr, &ca).await.unwrap(), "server-other");
}

#[tokio::test]
async fn the_reloader_picks_up_rewritten_files_and_stops_when_cancelled() {
    let old_ca = new_ca("old CA");
    let new_ca = new_ca("new CA");
    let files = Files::new(&old_ca.server("server-old"));
    let mut args = files.args(None, ClientAuth::Optional);
    args.reload_interval = Duration::from_millis(50);
    let acceptor = TlsAcceptor::load(&args).unwrap();
    let server = serve(&acceptor).await;
    let cancel = CancellationToken::new();
    let reloader = acceptor.spawn_reloader(cancel.clone());

    files.install(&new_ca.server("server-new"));
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Ok(cn) = served_cn(server.addr, &new_ca).await {
            assert_eq!(cn, "server-new");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reloader never served the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !acceptor.reload_now().unwrap(),
        "the reloader already took the new files"
    );

    cancel.cancel();
    tokio::time::timeout(BOUND, reloader)
        .await
        .expect("the reloader must end when cancelled")
        .unwrap();
}

#[tokio::test]
async fn optional_client_certificates_yield_identities_and_are_not_required() {
    let ca = new_ca("server CA");
    let client_ca = new_ca("client CA");
    let files = Files::new(&ca.server("server"));
    let acceptor = TlsAcceptor::load(&files.args(Some(&client_ca), ClientAuth::Optional)).unwrap();
    let server = serve(&acceptor).await;

    let billing = billing_client(&client_ca);
    call(server.addr, client_config(&[&ca], Some(&billing)))
        .await
        .unwrap();
    call(server.addr, client_config(&[&ca], None))
        .await
        .unwrap();
    assert_eq!(
        server.identities(),
        vec![
            vec![
                "svc-billing".to_owned(),
                "svc-billing.payments.svc".to_owned(),
                "spiffe://cluster/ns/payments/sa/billing".to_owned(),
                "billing@payments.example".to_owned(),
            ],
            vec![],
        ]
    );
}

#[tokio::test]
async fn optional_mode_still_refuses_a_certificate_from_another_ca() {
    let ca = new_ca("server CA");
    let client_ca = new_ca("client CA");
    let rogue_ca = new_ca("rogue CA");
    let files = Files::new(&ca.server("server"));
    let acceptor = TlsAcceptor::load(&files.args(Some(&client_ca), ClientAuth::Optional)).unwrap();
    let server = serve(&acceptor).await;

    let rogue = billing_client(&rogue_ca);
    assert_eq!(
        verdict(server.addr, client_config(&[&ca], Some(&rogue))).await,
        Verdict::Alert(AlertDescription::UnknownCA)
    );
    assert!(
        call(server.addr, client_config(&[&ca], Some(&rogue)))
            .await
            .is_err()
    );
    // The same probe with a good certificate is accepted: the alert above is the verdict.
    let good = billing_client(&client_ca);
    assert_eq!(
        verdict(server.addr, client_config(&[&ca], Some(&good))).await,
        Verdict::Accepted
    );
    assert!(server.identities().is_empty(), "no call got through");
}

#[tokio::test]
async fn required_client_certificates_refuse_a_client_without_one() {
    let ca = new_ca("server CA");
    let client_ca = new_ca("client CA");
    let files = Files::new(&ca.server("server"));
    let acceptor = TlsAcceptor::load(&files.args(Some(&client_ca), ClientAuth::Required)).unwrap();
    let server = serve(&acceptor).await;

    assert_eq!(
        verdict(server.addr, client_config(&[&ca], None)).await,
        Verdict::Alert(AlertDescription::CertificateRequired)
    );
    assert!(
        call(server.addr, client_config(&[&ca], None))
            .await
            .is_err()
    );

    let billing = billing_client(&client_ca);
    call(server.addr, client_config(&[&ca], Some(&billing)))
        .await
        .unwrap();
    assert_eq!(server.identities().len(), 1);
    assert_eq!(server.identities()[0][0], "svc-billing");
}

#[tokio::test]
async fn reload_replaces_the_client_ca() {
    let ca = new_ca("server CA");
    let first_ca = new_ca("first client CA");
    let second_ca = new_ca("second client CA");
    let files = Files::new(&ca.server("server"));
    let acceptor = TlsAcceptor::load(&files.args(Some(&first_ca), ClientAuth::Required)).unwrap();
    let server = serve(&acceptor).await;
    let first = client_config(&[&ca], Some(&billing_client(&first_ca)));
    let second = client_config(&[&ca], Some(&billing_client(&second_ca)));
    call(server.addr, first.clone()).await.unwrap();
    assert!(call(server.addr, second.clone()).await.is_err());

    write(&files.client_ca, &second_ca.pem);
    assert!(acceptor.reload_now().unwrap());
    call(server.addr, second).await.unwrap();
    assert_eq!(
        verdict(server.addr, first).await,
        Verdict::Alert(AlertDescription::UnknownCA)
    );
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_others() {
    let ca = new_ca("server CA");
    let files = Files::new(&ca.server("server"));
    // The default handshake timeout (10 s) is longer than BOUND: were handshakes run one
    // after another, the call below would time out behind the silent connection.
    let acceptor = TlsAcceptor::load(&files.args(None, ClientAuth::Optional)).unwrap();
    let server = serve(&acceptor).await;

    let _silent = TcpStream::connect(server.addr).await.unwrap();
    call(server.addr, client_config(&[&ca], None))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let ca = new_ca("server CA");
    let files = Files::new(&ca.server("server"));
    let acceptor = TlsAcceptor::load(&files.args(None, ClientAuth::Optional))
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(200));
    let server = serve(&acceptor).await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(BOUND, silent.read(&mut buf))
        .await
        .expect("the server must drop a connection that never starts a handshake");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the connection closed, got {read:?}"
    );
    call(server.addr, client_config(&[&ca], None))
        .await
        .unwrap();
}

#[tokio::test]
async fn load_names_the_setting_and_file_it_cannot_use() {
    let ca = new_ca("server CA");
    let files = Files::new(&ca.server("server"));

    let mut args = files.args(None, ClientAuth::Optional);
    args.key_file = Some(files.cert.with_file_name("missing.key"));
    let error = format!("{:#}", TlsAcceptor::load(&args).unwrap_err());
    assert!(error.contains("TOKENVEND_TLS_KEY_FILE"), "{error}");
    assert!(error.contains("missing.key"), "{error}");

    write(
        &files.client_ca,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    );
    let mut args = files.args(None, ClientAuth::Optional);
    args.client_ca_file = Some(files.client_ca.clone());
    let error = format!("{:#}", TlsAcceptor::load(&args).unwrap_err());
    assert!(error.contains("TOKENVEND_TLS_CLIENT_CA_FILE"), "{error}");
    assert!(error.contains("client-ca.pem"), "{error}");
}

#[test]
fn validate_names_the_setting_at_fault() {
    let base = TlsArgs {
        cert_file: Some("tls.crt".into()),
        key_file: Some("tls.key".into()),
        client_ca_file: None,
        client_auth: ClientAuth::Optional,
        reload_interval: Duration::from_secs(10),
    };
    base.validate().unwrap();
    assert!(base.enabled());

    let no_key = TlsArgs {
        key_file: None,
        ..base.clone()
    };
    assert!(!no_key.enabled());
    let error = no_key.validate().unwrap_err().to_string();
    assert!(error.contains("TOKENVEND_TLS_KEY_FILE"), "{error}");

    let no_cert = TlsArgs {
        cert_file: None,
        ..base.clone()
    };
    let error = no_cert.validate().unwrap_err().to_string();
    assert!(error.contains("TOKENVEND_TLS_CERT_FILE"), "{error}");

    let required_without_ca = TlsArgs {
        client_auth: ClientAuth::Required,
        ..base.clone()
    };
    let error = required_without_ca.validate().unwrap_err().to_string();
    assert!(error.contains("TOKENVEND_TLS_CLIENT_CA_FILE"), "{error}");
    assert!(error.contains("TOKENVEND_TLS_CLIENT_AUTH"), "{error}");

    let ca_without_tls = TlsArgs {
        cert_file: None,
        key_file: None,
        client_ca_file: Some("ca.pem".into()),
        ..base.clone()
    };
    let error = ca_without_tls.validate().unwrap_err().to_string();
    assert!(error.contains("TOKENVEND_TLS_CLIENT_CA_FILE"), "{error}");

    let off = TlsArgs {
        cert_file: None,
        key_file: None,
        ..base
    };
    off.validate().unwrap();
    assert!(!off.enabled());
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    tls: TlsArgs,
}

#[test]
fn flags_environment_variables_and_defaults() {
    let command = Cli::command();
    let env_of = |id: &str| {
        command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    };
    assert_eq!(
        env_of("cert_file").as_deref(),
        Some("TOKENVEND_TLS_CERT_FILE")
    );
    assert_eq!(
        env_of("key_file").as_deref(),
        Some("TOKENVEND_TLS_KEY_FILE")
    );
    assert_eq!(
        env_of("client_ca_file").as_deref(),
        Some("TOKENVEND_TLS_CLIENT_CA_FILE")
    );
    assert_eq!(
        env_of("client_auth").as_deref(),
        Some("TOKENVEND_TLS_CLIENT_AUTH")
    );
    assert_eq!(
        env_of("reload_interval").as_deref(),
        Some("TOKENVEND_TLS_RELOAD_INTERVAL")
    );

    let parsed = Cli::try_parse_from([
        "t",
        "--tls-cert-file",
        "a.crt",
        "--tls-key-file",
        "a.key",
        "--tls-client-auth",
        "required",
        "--tls-reload-interval",
        "250ms",
    ])
    .unwrap()
    .tls;
    assert_eq!(parsed.client_auth, ClientAuth::Required);
    assert_eq!(parsed.reload_interval, Duration::from_millis(250));
    assert_eq!(parsed.cert_file.as_deref(), Some(Path::new("a.crt")));
    assert!(Cli::try_parse_from(["t", "--tls-client-auth", "sometimes"]).is_err());
}

#[test]
fn defaults_when_nothing_is_set() {
    // Only meaningful where the variables are unset, as in CI.
    if std::env::vars().any(|(k, _)| k.starts_with("TOKENVEND_TLS_")) {
        return;
    }
    let defaults = Cli::try_parse_from(["t"]).unwrap().tls;
    assert!(!defaults.enabled());
    assert_eq!(defaults.client_auth, ClientAuth::Optional);
    assert_eq!(defaults.reload_interval, Duration::from_secs(10));
    defaults.validate().unwrap();
}

#[test]
fn debug_output_has_no_key_material() {
    let ca = new_ca("server CA");
    let client_ca = new_ca("client CA");
    let server = ca.server("server");
    let files = Files::new(&server);
    let args = files.args(Some(&client_ca), ClientAuth::Required);
    let acceptor = TlsAcceptor::load(&args).unwrap();

    let key_body: Vec<&str> = server
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!key_body.is_empty());
    for shown in [
        format!("{args:?}"),
        format!("{acceptor:?}"),
        format!("{acceptor:#?}"),
    ] {
        assert!(shown.contains("tls.key"), "names the file: {shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        for line in &key_body {
            assert!(!shown.contains(line), "key material in {shown}");
        }
    }
}
