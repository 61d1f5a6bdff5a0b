//! Importer behaviour on operators and structures beyond the shipped models,
//! and its errors.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::{Attr, Graph, argmax, models_dir, values};
use veil_model::{
    ActivationKind, ActivationMode, FixedPoint, FloorRounding, ImportOptions, LinearKind, Model,
    ModelError, SeededRounding, Stage,
};

fn kinds(m: &Model) -> Vec<String> {
    m.topology()
        .stages
        .iter()
        .map(|s| match s {
            Stage::Linear(l) if l.kind == LinearKind::Dense => "Dense".to_string(),
            Stage::Linear(_) => "Conv".to_string(),
            Stage::Activation(a) => format!("{:?}", a.kind)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string(),
        })
        .collect()
}

/// Float and integer references agree closely on random inputs within bounds.
fn assert_references_agree(model: &Model, seed: u64, rows: usize, tolerance: f64) {
    let t = model.topology();
    let rounding = SeededRounding {
        key: [seed as u8; 32],
    };
    for r in 0..rows {
        let u = values(seed * 1000 + r as u64, t.input_len, 1.0);
        let x: Vec<f32> = t
            .input_bounds
            .iter()
            .zip(&u)
            .map(|((lo, hi), u)| (lo + (hi - lo) * (f64::from(*u) + 1.0) / 2.0) as f32)
            .collect();
        let float = model.run_float(&x).unwrap();
        let x_hat = model.encode_input(&x).unwrap();
        for modes in [t.default_modes(), t.permute_modes()] {
            let int = model.decode_output(&model.run_int(&x_hat, &modes, &rounding).unwrap());
            for (a, b) in float.iter().zip(&int) {
                assert!(
                    (f64::from(*a) - b).abs() <= tolerance * (1.0 + b.abs()),
                    "float {a} vs integer {b} (modes {modes:?})"
                );
            }
        }
    }
}

/// Sub/Mul per channel, Conv, BatchNormalization, MaxPool then Relu,
/// Conv followed by AveragePool, LeakyRelu, Flatten, Gemm, Softmax.
fn conv_net(softmax: bool) -> Graph {
    let mut g = Graph::new(&[2, 6, 6]);
    let mean = g.init("mean", &[1, 2, 1, 1], vec![0.25, -0.5]);
    let inv_std = g.init("inv_std", &[1, 2, 1, 1], vec![2.0, 0.5]);
    let w1 = g.init("w1", &[3, 2, 3, 3], values(1, 54, 0.5));
    let b1 = g.init("b1", &[3], values(2, 3, 0.2));
    let gamma = g.init("gamma", &[3], vec![1.2, 0.8, 1.0]);
    let beta = g.init("beta", &[3], vec![0.1, -0.1, 0.0]);
    let mu = g.init("mu", &[3], vec![0.05, 0.0, -0.05]);
    let var = g.init("var", &[3], vec![1.5, 0.7, 1.0]);
    let w2 = g.init("w2", &[2, 3, 2, 2], values(3, 24, 0.5));
    let w3 = g.init("w3", &[4, 2], values(4, 8, 0.8));
    let b3 = g.init("b3", &[4], values(5, 4, 0.1));
    g.node("Sub", "norm_sub", &["", &mean], &[])
        .node("Mul", "norm_mul", &["", &inv_std], &[])
        .node(
            "Conv",
            "conv1",
            &["", &w1, &b1],
            &[
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                ("kernel_shape", Attr::Ints(vec![3, 3])),
            ],
        )
        .node(
            "BatchNormalization",
            "bn",
            &["", &gamma, &beta, &mu, &var],
            &[("epsilon", Attr::Float(1e-5))],
        )
        .node(
            "MaxPool",
            "pool",
            &[""],
            &[
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![2, 2])),
            ],
        )
        .node("Relu", "relu", &[""], &[])
        .node("Conv", "conv2", &["", &w2], &[])
        .node(
            "AveragePool",
            "avg",
            &[""],
            &[("kernel_shape", Attr::Ints(vec![2, 2]))],
        )
        .node("LeakyRelu", "leaky", &[""], &[("alpha", Attr::Float(0.1))])
        .node("Flatten", "flat", &[""], &[("axis", Attr::Int(1))])
        .node(
            "Gemm",
            "fc",
            &["", &w3, &b3],
            &[("transB", Attr::Int(1)), ("alpha", Attr::Float(0.5))],
        );
    if softmax {
        g.node("Softmax", "softmax", &[""], &[("axis", Attr::Int(-1))]);
    }
    g.bounds(-1.0, 1.0);
    g
}

