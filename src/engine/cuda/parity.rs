//! Kernel parity: every kernel of [`super::kernels::KERNELS`] as a [`Launch`], and products of every transpose and stride
//! kind, run on two devices from the same random inputs, each output compared. `ailla cuda-check` runs
//! it with the GPU against the host device; here it also runs host against host, which checks the
//! harness itself (inputs, shapes, that every output is compared).

use super::gemm::{RowMajorProduct, RowStrides};
use super::ops::{Bytes, Device, DeviceResult, Floats, Gemm, Ids, Launch};
use crate::rng::Rng;

/// The largest difference between two devices' outputs, relative to the reference output's largest
/// magnitude (so that an output of small numbers is judged at its own scale).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputError {
    pub kernel: &'static str,
    pub output: &'static str,
    pub relative_error: f64,
}

/// The shapes the launches are checked at: odd sizes, so that no loop bound coincides with a block or
/// warp size.
const BATCH: usize = 3;
const SEQ_LEN: usize = 7;
const ROWS: usize = BATCH * SEQ_LEN;
const WIDTH: usize = 40;
const HEADS: usize = 5;
const VOCAB: usize = 1_237;

/// How an input is drawn.
#[derive(Clone, Copy)]
enum Draw {
    /// Standard normal.
    Normal,
    /// Uniform in [0.1, 1): standard deviations' inverses, gate weights, second moments.
    Positive,
}

/// Blocks of the penalty's keys (the general block 0 included).
const BLOCKS: usize = 4;
/// Copy rules of the gates' cases.
const RULES: usize = 3;

