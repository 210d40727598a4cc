//! Everything about a configuration that can be checked without serving: `serve` runs it
//! before it binds or opens anything, and `tokenvend check-config` runs it alone, so a bad
//! setting fails with one line naming it — at start-up or in CI, never on the first call.

use anyhow::{Context, Result, bail};
use clap::{ArgMatches, parser::ValueSource};
use secrecy::ExposeSecret;
use tokenvend_core::{
    config::{MIN_TTL_FLOOR, VendorConfig},
    crypto::KeyRing,
    endpoint::EndpointPolicy,
};

use crate::{
    config::{ConfigFile, DbArgs, ServeArgs},
    limits::{Limits, Rate, parse_overrides},
    tls::TlsAcceptor,
};

/// Shortest bootstrap key accepted: anything shorter is guessable.
const MIN_BOOTSTRAP_KEY_LEN: usize = 16;

/// What `serve` builds from a configuration that passed.
pub struct Checked {
    pub policy: EndpointPolicy,
    pub vendor_config: VendorConfig,
    pub provider_proxy: Option<url::Url>,
    pub tls: Option<TlsAcceptor>,
    pub limits: Limits,
}

pub fn check(args: &ServeArgs) -> Result<Checked> {
    if let Some(k) = &args.bootstrap_admin_key
        && k.expose_secret().len() < MIN_BOOTSTRAP_KEY_LEN
    {
        bail!("TOKENVEND_BOOTSTRAP_ADMIN_KEY must be at least {MIN_BOOTSTRAP_KEY_LEN} characters");
    }
    let policy = EndpointPolicy {
        allow_insecure: args.allow_insecure_endpoints,
    };
    let vendor_config = VendorConfig {
        default_min_ttl: args.default_min_ttl,
        max_wait: args.max_wait,
        invalidate_min_interval: args.invalidate_min_interval,
        policy,
        lease_ttl: args.lease_ttl,
        request_timeout: args.provider_timeout,
        negative_ttl: args.negative_cache_ttl,
        ..VendorConfig::default()
    };
    check_timing(&vendor_config)?;
    let provider_proxy = args.provider_proxy()?;
    args.tls.validate()?;
    let tls = args
        .tls
        .enabled()
        .then(|| TlsAcceptor::load(&args.tls))
        .transpose()?;
    let limits = Limits::new(
        Rate {
            per_second: args.rate_limit,
            burst: args.rate_limit_burst,
        },
        parse_overrides(&args.rate_limits)
            .map_err(|e| anyhow::anyhow!("TOKENVEND_RATE_LIMITS: {e}"))?,
    );
    check_database(&args.db)?;
    crate::telemetry::check()?;
    Ok(Checked {
        policy,
        vendor_config,
        provider_proxy,
        tls,
        limits,
    })
}

/// The database URL's scheme and the key ring, without connecting: an external database
/// needs master keys, and given keys must parse.
fn check_database(db: &DbArgs) -> Result<()> {
    let url = db.url();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        bail!(
            "TOKENVEND_DATABASE_URL must start with postgres:// or sqlite:// (the value is not shown: it may hold a password)"
        );
    }
    match &db.master_keys {
        Some(spec) => {
            KeyRing::parse(spec.expose_secret()).context("TOKENVEND_MASTER_KEYS")?;
        }
        None if !db.is_embedded() => bail!(
            "TOKENVEND_MASTER_KEYS is required with an external database; generate one with `tokenvend keygen`"
        ),
        None => {}
    }
    Ok(())
}

/// Refuses timing settings under which a caller could never be served: a `min_ttl` of 0
/// (a token with no time left is not valid), a lease too short to renew, and a
/// `TOKENVEND_MAX_WAIT` that cannot outlast the takeover of a dead holder's lease.
pub fn check_timing(c: &VendorConfig) -> Result<()> {
    if c.default_min_ttl < MIN_TTL_FLOOR {
        bail!(
            "TOKENVEND_DEFAULT_MIN_TTL must be at least 1s (a token that expires now is not valid)"
        );
    }
    if c.lease_ttl < std::time::Duration::from_secs(1) {
        bail!("TOKENVEND_LEASE_TTL must be at least 1s (it is renewed every third of it)");
    }
    let takeover = c.worst_takeover();
    if c.max_wait <= takeover {
        bail!(
            "TOKENVEND_MAX_WAIT ({:?}) must exceed the worst takeover of a dead replica's refresh lease ({takeover:?} = max(TOKENVEND_LEASE_TTL, TOKENVEND_PROVIDER_TIMEOUT + 3s) + {:?} poll + TOKENVEND_PROVIDER_TIMEOUT), or waiting callers could never be served",
            c.max_wait,
            c.poll_interval
        );
    }
    Ok(())
}

/// The effective configuration as `check-config` prints it: every setting of `serve` with
/// its value and where it came from, secrets as set/unset only.
pub fn describe(
    serve: &clap::Command,
    matches: &ArgMatches,
    args: &ServeArgs,
    file: &ConfigFile,
) -> String {
    let mut lines = Vec::new();
    for arg in serve.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "config") {
            continue;
        }
        let name = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("--{}", arg.get_long().unwrap_or(id)));
        let value = matches
            .get_raw(id)
            .map(|v| {
                v.map(|s| s.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        // The proxy URL may carry credentials: its host only.
        let value = if id == "provider_proxy" {
            args.provider_proxy()
                .ok()
                .flatten()
                .and_then(|u| u.host_str().map(|h| format!("[redacted] (host {h})")))
                .unwrap_or_else(|| {
                    if value.is_empty() {
                        String::new()
                    } else {
                        "[redacted]".into()
                    }
                })
        } else {
            value
        };
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) if file.keys.contains(&name) => "config file",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        lines.push(format!("{name}={value}  # {source}"));
    }
    if let Some(path) = &file.path {
        lines.push(format!(
            "TOKENVEND_CONFIG={}  # config file read",
            path.display()
        ));
    }
    for (name, set) in [
        ("TOKENVEND_DATABASE_URL", args.db.database_url.is_some()),
        ("TOKENVEND_MASTER_KEYS", args.db.master_keys.is_some()),
        (
            "TOKENVEND_BOOTSTRAP_ADMIN_KEY",
            args.bootstrap_admin_key.is_some(),
        ),
    ] {
        let value = if set { "[set]" } else { "[unset]" };
        lines.push(format!("{name}={value}  # secret"));
    }
    lines.push(match crate::telemetry::check() {
        Ok(Some((endpoint, protocol))) => {
            // The endpoint may carry credentials in its user info: scheme, host and port only.
            let shown = url::Url::parse(&endpoint)
                .ok()
                .map(|u| {
                    format!(
                        "{}://{}{}",
                        u.scheme(),
                        u.host_str().unwrap_or_default(),
                        u.port().map(|p| format!(":{p}")).unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "[unparsable]".into());
            format!("OTEL_EXPORTER_OTLP_ENDPOINT={shown}  # traces exported over OTLP {protocol}")
        }
        _ => "OTEL_EXPORTER_OTLP_ENDPOINT=  # unset: no traces exported".into(),
    });
    let headers = [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    lines.push(format!(
        "OTEL_EXPORTER_OTLP_HEADERS={}  # secret",
        if headers { "[set]" } else { "[unset]" }
    ));
    lines.sort();
    lines.join("\n")
}
