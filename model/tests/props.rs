//! Property tests: the truncation rule, the activation semantics, soundness
//! of the interval bounds, and the direct convolution.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::{Attr, Graph, values};
use proptest::prelude::*;
use veil_model::{
    ActivationKind, ActivationMode, ActivationSpec, ConvGeometry, FixedPoint, ImportOptions,
    LinearLayer, Model, PoolSpec, RoundingSource, SeededRounding, Stage, activate, permute_eval,
    truncate,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn truncation_is_floor_of_the_offset_sum(
        v in -(1i128 << 100)..(1i128 << 100),
        k in 1u32..=60,
        r_raw: u64,
    ) {
        let r = u128::from(r_raw) & ((1u128 << k) - 1);
        let t = truncate(v, k, r).unwrap();
        prop_assert_eq!(t, (v + r as i128).div_euclid(1i128 << k));
        // Within one unit of the exact quotient: floor or ceil.
        let floor = v.div_euclid(1i128 << k);
        let ceil = floor + i128::from(v.rem_euclid(1i128 << k) != 0);
        prop_assert!(floor <= t && t <= ceil);
        prop_assert_eq!(truncate(v, k, 0).unwrap(), floor);
    }

    #[test]
    fn elementwise_activations_follow_the_specified_rule(
        z in prop::collection::vec(-(1i128 << 60)..(1i128 << 60), 1..40),
        alpha_q in -(1i64 << 17)..(1i64 << 17),
        key: [u8; 32],
        stage in 0usize..9,
    ) {
        let fixed = FixedPoint::default();
        let w = fixed.weight_bits;
        let rounding = SeededRounding { key };
        let floor_div = |v: i128, k: u32, r: u128| (v + r as i128).div_euclid(1i128 << k);
        for kind in [ActivationKind::Relu, ActivationKind::LeakyRelu { alpha_q }, ActivationKind::Sigmoid, ActivationKind::Tanh] {
            let spec = ActivationSpec { kind, input_len: z.len(), output_len: z.len(), pool: None, output_bound_bits: 100 };
            let permute = activate(stage, &spec, ActivationMode::Permute, None, &z, &fixed, &rounding).unwrap();
            for (o, v) in permute.iter().zip(&z) {
                prop_assert_eq!(*o, permute_eval(&kind, *v, &fixed));
            }
            let blind = activate(stage, &spec, ActivationMode::Blind, None, &z, &fixed, &rounding);
            if !kind.supports_blind() {
                prop_assert!(blind.is_err());
                continue;
            }
            for (j, (o, v)) in blind.unwrap().iter().zip(&z).enumerate() {
                let want = match kind {
                    _ if *v > 0 => floor_div(*v, w, rounding.offset(stage, j, 0, w)),
                    ActivationKind::LeakyRelu { alpha_q } => {
                        floor_div(i128::from(alpha_q) * v, 2 * w, rounding.offset(stage, j, 1, 2 * w))
                    }
                    _ => 0,
                };
                prop_assert_eq!(*o, want);
                // Blind and permute differ by at most the rounding error (plus
                // the alpha quantization for the negative side).
                let exact = permute_eval(&kind, *v, &fixed);
                prop_assert!((o - exact).abs() <= 1, "{o} vs {exact} for {kind:?} at {v}");
            }
        }
    }

    #[test]
    fn max_pool_picks_the_maximum_and_rounds_per_window(
        c in 1usize..3, h in 1usize..7, wd in 1usize..7,
        k in 1usize..4, s in 1usize..3, pad in 0usize..2,
        seed: u64,
        key: [u8; 32],
    ) {
        prop_assume!(pad < k);
        let pool = PoolSpec { channels: c, in_h: h, in_w: wd, kernel_h: k, kernel_w: k, stride_h: s, stride_w: s,
                              pad_top: pad, pad_left: pad, pad_bottom: pad, pad_right: 0 };
        prop_assume!(pool.output_len() > 0);
        let fixed = FixedPoint::default();
        // Few distinct values, so ties are common.
        let z: Vec<i128> = values(seed, pool.input_len(), 3.0).iter().map(|v| (v.round() as i128) << 20).collect();
        let rounding = SeededRounding { key };
        let windows = pool.windows();
        prop_assert_eq!(windows.len(), pool.output_len());
        for kind in [ActivationKind::MaxPool, ActivationKind::ReluMaxPool] {
            let spec = ActivationSpec { kind, input_len: z.len(), output_len: windows.len(), pool: Some(pool), output_bound_bits: 100 };
            let blind = activate(3, &spec, ActivationMode::Blind, None, &z, &fixed, &rounding).unwrap();
            let permute = activate(3, &spec, ActivationMode::Permute, Some(&windows), &z, &fixed, &rounding).unwrap();
            for (o, win) in windows.iter().enumerate() {
                prop_assert!(!win.is_empty());
                let max = win.iter().map(|i| z[*i as usize]).max().unwrap();
                let want = if kind == ActivationKind::ReluMaxPool && max <= 0 {
                    0
                } else {
                    (max + rounding.offset(3, o, 0, 16) as i128).div_euclid(1 << 16)
                };
                prop_assert_eq!(blind[o], want);
                prop_assert_eq!(permute[o], permute_eval(&kind, max, &fixed));
            }
        }
    }

    #[test]
    fn conv_apply_equals_a_naive_dense_expansion(
        in_c in 1usize..4, in_h in 1usize..8, in_w in 1usize..8, out_c in 1usize..4,
        kernel_h in 1usize..4, kernel_w in 1usize..4, stride_h in 1usize..3, stride_w in 1usize..3,
        pads in prop::array::uniform4(0usize..3),
        seed: u64,
    ) {
        let g = ConvGeometry { in_c, in_h, in_w, out_c, kernel_h, kernel_w, stride_h, stride_w,
                               pad_top: pads[0], pad_left: pads[1], pad_bottom: pads[2], pad_right: pads[3] };
        prop_assume!(g.output_len() > 0);
        let kernel: Vec<i64> = values(seed, g.kernel_len(), 70_000.0).iter().map(|v| *v as i64).collect();
        let bias: Vec<i128> = values(seed ^ 1, g.output_len(), 1e9).iter().map(|v| *v as i128).collect();
        let x: Vec<i128> = values(seed ^ 2, g.input_len(), 1e7).iter().map(|v| *v as i128).collect();
        let layer = LinearLayer::conv(g, kernel.clone(), bias.clone()).unwrap();
        // Dense matrix written from the definition of a padded strided conv.
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut dense = vec![0i64; g.output_len() * g.input_len()];
        for oc in 0..out_c { for oy in 0..oh { for ox in 0..ow {
            let o = (oc * oh + oy) * ow + ox;
            for ic in 0..in_c { for iy in 0..in_h { for ix in 0..in_w {
                let ky = (iy + g.pad_top) as isize - (oy * stride_h) as isize;
                let kx = (ix + g.pad_left) as isize - (ox * stride_w) as isize;
                if (0..kernel_h as isize).contains(&ky) && (0..kernel_w as isize).contains(&kx) {
                    let kidx = ((oc * in_c + ic) * kernel_h + ky as usize) * kernel_w + kx as usize;
                    dense[o * g.input_len() + (ic * in_h + iy) * in_w + ix] = kernel[kidx];
                }
            }}}
        }}}
        let naive = LinearLayer::dense(g.input_len(), g.output_len(), dense, bias).unwrap();
        prop_assert_eq!(layer.apply(&x).unwrap(), naive.apply(&x).unwrap());
        prop_assert_eq!(layer.apply_without_bias(&x).unwrap(), naive.apply_without_bias(&x).unwrap());
        for o in 0..g.output_len() {
            prop_assert_eq!(layer.row(o), naive.row(o));
            prop_assert_eq!(layer.bias(o), naive.bias(o));
        }
    }
}

