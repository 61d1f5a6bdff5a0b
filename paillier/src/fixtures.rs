//! Fixed key pairs for tests and benchmarks, so that no test pays for
//! generating 2048-bit keys. Their secret keys are public knowledge (they
//! are in the repository): never use them for anything real.

use crate::keys::SecretKey;
use std::sync::OnceLock;

fn load(cell: &'static OnceLock<SecretKey>, bytes: &'static [u8]) -> &'static SecretKey {
    cell.get_or_init(|| {
        // The bytes are compiled in and checked by this crate's tests.
        SecretKey::from_bytes(bytes).expect("fixture key decodes")
    })
}

/// A 2048-bit key pair (the usual choice for server B in tests).
pub fn key_2048_a() -> &'static SecretKey {
    static CELL: OnceLock<SecretKey> = OnceLock::new();
    load(&CELL, include_bytes!("../fixtures/key-a-2048.bin"))
}

/// A second, independent 2048-bit key pair (server A's session key in tests).
pub fn key_2048_b() -> &'static SecretKey {
    static CELL: OnceLock<SecretKey> = OnceLock::new();
    load(&CELL, include_bytes!("../fixtures/key-b-2048.bin"))
}

/// A 3072-bit key pair.
pub fn key_3072() -> &'static SecretKey {
    static CELL: OnceLock<SecretKey> = OnceLock::new();
    load(&CELL, include_bytes!("../fixtures/key-3072.bin"))
}
