//! `husk ps --format`, as Docker's: `table` (the default columns), `table
//! TEMPLATE` (a header line, then columns aligned on `\t`), `json` (one
//! object per container and line), or a TEMPLATE per container. A template
//! is text with `{{.Field}}` actions (`\t` and `\n` typed as such are a tab
//! and a newline); other template actions are refused with one line.

use std::collections::BTreeMap;

/// The fields a template may name, and their table headers (Docker's).
pub const FIELDS: &[(&str, &str)] = &[
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("RunningFor", "CREATED"),
    ("Ports", "PORTS"),
    ("State", "STATE"),
    ("Status", "STATUS"),
    ("Names", "NAMES"),
    ("Labels", "LABELS"),
    ("Mounts", "MOUNTS"),
    ("Networks", "NETWORKS"),
    ("LocalVolumes", "LOCAL VOLUMES"),
];

/// `ps`'s columns without `--format`.
const DEFAULT_TABLE: &str =
    "{{.ID}}\\t{{.Image}}\\t{{.Command}}\\t{{.RunningFor}}\\t{{.Status}}\\t{{.Ports}}\\t{{.Names}}";

/// Table cells are at least this wide, and this far apart (Docker's
/// tabwriter).
const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

/// One container's values, in [`FIELDS`] order.
pub type Values = Vec<String>;

/// A part of a template.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Printed as it is.
    Text(String),
    /// The value of the field of this index in [`FIELDS`].
    Field(usize),
}

/// A parsed `--format`.
#[derive(Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per container.
    Json,
    /// A template per container, with a header line when `table`.
    Template {
        /// Print the header line and align the columns.
        table: bool,
        /// The template.
        pieces: Vec<Piece>,
    },
}

impl Format {
    /// Parses a `--format` value; `None` is the default table.
    pub fn parse(spec: Option<&str>) -> Result<Self, String> {
        let spec = spec.unwrap_or("table");
        if spec.trim() == "json" {
            return Ok(Format::Json);
        }
        let (table, template) = match spec.strip_prefix("table") {
            Some(rest) if rest.trim().is_empty() => (true, DEFAULT_TABLE),
            Some(rest) if rest.starts_with(char::is_whitespace) => (true, rest),
            _ => (false, spec),
        };
        let template = template.trim().replace("\\t", "\t").replace("\\n", "\n");
        Ok(Format::Template {
            table,
            pieces: pieces(&template)?,
        })
    }

    /// The output for `rows`: every line ends with a newline.
    pub fn render(&self, rows: &[Values]) -> String {
        match self {
            Format::Json => rows.iter().map(|v| format!("{}\n", json(v))).collect(),
            Format::Template { table, pieces } => {
                let mut text = String::new();
                if *table {
                    text.push_str(&fill(pieces, |i| header(i).to_string()));
                    text.push('\n');
                }
                for v in rows {
                    text.push_str(&fill(pieces, |i| v.get(i).cloned().unwrap_or_default()));
                    text.push('\n');
                }
                if *table {
                    align(&text)
                } else {
                    text
                }
            }
        }
    }
}

fn header(i: usize) -> &'static str {
    FIELDS.get(i).map_or("", |f| f.1)
}

/// Splits `template` into text and `{{.Field}}` actions.
fn pieces(template: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("invalid --format {template:?}: unclosed action"))?;
        let action = after[..close].trim();
        out.push(Piece::Field(field(action)?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Ok(out)
}

/// The index of the field `action` (`.Name`) names.
fn field(action: &str) -> Result<usize, String> {
    let name = action.strip_prefix('.').unwrap_or("");
    FIELDS.iter().position(|f| f.0 == name).ok_or_else(|| {
        let known: Vec<&str> = FIELDS.iter().map(|f| f.0).collect();
        format!(
            "invalid --format: {{{{{action}}}}} is not supported; husk ps knows {{{{.Field}}}} for {}",
            known.join(", ")
        )
    })
}

/// `pieces` with each field's `value`.
fn fill(pieces: &[Piece], value: impl Fn(usize) -> String) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.clone(),
            Piece::Field(i) => value(*i),
        })
        .collect()
}

/// Aligns the tab-separated cells of `text`'s lines into columns.
fn align(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for cells in &lines {
        // The last cell of a line is not padded, so it sets no width.
        for (i, cell) in cells.iter().enumerate().take(cells.len().saturating_sub(1)) {
            let w = (cell.chars().count() + PADDING).max(MIN_WIDTH);
            match widths.get_mut(i) {
                Some(have) => *have = (*have).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for cells in lines {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths.get(i).copied().unwrap_or(0);
                out.push_str(&" ".repeat(pad.saturating_sub(cell.chars().count())));
            }
        }
        out.push('\n');
    }
    out
}

fn json(values: &[String]) -> String {
    let map: BTreeMap<&str, &str> = FIELDS
        .iter()
        .zip(values)
        .map(|(f, v)| (f.0, v.as_str()))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(id: &str, name: &str) -> Values {
        FIELDS
            .iter()
            .map(|f| match f.0 {
                "ID" => id.to_string(),
                "Names" => name.to_string(),
                "Image" => "busybox:latest".to_string(),
                "Status" => "Up 2 seconds".to_string(),
                other => format!("<{other}>"),
            })
            .collect()
    }

    #[test]
    fn a_template_prints_one_line_per_container() {
        let f = Format::parse(Some("{{.Names}} {{ .ID }}: {{.Status}}")).unwrap();
        let rows = [values("abc", "web"), values("def", "db")];
        assert_eq!(
            f.render(&rows),
            "web abc: Up 2 seconds\ndb def: Up 2 seconds\n"
        );
        assert_eq!(Format::parse(Some("{{.Names}}")).unwrap().render(&[]), "");
    }

    #[test]
    fn a_table_has_headers_and_aligned_columns() {
        let f = Format::parse(Some("table {{.ID}}\\t{{.Names}}\\t{{.Image}}")).unwrap();
        let out = f.render(&[values("0123456789ab", "a-rather-long-name")]);
        assert_eq!(
            out,
            "CONTAINER ID   NAMES                IMAGE\n\
             0123456789ab   a-rather-long-name   busybox:latest\n"
        );
        let default = Format::parse(None).unwrap().render(&[]);
        assert!(
            default.starts_with(
                "CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    PORTS     NAMES"
            ),
            "{default}"
        );
    }

    #[test]
    fn json_is_one_object_per_line() {
        let out = Format::parse(Some("json"))
            .unwrap()
            .render(&[values("abc", "web")]);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["ID"], "abc");
        assert_eq!(v["Names"], "web");
        assert_eq!(v.as_object().unwrap().len(), FIELDS.len());
    }

    #[test]
    fn unknown_fields_and_functions_are_refused() {
        for bad in ["{{.Size}}", "{{json .Labels}}", "{{.Names", "{{}}"] {
            let e = Format::parse(Some(bad)).unwrap_err();
            assert!(e.starts_with("invalid --format"), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
