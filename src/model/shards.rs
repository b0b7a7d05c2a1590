//! Splitting a model's tensors into safetensors shards as transformers' `save_pretrained` does
//! (`max_shard_size`): tensors in order, a new shard when the next tensor would pass the limit,
//! a tensor larger than the limit alone in its shard. One shard is `model.safetensors`; several
//! are `model-00001-of-0000N.safetensors` listed in `model.safetensors.index.json`.

use crate::error::{Error, Result};

/// A size such as `5GB` (10⁹ bytes, as Hugging Face reads it), `500MB`, `2GiB` (2³⁰) or a plain
/// number of bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_bytes: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => f64::NAN,
    };
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && unit_bytes.is_finite() => Ok((n * unit_bytes) as u64),
        _ => Err(Error::msg(format!(
            "shard size {text:?}: write a size such as \"5GB\", \"500MB\" or \"2GiB\""
        ))),
    }
}

/// The file names of `count` shards.
pub fn shard_names(count: usize) -> Vec<String> {
    if count == 1 {
        return vec!["model.safetensors".to_string()];
    }
    (1..=count)
        .map(|i| format!("model-{i:05}-of-{count:05}.safetensors"))
        .collect()
}

/// Group tensors of the given byte sizes (in order) into shards of at most `max_bytes` each;
/// returns, per shard, the indices of its tensors.
pub fn plan_shards(sizes: &[u64], max_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        let fits = current + size <= max_bytes;
        match shards.last_mut() {
            Some(last) if fits || last.is_empty() => last.push(i),
            _ => {
                shards.push(vec![i]);
                current = 0;
            }
        }
        current += size;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_hugging_face_reads_them() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5gb").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        let e = parse_size("five").unwrap_err().to_string();
        assert!(e.contains("\"five\"") && e.contains("5GB"), "{e}");
        assert!(parse_size("5XB").is_err() && parse_size("0GB").is_err());
    }

    #[test]
    fn shards_fill_in_order_and_a_large_tensor_stands_alone() {
        assert_eq!(plan_shards(&[3, 3, 3], 10), vec![vec![0, 1, 2]]);
        assert_eq!(plan_shards(&[4, 4, 4], 10), vec![vec![0, 1], vec![2]]);
        assert_eq!(
            plan_shards(&[2, 20, 2, 2], 10),
            vec![vec![0], vec![1], vec![2, 3]]
        );
        assert_eq!(plan_shards(&[20], 10), vec![vec![0]]);
        assert!(plan_shards(&[], 10).is_empty());
    }

    #[test]
    fn shard_names_follow_transformers() {
        assert_eq!(shard_names(1), vec!["model.safetensors"]);
        assert_eq!(
            shard_names(2),
            vec![
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
    }
}
