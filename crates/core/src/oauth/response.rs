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
                // The Content-Type is provider text too: scrub the secrets from it as well
                // (it was scrubbed of control characters only; found by the property tests).
                scrub(ct, secrets)
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
            // A string is echoed as sent (scrubbed), a list or an object only by its kind:
            // their JSON text carries a secret containing `"` or `\` in escaped form, which
            // `scrub` does not recognise (found by the property tests).
            let shown = match other {
                Value::String(t) => format!("\"{}\"", scrub(t, secrets)),
                Value::Array(_) => "(a list)".to_owned(),
                Value::Object(_) => "(an object)".to_owned(),
                other => scrub(&other.to_string(), secrets),
            };
            return Err(ProviderError::BadResponse {
                reason: format!("token_type {shown} is not Bearer"),
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
        // Blank like empty: no new refresh token (the stored one is kept), never a token of
        // spaces that the provider would refuse at the next refresh.
        Some(Value::String(t)) if t.trim().is_empty() => None,
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
    // Scopes go to callers and into logs (`Debug`): a provider echoing a credential we sent
    // (client secret, refresh token) as a scope would leak it to both. Refuse without
    // repeating it (found by the property tests). Same length floor as `scrub`.
    let joined = scopes.join(" ");
    if secrets.iter().any(|s| s.len() >= 4 && joined.contains(s)) {
        return Err(ProviderError::BadResponse {
            reason: "scope repeats a credential we sent; refusing to hand it out".into(),
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
                "blank refresh_token: none issued",
                r#"{"access_token":"t","expires_in":10,"refresh_token":"   "}"#,
                10,
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
        let blank = parse(
            200,
            r#"{"access_token":"a","refresh_token":"  ","expires_in":5}"#,
        )
        .unwrap();
        assert!(
            blank.refresh_token.is_none(),
            "a blank refresh token is none"
        );
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
            // Regression (structured property tests): a granted scope that repeats the
            // client secret would hand it to every caller and to the logs.
            (
                "scope echoing the client secret",
                200,
                r#"{"access_token":"t","scope":"read s3cr3t-value"}"#,
                |e| matches!(e, P::BadResponse { .. }),
            ),
        ];
        for (case, status, body, check) in cases {
            let err = parse(*status, body).expect_err(case);
            assert!(check(&err), "{case}: got {err:?}");
            assert!(!err.to_string().contains("s3cr3t"), "{case}");
            assert!(!format!("{err:?}").contains("s3cr3t"), "{case}");
        }

        // Regression (structured property tests): secrets echoed where `scrub` did not look
        // — in the Content-Type (scrubbed of control characters only), and in the JSON text
        // of a non-string token_type, where a secret with `"` or `\` is escaped.
        let quoted = r#"q"uo\te-s3cr3t"#;
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                "Content-Type echoing the secret",
                Some("text/html; x=s3cr3t-value"),
                "<html>login</html>",
            ),
            (
                "token_type a list holding a secret with a quote",
                Some("application/json"),
                r#"{"access_token":"t","token_type":["q\"uo\\te-s3cr3t"]}"#,
            ),
            (
                "token_type an object keyed by the secret",
                Some("application/json"),
                r#"{"access_token":"t","token_type":{"q\"uo\\te-s3cr3t":1}}"#,
            ),
            (
                "token_type the secret with a quote",
                Some("application/json"),
                r#"{"access_token":"t","token_type":"q\"uo\\te-s3cr3t"}"#,
            ),
        ];
        for (case, content_type, body) in cases {
            let err = parse_token_response(
                200,
                *content_type,
                body.as_bytes(),
                DEFAULT,
                &[],
                &["s3cr3t-value", quoted],
            )
            .expect_err(case);
            assert!(matches!(err, P::BadResponse { .. }), "{case}: got {err:?}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("s3cr3t"), "{case}: {shown}");
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

/// Property tests on *structured* hostile input: JSON objects shaped like token responses,
/// where each known field is independently absent or drawn from hostile values (extreme and
/// malformed numbers, numeric strings, control characters, non-ASCII, very long strings,
/// wrong types, nested values, a planted client secret), written out as JSON text by hand so
/// that number literals no `serde_json::Value` can hold (`1e400`, `2^64`) and trailing commas
/// reach the parser. Each case is checked against a model of the documented behaviour.
#[cfg(test)]
mod structured_input {
    use std::fmt::Write as _;

    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use secrecy::ExposeSecret;

    use super::*;

    /// A typical client secret, and one with the two characters JSON escapes (`"`, `\`): an
    /// escaped copy (`q\"uo\\te…`) is as much a leak as a verbatim one.
    const SECRET: &str = "Zz9-planted-secret-Qq7";
    const QUOTED_SECRET: &str = r#"q"uo\te-s3cret"#;
    const SECRETS: &[&str] = &[SECRET, QUOTED_SECRET];
    const DEFAULT: Duration = Duration::from_secs(3600);
    const REQUESTED: &[&str] = &["req", "a:b"];

    /// A JSON value as it will be written out.
    #[derive(Clone, Debug)]
    enum Hv {
        /// A number literal written verbatim: may overflow f64 (`1e400`) or not be JSON at
        /// all (`NaN`, `+1`, `.5`).
        Num(String),
        Str(String, Esc),
        Bool(bool),
        Null,
        /// Items, and whether a trailing comma follows the last one.
        Arr(Vec<Hv>, bool),
        Obj(Vec<(String, Hv)>, bool),
    }

    /// How a string is escaped: only what JSON requires, or every character as `\uXXXX`.
    #[derive(Clone, Copy, Debug)]
    enum Esc {
        Minimal,
        Unicode,
    }

    /// What the generator knows `expires_in` means.
    #[derive(Clone, Copy, Debug)]
    enum Life {
        /// Absent, null or a blank string: the caller's default applies.
        Default,
        /// A number of seconds ≥ 1.
        Secs(f64),
        /// Zero, negative, fractional below 1, not finite, not a number, wrong type.
        Invalid,
        /// A string the generator did not classify (only the general invariants apply).
        Unknown,
    }

    /// Text around the document.
    #[derive(Clone, Copy, Debug)]
    enum Wrap {
        None,
        Whitespace,
        /// A UTF-8 byte order mark, which JSON (RFC 8259 §8.1) does not allow.
        Bom,
    }

    #[derive(Clone, Debug)]
    struct Doc {
        status: u16,
        content_type: Option<String>,
        access_token: Option<Hv>,
        token_type: Option<Hv>,
        expires_in: Option<(Hv, Life)>,
        scope: Option<Hv>,
        scopes: Option<Hv>,
        refresh_token: Option<Hv>,
        error: Option<Hv>,
        error_description: Option<Hv>,
        extra: Vec<(String, Hv)>,
        /// Field order: rotation, and whether reversed.
        order: (usize, bool),
        key_esc: Esc,
        ws: &'static str,
        trailing_comma: bool,
        wrap: Wrap,
    }

    fn write_str(out: &mut String, s: &str, esc: Esc) {
        out.push('"');
        for c in s.chars() {
            match (esc, c) {
                (Esc::Unicode, c) => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        write!(out, "\\u{unit:04X}").unwrap();
                    }
                }
                (Esc::Minimal, '"') => out.push_str("\\\""),
                (Esc::Minimal, '\\') => out.push_str("\\\\"),
                (Esc::Minimal, '\n') => out.push_str("\\n"),
                (Esc::Minimal, '\r') => out.push_str("\\r"),
                (Esc::Minimal, '\t') => out.push_str("\\t"),
                (Esc::Minimal, c) if u32::from(c) < 0x20 => {
                    write!(out, "\\u{:04x}", u32::from(c)).unwrap()
                }
                // DEL, C1 controls and everything else go out raw, as JSON allows.
                (Esc::Minimal, c) => out.push(c),
            }
        }
        out.push('"');
    }

    impl Hv {
        fn str(s: impl Into<String>) -> Hv {
            Hv::Str(s.into(), Esc::Minimal)
        }

        /// `strict`: without the trailing commas (the text the oracle checks is JSON).
        fn render(&self, out: &mut String, ws: &str, strict: bool) {
            match self {
                Hv::Num(t) => out.push_str(t),
                Hv::Str(s, esc) => write_str(out, s, *esc),
                Hv::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Hv::Null => out.push_str("null"),
                Hv::Arr(items, trailing) => {
                    out.push('[');
                    for (i, v) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                            out.push_str(ws);
                        }
                        v.render(out, ws, strict);
                    }
                    if *trailing && !strict && !items.is_empty() {
                        out.push(',');
                        out.push_str(ws);
                    }
                    out.push(']');
                }
                Hv::Obj(fields, trailing) => {
                    let fields: Vec<_> = fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
                    render_object(out, &fields, Esc::Minimal, ws, *trailing && !strict, strict);
                }
            }
        }
    }

    fn render_object(
        out: &mut String,
        fields: &[(&str, &Hv)],
        key_esc: Esc,
        ws: &str,
        trailing: bool,
        strict: bool,
    ) {
        out.push('{');
        out.push_str(ws);
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
                out.push_str(ws);
            }
            write_str(out, k, key_esc);
            out.push(':');
            out.push_str(ws);
            v.render(out, ws, strict);
        }
        if trailing && !fields.is_empty() {
            out.push(',');
            out.push_str(ws);
        }
        out.push('}');
    }

    impl Doc {
        fn fields(&self) -> Vec<(&str, &Hv)> {
            let known = [
                ("access_token", self.access_token.as_ref()),
                ("token_type", self.token_type.as_ref()),
                ("expires_in", self.expires_in.as_ref().map(|(v, _)| v)),
                ("scope", self.scope.as_ref()),
                ("scopes", self.scopes.as_ref()),
                ("refresh_token", self.refresh_token.as_ref()),
                ("error", self.error.as_ref()),
                ("error_description", self.error_description.as_ref()),
            ];
            let mut fields: Vec<(&str, &Hv)> = known
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .chain(self.extra.iter().map(|(k, v)| (k.as_str(), v)))
                .collect();
            if !fields.is_empty() {
                let n = self.order.0 % fields.len();
                fields.rotate_left(n);
            }
            if self.order.1 {
                fields.reverse();
            }
            fields
        }

        fn text(&self, strict: bool) -> String {
            let mut out = String::new();
            match self.wrap {
                Wrap::None => {}
                Wrap::Whitespace => out.push_str(" \r\n\t"),
                Wrap::Bom => out.push('\u{feff}'),
            }
            let trailing = self.trailing_comma && !strict;
            render_object(
                &mut out,
                &self.fields(),
                self.key_esc,
                self.ws,
                trailing,
                strict,
            );
            if let Wrap::Whitespace = self.wrap {
                out.push_str("\n ");
            }
            out
        }

        fn parse(&self) -> Result<TokenResponse, ProviderError> {
            let requested: Vec<String> = REQUESTED.iter().map(|s| (*s).to_owned()).collect();
            parse_token_response(
                self.status,
                self.content_type.as_deref(),
                self.text(false).as_bytes(),
                DEFAULT,
                &requested,
                SECRETS,
            )
        }
    }

    /// What the parser must answer, from the generator's knowledge of the document.
    #[derive(Debug)]
    enum Want {
        Ok {
            access_token: String,
            life: Life,
            scopes: Vec<String>,
            refresh_token: Option<String>,
        },
        /// Ok or BadResponse: `expires_in` is a string the generator did not classify.
        OkIfLifeValid {
            access_token: String,
        },
        OAuth {
            code: String,
            description: Option<String>,
        },
        Unavailable,
        Rejected,
        Refused,
        BadResponse,
    }

    fn visible(s: &str) -> bool {
        s.bytes().all(|b| (0x20..=0x7e).contains(&b))
    }

    /// The documented behaviour (module docs and the quirk tables above), as a model.
    fn want(doc: &Doc) -> Want {
        // Whether the body is a JSON object is serde_json's call, made on the text without
        // the trailing commas: the parser's leniency must make the two texts equivalent.
        let is_object = matches!(
            serde_json::from_str::<serde_json::Value>(&doc.text(true)),
            Ok(serde_json::Value::Object(_))
        );
        if is_object && let Some(Hv::Str(code, _)) = &doc.error {
            if doc.status >= 500 || doc.status == 429 {
                return Want::Unavailable;
            }
            let description = match &doc.error_description {
                Some(Hv::Str(d, _)) => Some(scrub(d, SECRETS)).filter(|d| !d.is_empty()),
                _ => None,
            };
            return Want::OAuth {
                code: scrub(code, SECRETS),
                description,
            };
        }
        match doc.status {
            200..=299 => {}
            401 | 403 => return Want::Rejected,
            429 | 500..=599 => return Want::Unavailable,
            _ => return Want::Refused,
        }
        if !is_object {
            return Want::BadResponse;
        }
        let access_token = match &doc.access_token {
            Some(Hv::Str(t, _)) if !t.trim().is_empty() && visible(t.trim()) => t.trim(),
            _ => return Want::BadResponse,
        };
        match &doc.token_type {
            None | Some(Hv::Null) => {}
            Some(Hv::Str(t, _)) if t.eq_ignore_ascii_case("bearer") => {}
            Some(_) => return Want::BadResponse,
        }
        let life = match &doc.expires_in {
            None => Life::Default,
            Some((_, Life::Invalid)) => return Want::BadResponse,
            Some((_, life)) => *life,
        };
        // `scope` wins over `scopes` whenever the key is there, even as null.
        let scopes: Vec<String> = match doc.scope.as_ref().or(doc.scopes.as_ref()) {
            None | Some(Hv::Null) => REQUESTED.iter().map(|s| (*s).to_owned()).collect(),
            Some(Hv::Str(s, _)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Hv::Arr(items, _)) => items
                .iter()
                .filter_map(|v| match v {
                    Hv::Str(s, _) => Some(s),
                    _ => None,
                })
                .flat_map(|s| s.split_whitespace())
                .map(str::to_owned)
                .collect(),
            Some(_) => return Want::BadResponse,
        };
        if scopes
            .iter()
            .any(|s| s.bytes().any(|b| !(0x21..=0x7e).contains(&b)))
        {
            return Want::BadResponse;
        }
        // A scope echoing a secret would reach callers and logs.
        let joined = scopes.join(" ");
        if SECRETS.iter().any(|s| joined.contains(s)) {
            return Want::BadResponse;
        }
        let refresh_token = match &doc.refresh_token {
            None | Some(Hv::Null) => None,
            // Blank counts as none issued, like the parser.
            Some(Hv::Str(t, _)) if t.trim().is_empty() => None,
            Some(Hv::Str(t, _)) if visible(t) => Some(t.clone()),
            Some(_) => return Want::BadResponse,
        };
        let access_token = access_token.to_owned();
        if let Life::Unknown = life {
            return Want::OkIfLifeValid { access_token };
        }
        Want::Ok {
            access_token,
            life,
            scopes,
            refresh_token,
        }
    }

    /// Whether `text` carries a planted secret, verbatim or JSON/Debug-escaped.
    fn leaks(text: &str) -> Option<&'static str> {
        SECRETS.iter().copied().find(|s| {
            let escaped = serde_json::to_string(s).unwrap();
            text.contains(s) || text.contains(&escaped[1..escaped.len() - 1])
        })
    }

    /// The invariants that hold whatever the model says.
    fn check_invariants(
        doc: &Doc,
        r: &Result<TokenResponse, ProviderError>,
    ) -> Result<(), TestCaseError> {
        let debug = format!("{r:?}");
        prop_assert!(leaks(&debug).is_none(), "secret in Debug: {debug}");
        match r {
            Ok(t) => {
                prop_assert!(
                    (200..=299).contains(&doc.status),
                    "Ok for HTTP {}",
                    doc.status
                );
                prop_assert!(
                    !matches!(doc.error, Some(Hv::Str(..))),
                    "Ok despite an error string"
                );
                prop_assert!(
                    t.expires_in >= Duration::from_secs(1) && t.expires_in <= MAX_LIFETIME,
                    "lifetime {:?}",
                    t.expires_in
                );
                let access = t.access_token.expose_secret();
                prop_assert!(
                    !access.is_empty() && visible(access),
                    "access token {access:?}"
                );
                if let Some(rt) = &t.refresh_token {
                    let rt = rt.expose_secret();
                    prop_assert!(!rt.is_empty() && visible(rt), "refresh token {rt:?}");
                }
                for s in &t.scopes {
                    prop_assert!(
                        !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                        "scope {s:?}"
                    );
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(leaks(&msg).is_none(), "secret in message: {msg}");
                prop_assert!(
                    !msg.chars().any(char::is_control),
                    "control character in {msg:?}"
                );
            }
        }
        Ok(())
    }

    fn check_lifetime(got: Duration, life: Life) -> Result<(), TestCaseError> {
        match life {
            Life::Default => prop_assert_eq!(got, DEFAULT),
            Life::Secs(v) => {
                let want = v.min(MAX_LIFETIME.as_secs_f64());
                prop_assert!(
                    (got.as_secs_f64() - want).abs() <= 1.0,
                    "expires_in {v} gave {got:?}"
                );
            }
            Life::Invalid | Life::Unknown => {}
        }
        Ok(())
    }

    /// The model's answer against the parser's.
    fn check_model(
        doc: &Doc,
        r: &Result<TokenResponse, ProviderError>,
    ) -> Result<(), TestCaseError> {
        use ProviderError as P;
        let want = want(doc);
        match (&want, r) {
            (
                Want::Ok {
                    access_token,
                    life,
                    scopes,
                    refresh_token,
                },
                Ok(t),
            ) => {
                prop_assert_eq!(t.access_token.expose_secret(), access_token.as_str());
                prop_assert_eq!(&t.scopes, scopes);
                prop_assert_eq!(
                    t.refresh_token.as_ref().map(|r| r.expose_secret()),
                    refresh_token.as_deref()
                );
                check_lifetime(t.expires_in, *life)?;
            }
            (Want::OkIfLifeValid { access_token }, Ok(t)) => {
                prop_assert_eq!(t.access_token.expose_secret(), access_token.as_str());
            }
            (Want::OkIfLifeValid { .. }, Err(P::BadResponse { .. })) => {}
            (
                Want::OAuth { code, description },
                Err(P::OAuth {
                    status,
                    code: c,
                    description: d,
                }),
            ) => {
                prop_assert_eq!(*status, doc.status);
                prop_assert_eq!(c, code);
                prop_assert_eq!(d, description);
            }
            (Want::Unavailable, Err(P::Unavailable { .. }))
            | (Want::Rejected, Err(P::Rejected { .. }))
            | (Want::Refused, Err(P::Refused { .. }))
            | (Want::BadResponse, Err(P::BadResponse { .. })) => {}
            _ => prop_assert!(false, "wanted {want:?}, got {r:?}"),
        }
        Ok(())
    }

    // ---- generators ----

    /// Number literals written verbatim; some are not JSON.
    const NUMBER_LITERALS: &[&str] = &[
        "0",
        "-0",
        "0.0",
        "-0.0",
        "0.5",
        "0.999999",
        "1",
        "1.0",
        "1.5",
        "59.9",
        "3599",
        "3600",
        "86400",
        "1E3",
        "1e+3",
        "100e-2",
        "0.0000001e10",
        "1e20",
        "1e308",
        "1.7976931348623157e308",
        "1e309",
        "1e400",
        "-1e400",
        "1e-300",
        "1e-400",
        "4.9e-324",
        "99999999999",
        "31622399.5",
        "31622400",
        "31622400.9",
        "31622401",
        "18446744073709551615",
        "18446744073709551616",
        "123456789012345678901234567890",
        "9223372036854775807",
        "-9223372036854775808",
        "-1",
        "-5",
        // not JSON
        "NaN",
        "Infinity",
        "-Infinity",
        "+1",
        "01",
        ".5",
        "5.",
        "0x10",
        "1e",
        "--1",
    ];

    fn number_literal() -> BoxedStrategy<String> {
        prop_oneof![
            4 => prop::sample::select(NUMBER_LITERALS).prop_map(str::to_owned),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            2 => (1u64..200_000).prop_map(|n| n.to_string()),
            1 => any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            1 => (0.0f64..1e8).prop_map(|f| f.to_string()),
            1 => (-20i32..1000, -400i32..400).prop_map(|(m, e)| format!("{m}e{e}")),
        ]
        .boxed()
    }

    /// What a number literal means as `expires_in` (Rust's correctly rounded parse: the
    /// parser itself goes through serde_json, which may differ in the last bit).
    fn life_of(text: &str) -> Life {
        match text.parse::<f64>() {
            // serde_json's less exact parse may land on either side of 1.
            Ok(v) if (v - 1.0).abs() < 1e-9 => Life::Unknown,
            Ok(v) if v.is_finite() && v >= 1.0 => Life::Secs(v),
            // Not finite, below 1, or not a number (then the body is not JSON either).
            _ => Life::Invalid,
        }
    }

    /// String-encoded numbers and what each means as `expires_in`.
    const NUMERIC_STRINGS: &[(&str, Life)] = &[
        ("1e30", Life::Secs(1e30)),
        (" 3600 ", Life::Secs(3600.0)),
        ("+3600", Life::Secs(3600.0)),
        ("3600\n", Life::Secs(3600.0)),
        ("\u{a0}60", Life::Secs(60.0)),
        ("\u{3000}60\u{2003}", Life::Secs(60.0)),
        ("59.9", Life::Secs(59.9)),
        ("5.", Life::Secs(5.0)),
        (".5e1", Life::Secs(5.0)),
        (
            "18446744073709551616",
            Life::Secs(18_446_744_073_709_551_616.0),
        ),
        ("NaN", Life::Invalid),
        ("nan", Life::Invalid),
        ("inf", Life::Invalid),
        ("-inf", Life::Invalid),
        ("infinity", Life::Invalid),
        ("1e400", Life::Invalid),
        ("-1", Life::Invalid),
        ("0", Life::Invalid),
        ("-0", Life::Invalid),
        ("0.5", Life::Invalid),
        ("1e-300", Life::Invalid),
        ("0x10", Life::Invalid),
        ("3600s", Life::Invalid),
        ("1_000", Life::Invalid),
        ("1 000", Life::Invalid),
        ("36OO", Life::Invalid),
        ("soon", Life::Invalid),
        ("\u{feff}60", Life::Invalid),
        ("\u{200b}60", Life::Invalid),
        ("\u{0}60", Life::Invalid),
        ("", Life::Default),
        (" ", Life::Default),
        ("\t\r\n", Life::Default),
        ("\u{2028}", Life::Default),
        ("\u{3000}", Life::Default),
    ];

    /// Pieces of hostile text.
    fn fragments() -> Vec<String> {
        [
            "\u{0}",
            "\r\n",
            "\n",
            "\r",
            "\t",
            "\u{7}",
            "\u{1b}[31m",
            "\u{7f}",
            "\u{85}",
            "\u{9b}",
            "é",
            "\u{a0}",
            "\u{2028}",
            "\u{202e}",
            "\u{feff}",
            "\u{3000}",
            "\u{200b}",
            "\u{1F600}",
            ",}",
            ",]",
            ", }",
            "\"",
            "\\",
            "\\\"",
            "/",
            " ",
            "tok",
            "Bearer",
            SECRET,
            QUOTED_SECRET,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Whole hostile strings, including very long ones and secrets placed to be cut by the
    /// 200-character truncation of echoed text.
    fn fixed_texts() -> Vec<String> {
        vec![
            String::new(),
            " ".into(),
            "A\r\nX-Injected: 1".into(),
            "\u{a0}tok\u{a0}".into(),
            "\u{feff}tok".into(),
            "t\u{e9}".into(),
            "a b".into(),
            " padded ".into(),
            "bearer".into(),
            "mac".into(),
            "x".repeat(70_000),
            "A".repeat(5_000),
            SECRET.into(),
            QUOTED_SECRET.into(),
            format!("bad {SECRET} here"),
            format!("{}{SECRET}", "x".repeat(190)),
            format!("{}{QUOTED_SECRET}", "y".repeat(193)),
            format!("{}{SECRET}", "z".repeat(300)),
            format!("\n{SECRET}\u{7}"),
            format!("{SECRET}{SECRET}"),
        ]
    }

    /// Text carrying a planted secret, whole or where the 200-character truncation of
    /// echoed text cuts it.
    fn secret_text() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            SECRET.to_owned(),
            QUOTED_SECRET.to_owned(),
            format!("bad {SECRET} here"),
            format!("x:{QUOTED_SECRET}"),
            format!("{}{SECRET}", "x".repeat(190)),
            format!("{}{QUOTED_SECRET}", "y".repeat(193)),
            format!("\n{SECRET}\u{7}"),
        ])
    }

    /// Containers holding a secret, which an echo of their JSON text would show escaped.
    fn secret_container() -> impl Strategy<Value = Hv> {
        prop::sample::select(vec![
            Hv::Arr(vec![Hv::str(QUOTED_SECRET)], false),
            Hv::Obj(vec![(QUOTED_SECRET.to_owned(), Hv::Num("1".into()))], false),
            Hv::Obj(
                vec![("k".into(), Hv::str(format!("x {QUOTED_SECRET}")))],
                true,
            ),
            Hv::Arr(vec![Hv::Null, Hv::str(SECRET)], true),
        ])
    }

    fn hostile_text() -> BoxedStrategy<String> {
        prop_oneof![
            3 => prop::sample::select(fixed_texts()),
            2 => "[ -~]{0,40}",
            2 => "[\\x00-\\x7f]{0,24}",
            1 => "\\PC{0,24}",
            1 => ".{0,16}",
            3 => prop::collection::vec(
                prop_oneof![prop::sample::select(fragments()), "[ -~]{1,8}"],
                1..5
            )
            .prop_map(|v| v.concat()),
        ]
        .boxed()
    }

    fn esc() -> impl Strategy<Value = Esc> {
        prop_oneof![4 => Just(Esc::Minimal), 1 => Just(Esc::Unicode)]
    }

    fn string_value(s: impl Strategy<Value = String>) -> impl Strategy<Value = Hv> {
        (s, esc()).prop_map(|(s, e)| Hv::Str(s, e))
    }

    /// Any hostile value: numbers, numeric strings, text, wrong types, nested values.
    fn hostile_value() -> BoxedStrategy<Hv> {
        let leaf = prop_oneof![
            2 => number_literal().prop_map(Hv::Num),
            1 => prop::sample::select(NUMERIC_STRINGS).prop_map(|(s, _)| Hv::str(s)),
            4 => string_value(hostile_text()),
            1 => string_value(secret_text()),
            1 => any::<bool>().prop_map(Hv::Bool),
            1 => Just(Hv::Null),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..4), any::<bool>())
                    .prop_map(|(v, t)| Hv::Arr(v, t)),
                (
                    prop::collection::vec((extra_key(), inner), 0..4),
                    any::<bool>()
                )
                    .prop_map(|(v, t)| Hv::Obj(v, t)),
            ]
        })
        .boxed()
    }

    /// Keys of unknown fields (also used inside nested objects): none is a known field name.
    fn extra_key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "id_token".to_owned(),
                "ext".to_owned(),
                "Access_Token".to_owned(),
                "access_token ".to_owned(),
                "expires_in\u{0}".to_owned(),
                "".to_owned(),
                SECRET.to_owned(),
                QUOTED_SECRET.to_owned(),
            ]),
            "[a-z_]{1,12}",
        ]
        .prop_filter("a known field", |k| {
            ![
                "access_token",
                "token_type",
                "expires_in",
                "scope",
                "scopes",
                "refresh_token",
                "error",
                "error_description",
            ]
            .contains(&k.as_str())
        })
    }

    /// A token field: often a plausible token, otherwise hostile.
    fn token_value() -> BoxedStrategy<Hv> {
        prop_oneof![
            3 => string_value("[A-Za-z0-9._~+/=-]{1,80}"),
            1 => string_value("[ -~]{0,20}"),
            3 => hostile_value(),
        ]
        .boxed()
    }

    fn token_type_value() -> BoxedStrategy<Hv> {
        prop_oneof![
            4 => string_value(prop::sample::select(vec![
                "Bearer".to_owned(),
                "bearer".to_owned(),
                "BEARER".to_owned(),
                "bEaReR".to_owned(),
            ])),
            1 => string_value(prop::sample::select(vec![
                " Bearer".to_owned(),
                "Bearer\u{0}".to_owned(),
                "mac".to_owned(),
                "DPoP".to_owned(),
            ])),
            1 => secret_container(),
            2 => hostile_value(),
        ]
        .boxed()
    }

    fn expires_in_value() -> BoxedStrategy<(Hv, Life)> {
        prop_oneof![
            4 => number_literal().prop_map(|t| {
                let life = life_of(&t);
                (Hv::Num(t), life)
            }),
            2 => prop::sample::select(NUMERIC_STRINGS).prop_map(|(s, l)| (Hv::str(s), l)),
            // A JSON number inside a string, padded with whitespace `trim` removes.
            1 => (
                number_literal(),
                prop::sample::select(vec!["", " ", "\t", "\u{a0}"]),
                esc()
            )
                .prop_map(|(t, pad, e)| {
                    let life = life_of(&t);
                    (Hv::Str(format!("{pad}{t}{pad}"), e), life)
                }),
            1 => Just((Hv::Null, Life::Default)),
            2 => hostile_value().prop_map(|v| {
                let life = match &v {
                    Hv::Num(t) => life_of(t),
                    Hv::Str(..) => Life::Unknown,
                    Hv::Null => Life::Default,
                    Hv::Bool(_) | Hv::Arr(..) | Hv::Obj(..) => Life::Invalid,
                };
                (v, life)
            }),
        ]
        .boxed()
    }

    fn scope_value() -> BoxedStrategy<Hv> {
        let word = "[a-z:_.]{1,10}";
        prop_oneof![
            3 => string_value(prop::collection::vec(word, 0..5).prop_map(|w| w.join(" "))),
            1 => string_value(
                prop::collection::vec(
                    (word, prop::sample::select(vec![" ", "  ", "\t", "\n", "\u{a0}", "\u{3000}"])),
                    0..4
                )
                .prop_map(|w| w.into_iter().map(|(w, s)| format!("{w}{s}")).collect())
            ),
            2 => (
                prop::collection::vec(
                    prop_oneof![3 => string_value(word), 1 => hostile_value()],
                    0..4
                ),
                any::<bool>()
            )
                .prop_map(|(v, t)| Hv::Arr(v, t)),
            // A provider echoing the client secret as a granted scope.
            1 => string_value(prop::sample::select(vec![
                SECRET.to_owned(),
                format!("read {SECRET}"),
                format!("x:{QUOTED_SECRET}"),
            ])),
            3 => hostile_value(),
        ]
        .boxed()
    }

    fn error_value() -> BoxedStrategy<Hv> {
        prop_oneof![
            2 => string_value(prop::sample::select(vec![
                "invalid_client".to_owned(),
                "invalid_grant".to_owned(),
                "temporarily_unavailable".to_owned(),
            ])),
            3 => string_value(hostile_text()),
            2 => hostile_value(),
        ]
        .boxed()
    }

    fn status() -> impl Strategy<Value = u16> {
        prop_oneof![
            6 => Just(200u16),
            1 => Just(400),
            1 => Just(401),
            1 => Just(403),
            1 => Just(429),
            1 => Just(500),
            1 => Just(503),
        ]
    }

    fn wrap() -> impl Strategy<Value = Wrap> {
        prop_oneof![7 => Just(Wrap::None), 2 => Just(Wrap::Whitespace), 1 => Just(Wrap::Bom)]
    }

    fn content_type() -> impl Strategy<Value = Option<String>> {
        prop::sample::select(vec![
            Some("application/json".to_owned()),
            None,
            Some("text/html; charset=utf-8".to_owned()),
            Some("text/html\r\nX-Injected: 1".to_owned()),
            Some(format!("application/json; x={SECRET}")),
            Some(format!("text/plain; x={QUOTED_SECRET}")),
        ])
    }

    /// Half the documents have every field hostile (mostly refused: they test the error
    /// paths), half are plausible but for one hostile field (they reach the Ok path with it).
    fn doc() -> impl Strategy<Value = Doc> {
        prop_oneof![hostile_doc(), one_hostile_field()]
    }

    fn plausible_doc() -> impl Strategy<Value = Doc> {
        use prop::option::weighted;
        // Tokens are plausible, a few with `,}`/`,]` (and an escaped quote before them)
        // inside the string: the trailing-comma leniency must leave those alone.
        let access_token = prop_oneof![
            9 => string_value("[A-Za-z0-9._~+/=-]{1,80}"),
            1 => string_value(prop::sample::select(vec![
                "a,}".to_owned(),
                "b, ]".to_owned(),
                r#"c",}"#.to_owned(),
                r#"d\,]"#.to_owned(),
            ])),
        ];
        let bearer = prop::sample::select(vec!["Bearer", "bearer"]).prop_map(str::to_owned);
        let seconds = (1u64..200_000).prop_map(|n| (Hv::Num(n.to_string()), Life::Secs(n as f64)));
        let scope = prop::collection::vec("[a-z:_.]{1,10}", 0..4).prop_map(|w| w.join(" "));
        let extra = (extra_key(), string_value("[ -~]{0,12}"));
        (
            (
                prop_oneof![8 => Just(200u16), 1 => status()],
                content_type(),
                access_token,
                weighted(0.5, string_value(bearer)),
                weighted(0.7, seconds),
                weighted(0.5, string_value(scope)),
                weighted(0.3, string_value("[A-Za-z0-9._~+/=-]{1,80}")),
            ),
            (
                prop::collection::vec(extra, 0..2),
                (any::<usize>(), any::<bool>()),
                prop_oneof![5 => Just(Esc::Minimal), 1 => Just(Esc::Unicode)],
                prop::sample::select(vec!["", " ", "\n  ", "\t"]),
                prop::bool::weighted(0.3),
                wrap(),
            ),
        )
            .prop_map(|(head, tail)| {
                let (status, ct, access_token, token_type, expires_in, scope, rt) = head;
                let (extra, order, key_esc, ws, trailing_comma, wrap) = tail;
                Doc {
                    status,
                    content_type: ct,
                    access_token: Some(access_token),
                    token_type,
                    expires_in,
                    scope,
                    scopes: None,
                    refresh_token: rt,
                    error: None,
                    error_description: None,
                    extra,
                    order,
                    key_esc,
                    ws,
                    trailing_comma,
                    wrap,
                }
            })
    }

    /// A plausible document with one field replaced by (or added as) a hostile value.
    fn one_hostile_field() -> impl Strategy<Value = Doc> {
        (
            plausible_doc(),
            0..9usize,
            prop_oneof![
                2 => hostile_value(),
                1 => string_value(secret_text()),
                1 => secret_container(),
            ],
            expires_in_value(),
            error_value(),
        )
            .prop_map(|(mut doc, field, value, expires_in, error)| {
                match field {
                    0 => doc.access_token = Some(value),
                    1 => doc.token_type = Some(value),
                    2 => doc.expires_in = Some(expires_in),
                    3 => doc.scope = Some(value),
                    4 => {
                        doc.scope = None;
                        doc.scopes = Some(value);
                    }
                    5 => doc.refresh_token = Some(value),
                    6 => doc.error = Some(error),
                    7 => doc.error_description = Some(value),
                    _ => doc.extra.push(("ext".to_owned(), value)),
                }
                doc
            })
    }

    fn hostile_doc() -> impl Strategy<Value = Doc> {
        use prop::option::weighted;
        (
            (
                status(),
                content_type(),
                weighted(0.9, token_value()),
                weighted(0.5, token_type_value()),
                weighted(0.8, expires_in_value()),
                weighted(0.4, scope_value()),
                weighted(0.15, scope_value()),
                weighted(0.3, token_value()),
            ),
            (
                weighted(0.2, error_value()),
                weighted(0.3, string_value(hostile_text()).boxed()),
                prop::collection::vec((extra_key(), hostile_value()), 0..3),
                (any::<usize>(), any::<bool>()),
                prop_oneof![5 => Just(Esc::Minimal), 1 => Just(Esc::Unicode)],
                prop::sample::select(vec!["", " ", "\n  ", "\t"]),
                prop::bool::weighted(0.3),
                wrap(),
            ),
        )
            .prop_map(|(head, tail)| {
                let (status, ct, access_token, token_type, expires_in, scope, scopes, rt) = head;
                let (error, error_description, extra, order, key_esc, ws, trailing_comma, wrap) =
                    tail;
                Doc {
                    status,
                    content_type: ct,
                    access_token,
                    token_type,
                    expires_in,
                    scope,
                    scopes,
                    refresh_token: rt,
                    error,
                    error_description,
                    extra,
                    order,
                    key_esc,
                    ws,
                    trailing_comma,
                    wrap,
                }
            })
    }

    /// Only `access_token` (plausible) and `expires_in`, at 200: the number paths.
    fn lifetime_doc() -> impl Strategy<Value = Doc> {
        (expires_in_value(), any::<bool>(), any::<bool>()).prop_map(|(e, trailing, rev)| Doc {
            status: 200,
            content_type: Some("application/json".into()),
            access_token: Some(Hv::str("t")),
            token_type: None,
            expires_in: Some(e),
            scope: None,
            scopes: None,
            refresh_token: None,
            error: None,
            error_description: None,
            extra: vec![],
            order: (0, rev),
            key_esc: Esc::Minimal,
            ws: "",
            trailing_comma: trailing,
            wrap: Wrap::None,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Token-response-shaped objects with hostile fields: no panic; the invariants on Ok
        /// (lifetime bounds, visible-ASCII tokens and scopes) and on Err (no secret, no
        /// control character); and the answer the documented behaviour calls for (error
        /// kind by status and `error` field, scrubbed OAuth code, tokens as sent, lifetime
        /// = min(expires_in, 366 d) within 1 s, or the default).
        #[test]
        fn structured_responses(doc in doc()) {
            let r = doc.parse();
            check_invariants(&doc, &r)?;
            check_model(&doc, &r)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// `expires_in` alone, over every number and numeric-string generator: a valid
        /// positive number ≥ 1 gives min(value, 366 d) (within 1 s), blank/null the default,
        /// anything else BadResponse; never a panic.
        #[test]
        fn lifetimes(doc in lifetime_doc()) {
            let r = doc.parse();
            check_invariants(&doc, &r)?;
            check_model(&doc, &r)?;
        }
    }

    /// The generator reaches every outcome: a property that only ever sees BadResponse
    /// proves nothing. Counts over a fixed-seed sample.
    #[test]
    fn generator_reaches_every_outcome() {
        let mut runner = TestRunner::deterministic();
        let strategy = doc();
        let (mut ok, mut ok_given, mut clamped, mut oauth, mut bad_life) = (0, 0, 0, 0, 0);
        let (mut not_json, mut trailing_ok, mut unavailable, mut rejected) = (0, 0, 0, 0);
        let mut not_visible = 0;
        let n = 2_000;
        for _ in 0..n {
            let doc = strategy.new_tree(&mut runner).unwrap().current();
            let r = doc.parse();
            let is_object = serde_json::from_str::<serde_json::Value>(&doc.text(true)).is_ok();
            not_json += usize::from(!is_object);
            match &r {
                Ok(t) => {
                    ok += 1;
                    trailing_ok += usize::from(doc.trailing_comma);
                    if let Some((_, Life::Secs(_))) = doc.expires_in {
                        ok_given += 1;
                        clamped += usize::from(t.expires_in == MAX_LIFETIME);
                    }
                }
                Err(ProviderError::OAuth { .. }) => oauth += 1,
                Err(ProviderError::Unavailable { .. }) => unavailable += 1,
                Err(ProviderError::Rejected { .. }) => rejected += 1,
                Err(ProviderError::BadResponse { reason }) => {
                    bad_life += usize::from(reason.contains("expires_in"));
                    not_visible += usize::from(reason.contains("visible ASCII"));
                }
                Err(ProviderError::Refused { .. }) => {}
            }
        }
        let counts = format!(
            "ok {ok}, ok with a given lifetime {ok_given}, clamped {clamped}, oauth {oauth}, \
             bad expires_in {bad_life}, not JSON {not_json}, ok with trailing comma \
             {trailing_ok}, unavailable {unavailable}, rejected {rejected}, refused as not \
             visible ASCII {not_visible} (of {n})"
        );
        for (what, count, at_least) in [
            ("ok", ok, n / 10),
            ("ok with a given lifetime", ok_given, n / 50),
            ("clamped", clamped, 5),
            ("oauth", oauth, n / 50),
            ("bad expires_in", bad_life, n / 50),
            ("not JSON", not_json, n / 50),
            ("ok with trailing comma", trailing_ok, 5),
            ("unavailable", unavailable, n / 50),
            ("rejected", rejected, n / 50),
            ("refused as not visible ASCII", not_visible, n / 100),
        ] {
            assert!(count >= at_least, "{what}: {counts}");
        }
        println!("{counts}");
    }
}
