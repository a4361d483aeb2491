//! Published figures beside this run's (a pipeline's `published` section): which of ours are
//! comparable, and whether the published qualitative claims hold on our runs.
//!
//! A **curve** is a metric as a function of λ for one way of reading the experiment:
//! - *dial training* (protocol a): one group trained with a non-constant λ schedule, evaluated at every λ
//!   of its grid;
//! - *fixed λ* (protocol b): groups identical but for a constant training λ, each read at its own λ.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DialRow, Group};
use crate::locality::LambdaSchedule;
use crate::pipeline::{PublishedClaim, PublishedMetric, PublishedSection};
use crate::train::TrainConfig;

/// One λ of a curve: the group's means over seeds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct CurvePoint {
    pub lambda: f64,
    pub row: DialRow,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Curve {
    /// `word tokens, dial training (protocol a)` and the like.
    pub label: String,
    pub tokenizer: String,
    pub ctx_len: usize,
    /// Tokens scored at every λ (a prefix of the test split, or all of it).
    pub test_tokens: usize,
    pub points: Vec<CurvePoint>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comparability {
    /// Same quantity, same definition, nothing known to differ.
    Comparable,
    /// Same definition, but it depends on something the publication does not state.
    DefinitionOnly,
    /// Cannot be the same quantity (for instance a bound our setting cannot reach).
    NotComparable,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct FigureComparison {
    pub metric: PublishedMetric,
    pub lambda: f64,
    pub published: f64,
    /// Ours on each curve, in the order of `curves` (`None` where the curve has no such λ).
    pub ours: Vec<Option<f64>>,
    pub comparability: Vec<Comparability>,
    /// Why, for each curve.
    pub reasons: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Holds,
    /// The end points agree with the claim but some step between neighbours goes the other way.
    Partly,
    DoesNotHold,
    /// The curve has too few points to say.
    Undecided,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct ClaimCheck {
    pub claim: PublishedClaim,
    /// For each curve, in the order of `curves`.
    pub verdicts: Vec<Verdict>,
    /// The numbers behind each verdict.
    pub evidence: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct PublishedComparison {
    pub source: String,
    pub curves: Vec<Curve>,
    pub figures: Vec<FigureComparison>,
    pub claims: Vec<ClaimCheck>,
}

/// The training λ of a constant schedule; `None` for every schedule that varies λ.
fn fixed_lambda(config: &TrainConfig) -> Option<f64> {
    match config.locality.as_ref()?.schedule {
        LambdaSchedule::Constant { lambda } => Some(lambda),
        _ => None,
    }
}

/// Mean attention entropy, in bits, of uniform causal attention over a window of `ctx_len`: the most
/// any model with that context can show, as the mean of `log2(i + 1)` over positions.
pub fn uniform_entropy_bits(ctx_len: usize) -> f64 {
    (1..=ctx_len.max(1)).map(|n| (n as f64).log2()).sum::<f64>() / ctx_len.max(1) as f64
}

/// Builds the curves of the run's groups, `configs[g]` being a member's configuration of `groups[g]`.
pub fn curves(configs: &[&TrainConfig], groups: &[Group], test_tokens: &[usize]) -> Vec<Curve> {
    let mut curves = Vec::new();
    // groups that differ only in their constant λ form one fixed-λ curve, keyed by the rest
    let mut fixed: BTreeMap<String, (usize, Vec<CurvePoint>)> = BTreeMap::new();
    for (g, (config, group)) in configs.iter().zip(groups).enumerate() {
        if config.locality.is_none() {
            continue;
        }
        let tokenizer = config.tokenizer.name().to_string();
        match fixed_lambda(config) {
            None => curves.push(Curve {
                label: format!("{tokenizer} tokens, dial training (protocol a)"),
                tokenizer,
                ctx_len: config.model.ctx_len,
                test_tokens: test_tokens[g],
                points: group.dial.iter().map(|row| CurvePoint { lambda: row.lambda, row: row.clone() }).collect(),
            }),
            Some(lambda) => {
                // groups that differ in their training λ alone (and in seeds) share a key
                let mut key_config = (*config).clone();
                if let Some(locality) = key_config.locality.as_mut() {
                    locality.schedule = LambdaSchedule::Constant { lambda: 0.0 };
                }
                let key = super::seedless_key(key_config);
                let entry = fixed.entry(key).or_insert_with(|| (g, Vec::new()));
                if let Some(row) = group.dial.iter().find(|r| (r.lambda - lambda).abs() < 1e-9) {
                    entry.1.push(CurvePoint { lambda, row: row.clone() });
                }
            }
        }
    }
    let mut fixed: Vec<(usize, Vec<CurvePoint>)> = fixed.into_values().collect();
    fixed.sort_by_key(|(g, _)| *g);
    for (g, mut points) in fixed {
        points.sort_by(|a, b| a.lambda.total_cmp(&b.lambda));
        let config = configs[g];
        let tokenizer = config.tokenizer.name().to_string();
        curves.push(Curve {
            label: format!("{tokenizer} tokens, one model per fixed λ (protocol b)"),
            tokenizer,
            ctx_len: config.model.ctx_len,
            test_tokens: test_tokens[g],
            points,
        });
    }
    // keep the order of the groups in the run: a tokenizer's two protocols side by side
    curves.sort_by_key(|c| {
        (configs.iter().position(|x| x.tokenizer.name() == c.tokenizer), c.label.contains("(protocol b)"))
    });
    curves
}

fn value(row: &DialRow, metric: PublishedMetric) -> f64 {
    match metric {
        PublishedMetric::EntropyBits => row.entropy_bits.mean,
        PublishedMetric::PointerFidelity => row.pointer_fidelity.mean,
        PublishedMetric::Perplexity => row.perplexity.mean,
        PublishedMetric::Accuracy => row.accuracy.mean,
    }
}

fn point(curve: &Curve, lambda: f64) -> Option<&CurvePoint> {
    curve.points.iter().find(|p| (p.lambda - lambda).abs() < 1e-9)
}

fn comparability(metric: PublishedMetric, published: f64, curve: &Curve) -> (Comparability, String) {
    match metric {
        PublishedMetric::EntropyBits => {
            let ceiling = uniform_entropy_bits(curve.ctx_len);
            if published > ceiling {
                (
                    Comparability::NotComparable,
                    format!(
                        "our context of {} tokens caps the mean entropy at {ceiling:.2} bits (uniform attention)",
                        curve.ctx_len
                    ),
                )
            } else {
                (
                    Comparability::DefinitionOnly,
                    format!(
                        "same definition (METHOD §5); the value scales with the context length, {} here (ceiling {ceiling:.2} bits), unpublished there",
                        curve.ctx_len
                    ),
                )
            }
        }
        PublishedMetric::PointerFidelity => (
            Comparability::DefinitionOnly,
            "same definition, but fidelity is measured against our rules, which the publication does not give".into(),
        ),
        PublishedMetric::Perplexity | PublishedMetric::Accuracy => (
            Comparability::DefinitionOnly,
            format!(
                "per {} token on the first {} test tokens; the published tokenization, model size and budget are not stated",
                curve.tokenizer, curve.test_tokens
            ),
        ),
    }
}

/// `Holds` when every step between neighbouring λ goes the claimed way, `Partly` when only the end
/// points do.
fn monotone(values: &[(f64, f64)], rising: bool) -> Verdict {
    if values.len() < 2 {
        return Verdict::Undecided;
    }
    let better = |a: f64, b: f64| if rising { b > a } else { b < a };
    let (first, last) = (values[0].1, values[values.len() - 1].1);
    if values.windows(2).all(|w| better(w[0].1, w[1].1)) {
        Verdict::Holds
    } else if better(first, last) {
        Verdict::Partly
    } else {
        Verdict::DoesNotHold
    }
}

/// The trade-off score of each λ: pointer fidelity gained minus the relative perplexity paid,
/// `F(λ) − (ppl(λ) − ppl_min)/ppl_min`, both dimensionless: one percent more perplexity costs as much as
/// one point of fidelity. With a flat perplexity the largest fidelity wins, so an intermediate λ is best
/// only when localism has a perplexity price that grows faster than its fidelity.
pub fn tradeoff_scores(curve: &Curve) -> Vec<(f64, f64)> {
    let best = curve.points.iter().map(|p| p.row.perplexity.mean).fold(f64::INFINITY, f64::min);
    curve
        .points
        .iter()
        .map(|p| (p.lambda, p.row.pointer_fidelity.mean - (p.row.perplexity.mean - best) / best))
        .collect()
}

fn check(claim: PublishedClaim, curve: &Curve) -> (Verdict, String) {
    let series = |f: &dyn Fn(&DialRow) -> f64| -> Vec<(f64, f64)> {
        curve.points.iter().map(|p| (p.lambda, f(&p.row))).collect()
    };
    let show = |values: &[(f64, f64)], decimals: usize| -> String {
        values.iter().map(|(l, v)| format!("{l:.1}: {v:.decimals$}")).collect::<Vec<_>>().join(", ")
    };
    match claim {
        PublishedClaim::EntropyFalls => {
            let values = series(&|r| r.entropy_bits.mean);
            (monotone(&values, false), format!("entropy (bits) by λ: {}", show(&values, 3)))
        }
        PublishedClaim::FidelityRises => {
            let values = series(&|r| r.pointer_fidelity.mean);
            (monotone(&values, true), format!("pointer fidelity by λ: {}", show(&values, 4)))
        }
        PublishedClaim::IntermediateTradeoff => {
            let scores = tradeoff_scores(curve);
            if scores.len() < 3 {
                return (Verdict::Undecided, "fewer than three λ values".into());
            }
            let best = scores.iter().copied().fold((f64::NAN, f64::NEG_INFINITY), |b, s| if s.1 > b.1 { s } else { b });
            let (lo, hi) = (scores[0].0, scores[scores.len() - 1].0);
            let verdict = if best.0 > lo && best.0 < hi { Verdict::Holds } else { Verdict::DoesNotHold };
            (verdict, format!("best trade-off at λ = {:.1}; scores by λ: {}", best.0, show(&scores, 3)))
        }
    }
}

pub fn compare(published: &PublishedSection, curves: Vec<Curve>) -> PublishedComparison {
    let figures = published
        .figures
        .iter()
        .map(|figure| {
            let ours = curves.iter().map(|c| point(c, figure.lambda).map(|p| value(&p.row, figure.metric))).collect();
            let (comparability, reasons) = curves.iter().map(|c| comparability(figure.metric, figure.value, c)).unzip();
            FigureComparison {
                metric: figure.metric,
                lambda: figure.lambda,
                published: figure.value,
                ours,
                comparability,
                reasons,
            }
        })
        .collect();
    let claims = published
        .claims
        .iter()
        .map(|&claim| {
            let (verdicts, evidence) = curves.iter().map(|c| check(claim, c)).unzip();
            ClaimCheck { claim, verdicts, evidence }
        })
        .collect();
    PublishedComparison { source: published.source.clone(), curves, figures, claims }
}

pub fn metric_name(metric: PublishedMetric) -> &'static str {
    match metric {
        PublishedMetric::EntropyBits => "attention entropy (bits)",
        PublishedMetric::PointerFidelity => "pointer fidelity",
        PublishedMetric::Perplexity => "test perplexity",
        PublishedMetric::Accuracy => "test accuracy",
    }
}

pub fn claim_text(claim: PublishedClaim) -> &'static str {
    match claim {
        PublishedClaim::EntropyFalls => "attention entropy falls as λ rises",
        PublishedClaim::FidelityRises => "pointer fidelity rises as λ rises",
        PublishedClaim::IntermediateTradeoff => {
            "an intermediate λ gives the best perplexity/interpretability trade-off"
        }
    }
}

pub fn verdict_text(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Holds => "holds",
        Verdict::Partly => "partly (end points only)",
        Verdict::DoesNotHold => "does not hold",
        Verdict::Undecided => "undecided",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_entropy_matches_the_closed_form_for_small_windows() {
        // positions 1..4 hold 1, 2, 3, 4 keys: (0 + 1 + log2 3 + 2) / 4
        let expected = (0.0 + 1.0 + 3f64.log2() + 2.0) / 4.0;
        assert!((uniform_entropy_bits(4) - expected).abs() < 1e-12);
        // the published 7.18 bits needs a context of about 400 positions
        assert!(uniform_entropy_bits(256) < 7.18 && uniform_entropy_bits(512) > 7.18);
    }

    #[test]
    fn monotone_verdicts_distinguish_every_step_from_end_points() {
        let rising = [(0.0, 1.0), (0.5, 2.0), (1.0, 3.0)];
        let bumpy = [(0.0, 1.0), (0.5, 0.5), (1.0, 3.0)];
        assert_eq!(monotone(&rising, true), Verdict::Holds);
        assert_eq!(monotone(&bumpy, true), Verdict::Partly);
        assert_eq!(monotone(&rising, false), Verdict::DoesNotHold);
        assert_eq!(monotone(&rising[..1], true), Verdict::Undecided);
    }

    fn curve(points: &[(f64, f64, f64)]) -> Curve {
        let e = |mean| crate::report::stats::estimate(&[mean]);
        Curve {
            label: "test".into(),
            tokenizer: "word".into(),
            ctx_len: 8,
            test_tokens: 100,
            points: points
                .iter()
                .map(|&(lambda, fidelity, perplexity)| CurvePoint {
                    lambda,
                    row: DialRow {
                        lambda,
                        entropy_bits: e(1.0),
                        covered_entropy_bits: e(1.0),
                        pointer_fidelity: e(fidelity),
                        pointer_hit_rate: e(fidelity),
                        block_concentration: e(0.5),
                        perplexity: e(perplexity),
                        bits_per_token: e(perplexity.log2()),
                        accuracy: e(0.1),
                        participation_ratio: e(3.0),
                        entropy_p_vs_zero: None,
                        fidelity_p_vs_zero: None,
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn the_tradeoff_claim_needs_a_perplexity_price_that_outgrows_fidelity() {
        // fidelity saturates by λ = 0.5 while perplexity keeps climbing: the middle wins
        let priced = curve(&[(0.0, 0.1, 100.0), (0.5, 0.9, 102.0), (1.0, 0.95, 150.0)]);
        assert_eq!(check(PublishedClaim::IntermediateTradeoff, &priced).0, Verdict::Holds);
        // localism for free: the most localist setting wins
        let free = curve(&[(0.0, 0.1, 100.0), (0.5, 0.5, 100.0), (1.0, 0.95, 100.0)]);
        assert_eq!(check(PublishedClaim::IntermediateTradeoff, &free).0, Verdict::DoesNotHold);
        let two = curve(&[(0.0, 0.1, 100.0), (1.0, 0.95, 100.0)]);
        assert_eq!(check(PublishedClaim::IntermediateTradeoff, &two).0, Verdict::Undecided);
    }
}
