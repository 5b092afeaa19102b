//! Group commit for a script many tasks call at once (a worker's runs
//! finishing): a call joins the calls waiting; when no batch is being sent,
//! one is started at once with everything waiting, and the sender goes on
//! with what gathered meanwhile until nothing waits. A lone call is sent
//! immediately (no timer), so batching adds no latency, only takes away
//! round trips and per-call work under load. The sender is a task of its
//! own: a caller that stops waiting cannot strand the others.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::QueueError;

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

pub(crate) struct Batcher<Req, Resp> {
    state: Mutex<State<Req, Resp>>,
    /// The most calls one batch carries.
    max: usize,
}

struct State<Req, Resp> {
    waiting: Vec<(Req, Reply<Resp>)>,
    sending: bool,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    pub(crate) fn new(max: usize) -> Self {
        Self { state: Mutex::new(State { waiting: Vec::new(), sending: false }), max: max.max(1) }
    }

    /// Sends `req` with whatever else is waiting through `send`, which must
    /// answer each request of a batch in order.
    pub(crate) async fn call<F, Fut>(self: &Arc<Self>, req: Req, send: F) -> Result<Resp, QueueError>
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Resp>, QueueError>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push((req, tx));
            !std::mem::replace(&mut state.sending, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.send_all(send).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(QueueError::Corrupt {
                id: "batch".to_owned(),
                detail: "its sender stopped before answering".to_owned(),
            })
        })
    }

    async fn send_all<F, Fut>(&self, send: F)
    where
        F: Fn(Vec<Req>) -> Fut,
        Fut: Future<Output = Result<Vec<Resp>, QueueError>>,
    {
        loop {
            let batch: Vec<(Req, Reply<Resp>)> = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.sending = false;
                    return;
                }
                let n = state.waiting.len().min(self.max);
                state.waiting.drain(..n).collect()
            };
            let (reqs, replies): (Vec<Req>, Vec<Reply<Resp>>) = batch.into_iter().unzip();
            let n = reqs.len();
            match send(reqs).await {
                Ok(resps) if resps.len() == n => {
                    for (reply, resp) in replies.into_iter().zip(resps) {
                        let _ = reply.send(Ok(resp));
                    }
                }
                Ok(resps) => {
                    let error = QueueError::Corrupt {
                        id: "batch".to_owned(),
                        detail: format!("{} answers for {n} calls", resps.len()),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<Req, Resp>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
