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
//!
//! At most `api.max_connections` connections are open at once (each holds a file
//! descriptor, which RocksDB needs as much as we do, see docs/design.md §4). A connection
//! accepted beyond that takes the place of the oldest idle one (waiting for a request head
//! or in its TLS handshake), which is closed at once; if every open connection is serving a
//! request, the new one is closed at once instead. So a flood of idle sockets only ever
//! displaces itself: a client that connects and sends its request is served.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::tls::Tls;
use crate::{ApiState, metrics, router};

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
    let places = Arc::new(Places::new(state.config().max_connections));
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
        let Some(place) = places.admit() else {
            // Every place is serving a request: this connection is closed at once (counted).
            drop(stream);
            continue;
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
                    place,
                ));
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                connections.spawn(async move {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    let evicted = place.evicted();
                    let stream = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = evicted.cancelled() => return,
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
                    serve_connection(stream, remote, app, header_timeout, shutdown, place).await
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
    place: Place,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot = place.slot.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // Busy from the parsed request head until the response's last byte is written.
        let busy = Busy::new(slot.clone());
        req.extensions_mut().insert(ConnectInfo(remote));
        let mut app = app.clone();
        async move {
            let response = app.call(req).await.unwrap_or_else(|e| match e {});
            Ok::<_, Infallible>(
                response.map(|body| axum::body::Body::new(Tracked { body, _busy: busy })),
            )
        }
    });
    let evicted = place.evicted();
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
        // Idle and displaced by a newer connection: closed at once, no response owed.
        _ = evicted.cancelled() => {}
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

/// The places for open connections (`api.max_connections`), oldest connection first.
struct Places {
    max: usize,
    open: Mutex<BTreeMap<u64, Arc<Slot>>>,
    next: AtomicU64,
}

/// One open connection: how many of its requests are being served (0: idle, waiting for a
/// request head or in its TLS handshake) and the token that closes it when it is displaced.
#[derive(Default)]
struct Slot {
    busy: AtomicUsize,
    evict: CancellationToken,
}

/// An admitted connection's place; dropping it frees the place.
struct Place {
    id: u64,
    slot: Arc<Slot>,
    places: Arc<Places>,
}

impl Places {
    fn new(max: usize) -> Places {
        metrics::HTTP_CONNECTIONS_OPEN.set(0);
        Places {
            max: max.max(1),
            open: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        }
    }

    /// A place for a connection just accepted: a free one, else the place of the oldest idle
    /// connection (closed at once, counted as evicted); `None` when every open connection is
    /// serving a request (the new one is to be closed, counted as refused).
    fn admit(self: &Arc<Places>) -> Option<Place> {
        let mut open = self.open.lock();
        if open.len() >= self.max {
            let idle = open
                .iter()
                .find(|(_, slot)| slot.busy.load(Ordering::SeqCst) == 0)
                .map(|(id, _)| *id);
            match idle.and_then(|id| open.remove(&id)) {
                Some(slot) => {
                    slot.evict.cancel();
                    metrics::HTTP_CONNECTIONS_EVICTED.inc();
                }
                None => {
                    metrics::HTTP_CONNECTIONS_REFUSED.inc();
                    return None;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        open.insert(id, slot.clone());
        metrics::HTTP_CONNECTIONS_OPEN.set(i64::try_from(open.len()).unwrap_or(i64::MAX));
        Some(Place {
            id,
            slot,
            places: self.clone(),
        })
    }
}

impl Place {
    fn evicted(&self) -> CancellationToken {
        self.slot.evict.clone()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.places.open.lock();
        open.remove(&self.id);
        metrics::HTTP_CONNECTIONS_OPEN.set(i64::try_from(open.len()).unwrap_or(i64::MAX));
    }
}

/// A request being served on its connection's [`Slot`], until dropped.
struct Busy(Arc<Slot>);

impl Busy {
    fn new(slot: Arc<Slot>) -> Busy {
        slot.busy.fetch_add(1, Ordering::SeqCst);
        Busy(slot)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its connection busy until hyper has written (and dropped) it,
/// so that a long export is not cut off to make room for an idle connection.
struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_house_displaces_its_oldest_idle_connection_or_refuses_the_new_one() {
        let places = Arc::new(Places::new(2));
        let first = places.admit().expect("a free place");
        let second = places.admit().expect("a free place");
        let serving = Busy::new(first.slot.clone());
        let evicted_before = metrics::HTTP_CONNECTIONS_EVICTED.get();
        // Full: the oldest idle one (the second; the first is serving) makes room.
        let third = places.admit().expect("room made");
        assert!(second.evicted().is_cancelled());
        assert!(!first.evicted().is_cancelled());
        assert!(metrics::HTTP_CONNECTIONS_EVICTED.get() > evicted_before);
        // Both open ones busy: the next is refused, nobody is displaced.
        let also_serving = Busy::new(third.slot.clone());
        let refused_before = metrics::HTTP_CONNECTIONS_REFUSED.get();
        assert!(places.admit().is_none());
        assert!(metrics::HTTP_CONNECTIONS_REFUSED.get() > refused_before);
        assert!(!first.evicted().is_cancelled() && !third.evicted().is_cancelled());
        // A connection that ends frees its place.
        drop(second);
        drop(also_serving);
        drop(third);
        assert_eq!(places.open.lock().len(), 1);
        assert!(places.admit().is_some());
        drop(serving);
    }
}
