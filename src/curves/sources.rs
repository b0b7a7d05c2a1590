//! Where curves come from: a `trainer_log.jsonl` (tunelab's or LLaMA-Factory's: `current_steps`
//! and the chosen key, lines without that key skipped, as sparse eval points are), a CSV file
//! (a `step` column and a value column, by header name; or the first two columns without a
//! header), and plain numbers (steps 1, 2, 3, …) or (step, value) pairs.

use std::path::Path;

use super::curve::Curve;
use crate::error::{Error, Result};

/// Read `key` (e.g. `loss`, `eval_loss`) from a trainer log.
pub fn from_trainer_log(path: &Path, key: &str) -> Result<Curve> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::data(path, format!("line {}", i + 1), format!("not JSON: {e}")))?;
        let Some(value) = v.get(key).filter(|x| !x.is_null()) else {
            continue;
        };
        let value = value.as_f64().ok_or_else(|| {
            Error::data(
                path,
                format!("line {}: key \"{key}\"", i + 1),
                "not a number",
            )
        })?;
        let step = v
            .get("current_steps")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| {
                Error::data(
                    path,
                    format!("line {}", i + 1),
                    "no \"current_steps\"; is this a trainer_log.jsonl?",
                )
            })?;
        points.push((step as usize, value));
    }
    if points.is_empty() {
        return Err(Error::data(
            path,
            format!("key \"{key}\""),
            "no line has it (trainer logs have loss, eval_loss, lr, grad_norm, ...)",
        ));
    }
    Ok(Curve::new(key, &points))
}

/// Read a CSV of steps and values; `key` names the value column when there is a header.
pub fn from_csv(path: &Path, key: Option<&str>) -> Result<Curve> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, first)) = lines.next() else {
        return Err(Error::data(path, "line 1", "the file is empty"));
    };
    let cells = |l: &str| {
        l.split(',')
            .map(|c| c.trim().trim_matches('"').to_string())
            .collect::<Vec<_>>()
    };
    let header = cells(first);
    let numeric = header.iter().all(|c| c.parse::<f64>().is_ok());
    let (step_col, value_col, name) = if numeric {
        (0, 1, key.unwrap_or("value").to_string())
    } else {
        let find = |n: &str| header.iter().position(|c| c == n);
        let step_col = find("step").or_else(|| find("current_steps")).unwrap_or(0);
        let value_col = match key {
            Some(k) => find(k).ok_or_else(|| {
                Error::data(
                    path,
                    "line 1",
                    format!("no column \"{k}\"; the columns are {}", header.join(", ")),
                )
            })?,
            None => (0..header.len()).find(|&c| c != step_col).unwrap_or(1),
        };
        (
            step_col,
            value_col,
            header.get(value_col).cloned().unwrap_or_default(),
        )
    };
    let mut points = Vec::new();
    let rows = if numeric {
        vec![(0, first)]
    } else {
        Vec::new()
    };
    for (i, line) in rows.into_iter().chain(lines) {
        let c = cells(line);
        let field = |col: usize, what: &str| -> Result<&String> {
            c.get(col).ok_or_else(|| {
                Error::data(path, format!("line {}", i + 1), format!("no {what} column"))
            })
        };
        let step: f64 = field(step_col, "step")?.parse().map_err(|_| {
            Error::data(path, format!("line {}", i + 1), "the step is not a number")
        })?;
        let value: f64 = field(value_col, "value")?.parse().map_err(|_| {
            Error::data(path, format!("line {}", i + 1), "the value is not a number")
        })?;
        points.push((step as usize, value));
    }
    Ok(Curve::new(&name, &points))
}

/// Numbers at steps 1, 2, 3, …
pub fn from_values(name: &str, values: &[f64]) -> Curve {
    let points: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (i + 1, v))
        .collect();
    Curve::new(name, &points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_log_keys_and_sparse_eval_points() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trainer_log.jsonl");
        std::fs::write(
            &p,
            "{\"current_steps\": 5, \"loss\": 2.0}\n{\"current_steps\": 10, \"loss\": 1.5, \"eval_loss\": 1.7}\n\n{\"current_steps\": 15, \"loss\": 1.2}\n",
        )
        .unwrap();
        let loss = from_trainer_log(&p, "loss").unwrap();
        assert_eq!(
            (loss.steps.clone(), loss.values.clone()),
            (vec![5, 10, 15], vec![2.0, 1.5, 1.2])
        );
        let eval = from_trainer_log(&p, "eval_loss").unwrap();
        assert_eq!(eval.steps, vec![10]);
        let err = from_trainer_log(&p, "accuracy").unwrap_err().to_string();
        assert!(
            err.contains("trainer_log.jsonl") && err.contains("\"accuracy\""),
            "{err}"
        );
        std::fs::write(&p, "{\"current_steps\": 5, \"loss\": 2.0}\nnot json\n").unwrap();
        assert!(from_trainer_log(&p, "loss")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }

    #[test]
    fn csv_with_and_without_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.csv");
        std::fs::write(&p, "step,loss,eval_loss\n1,2.5,2.6\n2,2.0,2.2\n").unwrap();
        let c = from_csv(&p, Some("eval_loss")).unwrap();
        assert_eq!(
            (c.name.as_str(), c.values.clone()),
            ("eval_loss", vec![2.6, 2.2])
        );
        assert_eq!(from_csv(&p, None).unwrap().name, "loss");
        assert!(from_csv(&p, Some("lr"))
            .unwrap_err()
            .to_string()
            .contains("step, loss, eval_loss"));
        std::fs::write(&p, "1,3.0\n2,x\n").unwrap();
        assert!(from_csv(&p, None)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
        std::fs::write(&p, "1,3.0\n3,2.0\n").unwrap();
        assert_eq!(from_csv(&p, None).unwrap().steps, vec![1, 3]);
    }
}
