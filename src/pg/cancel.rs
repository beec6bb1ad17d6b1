//! Cancel requests, sent as libpq sends them: the request goes out on a
//! connection of its own, and that connection is left to the server to
//! close, which it does once the request has been handled.
//!
//! `tokio-postgres` closes its side as soon as the request is written.
//! PgBouncer before 1.20 can then free the request's client twice and
//! exit (`FATAL ... disconnect_client(): bad client state: 0`, PgBouncer
//! issue 801): every session behind it is gone. Waiting for the server's
//! close, as libpq's `PQcancel` does, leaves no such window.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where a session's cancel request goes: the one address it can have
/// connected to, or, with several hosts, not known here.
#[derive(Clone, Debug)]
pub(super) enum Target {
    Tcp {
        /// The name the TLS handshake checks.
        host: String,
        /// What to connect to: `hostaddr` when given, else `host`.
        addr: String,
        port: u16,
    },
    Unix(PathBuf),
    /// Several hosts: `tokio-postgres` knows which one the session is on.
    Unknown,
}

impl Target {
    /// The target of sessions made with `config`.
    pub(super) fn of(config: &Config) -> Target {
        let port = match config.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Target::Unknown,
        };
        match config.get_hosts() {
            [Host::Tcp(host)] => {
                let addr = match config.get_hostaddrs() {
                    [] => host.clone(),
                    [ip] => ip.to_string(),
                    _ => return Target::Unknown,
                };
                Target::Tcp {
                    host: host.clone(),
                    addr,
                    port,
                }
            }
            [Host::Unix(dir)] => Target::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            _ => Target::Unknown,
        }
    }
}

/// Sends the cancel request of `token` to `target` and waits, at most
/// `bound`, for the server to close the connection. Errors are left to
/// the caller's log: a cancel is a courtesy, the session is ended anyway.
pub(super) async fn send(
    token: &CancelToken,
    target: &Target,
    tls: Option<MakeRustlsConnect>,
    bound: Duration,
) -> Result<(), String> {
    let sending = async {
        match target {
            Target::Tcp { host, addr, port } => {
                let stream = tokio::net::TcpStream::connect((addr.as_str(), *port))
                    .await
                    .map_err(|e| e.to_string())?;
                let stream = ServerCloses(stream);
                match tls {
                    Some(mut tls) => {
                        let connect = MakeTlsConnect::<ServerCloses<tokio::net::TcpStream>>::make_tls_connect(
                            &mut tls, host,
                        )
                        .map_err(|e| e.to_string())?;
                        token.cancel_query_raw(stream, connect).await
                    }
                    None => token.cancel_query_raw(stream, NoTls).await,
                }
                .map_err(|e| e.to_string())
            }
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| e.to_string())?;
                // No TLS over a local socket, as with libpq.
                token
                    .cancel_query_raw(ServerCloses(stream), NoTls)
                    .await
                    .map_err(|e| e.to_string())
            }
            Target::Unknown => match tls {
                Some(tls) => token.cancel_query(tls).await,
                None => token.cancel_query(NoTls).await,
            }
            .map_err(|e| e.to_string()),
        }
    };
    tokio::time::timeout(bound, sending)
        .await
        .map_err(|_| format!("no answer within {bound:?}"))?
}

/// A stream whose shutdown waits for the other side to close instead of
/// closing this side first.
struct ServerCloses<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for ServerCloses<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerCloses<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.0).poll_flush(cx))?;
        // The server sends nothing back; read until it closes (or resets).
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => continue,
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_one_address_or_unknown() {
        let config: Config = "host=db.example port=6432".parse().unwrap();
        assert!(matches!(
            Target::of(&config),
            Target::Tcp { host, addr, port: 6432 } if host == "db.example" && addr == "db.example"
        ));
        let config: Config = "host=db.example hostaddr=10.1.2.3".parse().unwrap();
        assert!(matches!(
            Target::of(&config),
            Target::Tcp { addr, port: 5432, .. } if addr == "10.1.2.3"
        ));
        let config: Config = "host=/run/postgresql port=5433".parse().unwrap();
        assert!(matches!(
            Target::of(&config),
            Target::Unix(p) if p == std::path::Path::new("/run/postgresql/.s.PGSQL.5433")
        ));
        let config: Config = "host=a,b".parse().unwrap();
        assert!(matches!(Target::of(&config), Target::Unknown));
    }

    /// The request is written, and the call returns only once the other
    /// side has closed: never before, and never by closing first.
    #[tokio::test]
    async fn it_waits_for_the_server_to_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config: Config = format!("host=127.0.0.1 port={port} sslmode=disable user=u")
            .parse()
            .unwrap();
        let target = Target::of(&config);
        // A session's cancel token, without a server: tokio-postgres makes
        // one only from a client, so a test client is connected to a
        // listener that answers the startup as a server would.
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            s.read_exact(&mut rest).await.unwrap();
            // AuthenticationOk, BackendKeyData(pid 7, key 9), ReadyForQuery.
            let mut answer = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
            answer.extend_from_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0, 7, 0, 0, 0, 9]);
            answer.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
            s.write_all(&answer).await.unwrap();
            // The cancel request, on a connection of its own.
            let (mut c, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 16];
            c.read_exact(&mut request).await.unwrap();
            // The client must not have closed its side: nothing more to
            // read yet, and no end of stream.
            let early =
                tokio::time::timeout(Duration::from_millis(200), c.read(&mut [0u8; 1])).await;
            assert!(early.is_err(), "the client closed first: {early:?}");
            drop(c);
            (request, s)
        });
        let (client, connection) = config.connect(NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        let token = client.cancel_token();
        send(&token, &target, None, Duration::from_secs(10))
            .await
            .unwrap();
        let (request, _session) = server.await.unwrap();
        assert_eq!(
            request,
            [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 0, 0, 0, 9],
            "CancelRequest(pid 7, key 9)"
        );
        drop(client);
        driver.abort();
    }
}
