//! `rimg image ls` (alias `rimg images`): the images in the store as
//! Docker's table, one row per tag, untagged images as `<none>`.

use anyhow::Result;
use serde_json::json;

use rimg::reference::Reference;
use rimg::store::Image;
use rimg::units::{human_size, time_ago};

use super::Context;
use super::table::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only images whose name matches REPO[:TAG] (`*` and `?` allowed).
    #[arg(value_name = "REPO[:TAG]")]
    filter: Option<String>,

    /// Show all images. The store keeps no intermediate images, so this
    /// lists the same as without it; accepted for Docker's sake.
    #[arg(short, long)]
    all: bool,

    /// Only image IDs.
    #[arg(short, long)]
    quiet: bool,

    /// Full image IDs.
    #[arg(long)]
    no_trunc: bool,

    /// `table` (default) or `json` (one object per line).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
}

/// One row: an image under one of its names (or none).
struct Row<'a> {
    image: &'a Image,
    name: Option<&'a Reference>,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let format = Format::parse(args.format.as_deref())?;
    let store = ctx.store()?;
    let images = store.images()?;
    let filter = args.filter.as_deref().map(Filter::new).transpose()?;

    let mut rows = Vec::new();
    for image in &images {
        if image.tags.is_empty() {
            if filter.is_none() {
                rows.push(Row { image, name: None });
            }
            continue;
        }
        for tag in &image.tags {
            if filter.as_ref().is_none_or(|f| f.matches(tag)) {
                rows.push(Row {
                    image,
                    name: Some(tag),
                });
            }
        }
    }

    let now = chrono::Utc::now();
    let id = |image: &Image| {
        if args.no_trunc {
            image.id.to_string()
        } else {
            image.id.short().to_string()
        }
    };
    let repo_tag = |row: &Row| match row.name {
        Some(r) => (r.familiar_repository(), r.tag().to_string()),
        None => ("<none>".to_string(), "<none>".to_string()),
    };

    let mut out = String::new();
    if args.quiet {
        for row in &rows {
            out.push_str(&id(row.image));
            out.push('\n');
        }
    } else if format == Format::Json {
        for row in &rows {
            let (repository, tag) = repo_tag(row);
            let created = row.image.config.created_time();
            let size = human_size(row.image.size());
            let line = json!({
                "Containers": "N/A",
                "CreatedAt": table::go_time(created),
                "CreatedSince": time_ago(created, now),
                "Digest": "<none>",
                "ID": id(row.image),
                "Repository": repository,
                "SharedSize": "N/A",
                "Size": size,
                "Tag": tag,
                "UniqueSize": "N/A",
                "VirtualSize": size,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    } else {
        let mut cells = vec![vec![
            "REPOSITORY".to_string(),
            "TAG".into(),
            "IMAGE ID".into(),
            "CREATED".into(),
            "SIZE".into(),
        ]];
        for row in &rows {
            let (repository, tag) = repo_tag(row);
            cells.push(vec![
                repository,
                tag,
                id(row.image),
                time_ago(row.image.config.created_time(), now),
                human_size(row.image.size()),
            ]);
        }
        out = table::render(&cells);
    }
    super::print_stdout(&out)
}

/// Docker's reference filter: a name matches when the pattern matches its
/// familiar `repo:tag`, or its familiar repository when the pattern has no
/// tag. Patterns may use `*` and `?` within one path component.
struct Filter {
    pattern: String,
    has_tag: bool,
}

impl Filter {
    fn new(spec: &str) -> Result<Filter> {
        let last = spec.rsplit('/').next().unwrap_or(spec);
        let has_tag = last.contains(':');
        let is_glob = spec.contains(['*', '?', '[']);
        // A plain name is normalised (`docker.io/library/bb` is `bb`).
        let pattern = if is_glob {
            spec.to_string()
        } else {
            let reference: Reference = spec.parse()?;
            if has_tag {
                reference.familiar()
            } else {
                reference.familiar_repository()
            }
        };
        Ok(Filter { pattern, has_tag })
    }

    fn matches(&self, tag: &Reference) -> bool {
        if self.has_tag {
            glob(&self.pattern, &tag.familiar())
        } else {
            glob(&self.pattern, &tag.familiar_repository()) || glob(&self.pattern, &tag.familiar())
        }
    }
}

/// `*` matches any run of characters but `/`, `?` any one character but `/`.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(&p[1..], &t[i..])),
            Some('?') => t.first().is_some_and(|&c| c != '/') && go(&p[1..], &t[1..]),
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_stay_within_a_component() {
        assert!(glob("bb*", "bb:1"));
        assert!(glob("*/app", "me/app"));
        assert!(!glob("*", "me/app"));
        assert!(glob("b?", "bb"));
    }

    #[test]
    fn filters_normalise_names() {
        let r: Reference = "docker.io/library/bb:1".parse().unwrap();
        assert!(Filter::new("bb").unwrap().matches(&r));
        assert!(Filter::new("bb:1").unwrap().matches(&r));
        assert!(!Filter::new("bb:2").unwrap().matches(&r));
        assert!(Filter::new("b*:1").unwrap().matches(&r));
        assert!(!Filter::new("other").unwrap().matches(&r));
    }
}
