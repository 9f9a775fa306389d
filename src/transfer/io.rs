//! Reading and writing frames on QUIC streams, with the length checked
//! before allocation and a stall timeout on every read.

use std::time::Duration;

use super::TransferError;
use super::wire::{MAX_MESSAGE, Message, frame_len};

fn stream_err(what: &str, e: impl std::fmt::Display) -> TransferError {
    TransferError::Stream {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Reads one length-prefixed frame body of at most `max` bytes. `None` when
/// the stream ended cleanly between frames.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
    stall: Duration,
    what: &str,
) -> Result<Option<Vec<u8>>, TransferError> {
    let stalled = || TransferError::Stalled {
        what: what.to_string(),
        secs: stall.as_secs(),
    };
    let mut prefix = [0u8; 4];
    match tokio::time::timeout(stall, recv.read_exact(&mut prefix)).await {
        Err(_) => return Err(stalled()),
        Ok(Ok(())) => {}
        Ok(Err(quinn::ReadExactError::FinishedEarly(0))) => return Ok(None),
        Ok(Err(e)) => return Err(read_error(what, e)),
    }
    let len = frame_len(prefix, max)?;
    let mut body = vec![0u8; len];
    match tokio::time::timeout(stall, recv.read_exact(&mut body)).await {
        Err(_) => Err(stalled()),
        Ok(Ok(())) => Ok(Some(body)),
        Ok(Err(e)) => Err(read_error(what, e)),
    }
}

fn read_error(what: &str, e: quinn::ReadExactError) -> TransferError {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            TransferError::connection(what, c)
        }
        other => stream_err(what, other),
    }
}

/// Reads one control message; `None` at a clean end of stream.
pub async fn read_message(
    recv: &mut quinn::RecvStream,
    stall: Duration,
    peer: &str,
) -> Result<Option<Message>, TransferError> {
    let Some(body) = read_frame(recv, MAX_MESSAGE, stall, peer).await? else {
        return Ok(None);
    };
    Ok(Some(Message::decode(&body)?))
}

pub async fn write_message(
    send: &mut quinn::SendStream,
    msg: &Message,
    peer: &str,
) -> Result<(), TransferError> {
    send.write_all(&msg.encode()).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(c) => TransferError::connection(peer, c),
        other => stream_err(peer, other),
    })
}
