use crate::SessionId;
use crate::messages::RejectCode;

/// Why a protocol step was refused. Every variant says enough to log the
/// cause without revealing secrets.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    Version { got: u16, supported: u16 },
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    #[error("session {sid} belongs to device {owner}, not {claimed}")]
    WrongDevice {
        sid: SessionId,
        owner: String,
        claimed: String,
    },
    #[error("frame counter {t} of session {sid} was already used (last seen {last})")]
    Replay { sid: SessionId, t: u64, last: u64 },
    #[error("out of order: {0}")]
    OutOfOrder(String),
    #[error("wrong size: {0}")]
    Size(String),
    #[error("does not fit the published topology: {0}")]
    Topology(String),
    #[error("parameter mismatch: {0}")]
    Params(String),
    #[error("value out of range: {0}")]
    Range(String),
    #[error("counter block must be reserved before use (persist {mark}, then confirm it)")]
    ReservationNeeded { mark: u64 },
    #[error("the session has used its {0} frames: open a new one")]
    RekeyNeeded(u64),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// A node refused a message (in-process runs, where a refusal ends
    /// the run).
    #[error("{what} from {from} refused ({code}): {detail}")]
    Refused {
        what: &'static str,
        from: String,
        code: RejectCode,
        detail: String,
    },
    #[error(transparent)]
    Paillier(#[from] veil_paillier::PaillierError),
    #[error(transparent)]
    Model(#[from] veil_model::ModelError),
}

impl ProtocolError {
    /// What B may tell A about a refusal: a coarse code. Detail such as
    /// which packed slot broke its bound would depend on the plaintexts,
    /// and would let an active A binary-search values under B's key.
    pub fn code(&self) -> RejectCode {
        match self {
            ProtocolError::UnknownSession(_) => RejectCode::UnknownSession,
            ProtocolError::WrongDevice { .. } => RejectCode::WrongDevice,
            ProtocolError::Replay { .. } => RejectCode::Replay,
            ProtocolError::Version { .. } => RejectCode::Version,
            ProtocolError::OutOfOrder(_) => RejectCode::OutOfOrder,
            ProtocolError::Decode(_) | ProtocolError::Size(_) => RejectCode::Malformed,
            ProtocolError::Refused { code, .. } => *code,
            _ => RejectCode::Refused,
        }
    }
}

pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
