//! Stream compression: detected from the bytes, never from a file name.
//!
//! Every input (an archive, a rootfs tarball, a layer inside an archive)
//! may be plain or gzip, bzip2, xz or zstd. [`open`] looks at the first
//! bytes and returns a reader of the decompressed stream.

use std::fmt;
use std::io::{self, BufReader, Chain, Cursor, Read, Write};

/// The compressions we read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        })
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Compression, String> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "bzip2" | "bz2" => Ok(Compression::Bzip2),
            "xz" => Ok(Compression::Xz),
            "zstd" | "zst" => Ok(Compression::Zstd),
            other => Err(format!(
                "unknown compression {other:?}: expected gzip, zstd, bzip2, xz or none"
            )),
        }
    }
}

/// What the first bytes of a stream say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Compressed(Compression),
    /// A tar header with a valid checksum, or the zero block of an empty tar.
    Tar,
    Empty,
    Unknown,
}

/// How many bytes [`sniff`] wants to see: one tar header.
pub const SNIFF_LEN: usize = 512;

pub fn sniff(head: &[u8]) -> Sniffed {
    if head.is_empty() {
        return Sniffed::Empty;
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Sniffed::Compressed(Compression::Gzip);
    }
    if head.starts_with(b"BZh") {
        return Sniffed::Compressed(Compression::Bzip2);
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Sniffed::Compressed(Compression::Xz);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Sniffed::Compressed(Compression::Zstd);
    }
    // A zstd skippable frame: magic 0x184D2A50..=0x184D2A5F, little endian.
    if head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18] {
        return Sniffed::Compressed(Compression::Zstd);
    }
    if head.len() >= SNIFF_LEN && is_tar_header(&head[..SNIFF_LEN]) {
        return Sniffed::Tar;
    }
    Sniffed::Unknown
}

/// A 512-byte block is a tar header if its checksum field matches, or it is
/// all zeros (the end of an empty archive).
pub fn is_tar_header(block: &[u8]) -> bool {
    if block.iter().all(|&b| b == 0) {
        return true;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    sum == stored
}

/// A reader with its first bytes already read, for sniffing.
pub type Peeked<R> = Chain<Cursor<Vec<u8>>, R>;

/// Reads up to `n` bytes from `reader` and gives them back with a reader
/// that still yields them first.
pub fn peek<R: Read>(mut reader: R, n: usize) -> io::Result<(Vec<u8>, Peeked<R>)> {
    let mut head = Vec::with_capacity(n);
    (&mut reader).take(n as u64).read_to_end(&mut head)?;
    Ok((head.clone(), Cursor::new(head).chain(reader)))
}

/// A decompressed stream.
pub type Decompressed<'a> = Box<dyn Read + Send + 'a>;

/// Wraps `reader` in the decoder for `compression`.
pub fn decoder<'a, R: Read + Send + 'a>(
    reader: R,
    compression: Compression,
) -> io::Result<Decompressed<'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        other => Box::new(Decoder::new(reader, other)?),
    })
}

/// A decoder as a concrete type, for readers that are not `Send` (an entry
/// of a tar being read, whose layer may itself be compressed).
pub enum Decoder<R: Read> {
    None(R),
    Gzip(flate2::read::MultiGzDecoder<BufReader<R>>),
    Bzip2(bzip2::read::MultiBzDecoder<R>),
    Xz(liblzma::read::XzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Decoder<R> {
    pub fn new(reader: R, compression: Compression) -> io::Result<Decoder<R>> {
        Ok(match compression {
            Compression::None => Decoder::None(reader),
            Compression::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(
                BufReader::with_capacity(1 << 16, reader),
            )),
            Compression::Bzip2 => Decoder::Bzip2(bzip2::read::MultiBzDecoder::new(reader)),
            Compression::Xz => Decoder::Xz(liblzma::read::XzDecoder::new_multi_decoder(reader)),
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(
                BufReader::with_capacity(1 << 17, reader),
            )?),
        })
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::None(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Bzip2(d) => d.read(buf),
            Decoder::Xz(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

/// Why a stream could not be opened as a (possibly compressed) tar.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the input is empty")]
    Empty,
    #[error("not a tar archive or a known compression ({0})")]
    Unknown(String),
    #[error("{compression} stream does not decompress to a tar archive ({head})")]
    NotTarInside {
        compression: Compression,
        head: String,
    },
    #[error("reading the input failed: {0}")]
    Io(#[from] io::Error),
}

/// What the first bytes are, for an error message: `it starts with 50 4b
/// 03 04 ..., the signature of a zip archive`, or `it is empty`.
fn hex_head(head: &[u8]) -> String {
    if head.is_empty() {
        return "it is empty".into();
    }
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut text = format!("it starts with {}", shown.join(" "));
    if let Some(what) = known_format(head) {
        text.push_str(&format!(", the signature of {what}"));
    }
    text
}

/// Formats that people hand to `import` by mistake, by their magic bytes.
fn known_format(head: &[u8]) -> Option<&'static str> {
    const MAGIC: [(&[u8], &str); 8] = [
        (b"PK\x03\x04", "a zip archive"),
        (&[0x04, 0x22, 0x4d, 0x18], "an lz4 frame (not supported)"),
        (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
        (b"LZIP", "an lzip stream (not supported)"),
        (b"\x89LZO", "an lzop stream (not supported)"),
        (b"\x7fELF", "an ELF executable"),
        (b"Rar!", "a RAR archive"),
        (b"!<arch>", "an ar archive (a .deb?)"),
    ];
    MAGIC
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, what)| *what)
}

/// Detects the compression of `reader` and returns the decompressed tar
/// stream and what it was compressed with. Refuses anything that is not a
/// tar once decompressed.
pub fn open_tar<'a, R: Read + Send + 'a>(
    reader: R,
) -> Result<(Decompressed<'a>, Compression), OpenError> {
    let (head, reader) = peek(reader, SNIFF_LEN)?;
    let compression = match sniff(&head) {
        Sniffed::Empty => return Err(OpenError::Empty),
        Sniffed::Unknown => return Err(OpenError::Unknown(hex_head(&head))),
        Sniffed::Tar => return Ok((Box::new(reader), Compression::None)),
        Sniffed::Compressed(c) => c,
    };
    let decoded = decoder(reader, compression)?;
    // A decoder error this early means the stream is damaged or cut short:
    // say which decoder, since the caller sees only an I/O error.
    let (inner, decoded) = peek(decoded, SNIFF_LEN)
        .map_err(|e| io::Error::new(e.kind(), format!("{compression} stream: {e}")))?;
    if inner.len() < SNIFF_LEN || !is_tar_header(&inner) {
        return Err(OpenError::NotTarInside {
            compression,
            head: hex_head(&inner),
        });
    }
    Ok((Box::new(decoded), compression))
}

/// A compressing writer; `finish` must be called to end the stream.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Bzip2(bzip2::write::BzEncoder<W>),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn new(inner: W, compression: Compression) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::None => Encoder::None(inner),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::fast(),
            )),
            Compression::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(
                inner,
                bzip2::Compression::default(),
            )),
            Compression::Xz => Encoder::Xz(liblzma::write::XzEncoder::new(inner, 6)),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(inner, 3)?;
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                enc.multithread(threads)?;
                Encoder::Zstd(enc)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Bzip2(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Bzip2(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Bzip2(e) => e.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}