#[test]
fn conv_net_with_folded_normalisation_and_fusions() {
    let model = Model::from_bytes(&conv_net(false).bytes(), &ImportOptions::default()).unwrap();
    // Normalisation and batch norm fold into the first conv, which keeps its
    // structure; MaxPool then Relu fuse; the unpadded average pool composes
    // with the conv before it into one larger conv.
    assert_eq!(
        kinds(&model),
        ["Conv", "ReluMaxPool", "Conv", "LeakyRelu", "Dense"]
    );
    match &model.topology().stages[2] {
        Stage::Linear(l) => assert!(matches!(
            l.kind,
            LinearKind::Conv2d {
                kernel_h: 3,
                kernel_w: 3,
                out_h: 1,
                out_w: 1,
                ..
            }
        )),
        other => panic!("{other:?}"),
    }
    let t = model.topology();
    assert!(
        matches!(t.stages[3], Stage::Activation(ref a) if a.kind == ActivationKind::LeakyRelu { alpha_q: 6554 })
    );
    assert_eq!(t.input_shape, Some((2, 6, 6)));
    assert_references_agree(&model, 11, 40, 2e-3);
}

#[test]
fn a_convolution_takes_one_input_scale_per_channel() {
    let bytes = conv_net(false).bytes();
    let per_channel = ImportOptions {
        input_scale: Some([vec![4096.0; 36], vec![1000.0; 36]].concat()),
        ..Default::default()
    };
    let model = Model::from_bytes(&bytes, &per_channel).unwrap();
    // Inputs are rounded to 1/1000 in channel 1, hence the looser tolerance.
    assert_references_agree(&model, 12, 20, 1e-2);
    let mut mixed = vec![4096.0; 72];
    mixed[40] = 1000.0;
    let mixed = ImportOptions {
        input_scale: Some(mixed),
        ..Default::default()
    };
    assert!(matches!(
        Model::from_bytes(&bytes, &mixed),
        Err(ModelError::InvalidScale(_))
    ));
}

#[test]
fn final_softmax_is_left_to_the_device() {
    let plain = Model::from_bytes(&conv_net(false).bytes(), &ImportOptions::default()).unwrap();
    let soft = Model::from_bytes(&conv_net(true).bytes(), &ImportOptions::default()).unwrap();
    assert!(soft.topology().device_softmax);
    assert!(!plain.topology().device_softmax);
    let x = vec![0.3f32; 72];
    // run_float returns the logits before the Softmax.
    let logits = soft.run_float(&x).unwrap();
    assert_eq!(logits, plain.run_float(&x).unwrap());
    assert!(
        (logits.iter().sum::<f32>() - 1.0).abs() > 1e-3,
        "looks like probabilities: {logits:?}"
    );
    assert_eq!(soft.plan().to_bytes(), plain.plan().to_bytes());
}

