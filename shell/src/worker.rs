//! The servers' scaffold: one thread owns the node and its store and
//! takes [`Input`]s from a bounded queue; a task forwards the link's
//! events into that queue; shutdown, abort and drop stop the two the same
//! way for every server. Each take from the queue beats the worker's
//! [`Heartbeat`], which feeds the systemd watchdog.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;
use veil_link::{Link, LinkEvent, Message};

use crate::Heartbeat;

/// What a server's worker thread takes.
pub enum Input {
    /// (Re)connected with the subscriptions in place.
    Connected,
    /// A message on one of its subscriptions.
    Message(Message),
    /// The broker acknowledged the confirmed publish with this token.
    Confirmed(u64),
    /// Finish the message in hand, flush, stop.
    Shutdown,
    /// Stop as a crash would: flush nothing.
    Crash,
}

impl Input {
    /// What a link event is to the worker. `Connected` is fed once the
    /// subscriptions are granted, as the edge agent does: what the node
    /// then publishes may be answered at once.
    fn from_link(event: LinkEvent) -> Option<Input> {
        match event {
            LinkEvent::Subscribed { .. } => Some(Input::Connected),
            LinkEvent::Message(m) => Some(Input::Message(m)),
            LinkEvent::Confirmed(token) => Some(Input::Confirmed(token)),
            LinkEvent::Connected { .. } | LinkEvent::Disconnected { .. } => None,
        }
    }
}

/// The worker thread's end of the queue. Every take (an input, an empty
/// queue, an idle wait that timed out) is a turn of the worker's loop and
/// beats its heartbeat.
pub struct Inputs {
    rx: Receiver<Input>,
    heartbeat: Heartbeat,
}

impl Inputs {
    /// The worker's queue, beating `heartbeat` on every take.
    pub fn new(rx: Receiver<Input>, heartbeat: Heartbeat) -> Inputs {
        Inputs { rx, heartbeat }
    }

    /// The next input if one is queued.
    pub fn try_recv(&self) -> Result<Input, TryRecvError> {
        self.heartbeat.beat();
        self.rx.try_recv()
    }

    /// The next input, waiting at most `wait`.
    pub fn recv_timeout(&self, wait: Duration) -> Result<Input, RecvTimeoutError> {
        let got = self.rx.recv_timeout(wait);
        self.heartbeat.beat();
        got
    }
}

/// The worker's input queue (see [`veil_link::WORKER_QUEUE`]).
pub const INPUT_QUEUE: usize = veil_link::WORKER_QUEUE;

/// Why a worker did not start.
#[derive(Debug)]
pub enum StartError<E> {
    /// The worker's own set-up failed.
    Init(E),
    /// The thread could not be started, or ended during set-up.
    Thread(std::io::Error),
}

/// A running worker: its thread, its queue and the link feeding it.
pub struct Worker {
    link: Option<Link>,
    thread: Option<std::thread::JoinHandle<()>>,
    inputs: SyncSender<Input>,
    forwarder: tokio::task::JoinHandle<()>,
    heartbeat: Heartbeat,
}

impl Worker {
    /// Starts thread `name`: it runs `init` (restoring the store, building
    /// the node), reports how that went, then hands the queue to `run`.
    /// Only then are the link's events forwarded.
    pub async fn start<C, E>(
        mut link: Link,
        name: &str,
        init: impl FnOnce() -> Result<C, E> + Send + 'static,
        run: impl FnOnce(C, Inputs) + Send + 'static,
    ) -> Result<Worker, StartError<E>>
    where
        E: Send + 'static,
    {
        let (inputs, rx) = sync_channel(INPUT_QUEUE);
        let heartbeat = Heartbeat::default();
        let rx = Inputs::new(rx, heartbeat.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || match init() {
                Ok(core) => {
                    let _ = ready_tx.send(Ok(()));
                    run(core, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(StartError::Thread)?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Init(e)),
            Err(_) => {
                return Err(StartError::Thread(std::io::Error::other(
                    "worker thread ended during start",
                )));
            }
        }
        let mut events = std::mem::replace(&mut link.events, tokio::sync::mpsc::channel(1).1);
        let to_worker = inputs.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(input) = Input::from_link(event) else {
                    continue;
                };
                if veil_link::hand_to_worker(&to_worker, input).await.is_err() {
                    return;
                }
            }
        });
        Ok(Worker {
            link: Some(link),
            thread: Some(thread),
            inputs,
            forwarder,
            heartbeat,
        })
    }

    /// The worker thread's heartbeat (for [`crate::notify::spawn_watchdog`]).
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Stops cleanly: the worker finishes the message in hand, the store
    /// is flushed, the MQTT session is closed.
    pub async fn shutdown(mut self) {
        self.stop(Input::Shutdown).await;
        if let Some(link) = self.link.take() {
            link.close().await;
        }
    }

    /// Stops as a crash would: no DISCONNECT, nothing flushed beyond what
    /// the runtime had already made durable.
    pub async fn abort(mut self) {
        if let Some(link) = self.link.take() {
            link.abort();
        }
        self.stop(Input::Crash).await;
    }

    async fn stop(&mut self, how: Input) {
        self.forwarder.abort();
        let inputs = self.inputs.clone();
        // The queue may be full; the worker empties it.
        let _ = tokio::task::spawn_blocking(move || inputs.send(how).is_ok()).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.forwarder.abort();
        // When the queue is full the worker still stops: it sees every
        // sender gone once it has emptied the queue.
        let _ = self.inputs.try_send(Input::Crash);
    }
}
