//! The documentation's grpcurl commands, run as written: every `grpcurl` (and `tv` alias)
//! command of README.md's ```sh blocks and of the Helm chart's NOTES.txt is extracted and run,
//! in document order, with a real grpcurl-compatible client (grpcurl-rs, installed by
//! scripts/install-grpcurl) through `/bin/sh`, against the real binary started with the README's
//! bootstrap key.
//!
//! What the test changes before running a command, and nothing else:
//! - the address: `localhost:50051` becomes the test server's port (`tokenvend.internal:50051`,
//!   the mTLS example's address, becomes the TLS test server's `127.0.0.1:PORT`);
//! - provider endpoints: a connection's `token_url` (and, for catalog templates, which name
//!   real providers' hosts, an added `token_url` and `revocation_url`) point at a wiremock
//!   provider, so nothing leaves the machine;
//! - placeholders (`"…"`, `<the rejected token>`, `<key id>`, …) in a request's JSON become
//!   real values: a state or key id from an earlier answer, the token currently served, or a
//!   test credential. A placeholder the test does not know fails it.
//!
//! Each command must exit 0 and answer what the docs say (a `# {…}` sample after a command is
//! matched field by field, `…`/`...` matching anything), plus a check of its effect per method.
//! The list of commands is pinned ([`README_COMMANDS`], [`NOTES_COMMANDS`]): a command added
//! to or removed from the docs fails the test until it is taught how to run it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine;
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{method, path},
};

use crate::{
    mtls::new_ca,
    support::{Client, Opts, Server, answer, form, public_url, wait_until},
};

const README: &str = include_str!("../../README.md");
const NOTES: &str = include_str!("../../helm/tokenvend/templates/NOTES.txt");

/// Every grpcurl command of README.md, in order, as [`Command::describe`] names them.
const README_COMMANDS: &[&str] = &[
    // Walkthrough with grpcurl
    "list",
    "describe tokenvend.v1.TokenService",
    "AdminService/CreateTenant acme",
    "AdminService/PutConnection acme/enode",
    "TokenService/GetToken acme/enode",
    "TokenService/GetToken acme/enode",
    "TokenService/InvalidateToken acme/enode",
    "AdminService/ListConnections acme",
    "AdminService/GetConnection acme/enode",
    "AdminService/ListTenants",
    "AdminService/DeleteConnection acme/enode",
    "AdminService/DeleteTenant acme",
    "Health/Check",
    // Providers: the catalog
    "AdminService/PutConnection acme/edrv",
    "TokenService/InvalidateToken acme/edrv",
    "AdminService/PutConnection acme/edrv",
    "AdminService/PutConnection acme/depotfinity",
    "AdminService/PutConnection acme/evenergy",
    "AdminService/PutConnection acme/enode",
    "AdminService/RotateClientSecret acme/enode",
    "TokenService/GetToken acme/enode",
    // End users
    "AdminService/StartAuthorization acme/evenergy/driver-42",
    "AdminService/CompleteAuthorization",
    "TokenService/GetToken acme/evenergy/driver-42",
    "AdminService/ListConnectionGrants acme/evenergy",
    "AdminService/GetGrant acme/evenergy/driver-42",
    "AdminService/RevokeGrant acme/evenergy/driver-42",
    // Security: callers
    "AdminService/CreatePrincipal",
    "AdminService/GrantPermission acme/enode",
    "AdminService/CreateApiKey",
    "AdminService/ListApiKeys",
    "AdminService/ListPermissions acme",
    "AdminService/ListPrincipals",
    "AdminService/RevokeApiKey",
    "AdminService/RevokePermission acme/enode",
    "AdminService/DeletePrincipal",
    "AdminService/ListAuditEvents acme",
    // Security: TLS and mTLS (run against a TLS server with a client certificate)
    "TokenService/GetToken acme/enode [tls]",
];

/// The grpcurl commands of NOTES.txt: the TLS branch, then the plaintext one.
const NOTES_COMMANDS: &[&str] = &[
    "list [tls]",
    "TokenService/GetToken acme/enode [tls]",
    "list",
    "TokenService/GetToken acme/enode",
];

/// The chart's defaults, as NOTES.txt is rendered for the test.
const RELEASE: &str = "tokenvend";
const NAMESPACE: &str = "default";

// ---------------------------------------------------------------- the grpcurl binary

/// The grpcurl binary: `TOKENVEND_GRPCURL` (scripts/test sets it), else `grpcurl` on PATH.
/// Not finding it fails the test: the docs' commands must be checked.
fn grpcurl_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TOKENVEND_GRPCURL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TOKENVEND_GRPCURL={} is not a file; run scripts/install-grpcurl",
            p.display()
        );
        return p;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("grpcurl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no grpcurl: set TOKENVEND_GRPCURL to the binary scripts/install-grpcurl prints \
                 (TOKENVEND_GRPCURL=$(scripts/install-grpcurl) cargo test …), or put grpcurl on \
                 PATH; scripts/test does this"
            )
        })
}

// ---------------------------------------------------------------- extraction

/// A shell word list, as `sh` would split it: quotes removed, `$NAME` expanded from `vars`
/// outside single quotes, backslash-newline joined. Operators (`;`, `|`, `&`, `<`, `>`) and
/// command substitutions are not supported: they come back as errors so such a line is never
/// taken for a plain command.
fn shell_words(text: &str, vars: &HashMap<String, String>) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars>, cur: &mut String| {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        match vars.get(&name) {
            Some(v) if !name.is_empty() => {
                cur.push_str(v);
                Ok(())
            }
            _ => Err(format!("unknown or unsupported expansion ${name}")),
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated \"".into()),
                        },
                        Some('$') => expand(&mut chars, &mut cur)?,
                        Some('`') => return Err("command substitution".into()),
                        Some(c) => cur.push(c),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    cur.push(c);
                }
                None => return Err("trailing backslash".into()),
            },
            '$' => {
                in_word = true;
                expand(&mut chars, &mut cur)?;
            }
            '#' if !in_word => break,
            ';' | '|' | '&' | '<' | '>' | '`' | '(' | ')' => {
                return Err(format!("shell operator {c:?}"));
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Whether `text` is a complete shell line: no open quote, no trailing backslash.
fn complete(text: &str) -> bool {
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            _ => {}
        }
    }
    !single && !double && !escaped
}

