//! Tests of the layer-list engine: each layer's forward pass against a direct loop, gradients
//! against central finite differences, per-record clipping against brute-force per-record
//! gradients, the safetensors round trip, and learning.

use super::*;
use crate::export::{from_safetensors, to_safetensors};
use rand::Rng;

fn spec(input: &[usize], layers: Vec<Layer>, classes: usize) -> ModelSpec {
    ModelSpec::layer_list(input.iter().product(), input.to_vec(), layers, classes)
}

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

fn dataset(features: Vec<f32>, labels: Vec<u32>, width: usize) -> Dataset {
    Dataset {
        feature_count: width,
        features,
        labels,
        feature_names: Vec::new(),
    }
}

/// The activation after the first `upto` layers, flattened per record, without dropout.
fn activation(
    spec: &ModelSpec,
    params: &[f32],
    features: &[f32],
    rows: usize,
    upto: usize,
) -> Vec<f32> {
    let plan = Plan::new(spec).expect("valid");
    let device = Device::flex();
    let theta = tensor_nd(params.to_vec(), [plan.total], &device);
    let slices = plan.slices(&theta);
    let mut h = plan.input(features.to_vec(), rows, &device).expect("input");
    let mut ctx = Ctx::new(None, false);
    let mut k = 0;
    for step in &plan.steps[..upto] {
        let p = &slices[k..k + step.params.len()];
        k += step.params.len();
        h = plan.layer(step, p, h, &mut ctx);
    }
    match h {
        Act::V(x) => to_vec(x),
        Act::S(x) => to_vec(x),
        Act::I(x) => to_vec(x),
        Act::T(_) => panic!("tokens"),
    }
}

/// The gradient of the summed loss over `rows`, through the training path (one autodiff
/// vector, no probes): the brute-force reference.
fn full_gradient(spec: &ModelSpec, params: &[f32], data: &Dataset, rows: &[usize]) -> Vec<f32> {
    let plan = Plan::new(spec).expect("valid");
    let device = Device::flex().autodiff();
    let (features, labels) = gather(data, rows);
    let x = plan.input(features, rows.len(), &device).expect("input");
    let leaf = tensor_nd(params.to_vec(), [plan.total], &Device::flex())
        .autodiff()
        .require_grad();
    let logits = plan.forward(&plan.slices(&leaf), x, &mut Ctx::new(None, false));
    let loss = loss(logits, targets(&labels, plan.classes, &device)) * (rows.len() as f32);
    let grads = loss.backward();
    to_vec(leaf.grad(&grads).expect("gradient"))
}

