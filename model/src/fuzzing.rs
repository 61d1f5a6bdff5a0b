//! Entry points for the fuzz targets in `fuzz/` and for the regression
//! tests that replay their findings on stable: the parsers of what a
//! person types or points at when importing a foreign ONNX model. Each
//! takes arbitrary bytes and must return without panicking. Not part of
//! the model's API.

use std::path::Path;

use crate::data::{FeatureFormat, parse_features};
use crate::{parse_bounds, parse_fixed_point};

/// `--input-bounds` (and `--fixed-point`) text: what parses must be a list
/// of finite intervals, one per pair written.
pub fn input_bounds(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(bounds) = parse_bounds(&text) {
        assert!(!bounds.is_empty(), "an empty list parsed");
        for (lo, hi) in &bounds {
            assert!(lo.is_finite() && hi.is_finite() && lo <= hi, "{lo}:{hi}");
        }
        assert!(bounds.len() <= text.matches(':').count());
    }
    if let Ok(fixed) = parse_fixed_point(&text) {
        assert!(fixed.validate().is_ok(), "{fixed:?}");
    }
}

/// A `--calibration` file. First byte: bit 7 picks IDX (else CSV), bits
/// 0-6 the model's width; second byte: the row limit; the rest is the
/// file. What parses has at most `limit` rows of `width` values each,
/// every one finite.
pub fn calibration(data: &[u8]) {
    let [selector, limit, file @ ..] = data else {
        return;
    };
    let format = if selector & 0x80 != 0 {
        FeatureFormat::Idx
    } else {
        FeatureFormat::Csv
    };
    let width = usize::from(selector & 0x7f);
    let limit = usize::from(*limit);
    if let Ok(rows) = parse_features(Path::new("fuzz"), format, file, width, limit) {
        assert!(
            rows.len() <= limit,
            "{} rows over the limit {limit}",
            rows.len()
        );
        for row in &rows {
            assert_eq!(row.len(), width);
            assert!(row.iter().all(|x| x.is_finite()));
        }
    }
}
