//! The accept loop of the project's small HTTP servers (the health endpoint and the CCC
//! simulator): one task per connection, until shutdown.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (typically out of file descriptors) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` and runs `serve` on each in its own task until
/// `shutdown`; then closes the listener and drops the connections still open. `what` names
/// the server in the log. At most `max_connections` are served at once: more wait in the
/// kernel's backlog until one ends, so a flood of idle connections cannot grow the process.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    what: &'static str,
    max_connections: usize,
    mut serve: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept(), if connections.len() < max_connections => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve(stream));
                }
                Err(error) => {
                    tracing::warn!(%error, server = what, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow with every request.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn no_more_than_the_cap_are_served_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let server = tokio::spawn({
            let (now, most, shutdown) = (Arc::clone(&now), Arc::clone(&most), shutdown.clone());
            accept_until(listener, shutdown, "test", 3, move |_stream| {
                let (now, most) = (Arc::clone(&now), Arc::clone(&most));
                async move {
                    let serving = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(serving, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                }
            })
        });
        let mut clients = Vec::new();
        for _ in 0..10 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        // All ten are served in turn, never more than three at a time.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(now.load(Ordering::SeqCst), 0);
        shutdown.cancel();
        server.await.unwrap();
    }
}