fn summed_loss(spec: &ModelSpec, params: &[f32], data: &Dataset) -> f64 {
    let p = predict_proba(spec, params, &data.features).expect("predict");
    p.chunks(spec.classes)
        .zip(&data.labels)
        .map(|(row, &l)| -f64::from(row[l as usize]).ln())
        .sum()
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

fn conv(c_out: usize, kernel: usize, stride: usize, padding: usize) -> Layer {
    Layer::Conv2d {
        channels: c_out,
        kernel,
        stride,
        padding,
    }
}

/// Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

#[test]
fn dense_on_vectors_and_sequences_matches_a_loop() {
    let (t, d, u) = (3, 4, 5);
    let s = spec(
        &[t, d],
        vec![
            Layer::Dense { units: u },
            Layer::Flatten,
            Layer::Dense { units: 2 },
        ],
        2,
    );
    let params = random(s.param_count(), 1, 1.0);
    let x = random(2 * t * d, 2, 2.0);
    let out = activation(&s, &params, &x, 2, 1);
    let (w, b) = (&params[..d * u], &params[d * u..d * u + u]);
    for r in 0..2 {
        for step in 0..t {
            for j in 0..u {
                let mut z = b[j];
                for i in 0..d {
                    z += x[(r * t + step) * d + i] * w[i * u + j];
                }
                assert!(close(out[(r * t + step) * u + j], z, 1e-5));
            }
        }
    }
    // Flatten keeps row-major order.
    assert_eq!(activation(&s, &params, &x, 2, 2), out);
}

#[test]
fn conv2d_matches_a_loop_with_stride_and_padding() {
    let (c, h, w, co, k, st, pad) = (2, 6, 5, 3, 3, 2, 1);
    let s = spec(
        &[c, h, w],
        vec![
            conv(co, k, st, pad),
            Layer::Flatten,
            Layer::Dense { units: 2 },
        ],
        2,
    );
    let params = random(s.param_count(), 3, 1.0);
    let x = random(c * h * w, 4, 1.0);
    let out = activation(&s, &params, &x, 1, 1);
    let (oh, ow) = ((h + 2 * pad - k) / st + 1, (w + 2 * pad - k) / st + 1);
    assert_eq!(out.len(), co * oh * ow);
    let bias = &params[co * c * k * k..];
    for o in 0..co {
        for y in 0..oh {
            for xx in 0..ow {
                let mut z = bias[o];
                for ci in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (y * st + ky) as isize - pad as isize,
                                (xx * st + kx) as isize - pad as isize,
                            );
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            z += params[((o * c + ci) * k + ky) * k + kx]
                                * x[(ci * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
                assert!(close(out[(o * oh + y) * ow + xx], z, 1e-5), "{o} {y} {xx}");
            }
        }
    }
}

#[test]
fn pooling_matches_a_loop() {
    let (c, h, w) = (2, 5, 5);
    let x = random(c * h * w, 5, 1.0);
    for (layer, max) in [
        (
            Layer::MaxPool2d {
                size: 2,
                stride: None,
            },
            true,
        ),
        (
            Layer::AvgPool2d {
                size: 3,
                stride: Some(1),
            },
            false,
        ),
    ] {
        let s = spec(
            &[c, h, w],
            vec![layer, Layer::Flatten, Layer::Dense { units: 2 }],
            2,
        );
        let params = random(s.param_count(), 6, 1.0);
        let out = activation(&s, &params, &x, 1, 1);
        let (size, stride) = match layer {
            Layer::MaxPool2d { size, stride } | Layer::AvgPool2d { size, stride } => {
                (size, stride.unwrap_or(size))
            }
            _ => unreachable!(),
        };
        let o = (h - size) / stride + 1;
        assert_eq!(out.len(), c * o * o);
        for ch in 0..c {
            for y in 0..o {
                for xx in 0..o {
                    let window: Vec<f32> = (0..size * size)
                        .map(|i| x[(ch * h + y * stride + i / size) * w + xx * stride + i % size])
                        .collect();
                    let want = if max {
                        window.iter().copied().fold(f32::MIN, f32::max)
                    } else {
                        window.iter().sum::<f32>() / window.len() as f32
                    };
                    assert!(close(out[(ch * o + y) * o + xx], want, 1e-6));
                }
            }
        }
    }
}

#[test]
fn activations_and_dropout_at_evaluation_are_elementwise() {
    let x = random(6, 7, 3.0);
    type Reference = fn(f64) -> f64;
    let refs: [(Layer, Reference); 4] = [
        (Layer::Relu, |v| v.max(0.0)),
        (Layer::Tanh, f64::tanh),
        (Layer::Sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
        (Layer::Gelu, |v| {
            0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))
        }),
    ];
    for (layer, f) in refs {
        let s = spec(&[6], vec![layer, Layer::Dense { units: 2 }], 2);
        let out = activation(&s, &random(s.param_count(), 8, 1.0), &x, 1, 1);
        for (o, v) in out.iter().zip(&x) {
            assert!(
                close(*o, f(f64::from(*v)) as f32, 2e-6),
                "{}: {o} vs {v}",
                layer.name()
            );
        }
    }
    let s = spec(
        &[6],
        vec![Layer::Dropout { rate: 0.5 }, Layer::Dense { units: 2 }],
        2,
    );
    assert_eq!(
        activation(&s, &random(s.param_count(), 8, 1.0), &x, 1, 1),
        x
    );
}

#[test]
fn norms_and_embedding_match_a_loop() {
    // Layer norm over each step of a sequence, with its scale and shift.
    let (t, d) = (2, 5);
    let s = spec(
        &[t, d],
        vec![Layer::LayerNorm, Layer::Flatten, Layer::Dense { units: 2 }],
        2,
    );
    let mut params = random(s.param_count(), 9, 1.0);
    let x = random(t * d, 10, 3.0);
    let out = activation(&s, &params, &x, 1, 1);
    for step in 0..t {
        let row = &x[step * d..(step + 1) * d];
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / d as f32;
        for i in 0..d {
            let want = (row[i] - mean) / (var + 1e-5).sqrt() * params[i] + params[d + i];
            assert!(close(out[step * d + i], want, 1e-5));
        }
    }
    // Group norm: 4 channels in 2 groups over 3×3 pixels.
    let (c, g, hw) = (4, 2, 9);
    let s = spec(
        &[c, 3, 3],
        vec![
            Layer::GroupNorm { groups: g },
            Layer::Flatten,
            Layer::Dense { units: 2 },
        ],
        2,
    );
    params = random(s.param_count(), 11, 1.0);
    let x = random(c * hw, 12, 2.0);
    let out = activation(&s, &params, &x, 1, 1);
    let per = c / g * hw;
    for grp in 0..g {
        let vals = &x[grp * per..(grp + 1) * per];
        let mean = vals.iter().sum::<f32>() / per as f32;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / per as f32;
        for (i, v) in vals.iter().enumerate() {
            let ch = grp * (c / g) + i / hw;
            let want = (v - mean) / (var + 1e-5).sqrt() * params[ch] + params[c + ch];
            assert!(close(out[grp * per + i], want, 1e-5));
        }
    }
    // Embedding: rows of the table.
    let s = spec(
        &[3],
        vec![
            Layer::Embedding { vocab: 4, dim: 2 },
            Layer::Flatten,
            Layer::Dense { units: 2 },
        ],
        2,
    );
    params = random(s.param_count(), 13, 1.0);
    let out = activation(&s, &params, &[3.0, 0.0, 3.0], 1, 1);
    assert_eq!(out, [&params[6..8], &params[0..2], &params[6..8]].concat());
}

fn models() -> Vec<(&'static str, ModelSpec)> {
    vec![
        (
            "cnn: conv2d, group norm, tanh, max and avg pool",
            spec(
                &[2, 6, 6],
                vec![
                    conv(4, 3, 1, 1),
                    Layer::GroupNorm { groups: 2 },
                    Layer::Tanh,
                    Layer::MaxPool2d {
                        size: 2,
                        stride: None,
                    },
                    conv(3, 2, 2, 1),
                    Layer::Gelu,
                    Layer::AvgPool2d {
                        size: 2,
                        stride: None,
                    },
                    Layer::Flatten,
                    Layer::Dense { units: 3 },
                ],
                3,
            ),
        ),
        (
            "text: embedding, layer norm, dense per step, flatten",
            spec(
                &[5],
                vec![
                    Layer::Embedding { vocab: 6, dim: 3 },
                    Layer::LayerNorm,
                    Layer::Dense { units: 4 },
                    Layer::Sigmoid,
                    Layer::Flatten,
                    Layer::Dense { units: 3 },
                ],
                3,
            ),
        ),
        (
            "vector: dense, layer norm, gelu, dense",
            spec(
                &[7],
                vec![
                    Layer::Dense { units: 5 },
                    Layer::LayerNorm,
                    Layer::Gelu,
                    Layer::Dense { units: 3 },
                ],
                3,
            ),
        ),
    ]
}

fn model_data(s: &ModelSpec, rows: usize, seed: u64) -> Dataset {
    let width = s.input_dim;
    let features = match s.layers.first() {
        Some(Layer::Embedding { vocab, .. }) => {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            // Repeated ids in a record exercise the ghost norm's cross terms.
            (0..rows * width)
                .map(|_| rng.gen_range(0..*vocab) as f32)
                .collect()
        }
        _ => random(rows * width, seed, 1.5),
    };
    let labels = (0..rows).map(|i| (i % s.classes) as u32).collect();
    dataset(features, labels, width)
}

#[test]
fn gradients_match_central_differences() {
    for (name, s) in models() {
        let data = model_data(&s, 4, 21);
        let params = s.initial_vector(5);
        let rows: Vec<usize> = (0..data.len()).collect();
        let analytic = clipped_sum(&s, &params, &data, &rows, None, None)
            .expect("sum")
            .sum;
        let reference = full_gradient(&s, &params, &data, &rows);
        for (j, (a, b)) in analytic.iter().zip(&reference).enumerate() {
            assert!(
                close(*a, *b, 1e-4),
                "{name}: coordinate {j}: per-record sum {a}, autodiff {b}"
            );
        }
        // Every 7th coordinate (all of them would be slow), in f64 loss.
        let h = 1e-2f32;
        for i in (0..params.len()).step_by(7) {
            let mut up = params.clone();
            up[i] += h;
            let mut down = params.clone();
            down[i] -= h;
            let fd = (summed_loss(&s, &up, &data) - summed_loss(&s, &down, &data))
                / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(analytic[i])).abs() <= 2e-2 * (1.0 + fd.abs()),
                "{name}: coordinate {i}: finite difference {fd}, autodiff {}",
                analytic[i]
            );
        }
    }
}

