//! The offline side of every message A sends B: the round code run over
//! cipher halves, every public constant dropped (the plain half online
//! carries it), every ciphertext re-randomized with A's noise for B.

use crate::backend::{PackChunk, PublicOps};
use crate::error::Result;
use ethnum::I256;

/// `P` with constants dropped: what a ciphertext is, less its plain half.
pub(super) struct CipherHalves<'a, P>(pub &'a P);

impl<P: PublicOps> PublicOps for CipherHalves<'_, P> {
    type Ct = P::Ct;
    type Prepared = P::Prepared;
    type Residues = P::Residues;

    fn name(&self) -> &'static str {
        "cipher halves"
    }
    fn encrypt(&self, _v: I256) -> P::Ct {
        self.0.constant(I256::ZERO)
    }
    fn constant(&self, _v: I256) -> P::Ct {
        self.0.constant(I256::ZERO)
    }
    fn add(&self, a: &P::Ct, b: &P::Ct) -> P::Ct {
        self.0.add(a, b)
    }
    fn add_plain(&self, a: &P::Ct, _k: I256) -> P::Ct {
        a.clone()
    }
    fn scale(&self, a: &P::Ct, k: I256) -> P::Ct {
        self.0.scale(a, k)
    }
    /// Fresh noise from A's source for B (the pool of full-length `r^N`):
    /// the joined ciphertext carries it, so B still receives ciphertexts
    /// it cannot link to anything.
    fn rerandomize(&self, a: &P::Ct) -> P::Ct {
        self.0.rerandomize(a)
    }
    fn prepare(&self, xs: &[P::Ct]) -> Result<P::Prepared> {
        self.0.prepare(xs)
    }
    fn dot(&self, prepared: &P::Prepared, terms: &[(u32, i64)]) -> Result<P::Ct> {
        self.0.dot(prepared, terms)
    }
    fn slots(&self, value_bits: u32) -> Result<usize> {
        self.0.slots(value_bits)
    }
    /// With the packing bias, which the plain half leaves out.
    fn pack(&self, value_bits: u32, values: &[P::Ct]) -> Result<P::Ct> {
        self.0.pack(value_bits, values)
    }
    fn encode(&self, c: &P::Ct) -> Vec<u8> {
        self.0.encode(c)
    }
    fn decode(&self, bytes: &[u8]) -> Result<P::Ct> {
        self.0.decode(bytes)
    }
    fn shift(&self, c: &P::Ct, e: u32) -> P::Ct {
        self.0.shift(c, e)
    }
    fn pack_shifted(
        &self,
        value_bits: u32,
        values: &[P::Ct],
        shifts: &[u32],
        _offsets: &[I256],
    ) -> Result<P::Ct> {
        self.0.pack_shifted(value_bits, values, shifts, &[])
    }
    /// Offsets dropped with the other constants; the inner backend may
    /// make its noise with the packing.
    fn seal_packed(&self, chunks: &[PackChunk<'_, P::Ct>]) -> Result<Vec<P::Ct>> {
        let chunks: Vec<PackChunk<'_, P::Ct>> = chunks
            .iter()
            .map(|c| PackChunk { offsets: &[], ..*c })
            .collect();
        self.0.seal_packed(&chunks)
    }
    fn residues(&self) -> &P::Residues {
        self.0.residues()
    }
    fn join(&self, cipher: &P::Ct, plain: &<P::Residues as PublicOps>::Ct) -> Result<P::Ct> {
        self.0.join(cipher, plain)
    }
}
