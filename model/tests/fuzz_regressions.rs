//! The fuzz targets' committed inputs (fuzz/regressions/<target>/: every
//! crash found, plus seeds) replayed through the same entry points on
//! stable.

#[path = "../../fuzz/regressions.rs"]
mod committed;

use committed::replay;
use veil_model::fuzzing;

#[test]
fn input_bounds() {
    replay("model_input_bounds", fuzzing::input_bounds);
}

#[test]
fn calibration_files() {
    replay("model_calibration", fuzzing::calibration);
}
