//! Lenient parsing of token endpoint answers. Real providers differ from RFC 6749 §5.1 in
//! small ways; each accepted quirk is listed in the tests below with the provider that has it.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use super::error::{ProviderError, scrub};

/// Tokens claiming to live longer than this are treated as living this long: a provider
/// bug must not pin a token in the cache for years.
const MAX_LIFETIME: Duration = Duration::from_secs(366 * 86_400);

/// A successful token response, normalised.
pub struct TokenResponse {
    pub access_token: SecretString,
    pub expires_in: Duration,
    pub scopes: Vec<String>,
    pub refresh_token: Option<SecretString>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Parses a token endpoint's answer. `secrets` are scrubbed from any provider text we echo.
pub fn parse_token_response(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    default_expires_in: Duration,
    requested_scopes: &[String],
    secrets: &[&str],
) -> Result<TokenResponse, ProviderError> {
    // ev.energy documents a response with a trailing comma (`"scope": "…", }`). Strict JSON
    // first; if that fails, the same text without trailing commas — a deliberate leniency:
    // it cannot change the meaning of any valid document.
    let json: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body)
        .ok()
        .or_else(|| serde_json::from_slice(&without_trailing_commas(body)).ok());

    // An OAuth error body wins whatever the status (some providers send it with 200).
    if let Some(obj) = &json
        && let Some(code) = obj.get("error").and_then(Value::as_str)
    {
        let code = scrub(code, secrets);
        let description = obj
            .get("error_description")
            .and_then(Value::as_str)
            .map(|d| scrub(d, secrets))
            .filter(|d| !d.is_empty());
        if status >= 500 || status == 429 {
            return Err(ProviderError::Unavailable {
                reason: format!("HTTP {status} ({code})"),
                retry_after: None,
                never_sent: false,
            });
        }
        return Err(ProviderError::OAuth {
            status,
            code,
            description,
        });
    }

    match status {
        200..=299 => {}
        300..=399 => {
            return Err(ProviderError::BadResponse {
                reason: format!(
                    "HTTP {status} redirect (redirects are not followed: the token URL is probably wrong)"
                ),
            });
        }
        401 | 403 => return Err(ProviderError::Rejected { status }),
        429 | 500..=599 => {
            return Err(ProviderError::Unavailable {
                reason: format!("HTTP {status}"),
                retry_after: None,
                never_sent: false,
            });
        }
        _ => return Err(ProviderError::Refused { status }),
    }

    let Some(obj) = json else {
        let ct = content_type.unwrap_or("no content type");
        return Err(ProviderError::BadResponse {
            reason: format!(
                "HTTP {status} with a body that is not a JSON object ({})",
                scrub(ct, &[])
            ),
        });
    };

    let access_token = match obj.get("access_token") {
        Some(Value::String(t)) if !t.trim().is_empty() => {
            header_safe("access_token", t.trim())?.to_owned()
        }
        Some(_) => {
            return Err(ProviderError::BadResponse {
                reason: "access_token is empty or not a string".into(),
            });
        }
        None => {
            return Err(ProviderError::BadResponse {
                reason: "no access_token in the response".into(),
            });
        }
    };

    match obj.get("token_type") {
        None | Some(Value::Null) => {} // missing: assume Bearer, the only type anyone uses
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(other) => {
            return Err(ProviderError::BadResponse {
                reason: format!(
                    "token_type {} is not Bearer",
                    scrub(&other.to_string(), secrets)
                ),
            });
        }
    }

    let expires_in = match obj.get("expires_in") {
        None | Some(Value::Null) => default_expires_in,
        Some(Value::Number(n)) => seconds(n.as_f64())?,
        Some(Value::String(s)) if s.trim().is_empty() => default_expires_in,
        Some(Value::String(s)) => seconds(s.trim().parse::<f64>().ok())?,
        Some(_) => {
            return Err(ProviderError::BadResponse {
                reason: "expires_in is neither a number nor a numeric string".into(),
            });
        }
    };