/// One launch to compare: its float inputs (outputs included, drawn too, since some accumulate), its
/// id inputs (length and bound), its 0/1 masks (length and share of ones), and which floats are
/// outputs.
struct Case {
    floats: Vec<(&'static str, usize, Draw)>,
    ids: Vec<(usize, usize)>,
    masks: Vec<(usize, f64)>,
    outputs: Vec<usize>,
    build: fn(&[Floats], &[Ids], &[Bytes]) -> Launch,
}

fn cases() -> Vec<Case> {
    use Draw::{Normal as N, Positive as P};
    let (n, d, t) = (ROWS, WIDTH, SEQ_LEN);
    let scores = BATCH * HEADS * t * t;
    vec![
        Case {
            floats: vec![("x", n * d, N), ("wte", VOCAB * d, N), ("wpe", t * d, N)],
            ids: vec![(n, VOCAB)],
            masks: vec![],
            outputs: vec![0],
            build: |f, i, _| Launch::EmbeddingForward {
                x: f[0],
                tokens: i[0],
                wte: f[1],
                wpe: f[2],
                rows: ROWS,
                seq_len: SEQ_LEN,
                width: WIDTH,
            },
        },
        Case {
            floats: vec![("dwpe", t * d, N), ("dx", n * d, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::EmbeddingBackwardPositions {
                dwpe: f[0],
                dx: f[1],
                batch: BATCH,
                seq_len: SEQ_LEN,
                width: WIDTH,
            },
        },
        Case {
            floats: vec![("dwte", VOCAB * d, N), ("dx", n * d, N)],
            ids: vec![(n, VOCAB)],
            masks: vec![],
            outputs: vec![0],
            build: |f, i, _| Launch::EmbeddingBackwardTokens {
                dwte: f[0],
                dx: f[1],
                tokens: i[0],
                rows: ROWS,
                width: WIDTH,
            },
        },
        Case {
            floats: vec![("out", n * d, N), ("a", n * d, N), ("b", n * d, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::ResidualAdd { out: f[0], a: f[1], b: f[2] },
        },
        Case {
            floats: vec![("out", n * 3 * d, N), ("base", n * d, N), ("bias", d, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::BroadcastRows {
                out: f[0],
                base: Some(f[1]),
                bias: f[2],
                rows: ROWS,
                width: WIDTH,
                row_stride: 3 * WIDTH,
            },
        },
        Case {
            floats: vec![("out", n * 3 * d, N), ("bias", d, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::BroadcastRows {
                out: f[0].from(WIDTH),
                base: None,
                bias: f[1],
                rows: ROWS,
                width: WIDTH,
                row_stride: 3 * WIDTH,
            },
        },
        Case {
            floats: vec![
                ("y", n * d, N),
                ("normalized", n * d, N),
                ("rstd", n, N),
                ("x", n * d, N),
                ("weight", d, N),
                ("bias", d, N),
            ],
            ids: vec![],
            masks: vec![],
            outputs: vec![0, 1, 2],
            build: |f, _, _| Launch::LayerNormForward {
                y: f[0],
                normalized: f[1],
                rstd: f[2],
                x: f[3],
                weight: f[4],
                bias: f[5],
                rows: ROWS,
                width: WIDTH,
                eps: 1e-5,
            },
        },
        Case {
            floats: vec![
                ("dx", n * d, N),
                ("dy", n * d, N),
                ("normalized", n * d, N),
                ("rstd", n, P),
                ("weight", d, N),
            ],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::LayerNormBackward {
                dx: f[0],
                dy: f[1],
                normalized: f[2],
                rstd: f[3],
                weight: f[4],
                rows: ROWS,
                width: WIDTH,
            },
        },
        Case {
            floats: vec![("out", d, N), ("a", n * 3 * d, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::ColumnSum {
                out: f[0],
                a: f[1].from(WIDTH),
                rows: ROWS,
                width: WIDTH,
                row_stride: 3 * WIDTH,
            },
        },
        Case {
            floats: vec![("out", d, N), ("a", n * d, N), ("b", n * d, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::ColumnSumProduct { out: f[0], a: f[1], b: f[2], rows: ROWS, width: WIDTH },
        },
        Case {
            floats: vec![("y", n * d, N), ("x", n * d, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::GeluForward { y: f[0], x: f[1] },
        },
        Case {
            floats: vec![("dx", n * d, N), ("dy", n * d, N), ("x", n * d, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::GeluBackward { dx: f[0], dy: f[1], x: f[2] },
        },
        Case {
            floats: vec![("att", scores, N)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::AttentionSoftmaxForward {
                att: f[0],
                rows: BATCH * HEADS * SEQ_LEN,
                seq_len: SEQ_LEN,
            },
        },
        Case {
            floats: vec![("datt", scores, N), ("att", scores, P)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::AttentionSoftmaxBackward {
                datt: f[0],
                att: f[1],
                rows: BATCH * HEADS * SEQ_LEN,
                seq_len: SEQ_LEN,
            },
        },
        Case {
            floats: vec![
                ("logits", n * VOCAB, N),
                ("loss", n, N),
                ("probability", n, N),
                ("w0", n, P),
                ("copy_mass", n, P),
            ],
            ids: vec![(n, VOCAB)],
            masks: vec![],
            outputs: vec![0, 1, 2],
            build: |f, i, _| Launch::CrossEntropy {
                logits: f[0],
                loss: f[1],
                probability: f[2],
                targets: i[0],
                w0: f[3],
                copy_mass: f[4],
                grad_scale: 1.0 / ROWS as f32,
                rows: ROWS,
                vocab: VOCAB,
            },
        },
        Case {
            floats: vec![("att", scores, N), ("bias", BATCH * HEADS * t, P)],
            ids: vec![],
            masks: vec![(BATCH * HEADS * t, 0.6), (scores, 0.3)],
            outputs: vec![0],
            build: |f, _, m| Launch::AttentionSoftmaxLocal {
                att: f[0],
                covered: m[0],
                targets: m[1],
                bias: f[1],
                inv_tau: 0.8,
                rows: BATCH * HEADS * SEQ_LEN,
                seq_len: SEQ_LEN,
            },
        },
        Case {
            floats: vec![("datt", scores, N), ("att", scores, P)],
            ids: vec![],
            masks: vec![(BATCH * HEADS * t, 0.6)],
            outputs: vec![0],
            build: |f, _, m| Launch::AttentionSoftmaxLocalBackward {
                datt: f[0],
                att: f[1],
                covered: m[0],
                inv_tau: 0.8,
                rows: BATCH * HEADS * SEQ_LEN,
                seq_len: SEQ_LEN,
            },
        },
        Case {
            floats: vec![("datt", scores, N), ("penalty", BATCH * HEADS * t, N), ("att", scores, P)],
            ids: vec![(BATCH * t, BLOCKS)],
            masks: vec![(BATCH * HEADS * t, 0.6), (scores, 0.3)],
            outputs: vec![0, 1],
            build: |f, i, m| Launch::AttentionPenalty {
                datt: Some(f[0]),
                penalty: f[1],
                att: f[2],
                covered: m[0],
                targets: m[1],
                blocks: i[0],
                weight: 0.05,
                heads: HEADS,
                seq_len: SEQ_LEN,
                block_count: BLOCKS,
                rows: BATCH * HEADS * SEQ_LEN,
            },
        },
        Case {
            floats: vec![("w", n * RULES, N), ("w0", n, N), ("z", n * RULES, N), ("strength", RULES, P)],
            ids: vec![],
            masks: vec![(n * RULES, 0.5)],
            outputs: vec![0, 1],
            build: |f, _, m| Launch::CopyGates {
                w: f[0],
                w0: f[1],
                z: f[2],
                active: m[0],
                strength: f[3],
                lambda: 0.7,
                rows: ROWS,
                rules: RULES,
            },
        },
        Case {
            floats: vec![("dz", n * RULES, N), ("w", n * RULES, P), ("kappa_y", n * RULES, P), ("p", n, P)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0],
            build: |f, _, _| Launch::CopyGatesBackward {
                dz: f[0],
                w: f[1],
                kappa_y: f[2],
                p: f[3],
                grad_scale: 1.0 / ROWS as f32,
                rows: ROWS,
                rules: RULES,
            },
        },
        Case {
            floats: vec![("p", n * d, N), ("g", n * d, N), ("m", n * d, N), ("v", n * d, P)],
            ids: vec![],
            masks: vec![],
            outputs: vec![0, 2, 3],
            build: |f, _, _| Launch::AdamW {
                p: f[0],
                g: f[1],
                m: f[2],
                v: f[3],
                clip: 0.7,
                beta1: 0.9,
                beta2: 0.95,
                decay: 0.9997,
                step_size: 3e-3,
                inv_sqrt_bias2: 4.4,
                eps: 1e-8,
            },
        },
    ]
}

fn draw(rng: &mut Rng, len: usize, how: Draw) -> Vec<f32> {
    (0..len)
        .map(|_| match how {
            Draw::Normal => rng.normal() as f32,
            Draw::Positive => 0.1 + 0.9 * rng.next_f64() as f32,
        })
        .collect()
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, &w| m.max(w.abs() as f64)).max(f64::MIN_POSITIVE);
    let worst = got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    if got.len() != want.len() || got.iter().any(|g| !g.is_finite()) {
        return f64::INFINITY;
    }
    worst / scale
}

/// Uploads the same draws to both devices, returning each device's regions.
fn upload_both<A: Device, B: Device>(
    a: &mut A,
    b: &mut B,
    values: &[Vec<f32>],
) -> DeviceResult<(Vec<Floats>, Vec<Floats>)> {
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for data in values {
        let (ra, rb) = (a.alloc(data.len())?, b.alloc(data.len())?);
        a.upload(ra, data)?;
        b.upload(rb, data)?;
        on_a.push(ra);
        on_b.push(rb);
    }
    Ok((on_a, on_b))
}

/// Runs every case on `device` and on `reference` and returns each output's relative error.
pub fn compare_kernels<A: Device, B: Device>(
    device: &mut A,
    reference: &mut B,
    seed: u64,
) -> DeviceResult<Vec<OutputError>> {
    let mut rng = Rng::new(seed);
    let mut errors = Vec::new();
    for case in cases() {
        let values: Vec<Vec<f32>> = case.floats.iter().map(|&(_, len, how)| draw(&mut rng, len, how)).collect();
        let (on_device, on_reference) = upload_both(device, reference, &values)?;
        let (mut ids_device, mut ids_reference) = (Vec::new(), Vec::new());
        for &(len, bound) in &case.ids {
            let ids: Vec<u32> = (0..len).map(|_| rng.below(bound) as u32).collect();
            let (ra, rb) = (device.alloc_ids(len)?, reference.alloc_ids(len)?);
            device.upload_ids(ra, &ids)?;
            reference.upload_ids(rb, &ids)?;
            ids_device.push(ra);
            ids_reference.push(rb);
        }
        let (mut masks_device, mut masks_reference) = (Vec::new(), Vec::new());
        for &(len, ones) in &case.masks {
            let mask: Vec<u8> = (0..len).map(|_| u8::from(rng.next_f64() < ones)).collect();
            let (ra, rb) = (device.alloc_bytes(len)?, reference.alloc_bytes(len)?);
            device.upload_bytes(ra, &mask)?;
            reference.upload_bytes(rb, &mask)?;
            masks_device.push(ra);
            masks_reference.push(rb);
        }
        let launch = (case.build)(&on_device, &ids_device, &masks_device);
        device.launch(&launch)?;
        reference.launch(&(case.build)(&on_reference, &ids_reference, &masks_reference))?;
        for &index in &case.outputs {
            let got = device.download(on_device[index])?;
            let want = reference.download(on_reference[index])?;
            errors.push(OutputError {
                kernel: launch.kernel(),
                output: case.floats[index].0,
                relative_error: relative_error(&got, &want),
            });
        }
    }
    errors.extend(compare_products(device, reference, &mut rng)?);
    let values = vec![draw(&mut rng, 100_003, Draw::Normal)];
    let (on_device, on_reference) = upload_both(device, reference, &values)?;
    let (got, want) = (device.squared_norm(on_device[0])?, reference.squared_norm(on_reference[0])?);
    errors.push(OutputError {
        kernel: "squared_norm_partial",
        output: "sum of squares",
        relative_error: (got - want).abs() / want.abs().max(f64::MIN_POSITIVE),
    });
    Ok(errors)
}

/// Products as the step makes them: plain in all four transpose cases, and per-head strided batches
/// reading column blocks of a `[q | k | v]`-like matrix.
fn compare_products<A: Device, B: Device>(
    device: &mut A,
    reference: &mut B,
    rng: &mut Rng,
) -> DeviceResult<Vec<OutputError>> {
    let mut errors = Vec::new();
    let (m, n, k) = (37, 19, 53);
    for (transpose_a, transpose_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let product = RowMajorProduct { m, n, k, transpose_a, transpose_b };
        let values =
            vec![draw(rng, m * k, Draw::Normal), draw(rng, k * n, Draw::Normal), draw(rng, m * n, Draw::Normal)];
        let (x, y) = upload_both(device, reference, &values)?;
        device.gemm(&Gemm { alpha: 0.5, ..Gemm::plain(product, x[0], x[1], x[2], 1.0) })?;
        reference.gemm(&Gemm { alpha: 0.5, ..Gemm::plain(product, y[0], y[1], y[2], 1.0) })?;
        let output = match (transpose_a, transpose_b) {
            (false, false) => "c = a·b",
            (true, false) => "c = aᵀ·b",
            (false, true) => "c = a·bᵀ",
            (true, true) => "c = aᵀ·bᵀ",
        };
        let got = device.download(x[2])?;
        errors.push(OutputError {
            kernel: "cublas sgemm",
            output,
            relative_error: relative_error(&got, &reference.download(y[2])?),
        });
    }
    // scores of HEADS heads of one sequence: q·kᵀ with q, k column blocks of rows 3·WIDTH apart
    let head = WIDTH / HEADS;
    let product = RowMajorProduct { m: SEQ_LEN, n: SEQ_LEN, k: head, transpose_a: false, transpose_b: true };
    let values = vec![draw(rng, SEQ_LEN * 3 * WIDTH, Draw::Normal), draw(rng, HEADS * SEQ_LEN * SEQ_LEN, Draw::Normal)];
    let (x, y) = upload_both(device, reference, &values)?;
    let batched = |qkv: Floats, scores: Floats| Gemm {
        product,
        strides: RowStrides { a: 3 * WIDTH, b: 3 * WIDTH, c: SEQ_LEN },
        batch: HEADS,
        batch_strides: [head, head, SEQ_LEN * SEQ_LEN],
        alpha: 0.3,
        beta: 0.0,
        a: qkv,
        b: qkv.from(WIDTH),
        c: scores,
    };
    device.gemm(&batched(x[0], x[1]))?;
    reference.gemm(&batched(y[0], y[1]))?;
    let got = device.download(x[1])?;
    errors.push(OutputError {
        kernel: "cublas sgemm strided batched",
        output: "per-head q·kᵀ",
        relative_error: relative_error(&got, &reference.download(y[1])?),
    });
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cuda::host::HostDevice;

    #[test]
    fn the_harness_compares_every_kernel_and_finds_a_device_equal_to_itself() {
        let errors = compare_kernels(&mut HostDevice::new(), &mut HostDevice::new(), 1).unwrap();
        for error in &errors {
            assert_eq!(error.relative_error, 0.0, "{error:?}");
        }
        let kernels: std::collections::BTreeSet<&str> = errors.iter().map(|e| e.kernel).collect();
        // every case's kernel is among those compared (a stand-in region is enough to name it)
        let floats = [Floats { buffer: 0, offset: 0, len: 1 << 20 }; 6];
        let ids = [Ids { buffer: 0, offset: 0, len: 1 << 20 }];
        let masks = [Bytes { buffer: 0, offset: 0, len: 1 << 20 }; 2];
        for case in cases() {
            assert!(kernels.contains((case.build)(&floats, &ids, &masks).kernel()));
        }
        // every kernel of the source, the norm's among them, and two kinds of product
        assert_eq!(kernels.len(), crate::engine::cuda::kernels::KERNELS.len() + 2, "{kernels:?}");
        assert!(kernels.contains("squared_norm_partial") && kernels.contains("cublas sgemm strided batched"));
    }

    #[test]
    fn a_difference_is_measured_at_the_output_s_own_scale() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_error(&[1.0, 2.1], &[1.0, 2.0]) - 0.05).abs() < 1e-6);
        assert!((relative_error(&[1e-3, 2.1e-3], &[1e-3, 2e-3]) - 0.05).abs() < 1e-4);
        assert_eq!(relative_error(&[f32::NAN], &[1.0]), f64::INFINITY);
    }
}
