//! What `veil infer` and `veil import` need to import an ONNX file that
//! carries none of veil's metadata (any exporter's output): input bounds
//! given or measured on data, and the fixed-point format.

#[cfg(feature = "onnx")]
use std::path::Path;
use std::path::PathBuf;

#[cfg(feature = "onnx")]
use anyhow::{Context, Result, bail};
use veil_model::FixedPoint;

/// Margin added on each side of bounds measured on calibration data, as a
/// fraction of the measured range (at least 1): data seen later may lie
/// a little outside what the calibration rows cover.
const DEFAULT_MARGIN: f64 = 0.1;

#[derive(clap::Args, Clone, Debug)]
pub struct OnnxArgs {
    /// Input bounds of an ONNX model that states none (no
    /// `veil.input_bounds` metadata): `lo:hi` per feature, comma-separated
    /// (`0:20,0:300,…`), or a file holding that list (commas or one pair a
    /// line, `#` starts a comment). Inputs outside them are refused at
    /// capture. Takes precedence over the model's metadata.
    #[arg(long, value_name = "LO:HI,…|FILE")]
    pub input_bounds: Option<String>,
    /// Calibration data (a CSV whose first columns are the features, or an
    /// IDX image file). Where the model states no bounds and no
    /// `--input-bounds` is given, every row of it sets them (per feature
    /// min and max, widened by `--calibration-margin`); its first
    /// `--calibration-rows` rows also give server A's dummies the
    /// distribution of real pre-activations (without them A falls back to
    /// one B can tell apart). Use training data, never the rows you
    /// evaluate on.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Bounds from `--calibration` are widened on each side by this
    /// fraction of max(hi − lo, |lo|, |hi|, 1).
    #[arg(long, value_name = "FRACTION", default_value_t = DEFAULT_MARGIN)]
    pub calibration_margin: f64,
    /// How many calibration rows (from the start of the file) calibrate
    /// the dummies and the quantization report.
    #[arg(long, value_name = "N", default_value_t = veil_model::CALIBRATION_ROWS)]
    pub calibration_rows: usize,
    /// Fixed-point format `F,W`: activations carry F fraction bits,
    /// weights W (each 1..=30; default 16,16). More weight bits shrink the
    /// quantization error of models whose weights span a wide range (e.g.
    /// a standardization folded into the first layer) at the cost of larger
    /// bounds.
    #[arg(long, value_name = "F,W", value_parser = parse_fixed_point)]
    pub fixed_point: Option<FixedPoint>,
}

impl Default for OnnxArgs {
    fn default() -> Self {
        OnnxArgs {
            input_bounds: None,
            calibration: None,
            calibration_margin: DEFAULT_MARGIN,
            calibration_rows: veil_model::CALIBRATION_ROWS,
            fixed_point: None,
        }
    }
}

impl OnnxArgs {
    /// Whether any option that only an ONNX import reads was given.
    pub fn any_import_option(&self) -> bool {
        self.input_bounds.is_some() || self.fixed_point.is_some()
    }
}

fn parse_fixed_point(text: &str) -> Result<FixedPoint, String> {
    let (f, w) = text
        .split_once(',')
        .ok_or_else(|| format!("expected F,W (e.g. 16,16), got {text:?}"))?;
    let bits = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|e| format!("{s:?} in {text:?}: {e}"))
    };
    let fixed = FixedPoint {
        frac_bits: bits(f)?,
        weight_bits: bits(w)?,
    };
    fixed.validate().map_err(|e| e.to_string())?;
    Ok(fixed)
}

