//! Errors returned by the broker's public API.

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

use crate::acl::AclError;
use crate::passwd::PasswordFileError;

/// Everything that can stop a broker from starting or reloading.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// A file named in the configuration could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML for this broker.
    #[error("invalid configuration file {path}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What the TOML parser reported.
        source: Box<toml::de::Error>,
    },
    /// A setting out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "refusing plain MQTT on {addr}, which is not a loopback address: use the TLS \
         listener, or set allow_remote_plaintext = true"
    )]
    /// Plain MQTT asked for on a non-loopback address without `allow_remote_plaintext`.
    RemotePlaintext {
        /// The listener address.
        addr: SocketAddr,
    },
    #[error(
        "refusing to listen on {addr} without an acl_file: every client could read and \
         write every topic"
    )]
    /// A non-loopback listener without an ACL.
    NoAclOnRemoteListener {
        /// The listener address.
        addr: SocketAddr,
    },
    /// The ACL file does not parse.
    #[error("invalid ACL file {path}")]
    Acl {
        /// The file.
        path: PathBuf,
        /// The line and reason.
        source: AclError,
    },
    /// The password file does not parse.
    #[error("invalid password file {path}")]
    Passwords {
        /// The file.
        path: PathBuf,
        /// The line and reason.
        source: PasswordFileError,
    },
    /// Certificates or keys of the TLS listener do not load.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded rumqttd did not start.
    #[error("embedded rumqttd failed to start: {0}")]
    Upstream(String),
}
