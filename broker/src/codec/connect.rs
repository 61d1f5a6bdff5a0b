//! CONNECT (read, and rewritten for upstream) and CONNACK.

use super::*;

/// The last-will part of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub qos: u8,
    pub retain: bool,
    pub properties: Vec<u8>,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A decoded CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub clean: bool,
    pub keep_alive: u16,
    pub properties: Vec<u8>,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("version", &self.version)
            .field("clean", &self.clean)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Connect {
    pub fn decode(body: &[u8]) -> Result<Connect, CodecError> {
        let mut c = Cursor::new(body, "CONNECT");
        let name = c.string()?;
        let level = c.u8()?;
        let version = match (name, level) {
            ("MQTT", 4) => Version::V4,
            ("MQTT", 5) => Version::V5,
            _ => {
                return Err(CodecError::UnsupportedProtocol {
                    name: name.to_string(),
                    level,
                });
            }
        };
        let flags = c.u8()?;
        if flags & 0x01 != 0 {
            return Err(CodecError::Malformed("CONNECT reserved flag set"));
        }
        let clean = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let has_password = flags & 0x40 != 0;
        let has_username = flags & 0x80 != 0;
        if will_qos > 2 {
            return Err(CodecError::Malformed("CONNECT will QoS 3"));
        }
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(CodecError::Malformed("CONNECT will flags without a will"));
        }
        if version == Version::V4 && has_password && !has_username {
            return Err(CodecError::Malformed("CONNECT password without username"));
        }
        let keep_alive = c.u16()?;
        let properties = match version {
            Version::V5 => c.properties()?.to_vec(),
            Version::V4 => Vec::new(),
        };
        let client_id = c.string()?.to_string();
        let will = if will_flag {
            let properties = match version {
                Version::V5 => c.properties()?.to_vec(),
                Version::V4 => Vec::new(),
            };
            let topic = c.string()?.to_string();
            let payload = c.binary()?.to_vec();
            Some(Will {
                qos: will_qos,
                retain: will_retain,
                properties,
                topic,
                payload,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(c.string()?.to_string())
        } else {
            None
        };
        let password = if has_password {
            Some(c.binary()?.to_vec())
        } else {
            None
        };
        if !c.is_empty() {
            return Err(CodecError::Malformed("CONNECT has trailing bytes"));
        }
        Ok(Connect {
            version,
            clean,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    /// Does the client ask for v5 enhanced authentication (AUTH exchange)?
    pub fn wants_enhanced_auth(&self) -> bool {
        find_property(&self.properties, PROP_AUTH_METHOD).is_some()
    }

    /// Encodes this CONNECT with other credentials and without a Topic Alias
    /// Maximum, so the broker behind the gate never aliases topics.
    pub fn encode_for_upstream(
        &self,
        username: &str,
        password: &[u8],
    ) -> Result<Bytes, CodecError> {
        let mut body = Vec::with_capacity(64 + self.client_id.len());
        put_binary(&mut body, b"MQTT");
        body.push(match self.version {
            Version::V4 => 4,
            Version::V5 => 5,
        });
        let mut flags = 0xC0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.version == Version::V5 {
            put_properties(
                &mut body,
                &without_property(&self.properties, PROP_TOPIC_ALIAS_MAX),
            );
        }
        put_binary(&mut body, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if self.version == Version::V5 {
                put_properties(&mut body, &w.properties);
            }
            put_binary(&mut body, w.topic.as_bytes());
            put_binary(&mut body, &w.payload);
        }
        put_binary(&mut body, username.as_bytes());
        put_binary(&mut body, password);
        packet(CONNECT, 0, &body)
    }
}

/// CONNACK return codes the gate sends itself.
pub mod connack {
    pub const V4_UNACCEPTABLE_PROTOCOL: u8 = 0x01;
    pub const V4_IDENTIFIER_REJECTED: u8 = 0x02;
    pub const V4_SERVER_UNAVAILABLE: u8 = 0x03;
    pub const V4_NOT_AUTHORIZED: u8 = 0x05;
    pub const V5_SERVER_UNAVAILABLE: u8 = 0x88;
    pub const V5_NOT_AUTHORIZED: u8 = 0x87;
    pub const V5_BAD_AUTH_METHOD: u8 = 0x8C;
    pub const V5_CLIENT_ID_NOT_VALID: u8 = 0x85;
}

/// A CONNACK refusing the connection.
pub fn encode_connack_refusal(version: Version, code: u8) -> Bytes {
    let body: &[u8] = match version {
        Version::V4 => &[0, code],
        Version::V5 => &[0, code, 0],
    };
    packet(CONNACK, 0, body).unwrap_or_default()
}

/// Decoded CONNACK from the broker behind the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub properties: Vec<u8>,
}

impl ConnAck {
    pub fn decode(version: Version, body: &[u8]) -> Result<ConnAck, CodecError> {
        let mut c = Cursor::new(body, "CONNACK");
        let flags = c.u8()?;
        let code = c.u8()?;
        let properties = match version {
            Version::V5 if !c.is_empty() => c.properties()?.to_vec(),
            _ => Vec::new(),
        };
        Ok(ConnAck {
            session_present: flags & 0x01 != 0,
            code,
            properties,
        })
    }

    /// Re-encodes for the client. In v5 the Topic Alias Maximum is removed
    /// (meaning 0): the gate checks every PUBLISH by its topic and so does
    /// not accept aliases. The gate's packet limit is announced as the
    /// Maximum Packet Size, and the client id the gate assigned, if any.
    pub fn encode_for_client(
        &self,
        version: Version,
        max_packet: usize,
        assigned_client_id: Option<&str>,
    ) -> Result<Bytes, CodecError> {
        let mut body = vec![u8::from(self.session_present), self.code];
        if version == Version::V5 {
            let mut props = without_property(
                &without_property(
                    &without_property(&self.properties, PROP_TOPIC_ALIAS_MAX),
                    PROP_MAX_PACKET_SIZE,
                ),
                PROP_ASSIGNED_CLIENT_ID,
            );
            props.push(PROP_MAX_PACKET_SIZE);
            let limit = u32::try_from(max_packet).unwrap_or(u32::MAX);
            props.extend_from_slice(&limit.to_be_bytes());
            if let Some(id) = assigned_client_id {
                props.push(PROP_ASSIGNED_CLIENT_ID);
                put_binary(&mut props, id.as_bytes());
            }
            put_properties(&mut body, &props);
        }
        packet(CONNACK, 0, &body)
    }
}
