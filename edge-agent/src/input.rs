//! Frames from a CSV file or standard input, one row at a time: a row that
//! cannot be read or captured is refused with its row number, column name
//! and reason, as a line of the output, and the other rows still run.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use veil_model::ModelError;

use crate::AgentError;

/// A parsed input line: features and an optional label.
pub type Row = (Vec<f32>, Option<String>);

/// A CSV file: the feature columns' names, and every data row, read or
/// refused.
#[derive(Debug, PartialEq)]
pub struct Table {
    /// The feature columns' names, in the file's order (the label column
    /// left out).
    pub columns: Vec<String>,
    /// Every data row: its features and label, or why it was refused.
    pub rows: Vec<std::result::Result<Row, Refusal>>,
}

/// A row that produced no frame, as the application sees it (one JSON
/// line, `"kind": "refused-at-capture"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Refusal {
    /// Always `"refused-at-capture"`, so that a reader of the JSON lines
    /// tells it from a result.
    pub kind: &'static str,
    /// 1-based data row (the header is row 0); line number for stdin.
    pub row: usize,
    /// The column whose value was refused, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Why, for a person reading the line.
    pub reason: String,
    /// The row's label, when the file has a label column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Refusal {
    fn new(row: usize, column: Option<String>, reason: String, label: Option<String>) -> Refusal {
        Refusal {
            kind: "refused-at-capture",
            row,
            column,
            reason,
            label,
        }
    }

    /// Why the agent refused to capture a row, in the row's own terms.
    pub fn from_capture(
        row: usize,
        columns: &[String],
        label: Option<String>,
        error: &AgentError,
    ) -> Refusal {
        let name = |index: usize| {
            columns
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("feature {index}"))
        };
        let (column, reason) = match error {
            AgentError::Model(ModelError::InputOutOfBounds {
                index,
                value,
                lo,
                hi,
            }) => (
                Some(name(*index)),
                format!(
                    "{} = {value} is outside its bounds [{lo}, {hi}]",
                    name(*index)
                ),
            ),
            AgentError::Model(ModelError::EncodedInputTooLarge { index, .. }) => (
                Some(name(*index)),
                format!("{} is too large for the model's encoding", name(*index)),
            ),
            AgentError::Model(ModelError::LengthMismatch { expected, got }) => {
                (None, format!("{got} features, the model takes {expected}"))
            }
            other => (None, other.to_string()),
        };
        Refusal::new(row, column, reason, label)
    }

    /// The JSON line (without the newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Parses one stdin line (comma- or space-separated numbers, or a JSON
/// array); blank lines and `#` comments give `None`.
pub fn parse_line(line: &str) -> Result<Option<Vec<f32>>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with('[') {
        let values: Vec<f32> = serde_json::from_str(line).context("not a JSON array of numbers")?;
        return Ok(Some(values));
    }
    line.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f32>()
                .with_context(|| format!("{s:?} is not a number"))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Reads a CSV file with a header: the label column (if any) apart, every
/// column is a feature. Only an unreadable file, an empty one or a missing
/// label column fail as a whole.
pub fn read_csv(path: &Path, label_column: Option<&str>) -> Result<Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .context("empty CSV file")?
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let label = match label_column {
        Some(name) => Some(
            header
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("no column {name:?} in the header"))?,
        ),
        None => ["label", "type", "class", "y"]
            .iter()
            .find_map(|n| header.iter().position(|h| h.eq_ignore_ascii_case(n))),
    };
    let columns: Vec<String> = header
        .iter()
        .enumerate()
        .filter(|(c, _)| Some(*c) != label)
        .map(|(_, h)| h.clone())
        .collect();
    let rows = lines
        .enumerate()
        .map(|(i, line)| read_row(i + 1, line, &header, label))
        .collect();
    Ok(Table { columns, rows })
}

fn read_row(
    row: usize,
    line: &str,
    header: &[String],
    label: Option<usize>,
) -> std::result::Result<Row, Refusal> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let tag = label.and_then(|c| fields.get(c)).map(|s| s.to_string());
    if fields.len() != header.len() {
        return Err(Refusal::new(
            row,
            None,
            format!("{} fields, the header has {}", fields.len(), header.len()),
            tag,
        ));
    }
    let mut features = Vec::with_capacity(fields.len());
    for (c, (field, name)) in fields.iter().zip(header).enumerate() {
        if Some(c) == label {
            continue;
        }
        match field.parse::<f32>() {
            Ok(v) => features.push(v),
            Err(_) => {
                return Err(Refusal::new(
                    row,
                    Some(name.clone()),
                    format!("{name} = {field:?} is not a number"),
                    tag,
                ));
            }
        }
    }
    Ok((features, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_csv_spaces_or_json() {
        assert_eq!(parse_line("1, 2.5,3").unwrap(), Some(vec![1.0, 2.5, 3.0]));
        assert_eq!(parse_line("1 2 3").unwrap(), Some(vec![1.0, 2.0, 3.0]));
        assert_eq!(parse_line("[1,2]").unwrap(), Some(vec![1.0, 2.0]));
        assert_eq!(parse_line("  # comment").unwrap(), None);
        assert!(parse_line("1,x").is_err());
    }

    #[test]
    fn a_bad_row_is_refused_with_its_column_and_the_rest_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        std::fs::write(&path, "a,b,type\n1,2,Yes\n3,x,No\n5\n6,7,No\n").unwrap();
        let table = read_csv(&path, None).unwrap();
        assert_eq!(table.columns, vec!["a", "b"]);
        assert_eq!(table.rows.len(), 4);
        assert_eq!(table.rows[0], Ok((vec![1.0, 2.0], Some("Yes".into()))));
        let bad = table.rows[1].clone().unwrap_err();
        assert_eq!((bad.row, bad.column.as_deref()), (2, Some("b")));
        assert!(bad.reason.contains("not a number"), "{}", bad.reason);
        assert_eq!(bad.label.as_deref(), Some("No"));
        assert_eq!(table.rows[2].clone().unwrap_err().row, 3);
        assert_eq!(table.rows[3], Ok((vec![6.0, 7.0], Some("No".into()))));
        assert!(read_csv(&path, Some("missing")).is_err());
    }

    #[test]
    fn a_capture_refusal_names_the_column() {
        let columns = vec!["npreg".to_string(), "glu".to_string()];
        let error = AgentError::Model(ModelError::InputOutOfBounds {
            index: 1,
            value: 900.0,
            lo: 0.0,
            hi: 200.0,
        });
        let refusal = Refusal::from_capture(4, &columns, Some("Yes".into()), &error);
        assert_eq!(refusal.column.as_deref(), Some("glu"));
        assert_eq!(refusal.reason, "glu = 900 is outside its bounds [0, 200]");
        let json: serde_json::Value = serde_json::from_str(&refusal.to_json()).unwrap();
        assert_eq!(json["kind"], "refused-at-capture");
        assert_eq!(json["row"], 4);
    }
}
