//! The way into the supervisor's loop for MI transports that run on their own threads (HTTP,
//! datagram): a request travels over a bounded channel with what to do with its result, and a mio
//! `Waker` wakes the loop. The loop runs the method exactly as for the FIFO (a `sockets_reload`
//! queues behind one in progress) and answers the call ([`Call::answer`]).
//!
//! Two ways to wait: [`MiBridge::call`] blocks the calling thread with a deadline;
//! [`MiBridge::submit`] returns at once and the result goes to a callback run on the loop's
//! thread, which must only hand it on (a channel send and a wake of the transport's own loop):
//! an event-loop transport serves its other clients meanwhile.
//!
//! The loop never waits on a transport: a reply whose caller gave up is simply dropped. A
//! transport never touches the daemon's state: everything goes through the loop.

use super::proto::{Params, Request, RpcError};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use mio::{Registry, Token, Waker};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How many calls may wait for the loop at once; past it a transport gets an error at once
/// instead of piling up (each waiting call holds a thread or a connection of its transport).
pub const QUEUE: usize = 1024;

/// What becomes of a call's result: run once, on the loop's thread; it must not block.
pub type Reply = Box<dyn FnOnce(Result<Value, RpcError>) + Send>;

/// One MI call from a transport thread.
pub struct Call {
    /// The request to dispatch (method and parameters; no id or reply name: the transport keeps
    /// those).
    pub request: Request,
    reply: Reply,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Call {
    /// Hands the result to the caller (who may be gone: then it is dropped).
    pub fn answer(self, result: Result<Value, RpcError>) {
        (self.reply)(result)
    }
}

/// Why a call got no result from the loop.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BridgeError {
    /// Too many calls are waiting for the loop.
    #[error("too many MI requests waiting ({QUEUE})")]
    Busy,
    /// The daemon is stopping (the loop is gone).
    #[error("the daemon is stopping")]
    Closed,
    /// The loop did not answer within the caller's deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The transport side: cheap to clone, one per transport thread.
#[derive(Debug, Clone)]
pub struct MiBridge {
    tx: Sender<Call>,
    waker: Arc<Waker>,
}

/// The loop side: what the loop drains when its waker token fires.
#[derive(Debug)]
pub struct MiInbox {
    rx: Receiver<Call>,
}

/// A bridge whose waker fires `token` in the loop's `registry`.
pub fn bridge(registry: &Registry, token: Token) -> std::io::Result<(MiBridge, MiInbox)> {
    Ok(bridge_waking(Arc::new(Waker::new(registry, token)?)))
}

/// A bridge that wakes the loop with a `waker` it shares with other sources (mio allows one
/// `Waker` per `Poll`: the loop then drains every source when the shared token fires).
pub fn bridge_waking(waker: Arc<Waker>) -> (MiBridge, MiInbox) {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    (MiBridge { tx, waker }, MiInbox { rx })
}

impl MiBridge {
    /// Queues `method` for the loop and returns at once; `reply` gets the result later, on the
    /// loop's thread. `Busy` or `Closed` when it could not be queued (`reply` is then dropped
    /// unrun).
    pub fn submit(
        &self,
        method: &str,
        params: Params,
        reply: impl FnOnce(Result<Value, RpcError>) + Send + 'static,
    ) -> Result<(), BridgeError> {
        let call = Call {
            request: Request {
                method: method.to_string(),
                params,
                id: None,
                reply_name: None,
            },
            reply: Box::new(reply),
        };
        match self.tx.try_send(call) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(BridgeError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(BridgeError::Closed),
        }
        // A failed wake means the poll is gone: the loop is stopping.
        self.waker.wake().map_err(|_| BridgeError::Closed)
    }

