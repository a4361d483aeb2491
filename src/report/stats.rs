//! Across-seed statistics (METHOD §5): mean, 95 % confidence interval (Student t) and Welch's t-test.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, schemars::JsonSchema)]
pub struct Estimate {
    pub mean: f64,
    /// Half-width of the 95 % interval; absent with a single seed.
    pub ci95: Option<f64>,
    pub n: usize,
}

fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var)
}

pub fn estimate(xs: &[f64]) -> Estimate {
    let (mean, var) = mean_var(xs);
    let ci95 = (xs.len() > 1).then(|| {
        let t = StudentsT::new(0.0, 1.0, (xs.len() - 1) as f64).map_or(f64::NAN, |d| d.inverse_cdf(0.975));
        t * (var / xs.len() as f64).sqrt()
    });
    Estimate { mean, ci95, n: xs.len() }
}

/// Two-sided p-value of Welch's t-test for different means; `None` below two samples a side or when
/// both samples have no spread.
pub fn welch_p(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let ((ma, va), (mb, vb)) = (mean_var(a), mean_var(b));
    welch(ma - mb, va / a.len() as f64, a.len(), vb / b.len() as f64, b.len()).map(|w| w.p)
}

/// Welch's test of a difference of means from the squared standard errors `sa`, `sb` of each side.
struct Welch {
    /// Welch–Satterthwaite degrees of freedom.
    df: f64,
    p: f64,
}

fn welch(difference: f64, sa: f64, na: usize, sb: f64, nb: usize) -> Option<Welch> {
    if na < 2 || nb < 2 || sa + sb == 0.0 || !(sa + sb).is_finite() {
        return None;
    }
    let t = difference / (sa + sb).sqrt();
    let df = (sa + sb).powi(2) / (sa * sa / (na - 1) as f64 + sb * sb / (nb - 1) as f64);
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    Some(Welch { df, p: 2.0 * (1.0 - dist.cdf(t.abs())) })
}

/// `b − a` of two estimates, with its 95 % interval and Welch's two-sided p where both have two
/// seeds or more.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, schemars::JsonSchema)]
pub struct Contrast {
    pub difference: f64,
    /// Half-width of the 95 % interval of the difference (Welch–Satterthwaite degrees of freedom).
    pub ci95: Option<f64>,
    pub welch_p: Option<f64>,
}

/// [`Contrast`] of two estimates from their means and intervals alone (a report keeps no more): each
/// side's squared standard error is `(ci95 / t₀.₉₇₅(n − 1))²`.
pub fn contrast(a: &Estimate, b: &Estimate) -> Contrast {
    let squared_error = |e: &Estimate| {
        let t = StudentsT::new(0.0, 1.0, e.n.saturating_sub(1) as f64).ok()?.inverse_cdf(0.975);
        e.ci95.map(|half| (half / t).powi(2))
    };
    let difference = b.mean - a.mean;
    let tested = match (squared_error(a), squared_error(b)) {
        (Some(sa), Some(sb)) => welch(difference, sa, a.n, sb, b.n).map(|w| (w, sa + sb)),
        _ => None,
    };
    let ci95 =
        tested.as_ref().and_then(|(w, s)| StudentsT::new(0.0, 1.0, w.df).ok().map(|d| d.inverse_cdf(0.975) * s.sqrt()));
    Contrast { difference, ci95, welch_p: tested.map(|(w, _)| w.p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_and_welch_match_reference_values() {
        // mean 2, sample sd 1, n 3: t(0.975, 2) = 4.302653 → half-width 4.302653/√3
        let e = estimate(&[1.0, 2.0, 3.0]);
        assert!((e.mean - 2.0).abs() < 1e-12);
        assert!((e.ci95.unwrap() - 4.302652729911275 / 3f64.sqrt()).abs() < 1e-9);
        // t = −2.611165 with 6.980769 degrees of freedom; the two-sided p-value 0.0349388 was obtained
        // by integrating the t density numerically (Simpson, 2·10⁶ intervals)
        let p = welch_p(&[1.0, 2.0, 3.0, 4.0], &[3.0, 4.0, 5.0, 6.0, 7.0]).unwrap();
        assert!((p - 0.034938782).abs() < 1e-6, "{p}");
        assert_eq!(welch_p(&[1.0], &[2.0, 3.0]), None);
        // from the estimates alone, the same test
        let (a, b) = (estimate(&[1.0, 2.0, 3.0, 4.0]), estimate(&[3.0, 4.0, 5.0, 6.0, 7.0]));
        let c = contrast(&a, &b);
        assert!((c.difference - 2.5).abs() < 1e-12, "means 2.5 and 5");
        assert!((c.welch_p.unwrap() - 0.034938782).abs() < 1e-6, "{c:?}");
        assert!(c.ci95.unwrap() > 0.0 && c.ci95.unwrap() < c.difference, "p < 0.05, so 0 lies outside the interval");
        assert_eq!(contrast(&estimate(&[1.0]), &b).welch_p, None);
    }
}
