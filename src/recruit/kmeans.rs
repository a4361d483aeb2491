//! Spherical k-means (cosine similarity) with k-means++ seeding: clusters of token embeddings that the
//! model already treats alike are the block candidates of METHOD §7.

use ndarray::{Array2, ArrayView2, Axis};

use crate::rng::Rng;

/// Rows of `points` scaled to unit length (a zero row stays zero).
pub fn normalized(points: ArrayView2<f32>) -> Array2<f64> {
    let mut out = points.mapv(f64::from);
    for mut row in out.rows_mut() {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row /= norm;
        }
    }
    out
}

/// Cluster index of every row of `unit` (unit-length rows), `k` clusters, deterministic in `seed`.
pub fn cluster(unit: &Array2<f64>, k: usize, iterations: usize, seed: u64) -> Vec<usize> {
    let n = unit.nrows();
    let k = k.clamp(1, n.max(1));
    if n == 0 {
        return Vec::new();
    }
    let mut rng = Rng::derive(seed, 0x6b6d, k as u64);
    // k-means++: each next centre drawn with probability proportional to its cosine distance from the
    // nearest centre so far
    let mut centres: Vec<usize> = vec![rng.below(n)];
    let mut distance: Vec<f64> = (0..n).map(|i| 1.0 - unit.row(i).dot(&unit.row(centres[0]))).collect();
    while centres.len() < k {
        let total: f64 = distance.iter().map(|d| d.max(0.0)).sum();
        let next = if total <= 0.0 {
            (0..n).find(|i| !centres.contains(i)).unwrap_or(0)
        } else {
            let mut target = rng.next_f64() * total;
            let mut chosen = n - 1;
            for (i, d) in distance.iter().enumerate() {
                target -= d.max(0.0);
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        };
        centres.push(next);
        for (i, d) in distance.iter_mut().enumerate() {
            *d = d.min(1.0 - unit.row(i).dot(&unit.row(next)));
        }
    }
    let mut centroids = Array2::zeros((k, unit.ncols()));
    for (c, &i) in centres.iter().enumerate() {
        centroids.row_mut(c).assign(&unit.row(i));
    }
    let mut assignment = vec![0usize; n];
    for _ in 0..iterations.max(1) {
        let similarity = unit.dot(&centroids.t()); // (n, k)
        let mut changed = false;
        for (i, row) in similarity.axis_iter(Axis(0)).enumerate() {
            let best = (0..k).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            changed |= assignment[i] != best;
            assignment[i] = best;
        }
        centroids.fill(0.0);
        for (i, &c) in assignment.iter().enumerate() {
            let mut centre = centroids.row_mut(c);
            centre += &unit.row(i);
        }
        for mut centre in centroids.rows_mut() {
            let norm = centre.dot(&centre).sqrt();
            if norm > 0.0 {
                centre /= norm;
            }
        }
        if !changed {
            break;
        }
    }
    assignment
}

/// Mean cosine similarity of a cluster's members to their mean direction: 1 for identical directions.
pub fn cohesion(unit: &Array2<f64>, members: &[usize]) -> f64 {
    if members.is_empty() {
        return 0.0;
    }
    let mut centre = ndarray::Array1::<f64>::zeros(unit.ncols());
    for &i in members {
        centre += &unit.row(i);
    }
    let norm = centre.dot(&centre).sqrt();
    if norm == 0.0 {
        return 0.0;
    }
    centre /= norm;
    members.iter().map(|&i| unit.row(i).dot(&centre)).sum::<f64>() / members.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_groups_are_recovered_and_cohesion_ranks_them() {
        // three tight bundles of directions around the axes, in shuffled order
        let mut rng = Rng::new(3);
        let axes = [0usize, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2];
        let points = Array2::from_shape_fn(
            (axes.len(), 3),
            |(i, j)| if j == axes[i] { 1.0 } else { 0.05 * rng.normal() } as f32,
        );
        let unit = normalized(points.view());
        let assignment = cluster(&unit, 3, 20, 7);
        for i in 0..axes.len() {
            for j in 0..axes.len() {
                assert_eq!(axes[i] == axes[j], assignment[i] == assignment[j], "points {i} and {j}");
            }
        }
        assert!(cohesion(&unit, &[0, 4, 8]) > 0.99);
        assert!(cohesion(&unit, &[0, 1, 2]) < 0.7);
    }
}
