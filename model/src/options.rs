//! The import options a person types: input bounds (`--input-bounds`,
//! `input_bounds` in server-a.toml) and the fixed-point format
//! (`--fixed-point`). Parsed here, not in a binary, so that every command
//! and server A read them alike and a fuzz target can reach the parsers.

use crate::{FixedPoint, WeightScale};

/// Why a bounds list was refused; features are numbered from 1.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BoundsError {
    /// Nothing but commas, blanks and comments.
    #[error("no lo:hi pairs")]
    Empty,
    /// An entry without a colon.
    #[error("feature {feature}: expected lo:hi, got {pair:?}")]
    NotAPair {
        /// The feature, from 1.
        feature: usize,
        /// The entry as written.
        pair: String,
    },
    /// A side that is not a number.
    #[error("feature {feature}: {text:?} in {pair:?} is not a number")]
    NotANumber {
        /// The feature, from 1.
        feature: usize,
        /// The entry as written.
        pair: String,
        /// The side that failed.
        text: String,
    },
    /// Inverted, infinite or NaN bounds.
    #[error("feature {feature}: {pair:?} is no interval lo <= hi of finite numbers")]
    NotAnInterval {
        /// The feature, from 1.
        feature: usize,
        /// The entry as written.
        pair: String,
    },
}

/// `lo:hi` pairs separated by commas, newlines or both; `#` starts a
/// comment.
pub fn parse_bounds(text: &str) -> Result<Vec<(f64, f64)>, BoundsError> {
    let mut bounds = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        for pair in line.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let feature = bounds.len() + 1;
            let Some((lo, hi)) = pair.split_once(':') else {
                return Err(BoundsError::NotAPair {
                    feature,
                    pair: pair.to_string(),
                });
            };
            let number = |s: &str| {
                s.trim()
                    .parse::<f64>()
                    .map_err(|_| BoundsError::NotANumber {
                        feature,
                        pair: pair.to_string(),
                        text: s.trim().to_string(),
                    })
            };
            let (lo, hi) = (number(lo)?, number(hi)?);
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(BoundsError::NotAnInterval {
                    feature,
                    pair: pair.to_string(),
                });
            }
            bounds.push((lo, hi));
        }
    }
    if bounds.is_empty() {
        return Err(BoundsError::Empty);
    }
    Ok(bounds)
}

/// Why a fixed-point format `F,W` was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FixedPointError {
    /// Not two comma-separated parts.
    #[error("expected F,W (e.g. 16,16), got {0:?}")]
    Shape(String),
    /// A part that is not an integer.
    #[error("{0:?} is not a number of bits")]
    NotANumber(String),
    /// A bit count outside 1..=30.
    #[error("{name} = {bits}, expected 1..=30")]
    OutOfRange {
        /// Which part: F or W.
        name: &'static str,
        /// Its value.
        bits: u32,
    },
}

/// `F,W`: activations carry F fraction bits, weights W, each 1..=30.
pub fn parse_fixed_point(text: &str) -> Result<FixedPoint, FixedPointError> {
    let (f, w) = text
        .split_once(',')
        .ok_or_else(|| FixedPointError::Shape(text.to_string()))?;
    let bits = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| FixedPointError::NotANumber(s.trim().to_string()))
    };
    let fixed = FixedPoint {
        frac_bits: bits(f)?,
        weight_bits: bits(w)?,
    };
    for (name, bits) in [
        ("frac_bits", fixed.frac_bits),
        ("weight_bits", fixed.weight_bits),
    ] {
        if !(1..=30).contains(&bits) {
            return Err(FixedPointError::OutOfRange { name, bits });
        }
    }
    debug_assert!(fixed.validate().is_ok());
    Ok(fixed)
}

/// A weight scale that is neither `uniform` nor `per-layer`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("weight scale {0:?}: expected uniform or per-layer")]
pub struct WeightScaleError(pub String);

/// `uniform` or `per-layer` ([`WeightScale`]).
pub fn parse_weight_scale(text: &str) -> Result<WeightScale, WeightScaleError> {
    match text.trim() {
        "uniform" => Ok(WeightScale::Uniform),
        "per-layer" => Ok(WeightScale::PerLayer),
        other => Err(WeightScaleError(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_lists_parse_or_say_why_not() {
        assert_eq!(
            parse_bounds("0:1, -2.5:3e2\n# comment\n4:4 # same\n"),
            Ok(vec![(0.0, 1.0), (-2.5, 300.0), (4.0, 4.0)])
        );
        assert_eq!(parse_bounds(""), Err(BoundsError::Empty));
        assert_eq!(parse_bounds("# only a comment"), Err(BoundsError::Empty));
        assert!(matches!(
            parse_bounds("0:1,2"),
            Err(BoundsError::NotAPair { feature: 2, .. })
        ));
        assert!(matches!(
            parse_bounds("0:x"),
            Err(BoundsError::NotANumber { feature: 1, ref text, .. }) if text == "x"
        ));
        for bad in ["3:1", "0:inf", "nan:1", "-inf:0"] {
            assert!(
                matches!(
                    parse_bounds(bad),
                    Err(BoundsError::NotAnInterval { feature: 1, .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn fixed_point_formats_parse_or_say_why_not() {
        assert_eq!(
            parse_fixed_point("16, 24"),
            Ok(FixedPoint {
                frac_bits: 16,
                weight_bits: 24
            })
        );
        assert!(matches!(
            parse_fixed_point("16"),
            Err(FixedPointError::Shape(_))
        ));
        assert_eq!(
            parse_fixed_point("0,16"),
            Err(FixedPointError::OutOfRange {
                name: "frac_bits",
                bits: 0
            })
        );
        assert!(matches!(
            parse_fixed_point("16,x"),
            Err(FixedPointError::NotANumber(_))
        ));
    }
}
