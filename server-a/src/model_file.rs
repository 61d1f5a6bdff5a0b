//! How a model file becomes what A serves: a `.plan` as `veil import`
//! wrote it, or an `.onnx` file from any exporter (no veil metadata)
//! imported with the options a person gives — input bounds, calibration
//! data, the fixed-point format. `veil infer`, `veil import` and server A
//! all read these options here, so one command line means one model.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use veil_model::{BoundsError, CompiledModel, FixedPoint, ModelError, WeightScale};

/// Margin added on each side of bounds measured on calibration data, as a
/// fraction of the measured range (at least 1): data seen later may lie
/// a little outside what the calibration rows cover.
pub const DEFAULT_MARGIN: f64 = 0.1;

/// The import options of an ONNX model (`--input-bounds`, `--calibration`,
/// `--fixed-point`; the same keys in server-a.toml).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct ModelOptions {
    /// Input bounds of an ONNX model that states none (no
    /// `veil.input_bounds` metadata): `lo:hi` per feature, comma-separated
    /// (`0:20,0:300,…`), or a file holding that list (commas or one pair a
    /// line, `#` starts a comment). Inputs outside them are refused at
    /// capture. Takes precedence over the model's metadata.
    #[cfg_attr(feature = "cli", arg(long, value_name = "LO:HI,…|FILE"))]
    pub input_bounds: Option<String>,
    /// Calibration data (a CSV whose first columns are the features, or an
    /// IDX image file). Where the model states no bounds and no
    /// `--input-bounds` is given, every row of it sets them (per feature
    /// min and max, widened by `--calibration-margin`); its first
    /// `--calibration-rows` rows also give server A's dummies the
    /// distribution of real pre-activations (without them A falls back to
    /// one B can tell apart). Use training data, never the rows you
    /// evaluate on.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub calibration: Option<PathBuf>,
    /// Bounds from `--calibration` are widened on each side by this
    /// fraction of max(hi − lo, |lo|, |hi|, 1) [default: 0.1].
    #[cfg_attr(feature = "cli", arg(long, value_name = "FRACTION"))]
    pub calibration_margin: Option<f64>,
    /// How many calibration rows (from the start of the file) calibrate
    /// the dummies and the quantization report [default: 1000].
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub calibration_rows: Option<usize>,
    /// Fixed-point format `F,W`: activations carry F fraction bits,
    /// weights W (each 1..=30; default 16,16). More weight bits shrink the
    /// quantization error of models whose weights span a wide range (e.g.
    /// a standardization folded into the first layer) at the cost of larger
    /// bounds.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "F,W", value_parser = veil_model::parse_fixed_point)
    )]
    #[serde(deserialize_with = "fixed_point_text")]
    pub fixed_point: Option<FixedPoint>,
    /// How each layer's weight bits follow from W: `per-layer` gives a
    /// first layer that reads raw features (a standardization folded into
    /// it) the bits their magnitudes need, at least W; `uniform` gives
    /// every layer W [default: per-layer].
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "uniform|per-layer", value_parser = veil_model::parse_weight_scale)
    )]
    pub weight_scale: Option<WeightScale>,
}

fn fixed_point_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<FixedPoint>, D::Error> {
    let text = String::deserialize(d)?;
    veil_model::parse_fixed_point(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl ModelOptions {
    /// These options, each one not given taken from `fallback` (command
    /// line over configuration file).
    pub fn or(self, fallback: ModelOptions) -> ModelOptions {
        ModelOptions {
            input_bounds: self.input_bounds.or(fallback.input_bounds),
            calibration: self.calibration.or(fallback.calibration),
            calibration_margin: self.calibration_margin.or(fallback.calibration_margin),
            calibration_rows: self.calibration_rows.or(fallback.calibration_rows),
            fixed_point: self.fixed_point.or(fallback.fixed_point),
            weight_scale: self.weight_scale.or(fallback.weight_scale),
        }
    }

    /// The calibration margin, [`DEFAULT_MARGIN`] unless given.
    pub fn margin(&self) -> f64 {
        self.calibration_margin.unwrap_or(DEFAULT_MARGIN)
    }

    /// Calibration rows to read, `veil_model::CALIBRATION_ROWS` unless given.
    pub fn rows(&self) -> usize {
        self.calibration_rows
            .unwrap_or(veil_model::CALIBRATION_ROWS)
    }
}

/// Why a model file could not be loaded with its options.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// The ONNX import failed.
    #[error("importing {path}")]
    Import {
        /// The `.onnx` file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<ModelError>,
    },
    /// The `.plan` file could not be read.
    #[error("loading {path}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<ModelError>,
    },
    /// Calibration failed.
    #[error("calibrating {model} on {data}")]
    Calibrate {
        /// The model file.
        model: PathBuf,
        /// The calibration data file.
        data: PathBuf,
        /// Why.
        #[source]
        source: Box<ModelError>,
    },
    /// The input bounds do not parse.
    #[error("input bounds {origin}")]
    Bounds {
        /// Where they came from (the option, or the file).
        origin: String,
        /// Why.
        #[source]
        source: BoundsError,
    },
    /// The input-bounds file could not be read.
    #[error("reading input bounds {path}")]
    ReadBounds {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Import options given for a model that is already a `.plan`.
    #[error(
        "input bounds, the fixed-point format and the weight scale apply to ONNX models; \
         {path} is already quantized (its bounds and format were fixed by `veil import`)"
    )]
    AlreadyQuantized {
        /// The `.plan` file.
        path: PathBuf,
    },
}

