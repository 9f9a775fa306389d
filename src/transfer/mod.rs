//! Moving images between stores over QUIC, sending only the blobs the
//! receiver lacks.
//!
//! - [`wire`]: frames and messages, encoded without I/O (`proto/` has the
//!   written protocol and its test vectors).
//! - [`session`]: the protocol's decisions, without sockets.
//! - [`identity`]: this node's key and certificate; `authorized_peers` and
//!   `known_peers`.
//! - [`tls`]: QUIC endpoints with fingerprint-based mutual TLS.
//! - [`send`] and [`receive`]: the two ends, async, over a connection.
//! - [`send_engine`]: the sending end for images read from a Docker
//!   Engine's export, offered before their manifests are known.
//! - [`auto`]: deciding per chunk whether zstd on the wire pays.
//! - [`codec`]: a blob stream's chunks, encoded as [`auto`] says and
//!   decoded, with the zstd stream that runs across them.

pub mod auto;
pub mod codec;
pub mod identity;
mod io;
pub mod receive;
pub mod send;
pub mod send_engine;
pub mod session;
pub mod tls;
pub mod wire;

use crate::digest::Digest;
use crate::store::{PartialError, StoreError};

pub use io::{FrameReader, read_frame, read_message, write_message};

/// Text a peer sent (a close reason, an error, its engine's lines, image
/// names), made safe to print: control characters, a terminal's escape
/// sequences among them, and bidirectional overrides are shown escaped
/// instead of reaching the user's terminal.
pub fn printable(text: &str) -> String {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// QUIC application close codes (see `proto/PROTOCOL.md`).
pub mod close {
    pub const DONE: u32 = 0;
    pub const ERROR: u32 = 1;
    pub const NOT_AUTHORIZED: u32 = 2;
    pub const BUSY: u32 = 3;
}

/// Why a transfer failed. Each variant names the peer, digest or file;
/// [`TransferError::retry_helps`] says whether running it again can help.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer broke the protocol, or asked for something we refuse.
    #[error(transparent)]
    Session(#[from] session::SessionError),
    /// A frame could not be decoded.
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    /// The peer sent an `error` message or closed with a reason.
    #[error("{peer}: {message}")]
    Remote { peer: String, message: String },
    /// The connection failed or was lost.
    #[error("connection to {peer}")]
    Connection {
        peer: String,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("connecting to {peer}")]
    Connect {
        peer: String,
        #[source]
        source: quinn::ConnectError,
    },
    /// A stream broke in the middle.
    #[error("{what}: {reason}")]
    Stream { what: String, reason: String },
    /// Nothing arrived for too long.
    #[error("{what}: nothing received for {secs} s")]
    Stalled { what: String, secs: u64 },
    /// The offer needs more disk than the receiver has.
    #[error(
        "not enough free disk space in {path}: the offer needs {need} bytes, {have} are available"
    )]
    NoSpace { path: String, need: u64, have: u64 },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Partial(#[from] PartialError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The Docker Engine's export could not be read or split.
    #[error(transparent)]
    Engine(Box<crate::engine::export::ExportError>),
    /// The user stopped this end (Ctrl-C, SIGTERM).
    #[error("{0}: the receiver keeps what it got, and the same push continues from there")]
    Interrupted(&'static str),
    #[error("blob {digest}")]
    Blob {
        digest: Digest,
        #[source]
        source: Box<TransferError>,
    },
}

impl TransferError {
    /// Whether the same transfer may succeed when run again (the network,
    /// a stall, a busy receiver), as opposed to a refusal or bad data.
    pub fn retry_helps(&self) -> bool {
        match self {
            TransferError::Connection { .. }
            | TransferError::Connect { .. }
            | TransferError::Stream { .. }
            | TransferError::Stalled { .. }
            | TransferError::Interrupted(_) => true,
            TransferError::Blob { source, .. } => source.retry_helps(),
            _ => false,
        }
    }

    /// The error and its causes on one line: for a close reason or a log
    /// line, where the CLI's `caused by:` lines are not printed.
    pub fn one_line(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }

    /// [`TransferError::one_line`], cut to fit a QUIC close frame. The
    /// text may carry what a peer sent, so the cut respects UTF-8.
    pub fn close_reason(&self) -> String {
        let mut text = self.one_line();
        let mut end = text.len().min(1000);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text
    }

    pub fn connection(peer: &str, source: quinn::ConnectionError) -> TransferError {
        match source {
            quinn::ConnectionError::ApplicationClosed(close) => TransferError::Remote {
                peer: peer.to_string(),
                message: printable(&String::from_utf8_lossy(&close.reason)),
            },
            source => TransferError::Connection {
                peer: peer.to_string(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_keep_the_causes_and_cut_on_a_char_boundary() {
        let inner = TransferError::Remote {
            peer: "p".into(),
            message: "é".repeat(600),
        };
        let e = TransferError::Blob {
            digest: Digest::of(b"x"),
            source: Box::new(inner),
        };
        assert!(
            e.one_line()
                .starts_with(&format!("blob {}: p: é", Digest::of(b"x")))
        );
        let reason = e.close_reason();
        assert!(reason.len() <= 1000 && reason.len() > 990);
    }
}
