//! Fuzzes `parse_token_response`, the lenient parser of OAuth token endpoint answers (input
//! from third-party providers, so hostile).
//!
//! Input layout: the first byte chooses the HTTP status (low 4 bits, [`STATUSES`]) and the
//! Content-Type (bits 4-5, [`CONTENT_TYPES`]); the rest is the body. A first byte of `' '`
//! (0x20) means 200 + `application/json`, so a seed is a space followed by a JSON body.
//!
//! Checked on every input: no panic; an `Ok` only for a 2xx status, with a lifetime in
//! [1 s, 366 d], an access token that is non-empty visible ASCII (`%x20-7E`), a refresh
//! token (if any) likewise, scopes of visible ASCII without spaces; an error kind that fits
//! the status; no error message with a control character; the planted client secret never
//! in an error message nor in the `Debug` output of the result.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use tokenvend_core::oauth::{ProviderError, parse_token_response};

/// Indexed by the low 4 bits of the first byte (`' '` = 0x20 → 200).
const STATUSES: [u16; 16] = [
    200, 201, 400, 401, 403, 429, 500, 503, 200, 204, 302, 404, 405, 502, 299, 418,
];

/// Indexed by bits 4-5 of the first byte (0x20..=0x2F → index 2).
const CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    // Provider text too: control characters and the planted secret must not reach messages.
    Some("text/html\r\nX-Echo: Zz9-planted-secret-Qq7"),
    Some("application/json"),
    Some("application/json; charset=utf-8"),
];

const SECRET: &str = "Zz9-planted-secret-Qq7";
const DEFAULT: Duration = Duration::from_secs(3600);
const MAX_LIFETIME: Duration = Duration::from_secs(366 * 86_400);

fn visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(selector & 0x0f)];
    let content_type = CONTENT_TYPES[usize::from((selector >> 4) & 0x03)];
    let requested = ["req".to_owned(), "a:b".to_owned()];
    let result = parse_token_response(status, content_type, body, DEFAULT, &requested, &[SECRET]);

    let debug = format!("{result:?}");
    assert!(!debug.contains(SECRET), "secret in Debug: {debug}");
    match result {
        Ok(t) => {
            assert!((200..=299).contains(&status), "Ok for HTTP {status}");
            assert!(
                t.expires_in >= Duration::from_secs(1) && t.expires_in <= MAX_LIFETIME,
                "lifetime {:?}",
                t.expires_in
            );
            let access = t.access_token.expose_secret();
            assert!(
                !access.is_empty() && visible_ascii(access),
                "access token {access:?}"
            );
            if let Some(r) = &t.refresh_token {
                let r = r.expose_secret();
                assert!(!r.is_empty() && visible_ascii(r), "refresh token {r:?}");
            }
            for s in &t.scopes {
                assert!(
                    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                    "scope {s:?}"
                );
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains(SECRET), "secret in message: {msg}");
            assert!(!msg.chars().any(char::is_control), "control char: {msg:?}");
            match e {
                ProviderError::Rejected { status: s } => {
                    assert!(s == status && matches!(s, 401 | 403))
                }
                ProviderError::Refused { status: s } => {
                    assert!(
                        s == status && (400..=499).contains(&s) && !matches!(s, 401 | 403 | 429)
                    )
                }
                ProviderError::Unavailable { .. } => assert!(status == 429 || status >= 500),
                ProviderError::OAuth { status: s, .. } => {
                    assert!(s == status && s < 500 && s != 429)
                }
                ProviderError::BadResponse { .. } => {}
            }
        }
    }
});
