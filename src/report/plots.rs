//! The report's figures as SVG (plotters' SVG backend needs no fonts), with labelled axes and units,
//! drawn to be read by everyone: text of at least 12 px, the Okabe–Ito palette (distinguishable under
//! the common colour-vision deficiencies) with a distinct marker per series, legends beside the data
//! rather than over it, 95 % interval bands, integer ticks on integer axes, and heatmaps with a colour
//! bar, token labels and target marks that stay visible on light and dark cells alike.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One named series of `(x, y)` points, with its 95 % interval `(x, low, high)` where one is known.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

impl<'a> Series<'a> {
    /// A series without an interval.
    pub fn line(name: &'a str, points: Vec<(f64, f64)>) -> Self {
        Series { name, points, band: Vec::new() }
    }

    /// Means with their 95 % half-widths (`None`: a single seed, no band there).
    pub fn with_intervals(name: &'a str, estimates: impl Iterator<Item = (f64, f64, Option<f64>)>) -> Self {
        let mut series = Series::line(name, Vec::new());
        for (x, mean, half_width) in estimates {
            series.points.push((x, mean));
            if let Some(h) = half_width.filter(|h| h.is_finite()) {
                series.band.push((x, mean - h, mean + h));
            }
        }
        series
    }
}

/// Okabe & Ito (2008), "Color Universal Design": blue, vermillion, bluish green, reddish purple,
/// orange, sky blue, black — yellow left out, too light on white.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Text sizes as plotters takes them: its SVG backend writes `size / 1.24` px, so 16 is 12.9 px,
/// the smallest text in a figure (tick labels, legends, token labels).
const SMALL_TEXT: u32 = 16;
const AXIS_TEXT: u32 = 17;
const CAPTION_TEXT: u32 = 22;

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min);
    let hi = values.filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6);
    (lo - pad, hi + pad)
}

/// Whether every value is a whole number: such an axis (training steps, counts) gets whole ticks only.
fn all_integers(mut values: impl Iterator<Item = f64>) -> bool {
    values.all(|v| v.is_finite() && v == v.round())
}

/// A tick label: whole ticks as integers with thousands separators, fractional ones blank on a whole
/// axis, else as few decimals as the tick spacing needs.
fn tick_label(value: f64, whole: bool) -> String {
    if whole {
        let rounded = value.round();
        if (value - rounded).abs() > 1e-9 * value.abs().max(1.0) {
            return String::new();
        }
        return crate::dsl::syntax::thousands(rounded as i128);
    }
    if value != 0.0 && value.abs() < 0.01 {
        // learning rates and other small quantities: 3e-4, not a rounded 0
        let text = format!("{value:.1e}");
        return text.replace(".0e", "e");
    }
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// Series `index`'s marker at `at`: circle, square, triangle, diamond, cross, in turn.
fn marker<DB: DrawingBackend>(index: usize, at: (i32, i32), color: RGBColor) -> DynElement<'static, DB, (i32, i32)> {
    let style = color.filled();
    let (x, y) = at;
    let shape: DynElement<'static, DB, (i32, i32)> = match index % 5 {
        0 => Circle::new((x, y), 4, style).into_dyn(),
        1 => Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], style).into_dyn(),
        2 => Polygon::new(vec![(x, y - 5), (x - 5, y + 4), (x + 5, y + 4)], style).into_dyn(),
        3 => Polygon::new(vec![(x, y - 5), (x - 5, y), (x, y + 5), (x + 5, y)], style).into_dyn(),
        _ => PathElement::new(
            vec![(x - 4, y - 4), (x + 4, y + 4), (x, y), (x - 4, y + 4), (x + 4, y - 4)],
            color.stroke_width(2),
        )
        .into_dyn(),
    };
    shape
}

