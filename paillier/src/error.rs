use std::path::PathBuf;

/// Everything that can go wrong in the Paillier engine.
#[derive(Debug, thiserror::Error)]
pub enum PaillierError {
    /// A key size other than 2048 or 3072 bits.
    #[error("unsupported modulus size: {0} bits (supported: 2048, 3072)")]
    UnsupportedKeySize(u32),
    /// A key's encoding or numbers are not a valid key.
    #[error("malformed key: {0}")]
    MalformedKey(String),
    /// Bytes that do not decode (length, magic, version).
    #[error("malformed encoding: {0}")]
    Encoding(String),
    /// A key file of the other kind, e.g. a `.pub` file given as a secret key.
    #[error("this is a {found}, not a {expected}")]
    WrongKeyKind {
        /// The kind the caller asked for.
        expected: &'static str,
        /// The kind the file holds.
        found: &'static str,
    },
    /// A ciphertext of the wrong byte length for the key.
    #[error("ciphertext has {got} bytes, expected {expected}")]
    CiphertextLength {
        /// Bytes received.
        got: usize,
        /// Bytes a ciphertext under this key has (2·|N|/8).
        expected: usize,
    },
    /// A ciphertext at or above N².
    #[error("ciphertext is not below N²")]
    CiphertextOutOfRange,
    /// A ciphertext sharing a factor with N (it would reveal the key).
    #[error("ciphertext is not in Z*_(N²): it shares a factor with N")]
    CiphertextNotUnit,
    /// [`PaillierError::CiphertextNotUnit`] for the batch entry given.
    #[error("ciphertext {0} of the batch is not in Z*_(N²): it shares a factor with N")]
    CiphertextNotUnitAt(usize),
    /// A value outside the signed plaintext range `(-N/2, N/2)`.
    #[error("plaintext out of range: {0}")]
    PlaintextRange(String),
    /// Values that do not fit the packing layout asked for.
    #[error("packing: {0}")]
    Packing(String),
    /// Operands of different lengths.
    #[error("dimension mismatch: {0}")]
    Dimension(String),
    /// Operands under different keys.
    #[error("the ciphertext or plaintext belongs to another key")]
    KeyMismatch,
    /// A key file that could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The engine's result type.
pub type Result<T, E = PaillierError> = std::result::Result<T, E>;
