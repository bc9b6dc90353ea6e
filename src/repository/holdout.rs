//! A model's holdout rows, `<root>/<model>/holdout.csv`: a header, one numeric column per feature,
//! and the truth in a column named `label`, `target` or `truth` (if the data has it). What
//! `loadtest` replays, and the tests read.

use std::path::Path;

/// The rows of a holdout CSV, features apart from truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Holdout {
    /// The feature columns' names, in file order.
    pub features: Vec<String>,
    /// One row of feature values per data line.
    pub rows: Vec<Vec<f64>>,
    /// The truth column's name and one value per row, when the data has one.
    pub truth: Option<(String, Vec<f64>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldoutError {
    #[error("reading {path}: {source}")]
    Csv {
        path: String,
        #[source]
        source: csv::Error,
    },
    #[error("{path} line {line}: '{field}' is not a number")]
    NotANumber { path: String, line: u64, field: String },
    #[error("{path} has no header")]
    NoHeader { path: String },
}

/// Column names that hold the truth rather than a feature.
const TRUTH_COLUMNS: [&str; 3] = ["label", "target", "truth"];

impl Holdout {
    pub fn read(path: &Path) -> Result<Self, HoldoutError> {
        let shown = || path.display().to_string();
        let csv_error = |source| HoldoutError::Csv { path: shown(), source };
        let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(csv_error)?;
        let header = reader.headers().map_err(csv_error)?.clone();
        if header.is_empty() {
            return Err(HoldoutError::NoHeader { path: shown() });
        }
        let truth_column = header.iter().position(|name| TRUTH_COLUMNS.contains(&name));
        let features = header.iter().enumerate().filter(|(i, _)| Some(*i) != truth_column).map(|(_, n)| n.to_owned());
        let mut holdout = Self {
            features: features.collect(),
            rows: Vec::new(),
            truth: truth_column.map(|i| (header[i].to_owned(), Vec::new())),
        };
        for record in reader.records() {
            let record = record.map_err(csv_error)?;
            let line = record.position().map_or(0, csv::Position::line);
            let mut row = Vec::with_capacity(holdout.features.len());
            for (i, field) in record.iter().enumerate() {
                let value = field.parse::<f64>().map_err(|_| HoldoutError::NotANumber {
                    path: shown(),
                    line,
                    field: field.to_owned(),
                })?;
                match &mut holdout.truth {
                    Some((_, truth)) if Some(i) == truth_column => truth.push(value),
                    _ => row.push(value),
                }
            }
            holdout.rows.push(row);
        }
        Ok(holdout)
    }

    /// Writes the rows (and the truth column last, if any) as a CSV that `read` reads back.
    pub fn write(&self, path: &Path) -> Result<(), HoldoutError> {
        let csv_error = |source| HoldoutError::Csv { path: path.display().to_string(), source };
        let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
        let mut header = self.features.clone();
        header.extend(self.truth.as_ref().map(|(name, _)| name.clone()));
        writer.write_record(&header).map_err(csv_error)?;
        for (i, row) in self.rows.iter().enumerate() {
            let mut fields: Vec<String> = row.iter().map(f64::to_string).collect();
            fields.extend(self.truth.as_ref().map(|(_, truth)| truth[i].to_string()));
            writer.write_record(&fields).map_err(csv_error)?;
        }
        writer.flush().map_err(|e| csv_error(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_and_truth_are_read_apart_and_written_back_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holdout.csv");
        std::fs::write(&path, "a,\"b, quoted\", label\n1.5, 2,0\n-3,4e2,1\n").unwrap();
        let holdout = Holdout::read(&path).unwrap();
        assert_eq!(holdout.features, ["a", "b, quoted"]);
        assert_eq!(holdout.rows, [vec![1.5, 2.0], vec![-3.0, 400.0]]);
        assert_eq!(holdout.truth, Some(("label".to_owned(), vec![0.0, 1.0])));
        holdout.write(&path).unwrap();
        assert_eq!(Holdout::read(&path).unwrap(), holdout);

        std::fs::write(&path, "a,b\n1,x\n").unwrap();
        let error = Holdout::read(&path).unwrap_err().to_string();
        assert!(error.contains("line 2: 'x' is not a number"), "{error}");
    }
}
