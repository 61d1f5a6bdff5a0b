//! SUBSCRIBE (filters checked one by one) and SUBACK.

use super::*;

/// Most filters one SUBSCRIBE may carry; veil's clients send one or two.
pub const MAX_SUBSCRIBE_FILTERS: usize = 1024;

/// A decoded SUBSCRIBE: filters with their option bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub properties: Vec<u8>,
    pub filters: Vec<(String, u8)>,
}

impl Subscribe {
    pub fn decode(version: Version, flags: u8, body: &[u8]) -> Result<Subscribe, CodecError> {
        if flags != 0x02 {
            return Err(CodecError::Malformed("SUBSCRIBE fixed header flags"));
        }
        let mut c = Cursor::new(body, "SUBSCRIBE");
        let pkid = c.u16()?;
        if pkid == 0 {
            return Err(CodecError::Malformed("SUBSCRIBE with packet identifier 0"));
        }
        let properties = match version {
            Version::V5 => c.properties()?.to_vec(),
            Version::V4 => Vec::new(),
        };
        let mut filters = Vec::new();
        while !c.is_empty() {
            // Three bytes on the wire make a 32-byte entry here: a 16 MiB
            // SUBSCRIBE of empty filters held 180 MiB while it was decoded.
            if filters.len() >= MAX_SUBSCRIBE_FILTERS {
                return Err(CodecError::Malformed("SUBSCRIBE with too many filters"));
            }
            let filter = c.string()?.to_string();
            if filter.is_empty() {
                return Err(CodecError::Malformed("SUBSCRIBE with an empty filter"));
            }
            let options = c.u8()?;
            if options & 0x03 == 3 {
                return Err(CodecError::Malformed("SUBSCRIBE with QoS 3"));
            }
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(CodecError::Malformed("SUBSCRIBE without filters"));
        }
        Ok(Subscribe {
            pkid,
            properties,
            filters,
        })
    }

    pub fn encode(&self, version: Version) -> Result<Bytes, CodecError> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.pkid.to_be_bytes());
        if version == Version::V5 {
            put_properties(&mut body, &self.properties);
        }
        for (filter, options) in &self.filters {
            put_binary(&mut body, filter.as_bytes());
            body.push(*options);
        }
        packet(SUBSCRIBE, 0x02, &body)
    }
}

/// A decoded SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub properties: Vec<u8>,
    pub codes: Vec<u8>,
}

impl SubAck {
    pub fn decode(version: Version, body: &[u8]) -> Result<SubAck, CodecError> {
        let mut c = Cursor::new(body, "SUBACK");
        let pkid = c.u16()?;
        let properties = match version {
            Version::V5 => c.properties()?.to_vec(),
            Version::V4 => Vec::new(),
        };
        Ok(SubAck {
            pkid,
            properties,
            codes: c.rest().to_vec(),
        })
    }

    pub fn encode(&self, version: Version) -> Result<Bytes, CodecError> {
        let mut body = Vec::with_capacity(4 + self.codes.len());
        body.extend_from_slice(&self.pkid.to_be_bytes());
        if version == Version::V5 {
            put_properties(&mut body, &self.properties);
        }
        body.extend_from_slice(&self.codes);
        packet(SUBACK, 0, &body)
    }
}
