//! The report's figures as SVG (plotters' SVG backend needs no fonts), with labelled axes and units.

use plotters::prelude::*;

/// One named series of `(x, y)` points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(0, 0, 0),
];

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min);
    let hi = values.filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6);
    (lo - pad, hi + pad)
}

/// A line chart with markers; `None` if there is nothing to draw.
pub fn line_chart(caption: &str, x_label: &str, y_label: &str, series: &[Series]) -> Option<String> {
    if series.iter().all(|s| s.points.is_empty()) {
        return None;
    }
    let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 340)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .ok()?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).light_line_style(WHITE.mix(0.0)).draw().ok()?;
        for (index, s) in series.iter().enumerate() {
            let color = PALETTE[index % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .ok()?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).ok()?;
        }
        if series.len() > 1 {
            chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().ok()?;
        }
        root.present().ok()?;
    }
    Some(svg)
}

/// An attention matrix as a grid of cells (white = 0 … dark blue = 1), queries down, keys across;
/// each row's rule targets carry a red dot.
pub fn heatmap(caption: &str, weights: &[Vec<f64>], targets: &[Vec<usize>]) -> Option<String> {
    let n = weights.len();
    if n == 0 {
        return None;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420, 440)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..n as f64, n as f64..0f64)
            .ok()?;
        chart.configure_mesh().disable_mesh().x_desc("key position j").y_desc("query position i").draw().ok()?;
        let cells = weights.iter().enumerate().flat_map(|(i, row)| {
            row.iter().enumerate().map(move |(j, &a)| {
                let shade = (255.0 * (1.0 - a.clamp(0.0, 1.0))) as u8;
                let color = RGBColor(shade, shade, 255u8.saturating_sub((200.0 * a.clamp(0.0, 1.0)) as u8));
                Rectangle::new([(j as f64, i as f64), (j as f64 + 1.0, i as f64 + 1.0)], color.filled())
            })
        });
        chart.draw_series(cells).ok()?;
        let marks = targets.iter().enumerate().flat_map(|(i, row)| {
            row.iter().map(move |&j| Circle::new((j as f64 + 0.5, i as f64 + 0.5), 2, RED.filled()))
        });
        chart.draw_series(marks).ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_carry_their_labels() {
        let svg = line_chart(
            "fidelity",
            "λ",
            "pointer fidelity",
            &[Series { name: "a", points: vec![(0.0, 0.1), (1.0, 0.9)] }],
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("pointer fidelity") && svg.contains("λ"));
        assert!(line_chart("x", "x", "y", &[Series { name: "a", points: vec![] }]).is_none());
    }
}