#[test]
fn per_record_norms_and_clipped_sums_match_brute_force() {
    for (name, s) in models() {
        let data = model_data(&s, 6, 31);
        let params = s.initial_vector(9);
        let rows: Vec<usize> = (0..data.len()).collect();
        let per: Vec<Vec<f32>> = rows
            .iter()
            .map(|&i| full_gradient(&s, &params, &data, &[i]))
            .collect();
        let norms: Vec<f64> = per
            .iter()
            .map(|g| g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
            .collect();
        // A clip norm between the smallest and the largest, so some are clipped and some not.
        let mut sorted = norms.clone();
        sorted.sort_by(f64::total_cmp);
        let c = (sorted[1] + sorted[4]) / 2.0;
        let got = clipped_sum(&s, &params, &data, &rows, Some(c), None).expect("sum");
        for (g, w) in got.norms.iter().zip(&norms) {
            assert!(
                close(*g, *w as f32, 1e-4),
                "{name}: norm {g} vs brute force {w}"
            );
        }
        for j in 0..params.len() {
            let want: f64 = per
                .iter()
                .zip(&norms)
                .map(|(g, n)| f64::from(g[j]) * (c / (n + 1e-6)).min(1.0))
                .sum();
            assert!(
                close(got.sum[j], want as f32, 1e-4),
                "{name}: coordinate {j}: {} vs {want}",
                got.sum[j]
            );
        }
    }
}

#[test]
fn one_full_batch_step_moves_by_the_mean_gradient() {
    for (name, s) in models() {
        let data = model_data(&s, 4, 41);
        let params = s.initial_vector(3);
        let rows: Vec<usize> = (0..data.len()).collect();
        let g = full_gradient(&s, &params, &data, &rows);
        let config = TrainConfig {
            epochs: 1,
            batch_size: 4,
            learning_rate: 0.1,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 1,
        };
        let out = crate::train::train(&s, &params, &data, &config).expect("train");
        assert_eq!(out.steps, 1);
        for ((p, q), g) in params.iter().zip(&out.params).zip(&g) {
            assert!(close(*q, p - 0.1 * g / 4.0, 1e-5), "{name}");
        }
    }
}

#[test]
fn save_and_load_round_trip_with_named_shapes() {
    for (name, s) in models() {
        let params = s.initial_vector(17);
        let bytes = to_safetensors(&s, &params).expect("export");
        let back = from_safetensors(&s, &bytes).expect("import");
        assert!(
            params
                .iter()
                .zip(&back)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
        let mut other = s.clone();
        other.classes = 2;
        if let Some(Layer::Dense { units }) = other.layers.last_mut() {
            *units = 2;
        }
        assert!(from_safetensors(&other, &bytes).is_err(), "{name}");
    }
    let names = Plan::new(&models()[0].1).expect("valid").tensor_names();
    assert_eq!(names[0], ("layers.0.weight".to_string(), vec![4, 2, 3, 3]));
    assert_eq!(names[2], ("layers.1.weight".to_string(), vec![4]));
    assert_eq!(names.last().expect("last").0, "layers.8.bias");
}

#[test]
fn presets_are_the_same_model_as_their_layer_lists() {
    let mlp = ModelSpec::preset(ModelKind::Mlp, 6, vec![5, 4], 3);
    let list = ModelSpec::layer_list(6, Vec::new(), mlp.as_layer_list(), 3);
    assert_eq!(mlp.param_count(), list.param_count());
    let params = mlp.initial_vector(2);
    let data = model_data(&list, 8, 3);
    let a = crate::model::predict_proba(&mlp, &params, &data.features).expect("preset");
    let b = crate::model::predict_proba(&list, &params, &data.features).expect("list");
    assert!(a.iter().zip(&b).all(|(x, y)| close(*x, *y, 1e-6)));
    let rows: Vec<usize> = (0..8).collect();
    let a =
        crate::dpsgd::clipped_gradient_sum(&mlp, &params, &data, &rows, Some(0.5)).expect("preset");
    let b =
        crate::dpsgd::clipped_gradient_sum(&list, &params, &data, &rows, Some(0.5)).expect("list");
    assert!(a.sum.iter().zip(&b.sum).all(|(x, y)| close(*x, *y, 1e-5)));
}

#[test]
fn token_ids_out_of_range_are_refused_without_showing_the_value() {
    let s = spec(
        &[2],
        vec![
            Layer::Embedding { vocab: 4, dim: 2 },
            Layer::Flatten,
            Layer::Dense { units: 2 },
        ],
        2,
    );
    let params = s.initial_vector(1);
    for bad in [4.0f32, 1.5, -1.0, f32::NAN] {
        let err = crate::model::predict_proba(&s, &params, &[0.0, bad]).expect_err("refused");
        assert!(err.to_string().contains("0..4"), "{err}");
        assert!(!err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn dropout_zeroes_about_its_rate_while_training() {
    let s = spec(
        &[400],
        vec![Layer::Dropout { rate: 0.25 }, Layer::Dense { units: 2 }],
        2,
    );
    let plan = Plan::new(&s).expect("valid");
    let device = Device::flex();
    let x = plan.input(vec![1.0; 400], 1, &device).expect("input");
    let mut ctx = Ctx::new(Some(ChaCha20Rng::seed_from_u64(4)), false);
    let out = match plan.layer(&plan.steps[0], &[], x, &mut ctx) {
        Act::V(v) => to_vec(v),
        _ => unreachable!(),
    };
    let zeros = out.iter().filter(|v| **v == 0.0).count();
    assert!(
        (70..=130).contains(&zeros),
        "{zeros} of 400 zeroed at rate 0.25"
    );
    assert!(out.iter().all(|v| *v == 0.0 || close(*v, 1.0 / 0.75, 1e-6)));
}

/// Images of a bright vertical or horizontal bar at a random place: a small CNN separates
/// them, with plain SGD and with DP-SGD.
#[test]
fn a_small_cnn_learns_bars_with_sgd_and_with_dp_sgd() {
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let (n, side) = (240, 8);
    let mut features = Vec::with_capacity(n * side * side);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u32;
        let at = rng.gen_range(1..side - 1);
        for y in 0..side {
            for x in 0..side {
                let on = if label == 0 { x == at } else { y == at };
                features.push(if on { 1.0 } else { 0.0 } + rng.gen_range(-0.2..0.2));
            }
        }
        labels.push(label);
    }
    let data = dataset(features, labels, side * side);
    let s = spec(
        &[1, side, side],
        vec![
            conv(4, 3, 1, 1),
            Layer::GroupNorm { groups: 1 },
            Layer::Relu,
            Layer::MaxPool2d {
                size: 2,
                stride: None,
            },
            Layer::Flatten,
            Layer::Dropout { rate: 0.1 },
            Layer::Dense { units: 2 },
        ],
        2,
    );
    let init = s.initial_vector(1);
    let before = crate::train::evaluate(&s, &init, &data).expect("eval");
    let config = TrainConfig {
        epochs: 8,
        batch_size: 16,
        learning_rate: 0.1,
        l2: 1e-4,
        proximal_mu: 0.0,
        seed: 3,
    };
    let out = crate::train::train(&s, &init, &data, &config).expect("train");
    let after = crate::train::evaluate(&s, &out.params, &data).expect("eval");
    assert!(after.accuracy >= 0.95, "SGD: {before:?} → {after:?}");
    let dp = crate::dpsgd::DpSgdConfig {
        steps: 120,
        sampling_rate: 0.1,
        noise_multiplier: 0.8,
        clip_norm: 1.0,
        learning_rate: 0.5,
        momentum: 0.5,
        l2: 0.0,
        proximal_mu: 0.0,
    };
    let mut sampler = ChaCha20Rng::seed_from_u64(5);
    let mut noise = crate::dpsgd::CsprngNoise::from_seed(6);
    let out = crate::dpsgd::train_dp(
        &s,
        &init,
        &data,
        &dp,
        &mut sampler,
        &mut noise,
        &mut |_, _| {},
    )
    .expect("dp");
    let after = crate::train::evaluate(&s, &out.params, &data).expect("eval");
    assert!(after.accuracy >= 0.9, "DP-SGD: {before:?} → {after:?}");
}

fn gru_text() -> ModelSpec {
    spec(
        &[4],
        vec![
            Layer::Embedding { vocab: 5, dim: 3 },
            Layer::Gru {
                units: 4,
                sequences: true,
            },
            Layer::Gru {
                units: 3,
                sequences: false,
            },
            Layer::Dense { units: 2 },
        ],
        2,
    )
}

#[test]
fn gru_matches_its_equations_in_a_loop() {
    let (t, d, u) = (3, 2, 3);
    let s = spec(
        &[t, d],
        vec![
            Layer::Gru {
                units: u,
                sequences: true,
            },
            Layer::Flatten,
            Layer::Dense { units: 2 },
        ],
        2,
    );
    let params = random(s.param_count(), 51, 0.8);
    let x = random(t * d, 52, 1.5);
    let out = activation(&s, &params, &x, 1, 1);
    let (w_ih, rest) = params.split_at(d * 3 * u);
    let (w_hh, rest) = rest.split_at(u * 3 * u);
    let (b_ih, rest) = rest.split_at(3 * u);
    let b_hh = &rest[..3 * u];
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    let mut h = vec![0.0f32; u];
    for step in 0..t {
        let xs = &x[step * d..(step + 1) * d];
        let gi: Vec<f32> = (0..3 * u)
            .map(|j| b_ih[j] + (0..d).map(|i| xs[i] * w_ih[i * 3 * u + j]).sum::<f32>())
            .collect();
        let gh: Vec<f32> = (0..3 * u)
            .map(|j| b_hh[j] + (0..u).map(|i| h[i] * w_hh[i * 3 * u + j]).sum::<f32>())
            .collect();
        let next: Vec<f32> = (0..u)
            .map(|k| {
                let r = sig(gi[k] + gh[k]);
                let z = sig(gi[u + k] + gh[u + k]);
                let n = (gi[2 * u + k] + r * gh[2 * u + k]).tanh();
                (1.0 - z) * n + z * h[k]
            })
            .collect();
        h = next;
        for k in 0..u {
            assert!(close(out[step * u + k], h[k], 1e-5), "step {step} unit {k}");
        }
    }
}

#[test]
fn gru_gradients_match_central_differences_and_record_level_dp_is_refused() {
    let s = gru_text();
    let data = model_data(&s, 4, 61);
    let params = s.initial_vector(7);
    let rows: Vec<usize> = (0..data.len()).collect();
    let analytic = full_gradient(&s, &params, &data, &rows);
    let h = 1e-2f32;
    for i in (0..params.len()).step_by(3) {
        let mut up = params.clone();
        up[i] += h;
        let mut down = params.clone();
        down[i] -= h;
        let fd =
            (summed_loss(&s, &up, &data) - summed_loss(&s, &down, &data)) / (2.0 * f64::from(h));
        assert!(
            (fd - f64::from(analytic[i])).abs() <= 2e-2 * (1.0 + fd.abs()),
            "coordinate {i}: finite difference {fd}, autodiff {}",
            analytic[i]
        );
    }
    let err = clipped_sum(&s, &params, &data, &rows, Some(1.0), None).expect_err("refused");
    assert!(err.to_string().contains("client-level DP"), "{err}");
    let names: Vec<String> = Plan::new(&s)
        .expect("valid")
        .tensor_names()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        &names[1..5],
        [
            "layers.1.weight_ih",
            "layers.1.weight_hh",
            "layers.1.bias_ih",
            "layers.1.bias_hh"
        ]
    );
    let bytes = to_safetensors(&s, &params).expect("export");
    assert_eq!(from_safetensors(&s, &bytes).expect("import"), params);
}

/// The label is the first token, followed by noise tokens: only a recurrent state carries it
/// to the end, and the GRU learns to.
#[test]
fn a_gru_learns_to_remember_the_first_token() {
    let mut rng = ChaCha20Rng::seed_from_u64(81);
    let (n, t) = (200, 4);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..n {
        let first = rng.gen_range(0..2u32);
        features.push(first as f32);
        for _ in 1..t {
            features.push(rng.gen_range(2..5) as f32);
        }
        labels.push(first);
    }
    let data = dataset(features, labels, t);
    let s = gru_text();
    let init = s.initial_vector(2);
    let config = TrainConfig {
        epochs: 30,
        batch_size: 20,
        learning_rate: 0.5,
        l2: 0.0,
        proximal_mu: 0.0,
        seed: 4,
    };
    let out = crate::train::train(&s, &init, &data, &config).expect("train");
    let after = crate::train::evaluate(&s, &out.params, &data).expect("eval");
    assert!(after.accuracy >= 0.95, "{after:?}");
}
