//! Configuration: every setting is a flag with an environment variable (`TOKENVEND_*`).
//! Secret-bearing settings hide their values from `--help` and error output.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Parser)]
#[command(
    name = "tokenvend",
    version,
    about = "Multi-tenant OAuth 2.0 token-vending service",
    after_help = SECRET_SETTINGS_HELP
)]
pub struct Cli {
    /// A file of `TOKENVEND_*=value` lines (dotenv syntax). Real environment variables and
    /// flags take precedence over it.
    #[arg(long, global = true, env = "TOKENVEND_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Loads the config file named by `--config FILE` / `--config=FILE` / `TOKENVEND_CONFIG`
/// into the environment before the flags are parsed, so every setting keeps one name
/// whether it comes from a flag, the environment or the file. Variables already set win.
/// The config file that was read, and the variables that came from it (for check-config:
/// a variable already in the environment wins over the file).
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub path: Option<PathBuf>,
    pub keys: std::collections::BTreeSet<String>,
}

pub fn load_config_file(args: &[String]) -> Result<ConfigFile, String> {
    let from_args = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--config=").map(str::to_owned).or_else(|| {
            (a == "--config")
                .then(|| args.get(i + 1).cloned())
                .flatten()
        })
    });
    let Some(path) = from_args.or_else(|| std::env::var("TOKENVEND_CONFIG").ok()) else {
        return Ok(ConfigFile::default());
    };
    let path = PathBuf::from(path);
    let unreadable =
        |e: dotenvy::Error| format!("cannot read the config file {}: {e}", path.display());
    let mut keys = std::collections::BTreeSet::new();
    for entry in dotenvy::from_path_iter(&path).map_err(unreadable)? {
        let (key, _) = entry.map_err(unreadable)?;
        if std::env::var_os(&key).is_none() {
            keys.insert(key);
        }
    }
    dotenvy::from_path(&path).map_err(unreadable)?;
    Ok(ConfigFile {
        path: Some(path),
        keys,
    })
}

/// A command-line or environment error as one line: for a rejected value, the setting's
/// variable and flag, the value (never of a secret setting: those are not arguments) and why.
pub fn arg_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let first_line = || {
        e.render()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned()
    };
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return first_line();
    };
    // "--lease-ttl <LEASE_TTL>" → the argument with that long name, in any subcommand.
    let long = arg.split_whitespace().next().unwrap_or_default();
    let cli = <Cli as clap::CommandFactory>::command();
    let env = cli
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
        .and_then(|a| a.get_env().map(|v| v.to_string_lossy().into_owned()));
    match (env, e.get(ContextKind::InvalidValue)) {
        (Some(env), Some(ContextValue::String(value))) => {
            let why = std::error::Error::source(e)
                .map(ToString::to_string)
                .unwrap_or_else(first_line);
            format!("invalid {env} ({long}) {value:?}: {why}")
        }
        _ => first_line(),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gRPC service and the HTTP side port.
    Serve(Box<ServeArgs>),
    /// Brings the database schema up to date and exits (serve also does this at start-up).
    Migrate(DbArgs),
    /// Re-wraps every stored data key under the active (first) master key and exits, so an
    /// old master key can then be removed from TOKENVEND_MASTER_KEYS. Online and resumable;
    /// `serve` also runs it in the background (TOKENVEND_REWRAP_INTERVAL).
    Rewrap(DbArgs),
    /// Validates the configuration `serve` would run with (files, key ring, timings, TLS) and
    /// prints it, secrets redacted. Exit 0 if it would start, 1 with the reason if not.
    CheckConfig(Box<ServeArgs>),
    /// Prints the version and the git revision this binary was built from.
    Version,
    /// Prints a new master key entry for TOKENVEND_MASTER_KEYS (`id:<base64>`).
    Keygen {
        /// Key id to put in front of the key.
        #[arg(long, default_value = "k1")]
        id: String,
        /// Print a random API key (e.g. for TOKENVEND_BOOTSTRAP_ADMIN_KEY) instead.
        #[arg(long)]
        api_key: bool,
    },
}

/// Settings that hold secrets are read from the environment (or from a file named by the
/// same variable with `_FILE` appended, for Kubernetes Secrets mounted as files), never from
/// flags: a flag's value shows in `ps` to every user of the machine.
pub const SECRET_SETTINGS_HELP: &str = "Secret settings are environment-only (never flags, they \
would show in `ps`), each also readable from a file named by VARIABLE_FILE: \
TOKENVEND_DATABASE_URL (`sqlite://…` or `postgres://…`; unset: SQLite in the data directory), \
TOKENVEND_MASTER_KEYS (key ring `id:<base64 of 32 bytes>,…`, the first active), \
TOKENVEND_BOOTSTRAP_ADMIN_KEY (an API key accepted as an administrator, for first set-up).";

