//! Why a protocol step was refused, as data: the nodes decide by variant
//! (and by [`ProtocolError::code`], what goes on the wire), never by text.

use crate::SessionId;
use crate::messages::RejectCode;
use veil_model::ActivationKind;

/// Why a message's bytes do not decode. Every reason concerns the bytes
/// alone, never the state of a session.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message stops in the middle of a field.
    #[error("message ends early")]
    Truncated,
    /// A LEB128 integer with padding bytes (its encoding must be minimal,
    /// so that one value has one encoding).
    #[error("overlong integer")]
    OverlongVarint,
    /// A LEB128 integer above `u64::MAX`.
    #[error("integer above 64 bits")]
    VarintOverflow,
    /// Bytes after a message that must end.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A compact message kind this version does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// An envelope body index this version does not know.
    #[error("unknown body {0}")]
    UnknownBody(u32),
    /// A refusal code index this version does not know.
    #[error("unknown refusal code {0}")]
    UnknownRejectCode(u8),
    /// A refusal's detail that is not UTF-8.
    #[error("refusal detail is not UTF-8")]
    DetailNotUtf8,
    /// A frame acknowledging a counter at or after its own (or before 0).
    #[error("frame {frame} acknowledges a counter {back} back, which is not earlier")]
    AckNotEarlier {
        /// The frame's own counter.
        frame: u64,
        /// The distance back the message claims.
        back: u64,
    },
    /// A device name of the wrong length.
    #[error("device name of {len} bytes (it must have 1 to {max})")]
    DeviceNameLength {
        /// The name's length in bytes.
        len: usize,
        /// [`crate::MAX_DEVICE_NAME`].
        max: usize,
    },
    /// A device name with a character that cannot be an MQTT topic level
    /// or user name.
    #[error("device name contains {0:?}; only letters, digits, '-', '_' and '.' are allowed")]
    DeviceNameChar(char),
    /// A plaintext stand-in ciphertext with an unknown tag or a length its
    /// tag does not allow.
    #[error("plain ciphertext: unknown tag {tag} or length {len}")]
    PlainLayout {
        /// The first byte.
        tag: u8,
        /// The length after the tag.
        len: usize,
    },
    /// An empty plaintext stand-in ciphertext.
    #[error("plain ciphertext: empty")]
    PlainEmpty,
    /// A packed plaintext stand-in with no values or more than its width
    /// leaves slots for.
    #[error("plain ciphertext: {values} values of {value_bits} bits, more than fit or none")]
    PlainSlots {
        /// Values the ciphertext carries.
        values: usize,
        /// Width it claims for each.
        value_bits: u32,
    },
    /// A masked reply item that is not [`crate::reply`]'s fixed width.
    #[error("a masked reply item of {got} bytes, expected {expected}")]
    ReplyItem {
        /// Its length.
        got: usize,
        /// The only length an item has.
        expected: usize,
    },
    /// What bincode refused in an envelope (a short read, an invalid enum
    /// tag, a list beyond [`crate::MAX_LIST_ITEMS`], ...).
    #[error(transparent)]
    Bincode(#[from] bincode::error::DecodeError),
}