#[cfg(feature = "onnx")]
/// `lo:hi` pairs separated by commas, newlines or both; `#` starts a
/// comment.
pub fn parse_bounds(text: &str) -> Result<Vec<(f64, f64)>> {
    let mut bounds = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        for pair in line.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let number = bounds.len() + 1;
            let Some((lo, hi)) = pair.split_once(':') else {
                bail!("feature {number}: expected lo:hi, got {pair:?}");
            };
            let parse = |s: &str| {
                s.trim()
                    .parse::<f64>()
                    .with_context(|| format!("feature {number}: {s:?} in {pair:?}"))
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                bail!("feature {number}: {pair:?} is no interval lo <= hi");
            }
            bounds.push((lo, hi));
        }
    }
    if bounds.is_empty() {
        bail!("no lo:hi pairs");
    }
    Ok(bounds)
}

#[cfg(feature = "onnx")]
/// The `--input-bounds` value: a list, or the file holding one.
fn read_bounds(value: &str) -> Result<Vec<(f64, f64)>> {
    let path = Path::new(value);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --input-bounds {}", path.display()))?;
        return parse_bounds(&text).with_context(|| format!("--input-bounds {}", path.display()));
    }
    parse_bounds(value).context("--input-bounds")
}

/// Imports `onnx` with these options: bounds from `--input-bounds`, else
/// the model's metadata, else `--calibration`; then the dummies'
/// calibration on `--calibration`.
#[cfg(feature = "onnx")]
pub fn import(onnx: &Path, args: &OnnxArgs) -> Result<veil_model::Model> {
    use veil_model::{ImportOptions, Model, ModelError};
    let mut options = ImportOptions {
        fixed: args.fixed_point.unwrap_or_default(),
        input_bounds: args.input_bounds.as_deref().map(read_bounds).transpose()?,
        calibration_margin: args.calibration_margin,
        ..ImportOptions::default()
    };
    let loaded = match Model::load(onnx, &options) {
        // The metadata's bounds win over the data's: the shipped models'
        // plans stay what they were when imported with --calibration.
        Err(ModelError::MissingInputBounds) if args.calibration.is_some() => {
            options.calibration_file = args.calibration.clone();
            Model::load(onnx, &options)
        }
        other => other,
    };
    let mut model = loaded.with_context(|| format!("importing {}", onnx.display()))?;
    if let Some(path) = &args.calibration {
        model
            .calibrate_from(path, args.calibration_rows)
            .with_context(|| format!("calibrating {} on {}", onnx.display(), path.display()))?;
    }
    Ok(model)
}

/// The float and integer models compared on the first
/// `--calibration-rows` rows of `--calibration`; None without it.
#[cfg(feature = "onnx")]
pub fn report(
    model: &veil_model::Model,
    args: &OnnxArgs,
) -> Result<Option<veil_model::QuantizationReport>> {
    let Some(path) = &args.calibration else {
        return Ok(None);
    };
    let rows =
        veil_model::data::load_features(path, model.topology().input_len, args.calibration_rows)?;
    let report = model
        .quantization_report(&rows)
        .with_context(|| format!("comparing float and integer models on {}", path.display()))?;
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "onnx")]
    #[test]
    fn bounds_lists_parse_or_say_why_not() {
        assert_eq!(
            parse_bounds("0:1, -2.5:3e2\n# comment\n4:4 # same\n").unwrap(),
            vec![(0.0, 1.0), (-2.5, 300.0), (4.0, 4.0)]
        );
        for (bad, why) in [
            ("", "no lo:hi"),
            ("0:1,2", "feature 2: expected lo:hi"),
            ("0:x", "feature 1"),
            ("3:1", "no interval"),
            ("0:inf", "no interval"),
        ] {
            let err = format!("{:#}", parse_bounds(bad).unwrap_err());
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn fixed_point_formats_parse_or_say_why_not() {
        assert_eq!(
            parse_fixed_point("16,24").unwrap(),
            FixedPoint {
                frac_bits: 16,
                weight_bits: 24
            }
        );
        assert!(parse_fixed_point("16").unwrap_err().contains("F,W"));
        assert!(parse_fixed_point("0,16").unwrap_err().contains("frac_bits"));
        assert!(parse_fixed_point("16,x").is_err());
    }
}