#[derive(Clone, Args)]
pub struct DbArgs {
    /// From TOKENVEND_DATABASE_URL(_FILE): see `SECRET_SETTINGS_HELP`.
    #[arg(skip)]
    pub database_url: Option<SecretString>,
    /// Where the embedded SQLite database and development master key live.
    #[arg(long, env = "TOKENVEND_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// From TOKENVEND_MASTER_KEYS(_FILE).
    #[arg(skip)]
    pub master_keys: Option<SecretString>,
}

impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// A secret setting from `name` or the file named by `name_FILE` (one of them, not both).
/// Errors name the variable and the file, never the value.
pub fn secret_setting(name: &str) -> Result<Option<SecretString>, String> {
    let file_var = format!("{name}_FILE");
    let direct = std::env::var(name).ok().filter(|v| !v.is_empty());
    let file = std::env::var(&file_var).ok().filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(format!("set {name} or {file_var}, not both")),
        (Some(v), None) => Ok(Some(SecretString::from(v))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{file_var}: cannot read {path}: {e}"))?;
            let value = text.trim_end_matches(['\n', '\r']).to_owned();
            if value.is_empty() {
                return Err(format!("{file_var}: {path} is empty"));
            }
            Ok(Some(SecretString::from(value)))
        }
        (None, None) => Ok(None),
    }
}

impl Command {
    /// Reads the secret settings the command needs (see `secret_setting`).
    pub fn load_secrets(&mut self) -> Result<(), String> {
        match self {
            Command::Serve(args) | Command::CheckConfig(args) => {
                args.db.load_secrets()?;
                args.bootstrap_admin_key = secret_setting("TOKENVEND_BOOTSTRAP_ADMIN_KEY")?;
            }
            Command::Migrate(db) | Command::Rewrap(db) => db.load_secrets()?,
            Command::Keygen { .. } | Command::Version => {}
        }
        Ok(())
    }
}

impl DbArgs {
    fn load_secrets(&mut self) -> Result<(), String> {
        self.database_url = secret_setting("TOKENVEND_DATABASE_URL")?;
        self.master_keys = secret_setting("TOKENVEND_MASTER_KEYS")?;
        Ok(())
    }

    pub fn url(&self) -> String {
        self.database_url
            .as_ref()
            .map(|u| u.expose_secret().to_owned())
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("tokenvend.db").display()))
    }

    pub fn is_embedded(&self) -> bool {
        self.url().starts_with("sqlite:")
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// gRPC listen address (TokenService, AdminService, reflection, health).
    #[arg(long, env = "TOKENVEND_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP side port: /healthz, /readyz (and the OAuth callback).
    #[arg(long, env = "TOKENVEND_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Where browsers reach the HTTP port (for OAuth redirect URIs).
    #[arg(long, env = "TOKENVEND_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// From TOKENVEND_BOOTSTRAP_ADMIN_KEY(_FILE): see `SECRET_SETTINGS_HELP`.
    #[arg(skip)]
    pub bootstrap_admin_key: Option<SecretString>,
    /// Prometheus metrics on the HTTP port's /metrics (false: no /metrics, and the request
    /// path records nothing).
    #[arg(long, env = "TOKENVEND_METRICS", default_value = "true", value_parser = parse_bool)]
    pub metrics: bool,
    /// Development only: allow http:// and loopback/private provider URLs.
    #[arg(long, env = "TOKENVEND_ALLOW_INSECURE_ENDPOINTS", default_value = "false", value_parser = parse_bool)]
    pub allow_insecure_endpoints: bool,
    /// Forward proxy for every provider call, an http:// or https:// URL. Unset: provider
    /// calls connect directly, whatever HTTP_PROXY, HTTPS_PROXY or ALL_PROXY say.
    #[arg(long, env = "TOKENVEND_PROVIDER_PROXY", hide_env_values = true)]
    pub provider_proxy: Option<String>,
    /// Minimum remaining lifetime of a returned token when the caller sets none.
    #[arg(long, env = "TOKENVEND_DEFAULT_MIN_TTL", default_value = "60s", value_parser = parse_duration)]
    pub default_min_ttl: Duration,
    /// Upper bound on any wait for a token, whatever the caller's deadline.
    #[arg(long, env = "TOKENVEND_MAX_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// Timeout of one HTTP exchange with a provider's token endpoint.
    #[arg(long, env = "TOKENVEND_PROVIDER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub provider_timeout: Duration,
    /// How long a token key's refresh lease lives without a heartbeat. Its holder renews it
    /// every third of this while it works; if the holder dies, other replicas take over
    /// within it. TOKENVEND_MAX_WAIT must outlast a takeover (checked at start-up).
    #[arg(long, env = "TOKENVEND_LEASE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How long a definitive provider error (invalid_client, a 403, …) is answered again
    /// without asking the provider.
    #[arg(long, env = "TOKENVEND_NEGATIVE_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub negative_cache_ttl: Duration,
    /// How often the background refresher looks for tokens due for renewal (0 disables it).
    #[arg(long, env = "TOKENVEND_REFRESH_TICK", default_value = "1s", value_parser = parse_duration)]
    pub refresh_tick: Duration,
    /// How often the background pass re-wraps data keys under the active master key (it also
    /// runs once at start-up; 0 disables it).
    #[arg(long, env = "TOKENVEND_REWRAP_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub rewrap_interval: Duration,
    /// Safety net for revocations: every replica reloads callers, keys and permissions this
    /// often even if it missed a change notification (changes normally arrive at once).
    #[arg(long, env = "TOKENVEND_ACCESS_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub access_reload_interval: Duration,
    /// How long audit events are kept (default 90 days; 0 keeps them forever); older ones
    /// are purged hourly.
    #[arg(long, env = "TOKENVEND_AUDIT_RETENTION", default_value = "2160h", value_parser = parse_duration)]
    pub audit_retention: Duration,
    /// Per-principal limit on calls the cache cannot answer (TokenService misses and
    /// InvalidateToken) and on AdminService calls, per second (0: unlimited).
    #[arg(long, env = "TOKENVEND_RATE_LIMIT", default_value = "50")]
    pub rate_limit: u32,
    /// How many such calls a principal may make at once before the rate applies.
    #[arg(long, env = "TOKENVEND_RATE_LIMIT_BURST", default_value = "200")]
    pub rate_limit_burst: u32,
    /// Per-principal overrides: `principal=rate[:burst],…` (rate 0: unlimited).
    #[arg(long, env = "TOKENVEND_RATE_LIMITS", default_value = "")]
    pub rate_limits: String,
    /// At most this many background renewals at once.
    #[arg(long, env = "TOKENVEND_REFRESH_CONCURRENCY", default_value = "8")]
    pub refresh_concurrency: usize,
    /// This replica's name in refresh leases (default: host name and a random suffix).
    #[arg(long, env = "TOKENVEND_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// How long a started authorization-code flow may take (the end user's login included).
    #[arg(long, env = "TOKENVEND_AUTHORIZATION_TTL", default_value = "10m", value_parser = parse_duration)]
    pub authorization_ttl: Duration,
    /// At most one invalidation-triggered refresh per token key in this interval.
    #[arg(long, env = "TOKENVEND_INVALIDATE_MIN_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub invalidate_min_interval: Duration,
    /// On SIGTERM/SIGINT: how long the listeners stay open with health NOT_SERVING, /readyz
    /// 503 and new calls refused (UNAVAILABLE), so load balancers notice before they close.
    #[arg(long, env = "TOKENVEND_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Interval of the HTTP/2 keep-alive pings on gRPC connections (0: none), so idle
    /// connections and their WatchToken streams survive proxies and load balancers.
    #[arg(long, env = "TOKENVEND_GRPC_KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub grpc_keepalive: Duration,
    /// Then, how long calls in flight may take to finish before they are cut. Delay plus
    /// timeout must stay under the orchestrator's kill deadline (Kubernetes: 30 s).
    #[arg(long, env = "TOKENVEND_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Log format: human (default) or json (one object per line).
    #[arg(
        long,
        env = "TOKENVEND_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `tokenvend=debug`.
    #[arg(long, env = "TOKENVEND_LOG", default_value = "info")]
    pub log: String,
}

