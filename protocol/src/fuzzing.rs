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
/// width, the second how many fields to leave out of what the rest could
/// hold, the rest the packed bytes, cut to the exact length that many
/// fields take (so most inputs reach the unpacking rather than its length
/// check). What unpacks must pack back to the same values.
pub fn bits(data: &[u8]) {
    let [width, fewer, packed @ ..] = data else {
        return;
    };
    let width = u32::from(*width);
    if width == 0 {
        let _ = unpack_ints(packed, packed.len(), width);
        return;
    }
    let fits = packed.len() * 8 / width as usize;
    let count = fits.saturating_sub(usize::from(*fewer));
    let Some(packed) = packed.get(..(count * width as usize).div_ceil(8)) else {
        return;
    };
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
