//! Reading and writing frames on QUIC streams, with the length checked
//! before allocation and a stall timeout on every read.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

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

/// Reads the frames of a blob stream without copying their bodies: each
/// frame comes back as the pieces the stream delivered it in. What is held
/// is bounded by the frame being read plus one stream chunk.
pub struct FrameReader<'a> {
    recv: &'a mut quinn::RecvStream,
    pieces: VecDeque<Bytes>,
    held: usize,
    stall: Duration,
    what: &'a str,
}

impl<'a> FrameReader<'a> {
    pub fn new(recv: &'a mut quinn::RecvStream, stall: Duration, what: &'a str) -> Self {
        FrameReader {
            recv,
            pieces: VecDeque::new(),
            held: 0,
            stall,
            what,
        }
    }

    /// Reads until `need` bytes are held; false if the stream ended first.
    async fn fill(&mut self, need: usize) -> Result<bool, TransferError> {
        while self.held < need {
            let read = self.recv.read_chunk(usize::MAX, true);
            match tokio::time::timeout(self.stall, read).await {
                Err(_) => {
                    return Err(TransferError::Stalled {
                        what: self.what.to_string(),
                        secs: self.stall.as_secs(),
                    });
                }
                Ok(Ok(Some(chunk))) => {
                    self.held += chunk.bytes.len();
                    self.pieces.push_back(chunk.bytes);
                }
                Ok(Ok(None)) => return Ok(false),
                Ok(Err(quinn::ReadError::ConnectionLost(c))) => {
                    return Err(TransferError::connection(self.what, c));
                }
                Ok(Err(e)) => return Err(stream_err(self.what, e)),
            }
        }
        Ok(true)
    }

    /// Takes `n` held bytes off the front, as pieces.
    fn take(&mut self, mut n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.held -= n;
        while n > 0 {
            let front = self.pieces.front_mut().expect("n bytes are held");
            if front.len() <= n {
                n -= front.len();
                out.push(self.pieces.pop_front().expect("just seen"));
            } else {
                out.push(front.split_to(n));
                n = 0;
            }
        }
        out
    }

    /// The next frame body of at most `max` bytes; `None` when the stream
    /// ended cleanly between frames.
    pub async fn next(&mut self, max: usize) -> Result<Option<Vec<Bytes>>, TransferError> {
        let ended = || stream_err(self.what, "the stream ended inside a frame");
        if !self.fill(4).await? {
            return if self.held == 0 {
                Ok(None)
            } else {
                Err(ended())
            };
        }
        let mut prefix = [0u8; 4];
        let mut at = 0;
        for piece in self.take(4) {
            prefix[at..at + piece.len()].copy_from_slice(&piece);
            at += piece.len();
        }
        let len = frame_len(prefix, max)?;
        if !self.fill(len).await? {
            return Err(ended());
        }
        Ok(Some(self.take(len)))
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
