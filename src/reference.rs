//! Image names, normalised the way Docker normalises them.
//!
//! `busybox`, `busybox:latest` and `docker.io/library/busybox:latest` are one
//! name. The store keeps the full form; tables show the familiar short form.
//! The grammar is Docker's reference grammar, restricted to tags: a name
//! with a digest (`name@sha256:...`) is not a tag and is refused here.

use std::fmt;
use std::str::FromStr;

const DEFAULT_DOMAIN: &str = "docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A fully qualified `domain/path:tag` reference.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: String,
}

/// Why a string is not a valid image name.
#[derive(Debug, thiserror::Error)]
#[error("invalid reference format {input:?}: {why}")]
pub struct InvalidReference {
    pub input: String,
    pub why: &'static str,
}

impl Reference {
    /// `docker.io/library/busybox`
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `busybox` for Docker Hub official images, `user/app` for other Hub
    /// images, the full repository otherwise.
    pub fn familiar_repository(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.repository();
        }
        match self.path.strip_prefix(OFFICIAL_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `busybox:latest`
    pub fn familiar(&self) -> String {
        format!("{}:{}", self.familiar_repository(), self.tag)
    }

    /// Same repository, another tag.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, InvalidReference> {
        check_tag(tag, tag)?;
        Ok(Reference {
            tag: tag.to_string(),
            ..self.clone()
        })
    }
}

fn invalid(input: &str, why: &'static str) -> InvalidReference {
    InvalidReference {
        input: input.to_string(),
        why,
    }
}

fn check_tag(input: &str, tag: &str) -> Result<(), InvalidReference> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok || tag.len() > 128 {
        return Err(invalid(
            input,
            "a tag is 1 to 128 characters of [A-Za-z0-9_.-], not starting with . or -",
        ));
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(invalid(
            input,
            "a tag is 1 to 128 characters of [A-Za-z0-9_.-], not starting with . or -",
        ));
    }
    Ok(())
}

/// One path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or `-`+.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl FromStr for Reference {
    type Err = InvalidReference;

    fn from_str(input: &str) -> Result<Reference, InvalidReference> {
        if input.is_empty() {
            return Err(invalid(input, "the name is empty"));
        }
        if input.contains('@') {
            return Err(invalid(input, "a digest reference is not a tag"));
        }

        // The tag is after the last colon, unless that colon belongs to a
        // registry port (`host:5000/app`).
        let (name, tag) = match input.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (input, DEFAULT_TAG),
        };
        check_tag(input, tag)?;
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(
                input,
                "the repository name is longer than 255 characters",
            ));
        }

        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_domain(first) {
                    return Err(invalid(input, "the registry host is not valid"));
                }
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if domain.chars().any(|c| c.is_ascii_uppercase()) && domain == DEFAULT_DOMAIN {
            return Err(invalid(input, "repository name must be lowercase"));
        }
        if !path.split('/').all(valid_component) {
            return Err(invalid(
                input,
                "repository name must be lowercase [a-z0-9] separated by '.', '_', '__', '-' or '/'",
            ));
        }
        if domain == DEFAULT_DOMAIN
            && path.len() == 64
            && path.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(invalid(
                input,
                "a 64-character hex string cannot be a repository name",
            ));
        }

        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path
        };
        Ok(Reference {
            domain,
            path,
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for Reference {
    /// The fully qualified form, `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.domain, self.path, self.tag)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        s.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(
            full("docker.io/library/busybox:latest"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(full("user/app:2"), "docker.io/user/app:2");
        assert_eq!(full("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(full("quay.io/a/b/c:v1.0"), "quay.io/a/b/c:v1.0");
    }

    #[test]
    fn familiar_forms() {
        let r: Reference = "docker.io/library/edge:1".parse().unwrap();
        assert_eq!(r.familiar(), "edge:1");
        let r: Reference = "docker.io/user/app".parse().unwrap();
        assert_eq!(r.familiar(), "user/app:latest");
        let r: Reference = "ghcr.io/x/y:2".parse().unwrap();
        assert_eq!(r.familiar(), "ghcr.io/x/y:2");
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in [
            "",
            "UPPER",
            "a:",
            "a:-x",
            "a:.x",
            "a//b",
            "-a",
            "a-",
            "a@sha256:00",
            "a b",
            "a:b:c:d/e",
            "../x",
            "a/../b",
        ] {
            assert!(
                bad.parse::<Reference>().is_err(),
                "{bad:?} should be refused"
            );
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(long_tag.parse::<Reference>().is_err());
    }
}
