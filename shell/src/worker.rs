//! The servers' scaffold: worker threads own the node (one node per
//! thread, each with the devices hashed to it; see [`crate::shards`]) and
//! share the store; each takes [`Input`]s from a bounded queue of its own;
//! a task routes the link's events into those queues; shutdown, abort and
//! drop stop them the same way for every server. Each take from a queue
//! beats that worker's [`Heartbeat`], which feeds the systemd watchdog.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;
use veil_link::{AckToken, Link, LinkEvent, Message};

use crate::Heartbeat;
use crate::shards::{AckOrder, Shard, shard_of, split_token};

/// What a server's worker thread takes.
pub enum Input {
    /// (Re)connected with the subscriptions in place (every worker).
    Connected,
    /// A message on one of its subscriptions, about a device it owns.
    Message(Delivery),
    /// The broker acknowledged the confirmed publish this worker numbered
    /// so (its own number, not [`Shard::confirm_token`]'s).
    Confirmed(u64),
    /// Finish the message in hand, flush, stop.
    Shutdown,
    /// Stop as a crash would: flush nothing.
    Crash,
}

/// A message for a worker.
pub struct Delivery {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: bytes::Bytes,
    /// Hand back to [`Inputs::ack`] once the message is safe.
    pub ack: Ack,
}

/// Identifies a delivered message for its acknowledgement.
pub struct Ack {
    seq: u64,
    token: AckToken,
}

/// Which device a message is about, from its topic and payload (`None`:
/// none can be told, and the first worker takes it).
pub type Route = fn(&str, &[u8]) -> Option<String>;

/// The worker thread's end of the queue. Every take (an input, an empty
/// queue, an idle wait that timed out) is a turn of the worker's loop and
/// beats its heartbeat.
pub struct Inputs {
    rx: Receiver<Input>,
    heartbeat: Heartbeat,
    acks: Arc<AckOrder>,
}

impl Inputs {
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

    /// The message is safe (stored, or nothing to store): the broker may
    /// forget it once every message delivered before it is safe too.
    pub fn ack(&self, ack: Ack) {
        self.acks.done(ack.seq, ack.token);
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

/// Running workers: their threads, their queues and the link feeding them.
pub struct Worker {
    link: Option<Link>,
    threads: Vec<std::thread::JoinHandle<()>>,
    inputs: Vec<SyncSender<Input>>,
    forwarder: tokio::task::JoinHandle<()>,
    heartbeat: Heartbeat,
}

/// The routing task: every link event to the worker (or workers) it is for.
struct Dispatch {
    to: Vec<SyncSender<Input>>,
    route: Route,
    seq: u64,
}

impl Dispatch {
    /// Where a link event goes, and as what. `Connected` reaches every
    /// worker, once the subscriptions are granted (as the edge agent
    /// does: what the node then publishes may be answered at once).
    fn route(&mut self, event: LinkEvent) -> Vec<(usize, Input)> {
        let count = self.to.len();
        match event {
            LinkEvent::Subscribed { .. } => (0..count).map(|i| (i, Input::Connected)).collect(),
            LinkEvent::Message(m) => {
                let Message {
                    topic,
                    payload,
                    ack: token,
                    ..
                } = m;
                let shard = if count > 1 {
                    (self.route)(&topic, &payload).map_or(0, |device| shard_of(&device, count))
                } else {
                    0
                };
                let ack = Ack {
                    seq: self.seq,
                    token,
                };
                self.seq += 1;
                vec![(
                    shard,
                    Input::Message(Delivery {
                        topic,
                        payload,
                        ack,
                    }),
                )]
            }
            LinkEvent::Confirmed(token) => {
                let (shard, local) = split_token(token, count);
                vec![(shard, Input::Confirmed(local))]
            }
            LinkEvent::Connected { .. } | LinkEvent::Disconnected { .. } => Vec::new(),
        }
    }
}

impl Worker {
    /// Starts `workers` threads named `name` (`name-1`, ... after the
    /// first): each runs `init` for its [`Shard`] (restoring its part of
    /// the store, building its node), reports how that went, then hands
    /// its queue to `run`. Only once all are ready are the link's events
    /// forwarded, each message to the worker owning the device `route`
    /// names.
    pub async fn start<C, E>(
        mut link: Link,
        name: &str,
        workers: usize,
        route: Route,
        init: impl Fn(Shard) -> Result<C, E> + Send + Sync + 'static,
        run: impl Fn(C, Inputs) + Send + Sync + 'static,
    ) -> Result<Worker, StartError<E>>
    where
        E: Send + 'static,
    {
        let count = workers.max(1);
        let init = Arc::new(init);
        let run = Arc::new(run);
        let acks = Arc::new(AckOrder::new(link.handle.clone()));
        let heartbeats = Heartbeat::shared(count);
        let heartbeat = heartbeats[0].clone();
        let mut inputs = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let mut ready = Vec::with_capacity(count);
        for (index, heartbeat) in heartbeats.into_iter().enumerate() {
            let (tx, rx) = sync_channel(INPUT_QUEUE);
            let rx = Inputs {
                rx,
                heartbeat,
                acks: Arc::clone(&acks),
            };
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let (init, run) = (Arc::clone(&init), Arc::clone(&run));
            let shard = Shard { index, count };
            let thread_name = if index == 0 {
                name.to_string()
            } else {
                format!("{name}-{index}")
            };
            let thread = std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || match init(shard) {
                    Ok(core) => {
                        let _ = ready_tx.send(Ok(()));
                        run(core, rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                })
                .map_err(StartError::Thread)?;
            inputs.push(tx);
            threads.push(thread);
            ready.push(ready_rx);
        }
        // Any worker failing ends them all: dropping the queues stops the
        // ones that started.
        for ready_rx in ready {
            match ready_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StartError::Init(e)),
                Err(_) => {
                    return Err(StartError::Thread(std::io::Error::other(
                        "worker thread ended during start",
                    )));
                }
            }
        }
        let mut events = std::mem::replace(&mut link.events, tokio::sync::mpsc::channel(1).1);
        let mut dispatch = Dispatch {
            to: inputs.clone(),
            route,
            seq: 0,
        };
        let forwarder = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                for (shard, input) in dispatch.route(event) {
                    let Some(to) = dispatch.to.get(shard) else {
                        continue;
                    };
                    if veil_link::hand_to_worker(to, input).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Worker {
            link: Some(link),
            threads,
            inputs,
            forwarder,
            heartbeat,
        })
    }

    /// The workers' heartbeat (for [`crate::notify::spawn_watchdog`]): as
    /// old as the least recent beat of any worker.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Stops cleanly: each worker finishes the message in hand, the store
    /// is flushed, the MQTT session is closed.
    pub async fn shutdown(mut self) {
        self.stop(|| Input::Shutdown).await;
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
        self.stop(|| Input::Crash).await;
    }

    async fn stop(&mut self, how: fn() -> Input) {
        self.forwarder.abort();
        for inputs in &self.inputs {
            let inputs = inputs.clone();
            // The queue may be full; the worker empties it.
            let _ = tokio::task::spawn_blocking(move || inputs.send(how()).is_ok()).await;
        }
        for thread in self.threads.drain(..) {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.forwarder.abort();
        // When a queue is full its worker still stops: it sees every
        // sender gone once it has emptied the queue.
        for inputs in &self.inputs {
            let _ = inputs.try_send(Input::Crash);
        }
    }
}
