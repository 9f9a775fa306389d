//! Checking that a stream is a tar archive while it goes by.
//!
//! Import keeps the rootfs tarball byte for byte as its one layer, so it
//! never unpacks anything; it only has to be sure the bytes are a tar that
//! Docker, containerd and umoci will read. This walker reads every header
//! (parsed with the `tar` crate's header types), checks its checksum and
//! fields, and passes over each entry's data without holding it.
//!
//! Why not `tar::Archive::entries()`: it reads GNU long-name and PAX
//! extension entries whole into memory with no bound (a hostile header can
//! claim gigabytes), and its errors name neither the entry nor the offset.
//! Here extension entries are bounded, and every error says where it is.
//!
//! Which entries carry data follows Go's `archive/tar`, the reader Docker
//! and containerd unpack layers with: links, symlinks, devices, directories
//! and FIFOs have none, whatever their size field says; a PAX `size`
//! record overrides the header's; old GNU sparse headers may be followed by
//! extension blocks before the data.

use std::fmt;

use tar::{EntryType, GnuExtSparseHeader, Header, PaxExtensions};

const BLOCK: u64 = 512;

/// The largest GNU long name or PAX extension entry we accept. Real ones
/// hold a path or a few xattrs; 1 MiB is far beyond either.
pub const MAX_EXTENSION_SIZE: u64 = 1 << 20;

/// A stream of bytes the walker pulls from. Every byte it yields has
/// already been hashed and written; the walker only looks.
pub trait Feed {
    type Error;

    /// Fills `buf` as far as the stream allows; returns how many bytes.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;

    /// Passes over `n` bytes; returns how many there were.
    fn skip(&mut self, n: u64) -> Result<u64, Self::Error>;

    /// Reads to the end of the stream.
    fn drain(&mut self) -> Result<(), Self::Error>;
}

