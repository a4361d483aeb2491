//! `report.html`: the report with its SVG figures, self-contained.

use super::*;

/// The report's figures, by file name: entropy, fidelity and perplexity against λ, and the training
/// curve, for the first group (the headline runs).
pub fn figures(report: &Report) -> Vec<(&'static str, &'static str, String)> {
    use plots::{line_chart, Series};
    let mut out = Vec::new();
    if let Some(example) = &report.attention_example {
        for (file, lambda, weights) in [
            ("report-attention-0.svg", 0.0, &example.weights_lambda_0),
            ("report-attention-1.svg", 1.0, &example.weights_lambda_1),
        ] {
            let caption = format!("{}: layer {} head {}, λ = {lambda}", example.member, example.layer, example.head);
            if let Some(svg) = plots::heatmap(&caption, weights, &example.targets, &example.tokens) {
                out.push((file, "4", svg));
            }
        }
    }
    if let Some(comparison) = &report.published {
        let names: Vec<String> = (1..=comparison.curves.len()).map(|i| format!("C{i}")).collect();
        let mut series: Vec<Series> = comparison
            .curves
            .iter()
            .zip(&names)
            .map(|(c, name)| {
                let estimates = c.points.iter().map(|p| (p.lambda, p.row.entropy_bits.mean, p.row.entropy_bits.ci95));
                Series::with_intervals(name, estimates)
            })
            .collect();
        let published: Vec<(f64, f64)> = comparison
            .figures
            .iter()
            .filter(|f| f.metric == crate::pipeline::PublishedMetric::EntropyBits)
            .map(|f| (f.lambda, f.published))
            .collect();
        if !published.is_empty() {
            series.push(Series::line("published", published));
        }
        if let Some(svg) =
            line_chart("Attention entropy: ours and published", "locality dial λ", "entropy (bits per row)", &series)
        {
            out.push(("report-published.svg", "8", svg));
        }
    }
    let Some(group) = report.groups.first() else { return out };
    let along = |name: &'static str, f: &dyn Fn(&DialRow) -> &Estimate| {
        Series::with_intervals(name, group.dial.iter().map(|r| (r.lambda, f(r).mean, f(r).ci95)))
    };
    let mut add = |file: &'static str, section: &'static str, svg: Option<String>| {
        if let Some(svg) = svg {
            out.push((file, section, svg));
        }
    };
    add(
        "report-entropy.svg",
        "3",
        line_chart(
            "Attention entropy across the dial",
            "locality dial λ",
            "entropy (bits per row)",
            &[along("all rows", &|r| &r.entropy_bits), along("covered rows", &|r| &r.covered_entropy_bits)],
        ),
    );
    add(
        "report-fidelity.svg",
        "3",
        line_chart(
            "Pointer fidelity across the dial",
            "locality dial λ",
            "mass on rule targets (share)",
            &[along("pointer fidelity", &|r| &r.pointer_fidelity)],
        ),
    );
    add(
        "report-perplexity.svg",
        "3",
        line_chart(
            "Test perplexity across the dial",
            "locality dial λ",
            "perplexity (per token)",
            &[along("perplexity", &|r| &r.perplexity)],
        ),
    );
    add(
        "report-training.svg",
        "7",
        line_chart(
            "Training loss",
            "training step",
            "cross-entropy (nats per token)",
            &[
                Series::line(
                    "training, mean over seeds",
                    group.training_curve.iter().map(|&(s, l)| (s as f64, l)).collect(),
                ),
                Series::line("validation", group.validation_curve.iter().map(|&(s, l)| (s as f64, l)).collect()),
            ],
        ),
    );
    add(
        "report-learning-rate.svg",
        "7",
        line_chart(
            "Learning rate",
            "training step",
            "learning rate",
            &[Series::line("schedule", group.learning_rate_curve.iter().map(|&(s, r)| (s as f64, r)).collect())],
        ),
    );
    out
}

/// Screen: a readable column that fits a phone (420 px) without sideways scrolling of the page; wide
/// tables scroll inside their own wrapper and figures shrink to the column. Print: A4 with a running
/// header (report and run id) and page numbers in `@page` margin boxes (Chromium 131 and later
/// print them; older browsers print the pages without), headings kept with what follows them, and
/// rows, figures and the card never split across pages.
pub(super) const STYLE: &str = "\
*,*::before,*::after{box-sizing:border-box}\
html{-webkit-text-size-adjust:100%}\
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222;line-height:1.45;overflow-wrap:anywhere}\
.table-wrap{max-width:100%;overflow-x:auto;margin:1em 0}\
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;overflow-wrap:normal}\
td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}code{font-size:.85em;overflow-wrap:anywhere}\
figure{display:inline-block;margin:.5em;max-width:100%}figure svg{max-width:100%;height:auto}\
h2{border-bottom:1px solid #ddd;padding-bottom:.2em}\
nav.contents{font-size:.9em;border:1px solid #ddd;background:#fafafa;padding:.4em .8em;margin:.5em 0}\
#audit-card{scroll-margin-top:1em}\
@media (max-width:600px){body{padding:0 .5em;font-size:15px}h1{font-size:1.4em}}\
@media print{\
body{max-width:none;margin:0;padding:0;font-size:10pt}\
.table-wrap{overflow:visible}table{font-size:7pt;width:100%}th,td{padding:.1em .25em;overflow-wrap:anywhere}\
h1,h2,h3{break-after:avoid;page-break-after:avoid}\
tr,figure,li{break-inside:avoid;page-break-inside:avoid}\
h2{break-before:page;page-break-before:always}\
h2#audit-card{break-before:auto;page-break-before:auto}\
nav.contents{display:none}a{color:inherit;text-decoration:none}\
}";

