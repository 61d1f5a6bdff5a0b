//! Accepting a session on either server: the checks both servers make on a
//! device's session message, and the recovery of the seed.

use crate::error::{ProtocolError, Result};
use crate::messages::SessionInit;
use crate::params::Params;
use crate::prf::{Seed, SessionId};
use std::collections::HashMap;
use veil_model::Topology;
use veil_paillier::SecretKey;
use zeroize::{Zeroize, Zeroizing};

/// A server's record of a session, owned by one device.
pub(crate) trait Owned {
    fn device(&self) -> &str;
}

/// The session `sid`, if it exists and belongs to `device`.
pub(crate) fn lookup<'a, S: Owned>(
    sessions: &'a HashMap<SessionId, S>,
    device: &str,
    sid: SessionId,
) -> Result<&'a S> {
    let session = sessions
        .get(&sid)
        .ok_or(ProtocolError::UnknownSession(sid))?;
    if session.device() != device {
        return Err(ProtocolError::WrongDevice {
            sid,
            owner: session.device().to_string(),
            claimed: device.to_string(),
        });
    }
    Ok(session)
}

/// Whether a session message is a redelivery of one already accepted
/// (idempotent); an error if another device owns the id.
pub(crate) fn known<S: Owned>(
    sessions: &HashMap<SessionId, S>,
    device: &str,
    sid: SessionId,
) -> Result<bool> {
    if sessions.contains_key(&sid) {
        lookup(sessions, device, sid)?;
        return Ok(true);
    }
    Ok(false)
}

/// Checks that the session is for this model, these parameters and this
/// server's key, and decrypts its seed.
pub(crate) fn accept(
    init: &SessionInit,
    key: &SecretKey,
    topology: &Topology,
    params: &Params,
) -> Result<Seed> {
    if init.model != topology.name || init.topology != topology.fingerprint() {
        return Err(ProtocolError::ModelMismatch {
            session_model: init.model.clone(),
            session_topology: init.topology,
            served_model: topology.name.clone(),
            served_topology: topology.fingerprint(),
        });
    }
    if init.params != params.fingerprint() {
        return Err(ProtocolError::ParamsMismatch);
    }
    let public = key.public_key();
    if init.server_key != public.fingerprint() {
        return Err(ProtocolError::KeyMismatch {
            session_key: init.server_key,
            server_key: public.fingerprint(),
        });
    }
    let ciphertext = public.ciphertext_from_bytes(&init.seed)?;
    let plaintext = Zeroizing::new(key.decrypt(&ciphertext)?);
    let residue = plaintext.residue();
    if residue.bit_width_vartime() > 256 {
        return Err(ProtocolError::SeedTooWide);
    }
    let bytes = Zeroizing::new(residue.to_be_bytes());
    let mut seed = [0u8; 32];
    let tail = bytes.len().saturating_sub(32);
    seed.copy_from_slice(&bytes[tail..]);
    let accepted = Seed::from_bytes(seed);
    seed.zeroize();
    Ok(accepted)
}