    let scopes: Vec<String> = match obj.get("scope").or_else(|| obj.get("scopes")) {
        None | Some(Value::Null) => requested_scopes.to_vec(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(str::split_whitespace)
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            return Err(ProviderError::BadResponse {
                reason: "scope is neither a string nor a list of strings".into(),
            });
        }
    };

    let refresh_token = match obj.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.is_empty() => None,
        Some(Value::String(t)) => Some(SecretString::from(
            header_safe("refresh_token", t)?.to_owned(),
        )),
        Some(_) => {
            return Err(ProviderError::BadResponse {
                reason: "refresh_token is not a string".into(),
            });
        }
    };

    // Scopes are handed to callers too; RFC 6749 §3.3 allows only visible ASCII in them.
    if scopes
        .iter()
        .any(|s| s.bytes().any(|b| !(0x21..=0x7e).contains(&b)))
    {
        return Err(ProviderError::BadResponse {
            reason: "scope contains characters outside visible ASCII (RFC 6749 §3.3)".into(),
        });
    }

    Ok(TokenResponse {
        access_token: SecretString::from(access_token),
        expires_in,
        scopes,
        refresh_token,
    })
}

/// Removes commas that directly precede a closing `}` or `]`, outside strings.
fn without_trailing_commas(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b',' {
            let next = body[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
            if matches!(next, Some(b'}') | Some(b']')) {
                continue;
            }
        }
        out.push(b);
    }
    out
}

/// Seconds from a provider's `expires_in`, capped at [`MAX_LIFETIME`]. The cap is applied
/// to the float *before* any conversion: `Duration::from_secs_f64(1e20)` panics.
fn seconds(v: Option<f64>) -> Result<Duration, ProviderError> {
    match v {
        Some(s) if s.is_finite() && s >= 1.0 => Ok(Duration::try_from_secs_f64(
            s.min(MAX_LIFETIME.as_secs_f64()),
        )
        .unwrap_or(MAX_LIFETIME)
        .min(MAX_LIFETIME)),
        _ => Err(ProviderError::BadResponse {
            reason: "expires_in is not a positive number of seconds".into(),
        }),
    }
}

