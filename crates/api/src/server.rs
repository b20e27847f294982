//! The accept loop. `axum::serve` cannot set a header read timeout, so connections are served
//! with hyper's HTTP/1 builder directly: a client that does not complete its request head
//! within `api.header_timeout` is disconnected, and each request carries the client address
//! as `ConnectInfo<SocketAddr>` (what `into_make_service_with_connect_info` would give) for the
//! audit log and the per-token address metric.
//!
//! With [`serve_tls`] every connection first completes a TLS handshake (rustls, the
//! configuration current when it was accepted, see [`Tls`]) within the same
//! `api.header_timeout`; a client that stalls in the handshake is disconnected like one that
//! stalls in its headers. A plaintext request to the TLS port fails the handshake.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::tls::Tls;
use crate::{ApiState, router};

/// Serves plain HTTP until `shutdown` is cancelled, then lets requests in flight finish
/// (bodies are bounded by `api.body_timeout`) and returns.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// Serves HTTPS like [`serve`] serves HTTP. [`Tls::reload`] on a clone of `tls` changes the
/// certificate for the connections accepted afterwards.
pub async fn serve_tls(
    listener: TcpListener,
    state: ApiState,
    tls: Tls,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, Some(tls), shutdown).await
}

/// [`serve_tls`] when `tls` is given, else [`serve`].
pub async fn serve_with(
    listener: TcpListener,
    state: ApiState,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let header_timeout = state.config().header_timeout;
    let app = router(state);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Per-connection failures (reset before accept) and resource exhaustion
                // (EMFILE) must not stop the server; back off briefly on the latter.
                if !is_connection_error(&e) {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        match &tls {
            None => {
                connections.spawn(serve_connection(
                    stream,
                    remote,
                    app,
                    header_timeout,
                    shutdown,
                ));
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                connections.spawn(async move {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    let stream = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %remote, "tls handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "tls handshake timed out");
                                return;
                            }
                        },
                    };
                    serve_connection(stream, remote, app, header_timeout, shutdown).await
                });
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection<S>(
    stream: S,
    remote: SocketAddr,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        let mut app = app.clone();
        async move { Ok::<_, Infallible>(app.call(req).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error during shutdown");
            }
        }
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