#[test]
fn matmul_add_reshape_global_average_pool_and_passthrough_ops() {
    let mut g = Graph::new(&[5]);
    let w = g.init("w", &[5, 32], values(6, 160, 0.6));
    let b = g.init("b", &[32], values(7, 32, 0.1));
    let shape = g.init_i64("shape", vec![1, 2, 4, 4]);
    let w2 = g.init("w2", &[2, 3], values(8, 6, 1.0));
    g.node("MatMul", "mm", &["", &w], &[])
        .node("Add", "add", &["", &b], &[])
        .node("Identity", "id", &[""], &[])
        .node("Dropout", "drop", &[""], &[])
        .node("Tanh", "tanh", &[""], &[])
        .node("Reshape", "unflatten", &["", &shape], &[])
        .node("GlobalAveragePool", "gap", &[""], &[])
        .node("Flatten", "flat", &[""], &[])
        .node("MatMul", "mm2", &["", &w2], &[])
        .node("Sigmoid", "sig", &[""], &[])
        .bounds(-3.0, 3.0);
    let model = Model::from_bytes(&g.bytes(), &ImportOptions::default()).unwrap();
    // The global average pool (a conv) and the MatMul after it fuse densely.
    assert_eq!(kinds(&model), ["Dense", "Tanh", "Dense", "Sigmoid"]);
    // Ends with an activation: outputs are at scale 2^f.
    assert_eq!(model.topology().output_scale_bits, 16);
    assert_references_agree(&model, 12, 40, 1e-3);
}

#[test]
fn activation_without_linear_layer_gets_an_identity_stage() {
    let mut g = Graph::new(&[1, 4, 4]);
    g.node(
        "MaxPool",
        "pool",
        &[""],
        &[
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    )
    .bounds(-2.0, 2.0);
    let model = Model::from_bytes(&g.bytes(), &ImportOptions::default()).unwrap();
    assert_eq!(kinds(&model), ["Dense", "MaxPool"]);
    let x: Vec<f32> = (0..16).map(|i| i as f32 / 8.0 - 1.0).collect();
    let out = model
        .run_int(
            &model.encode_input(&x).unwrap(),
            &model.topology().default_modes(),
            &FloorRounding,
        )
        .unwrap();
    let want: Vec<f64> = model
        .run_float(&x)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    assert_eq!(model.decode_output(&out), want);
}

#[test]
fn unsupported_operator_names_type_and_node() {
    let mut g = Graph::new(&[4]);
    let w = g.init("w", &[3, 4], values(9, 12, 1.0));
    g.node("Gemm", "fc", &["", &w], &[("transB", Attr::Int(1))])
        .node("Erf", "the_erf_node", &[""], &[])
        .bounds(0.0, 1.0);
    let err = Model::from_bytes(&g.bytes(), &ImportOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ModelError::UnsupportedOperator { .. }),
        "{msg}"
    );
    assert!(msg.contains("Erf") && msg.contains("the_erf_node"), "{msg}");
}

#[test]
fn unsupported_usages_are_refused_with_reasons() {
    // MaxPool directly after Sigmoid.
    let mut g = Graph::new(&[1, 4, 4]);
    let w = g.init("w", &[1, 1, 1, 1], vec![2.0]);
    g.node("Conv", "c", &["", &w], &[])
        .node("Sigmoid", "s", &[""], &[])
        .node(
            "MaxPool",
            "late_pool",
            &[""],
            &[("kernel_shape", Attr::Ints(vec![2, 2]))],
        )
        .bounds(0.0, 1.0);
    let msg = Model::from_bytes(&g.bytes(), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("MaxPool") && msg.contains("late_pool") && msg.contains("Sigmoid"),
        "{msg}"
    );

    // Grouped convolution.
    let mut g = Graph::new(&[2, 4, 4]);
    let w = g.init("w", &[2, 1, 1, 1], vec![1.0, 1.0]);
    g.node("Conv", "grouped", &["", &w], &[("group", Attr::Int(2))])
        .bounds(0.0, 1.0);
    let msg = Model::from_bytes(&g.bytes(), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("group") && msg.contains("grouped"), "{msg}");

    // Division by the data tensor is not linear.
    let mut g = Graph::new(&[3]);
    let c = g.init("c", &[3], vec![1.0, 2.0, 3.0]);
    g.node("Div", "recip", &[&c, ""], &[]).bounds(1.0, 2.0);
    let err = Model::from_bytes(&g.bytes(), &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("recip"), "{err}");
}