/// A random small model: dense or conv front, one or two activations.
fn random_model(seed: u64, conv: bool, act: u8, scale: f32, lo: f64, hi: f64) -> Vec<u8> {
    let acts = ["Relu", "LeakyRelu", "Sigmoid", "Tanh"];
    let act = acts[act as usize % acts.len()];
    let alpha = values(seed ^ 9, 1, 1.0)[0];
    let act_attrs = |a: &str| {
        if a == "LeakyRelu" {
            vec![("alpha", Attr::Float(alpha))]
        } else {
            vec![]
        }
    };
    let mut g;
    if conv {
        g = Graph::new(&[2, 5, 5]);
        let w = g.init("w", &[3, 2, 3, 3], values(seed, 54, scale));
        let b = g.init("b", &[3], values(seed ^ 1, 3, scale));
        g.node(
            "Conv",
            "conv",
            &["", &w, &b],
            &[("pads", Attr::Ints(vec![1, 0, 1, 1]))],
        );
        if act != "Sigmoid" && act != "Tanh" {
            g.node(
                "MaxPool",
                "pool",
                &[""],
                &[
                    ("kernel_shape", Attr::Ints(vec![2, 2])),
                    ("strides", Attr::Ints(vec![2, 2])),
                    ("pads", Attr::Ints(vec![0, 1, 0, 0])),
                ],
            );
        }
        g.node(act, "act", &[""], &act_attrs(act))
            .node("Flatten", "flat", &[""], &[]);
        // Conv output 3×5×4; the pool (left pad 1, stride 2) makes it 3×2×2.
        let n = if act == "Sigmoid" || act == "Tanh" {
            3 * 5 * 4
        } else {
            3 * 2 * 2
        };
        let w2 = g.init("w2", &[n, 4], values(seed ^ 2, (n * 4) as usize, scale));
        g.node("MatMul", "fc", &["", &w2], &[]);
    } else {
        g = Graph::new(&[6]);
        let w = g.init("w", &[8, 6], values(seed, 48, scale));
        let b = g.init("b", &[8], values(seed ^ 1, 8, scale));
        let w2 = g.init("w2", &[3, 8], values(seed ^ 2, 24, scale));
        g.node("Gemm", "fc1", &["", &w, &b], &[("transB", Attr::Int(1))])
            .node(act, "act", &[""], &act_attrs(act))
            .node("Gemm", "fc2", &["", &w2], &[("transB", Attr::Int(1))])
            .node("Relu", "act2", &[""], &[]);
    }
    g.bounds(lo, hi);
    g.bytes()
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn bounds_hold_for_every_input_within_the_feature_bounds(
        seed: u64,
        conv: bool,
        act in 0u8..4,
        scale in prop::sample::select(vec![0.01f32, 1.0, 30.0]),
        lo in -50.0f64..0.0,
        width in 0.0f64..100.0,
        key: [u8; 32],
        blind_mask: u8,
        w_bits in 4u32..20,
    ) {
        let hi = lo + width;
        let opts = ImportOptions { fixed: FixedPoint { frac_bits: 16, weight_bits: w_bits }, ..Default::default() };
        let model = Model::from_bytes(&random_model(seed, conv, act, scale, lo, hi), &opts).unwrap();
        let t = model.topology();
        let rounding = SeededRounding { key };
        let modes: Vec<ActivationMode> = t.stages.iter().enumerate().map(|(s, st)| match st {
            Stage::Activation(a) if a.kind.supports_blind() && blind_mask & (1 << (s % 8)) != 0 => ActivationMode::Blind,
            _ => ActivationMode::Permute,
        }).collect();
        for r in 0..24u64 {
            let u = values(seed ^ (r << 32), t.input_len, 1.0);
            // Corners of the box as well as interior points.
            let x: Vec<f32> = u.iter().map(|u| {
                let v = match r % 3 {
                    0 => lo + (hi - lo) * (f64::from(*u) + 1.0) / 2.0,
                    1 => if *u > 0.0 { hi } else { lo },
                    _ => if *u > 0.3 { hi } else if *u < -0.3 { lo } else { (lo + hi) / 2.0 },
                };
                // The nearest f32 inside [lo, hi].
                let f = v as f32;
                if f64::from(f) < lo { f.next_up() } else if f64::from(f) > hi { f.next_down() } else { f }
            }).collect();
            let x_hat = model.encode_input(&x).unwrap();
            prop_assert!(x_hat.iter().all(|v| v.unsigned_abs() < 1u64 << t.input_bound_bits));
            let trace = model.run_int_trace(&x_hat, &modes, &rounding).unwrap();
            for (s, (stage, out)) in t.stages.iter().zip(&trace).enumerate() {
                let bits = match stage { Stage::Linear(l) => l.output_bound_bits, Stage::Activation(a) => a.output_bound_bits };
                let intervals = &model.stage_intervals()[s];
                prop_assert_eq!(intervals.len(), out.len());
                for (v, (lo, hi)) in out.iter().zip(intervals) {
                    prop_assert!(v.unsigned_abs() < 1u128 << bits, "stage {s}: |{v}| >= 2^{bits}");
                    prop_assert!(lo <= v && v <= hi, "stage {s}: {v} outside [{lo}, {hi}]");
                }
            }
        }
    }
}