/// One logical shell line of a snippet: its text as written (continuations and multi-line
/// quotes kept), where it starts, the comment lines right before it and right after it.
#[derive(Debug, Clone)]
struct Line {
    source: &'static str,
    line: usize,
    text: String,
    before: Vec<String>,
    after: Vec<String>,
}

/// The logical lines of a shell snippet whose first line is line `first` of `source`.
fn logical_lines(source: &'static str, first: usize, snippet: &[&str]) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut before: Vec<String> = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    // Comments after the last line, until a blank line or the next command.
    let mut trailing = true;
    for (i, raw) in snippet.iter().enumerate() {
        if let Some((start, mut text)) = cur.take() {
            text.push('\n');
            text.push_str(raw);
            if complete(&text) {
                out.push(Line {
                    source,
                    line: start,
                    text,
                    before: std::mem::take(&mut before),
                    after: Vec::new(),
                });
                trailing = true;
            } else {
                cur = Some((start, text));
            }
            continue;
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            trailing = false;
            before.clear();
        } else if let Some(comment) = trimmed.strip_prefix('#') {
            // Between two commands a comment is both: the first's answer or the second's
            // introduction.
            let comment = comment.trim().to_owned();
            if let Some(last) = out.last_mut().filter(|_| trailing) {
                last.after.push(comment.clone());
            }
            before.push(comment);
        } else if complete(raw) {
            out.push(Line {
                source,
                line: first + i,
                text: (*raw).to_owned(),
                before: std::mem::take(&mut before),
                after: Vec::new(),
            });
            trailing = true;
        } else {
            cur = Some((first + i, (*raw).to_owned()));
        }
    }
    assert!(cur.is_none(), "{source}: unterminated shell line {cur:?}");
    out
}