    /// Runs `method` in the loop and waits at most `timeout` for its result.
    pub fn call(
        &self,
        method: &str,
        params: Params,
        timeout: Duration,
    ) -> Result<Result<Value, RpcError>, BridgeError> {
        let (tx, result) = crossbeam_channel::bounded(1);
        self.submit(method, params, move |r| {
            let _ = tx.send(r);
        })?;
        match result.recv_timeout(timeout) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => Err(BridgeError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(BridgeError::Closed),
        }
    }
}

impl MiInbox {
    /// The calls waiting now (never blocks).
    pub fn drain(&self) -> impl Iterator<Item = Call> + '_ {
        self.rx.try_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use serde_json::json;

    const WAKE: Token = Token(7);

    /// A loop thread that answers every call with its method name, until `stop` calls.
    fn serve(mut poll: Poll, inbox: MiInbox, stop: usize) -> usize {
        let mut events = Events::with_capacity(8);
        let mut answered = 0;
        while answered < stop {
            poll.poll(&mut events, Some(Duration::from_secs(30)))
                .unwrap();
            assert!(
                events.iter().any(|e| e.token() == WAKE),
                "woken by the bridge"
            );
            for call in inbox.drain() {
                let method = call.request.method.clone();
                call.answer(Ok(json!(method)));
                answered += 1;
            }
        }
        answered
    }

    #[test]
    fn calls_from_many_threads_are_answered_by_the_loop() {
        let poll = Poll::new().unwrap();
        let (bridge, inbox) = bridge(poll.registry(), WAKE).unwrap();
        let lp = std::thread::spawn(move || serve(poll, inbox, 40));
        let callers: Vec<_> = (0..4)
            .map(|t| {
                let b = bridge.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let m = format!("m{t}-{i}");
                        let r = b.call(&m, Params::None, Duration::from_secs(30)).unwrap();
                        assert_eq!(r, Ok(json!(m)));
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert_eq!(lp.join().unwrap(), 40);
    }

    #[test]
    fn a_loop_that_does_not_answer_is_a_timeout_and_a_gone_loop_is_closed() {
        let poll = Poll::new().unwrap();
        let (bridge, inbox) = bridge(poll.registry(), WAKE).unwrap();
        let t = Duration::from_millis(50);
        assert_eq!(
            bridge.call("x", Params::None, t),
            Err(BridgeError::Timeout(t))
        );
        // The loop takes the call late: its reply goes nowhere, and that is fine.
        for call in inbox.drain() {
            call.answer(Ok(json!(1)));
        }
        drop(inbox);
        assert_eq!(bridge.call("x", Params::None, t), Err(BridgeError::Closed));
    }

    #[test]
    fn a_submitted_call_answers_through_its_callback_on_the_loop_thread() {
        let poll = Poll::new().unwrap();
        let (bridge, inbox) = bridge(poll.registry(), WAKE).unwrap();
        let lp = std::thread::spawn(move || {
            serve(poll, inbox, 3);
            std::thread::current().id()
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        for m in ["a", "b", "c"] {
            let tx = tx.clone();
            bridge
                .submit(m, Params::None, move |r| {
                    tx.send((r, std::thread::current().id())).unwrap();
                })
                .unwrap();
        }
        let loop_thread = lp.join().unwrap();
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got.len(), 3);
        for (i, (r, thread)) in got.into_iter().enumerate() {
            assert_eq!(r, Ok(json!(["a", "b", "c"][i])));
            assert_eq!(thread, loop_thread);
        }
    }

    #[test]
    fn a_full_queue_is_busy_at_once() {
        let poll = Poll::new().unwrap();
        let (bridge, _inbox) = bridge(poll.registry(), WAKE).unwrap();
        let mut holders = Vec::new();
        for _ in 0..QUEUE {
            let (tx, rx) = crossbeam_channel::bounded(1);
            bridge
                .submit("x", Params::None, move |r| {
                    let _ = tx.send(r);
                })
                .unwrap();
            holders.push(rx);
        }
        assert_eq!(
            bridge.call("x", Params::None, Duration::from_secs(30)),
            Err(BridgeError::Busy)
        );
        assert_eq!(
            bridge.submit("x", Params::None, |_| {}),
            Err(BridgeError::Busy)
        );
    }
}