#[test]
fn malformed_onnx_is_a_clear_error() {
    for bytes in [&b"definitely not a protobuf \xff\xff\xff"[..], &[][..]] {
        let err = Model::from_bytes(bytes, &ImportOptions::default()).unwrap_err();
        assert!(matches!(err, ModelError::MalformedOnnx(_)), "{err}");
        assert!(err.to_string().contains("malformed ONNX"), "{err}");
    }
    let shipped = std::fs::read(models_dir().join("pima-mlp.onnx")).unwrap();
    for cut in [10, shipped.len() / 2, shipped.len() - 3] {
        let err = Model::from_bytes(&shipped[..cut], &ImportOptions::default()).unwrap_err();
        assert!(
            matches!(err, ModelError::MalformedOnnx(_)),
            "cut at {cut}: {err}"
        );
    }
    let err = Model::load(
        &models_dir().join("no-such-model.onnx"),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
}

fn tiny(bounds: Option<(f64, f64)>) -> Graph {
    let mut g = Graph::new(&[3]);
    let w = g.init("w", &[3, 2], vec![1.0, -2.0, 0.5, 0.25, 3.0, -1.0]);
    g.node("MatMul", "mm", &["", &w], &[])
        .node("Relu", "r", &[""], &[]);
    if let Some((lo, hi)) = bounds {
        g.bounds(lo, hi);
    }
    g
}

#[test]
fn input_bounds_come_from_options_calibration_or_metadata() {
    let bytes = tiny(None).bytes();
    let err = Model::from_bytes(&bytes, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::MissingInputBounds), "{err}");
    assert!(err.to_string().contains("calibration"), "{err}");

    let explicit = ImportOptions {
        input_bounds: Some(vec![(-1.0, 1.0), (0.0, 2.0), (-5.0, 5.0)]),
        ..Default::default()
    };
    let m = Model::from_bytes(&bytes, &explicit).unwrap();
    assert_eq!(m.topology().input_bounds[2], (-5.0, 5.0));
    assert_eq!(m.topology().input_bound_bits, 19); // 5·2^16 < 2^19

    let wrong = ImportOptions {
        input_bounds: Some(vec![(0.0, 1.0)]),
        ..Default::default()
    };
    assert!(matches!(
        Model::from_bytes(&bytes, &wrong),
        Err(ModelError::InvalidBounds(_))
    ));
    let inverted = ImportOptions {
        input_bounds: Some(vec![(1.0, 0.0); 3]),
        ..Default::default()
    };
    assert!(matches!(
        Model::from_bytes(&bytes, &inverted),
        Err(ModelError::InvalidBounds(_))
    ));

    let calib = vec![vec![0.0, 1.0, -2.0], vec![4.0, 1.0, 2.0]];
    let opts = ImportOptions {
        calibration: Some(calib.clone()),
        calibration_margin: 0.1,
        ..Default::default()
    };
    let m = Model::from_bytes(&bytes, &opts).unwrap();
    let b = &m.topology().input_bounds;
    // Widened by 10% of max(range, |lo|, |hi|, 1) on each side.
    assert_eq!(b[0], (-0.4, 4.4));
    assert_eq!(b[1], (0.9, 1.1));
    assert_eq!(b[2], (-2.4, 2.4));
    for row in &calib {
        m.encode_input(row).unwrap();
    }

    let with_meta =
        Model::from_bytes(&tiny(Some((-0.5, 0.5))).bytes(), &ImportOptions::default()).unwrap();
    assert_eq!(with_meta.topology().input_bounds, vec![(-0.5, 0.5); 3]);
    // Explicit bounds override the metadata.
    let over = Model::from_bytes(&tiny(Some((-0.5, 0.5))).bytes(), &explicit).unwrap();
    assert_eq!(over.topology().input_bounds[0], (-1.0, 1.0));

    let mut g = tiny(None);
    g.metadata(veil_model::INPUT_BOUNDS_KEY, "[[0, 1], oops");
    assert!(matches!(
        Model::from_bytes(&g.bytes(), &ImportOptions::default()),
        Err(ModelError::InvalidBounds(_))
    ));
}