impl ModelOptions {
    /// Whether any option that only an ONNX import reads was given.
    pub fn any_import_option(&self) -> bool {
        self.input_bounds.is_some() || self.fixed_point.is_some() || self.weight_scale.is_some()
    }

    /// The `input_bounds` value: a list, or the file holding one.
    pub fn bounds(&self) -> Result<Option<Vec<(f64, f64)>>, ModelFileError> {
        let Some(value) = &self.input_bounds else {
            return Ok(None);
        };
        let path = Path::new(value);
        if path.is_file() {
            let text =
                std::fs::read_to_string(path).map_err(|source| ModelFileError::ReadBounds {
                    path: path.to_path_buf(),
                    source,
                })?;
            return veil_model::parse_bounds(&text).map(Some).map_err(|source| {
                ModelFileError::Bounds {
                    origin: path.display().to_string(),
                    source,
                }
            });
        }
        veil_model::parse_bounds(value)
            .map(Some)
            .map_err(|source| ModelFileError::Bounds {
                origin: "list".into(),
                source,
            })
    }

    /// Calibrates the dummies of the model at `model` on `calibration`,
    /// if given, through `run(data, rows)`.
    fn calibrate(
        &self,
        model: &Path,
        run: impl FnOnce(&Path, usize) -> Result<(), ModelError>,
    ) -> Result<(), ModelFileError> {
        let Some(data) = &self.calibration else {
            return Ok(());
        };
        run(data, self.rows()).map_err(|source| ModelFileError::Calibrate {
            model: model.to_path_buf(),
            data: data.clone(),
            source: Box::new(source),
        })
    }

    /// Imports `onnx` with these options: bounds from `input_bounds`,
    /// else the model's metadata, else `calibration`; then the dummies'
    /// calibration on `calibration`.
    #[cfg(feature = "onnx")]
    pub fn import(&self, onnx: &Path) -> Result<veil_model::Model, ModelFileError> {
        use veil_model::{ImportOptions, Model};
        let mut options = ImportOptions {
            fixed: self.fixed_point.unwrap_or_default(),
            weight_scale: self.weight_scale.unwrap_or_default(),
            input_bounds: self.bounds()?,
            calibration_margin: self.margin(),
            ..ImportOptions::default()
        };
        let loaded = match Model::load(onnx, &options) {
            // The metadata's bounds win over the data's: the shipped
            // models' plans stay what they were when imported with
            // --calibration.
            Err(ModelError::MissingInputBounds) if self.calibration.is_some() => {
                options.calibration_file = self.calibration.clone();
                Model::load(onnx, &options)
            }
            other => other,
        };
        let mut model = loaded.map_err(|source| ModelFileError::Import {
            path: onnx.to_path_buf(),
            source: Box::new(source),
        })?;
        self.calibrate(onnx, |data, rows| model.calibrate_from(data, rows))?;
        Ok(model)
    }

    /// The float and integer models compared on the first
    /// `calibration_rows` rows of `calibration`; None without it.
    #[cfg(feature = "onnx")]
    pub fn report(
        &self,
        model: &veil_model::Model,
    ) -> Result<Option<veil_model::QuantizationReport>, ModelFileError> {
        let Some(path) = &self.calibration else {
            return Ok(None);
        };
        let calibrate = |source| ModelFileError::Calibrate {
            model: PathBuf::from(&model.topology().name),
            data: path.clone(),
            source: Box::new(source),
        };
        let rows = veil_model::data::load_features(path, model.topology().input_len, self.rows())
            .map_err(calibrate)?;
        model
            .quantization_report(&rows)
            .map(Some)
            .map_err(calibrate)
    }

    /// A `.plan` file, or an `.onnx` file imported with these options in
    /// builds with the `onnx` feature. A `.plan` is already quantized, so
    /// only `calibration` (the dummies' distribution) applies to it.
    pub fn load(&self, path: &Path) -> Result<CompiledModel, ModelFileError> {
        let is_onnx = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
        if is_onnx {
            #[cfg(feature = "onnx")]
            return Ok(self.import(path)?.into_compiled());
            #[cfg(not(feature = "onnx"))]
            return Err(ModelFileError::Load {
                path: path.to_path_buf(),
                source: Box::new(ModelError::OnnxDisabled {
                    path: path.display().to_string(),
                }),
            });
        }
        if self.any_import_option() {
            return Err(ModelFileError::AlreadyQuantized {
                path: path.to_path_buf(),
            });
        }
        let mut model =
            veil_model::load_model_file(path).map_err(|source| ModelFileError::Load {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        self.calibrate(path, |data, rows| model.calibrate_from(data, rows))?;
        Ok(model)
    }
}