/// Why a protocol step was refused. Every variant says enough to log the
/// cause without revealing secrets.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes do not form a message.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// A message could not be encoded: a value this build built does not
    /// fit bincode's limits.
    #[error("cannot encode a message: {0}")]
    Encode(#[source] bincode::error::EncodeError),
    /// A message of another protocol version.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    Version {
        /// The version the message carries.
        got: u16,
        /// [`crate::PROTOCOL_VERSION`].
        supported: u16,
    },
    /// No session with this id is held.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// A message about another device's session.
    #[error("session {sid} belongs to device {owner}, not {claimed}")]
    WrongDevice {
        /// The session.
        sid: SessionId,
        /// The device that opened it.
        owner: String,
        /// The device the message names.
        claimed: String,
    },
    /// A frame counter seen before in this session.
    #[error("frame counter {t} of session {sid} was already used (last seen {last})")]
    Replay {
        /// The session.
        sid: SessionId,
        /// The counter used again.
        t: u64,
        /// The newest counter the session has seen.
        last: u64,
    },
    /// A counter below the first one of its session.
    #[error("counter {counter} precedes the session's first counter {first}")]
    BeforeSession {
        /// The counter the message carries.
        counter: u64,
        /// The session's first counter.
        first: u64,
    },
    /// A frame acknowledging a counter that is not below its own.
    #[error("out of order: frame {frame} acknowledges counter {ack}, which is not earlier")]
    AckNotEarlier {
        /// The frame's counter.
        frame: u64,
        /// The acknowledged counter.
        ack: u64,
    },
    /// A round or reply for a stage other than the one its frame is at.
    #[error(
        "out of order: {what} for stage {got} of frame {frame}, the frame is at stage {expected}"
    )]
    StageOrder {
        /// `"round"` or `"reply"`.
        what: &'static str,
        /// The frame counter.
        frame: u64,
        /// The stage the frame is at.
        expected: usize,
        /// The stage the message is for.
        got: usize,
    },
    /// A frame's output before its last activation round was answered.
    #[error("out of order: output of frame {frame} before its stage {stage} round")]
    OutputEarly {
        /// The frame counter.
        frame: u64,
        /// The activation stage still to come.
        stage: usize,
    },
    /// A frame started over more often than
    /// [`crate::Params::max_restarts`] allows.
    #[error("out of order: frame {frame} was restarted {used} times already")]
    TooManyRestarts {
        /// The frame counter.
        frame: u64,
        /// Restarts granted so far.
        used: u32,
    },
    /// A count that does not match what the model or the message implies.
    #[error("wrong size: {got} {what}, expected {expected}")]
    Size {
        /// What is counted.
        what: &'static str,
        /// The count the model or the message implies.
        expected: usize,
        /// The count found.
        got: usize,
    },
    /// [`ProtocolError::Size`] of one stage's data.
    #[error("wrong size: stage {stage} has {got} {what}, expected {expected}")]
    StageSize {
        /// The stage.
        stage: usize,
        /// What is counted.
        what: &'static str,
        /// The count the stage implies.
        expected: usize,
        /// The count found.
        got: usize,
    },
    /// A list of ciphertexts of the wrong length for the entries it packs.
    #[error("wrong size: {got} {what} ciphertexts for {entries} entries, expected {expected}")]
    Ciphertexts {
        /// Which list (`"value"`, `"masked"`, `"output"`, ...).
        what: &'static str,
        /// Entries the list must carry.
        entries: usize,
        /// Ciphertexts those entries take with the agreed packing.
        expected: usize,
        /// Ciphertexts found.
        got: usize,
    },
    /// An index beyond the list it points into.
    #[error("wrong size: {what} {index} beyond the {len} available")]
    Index {
        /// What is indexed.
        what: &'static str,
        /// The index.
        index: usize,
        /// The list's length.
        len: usize,
    },
    /// More of something than a limit allows.
    #[error("wrong size: {got} {what}, more than the limit of {limit}")]
    TooLarge {
        /// What is counted (bytes of a message, acknowledgements, ...).
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The count found.
        got: u64,
    },
    /// A mask request for no counters or for more than B hands out at once.
    #[error("wrong size: mask request for {count} counters (1..={max})")]
    MaskRequest {
        /// Counters requested.
        count: u64,
        /// [`crate::MAX_MASK_REQUEST`].
        max: u64,
    },
    /// A message carrying a part its kind or stage never has.
    #[error("wrong size: unexpected {what}")]
    Superfluous {
        /// The part.
        what: &'static str,
    },
    /// A packed ciphertext of the plaintext stand-in without the values
    /// asked for.
    #[error("wrong size: expected {count} packed values of {value_bits} bits")]
    Packed {
        /// Values asked for.
        count: usize,
        /// Their width.
        value_bits: u32,
    },
    /// The model's first stage is not linear (A computes it on the
    /// device's encrypted input).
    #[error("does not fit the published topology: the first stage must be linear")]
    FirstStageNotLinear,
    /// A stage the protocol runs as an activation round is not one.
    #[error("does not fit the published topology: stage {stage} is not an activation")]
    NotActivation {
        /// The stage.
        stage: usize,
    },
    /// An activation stage whose input is not a linear stage's output.
    #[error(
        "does not fit the published topology: activation stage {stage} does not follow a linear stage"
    )]
    ActivationWithoutLinear {
        /// The stage.
        stage: usize,
    },
    /// An activation that blind mode cannot evaluate.
    #[error(
        "does not fit the published topology: stage {stage} ({kind:?}) cannot run in blind mode"
    )]
    BlindUnsupported {
        /// The stage.
        stage: usize,
        /// Its activation.
        kind: ActivationKind,
    },
    /// A pooling stage with no windows.
    #[error("does not fit the published topology: pooling stage {stage} has no windows")]
    EmptyPool {
        /// The stage.
        stage: usize,
    },
    /// A linear stage the private plan has no layer for.
    #[error("does not fit the published topology: the plan has no layer for stage {stage}")]
    MissingLayer {
        /// The stage.
        stage: usize,
    },
    /// A plan layer whose shape differs from the topology's stage.
    #[error("does not fit the published topology: plan and topology disagree on stage {stage}")]
    PlanMismatch {
        /// The stage.
        stage: usize,
    },
    /// A session opened for another model than the one served.
    #[error(
        "does not fit the published topology: session is for model {session_model:?} ({}), this server serves {served_model:?} ({})",
        short(.session_topology),
        short(.served_topology)
    )]
    ModelMismatch {
        /// The model the session names.
        session_model: String,
        /// The topology fingerprint the session names.
        session_topology: [u8; 32],
        /// The model this server serves.
        served_model: String,
        /// Its topology fingerprint.
        served_topology: [u8; 32],
    },
    /// A round grouping entries other than its stage does.
    #[error(
        "does not fit the published topology: groups of {got} entries, stage {stage} has {expected}"
    )]
    GroupSize {
        /// The stage.
        stage: usize,
        /// The stage's group size.
        expected: usize,
        /// The round's.
        got: usize,
    },
    /// A round whose dummy groups number outside the agreed range.
    #[error(
        "does not fit the published topology: {groups} groups for {real} real ones (dummies must number {min_dummies} to {max_dummies})"
    )]
    GroupCount {
        /// Groups in the round.
        groups: usize,
        /// Real groups of the stage.
        real: usize,
        /// Fewest dummies allowed.
        min_dummies: usize,
        /// Most dummies allowed for `real` groups.
        max_dummies: usize,
    },
    /// A session opened under other protocol parameters.
    #[error("parameter mismatch: session parameters differ from this server's")]
    ParamsMismatch,
    /// A session whose seed is encrypted under another server key.
    #[error(
        "parameter mismatch: seed is encrypted under key {}, this server's key is {}",
        short(.session_key),
        short(.server_key)
    )]
    KeyMismatch {
        /// The key fingerprint the session names.
        session_key: [u8; 32],
        /// This server's key fingerprint.
        server_key: [u8; 32],
    },
    /// A message packed (or not) against the agreed parameters.
    #[error("parameter mismatch: packing {got}, the agreed parameters say {agreed}")]
    PackingMismatch {
        /// Whether the agreed parameters pack.
        agreed: bool,
        /// Whether the message packs.
        got: bool,
    },
    /// Statistical security σ outside what the masks are sized for.
    #[error("parameter mismatch: σ = {0} is outside 16..=128")]
    Sigma(u32),
    /// Comparison-blinding widths outside what the multi-exponentiation
    /// takes.
    #[error(
        "parameter mismatch: β' must have 8 to 62 bits and β a log-range of 1 to 128 bits (got {beta_bits} and {beta_log_range})"
    )]
    Beta {
        /// Bits of β'.
        beta_bits: u32,
        /// Log-range of β.
        beta_log_range: u32,
    },
    /// A masked input wider than a frame value carries.
    #[error(
        "parameter mismatch: input bound 2^{input_bound_bits} with σ = {sigma} does not fit a 128-bit frame value"
    )]
    InputTooWide {
        /// The model's input bound.
        input_bound_bits: u32,
        /// σ.
        sigma: u32,
    },
    /// A stage whose pre-activation bound leaves no room for its masks in
    /// a ciphertext slot.
    #[error(
        "parameter mismatch: stage {stage}: bound 2^{kappa} leaves no room for masks ({needed} bits needed, {available} available)"
    )]
    NoRoomForMasks {
        /// The stage.
        stage: usize,
        /// Its pre-activation bound in bits.
        kappa: u32,
        /// Bits the masked value needs.
        needed: u32,
        /// [`crate::MAX_VALUE_BITS`].
        available: u32,
    },
    /// An output bound too wide for the output masks.
    #[error("parameter mismatch: output bound 2^{output_bits} too large for the output masks")]
    OutputTooWide {
        /// The output bound in bits.
        output_bits: u32,
    },
    /// The session's frame counters are used up.
    #[error("value out of range: frame counters exhausted")]
    CountersExhausted,
    /// A counter so high that B's mask look-ahead would run past `u64`.
    #[error(
        "value out of range: frame counter {counter} leaves no room for {lookahead} counters of mask look-ahead"
    )]
    NoLookahead {
        /// The counter.
        counter: u64,
        /// Counters of look-ahead.
        lookahead: u64,
    },
    /// A masked frame value above the largest an honest device sends.
    #[error("value out of range: frame value {index} is outside the masked input range")]
    MaskedInput {
        /// The feature's index.
        index: usize,
    },
    /// A feature outside the model's input range.
    #[error(
        "value out of range: feature {index} is outside the model's input range [{low}, {high}]"
    )]
    Feature {
        /// The feature's index.
        index: usize,
        /// The smallest value allowed.
        low: i128,
        /// The largest value allowed.
        high: i128,
    },
    /// A value wider than its bit field.
    #[error("value out of range: value {index} does not fit in {bits} bits")]
    FieldOverflow {
        /// The value's index.
        index: usize,
        /// The field's width.
        bits: u32,
    },
    /// A bit field wider than 128 bits.
    #[error("value out of range: field width {0} is above 128")]
    FieldWidth(u32),
    /// A decrypted session seed above 256 bits.
    #[error("value out of range: session seed is wider than 256 bits")]
    SeedTooWide,
    /// A decrypted value beyond the bound of its list.
    #[error("value out of range: {what} value beyond 2^{bits}")]
    Bound {
        /// The list (`"value"`, `"masked"`, `"output"`, ...).
        what: &'static str,
        /// The bound's bits.
        bits: u32,
    },
    /// A value that left the range the protocol's arithmetic keeps it in:
    /// only a dishonest peer gets there.
    #[error("value out of range: {what}")]
    Overflow {
        /// Which value.
        what: &'static str,
    },
    /// A repeated round that differs from the one B answered before.
    #[error("value out of range: round {stage} of frame {frame} differs from the one answered")]
    RoundChanged {
        /// The stage.
        stage: usize,
        /// The frame counter.
        frame: u64,
    },
    /// The device must reserve a block of counters before it uses one.
    #[error("counter block must be reserved before use (persist {mark}, then confirm it)")]
    ReservationNeeded {
        /// The mark to persist.
        mark: u64,
    },
    /// The session has used its frames.
    #[error("the session has used its {0} frames: open a new one")]
    RekeyNeeded(u64),
    /// A message of a kind its recipient never takes.
    #[error("unexpected message: {kind} sent to {to}")]
    Misdirected {
        /// [`crate::Body::kind`] of the message.
        kind: &'static str,
        /// The recipient.
        to: &'static str,
    },
    /// A body kind the compact device encoding has no form for.
    #[error("unexpected message: {0} does not travel on a device topic")]
    NotOnDeviceTopic(&'static str),
    /// The device has no open session to mask a frame under.
    #[error("unexpected message: no session: open one first")]
    NoSession,
    /// A retry of a frame that is not in flight.
    #[error("unexpected message: frame {frame} of session {sid} is not in flight")]
    NotInFlight {
        /// The session.
        sid: SessionId,
        /// The frame counter.
        frame: u64,
    },
    /// A reply from B for a frame without a round out.
    #[error("unexpected message: no round of frame {0} is waiting for B")]
    NoRoundWaiting(u64),
    /// An in-process run whose frame ended without a result.
    #[error("unexpected message: frame {0} produced no result")]
    NoResult(u64),
    /// An in-process run whose frame expired.
    #[error("unexpected message: frame {0} expired")]
    Expired(u64),
    /// A server's own per-frame state lost its consistency (a bug, not an
    /// input: each names the state that is missing).
    #[error("unexpected message: {0}")]
    Inconsistent(&'static str),
    /// A node refused a message (in-process runs, where a refusal ends
    /// the run).
    #[error("{what} from {from} refused ({code}): {detail}")]
    Refused {
        /// The message kind.
        what: &'static str,
        /// The refusing party.
        from: String,
        /// The refusal's code.
        code: RejectCode,
        /// The refusal's detail.
        detail: String,
    },
    /// A Paillier operation failed.
    #[error(transparent)]
    Paillier(#[from] veil_paillier::PaillierError),
    /// A model operation failed.
    #[error(transparent)]
    Model(#[from] veil_model::ModelError),
}

/// The first 8 bytes of a fingerprint in hex: enough to tell two apart in
/// a log line.
fn short(fingerprint: &[u8; 32]) -> String {
    hex::encode(fingerprint.get(..8).unwrap_or(fingerprint))
}

impl From<bincode::error::DecodeError> for ProtocolError {
    fn from(e: bincode::error::DecodeError) -> ProtocolError {
        ProtocolError::Decode(DecodeError::Bincode(e))
    }
}

impl ProtocolError {
    /// What B may tell A about a refusal: a coarse code. Detail such as
    /// which packed slot broke its bound would depend on the plaintexts,
    /// and would let an active A binary-search values under B's key.
    pub fn code(&self) -> RejectCode {
        use ProtocolError as E;
        match self {
            E::UnknownSession(_) => RejectCode::UnknownSession,
            E::WrongDevice { .. } => RejectCode::WrongDevice,
            E::Replay { .. } => RejectCode::Replay,
            E::Version { .. } => RejectCode::Version,
            E::BeforeSession { .. }
            | E::AckNotEarlier { .. }
            | E::StageOrder { .. }
            | E::OutputEarly { .. }
            | E::TooManyRestarts { .. } => RejectCode::OutOfOrder,
            E::Decode(_)
            | E::Encode(_)
            | E::Size { .. }
            | E::StageSize { .. }
            | E::Ciphertexts { .. }
            | E::Index { .. }
            | E::TooLarge { .. }
            | E::MaskRequest { .. }
            | E::Superfluous { .. }
            | E::Packed { .. } => RejectCode::Malformed,
            E::Refused { code, .. } => *code,
            _ => RejectCode::Refused,
        }
    }
}

/// A protocol step's outcome.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
