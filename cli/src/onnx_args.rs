//! What `veil infer` and `veil import` need to import an ONNX file that
//! carries none of veil's metadata (any exporter's output): input bounds
//! given or measured on data, and the fixed-point format.

#[cfg(feature = "onnx")]
use std::path::Path;
use std::path::PathBuf;

#[cfg(feature = "onnx")]
use anyhow::{Context, Result};
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
    #[arg(long, value_name = "F,W", value_parser = veil_model::parse_fixed_point)]
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

#[cfg(feature = "onnx")]
/// The `--input-bounds` value: a list, or the file holding one.
fn read_bounds(value: &str) -> Result<Vec<(f64, f64)>> {
    let path = Path::new(value);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --input-bounds {}", path.display()))?;
        return veil_model::parse_bounds(&text)
            .with_context(|| format!("--input-bounds {}", path.display()));
    }
    veil_model::parse_bounds(value).context("--input-bounds")
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
