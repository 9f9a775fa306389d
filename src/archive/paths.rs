//! Paths inside an archive: entry names, paths named by `manifest.json`,
//! and symlinks between entries.
//!
//! Nothing from an archive is ever written to the filesystem under its own
//! name, so these paths are only keys. They are still checked strictly:
//! a path that is absolute or climbs with `..`, or a symlink that leads out
//! of the archive, is a sign of a hostile or broken archive, and Docker's
//! own loader refuses the same things.

use std::collections::HashMap;

/// Why a path inside an archive is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    Absolute,
    Climbs,
    Empty,
    /// A symlink on the way points outside the archive.
    Escapes {
        link: String,
        target: String,
    },
    /// Symlinks that point at each other, or too many hops.
    TooManyLinks,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathProblem::Absolute => f.write_str("is absolute"),
            PathProblem::Climbs => f.write_str("climbs out with \"..\""),
            PathProblem::Empty => f.write_str("is empty"),
            PathProblem::Escapes { link, target } => write!(
                f,
                "leads outside the archive through the symlink {link} -> {target}"
            ),
            PathProblem::TooManyLinks => f.write_str("goes through too many symlinks"),
        }
    }
}

/// Normalises a path that must stay inside the archive: no leading `/`, no
/// `..` component; `.` and empty components are dropped.
pub fn normalize(path: &str) -> Result<String, PathProblem> {
    if path.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathProblem::Climbs),
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Err(PathProblem::Empty);
    }
    Ok(parts.join("/"))
}

/// How many symlinks one lookup may pass through (Linux allows 40).
const MAX_HOPS: usize = 40;

/// The symlinks of an archive, by normalised path, with their raw targets.
#[derive(Debug, Default)]
pub struct Links {
    links: HashMap<String, String>,
}

impl Links {
    pub fn insert(&mut self, path: String, target: String) {
        self.links.insert(path, target);
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Follows symlinks in every component of `path` (already normalised),
    /// the way a filesystem would, but refusing any step outside the root:
    /// an absolute target, or `..` above the top.
    pub fn resolve(&self, path: &str) -> Result<String, PathProblem> {
        let mut pending: Vec<String> = path.rsplit('/').map(str::to_string).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if done.pop().is_none() {
                        return Err(PathProblem::Climbs);
                    }
                    continue;
                }
                _ => {}
            }
            done.push(part);
            let here = done.join("/");
            let Some(target) = self.links.get(&here) else {
                continue;
            };
            hops += 1;
            if hops > MAX_HOPS {
                return Err(PathProblem::TooManyLinks);
            }
            let escapes = || PathProblem::Escapes {
                link: here.clone(),
                target: target.clone(),
            };
            if target.starts_with('/') {
                return Err(escapes());
            }
            done.pop();
            // Check the climb now, so that the error names this link.
            let mut depth = done.len() as isize;
            for step in target.split('/') {
                match step {
                    "" | "." => {}
                    ".." => depth -= 1,
                    _ => depth += 1,
                }
                if depth < 0 {
                    return Err(escapes());
                }
            }
            pending.extend(target.rsplit('/').map(str::to_string));
        }
        if done.is_empty() {
            return Err(PathProblem::Empty);
        }
        Ok(done.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_absolute_and_climbing_paths() {
        assert_eq!(normalize("./a//b/./c"), Ok("a/b/c".to_string()));
        assert_eq!(normalize("/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(normalize("a/../../b"), Err(PathProblem::Climbs));
        assert_eq!(normalize("a/../b"), Err(PathProblem::Climbs));
        assert_eq!(normalize("./"), Err(PathProblem::Empty));
    }

    #[test]
    fn resolve_follows_links_inside_the_archive() {
        let mut links = Links::default();
        links.insert("b/layer.tar".into(), "../a/layer.tar".into());
        links.insert("c".into(), "b".into());
        links.insert("loop1".into(), "loop2".into());
        links.insert("loop2".into(), "loop1".into());
        links.insert("out".into(), "../../etc/passwd".into());
        links.insert("abs".into(), "/etc/passwd".into());
        assert_eq!(links.resolve("b/layer.tar").unwrap(), "a/layer.tar");
        assert_eq!(links.resolve("c/layer.tar").unwrap(), "a/layer.tar");
        assert_eq!(links.resolve("a/layer.tar").unwrap(), "a/layer.tar");
        assert_eq!(links.resolve("loop1"), Err(PathProblem::TooManyLinks));
        assert!(matches!(
            links.resolve("out"),
            Err(PathProblem::Escapes { .. })
        ));
        assert!(matches!(
            links.resolve("abs"),
            Err(PathProblem::Escapes { .. })
        ));
    }
}