#[test]
fn input_scales_fold_into_the_first_layer() {
    // x̂ = round(x · scale): feature 1 at tenths, feature 2 at thousandths.
    let scaled = ImportOptions {
        input_bounds: Some(vec![(0.0, 20.0), (10.0, 80.0), (0.0, 3.0)]),
        input_scale: Some(vec![1.0, 10.0, 1000.0]),
        ..Default::default()
    };
    let m = Model::from_bytes(&tiny(None).bytes(), &scaled).unwrap();
    let t = m.topology();
    assert_eq!(t.input_ranges, vec![(0, 20), (100, 800), (0, 3000)]);
    assert_eq!(t.input_bound_bits, 12);
    let x = [7.0, 33.6, 0.627];
    assert_eq!(m.encode_input(&x).unwrap(), vec![7, 336, 627]);
    // The first layer's outputs keep the scale 2^(f+w): the same as with
    // the default scale 2^f, up to rounding.
    let default = ImportOptions {
        input_bounds: scaled.input_bounds.clone(),
        ..Default::default()
    };
    let d = Model::from_bytes(&tiny(None).bytes(), &default).unwrap();
    let a = m
        .run_int(
            &m.encode_input(&x).unwrap(),
            &t.default_modes(),
            &FloorRounding,
        )
        .unwrap();
    let b = d
        .run_int(
            &d.encode_input(&x).unwrap(),
            &t.default_modes(),
            &FloorRounding,
        )
        .unwrap();
    for (a, b) in m.decode_output(&a).iter().zip(d.decode_output(&b)) {
        assert!((a - b).abs() < 1e-3, "{a} against {b}");
    }
    // The metadata gives one scale for every feature, or one each.
    let mut g = tiny(Some((0.0, 1.0)));
    g.metadata(veil_model::INPUT_SCALE_KEY, "255");
    let pixels = Model::from_bytes(&g.bytes(), &ImportOptions::default()).unwrap();
    assert_eq!(pixels.topology().input_ranges, vec![(0, 255); 3]);
    assert_eq!(
        pixels.encode_input(&[0.0, 128.0 / 255.0, 1.0]).unwrap(),
        vec![0, 128, 255]
    );
    for bad in ["[1, 2]", "0", "-1", "\"x\""] {
        let mut g = tiny(Some((0.0, 1.0)));
        g.metadata(veil_model::INPUT_SCALE_KEY, bad);
        assert!(
            matches!(
                Model::from_bytes(&g.bytes(), &ImportOptions::default()),
                Err(ModelError::InvalidScale(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn encode_input_checks_bounds_and_names_the_feature() {
    let m = Model::from_bytes(&tiny(Some((-1.0, 1.0))).bytes(), &ImportOptions::default()).unwrap();
    assert_eq!(
        m.encode_input(&[0.5, -1.0, 1.0]).unwrap(),
        vec![32768, -65536, 65536]
    );
    match m.encode_input(&[0.0, 1.5, 0.0]).unwrap_err() {
        ModelError::InputOutOfBounds { index, .. } => assert_eq!(index, 1),
        e => panic!("{e}"),
    }
    assert!(
        m.encode_input(&[0.0, 0.0, f32::NAN])
            .unwrap_err()
            .to_string()
            .contains("feature 2")
    );
    assert!(matches!(
        m.encode_input(&[0.0; 2]),
        Err(ModelError::LengthMismatch { .. })
    ));
}

#[test]
fn modes_are_checked() {
    let m = Model::load(
        &models_dir().join("pima-tanh.onnx"),
        &ImportOptions::default(),
    )
    .unwrap();
    let x = m
        .encode_input(&[1.0, 100.0, 70.0, 30.0, 30.0, 0.5, 40.0])
        .unwrap();
    let mut modes = m.topology().permute_modes();
    modes[1] = ActivationMode::Blind;
    let err = m.run_int(&x, &modes, &FloorRounding).unwrap_err();
    assert!(
        matches!(err, ModelError::InvalidMode { stage: 1, .. }),
        "{err}"
    );
    assert!(matches!(
        m.run_int(&x, &modes[..2], &FloorRounding),
        Err(ModelError::LengthMismatch { .. })
    ));
}

#[test]
fn oversized_models_are_refused() {
    // A padded convolution after another one (no activation between) only
    // fuses densely, within the size limit.
    let convs = |pads: i64| {
        let mut g = Graph::new(&[1, 8, 8]);
        let w1 = g.init("w1", &[2, 1, 3, 3], values(20, 18, 1.0));
        let w2 = g.init("w2", &[2, 2, 3, 3], values(21, 36, 1.0));
        g.node("Conv", "c1", &["", &w1], &[])
            .node(
                "Conv",
                "c2",
                &["", &w2],
                &[("pads", Attr::Ints(vec![pads; 4]))],
            )
            .bounds(0.0, 1.0);
        g.bytes()
    };
    let small = ImportOptions {
        max_dense_weights: 1000,
        ..Default::default()
    };
    let err = Model::from_bytes(&convs(1), &small).unwrap_err();
    assert!(matches!(err, ModelError::TooLarge { .. }), "{err}");
    let fused = Model::from_bytes(&convs(1), &ImportOptions::default()).unwrap();
    assert_eq!(kinds(&fused), ["Dense"]);
    // Unpadded, they compose into one 5×5 convolution whatever the limit.
    let composed = Model::from_bytes(&convs(0), &small).unwrap();
    assert_eq!(kinds(&composed), ["Conv"]);
    for model in [&fused, &composed] {
        let x: Vec<f32> = values(22, 64, 0.5).iter().map(|v| v + 0.5).collect();
        let float = model.run_float(&x).unwrap();
        let modes = model.topology().default_modes();
        let out = model
            .run_int(&model.encode_input(&x).unwrap(), &modes, &FloorRounding)
            .unwrap();
        for (a, b) in float.iter().zip(&model.decode_output(&out)) {
            assert!((f64::from(*a) - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    // Bounds beyond 2^100.
    let m = Model::from_bytes(
        &tiny(None).bytes(),
        &ImportOptions {
            input_bounds: Some(vec![(-1e25, 1e25); 3]),
            ..Default::default()
        },
    );
    assert!(matches!(m, Err(ModelError::BoundTooLarge { .. })), "{m:?}");
    let mut g = Graph::new(&[2]);
    let w = g.init("w", &[2, 2], vec![1e20, 1.0, 1.0, 1.0]);
    g.node("MatMul", "huge", &["", &w], &[]).bounds(0.0, 1.0);
    let m = Model::from_bytes(&g.bytes(), &ImportOptions::default());
    assert!(matches!(m, Err(ModelError::WeightTooLarge { .. })), "{m:?}");

    let bad_fixed = ImportOptions {
        fixed: FixedPoint {
            frac_bits: 0,
            weight_bits: 16,
        },
        ..Default::default()
    };
    assert!(matches!(
        Model::from_bytes(&tiny(Some((0.0, 1.0))).bytes(), &bad_fixed),
        Err(ModelError::InvalidFixedPoint(_))
    ));
}

#[test]
fn other_fixed_point_parameters_still_agree() {
    let opts = ImportOptions {
        fixed: FixedPoint {
            frac_bits: 12,
            weight_bits: 10,
        },
        ..Default::default()
    };
    let model = Model::from_bytes(&conv_net(false).bytes(), &opts).unwrap();
    assert_eq!(model.topology().output_scale_bits, 22);
    assert_references_agree(&model, 13, 20, 4e-2);
    let x = vec![0.1f32; 72];
    let a = model.decode_output(
        &model
            .run_int(
                &model.encode_input(&x).unwrap(),
                &model.topology().default_modes(),
                &FloorRounding,
            )
            .unwrap(),
    );
    assert_eq!(
        argmax(&a),
        argmax(
            &model
                .run_float(&x)
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect::<Vec<_>>()
        )
    );
}
