//! Horizontal bar charts as self-contained SVG text, for the bench report.

use std::fmt::Write as _;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart, one bar per label; missing values say n/a.
/// On a log scale, values are drawn as log10(1 + v).
pub fn bar_chart(title: &str, labels: &[String], values: &[Option<f64>], log: bool) -> String {
    let texts: Vec<String> = values
        .iter()
        .map(|v| v.map_or(String::new(), fmt_value))
        .collect();
    bar_chart_with(title, labels, values, log, &texts)
}

/// [`bar_chart`] with the text printed beside each bar given.
pub fn bar_chart_with(
    title: &str,
    labels: &[String],
    values: &[Option<f64>],
    log: bool,
    texts: &[String],
) -> String {
    let scale = |v: f64| {
        if log {
            (1.0 + v.max(0.0)).log10()
        } else {
            v.max(0.0)
        }
    };
    let max = values
        .iter()
        .flatten()
        .map(|&v| scale(v))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, width, bar_h, gap) = (230.0, 420.0, 18.0, 8.0);
    let height = 40.0 + labels.len() as f64 * (bar_h + gap) + 10.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        xml_escape(title),
        w = left + width + 110.0,
    );
    for (i, ((l, v), text)) in labels.iter().zip(values).zip(texts).enumerate() {
        let y = 36.0 + i as f64 * (bar_h + gap);
        let _ = writeln!(
            s,
            "<text x=\"{x}\" y=\"{ty}\" text-anchor=\"end\">{}</text>",
            xml_escape(l),
            x = left - 8.0,
            ty = y + bar_h - 5.0
        );
        match v {
            Some(v) => {
                let w = (scale(*v) / max * width).max(1.0);
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bar_h}\" fill=\"#3b7dd8\"/>\n\
                     <text x=\"{tx:.1}\" y=\"{ty}\">{}</text>",
                    xml_escape(text),
                    tx = left + w + 6.0,
                    ty = y + bar_h - 5.0
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "<text x=\"{left}\" y=\"{ty}\" fill=\"#888\">n/a</text>",
                    ty = y + bar_h - 5.0
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

pub fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_chart_is_valid_svg_with_every_label_and_value() {
        let labels = vec![
            "mio · spin".to_string(),
            "a<b".to_string(),
            "none".to_string(),
        ];
        let svg = bar_chart("T & t", &labels, &[Some(2000.0), Some(0.5), None], true);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("T &amp; t") && svg.contains("a&lt;b"));
        assert!(svg.contains(">2000<") && svg.contains(">0.500<") && svg.contains(">n/a<"));
        assert_eq!(svg.matches("<rect").count(), 2);
        // The largest value gets the full width on either scale.
        assert!(svg.contains("width=\"420.0\""));
    }
}