/// A line chart with markers, interval bands and a legend below the data; `None` if there is
/// nothing to draw.
pub fn line_chart(caption: &str, x_label: &str, y_label: &str, series: &[Series]) -> Option<String> {
    if series.iter().all(|s| s.points.is_empty()) {
        return None;
    }
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = || {
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1).chain(s.band.iter().flat_map(|&(_, lo, hi)| [lo, hi])))
    };
    let (x0, x1) = range(xs());
    let (y0, y1) = range(ys());
    let (whole_x, whole_y) = (all_integers(xs()), all_integers(ys()));
    let legend_rows = if series.len() > 1 { series.len().div_ceil(3) as u32 } else { 0 };
    let (width, plot_height) = (600u32, 340u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, plot_height + 24 * legend_rows)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let (plot_area, legend_area) = root.split_vertically(plot_height);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(caption, ("sans-serif", CAPTION_TEXT))
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", SMALL_TEXT))
            .axis_desc_style(("sans-serif", AXIS_TEXT))
            .x_label_formatter(&|v| tick_label(*v, whole_x))
            .y_label_formatter(&|v| tick_label(*v, whole_y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .ok()?;
        for (index, s) in series.iter().enumerate() {
            let color = PALETTE[index % PALETTE.len()];
            if s.band.len() > 1 {
                let mut outline: Vec<(f64, f64)> = s.band.iter().map(|&(x, _, hi)| (x, hi)).collect();
                outline.extend(s.band.iter().rev().map(|&(x, lo, _)| (x, lo)));
                chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled()))).ok()?;
            }
            chart.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2))).ok()?;
            chart.draw_series(s.points.iter().map(|&p| EmptyElement::at(p) + marker(index, (0, 0), color))).ok()?;
        }
        if legend_rows > 0 {
            let column = (width as i32 - 40) / 3;
            for (index, s) in series.iter().enumerate() {
                let color = PALETTE[index % PALETTE.len()];
                let (x, y) = (20 + column * (index % 3) as i32, 12 + 24 * (index / 3) as i32);
                legend_area.draw(&PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))).ok()?;
                legend_area.draw(&(EmptyElement::at((x + 12, y)) + marker(index, (0, 0), color))).ok()?;
                let style =
                    ("sans-serif", SMALL_TEXT).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
                legend_area.draw(&Text::new(s.name.to_string(), (x + 32, y), style)).ok()?;
            }
        }
        root.present().ok()?;
    }
    Some(svg)
}

