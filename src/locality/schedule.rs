//! λ per training step (METHOD §4) and per layer.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{Error, Result};

/// How the dial moves during training.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LambdaSchedule {
    Constant {
        lambda: f64,
    },
    /// From `from` at step 0 to `to` at step `steps`, constant after.
    Linear {
        from: f64,
        to: f64,
        steps: usize,
    },
    /// Half a cosine from `from` to `to` over `steps`.
    Cosine {
        from: f64,
        to: f64,
        steps: usize,
    },
    /// `values[k]` from step `starts[k]` on; `starts` ascending, the first 0.
    Steps {
        starts: Vec<usize>,
        values: Vec<f64>,
    },
    /// A fresh uniform draw in `[low, high]` for every batch: dial training, so one model serves every λ.
    Uniform {
        low: f64,
        high: f64,
    },
}

impl Default for LambdaSchedule {
    fn default() -> Self {
        LambdaSchedule::Constant { lambda: 0.0 }
    }
}

fn in_unit(field: &str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("λ = {value} is outside [0, 1]")))
    }
}

impl LambdaSchedule {
    pub fn validate(&self) -> Result<()> {
        match self {
            LambdaSchedule::Constant { lambda } => in_unit("locality.schedule.constant.lambda", *lambda),
            LambdaSchedule::Linear { from, to, .. } | LambdaSchedule::Cosine { from, to, .. } => {
                in_unit("locality.schedule.from", *from)?;
                in_unit("locality.schedule.to", *to)
            }
            LambdaSchedule::Steps { starts, values } => {
                if starts.is_empty() || starts.len() != values.len() || starts[0] != 0 {
                    return Err(Error::invalid(
                        "locality.schedule.steps",
                        "needs as many values as starts, and the first start at step 0",
                    ));
                }
                if starts.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::invalid("locality.schedule.steps.starts", "must increase"));
                }
                values.iter().try_for_each(|&v| in_unit("locality.schedule.steps.values", v))
            }
            LambdaSchedule::Uniform { low, high } => {
                in_unit("locality.schedule.uniform.low", *low)?;
                in_unit("locality.schedule.uniform.high", *high)?;
                if low > high {
                    return Err(Error::invalid("locality.schedule.uniform", "low exceeds high"));
                }
                Ok(())
            }
        }
    }

    /// λ at `step`; uniform draws come from a stream of `(seed, step)` so a resumed run repeats them.
    pub fn at(&self, step: usize, seed: u64) -> f64 {
        match self {
            LambdaSchedule::Constant { lambda } => *lambda,
            LambdaSchedule::Linear { from, to, steps } => {
                let t = (step as f64 / (*steps).max(1) as f64).min(1.0);
                from + (to - from) * t
            }
            LambdaSchedule::Cosine { from, to, steps } => {
                let t = (step as f64 / (*steps).max(1) as f64).min(1.0);
                from + (to - from) * 0.5 * (1.0 - (std::f64::consts::PI * t).cos())
            }
            LambdaSchedule::Steps { starts, values } => {
                let k = starts.iter().rposition(|&s| s <= step).unwrap_or(0);
                values[k]
            }
            LambdaSchedule::Uniform { low, high } => {
                let mut rng = Rng::derive(seed, 0x1A4B, step as u64);
                low + (high - low) * rng.next_f64()
            }
        }
    }
}

/// Per-layer dial `λ_l = λ·(l/(L−1))^β` (progressive localisation: early layers stay distributed,
/// the last is fully localist), or the same λ everywhere when `beta` is `None`. One layer gets λ.
pub fn per_layer(lambda: f64, layers: usize, beta: Option<f64>) -> Vec<f64> {
    match beta {
        None => vec![lambda; layers],
        Some(_) if layers <= 1 => vec![lambda; layers],
        Some(beta) => (0..layers).map(|l| lambda * (l as f64 / (layers - 1) as f64).powf(beta)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_hit_their_end_points() {
        let linear = LambdaSchedule::Linear { from: 0.0, to: 1.0, steps: 100 };
        assert_eq!((linear.at(0, 1), linear.at(50, 1), linear.at(100, 1), linear.at(500, 1)), (0.0, 0.5, 1.0, 1.0));
        let cosine = LambdaSchedule::Cosine { from: 1.0, to: 0.0, steps: 10 };
        assert!((cosine.at(0, 1) - 1.0).abs() < 1e-12 && cosine.at(10, 1).abs() < 1e-12);
        assert!((cosine.at(5, 1) - 0.5).abs() < 1e-12);
        let steps = LambdaSchedule::Steps { starts: vec![0, 10, 20], values: vec![0.0, 0.5, 1.0] };
        assert_eq!((steps.at(9, 1), steps.at(10, 1), steps.at(99, 1)), (0.0, 0.5, 1.0));
    }

    #[test]
    fn uniform_draws_cover_the_interval_and_repeat_per_step() {
        let uniform = LambdaSchedule::Uniform { low: 0.2, high: 0.6 };
        let draws: Vec<f64> = (0..2000).map(|s| uniform.at(s, 9)).collect();
        assert!(draws.iter().all(|&l| (0.2..=0.6).contains(&l)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.4).abs() < 0.01, "{mean}");
        assert_eq!(uniform.at(17, 9), uniform.at(17, 9));
    }

    #[test]
    fn progressive_layers_rise_to_the_full_dial() {
        assert_eq!(per_layer(0.8, 3, Some(1.0)), vec![0.0, 0.4, 0.8]);
        assert_eq!(per_layer(0.8, 3, None), vec![0.8; 3]);
        assert_eq!(per_layer(0.8, 1, Some(2.0)), vec![0.8]);
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_field() {
        let err = LambdaSchedule::Constant { lambda: 1.5 }.validate().unwrap_err().to_string();
        assert!(err.contains("locality.schedule.constant.lambda") && err.contains("outside [0, 1]"), "{err}");
        assert!(LambdaSchedule::Steps { starts: vec![1], values: vec![0.1] }.validate().is_err());
    }
}
