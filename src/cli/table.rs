//! Tables and `--format` as Docker prints them.
//!
//! Docker lays out its tables with Go's tabwriter (minimum cell width 10,
//! padding 3): every column but the last is as wide as its widest cell plus
//! three spaces, and never narrower than ten.

use anyhow::{Result, bail};

/// How a listing command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    /// One JSON object per line.
    Json,
}

impl Format {
    pub fn parse(spec: Option<&str>) -> Result<Format> {
        match spec {
            None | Some("table") => Ok(Format::Table),
            Some("json") => Ok(Format::Json),
            Some(other) => bail!(
                "unsupported --format {other:?}: rimg supports \"table\" and \"json\" (Go templates are not supported)"
            ),
        }
    }
}

const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

/// Renders rows (the header first) as Docker's tabwriter would.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count() + PADDING).max(MIN_WIDTH);
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Docker's `Ellipsis`: cut to `max` characters, the last one `…`.
pub fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The `CreatedAt` form of Go's `time.Time.String()`, in UTC.
pub fn go_time(time: Option<chrono::DateTime<chrono::Utc>>) -> String {
    time.map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_like_tabwriter() {
        let rows = vec![
            vec!["REPOSITORY".into(), "TAG".into(), "SIZE".into()],
            vec!["bb".into(), "1".into(), "1.99MB".into()],
        ];
        assert_eq!(
            render(&rows),
            "REPOSITORY   TAG       SIZE\nbb           1         1.99MB\n"
        );
    }

    #[test]
    fn ellipsis_cuts_to_width() {
        assert_eq!(ellipsis("abcdef", 4), "abc…");
        assert_eq!(ellipsis("abc", 4), "abc");
    }
}