/// `TOKENVEND_PROVIDER_PROXY` is not a usable proxy URL. The value is not repeated: a
/// proxy URL may carry credentials.
#[derive(Debug, thiserror::Error)]
#[error(
    "TOKENVEND_PROVIDER_PROXY (--provider-proxy) must be an http:// or https:// URL with a host, e.g. http://proxy.internal:3128"
)]
pub struct BadProviderProxy;

impl ServeArgs {
    /// The operator's proxy for provider calls, checked at start-up rather than on the
    /// first token request.
    pub fn provider_proxy(&self) -> Result<Option<url::Url>, BadProviderProxy> {
        let Some(raw) = &self.provider_proxy else {
            return Ok(None);
        };
        let url = url::Url::parse(raw.trim()).map_err(|_| BadProviderProxy)?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(BadProviderProxy);
        }
        Ok(Some(url))
    }
}

/// Booleans accept exactly true/false/1/0: anything else is a typo worth refusing.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (use true/false/1/0)")),
    }
}

/// `500ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 5m"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_bool("1").unwrap());
        assert!(!parse_bool("FALSE").unwrap());
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn provider_proxy() {
        let proxy = |v: &str| {
            let cli = Cli::try_parse_from(["tokenvend", "serve", "--provider-proxy", v]).unwrap();
            let Command::Serve(args) = cli.command else {
                unreachable!()
            };
            args.provider_proxy().map(|u| u.map(String::from))
        };
        assert_eq!(
            proxy("http://proxy.internal:3128").unwrap().as_deref(),
            Some("http://proxy.internal:3128/")
        );
        assert!(proxy("https://u:p@10.0.0.1").unwrap().is_some());
        for bad in [
            "socks5://10.0.0.1:1080",
            "proxy:3128",
            "10.0.0.1:3128",
            "file:///x",
            "http://",
        ] {
            let err = proxy(bad).unwrap_err().to_string();
            assert!(err.starts_with("TOKENVEND_PROVIDER_PROXY"), "{bad}: {err}");
        }
    }
}