/// The print layout's page furniture: the running header and the page numbers, with `run` (the run
/// id, or the report's name without one) as a CSS string.
fn page_style(report: &Report) -> String {
    let run = report.provenance.invocation.as_ref().map_or(String::new(), |i| format!(" — run {}", i.run_id));
    let header = css_string(&format!("ailla report: {}{run}", report.name));
    format!(
        "@page{{size:A4;margin:16mm 12mm 14mm;\
         @top-left{{content:{header};font:8pt system-ui,sans-serif;color:#555}}\
         @bottom-right{{content:\"page \" counter(page) \" of \" counter(pages);font:8pt system-ui,sans-serif;color:#555}}}}"
    )
}

/// `text` as a quoted CSS string: everything but plain letters, digits and a few marks written as a
/// hex escape, so no text can end the string or the style element.
fn css_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || " -_.:,=()".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\{:x} ", c as u32));
        }
    }
    out.push('"');
    out
}

fn html_escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// HTML text back to plain text: tags dropped, the entities pulldown-cmark writes decoded.
fn plain_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// Gives every `<h2>` and `<h3>` the id the Markdown's links use ([`card::slug`] of its text), so
/// that the contents, the cross-group table and `report.html#section` links land.
fn with_heading_ids(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let mut rest = body;
    while let Some(at) = rest.find("<h") {
        let level = rest[at + 2..].chars().next();
        let opening = matches!(level, Some('2') | Some('3')) && rest[at + 3..].starts_with('>');
        if !opening {
            out.push_str(&rest[..at + 2]);
            rest = &rest[at + 2..];
            continue;
        }
        let close = format!("</h{}>", level.unwrap_or('2'));
        let Some(end) = rest[at..].find(&close) else { break };
        let inner = &rest[at + 4..at + end];
        out.push_str(&rest[..at + 3]);
        out.push_str(&format!(" id=\"{}\">", card::slug(&plain_text(inner)).replace('"', "")));
        out.push_str(inner);
        out.push_str(&close);
        rest = &rest[at + end + close.len()..];
    }
    out.push_str(rest);
    out
}

/// One self-contained HTML file: the Markdown report as HTML, inline CSS, and the figures inline as
/// SVG under the sections they belong to. Nothing is fetched from anywhere.
pub fn html(report: &Report) -> String {
    let markdown = markdown_text(report);
    let mut body = String::new();
    let parser = pulldown_cmark::Parser::new_ext(&markdown, pulldown_cmark::Options::ENABLE_TABLES);
    pulldown_cmark::html::push_html(&mut body, parser);
    for (_, section, svg) in figures(report).iter().rev() {
        let marker = format!("<h2>{section}.");
        if let Some(start) = body.find(&marker) {
            if let Some(end) = body[start..].find("</h2>") {
                let at = start + end + "</h2>".len();
                body.insert_str(at, &format!("\n<figure>{svg}</figure>\n"));
            }
        }
    }
    let body = with_heading_ids(&body)
        .replace("<table>", "<div class=\"table-wrap\"><table>")
        .replace("</table>", "</table></div>")
        .replacen("<p>Contents:", "<nav class=\"contents\" aria-label=\"contents\"><p>Contents:", 1);
    // the contents paragraph is the first one that starts so; close its nav after it
    let body = match body.find("<nav class=\"contents\"") {
        Some(at) => match body[at..].find("</p>") {
            Some(end) => {
                let at = at + end + "</p>".len();
                format!("{}</nav>{}", &body[..at], &body[at..])
            }
            None => body,
        },
        None => body,
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>ailla report: {}</title>\n<style>{STYLE}{}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        html_escaped(&report.name),
        page_style(report)
    )
}

/// A self-contained page in the report's style: `markdown` rendered as HTML (raw HTML in it is
/// passed through, so callers escape what they did not write), titled `title`.
pub fn markdown_page(title: &str, markdown: &str) -> String {
    let mut body = String::new();
    let parser = pulldown_cmark::Parser::new_ext(markdown, pulldown_cmark::Options::ENABLE_TABLES);
    pulldown_cmark::html::push_html(&mut body, parser);
    let title = title.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
}
