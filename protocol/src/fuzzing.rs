//! Entry points for the fuzz targets in `fuzz/` and for the regression
//! tests that replay their findings on stable. Each takes arbitrary bytes
//! and must return without panicking. Not part of the crate's API.

use crate::backend::{Plain, PublicOps};
use crate::codec::{pack_fields, unpack_fields};
use crate::messages::Envelope;
use crate::reply::{decode_item, encode_item};

/// Any message as a party receives it, in both encodings: as a whole
/// envelope (servers' and session topics) and as a message on a device's
/// own topic. What decodes must re-encode to bytes that decode to the same
/// envelope.
pub fn envelope(data: &[u8]) {
    let routed = crate::route::envelope_device(data);
    if let Ok(envelope) = Envelope::from_bytes(data) {
        // A server's dispatcher routes by this head alone.
        assert_eq!(routed.as_deref(), Some(envelope.device.as_str()));
        let _ = envelope.body.kind();
        let bytes = envelope.to_bytes().expect("a decoded envelope re-encodes");
        let again = Envelope::from_bytes(&bytes).expect("a re-encoded envelope decodes");
        assert_eq!(again, envelope);
    }
    if let Ok(envelope) = Envelope::from_device_bytes("fuzz-device", data) {
        let _ = envelope.body.kind();
        let bytes = envelope
            .to_device_bytes()
            .expect("a decoded device message re-encodes");
        let again = Envelope::from_device_bytes("fuzz-device", &bytes)
            .expect("a re-encoded device message decodes");
        assert_eq!(again, envelope);
    }
}

/// Bit unpacking of frames and results: the first byte is the field
/// width (fields alternate between it and half of it, as a frame's
/// features differ in width), the second how many fields to leave out of
/// what the rest could hold, the rest the packed bytes, cut to the exact
/// length that many fields take (so most inputs reach the unpacking rather
/// than its length check). What unpacks must pack back to the same values.
pub fn bits(data: &[u8]) {
    let [width, fewer, packed @ ..] = data else {
        return;
    };
    let width = u32::from(*width);
    if width == 0 {
        let _ = unpack_fields(packed, &vec![0; packed.len().min(4096)]);
        return;
    }
    let pair = width + width / 2;
    let fits = packed.len() * 8 / pair as usize * 2;
    let count = fits.saturating_sub(usize::from(*fewer));
    let widths: Vec<u32> = (0..count)
        .map(|i| if i % 2 == 0 { width } else { width / 2 })
        .collect();
    let used: u64 = widths.iter().map(|w| u64::from(*w)).sum();
    let Ok(len) = usize::try_from(used.div_ceil(8)) else {
        return;
    };
    let Some(packed) = packed.get(..len) else {
        return;
    };
    let Ok(values) = unpack_fields(packed, &widths) else {
        return;
    };
    assert_eq!(values.len(), count);
    let bytes = pack_fields(&values, &widths).expect("unpacked values fit their width");
    let again = unpack_fields(&bytes, &widths).expect("packed values unpack");
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

/// One masked reply item of a `RoundReply` (what A reads of B's answers):
/// only its exact width decodes, and what decodes re-encodes to the same
/// bytes.
pub fn reply_item(data: &[u8]) {
    if let Ok(value) = decode_item(data) {
        assert_eq!(encode_item(value), data);
    }
}
