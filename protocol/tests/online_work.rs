//! A's online work is plaintext arithmetic plus one join per ciphertext it
//! sends B: no exponentiation, packing or re-randomization while a frame
//! waits. A backend that counts A's ciphertext operations, armed only
//! while A handles the frame and B's replies, must count none.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::{configs, device_for, keys, model, pima_rows};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use veil_protocol::{
    Engine, I256, Outgoing, Params, Peer, Plain, PlainCt, PublicOps, Result, ServerA, ServerB,
};

#[derive(Default)]
struct Counts {
    armed: AtomicBool,
    ciphertext_ops: AtomicUsize,
    joins: AtomicUsize,
}

/// The plaintext backend, counting every ciphertext operation while armed.
struct Counting {
    inner: Plain,
    counts: Arc<Counts>,
}

impl Counting {
    fn op(&self) {
        if self.counts.armed.load(Ordering::SeqCst) {
            self.counts.ciphertext_ops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl PublicOps for Counting {
    type Ct = PlainCt;
    type Prepared = Vec<I256>;
    type Residues = Plain;

    fn name(&self) -> &'static str {
        "counting"
    }
    fn encrypt(&self, v: I256) -> PlainCt {
        self.op();
        self.inner.encrypt(v)
    }
    fn constant(&self, v: I256) -> PlainCt {
        self.op();
        self.inner.constant(v)
    }
    fn add(&self, a: &PlainCt, b: &PlainCt) -> PlainCt {
        self.op();
        self.inner.add(a, b)
    }
    fn add_plain(&self, a: &PlainCt, k: I256) -> PlainCt {
        self.op();
        self.inner.add_plain(a, k)
    }
    fn scale(&self, a: &PlainCt, k: I256) -> PlainCt {
        self.op();
        self.inner.scale(a, k)
    }
    fn rerandomize(&self, a: &PlainCt) -> PlainCt {
        self.op();
        self.inner.rerandomize(a)
    }
    fn prepare(&self, xs: &[PlainCt]) -> Result<Vec<I256>> {
        self.op();
        self.inner.prepare(xs)
    }
    fn dot(&self, prepared: &Vec<I256>, terms: &[(u32, i64)]) -> Result<PlainCt> {
        self.op();
        self.inner.dot(prepared, terms)
    }
    fn slots(&self, value_bits: u32) -> Result<usize> {
        self.inner.slots(value_bits)
    }
    fn pack(&self, value_bits: u32, values: &[PlainCt]) -> Result<PlainCt> {
        self.op();
        self.inner.pack(value_bits, values)
    }
    fn pack_shifted(
        &self,
        value_bits: u32,
        values: &[PlainCt],
        shifts: &[u32],
        offsets: &[I256],
    ) -> Result<PlainCt> {
        self.op();
        self.inner.pack_shifted(value_bits, values, shifts, offsets)
    }
    fn shift(&self, c: &PlainCt, e: u32) -> PlainCt {
        self.op();
        self.inner.shift(c, e)
    }
    fn encode(&self, c: &PlainCt) -> Vec<u8> {
        self.inner.encode(c)
    }
    fn decode(&self, bytes: &[u8]) -> Result<PlainCt> {
        self.op();
        self.inner.decode(bytes)
    }
    fn decode_many(&self, items: &[Vec<u8>]) -> Result<Vec<PlainCt>> {
        self.op();
        self.inner.decode_many(items)
    }
    fn residues(&self) -> &Plain {
        &self.inner
    }
    fn join(&self, cipher: &PlainCt, plain: &PlainCt) -> Result<PlainCt> {
        if self.counts.armed.load(Ordering::SeqCst) {
            self.counts.joins.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.join(cipher, plain)
    }
}

/// Delivers `first` and everything it causes; A's handling of frames and
/// replies runs armed, its offline steps disarmed. Returns the messages
/// A sent B online (rounds and the output).
fn pump(engine: &mut Engine<Counting, Plain>, counts: &Counts, first: Outgoing) -> Vec<Outgoing> {
    let mut queue = vec![first];
    let mut sent = Vec::new();
    while let Some(out) = queue.pop() {
        let kind = out.envelope.body.kind();
        let online = matches!(kind, "frame" | "round-reply");
        if matches!(kind, "round" | "output") {
            sent.push(out.clone());
        }
        let replies = match out.to {
            Peer::ServerA => {
                counts.armed.store(online, Ordering::SeqCst);
                let replies = engine.a_mut().handle(out.envelope).expect("A accepts");
                counts.armed.store(false, Ordering::SeqCst);
                replies
            }
            Peer::ServerB => engine.b_mut().handle(out.envelope).expect("B accepts"),
            Peer::Device => continue,
        };
        queue.extend(replies);
        while engine.a_mut().has_offline_work() {
            queue.extend(engine.a_mut().offline_step().expect("precomputation"));
        }
    }
    sent
}

#[test]
fn a_joins_offline_halves_online_and_does_nothing_else_to_ciphertexts() {
    for name in ["pima-mlp", "pima-tanh"] {
        let m = model(name);
        let params = Params::default();
        let (ka, kb) = keys();
        let device = device_for(&m, &params, &ka, &kb);
        let (ca, cb) = configs(&m, &params, ka, kb);
        let counts = Arc::new(Counts::default());
        let backend = Counting {
            inner: Plain::default(),
            counts: Arc::clone(&counts),
        };
        let a = ServerA::new(ca, backend).expect("server A");
        let b = ServerB::new(cb, Plain::default()).expect("server B");
        let mut engine = Engine::new(device, a, b, [3; 32]);
        let rows = pima_rows();
        let x = m.encode_input(&rows[0].0).expect("in bounds");
        let first = engine.infer(&x).expect("a first frame opens the session");
        // The first frame's infer precomputed the counters after it.
        let frame = engine
            .device_mut()
            .mask_frame(&x, first.t + 1, &[])
            .expect("masks");
        let sent = pump(&mut engine, &counts, frame);
        let ciphertexts: usize = sent
            .iter()
            .map(|o| match &o.envelope.body {
                veil_protocol::Body::Round(r) => {
                    r.values.len() + r.masked.len() + r.masked_alpha.len()
                }
                veil_protocol::Body::Output(out) => out.values.len(),
                _ => 0,
            })
            .sum();
        assert!(sent.iter().any(|o| o.envelope.body.kind() == "output"));
        assert_eq!(counts.ciphertext_ops.load(Ordering::SeqCst), 0, "{name}");
        assert_eq!(counts.joins.load(Ordering::SeqCst), ciphertexts, "{name}");
    }
}
