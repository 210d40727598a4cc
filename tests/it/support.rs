//! The harness: start `tokenvend`, talk to it through reflection, plant and find secrets.

use std::{
    collections::HashSet,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use serde_json::Value;
use time::OffsetDateTime;
use tokenvend_testkit::process::Proc;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::MetadataValue,
    transport::Channel,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate, Times,
    matchers::{body_string_contains, method, path},
};

pub const ADMIN_KEY: &str = "e2e-admin-key-4c1f8e2b9d";

pub struct Server {
    pub proc: Proc,
    pub grpc: String,
    pub http: String,
    _tmp: Option<tempfile::TempDir>,
}

#[derive(Default)]
pub struct Opts {
    pub database_url: Option<String>,
    /// Re-use a data directory (restart tests); a fresh one otherwise.
    pub data_dir: Option<PathBuf>,
    pub env: Vec<(&'static str, String)>,
}

/// A master key ring for tests that need one (PostgreSQL, shared by replicas).
pub fn master_keys() -> String {
    "test:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned()
}

impl Server {
    pub async fn start(opts: Opts) -> Result<Server> {
        let (tmp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenvend"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TOKENVEND_GRPC_ADDR", "127.0.0.1:0")
            .env("TOKENVEND_HTTP_ADDR", "127.0.0.1:0")
            .env("TOKENVEND_DATA_DIR", &data_dir)
            .env("TOKENVEND_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .env("TOKENVEND_ALLOW_INSECURE_ENDPOINTS", "true")
            // Most verbose: the secret-leak checks grep everything the server can print.
            .env("TOKENVEND_LOG", "debug");
        if let Some(url) = &opts.database_url {
            cmd.env("TOKENVEND_DATABASE_URL", url)
                .env("TOKENVEND_MASTER_KEYS", master_keys());
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(cmd, "tokenvend")?;
        let line = proc
            .wait_for_output("tokenvend listening", Duration::from_secs(60))
            .await?;
        // Human format: `grpc=ADDR http=ADDR`; JSON format: fields of the object.
        let json: Option<Value> = serde_json::from_str(&line).ok();
        let field = |name: &str| -> Result<String> {
            let addr = match &json {
                Some(v) => v[name].as_str().map(str::to_owned),
                None => line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .map(str::to_owned),
            };
            addr.map(|a| format!("http://{a}"))
                .with_context(|| format!("no {name} address in {line:?}"))
        };
        Ok(Server {
            grpc: field("grpc")?,
            http: field("http")?,
            proc,
            _tmp: tmp,
        })
    }

    /// Starts with `env` on top of the harness's settings, for tests that need it running.
    pub async fn with_env(env: Vec<(&'static str, String)>) -> Server {
        Server::start(Opts {
            env,
            ..Default::default()
        })
        .await
        .expect("tokenvend starts")
    }

    /// A server started with `env`, its admin client, and tenant `acme` created.
    pub async fn with_acme(env: Vec<(&'static str, String)>) -> (Server, Client) {
        let server = Server::with_env(env).await;
        let c = server.client().await;
        c.call(
            "AdminService/CreateTenant",
            serde_json::json!({"tenant": "acme"}),
        )
        .await
        .expect("CreateTenant");
        (server, c)
    }

    /// `n` replicas sharing the PostgreSQL database at `url`, each started with `env`.
    pub async fn replicas(n: usize, url: &str, env: Vec<(&'static str, String)>) -> Vec<Server> {
        let mut servers = Vec::new();
        for _ in 0..n {
            let opts = Opts {
                database_url: Some(url.to_owned()),
                env: env.clone(),
                ..Default::default()
            };
            servers.push(Server::start(opts).await.expect("replica starts"));
        }
        servers
    }

    /// `n` replicas on a fresh PostgreSQL database, set up for end-user grants: a public URL,
    /// and no limit on reporting tokens dead.
    pub async fn grant_replicas(n: usize) -> Vec<Server> {
        let url = tokenvend_testkit::postgres::PgCluster::shared().fresh_database();
        Server::replicas(n, &url, vec![public_url(), no_invalidate_limit()]).await
    }

    /// Starts with `opts` expecting the start to fail; the error (it carries what the process
    /// printed) is returned for the test to check.
    pub async fn refused(opts: Opts) -> String {
        let err = Server::start(opts)
            .await
            .err()
            .expect("the start must fail");
        format!("{err:#}")
    }

    /// `kill -9`: a crash, which leaves its leases behind; returns once the process is gone.
    pub async fn kill(&mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("killed process exits");
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.grpc, Some(ADMIN_KEY))
            .await
            .expect("connect")
    }

    pub fn output(&self) -> String {
        self.proc.output()
    }
}

/// A gRPC client that knows the API only from server reflection, like grpcurl.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    pool: DescriptorPool,
    key: Option<String>,
}

#[derive(Clone, Copy, Default)]
struct RawCodec;
#[derive(Clone, Copy, Default)]
struct RawEnc;
#[derive(Clone, Copy, Default)]
struct RawDec;

impl Encoder for RawEnc {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

/// Per-call options.
#[derive(Default, Clone)]
pub struct CallOpts {
    pub timeout: Option<Duration>,
    pub no_key: bool,
    pub key: Option<String>,
    /// Extra request metadata (e.g. a W3C `traceparent`).
    pub metadata: Vec<(&'static str, String)>,
}

impl Client {
    pub async fn connect(addr: &str, key: Option<&str>) -> Result<Client> {
        let channel = Channel::from_shared(addr.to_owned())?.connect().await?;
        Client::connect_with(channel, key).await
    }

    /// A client over a channel the test built itself (e.g. TLS through its own connector);
    /// the descriptors are fetched over it, so a channel the server refuses fails here.
    pub async fn connect_with(channel: Channel, key: Option<&str>) -> Result<Client> {
        let pool = fetch_descriptors(channel.clone()).await?;
        Ok(Client {
            channel,
            pool,
            key: key.map(str::to_owned),
        })
    }

    pub fn services(&self) -> Vec<String> {
        self.pool
            .services()
            .map(|s| s.full_name().to_owned())
            .collect()
    }

    fn method(&self, name: &str) -> Result<MethodDescriptor> {
        let (svc, m) = name
            .rsplit_once('/')
            .context("method must be Service/Method")?;
        let svc = if svc.contains('.') {
            svc.to_owned()
        } else {
            format!("tokenvend.v1.{svc}")
        };
        self.pool
            .get_service_by_name(&svc)
            .with_context(|| format!("no service {svc} via reflection"))?
            .methods()
            .find(|x| x.name() == m)
            .with_context(|| format!("no method {m} on {svc}"))
    }

    /// GetToken for the client-credentials token of `tenant`'s connection `provider`.
    pub async fn get_token(&self, tenant: &str, provider: &str) -> Result<Value, Status> {
        self.call("TokenService/GetToken", get_token_req(tenant, provider))
            .await
    }

    /// GetToken for `subject`'s token from connection `p` (see [`user`]).
    pub async fn user_token(&self, subject: &str) -> Result<Value, Status> {
        self.call("TokenService/GetToken", user(subject)).await
    }

    /// PutConnection: creates or replaces the connection `req` describes.
    pub async fn put_connection(&self, req: Value) -> Result<Value, Status> {
        self.call("AdminService/PutConnection", req).await
    }

    /// Calls `Service/Method` with a JSON request (proto field names), returns JSON.
    pub async fn call(&self, method: &str, req: Value) -> Result<Value, Status> {
        self.call_opts(method, req, CallOpts::default()).await
    }

    pub async fn call_opts(
        &self,
        method: &str,
        req: Value,
        opts: CallOpts,
    ) -> Result<Value, Status> {
        let m = self
            .method(method)
            .map_err(|e| Status::internal(e.to_string()))?;
        let msg = DynamicMessage::deserialize(m.input(), req)
            .map_err(|e| Status::internal(format!("bad test request: {e}")))?;
        let mut request = tonic::Request::new(Bytes::from(msg.encode_to_vec()));
        let key = if opts.no_key {
            None
        } else {
            opts.key.clone().or_else(|| self.key.clone())
        };
        if let Some(k) = key {
            request.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {k}")).unwrap(),
            );
        }
        for (name, value) in &opts.metadata {
            request
                .metadata_mut()
                .insert(*name, MetadataValue::try_from(value.as_str()).unwrap());
        }
        if let Some(t) = opts.timeout {
            request.set_timeout(t);
        }
        let path =
            PathAndQuery::try_from(format!("/{}/{}", m.parent_service().full_name(), m.name()))
                .map_err(|e| Status::internal(e.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = grpc.unary(request, path, RawCodec).await?;
        let out = DynamicMessage::decode(m.output(), resp.into_inner())
            .map_err(|e| Status::internal(format!("undecodable response: {e}")))?;
        let opts = SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(false);
        Ok(out
            .serialize_with_options(serde_json::value::Serializer, &opts)
            .expect("serialize response"))
    }
}

/// Every file the server's services are defined in, with dependencies, via reflection v1.
async fn fetch_descriptors(channel: Channel) -> Result<DescriptorPool> {
    let mut client = ServerReflectionClient::new(channel);
    let req = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let resp = client
        .server_reflection_info(futures::stream::iter(vec![req(
            MessageRequest::ListServices(String::new()),
        )]))
        .await?
        .into_inner()
        .message()
        .await?
        .context("no reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        bail!("unexpected reflection answer");
    };
    // Like grpcurl: the file of each service, then every dependency by file name.
    let mut asks: Vec<MessageRequest> = list
        .service
        .into_iter()
        .map(|s| MessageRequest::FileContainingSymbol(s.name))
        .collect();
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    while !asks.is_empty() {
        let batch: Vec<_> = asks.drain(..).map(req).collect();
        let mut stream = client
            .server_reflection_info(futures::stream::iter(batch))
            .await?
            .into_inner();
        while let Some(r) = stream.message().await? {
            match r.message_response {
                Some(MessageResponse::FileDescriptorResponse(fd)) => {
                    for raw in fd.file_descriptor_proto {
                        let f = prost_types::FileDescriptorProto::decode(raw.as_slice())?;
                        if seen.insert(f.name().to_owned()) {
                            files.push(f);
                        }
                    }
                }
                Some(MessageResponse::ErrorResponse(e)) => {
                    bail!("reflection error: {}", e.error_message)
                }
                _ => {}
            }
        }
        for f in &files {
            for dep in &f.dependency {
                if !seen.contains(dep)
                    && !asks
                        .iter()
                        .any(|a| matches!(a, MessageRequest::FileByFilename(n) if n == dep))
                {
                    asks.push(MessageRequest::FileByFilename(dep.clone()));
                }
            }
        }
    }
    let mut pool = DescriptorPool::new();
    // Dependencies first: add until everything resolves.
    let mut pending = files;
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for f in pending {
            if pool.add_file_descriptor_proto(f.clone()).is_err() {
                rest.push(f);
            }
        }
        if rest.len() == before {
            return Err(anyhow!(
                "unresolvable descriptors: {:?}",
                rest.iter().map(|f| f.name()).collect::<Vec<_>>()
            ));
        }
        pending = rest;
    }
    Ok(pool)
}

/// The `ErrorInfo.reason` of a status, if any.
pub fn reason(s: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    s.get_details_error_info().map(|i| i.reason)
}

pub fn retry_info(s: &Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    s.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// Creates a tenant and a generic client-credentials connection to `token_url`.
pub async fn setup_connection(
    c: &Client,
    tenant: &str,
    provider: &str,
    token_url: &str,
    secret: &str,
    extra: Value,
) -> Value {
    let _ = c
        .call(
            "AdminService/CreateTenant",
            serde_json::json!({"tenant": tenant, "display_name": tenant}),
        )
        .await;
    let mut req = serde_json::json!({
        "tenant": tenant,
        "provider": provider,
        "token_url": token_url,
        "client_id": "client-1",
        "client_secret": secret,
    });
    if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    c.put_connection(req).await.expect("PutConnection")
}

pub fn get_token_req(tenant: &str, provider: &str) -> Value {
    serde_json::json!({"tenant": tenant, "provider": provider})
}

/// The form fields of a request a mock provider received.
pub fn form(r: &Request) -> std::collections::BTreeMap<String, String> {
    url::form_urlencoded::parse(&r.body).into_owned().collect()
}

/// Requests of one grant type the mock provider received, in order.
pub async fn requests_with_grant(mock: &MockServer, grant: &str) -> Vec<Request> {
    mock.received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| form(r).get("grant_type").map(String::as_str) == Some(grant))
        .collect()
}

/// The refresh tokens presented to the mock provider, in order.
pub async fn refresh_tokens_presented(mock: &MockServer) -> Vec<String> {
    requests_with_grant(mock, "refresh_token")
        .await
        .iter()
        .map(|r| form(r)["refresh_token"].clone())
        .collect()
}

/// A provider whose code exchange answers `at-0` / `rt-0` and whose n-th refresh answers
/// `refresh(n)`, at `/token`.
pub async fn grant_provider(
    refresh: impl Fn(usize) -> ResponseTemplate + Send + Sync + 'static,
) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(answer(serde_json::json!({
            "access_token": "at-0", "expires_in": 3600, "token_type": "Bearer", "refresh_token": "rt-0"
        })))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(numbered(Asked::default(), refresh))
        .mount(&mock)
        .await;
    mock
}

/// Tenant `acme` with connection `p` to `mock` (form-body client auth), and, when given,
/// its revocation endpoint at `revocation` on the mock.
pub async fn grant_connection(c: &Client, mock: &MockServer, revocation: Option<&str>) {
    c.call(
        "AdminService/CreateTenant",
        serde_json::json!({"tenant": "acme"}),
    )
    .await
    .unwrap();
    let mut req = serde_json::json!({"tenant": "acme", "provider": "p", "token_url": token_url(mock),
                         "authorize_url": "https://login.example.com/authorize",
                         "client_id": "id", "client_secret": "secret", "client_auth": "CLIENT_AUTH_POST"});
    if let Some(r) = revocation {
        req["revocation_url"] = serde_json::json!(format!("{}{r}", mock.uri()));
    }
    c.put_connection(req).await.unwrap();
}

/// An end user's authorization on connection `p`, completed with a code the mock accepts.
pub async fn authorize(c: &Client, subject: &str) -> Value {
    let started = c
        .call("AdminService/StartAuthorization", user(subject))
        .await
        .unwrap();
    c.call(
        "AdminService/CompleteAuthorization",
        serde_json::json!({"state": started["state"], "code": "the-code"}),
    )
    .await
    .unwrap()
}

/// InvalidateToken: an end user of connection `p` reports `token` dead.
pub async fn report(c: &Client, subject: &str, token: &str) -> Result<Value, Status> {
    c.call(
        "TokenService/InvalidateToken",
        serde_json::json!({"tenant": "acme", "provider": "p", "subject": subject, "access_token": token}),
    )
    .await
}

/// An end user of connection `p`, as GetToken, GetGrant, RevokeGrant and StartAuthorization
/// name one.
pub fn user(subject: &str) -> Value {
    serde_json::json!({"tenant": "acme", "provider": "p", "subject": subject})
}

/// TOKENVEND_PUBLIC_URL, which the authorization-code flow needs for its redirect URI.
pub fn public_url() -> (&'static str, String) {
    (
        "TOKENVEND_PUBLIC_URL",
        "https://tokenvend.example.com".into(),
    )
}

/// No limit on invalidation-triggered refreshes, for tests that report several tokens dead.
pub fn no_invalidate_limit() -> (&'static str, String) {
    ("TOKENVEND_INVALIDATE_MIN_INTERVAL", "0s".into())
}

/// Runs `tokenvend serve` with nothing but loopback addresses and `env`, for settings it must
/// refuse before it listens: asserts that it failed and returns its stderr.
pub fn refused_start(env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .arg("serve")
        .env_clear()
        .env("TOKENVEND_GRPC_ADDR", "127.0.0.1:0")
        .env("TOKENVEND_HTTP_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .expect("run tokenvend");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started with {env:?}:\n{stderr}");
    stderr
}

/// A 200 answer with the JSON `body`.
pub fn answer(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

/// A token endpoint's answer: `access_token`, valid for an hour.
pub fn token_answer(access_token: &str) -> ResponseTemplate {
    answer(serde_json::json!({"access_token": access_token, "expires_in": 3600}))
}

/// A refresh answer that rotates the refresh token: `at-n` / `rt-n`.
pub fn rotated(n: usize) -> ResponseTemplate {
    answer(serde_json::json!({
        "access_token": format!("at-{n}"), "expires_in": 3600, "refresh_token": format!("rt-{n}")
    }))
}

/// Where the mock providers of these tests take token requests.
pub fn token_url(mock: &MockServer) -> String {
    format!("{}/token", mock.uri())
}

/// A provider answering every POST to `/token` with `answer`; it checks, when dropped, that
/// it was asked `expect` times (`..`: any number).
pub async fn token_provider(answer: ResponseTemplate, expect: impl Into<Times>) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(answer)
        .expect(expect)
        .mount(&mock)
        .await;
    mock
}

/// How many requests a numbered provider has answered.
#[derive(Clone, Default)]
pub struct Asked(Arc<AtomicUsize>);

impl Asked {
    /// The requests answered so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Answers the n-th request (from 1) with `answer(n)`, counting in `asked`: lets a test give
/// each request its own answer and tell them apart.
fn numbered(
    asked: Asked,
    answer: impl Fn(usize) -> ResponseTemplate + Send + Sync + 'static,
) -> impl Fn(&Request) -> ResponseTemplate + Send + Sync + 'static {
    move |_: &Request| answer(asked.0.fetch_add(1, Ordering::SeqCst) + 1)
}

/// A provider answering its n-th POST (from 1, at any path) with `answer(n)`, and its count.
pub async fn numbered_provider(
    answer: impl Fn(usize) -> ResponseTemplate + Send + Sync + 'static,
) -> (MockServer, Asked) {
    let mock = MockServer::start().await;
    let asked = Asked::default();
    Mock::given(method("POST"))
        .respond_with(numbered(asked.clone(), answer))
        .mount(&mock)
        .await;
    (mock, asked)
}

/// A provider answering `tok-1`, `tok-2`, … so tests can tell fetches apart.
pub async fn tok_provider() -> (MockServer, Asked) {
    numbered_provider(|n| token_answer(&format!("tok-{n}"))).await
}

/// Polls `cond` until it holds, for what a test can only observe by looking (a provider's
/// request log, a closed port); panics naming `what` if it does not hold `within`.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a refresh has reached the grant provider `mock`.
pub async fn wait_for_refresh(mock: &MockServer) {
    wait_until(
        Duration::from_secs(5),
        "a refresh reached the provider",
        async || !refresh_tokens_presented(mock).await.is_empty(),
    )
    .await;
}

/// The `expires_at` of a GetToken answer.
pub fn expires_at(token: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        token["expires_at"].as_str().expect("an expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339")
}

/// The wall clock, read the one way the workspace allows.
pub fn now() -> OffsetDateTime {
    tokenvend_core::clock::Clock::now(&tokenvend_core::clock::SystemClock)
}

/// The health status the server reports for `service` ("" for the whole server).
pub async fn health(c: &Client, service: &str) -> String {
    c.call(
        "grpc.health.v1.Health/Check",
        serde_json::json!({"service": service}),
    )
    .await
    .unwrap()["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Resident memory of process `pid`, in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}
