//! A bound on the tar stream's own metadata.
//!
//! The `tar` crate reads a GNU long name (`L`, `K`) or a PAX header (`x`,
//! `g`) whole into memory before the entry it describes; a hostile archive
//! could declare one of gigabytes. This reader watches the headers go past
//! on their way to the `tar` crate and fails the stream when such a record
//! is larger than [`MAX_META`]. It follows the tar layout (a header, then
//! the data rounded up to 512 bytes), including a PAX `size` record that
//! overrides the next header's size. Where the stream stops looking like a
//! tar it stops watching and leaves the errors to the `tar` crate.

use std::io::{self, Read};

/// The largest long name or PAX header accepted. Real ones are a few
/// hundred bytes.
pub const MAX_META: u64 = 1 << 20;

const BLOCK: u64 = 512;

pub struct Guard<R> {
    inner: R,
    /// Offset of the next byte the inner reader yields.
    pos: u64,
    /// Offset of the next header; `None` once no longer watching.
    next_header: Option<u64>,
    header: Vec<u8>,
    /// The body of a PAX header being collected, to find `size=`.
    pax: Option<(u64, Vec<u8>)>,
    size_override: Option<u64>,
}

impl<R: Read> Guard<R> {
    pub fn new(inner: R) -> Guard<R> {
        Guard {
            inner,
            pos: 0,
            next_header: Some(0),
            header: Vec::with_capacity(BLOCK as usize),
            pax: None,
            size_override: None,
        }
    }

    /// Looks at the bytes `buf`, which start at offset `start`. Bytes
    /// arrive in order and each is seen once, so a header or a PAX body
    /// split across reads is collected piece by piece.
    fn watch(&mut self, start: u64, buf: &[u8]) -> io::Result<()> {
        let end = start + buf.len() as u64;
        let slice = |lo: u64, hi: u64| &buf[(lo - start) as usize..(hi - start) as usize];
        while let Some(next) = self.next_header {
            if let Some((from, body)) = &mut self.pax {
                let lo = *from + body.len() as u64;
                let hi = (*from + body.capacity() as u64).min(end);
                if lo < hi && lo >= start {
                    body.extend_from_slice(slice(lo, hi));
                }
                if body.len() == body.capacity() {
                    self.size_override = pax_size(body);
                    self.pax = None;
                }
            }
            let lo = next + self.header.len() as u64;
            if lo >= end || lo < start {
                return Ok(());
            }
            let hi = (next + BLOCK).min(end);
            self.header.extend_from_slice(slice(lo, hi));
            if (self.header.len() as u64) < BLOCK {
                return Ok(());
            }
            let header = std::mem::take(&mut self.header);
            self.next_header = self.after(next, &header)?;
        }
        Ok(())
    }

    /// Checks one complete header; returns where the following one starts.
    fn after(&mut self, at: u64, block: &[u8]) -> io::Result<Option<u64>> {
        if !crate::compress::is_tar_header(block) || block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let header = tar::Header::from_byte_slice(block);
        let Ok(mut size) = header.entry_size() else {
            return Ok(None);
        };
        let kind = block[156];
        if let Some(real) = self.size_override.take()
            && !matches!(kind, b'x' | b'g' | b'L' | b'K')
        {
            size = real;
        }
        if matches!(kind, b'x' | b'g' | b'L' | b'K') {
            if size > MAX_META {
                let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "tar metadata entry {name:?} (type {}) is {size} bytes, more than the {MAX_META} allowed",
                        kind as char
                    ),
                ));
            }
            if kind == b'x' {
                self.pax = Some((at + BLOCK, Vec::with_capacity(size as usize)));
            }
        }
        Ok(Some(at + BLOCK + size.div_ceil(BLOCK) * BLOCK))
    }
}

/// The `size` record of a PAX header body (`"%d size=%d\n"` records).
fn pax_size(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .filter_map(|record| record.split_once(' ').map(|(_, kv)| kv))
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "size")
        .and_then(|(_, v)| v.parse().ok())
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.pos;
        self.pos += n as u64;
        if self.next_header.is_some() {
            self.watch(start, &buf[..n])?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn drain(bytes: &[u8], chunk: usize) -> io::Result<u64> {
        struct Chunks<'a>(&'a [u8], usize);
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        io::copy(&mut Guard::new(Chunks(bytes, chunk)), &mut io::sink())
    }

    #[test]
    fn refuses_a_huge_long_name_at_any_read_size() {
        let mut tar = header("a", b'0', 3);
        tar.extend([b'x'; 512]);
        tar.extend(header("././@LongLink", b'L', 5 << 30));
        for chunk in [1, 7, 512, 1000, 1 << 20] {
            let err = drain(&tar, chunk).unwrap_err();
            assert!(err.to_string().contains("more than"), "{chunk}: {err}");
        }
    }

    #[test]
    fn follows_a_pax_size_override() {
        let body = b"16 size=1048576\n";
        let mut tar = header("pax", b'x', body.len() as u64);
        tar.extend(body);
        tar.resize(1024, 0);
        // The ustar size says 0; the PAX record says 1 MiB of data follows,
        // which happens to hold what looks like a huge long-name header.
        tar.extend(header("big", b'0', 0));
        let mut data = header("fake", b'L', 5 << 30);
        data.resize(1 << 20, 0);
        tar.extend(data);
        tar.extend(header("z", b'0', 0));
        tar.extend([0u8; 1024]);
        for chunk in [1, 100, 4096] {
            drain(&tar, chunk).unwrap();
        }
    }
}
