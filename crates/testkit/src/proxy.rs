//! A stand-in forward proxy that counts the connections it accepts, for proving which
//! provider calls go through a proxy and which never reach one.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::SeqCst},
};

use anyhow::Result;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// The access token the proxy answers plain-HTTP requests with.
pub const PROXY_TOKEN: &str = "token-from-the-proxy";

pub struct CountingProxy {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
}

impl CountingProxy {
    /// Listens on 127.0.0.1. Each connection is counted as soon as it is accepted, before
    /// anything is answered: once a client has seen an answer, the count includes it.
    /// CONNECT is refused with 403 (it tunnels nowhere, so nothing leaves the machine); a
    /// plain-HTTP request gets a token response carrying [`PROXY_TOKEN`].
    pub async fn start() -> Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                counter.fetch_add(1, SeqCst);
                tokio::spawn(answer(sock));
            }
        });
        Ok(CountingProxy { port, accepted })
    }

    /// `http://{host}:{port}`, e.g. with `localhost` for a proxy known by an internal name.
    pub fn url(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }
}

async fn answer(sock: TcpStream) {
    let mut sock = BufReader::new(sock);
    let (mut head, mut line) = (String::new(), String::new());
    while sock.read_line(&mut line).await.unwrap_or(0) > 2 {
        head.push_str(&line);
        line.clear();
    }
    let reply = if head.starts_with("CONNECT ") {
        "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_owned()
    } else {
        // Read the body so closing the socket does not reset the connection under the reply.
        let len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        let _ = sock.read_exact(&mut body).await;
        let token = format!(
            r#"{{"access_token":"{PROXY_TOKEN}","token_type":"Bearer","expires_in":3600}}"#
        );
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{token}",
            token.len()
        )
    };
    let _ = sock.get_mut().write_all(reply.as_bytes()).await;
}