/// The logical lines of every ```sh block of a Markdown document, in order.
fn markdown_sh_lines(source: &'static str, doc: &str) -> Vec<Line> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let opening = lines[i].trim_start();
        if opening == "```sh" || opening == "```bash" || opening == "```shell" {
            let indent = lines[i].len() - opening.len();
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim() != "```" {
                end += 1;
            }
            let body: Vec<&str> = lines[start..end]
                .iter()
                .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
                .collect();
            out.extend(logical_lines(source, start + 1, &body));
            i = end + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// NOTES.txt as Helm would render it, for the two branches the test runs: template
/// directives dropped, values by simple substitution.
fn notes_lines(grpc_port: u16) -> Vec<Line> {
    let rendered: Vec<String> = NOTES
        .lines()
        .map(|l| {
            l.replace("{{ .Values.service.grpcPort }}", &grpc_port.to_string())
                .replace("{{ .Values.service.httpPort }}", "8080")
                .replace("{{ $fullname }}", RELEASE)
                .replace("{{ .Release.Namespace }}", NAMESPACE)
        })
        .collect();
    // Only the lines that are commands: the rest of the notes is prose.
    let mut out = Vec::new();
    let mut i = 0;
    while i < rendered.len() {
        let t = rendered[i].trim_start();
        if t.starts_with("grpcurl") {
            let start = i;
            let mut text = t.to_owned();
            while !complete(&text) {
                i += 1;
                text.push('\n');
                text.push_str(&rendered[i]);
            }
            assert!(
                !text.contains("{{"),
                "NOTES.txt line {}: a template expression the test does not render: {text}",
                start + 1
            );
            out.push(Line {
                source: "helm/tokenvend/templates/NOTES.txt",
                line: start + 1,
                text,
                before: Vec::new(),
                after: Vec::new(),
            });
        } else {
            assert!(
                !t.contains("grpcurl ") || !t.contains(" -d "),
                "NOTES.txt line {}: a grpcurl command not at the start of a line: {t}",
                i + 1
            );
        }
        i += 1;
    }
    out
}

/// A grpcurl command, analysed.
#[derive(Debug, Clone)]
struct Command {
    line: Line,
    /// Shell lines to run first: the document's variable assignments and aliases so far.
    prelude: String,
    flags: Vec<(String, Option<String>)>,
    data: Option<String>,
    address: String,
    /// `list`, `describe SYMBOL`, or a method `package.Service/Method`.
    verb: Vec<String>,
}

/// grpcurl's flags that take a value (Go grpcurl spelling, one dash; grpcurl-rs takes both).
const VALUE_FLAGS: &[&str] = &[
    "d",
    "H",
    "cacert",
    "cert",
    "key",
    "servername",
    "authority",
    "rpc-header",
    "reflect-header",
    "connect-timeout",
    "max-time",
    "format",
];

impl Command {
    fn parse(line: Line, words: Vec<String>, prelude: String) -> Command {
        assert_eq!(words[0], "grpcurl");
        let mut flags = Vec::new();
        let mut data = None;
        let mut rest = Vec::new();
        let mut it = words.into_iter().skip(1);
        while let Some(w) = it.next() {
            if let Some(name) = w.strip_prefix('-') {
                let name = name.trim_start_matches('-').to_owned();
                if VALUE_FLAGS.contains(&name.as_str()) {
                    let v = it
                        .next()
                        .unwrap_or_else(|| panic!("{line:?}: -{name} needs a value"));
                    if name == "d" {
                        data = Some(v.clone());
                    }
                    flags.push((name, Some(v)));
                } else {
                    flags.push((name, None));
                }
            } else {
                rest.push(w);
            }
        }
        assert!(!rest.is_empty(), "{line:?}: no address");
        let address = rest.remove(0);
        Command {
            line,
            prelude,
            flags,
            data,
            address,
            verb: rest,
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn request(&self) -> Value {
        match &self.data {
            Some(d) => serde_json::from_str(d)
                .unwrap_or_else(|e| panic!("{}: -d is not JSON ({e}): {d}", self.at())),
            None => json!({}),
        }
    }

    /// `Service/Method` (package dropped), or the verb.
    fn method(&self) -> String {
        match self.verb.as_slice() {
            [m] if m.contains('/') => m.rsplit_once('.').map_or(m.as_str(), |(_, s)| s).to_owned(),
            other => other.join(" "),
        }
    }

    /// How [`README_COMMANDS`] names it: the method and the tenant/provider/subject asked.
    fn describe(&self) -> String {
        let req = self.request();
        let names: Vec<&str> = ["tenant", "provider", "subject"]
            .iter()
            .filter_map(|f| req[*f].as_str())
            .collect();
        let mut d = self.method();
        if !names.is_empty() {
            d = format!("{d} {}", names.join("/"));
        }
        if self.flag("cacert") {
            d.push_str(" [tls]");
        }
        d
    }

    fn at(&self) -> String {
        format!("{}:{}", self.line.source, self.line.line)
    }

    /// A `# {…}` sample answer after the command, or a `({…})` in a comment before it.
    fn sample(&self) -> Option<Value> {
        let parse = |text: &str| -> Option<Value> {
            serde_json::from_str(&text.replace("[...]", "[\"...\"]")).ok()
        };
        if self.line.after.first().is_some_and(|c| c.starts_with('{')) {
            let mut text = String::new();
            for c in &self.line.after {
                text.push_str(c);
                if let Some(v) = parse(&text) {
                    return Some(v);
                }
            }
            panic!(
                "{}: unreadable sample answer {:?}",
                self.at(),
                self.line.after
            );
        }
        let before = self.line.before.join(" ");
        let (_, tail) = before.split_once("({")?;
        let (body, _) = tail.split_once("})")?;
        Some(
            parse(&format!("{{{body}}}"))
                .unwrap_or_else(|| panic!("{}: unreadable sample {body}", self.at())),
        )
    }
}

/// The grpcurl commands of `lines`, with the shell lines each needs first; other commands
/// (curl, cargo, scripts) are returned apart, so the test can tell it skipped nothing it
/// should have run.
fn grpcurl_commands(
    lines: Vec<Line>,
    mut vars: HashMap<String, String>,
) -> (Vec<Command>, Vec<Line>) {
    let mut aliases: HashMap<String, String> = HashMap::new();
    let mut prelude = String::new();
    let mut commands = Vec::new();
    let mut others = Vec::new();
    for line in lines {
        let words = match shell_words(&line.text, &vars) {
            Ok(w) if !w.is_empty() => w,
            // Compound lines (`curl …; curl …`): never grpcurl here.
            _ => {
                assert!(
                    !line.text.contains("grpcurl"),
                    "{}:{}: a grpcurl command the test cannot parse: {}",
                    line.source,
                    line.line,
                    line.text
                );
                others.push(line);
                continue;
            }
        };
        if words[0] == "alias" {
            for def in &words[1..] {
                let (name, value) = def.split_once('=').expect("alias NAME=VALUE");
                aliases.insert(name.to_owned(), value.to_owned());
            }
            prelude.push_str(&line.text);
            prelude.push('\n');
            continue;
        }
        if words.len() == 1 && is_assignment(&words[0]) {
            let (name, value) = words[0].split_once('=').unwrap();
            vars.insert(name.to_owned(), value.to_owned());
            prelude.push_str(&line.text);
            prelude.push('\n');
            continue;
        }
        let words = match aliases.get(&words[0]) {
            Some(value) => {
                let mut expanded = shell_words(value, &vars).expect("alias value");
                expanded.extend(words.into_iter().skip(1));
                expanded
            }
            None => words,
        };
        if words[0] == "grpcurl" {
            commands.push(Command::parse(line, words, prelude.clone()));
        } else {
            assert!(
                !words.iter().any(|w| w.contains("grpcurl")),
                "{}:{}: grpcurl inside another command: {}",
                line.source,
                line.line,
                line.text
            );
            others.push(line);
        }
    }
    (commands, others)
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

// ---------------------------------------------------------------- answers

/// Whether `actual` has the shape of the docs' `sample`: the same fields; strings equal,
/// except that `…`, `...` and `<…>` in a sample match anything and a sample time matches any
/// RFC 3339 time; `["..."]` any list.
fn matches_sample(sample: &Value, actual: &Value, at: &str) -> Result<(), String> {
    match (sample, actual) {
        (Value::Object(s), Value::Object(a)) => {
            let mut sk: Vec<_> = s.keys().collect();
            let mut ak: Vec<_> = a.keys().collect();
            sk.sort();
            ak.sort();
            if sk != ak {
                return Err(format!("{at}: fields {ak:?}, the docs show {sk:?}"));
            }
            for (k, v) in s {
                matches_sample(v, &a[k], &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(s), Value::Array(_)) if s == &[json!("...")] => Ok(()),
        (Value::String(s), Value::String(a)) => {
            if OffsetDateTime::parse(s, &Rfc3339).is_ok() {
                return OffsetDateTime::parse(a, &Rfc3339)
                    .map(|_| ())
                    .map_err(|_| format!("{at}: {a:?} is not an RFC 3339 time"));
            }
            if glob(s, a) {
                Ok(())
            } else {
                Err(format!("{at}: {a:?} does not match the docs' {s:?}"))
            }
        }
        (s, a) if s == a => Ok(()),
        (s, a) => Err(format!("{at}: {a} where the docs show {s}")),
    }
}

/// `pattern` with `…`, `...` and `<…>` as wildcards, matched against all of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let mut literal = Vec::new();
    let mut cur = String::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('…').or_else(|| rest.strip_prefix("...")) {
            literal.push(std::mem::take(&mut cur));
            rest = r;
        } else if rest.starts_with('<') && rest.contains('>') {
            literal.push(std::mem::take(&mut cur));
            rest = &rest[rest.find('>').unwrap() + 1..];
        } else {
            let c = rest.chars().next().unwrap();
            cur.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    literal.push(cur);
    if literal.len() == 1 {
        return literal[0] == text;
    }
    let (first, last) = (&literal[0], literal.last().unwrap());
    if !text.starts_with(first.as_str()) || !text.ends_with(last.as_str()) {
        return false;
    }
    let mut at = first.len();
    for piece in &literal[1..literal.len() - 1] {
        match text[at..].find(piece.as_str()) {
            Some(i) => at += i + piece.len(),
            None => return false,
        }
    }
    at <= text.len() - last.len()
}

// ---------------------------------------------------------------- the provider

const CODE: &str = "docs-auth-code";
const USER_TOKEN: &str = "docs-user-access-token";
const REFRESH_TOKEN: &str = "docs-user-refresh-token";

/// A provider for every connection of the docs: client credentials answer `docs-cc-N` with
/// scopes, the code `CODE` is exchanged for an end user's tokens, `/revoke` accepts.
async fn docs_provider() -> MockServer {
    let mock = MockServer::start().await;
    let issued = std::sync::atomic::AtomicUsize::new(0);
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(move |r: &Request| {
            let f = form(r);
            match f.get("grant_type").map(String::as_str) {
                Some("client_credentials") => {
                    let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    answer(
                        json!({"access_token": format!("docs-cc-{n}"), "token_type": "Bearer",
                                  "expires_in": 3600, "scope": "read write"}),
                    )
                }
                Some("authorization_code") if f.get("code").map(String::as_str) == Some(CODE) => {
                    answer(
                        json!({"access_token": USER_TOKEN, "refresh_token": REFRESH_TOKEN,
                                  "token_type": "Bearer", "expires_in": 3600}),
                    )
                }
                _ => ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})),
            }
        })
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    mock
}

async fn token_requests(mock: &MockServer, grant: &str) -> Vec<Request> {
    mock.received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.url.path() == "/token" && form(r).get("grant_type").map(String::as_str) == Some(grant)
        })
        .collect()
}

/// The client secret of a request with Basic client authentication.
fn basic_secret(r: &Request) -> String {
    let header = r.headers.get("authorization").expect("Basic auth");
    let encoded = header.to_str().unwrap().strip_prefix("Basic ").unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let decoded = String::from_utf8(decoded).unwrap();
    decoded.split_once(':').unwrap().1.to_owned()
}

// ---------------------------------------------------------------- running

/// Values for the docs' placeholders, by field name.
fn credential(field: &str) -> Option<&'static str> {
    Some(match field {
        "client_id" => "docs-client-id",
        "client_secret" => "docs-client-secret",
        "api_key" => "docs-static-api-key",
        "audience" => "docs-audience",
        "code" => CODE,
        _ => return None,
    })
}

fn is_placeholder(s: &str) -> bool {
    s == "…" || s == "..." || (s.contains('<') && s.contains('>'))
}

struct Docs {
    server: Server,
    /// The README's key, the server's bootstrap admin key.
    key: String,
    /// Where the commands' `localhost:50051` goes: the server's gRPC port.
    address: String,
    mock: MockServer,
    /// The working directory of every command: certificates for the TLS examples, and
    /// `grpcurl` first on PATH.
    dir: tempfile::TempDir,
    /// From earlier answers.
    state: Option<String>,
    key_id: Option<String>,
    api_key: Option<String>,
}

struct Output {
    stdout: String,
    json: Value,
}

impl Docs {
    fn grpc_port(server: &Server) -> u16 {
        server.grpc.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// The harness's client, with the README's key.
    async fn admin(&self) -> Client {
        Client::connect(&self.server.grpc, Some(&self.key))
            .await
            .unwrap()
    }

    fn env_path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// The request JSON with the test's values in place of placeholders and provider URLs.
    async fn request(&self, cmd: &Command) -> Option<Value> {
        let original = cmd.request();
        let mut req = original.clone();
        let method = cmd.method();
        let obj = req.as_object_mut()?;
        let token_url = format!("{}/token", self.mock.uri());
        if method == "AdminService/PutConnection" {
            if let Some(u) = obj.get_mut("token_url") {
                *u = json!(token_url);
            }
            let templated = obj
                .get("template")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "generic");
            if templated {
                // The catalog's endpoints are real providers' hosts: the test's provider
                // stands in (an explicit URL overrides the template's).
                obj.entry("token_url").or_insert(json!(token_url));
                obj.entry("revocation_url")
                    .or_insert(json!(format!("{}/revoke", self.mock.uri())));
            }
        }
        let fields: Vec<String> = obj.keys().cloned().collect();
        for field in fields {
            let Some(v) = obj[&field].as_str().filter(|v| is_placeholder(v)) else {
                continue;
            };
            let value = match (method.as_str(), field.as_str(), v) {
                ("AdminService/RotateClientSecret", "client_secret", _) => {
                    "docs-rotated-secret".to_owned()
                }
                ("TokenService/InvalidateToken", "access_token", _) => {
                    // The token the connection serves now: the one a caller would report.
                    let mut get = original.clone();
                    get.as_object_mut().unwrap().remove("access_token");
                    let c = self.admin().await;
                    let t = c
                        .call("TokenService/GetToken", get)
                        .await
                        .unwrap_or_else(|e| panic!("{}: no token to report: {e:?}", cmd.at()));
                    t["access_token"].as_str().unwrap().to_owned()
                }
                ("AdminService/CompleteAuthorization", "state", _) => self
                    .state
                    .clone()
                    .expect("a StartAuthorization before CompleteAuthorization"),
                ("AdminService/RevokeApiKey", "key_id", _) => {
                    self.key_id.clone().expect("a CreateApiKey before")
                }
                (_, f, _) => credential(f)
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: placeholder {v:?} in {f:?} the test does not know",
                            cmd.at()
                        )
                    })
                    .to_owned(),
            };
            obj.insert(field, json!(value));
        }
        (req != original).then_some(req)
    }

    /// Runs `cmd` with `sh`, after the document's assignments and aliases; `address` is
    /// where the test's server listens. Asserts exit 0 and a JSON answer (but for `list` and
    /// `describe`).
    async fn run(&self, cmd: &Command, address: &str, key: &str) -> Output {
        eprintln!("{}: {}", cmd.at(), cmd.describe());
        let (script, out) = self.run_raw(cmd, address, key).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: {} exited {}:\n{script}\nstdout: {stdout}\nstderr: {stderr}\nserver:\n{}",
            cmd.at(),
            cmd.describe(),
            out.status,
            self.server.output()
        );
        let json = if cmd.verb.len() == 1 && cmd.verb[0].contains('/') {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{}: the answer is not JSON ({e}): {stdout}", cmd.at()))
        } else {
            Value::Null
        };
        if let Some(sample) = cmd.sample()
            && let Err(e) = matches_sample(&sample, &json, &cmd.at())
        {
            panic!("the answer does not match the docs: {e}\n{stdout}");
        }
        Output { stdout, json }
    }

    /// Runs `cmd` as [`Docs::run`] does; returns the script and what came of it.
    async fn run_raw(
        &self,
        cmd: &Command,
        address: &str,
        key: &str,
    ) -> (String, std::process::Output) {
        let mut text = cmd.line.text.replacen(&cmd.address, address, 1);
        assert!(
            text.contains(address),
            "{}: address not replaced: {text}",
            cmd.at()
        );
        let request = self.request(cmd).await;
        if let Some(req) = &request {
            let original = cmd.data.as_deref().unwrap();
            let quoted = format!("'{original}'");
            assert_eq!(
                text.matches(&quoted).count(),
                1,
                "{}: -d must be one single-quoted word: {text}",
                cmd.at()
            );
            text = text.replacen(&quoted, &format!("'{req}'"), 1);
        }
        assert!(
            !text.contains('…') && !text.contains("<") && !text.contains("..."),
            "{}: a placeholder is left: {text}",
            cmd.at()
        );
        let script = format!("{}{text}\n", cmd.prelude);
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&script)
                .env_clear()
                .env("PATH", self.env_path())
                .env("HOME", self.dir.path())
                .env("KEY", key)
                .current_dir(self.dir.path())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: grpcurl did not finish in 60 s: {text}", cmd.at()))
        .unwrap();
        (script, out)
    }

    /// What each of the docs' commands must have done, beyond exiting 0.
    async fn check(&mut self, cmd: &Command, out: &Output) {
        let at = cmd.at();
        let req = cmd.request();
        let j = &out.json;
        let admin = self.admin().await;
        match cmd.method().as_str() {
            "list" => {
                for svc in [
                    "tokenvend.v1.TokenService",
                    "tokenvend.v1.AdminService",
                    "grpc.health.v1.Health",
                ] {
                    assert!(
                        out.stdout.lines().any(|l| l == svc),
                        "{at}: {svc} not listed"
                    );
                }
            }
            "describe tokenvend.v1.TokenService" => {
                assert!(out.stdout.contains("service TokenService {"), "{at}");
                assert!(out.stdout.contains("rpc GetToken"), "{at}");
                // "Their comments are served through reflection" (API and errors): the
                // descriptors grpcurl received carry the proto's comments.
                let saved = self.dir.path().join("described.protoset");
                let status = tokio::process::Command::new(self.dir.path().join("bin/grpcurl"))
                    .args(["-plaintext", "-protoset-out"])
                    .arg(&saved)
                    .arg(&self.address)
                    .args(["describe", "tokenvend.v1.TokenService"])
                    .kill_on_drop(true)
                    .output()
                    .await
                    .unwrap()
                    .status;
                assert!(status.success(), "{at}: -protoset-out");
                let descriptors = std::fs::read(&saved).unwrap();
                let comment = b"GetToken answers a token that stays valid";
                assert!(
                    descriptors.windows(comment.len()).any(|w| w == comment),
                    "{at}: the descriptors carry no comments"
                );
            }
            "AdminService/CreateTenant" => assert_eq!(j["tenant"], req["tenant"], "{at}"),
            "AdminService/PutConnection" => {
                assert_eq!(j["provider"], req["provider"], "{at}");
                assert_eq!(
                    j["effectiveTokenUrl"],
                    json!(format!("{}/token", self.mock.uri())),
                    "{at}: the test's provider stands in"
                );
                for secret in ["docs-client-secret", "docs-static-api-key"] {
                    assert!(!out.stdout.contains(secret), "{at}: {secret} shown");
                }
                if req.get("api_key").is_some() {
                    // The README: "GetToken returns the key, no expires_at".
                    let t = admin
                        .call(
                            "TokenService/GetToken",
                            json!({"tenant": req["tenant"], "provider": req["provider"]}),
                        )
                        .await
                        .unwrap();
                    assert_eq!(t["access_token"], "docs-static-api-key", "{at}");
                    assert_eq!(t["expires_at"], Value::Null, "{at}");
                    assert_eq!(j["credentialKind"], "api_key", "{at}");
                } else {
                    assert_eq!(j["credentialKind"], "client_secret", "{at}");
                }
            }
            "TokenService/GetToken" => {
                let token = j["accessToken"].as_str().unwrap_or_default();
                if req.get("subject").is_some() {
                    assert_eq!(token, USER_TOKEN, "{at}");
                } else {
                    assert!(token.starts_with("docs-cc-"), "{at}: {token}");
                    let issued = token_requests(&self.mock, "client_credentials").await.len();
                    assert!(
                        token == format!("docs-cc-{issued}"),
                        "{at}: {token} is not the provider's latest ({issued})"
                    );
                }
                assert_eq!(j["tokenType"], "Bearer", "{at}");
                if let Some(min) = req["min_ttl_seconds"].as_i64() {
                    let expires =
                        OffsetDateTime::parse(j["expiresAt"].as_str().unwrap(), &Rfc3339).unwrap();
                    let left = expires - crate::support::now();
                    assert!(left >= time::Duration::seconds(min), "{at}: {left}");
                }
            }
            "TokenService/InvalidateToken" => {
                assert_eq!(j["invalidated"], true, "{at}: the current token reported");
            }
            "AdminService/ListConnections" => {
                let providers: Vec<_> = j["connections"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["provider"].clone())
                    .collect();
                assert_eq!(providers, vec![json!("enode")], "{at}");
            }
            "AdminService/GetConnection" => {
                assert_eq!(j["provider"], req["provider"], "{at}");
                assert_eq!(j["version"], "1", "{at}");
            }
            "AdminService/ListTenants" => {
                assert_eq!(j["tenants"][0]["tenant"], "acme", "{at}");
            }
            "AdminService/DeleteConnection" => {
                let gone = admin
                    .call("AdminService/GetConnection", req.clone())
                    .await
                    .unwrap_err();
                assert_eq!(gone.code(), tonic::Code::NotFound, "{at}");
            }
            "AdminService/DeleteTenant" => {
                let gone = admin
                    .call("AdminService/ListConnections", req.clone())
                    .await
                    .unwrap_err();
                assert_eq!(gone.code(), tonic::Code::NotFound, "{at}");
                // The sections after the walkthrough use tenant `acme` again, as a reader
                // who follows them has it: the test creates it anew.
                admin
                    .call("AdminService/CreateTenant", json!({"tenant": "acme"}))
                    .await
                    .unwrap();
            }
            "Health/Check" => assert_eq!(j["status"], "SERVING", "{at}"),
            "AdminService/RotateClientSecret" => {
                let last = token_requests(&self.mock, "client_credentials").await;
                assert_eq!(
                    basic_secret(last.last().unwrap()),
                    "docs-rotated-secret",
                    "{at}: the new secret was tried first"
                );
                assert_eq!(j["version"], "2", "{at}");
            }
            "AdminService/StartAuthorization" => {
                self.state = j["state"].as_str().map(str::to_owned);
                assert_eq!(
                    j["redirectUri"],
                    "https://tokenvend.example.com/oauth/callback"
                );
            }
            "AdminService/CompleteAuthorization" => {
                assert_eq!(j["subject"], "driver-42", "{at}");
                assert_eq!(j["hasRefreshToken"], true, "{at}");
                let exchanged = token_requests(&self.mock, "authorization_code").await;
                assert_eq!(exchanged.len(), 1, "{at}");
                assert_eq!(form(&exchanged[0])["code"], CODE, "{at}");
            }
            "AdminService/ListConnectionGrants" => {
                assert_eq!(j["grants"][0]["subject"], "driver-42", "{at}");
            }
            "AdminService/GetGrant" => assert_eq!(j["subject"], "driver-42", "{at}"),
            "AdminService/RevokeGrant" => {
                assert_eq!(j["revokedAtProvider"], true, "{at}");
                let revoked: Vec<_> = self
                    .mock
                    .received_requests()
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.url.path() == "/revoke")
                    .collect();
                assert_eq!(revoked.len(), 1, "{at}");
                assert_eq!(form(&revoked[0])["token"], REFRESH_TOKEN, "{at}");
            }
            "AdminService/CreatePrincipal" => {
                assert_eq!(j["principal"], req["principal"], "{at}");
                assert_eq!(j["role"], req["role"], "{at}");
            }
            "AdminService/GrantPermission" | "AdminService/RevokePermission" => {
                let perms = admin
                    .call(
                        "AdminService/ListPermissions",
                        json!({"principal": req["principal"]}),
                    )
                    .await
                    .unwrap();
                let granted = cmd.method().ends_with("GrantPermission");
                assert_eq!(
                    perms["permissions"].as_array().map_or(0, Vec::len),
                    usize::from(granted),
                    "{at}"
                );
            }
            "AdminService/CreateApiKey" => {
                let key_id = j["keyId"].as_str().unwrap();
                let api_key = j["apiKey"].as_str().unwrap();
                assert!(api_key.starts_with(&format!("tvk_{key_id}_")), "{at}");
                self.key_id = Some(key_id.to_owned());
                self.api_key = Some(api_key.to_owned());
            }
            "AdminService/ListApiKeys" => {
                assert_eq!(j["apiKeys"][0]["keyId"], json!(self.key_id), "{at}");
                assert!(
                    !out.stdout.contains(self.api_key.as_deref().unwrap()),
                    "{at}: the key itself is shown"
                );
            }
            "AdminService/ListPermissions" => {
                assert_eq!(j["permissions"][0]["principal"], "billing", "{at}");
            }
            "AdminService/ListPrincipals" => {
                assert!(
                    j["principals"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["principal"] == "billing"),
                    "{at}"
                );
            }
            "AdminService/RevokeApiKey" => {
                let revoked = Client::connect(&self.server.grpc, self.api_key.as_deref())
                    .await
                    .unwrap();
                wait_until(
                    Duration::from_secs(5),
                    "the revoked key is refused",
                    async || {
                        revoked
                            .get_token("acme", "enode")
                            .await
                            .is_err_and(|e| e.code() == tonic::Code::Unauthenticated)
                    },
                )
                .await;
            }
            "AdminService/DeletePrincipal" => {
                let gone = admin
                    .call("AdminService/GetPrincipal", req.clone())
                    .await
                    .unwrap_err();
                assert_eq!(gone.code(), tonic::Code::NotFound, "{at}");
            }
            "AdminService/ListAuditEvents" => {
                let actions: Vec<_> = j["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
                    .collect();
                for a in ["RevokePermission", "GrantPermission", "PutConnection"] {
                    assert!(
                        actions.iter().any(|x| x == a),
                        "{at}: no {a} in {actions:?}"
                    );
                }
            }
            other => panic!("{at}: the test does not know what {other} should do"),
        }
    }
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_grpcurl_commands_run_as_written() {
    let grpcurl = grpcurl_binary();
    let readme = markdown_sh_lines("README.md", README);
    let (commands, others) = grpcurl_commands(readme, HashMap::new());
    let described: Vec<String> = commands.iter().map(Command::describe).collect();
    assert_eq!(
        described, README_COMMANDS,
        "README.md's grpcurl commands changed: teach this test how to run the new ones"
    );
    // The answers the README shows, each matched against the real one.
    let sampled: Vec<String> = commands
        .iter()
        .filter(|c| c.sample().is_some())
        .map(Command::describe)
        .collect();
    assert_eq!(
        sampled,
        [
            "TokenService/GetToken acme/enode",
            "AdminService/StartAuthorization acme/evenergy/driver-42",
            "AdminService/CreateApiKey",
        ]
    );
    // What was not run is what cannot be (a build, curl, the test scripts).
    for l in &others {
        let first = l.text.split_whitespace().next().unwrap_or_default();
        assert!(
            ["curl", "scripts/test", "scripts/fuzz", "FUZZ_SECONDS=600"].contains(&first)
                || l.text
                    .contains("cargo run --release --bin tokenvend -- serve"),
            "{}:{}: a command the test neither runs nor knows to skip: {}",
            l.source,
            l.line,
            l.text
        );
    }
    // The server the README's first block runs, with the key the walkthrough uses.
    let key = commands[0]
        .prelude
        .lines()
        .find_map(|l| l.strip_prefix("KEY="))
        .expect("the walkthrough sets KEY")
        .to_owned();
    assert!(
        README.contains(&format!("TOKENVEND_BOOTSTRAP_ADMIN_KEY={key} cargo run")),
        "the README's run command and its walkthrough use different keys"
    );

    let mock = docs_provider().await;
    let server = Server::start(Opts {
        env: vec![("TOKENVEND_BOOTSTRAP_ADMIN_KEY", key.clone()), public_url()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    std::os::unix::fs::symlink(&grpcurl, dir.path().join("bin/grpcurl")).unwrap();
    let port = Docs::grpc_port(&server);
    let mut docs = Docs {
        server,
        key: key.clone(),
        address: format!("localhost:{port}"),
        mock,
        dir,
        state: None,
        key_id: None,
        api_key: None,
    };

    // The TLS server of the mTLS example and of NOTES.txt's TLS branch: its certificate names
    // the chart's service and 127.0.0.1, not `localhost`, so `-servername` is what verifies.
    let ca = new_ca("docs test CA");
    let server_cert = ca.issue(
        "tokenvend",
        vec![
            SanType::DnsName(format!("{RELEASE}.{NAMESPACE}.svc").try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let billing_id = "spiffe://tokenvend.test/billing";
    let billing = ca.client("billing", Some(billing_id));
    let d = docs.dir.path().to_owned();
    write(&d, "ca.pem", &ca.pem);
    write(&d, "billing.pem", &billing.cert_pem);
    write(&d, "billing-key.pem", &billing.key_pem);
    write(&d, "tls.crt", &server_cert.cert_pem);
    write(&d, "tls.key", &server_cert.key_pem);
    let tls_env = |p: &str| d.join(p).display().to_string();
    let tls_server = Server::start(Opts {
        env: vec![
            ("TOKENVEND_BOOTSTRAP_ADMIN_KEY", key.clone()),
            ("TOKENVEND_TLS_CERT_FILE", tls_env("tls.crt")),
            ("TOKENVEND_TLS_KEY_FILE", tls_env("tls.key")),
            ("TOKENVEND_TLS_CLIENT_CA_FILE", tls_env("ca.pem")),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let tls_port = Docs::grpc_port(&tls_server);

    for cmd in &commands {
        let out = if cmd.flag("cacert") {
            // `tokenvend.internal:50051`: the TLS server, at an address its certificate names.
            assert_eq!(cmd.address, "tokenvend.internal:50051", "{}", cmd.at());
            set_up_tls_server(&docs, tls_port, &key, billing_id).await;
            docs.run(cmd, &format!("127.0.0.1:{tls_port}"), &key).await
        } else {
            assert_eq!(cmd.address, "localhost:50051", "{}", cmd.at());
            docs.run(cmd, &docs.address, &key).await
        };
        if cmd.flag("cacert") {
            // The mTLS GetToken: the test's provider's token, to the certificate's principal…
            let token = out.json["accessToken"].as_str().unwrap();
            assert!(token.starts_with("docs-cc-"), "{}: {token}", cmd.at());
            // …which it is because of the certificate: without it the call is refused.
            let text = cmd
                .line
                .text
                .replace("-cert billing.pem -key billing-key.pem ", "");
            assert_ne!(text, cmd.line.text, "{}", cmd.at());
            let anonymous = Command {
                line: Line {
                    text,
                    ..cmd.line.clone()
                },
                ..cmd.clone()
            };
            let (_, refused) = docs
                .run_raw(&anonymous, &format!("127.0.0.1:{tls_port}"), &key)
                .await;
            assert_eq!(
                refused.status.code(),
                Some(64 + tonic::Code::Unauthenticated as i32),
                "{}: {refused:?}",
                cmd.at()
            );
        } else {
            docs.check(cmd, &out).await;
        }
    }

    // NOTES.txt, rendered for the test's port: the plaintext branch against the plaintext
    // server (tenant `acme` and connection `enode` are there from the README's commands)…
    // NOTES.txt reads KEY from a Secret with kubectl: here it is the bootstrap key.
    let (notes, rest) =
        grpcurl_commands(notes_lines(port), [("KEY".to_owned(), key.clone())].into());
    assert!(rest.is_empty(), "{rest:?}");
    let described: Vec<String> = notes.iter().map(Command::describe).collect();
    assert_eq!(
        described, NOTES_COMMANDS,
        "NOTES.txt's grpcurl commands changed: teach this test how to run the new ones"
    );
    for cmd in &notes {
        let tls = cmd.flag("cacert");
        assert_eq!(cmd.flag("plaintext"), !tls, "{}", cmd.at());
        assert_eq!(cmd.address, format!("localhost:{port}"), "{}", cmd.at());
        // …and the TLS branch against the TLS server, through the port-forward's `localhost`
        // with `-servername` naming the service.
        let address = if tls {
            format!("localhost:{tls_port}")
        } else {
            format!("localhost:{port}")
        };
        let out = docs.run(cmd, &address, &key).await;
        if tls && cmd.method() == "list" {
            // The certificate does not name `localhost`: without -servername the same
            // command fails, so the flag is what made it work.
            let servername = format!("-servername {RELEASE}.{NAMESPACE}.svc ");
            let text = cmd.line.text.replace(&servername, "");
            assert_ne!(text, cmd.line.text, "{}", cmd.at());
            let unnamed = Command {
                line: Line {
                    text,
                    ..cmd.line.clone()
                },
                ..cmd.clone()
            };
            let (_, failed) = docs.run_raw(&unnamed, &address, &key).await;
            assert!(!failed.status.success(), "{}: {failed:?}", cmd.at());
        }
        if cmd.method() == "list" {
            assert!(
                out.stdout.lines().any(|l| l == "tokenvend.v1.TokenService"),
                "{}: {}",
                cmd.at(),
                out.stdout
            );
        } else {
            let token = out.json["accessToken"].as_str().unwrap();
            assert!(token.starts_with("docs-cc-"), "{}: {token}", cmd.at());
        }
    }
}

/// On the TLS server: tenant `acme`, connection `enode` to the test's provider, and the
/// `billing` principal bound to its certificate, granted that pair — what the mTLS example
/// presumes. Done with grpcurl over TLS with the admin key.
async fn set_up_tls_server(docs: &Docs, tls_port: u16, key: &str, billing_id: &str) {
    let token_url = format!("{}/token", docs.mock.uri());
    for (method, req) in [
        ("AdminService/CreateTenant", json!({"tenant": "acme"})),
        (
            "AdminService/PutConnection",
            json!({"tenant": "acme", "provider": "enode", "token_url": token_url,
                   "client_id": "docs-client-id", "client_secret": "docs-client-secret"}),
        ),
        (
            "AdminService/CreatePrincipal",
            json!({"principal": "billing", "role": "ROLE_CALLER", "certificate_identity": billing_id}),
        ),
        (
            "AdminService/GrantPermission",
            json!({"principal": "billing", "tenant": "acme", "provider": "enode"}),
        ),
    ] {
        let out = tokio::process::Command::new(docs.dir.path().join("bin/grpcurl"))
            .args(["-cacert", "ca.pem", "-H"])
            .arg(format!("authorization: Bearer {key}"))
            .arg("-d")
            .arg(req.to_string())
            .arg(format!("127.0.0.1:{tls_port}"))
            .arg(format!("tokenvend.v1.{method}"))
            .current_dir(docs.dir.path())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "set-up {method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_extraction_follows_the_shell() {
    let vars: HashMap<String, String> = [("KEY".to_owned(), "k".to_owned())].into();
    assert_eq!(
        shell_words(
            "tv -d '{\"a\": 1,\n  \"b\": 2}' \\\n   localhost:1 x/Y",
            &vars
        )
        .unwrap(),
        vec!["tv", "-d", "{\"a\": 1,\n  \"b\": 2}", "localhost:1", "x/Y"]
    );
    assert_eq!(
        shell_words("grpcurl -H \"authorization: Bearer $KEY\" a # note", &vars).unwrap(),
        vec!["grpcurl", "-H", "authorization: Bearer k", "a"]
    );
    assert!(shell_words("curl a; curl b", &vars).is_err());
    let lines = logical_lines(
        "t",
        1,
        &[
            "# before",
            "tv -d '{\"x\":",
            "  1}' \\",
            "  addr m/N",
            "# {\"y\": \"…\",",
            "#   \"z\": 2}",
            "",
            "KEY=v",
        ],
    );
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].line, 2);
    assert_eq!(lines[0].before, vec!["before"]);
    assert_eq!(lines[0].after, vec!["{\"y\": \"…\",", "\"z\": 2}"]);
    assert!(glob("https://a/?x=…&y=…", "https://a/?x=1&y=2"));
    assert!(!glob("https://a/?x=…&y=…", "https://b/?x=1&y=2"));
    assert!(glob("tvk_<key id>_<secret>", "tvk_01_abc"));
    assert!(!glob("Bearer", "bearer"));
}