/// Callers paste tokens into an `Authorization` header: RFC 6749 Appendix A allows only
/// visible ASCII and space (`%x20-7E`) in `access_token` and `refresh_token`. A CR/LF
/// would let a hostile provider inject headers into every caller's requests.
fn header_safe<'a>(field: &'static str, value: &'a str) -> Result<&'a str, ProviderError> {
    if value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Ok(value)
    } else {
        Err(ProviderError::BadResponse {
            reason: format!(
                "{field} contains characters outside visible ASCII (RFC 6749 Appendix A); refusing to hand it out"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const DEFAULT: Duration = Duration::from_secs(3600);

    fn parse(status: u16, body: &str) -> Result<TokenResponse, ProviderError> {
        parse_token_response(
            status,
            Some("application/json"),
            body.as_bytes(),
            DEFAULT,
            &["req".to_owned()],
            &["s3cr3t-value"],
        )
    }

    #[test]
    fn accepted_quirks() {
        // (case, body, expires_in, scopes)
        let cases: &[(&str, &str, u64, &[&str])] = &[
            (
                "RFC example",
                r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#,
                3600,
                &["req"],
            ),
            (
                "eDRV: 24 h, scope string",
                r#"{"access_token":"t","expires_in":86400,"token_type":"Bearer","scope":"read:x write:y"}"#,
                86400,
                &["read:x", "write:y"],
            ),
            (
                "Enode: lower-case bearer, empty scope",
                r#"{"access_token":"t","expires_in":3599,"scope":"","token_type":"bearer"}"#,
                3599,
                &[],
            ),
            (
                "DepotFinity sample",
                r#"{"access_token":"eyJ0.eyJp.MJp","expires_in":3600,"token_type":"Bearer"}"#,
                3600,
                &["req"],
            ),
            (
                "expires_in as string",
                r#"{"access_token":"t","token_type":"bearer","expires_in":"7200"}"#,
                7200,
                &["req"],
            ),
            (
                "expires_in as float",
                r#"{"access_token":"t","token_type":"BEARER","expires_in":59.9}"#,
                59,
                &["req"],
            ),
            (
                "expires_in missing: default",
                r#"{"access_token":"t","token_type":"Bearer"}"#,
                3600,
                &["req"],
            ),
            (
                "expires_in null",
                r#"{"access_token":"t","expires_in":null}"#,
                3600,
                &["req"],
            ),
            (
                "token_type missing",
                r#"{"access_token":"t","expires_in":10}"#,
                10,
                &["req"],
            ),
            (
                "scope as array",
                r#"{"access_token":"t","expires_in":10,"scope":["a","b c"]}"#,
                10,
                &["a", "b", "c"],
            ),
            (
                "unknown fields ignored",
                r#"{"access_token":"t","expires_in":10,"id_token":"x","ext":{"a":1}}"#,
                10,
                &["req"],
            ),
            (
                "absurd lifetime clamped",
                r#"{"access_token":"t","expires_in":99999999999}"#,
                366 * 86400,
                &["req"],
            ),
            // Regression (issue 8.1): these panicked in Duration::from_secs_f64.
            (
                "expires_in 1e20 clamped",
                r#"{"access_token":"x","expires_in":1e20}"#,
                366 * 86400,
                &["req"],
            ),
            (
                "expires_in 2^64 clamped",
                r#"{"access_token":"x","expires_in":18446744073709551616}"#,
                366 * 86400,
                &["req"],
            ),
            (
                "expires_in \"1e30\" clamped",
                r#"{"access_token":"x","expires_in":"1e30"}"#,
                366 * 86400,
                &["req"],
            ),
            (
                "access_token with an inner space (VSCHAR allows it)",
                r#"{"access_token":"a b","expires_in":10}"#,
                10,
                &["req"],
            ),
        ];
        for (case, body, exp, scopes) in cases {
            let r = parse(200, body).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(r.expires_in.as_secs(), *exp, "{case}");
            assert_eq!(r.scopes, *scopes, "{case}");
            assert!(!r.access_token.expose_secret().is_empty(), "{case}");
        }
        let r = parse(
            200,
            r#"{"access_token":"a","refresh_token":"r","expires_in":5}"#,
        )
        .unwrap();
        assert_eq!(r.refresh_token.unwrap().expose_secret(), "r");
    }

    #[test]
    fn rejected_answers() {
        use ProviderError as P;
        let oauth = |r: Result<TokenResponse, ProviderError>| match r.unwrap_err() {
            P::OAuth {
                status,
                code,
                description,
            } => (status, code, description),
            other => panic!("not an OAuth error: {other:?}"),
        };
        assert_eq!(
            oauth(parse(
                400,
                r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#
            )),
            (
                400,
                "invalid_client".into(),
                Some("Client authentication failed".into())
            )
        );
        assert_eq!(
            oauth(parse(200, r#"{"error":"invalid_scope"}"#)),
            (200, "invalid_scope".into(), None)
        );
        // an echoed secret never comes back out
        let (_, _, d) = oauth(parse(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret s3cr3t-value"}"#,
        ));
        assert_eq!(d.unwrap(), "bad secret [redacted]");

        type Case = (&'static str, u16, &'static str, fn(&P) -> bool);
        let cases: &[Case] = &[
            ("DepotFinity 403, no body", 403, "", |e| {
                matches!(e, P::Rejected { status: 403 })
            }),
            ("401 HTML", 401, "<html>nope</html>", |e| {
                matches!(e, P::Rejected { status: 401 })
            }),
            ("404 HTML page", 404, "<html>not found</html>", |e| {
                matches!(e, P::Refused { status: 404 })
            }),
            ("405 (missing trailing slash)", 405, "", |e| {
                matches!(e, P::Refused { status: 405 })
            }),
            ("500", 500, "<html>oops</html>", |e| e.is_transient()),
            (
                "503 with error body",
                503,
                r#"{"error":"temporarily_unavailable"}"#,
                |e| e.is_transient(),
            ),
            ("429", 429, "", |e| e.is_transient()),
            ("302 redirect", 302, "", |e| {
                matches!(e, P::BadResponse { .. })
            }),
            ("200 HTML", 200, "<html>login</html>", |e| {
                matches!(e, P::BadResponse { .. })
            }),
            ("200 JSON array", 200, "[1,2]", |e| {
                matches!(e, P::BadResponse { .. })
            }),
            (
                "200 no access_token",
                200,
                r#"{"token_type":"bearer"}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "200 empty access_token",
                200,
                r#"{"access_token":""}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "200 numeric access_token",
                200,
                r#"{"access_token":42}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "token_type mac",
                200,
                r#"{"access_token":"t","token_type":"mac"}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "expires_in negative",
                200,
                r#"{"access_token":"t","expires_in":-5}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "expires_in zero",
                200,
                r#"{"access_token":"t","expires_in":0}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "expires_in garbage",
                200,
                r#"{"access_token":"t","expires_in":"soon"}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "expires_in object",
                200,
                r#"{"access_token":"t","expires_in":{}}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "scope number",
                200,
                r#"{"access_token":"t","scope":5}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            ("truncated JSON", 200, r#"{"access_token":"t""#, |e| {
                matches!(e, P::BadResponse { .. })
            }),
            // Regression (issue 8.2): header injection through a token.
            (
                "access_token with CR/LF",
                200,
                r#"{"access_token":"A\r\nX-Injected: 1","expires_in":60}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "access_token with NUL",
                200,
                r#"{"access_token":"A\u0000B"}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "access_token non-ASCII",
                200,
                r#"{"access_token":"t\u00e9"}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "refresh_token with LF",
                200,
                r#"{"access_token":"t","refresh_token":"r\nX: y"}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "refresh_token a number",
                200,
                r#"{"access_token":"t","refresh_token":5}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
            (
                "scope with a control character",
                200,
                r#"{"access_token":"t","scope":"a\u0007b"}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
        ];
        for (case, status, body, check) in cases {
            let err = parse(*status, body).expect_err(case);
            assert!(check(&err), "{case}: got {err:?}");
            assert!(!err.to_string().contains("s3cr3t"), "{case}");
        }
    }
}

#[cfg(test)]
mod untrusted_input {
    use proptest::prelude::*;

    use super::*;

    const SECRET: &str = "Zz9-planted-secret-Qq7";

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,40}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::from(SECRET)),
            Just(serde_json::Value::from(format!("bad {SECRET} here"))),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("access_token".to_owned()),
                        Just("expires_in".to_owned()),
                        Just("token_type".to_owned()),
                        Just("scope".to_owned()),
                        Just("error".to_owned()),
                        Just("error_description".to_owned()),
                        Just("refresh_token".to_owned()),
                        "[a-z_]{1,12}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Arbitrary bytes with any status: a typed answer, never a panic.
        #[test]
        fn never_panics_on_bytes(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_token_response(status, None, &body, Duration::from_secs(60), &[], &[SECRET]);
        }

        /// Arbitrary JSON that may carry the client secret anywhere: whatever the outcome,
        /// no error message repeats the secret, and no token lives longer than a year.
        #[test]
        fn never_echoes_the_secret(status in prop_oneof![Just(200u16), Just(400), Just(401), Just(403), Just(500)], v in json_value()) {
            let body = serde_json::to_vec(&v).unwrap();
            match parse_token_response(status, Some("application/json"), &body, Duration::from_secs(60), &[], &[SECRET]) {
                Ok(t) => prop_assert!(t.expires_in <= MAX_LIFETIME && t.expires_in >= Duration::from_secs(1)),
                Err(e) => prop_assert!(!e.to_string().contains(SECRET), "{}", e),
            }
        }
    }
}
