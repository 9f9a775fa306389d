//! `rimg history IMAGE`: an image's history, newest first, as Docker
//! prints it: the image ID on the top row and `<missing>` below it, the
//! size of each entry's layer, `0B` for entries that made no layer.

use anyhow::Result;
use serde_json::json;

use rimg::image::{History, parse_time};
use rimg::units::{human_size, time_ago};

use super::Context;
use super::table::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: a name, an ID or an ID prefix.
    image: String,

    /// Do not truncate IDs or the CREATED BY column.
    #[arg(long)]
    no_trunc: bool,

    /// Only the IDs column.
    #[arg(short, long)]
    quiet: bool,

    /// `table` (default) or `json` (one object per line).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
}

/// How wide Docker lets CREATED BY be before it cuts it.
const CREATED_BY_WIDTH: usize = 45;

struct Row {
    id: String,
    history: History,
    size: u64,
}

pub fn run(args: Args, ctx: &Context) -> Result<()> {
    let format = Format::parse(args.format.as_deref())?;
    let store = ctx.store()?;
    let image = store.resolve(&args.image)?;

    // Entries that made a layer take the layers' sizes in order. A config
    // without history gets one row per layer, as Docker shows it.
    let mut layers = image.manifest.layers.iter().map(|l| l.size);
    let history = if image.config.history.is_empty() {
        image
            .manifest
            .layers
            .iter()
            .map(|_| History {
                created: image.config.created.clone(),
                ..Default::default()
            })
            .collect()
    } else {
        image.config.history.clone()
    };
    let mut rows: Vec<Row> = history
        .into_iter()
        .map(|h| {
            let size = if h.empty_layer {
                0
            } else {
                layers.next().unwrap_or(0)
            };
            Row {
                id: "<missing>".into(),
                history: h,
                size,
            }
        })
        .collect();
    rows.reverse();
    if let Some(top) = rows.first_mut() {
        top.id = if args.no_trunc {
            image.id.to_string()
        } else {
            image.id.short().to_string()
        };
    }

    let now = chrono::Utc::now();
    let created_by = |h: &History| {
        let text = h.created_by.clone().unwrap_or_default().replace('\t', " ");
        if args.no_trunc {
            text
        } else {
            table::ellipsis(&text, CREATED_BY_WIDTH)
        }
    };
    let created = |h: &History| h.created.as_deref().and_then(parse_time);

    let mut out = String::new();
    if args.quiet {
        for row in &rows {
            out.push_str(&row.id);
            out.push('\n');
        }
    } else if format == Format::Json {
        for row in &rows {
            let at = created(&row.history);
            let line = json!({
                "Comment": row.history.comment.clone().unwrap_or_default(),
                "CreatedAt": at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default(),
                "CreatedBy": created_by(&row.history),
                "CreatedSince": time_ago(at, now),
                "ID": row.id,
                "Size": human_size(row.size),
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    } else {
        let mut cells = vec![vec![
            "IMAGE".to_string(),
            "CREATED".into(),
            "CREATED BY".into(),
            "SIZE".into(),
            "COMMENT".into(),
        ]];
        for row in &rows {
            cells.push(vec![
                row.id.clone(),
                time_ago(created(&row.history), now),
                created_by(&row.history),
                human_size(row.size),
                row.history.comment.clone().unwrap_or_default(),
            ]);
        }
        out = table::render(&cells);
    }
    super::print_stdout(&out)
}
