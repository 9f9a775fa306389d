//! Who an end is, and whom it trusts.
//!
//! The config directory (`--config DIR`, else `RIMG_CONFIG`, else
//! `$XDG_CONFIG_HOME/rimg` or `~/.config/rimg`, or `/etc/rimg` as root)
//! holds:
//!
//! ```text
//! key.pem           this node's private key, created on first use (0600)
//! cert.pem          its self-signed certificate; the fingerprint is the
//!                   SHA-256 of this certificate's DER bytes
//! authorized_peers  senders a listener admits: `FINGERPRINT NAME` per line
//! known_peers       listeners a sender has pinned: `HOST:PORT FINGERPRINT`
//! ```
//!
//! Both trust files allow blank lines and `#` comments, like ssh's.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::digest::Digest;

/// What went wrong with identity or trust files. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

type Result<T> = std::result::Result<T, IdentityError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The config directory when `--config` and `RIMG_CONFIG` are not given.
pub fn default_config_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    if fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return PathBuf::from("/etc/rimg");
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("rimg");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".config/rimg")
}

/// A certificate and its key: this node's identity, or a one-time one.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// A fresh key and self-signed certificate, kept in memory only.
    pub fn ephemeral() -> Result<Identity> {
        let certified = rcgen::generate_simple_self_signed(vec!["rimg".to_string()])?;
        Ok(Identity {
            cert: certified.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into()),
        })
    }

    /// Loads the identity in `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Identity> {
        let key_path = dir.join("key.pem");
        let cert_path = dir.join("cert.pem");
        if !key_path.exists() {
            Self::create(dir, &key_path, &cert_path)?;
        }
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| IdentityError::Invalid {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let cert =
            CertificateDer::from_pem_file(&cert_path).map_err(|e| IdentityError::Invalid {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Identity { cert, key })
    }

    fn create(dir: &Path, key_path: &Path, cert_path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let certified = rcgen::generate_simple_self_signed(vec!["rimg".to_string()])?;

        // The certificate first: a key without a certificate would be
        // replaced on the next run, one with it is the identity for good.
        fs::write(cert_path, certified.cert.pem()).map_err(io_err(cert_path))?;
        let mut key = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(key_path)
            .map_err(io_err(key_path))?;
        key.write_all(certified.key_pair.serialize_pem().as_bytes())
            .and_then(|()| key.sync_all())
            .map_err(io_err(key_path))?;
        Ok(())
    }

    pub fn fingerprint(&self) -> Digest {
        fingerprint(&self.cert)
    }
}

/// A peer's fingerprint: the SHA-256 of its certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> Digest {
    Digest::of(cert.as_ref())
}

/// One line of a trust file: a key (a fingerprint or `HOST:PORT`) and a
/// value (a name or a fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEntry {
    pub fingerprint: Digest,
    /// For `authorized_peers`, a name; for `known_peers`, `HOST:PORT`.
    pub label: String,
}

/// `authorized_peers` or `known_peers`.
pub struct TrustFile {
    path: PathBuf,
    /// Whether the fingerprint comes first on a line (`authorized_peers`)
    /// or second (`known_peers`, like ssh's host-first order).
    fingerprint_first: bool,
}

impl TrustFile {
    pub fn authorized(config: &Path) -> TrustFile {
        TrustFile {
            path: config.join("authorized_peers"),
            fingerprint_first: true,
        }
    }

    pub fn known(config: &Path) -> TrustFile {
        TrustFile {
            path: config.join("known_peers"),
            fingerprint_first: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry; a missing file is an empty list.
    pub fn entries(&self) -> Result<Vec<TrustEntry>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (a, b) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let (fp, label) = if self.fingerprint_first {
                (a, b)
            } else {
                (b, a)
            };
            let fingerprint = fp.parse().map_err(|_| IdentityError::Invalid {
                path: self.path.clone(),
                reason: format!("line {}: {fp:?} is not a fingerprint", n + 1),
            })?;
            entries.push(TrustEntry {
                fingerprint,
                label: label.to_string(),
            });
        }
        Ok(entries)
    }

    pub fn contains(&self, fingerprint: &Digest) -> Result<bool> {
        Ok(self
            .entries()?
            .iter()
            .any(|e| &e.fingerprint == fingerprint))
    }

    /// The fingerprint pinned for `label` (a listener's `HOST:PORT`).
    pub fn lookup(&self, label: &str) -> Result<Option<Digest>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|e| e.label == label)
            .map(|e| e.fingerprint))
    }

    /// Adds an entry unless one with the same fingerprint and label is there.
    pub fn add(&self, entry: &TrustEntry) -> Result<bool> {
        let mut entries = self.entries()?;
        if entries.contains(entry) {
            return Ok(false);
        }
        entries.push(entry.clone());
        self.write(&entries)?;
        Ok(true)
    }

    /// Removes entries whose label or fingerprint is `what`; returns them.
    pub fn remove(&self, what: &str) -> Result<Vec<TrustEntry>> {
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .entries()?
            .into_iter()
            .partition(|e| e.label == what || e.fingerprint.to_string() == what);
        if !gone.is_empty() {
            self.write(&kept)?;
        }
        Ok(gone)
    }

    fn write(&self, entries: &[TrustEntry]) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut text = String::new();
        for e in entries {
            let line = if self.fingerprint_first {
                format!("{} {}", e.fingerprint, e.label)
            } else {
                format!("{} {}", e.label, e.fingerprint)
            };
            text.push_str(line.trim_end());
            text.push('\n');
        }
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
        tmp.write_all(text.as_bytes()).map_err(io_err(&self.path))?;
        tmp.persist(&self.path)
            .map_err(|e| io_err(&self.path)(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_trust_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(
            a.fingerprint(),
            Identity::ephemeral().unwrap().fingerprint()
        );

        let known = TrustFile::known(dir.path());
        let entry = TrustEntry {
            fingerprint: a.fingerprint(),
            label: "127.0.0.1:7000".into(),
        };
        assert!(known.add(&entry).unwrap());
        assert!(!known.add(&entry).unwrap());
        assert_eq!(
            known.lookup("127.0.0.1:7000").unwrap(),
            Some(a.fingerprint())
        );
        assert_eq!(known.remove("127.0.0.1:7000").unwrap(), vec![entry]);
        assert!(known.entries().unwrap().is_empty());

        std::fs::write(dir.path().join("authorized_peers"), "# c\nnot-a-fp x\n").unwrap();
        let err = TrustFile::authorized(dir.path()).entries().unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
