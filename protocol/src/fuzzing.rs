//! Entry points for the fuzz targets in `fuzz/` and for the regression
//! tests that replay their findings on stable. Each takes arbitrary bytes
//! and must return without panicking. Not part of the crate's API.

use crate::backend::{Plain, PublicOps};
use crate::codec::{pack_ints, unpack_ints};
use crate::messages::Envelope;

/// Any message as a party receives it; what decodes must re-encode to
/// bytes that decode to the same envelope.
pub fn envelope(data: &[u8]) {
    let Ok(envelope) = Envelope::from_bytes(data) else {
        return;
    };
    let _ = envelope.body.kind();
    let bytes = envelope.to_bytes().expect("a decoded envelope re-encodes");
    let again = Envelope::from_bytes(&bytes).expect("a re-encoded envelope decodes");
    assert_eq!(again, envelope);
}

/// Bit unpacking of frames and results: the first byte is the field
/// width, the next two the field count, the rest the packed bytes. What
/// unpacks must pack back to the same values.
pub fn bits(data: &[u8]) {
    let [width, c0, c1, packed @ ..] = data else {
        return;
    };
    let width = u32::from(*width);
    let count = usize::from(u16::from_le_bytes([*c0, *c1]));
    let Ok(values) = unpack_ints(packed, count, width) else {
        return;
    };
    assert_eq!(values.len(), count);
    let bytes = pack_ints(&values, width).expect("unpacked values fit their width");
    let again = unpack_ints(&bytes, count, width).expect("packed values unpack");
    assert_eq!(again, values);
}

/// The plaintext backend's ciphertext decoding (what a test deployment's
/// servers read from each other).
pub fn plain_ciphertext(data: &[u8]) {
    let plain = Plain::default();
    if let Ok(ct) = plain.decode(data) {
        let bytes = plain.encode(&ct);
        let again = plain
            .decode(&bytes)
            .expect("a re-encoded plain ciphertext decodes");
        assert_eq!(plain.encode(&again), bytes);
    }
}
