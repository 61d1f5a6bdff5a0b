use std::path::PathBuf;

/// Everything that can go wrong in the Paillier engine.
#[derive(Debug, thiserror::Error)]
pub enum PaillierError {
    #[error("unsupported modulus size: {0} bits (supported: 2048, 3072)")]
    UnsupportedKeySize(u32),
    #[error("malformed key: {0}")]
    MalformedKey(String),
    #[error("malformed encoding: {0}")]
    Encoding(String),
    /// A key file of the other kind, e.g. a `.pub` file given as a secret key.
    #[error("this is a {found}, not a {expected}")]
    WrongKeyKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("ciphertext has {got} bytes, expected {expected}")]
    CiphertextLength { got: usize, expected: usize },
    #[error("ciphertext is not below N²")]
    CiphertextOutOfRange,
    #[error("ciphertext is not in Z*_(N²): it shares a factor with N")]
    CiphertextNotUnit,
    #[error("ciphertext {0} of the batch is not in Z*_(N²): it shares a factor with N")]
    CiphertextNotUnitAt(usize),
    #[error("plaintext out of range: {0}")]
    PlaintextRange(String),
    #[error("packing: {0}")]
    Packing(String),
    #[error("dimension mismatch: {0}")]
    Dimension(String),
    #[error("the ciphertext or plaintext belongs to another key")]
    KeyMismatch,
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = PaillierError> = std::result::Result<T, E>;