/// Offsets at their maximum: every truncation rounds up.
struct MaxRounding;

impl RoundingSource for MaxRounding {
    fn offset(&self, _stage: usize, _index: usize, _which: u8, bits: u32) -> u128 {
        (1u128 << bits) - 1
    }
    fn tie_rank(&self, _stage: usize, _window: usize, position: usize) -> u64 {
        position as u64
    }
}

/// At the input corner that maximizes a first-layer output, that output
/// reaches its bound exactly, and the activation rounded all the way up
/// stays within its own bound.
#[test]
fn bounds_are_attained_at_the_corners_and_survive_maximal_rounding() {
    for name in ["pima-mlp", "mnist-mlp"] {
        let model = Model::load(
            &common::models_dir().join(format!("{name}.onnx")),
            &ImportOptions::default(),
        )
        .unwrap();
        let t = model.topology();
        let layer = model.plan().layer(0).unwrap();
        let intervals = model.stage_intervals();
        for j in 0..layer.output_len().min(24) {
            let signs: std::collections::HashMap<u32, i64> = layer.row(j).into_iter().collect();
            for maximize in [true, false] {
                let x: Vec<f32> = t
                    .input_bounds
                    .iter()
                    .enumerate()
                    .map(|(i, (lo, hi))| {
                        let w = signs.get(&(i as u32)).copied().unwrap_or(0);
                        if (w > 0) == maximize {
                            *hi as f32
                        } else {
                            *lo as f32
                        }
                    })
                    .collect();
                let x_hat = model.encode_input(&x).unwrap();
                for modes in [t.default_modes(), t.permute_modes()] {
                    let trace = model.run_int_trace(&x_hat, &modes, &MaxRounding).unwrap();
                    let (lo, hi) = intervals[0][j];
                    assert_eq!(
                        trace[0][j],
                        if maximize { hi } else { lo },
                        "{name} unit {j}"
                    );
                    for (s, out) in trace.iter().enumerate() {
                        for (v, (lo, hi)) in out.iter().zip(&intervals[s]) {
                            assert!(
                                lo <= v && v <= hi,
                                "{name} stage {s}: {v} outside [{lo}, {hi}]"
                            );
                        }
                    }
                }
            }
        }
    }
}