/// Why the bytes are not a tar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarError {
    /// Byte offset of the header the problem is in or after.
    pub offset: u64,
    /// Index of the entry (counting every header, extensions included).
    pub entry: u64,
    /// The entry's path, when the header got far enough to have one.
    pub path: Option<String>,
    pub reason: String,
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {} at byte {}", self.entry, self.offset)?;
        if let Some(path) = &self.path {
            write!(f, " ({path:?})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The walker failed: either the tar is bad, or the stream under it broke.
#[derive(Debug)]
pub enum WalkError<E> {
    Tar(TarError),
    Input(E),
}

impl<E> From<E> for WalkError<E> {
    fn from(e: E) -> WalkError<E> {
        WalkError::Input(e)
    }
}

/// What a walk found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Headers that describe a file, directory, link or other member.
    pub members: u64,
    /// Bytes up to and including the first end-of-archive block.
    pub tar_len: u64,
}

/// Walks a whole tar archive from `feed`, then reads the feed to its end
/// (padding after the end-of-archive blocks is part of the layer too).
pub fn walk<F: Feed>(feed: &mut F) -> Result<Summary, WalkError<F::Error>> {
    let mut state = State::default();
    let mut header = Header::new_old();

    loop {
        let n = feed.read_full(header.as_mut_bytes())?;
        if n == 0 {
            return Err(state.error(
                None,
                "the archive ends without an end-of-archive block (truncated?)",
            ));
        }
        if n < BLOCK as usize {
            return Err(state.error(
                None,
                format!("truncated inside a header ({n} of 512 bytes)"),
            ));
        }
        if header.as_bytes().iter().all(|&b| b == 0) {
            if state.pending {
                return Err(state.error(
                    None,
                    "the archive ends after an extension header, before the member it describes",
                ));
            }
            state.offset += BLOCK;
            break;
        }
        state.step(feed, &header)?;
    }

    feed.drain()?;
    Ok(Summary {
        members: state.members,
        tar_len: state.offset,
    })
}

#[derive(Default)]
struct State {
    offset: u64,
    entry: u64,
    members: u64,
    /// From a GNU long name entry, for the next member.
    long_name: Option<String>,
    /// From a PAX extension entry, for the next member.
    pax_path: Option<String>,
    pax_size: Option<u64>,
    /// A long name, long link or PAX header waits for its member.
    pending: bool,
}

impl State {
    fn error<E>(&self, path: Option<String>, reason: impl Into<String>) -> WalkError<E> {
        WalkError::Tar(TarError {
            offset: self.offset,
            entry: self.entry,
            path,
            reason: reason.into(),
        })
    }

    /// Checks one header and passes over what follows it.
    fn step<F: Feed>(&mut self, feed: &mut F, header: &Header) -> Result<(), WalkError<F::Error>> {
        let path = self
            .pax_path
            .clone()
            .or_else(|| self.long_name.clone())
            .unwrap_or_else(|| String::from_utf8_lossy(&header.path_bytes()).into_owned());
        let fail = |state: &State, reason: String| state.error(Some(path.clone()), reason);

        let stored = header
            .cksum()
            .map_err(|_| fail(self, "the header checksum field is not a number".into()))?;
        let actual = checksum(header.as_bytes());
        if stored != actual {
            return Err(fail(
                self,
                format!("header checksum mismatch (stored {stored}, computed {actual})"),
            ));
        }
        let header_size = header
            .entry_size()
            .map_err(|e| fail(self, format!("bad size field: {e}")))?;
        // Go's reader refuses a header whose numbers do not parse, so a
        // layer with one would import here and fail to unpack later.
        let fields = [
            ("mode", 100..108),
            ("uid", 108..116),
            ("gid", 116..124),
            ("mtime", 136..148),
        ];
        if let Some((field, _)) = fields
            .iter()
            .find(|(_, range)| !is_number(&header.as_bytes()[range.clone()]))
        {
            return Err(fail(self, format!("bad {field} field")));
        }

        let kind = header.entry_type();
        let is_extension = matches!(
            kind,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        );
        let size = if is_extension {
            header_size
        } else {
            self.pax_size.take().unwrap_or(header_size)
        };
        self.offset += BLOCK;

        if is_extension {
            if size > MAX_EXTENSION_SIZE {
                return Err(fail(
                    self,
                    format!(
                        "{} entry of {size} bytes is larger than the {MAX_EXTENSION_SIZE} bytes allowed",
                        describe(kind)
                    ),
                ));
            }
            let mut data = vec![0u8; size as usize];
            self.read_data(feed, &mut data, &path)?;
            self.extension(kind, &data)
                .map_err(|reason| fail(self, reason))?;
            self.pending |= kind != EntryType::XGlobalHeader;
            self.entry += 1;
            return Ok(());
        }

        if kind == EntryType::GNUSparse {
            self.sparse_extensions(feed, header, &path)?;
        }
        let data_len = if has_data(kind) { size } else { 0 };
        self.skip_data(feed, data_len, &path)?;
        self.long_name = None;
        self.pax_path = None;
        self.pending = false;
        self.members += 1;
        self.entry += 1;
        Ok(())
    }

    /// Reads an extension entry's data and its padding.
    fn read_data<F: Feed>(
        &mut self,
        feed: &mut F,
        data: &mut [u8],
        path: &str,
    ) -> Result<(), WalkError<F::Error>> {
        let got = feed.read_full(data)?;
        if got < data.len() {
            self.offset += got as u64;
            return Err(self.error(Some(path.into()), "truncated inside an extension entry"));
        }
        self.offset += got as u64;
        let pad = padding(data.len() as u64);
        self.expect_skip(feed, pad, path)
    }

    /// Passes over `len` bytes of data and the padding to the next block.
    fn skip_data<F: Feed>(
        &mut self,
        feed: &mut F,
        len: u64,
        path: &str,
    ) -> Result<(), WalkError<F::Error>> {
        let Some(total) = len.checked_add(padding(len)) else {
            return Err(self.error(Some(path.into()), format!("size {len} overflows")));
        };
        self.expect_skip(feed, total, path)
    }

    fn expect_skip<F: Feed>(
        &mut self,
        feed: &mut F,
        n: u64,
        path: &str,
    ) -> Result<(), WalkError<F::Error>> {
        let got = feed.skip(n)?;
        self.offset += got;
        if got < n {
            return Err(self.error(
                Some(path.into()),
                format!("truncated: the data ends {} bytes early", n - got),
            ));
        }
        Ok(())
    }

    /// Old GNU sparse headers chain 512-byte blocks of extra sparse map
    /// entries between the header and the data.
    fn sparse_extensions<F: Feed>(
        &mut self,
        feed: &mut F,
        header: &Header,
        path: &str,
    ) -> Result<(), WalkError<F::Error>> {
        let Some(gnu) = header.as_gnu() else {
            return Err(self.error(Some(path.into()), "a sparse entry without a GNU header"));
        };
        let mut extended = gnu.is_extended();
        let mut block = GnuExtSparseHeader::new();
        while extended {
            let got = feed.read_full(block.as_mut_bytes())?;
            self.offset += got as u64;
            if got < BLOCK as usize {
                return Err(self.error(Some(path.into()), "truncated inside a sparse map"));
            }
            extended = block.is_extended();
        }
        Ok(())
    }

    /// Records what an extension entry says about the next member.
    fn extension(&mut self, kind: EntryType, data: &[u8]) -> Result<(), String> {
        match kind {
            EntryType::GNULongName => {
                let name = data.split(|&b| b == 0).next().unwrap_or_default();
                self.long_name = Some(String::from_utf8_lossy(name).into_owned());
            }
            EntryType::XHeader | EntryType::XGlobalHeader => {
                for record in PaxExtensions::new(data) {
                    let record = record.map_err(|_| "malformed PAX extended header".to_string())?;
                    if kind == EntryType::XGlobalHeader {
                        continue;
                    }
                    match record.key_bytes() {
                        b"size" => {
                            let value = std::str::from_utf8(record.value_bytes())
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok())
                                .ok_or("PAX size record is not a number")?;
                            self.pax_size = Some(value);
                        }
                        b"path" => {
                            self.pax_path =
                                Some(String::from_utf8_lossy(record.value_bytes()).into_owned());
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::GNULongName => "GNU long name",
        EntryType::GNULongLink => "GNU long link",
        EntryType::XHeader => "PAX extended header",
        EntryType::XGlobalHeader => "PAX global header",
        _ => "extension",
    }
}

/// Go's `archive/tar` reads no data for these, whatever the size field says.
fn has_data(kind: EntryType) -> bool {
    !matches!(
        kind,
        EntryType::Link
            | EntryType::Symlink
            | EntryType::Char
            | EntryType::Block
            | EntryType::Directory
            | EntryType::Fifo
    )
}

/// A numeric header field as Go reads it: base-256 when the high bit is
/// set, else octal digits between optional spaces and NULs (empty is 0).
fn is_number(field: &[u8]) -> bool {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        return true;
    }
    let text = field.iter().map(|&b| b as char).collect::<String>();
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    text.bytes().all(|b| (b'0'..=b'7').contains(&b))
}

fn padding(len: u64) -> u64 {
    (BLOCK - len % BLOCK) % BLOCK
}

/// The header checksum: the sum of all bytes with the checksum field read
/// as spaces.
fn checksum(block: &[u8; 512]) -> u32 {
    let all: u32 = block.iter().map(|&b| b as u32).sum();
    let field: u32 = block[148..156].iter().map(|&b| b as u32).sum();
    all - field + 8 * 32
}

/// A feed over bytes in memory, for tests.
#[cfg(test)]
pub(crate) struct SliceFeed<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
}

#[cfg(test)]
impl Feed for SliceFeed<'_> {
    type Error = std::convert::Infallible;

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(self.bytes.len() - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> Result<u64, Self::Error> {
        let n = (n as usize).min(self.bytes.len() - self.pos);
        self.pos += n;
        Ok(n as u64)
    }

    fn drain(&mut self) -> Result<(), Self::Error> {
        self.pos = self.bytes.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(EntryType::Regular);
        builder.append_data(&mut header, path, data).unwrap();
    }

    fn run(bytes: &[u8]) -> Result<Summary, TarError> {
        let mut feed = SliceFeed { bytes, pos: 0 };
        match walk(&mut feed) {
            Ok(s) => {
                assert_eq!(feed.pos, bytes.len(), "the walk drains the feed");
                Ok(s)
            }
            Err(WalkError::Tar(e)) => Err(e),
            Err(WalkError::Input(never)) => match never {},
        }
    }

    #[test]
    fn walks_files_and_long_names() {
        let long = "d/".repeat(200) + "file";
        let bytes = archive(|b| {
            file(b, "a.txt", b"hello");
            file(b, &long, &[7u8; 1000]);
        });
        let summary = run(&bytes).unwrap();
        assert_eq!(summary.members, 2);
    }

    #[test]
    fn names_the_entry_with_a_bad_checksum() {
        let mut bytes = archive(|b| {
            file(b, "a.txt", b"hello");
            file(b, "b.txt", b"world");
        });
        bytes[1024] ^= 0x20; // first byte of b.txt's name
        let err = run(&bytes).unwrap_err();
        assert_eq!(err.offset, 1024);
        assert_eq!(err.entry, 1);
        assert!(err.reason.contains("checksum"), "{err}");
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let bytes = archive(|b| {
            file(b, "a.txt", &[1u8; 3000]);
            file(b, "b.txt", b"x");
        });
        for cut in [100, 512, 700, 3584, 3584 + 512, 3584 + 1024] {
            let err = run(&bytes[..cut]).unwrap_err();
            assert!(err.reason.contains("truncated"), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn refuses_a_huge_extension_entry() {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::GNULongName);
        header.set_size(1 << 40);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        let err = run(&bytes).unwrap_err();
        assert!(err.reason.contains("larger than"), "{err}");
    }

    #[test]
    fn pax_size_overrides_the_header() {
        let mut bytes = Vec::new();
        let record = b"12 size=600\n";
        let mut pax = Header::new_ustar();
        pax.set_entry_type(EntryType::XHeader);
        pax.set_size(record.len() as u64);
        pax.set_cksum();
        bytes.extend_from_slice(pax.as_bytes());
        bytes.extend_from_slice(record);
        bytes.resize(1024, 0);
        let mut header = Header::new_ustar();
        header.set_path("big").unwrap();
        header.set_size(0);
        header.set_cksum();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[9u8; 600]);
        bytes.resize(bytes.len() + 424, 0);
        bytes.extend_from_slice(&[0u8; 1024]);
        assert_eq!(run(&bytes).unwrap().members, 1);
    }

    #[test]
    fn links_carry_no_data_whatever_their_size() {
        let mut header = Header::new_gnu();
        header.set_path("l").unwrap();
        header.set_entry_type(EntryType::Symlink);
        header.set_link_name("target").unwrap();
        header.set_size(5000);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend(archive(|b| file(b, "after", b"x")));
        assert_eq!(run(&bytes).unwrap().members, 2);
    }

    #[test]
    fn names_a_field_that_is_not_a_number() {
        let mut bytes = archive(|b| file(b, "a.txt", b"hello"));
        bytes[108..116].copy_from_slice(b"zz\0\0\0\0\0\0"); // uid
        let header = Header::from_byte_slice(&bytes[..512]);
        let fixed = checksum(header.as_bytes());
        bytes[148..156].copy_from_slice(format!("{fixed:06o}\0 ").as_bytes());
        let err = run(&bytes).unwrap_err();
        assert_eq!(err.reason, "bad uid field");
        assert_eq!(err.path.as_deref(), Some("a.txt"));
    }

    #[test]
    fn an_extension_header_needs_a_member() {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::GNULongName);
        header.set_size(4);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(b"name");
        bytes.resize(1024 + 1024, 0);
        let err = run(&bytes).unwrap_err();
        assert!(err.reason.contains("before the member"), "{err}");
    }

    #[test]
    fn an_empty_archive_is_valid() {
        let summary = run(&[0u8; 10240]).unwrap();
        assert_eq!(summary.members, 0);
        assert_eq!(summary.tar_len, 512);
    }
}
