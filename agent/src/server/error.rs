//! The control server's errors, and the class each is reported to the
//! host as.

use std::error::Error as _;
use std::io;
use std::path::PathBuf;

use crate::container::ContainerError;
use crate::overlay::OverlayError;
use husk_layers::LayerError;
use husk_proto::agent::{ErrorKind, FrameError, ProtocolError, PROTOCOL_VERSION};

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The control stream failed.
    #[error("control stream")]
    Protocol(#[from] ProtocolError),
    /// The host speaks another protocol version.
    #[error("unsupported protocol version {version} (agent speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The host's.
        version: u32,
    },
    /// No such container.
    #[error("no container {id:?}")]
    NotFound {
        /// Container id.
        id: String,
    },
    /// The id is taken.
    #[error("container {id:?} already exists")]
    AlreadyExists {
        /// Container id.
        id: String,
    },
    /// A layer failed.
    #[error("layer {digest}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// The overlay failed.
    #[error("rootfs overlay")]
    Overlay(#[from] OverlayError),
    /// The container failed.
    #[error("container")]
    Container(#[from] ContainerError),
    /// eth0 could not be configured.
    #[error("network configuration")]
    Network(#[from] crate::netconf::NetConfError),
    /// A restored template could not be provisioned.
    #[error("provisioning")]
    Provision(#[from] crate::provision::ProvisionError),
    /// A data connection could not be opened.
    #[error("cannot connect to port {port}")]
    Connect {
        /// The port.
        port: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Preparing a directory failed.
    #[error("cannot prepare {path:?}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// `Result` for this module.
pub type Result<T> = std::result::Result<T, ServerError>;

impl ServerError {
    /// Whether the control connection itself was reset or closed under
    /// the request (not a fault of the request).
    pub fn connection_lost(&self) -> bool {
        let Self::Protocol(ProtocolError::Frame(FrameError::Io(e))) = self else {
            return false;
        };
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::NotConnected
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    }

    /// The class sent to the host.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Protocol(ProtocolError::Frame(FrameError::Io(_))) => ErrorKind::Internal,
            Self::Protocol(_) => ErrorKind::InvalidRequest,
            Self::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Self::Layer {
                source: LayerError::DigestMismatch { .. } | LayerError::SizeMismatch { .. },
                ..
            } => ErrorKind::DigestMismatch,
            Self::Layer { .. } => ErrorKind::BadLayer,
            Self::Container(ContainerError::InvalidState { .. }) => ErrorKind::InvalidState,
            Self::Container(ContainerError::NoSuchExec { .. }) => ErrorKind::NotFound,
            Self::Container(
                ContainerError::InvalidId { .. } | ContainerError::InvalidProcess { .. },
            ) => ErrorKind::InvalidRequest,
            Self::Container(ContainerError::NoTerminal { .. }) => ErrorKind::InvalidState,
            Self::Container(ContainerError::CommandNotFound { .. }) => ErrorKind::CommandNotFound,
            Self::Container(ContainerError::CommandNotExecutable { .. }) => {
                ErrorKind::CommandNotExecutable
            }
            Self::Provision(crate::provision::ProvisionError::Invalid(_)) => {
                ErrorKind::InvalidRequest
            }
            Self::Container(_)
            | Self::Overlay(_)
            | Self::Connect { .. }
            | Self::Network(_)
            | Self::Provision(_) => ErrorKind::Runtime,
            Self::Io { .. } => ErrorKind::Internal,
        }
    }

    /// The message with its chain of causes.
    pub fn message(&self) -> String {
        let mut m = self.to_string();
        let mut src = self.source();
        while let Some(s) = src {
            m.push_str(": ");
            m.push_str(&s.to_string());
            src = s.source();
        }
        m
    }
}
