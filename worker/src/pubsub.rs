//! Listening on a Pub/Sub channel for as long as the worker runs: resubscribe
//! with backoff when the subscription drops. Pub/Sub is best effort here;
//! every message it carries also reaches the worker another way, later.

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use store::QueueError;

/// Calls `on_message` for each message of the subscriptions `subscribe`
/// opens, until `stop`; `fallback` says in the warning what happens
/// meanwhile when subscribing fails.
pub async fn listen<S, T, F, Fut>(subscribe: F, mut on_message: impl FnMut(T), fallback: &str, stop: CancellationToken)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, QueueError>>,
    S: Stream<Item = T>,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        match subscribe().await {
            Ok(messages) => {
                backoff = Duration::from_millis(500);
                let mut messages = std::pin::pin!(messages);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        message = messages.next() => match message {
                            Some(message) => on_message(message),
                            None => break,
                        },
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "Pub/Sub channel unavailable; {fallback}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