/// White (0) to dark blue (1): one hue, so lightness alone carries the weight under every kind of
/// colour vision.
fn weight_color(a: f64) -> RGBColor {
    let a = a.clamp(0.0, 1.0);
    let mix = |light: f64, dark: f64| (light + (dark - light) * a).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// Rows and columns labelled with their tokens up to this many; longer sequences get positions.
const MAX_TOKEN_LABELS: usize = 40;

/// An attention matrix as a grid of cells (white = 0 … dark blue = 1, the colour bar at the right),
/// queries down and keys across, labelled with `tokens` when given; each row's rule targets carry
/// an orange mark ringed in black, visible on white and on dark blue alike.
pub fn heatmap(caption: &str, weights: &[Vec<f64>], targets: &[Vec<usize>], tokens: &[String]) -> Option<String> {
    let n = weights.len();
    if n == 0 {
        return None;
    }
    let labelled = tokens.len() == n && n <= MAX_TOKEN_LABELS;
    let label_room = if labelled { 90 } else { 44 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 520)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let (map_area, bar_area) = root.split_horizontally(470);
        let mut chart = ChartBuilder::on(&map_area)
            .caption(caption, ("sans-serif", CAPTION_TEXT - 2))
            .margin(10)
            .x_label_area_size(label_room)
            .y_label_area_size(label_room)
            .build_cartesian_2d(0f64..n as f64, n as f64..0f64)
            .ok()?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_mesh().label_style(("sans-serif", SMALL_TEXT)).axis_desc_style(("sans-serif", AXIS_TEXT));
        if labelled {
            mesh.x_labels(0).y_labels(0);
        } else {
            mesh.x_desc("key position j")
                .y_desc("query position i")
                .x_label_formatter(&|v| tick_label(*v, true))
                .y_label_formatter(&|v| tick_label(*v, true));
        }
        mesh.draw().ok()?;
        let cells = weights.iter().enumerate().flat_map(|(i, row)| {
            row.iter().enumerate().map(move |(j, &a)| {
                Rectangle::new([(j as f64, i as f64), (j as f64 + 1.0, i as f64 + 1.0)], weight_color(a).filled())
            })
        });
        chart.draw_series(cells).ok()?;
        let radius = (160 / n.max(1)).clamp(3, 6) as i32;
        let marks = targets.iter().enumerate().flat_map(|(i, row)| {
            row.iter().map(move |&j| {
                EmptyElement::at((j as f64 + 0.5, i as f64 + 0.5))
                    + Circle::new((0, 0), radius, RGBColor(230, 159, 0).filled())
                    + Circle::new((0, 0), radius, BLACK.stroke_width(1))
            })
        });
        chart.draw_series(marks).ok()?;
        if labelled {
            let text = |pos: Pos| ("sans-serif", SMALL_TEXT).into_font().color(&BLACK).pos(pos);
            for (k, token) in tokens.iter().enumerate() {
                let shown: String = token.chars().take(10).collect();
                let (x, _) = chart.backend_coord(&(k as f64 + 0.5, n as f64));
                let (_, y) = chart.backend_coord(&(0.0, k as f64 + 0.5));
                let (left, _) = chart.backend_coord(&(0.0, 0.0));
                let (_, bottom) = chart.backend_coord(&(0.0, n as f64));
                let down = text(Pos::new(HPos::Right, VPos::Center)).transform(FontTransform::Rotate270);
                map_area.draw(&Text::new(shown.clone(), (x, bottom + 6), down)).ok()?;
                map_area.draw(&Text::new(shown, (left - 6, y), text(Pos::new(HPos::Right, VPos::Center)))).ok()?;
            }
        }
        // the colour bar: 0 at the bottom, 1 at the top
        let (top, height) = (60, 360);
        for step in 0..height {
            let a = 1.0 - step as f64 / (height - 1) as f64;
            bar_area.draw(&Rectangle::new([(14, top + step), (34, top + step + 1)], weight_color(a).filled())).ok()?;
        }
        bar_area.draw(&Rectangle::new([(14, top), (34, top + height)], BLACK.stroke_width(1))).ok()?;
        let style = ("sans-serif", SMALL_TEXT).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        for (value, label) in [(1.0, "1"), (0.5, "0.5"), (0.0, "0")] {
            let y = top + ((1.0 - value) * (height - 1) as f64) as i32;
            bar_area.draw(&Text::new(label, (38, y), style.clone())).ok()?;
        }
        let title = ("sans-serif", SMALL_TEXT).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
        bar_area.draw(&Text::new("weight", (30, top - 10), title)).ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `font-size` an SVG sets, in px.
    fn font_sizes(svg: &str) -> Vec<f64> {
        svg.match_indices("font-size=\"")
            .filter_map(|(at, m)| svg[at + m.len()..].split('"').next()?.trim_end_matches("px").parse().ok())
            .collect()
    }

    #[test]
    fn charts_carry_their_labels_legends_and_bands() {
        let svg = line_chart(
            "fidelity",
            "λ",
            "pointer fidelity",
            &[
                Series::with_intervals("a", [(0.0, 0.1, Some(0.05)), (1.0, 0.9, Some(0.02))].into_iter()),
                Series::line("b", vec![(0.0, 0.2), (1.0, 0.7)]),
            ],
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("pointer fidelity") && svg.contains("λ"));
        // both names in the legend, the band drawn as a filled polygon, and no text under 12 px
        assert!(svg.contains(">\na\n<") && svg.contains(">\nb\n<"), "{svg}");
        assert!(svg.contains("<polygon"), "no interval band");
        let sizes = font_sizes(&svg);
        assert!(!sizes.is_empty() && sizes.iter().all(|&s| s >= 12.0), "{sizes:?}");
        assert!(line_chart("x", "x", "y", &[Series::line("a", vec![])]).is_none());
    }

    #[test]
    fn integer_axes_get_whole_ticks_with_separators() {
        assert_eq!(tick_label(2500.0, true), "2,500");
        assert_eq!(tick_label(2.5, true), "");
        assert_eq!(tick_label(0.25, false), "0.25");
        assert_eq!(tick_label(0.0003, false), "3e-4");
        assert_eq!(tick_label(0.00025, false), "2.5e-4");
        assert_eq!(tick_label(-0.0, false), "0");
        assert_eq!(tick_label(-1_234_567.0, true), "−1,234,567");
        // a whole axis: steps 0..3 and counts 10..40, so no tick may read as a fraction
        let svg =
            line_chart("loss", "training step", "count", &[Series::line("a", vec![(0.0, 10.0), (3.0, 40.0)])]).unwrap();
        for fraction in [">\n0.5\n<", ">\n1.5\n<", ">\n2.5\n<", ">\n12.5\n<"] {
            assert!(!svg.contains(fraction), "{fraction} in {svg}");
        }
    }

    #[test]
    fn heatmaps_have_a_colour_bar_token_labels_and_ringed_targets() {
        let weights = vec![vec![1.0, 0.0, 0.0], vec![0.3, 0.7, 0.0], vec![0.1, 0.2, 0.7]];
        let targets = vec![vec![], vec![0], vec![0, 1]];
        let tokens: Vec<String> = ["the", "cat", "sat"].iter().map(|s| s.to_string()).collect();
        let svg = heatmap("layer 1 head 0", &weights, &targets, &tokens).unwrap();
        assert!(svg.contains(">\ncat\n<") && svg.contains(">\nweight\n<") && svg.contains(">\n0.5\n<"), "{svg}");
        // three target marks, each an orange disc and a black ring
        assert_eq!(svg.matches("fill=\"#E69F00\"").count(), 3, "{svg}");
        let sizes = font_sizes(&svg);
        assert!(sizes.iter().all(|&s| s >= 12.0), "{sizes:?}");
        // without tokens (or too many of them) the axes count positions
        let plain = heatmap("h", &weights, &targets, &[]).unwrap();
        assert!(plain.contains("key position j") && !plain.contains(">\ncat\n<"));
        // the colour map keeps lightness monotone: 0 is white, 1 the darkest
        assert_eq!(weight_color(0.0), RGBColor(255, 255, 255));
        let lightness = |c: RGBColor| u32::from(c.0) + u32::from(c.1) + u32::from(c.2);
        assert!(lightness(weight_color(0.2)) > lightness(weight_color(0.6)));
    }
}
