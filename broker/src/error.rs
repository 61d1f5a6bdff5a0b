//! Errors returned by the broker's public API.

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

use crate::acl::AclError;
use crate::passwd::PasswordFileError;

/// Everything that can stop a broker from starting or reloading.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}")]
    Toml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "refusing plain MQTT on {addr}, which is not a loopback address: use the TLS \
         listener, or set allow_remote_plaintext = true"
    )]
    RemotePlaintext { addr: SocketAddr },
    #[error(
        "refusing to listen on {addr} without an acl_file: every client could read and \
         write every topic"
    )]
    NoAclOnRemoteListener { addr: SocketAddr },
    #[error("invalid ACL file {path}")]
    Acl { path: PathBuf, source: AclError },
    #[error("invalid password file {path}")]
    Passwords {
        path: PathBuf,
        source: PasswordFileError,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded rumqttd failed to start: {0}")]
    Upstream(String),
}
