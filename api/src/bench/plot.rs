//! The PNG `husk bench --plot FILE.png` writes (plotters' bitmap backend):
//! one bar per measured row at its p50, a whisker up to its p90 and a dot
//! per sample, on a log scale in milliseconds; under the chart the density
//! row and the rows not measured. Text uses DejaVu Sans compiled into husk,
//! so nothing depends on the host's fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::Report;
use super::{table, BenchError, Result};

/// Size of the picture.
pub const SIZE: (u32, u32) = (1000, 600);

const FONT: &str = "sans-serif";

/// Height of a line of notes under the chart, in pixels.
const NOTE_LINE: u32 = 21;

/// Registers the embedded font once (plotters' `ab_glyph` text).
fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut ok = true;
    ONCE.call_once(|| {
        ok = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .is_ok();
    });
    if ok {
        Ok(())
    } else {
        Err(BenchError::Plot {
            path: Default::default(),
            message: "the embedded font does not load".into(),
        })
    }
}

/// Draws `report` into the PNG file `path`.
pub fn write_png(report: &Report, path: &Path) -> Result<()> {
    let fail = |message: String| BenchError::Plot {
        path: path.to_path_buf(),
        message,
    };
    register_font().map_err(|e| fail(e.to_string()))?;
    draw(report, path).map_err(fail)
}

/// The rows with samples: name, p50, p90, samples.
type Bar<'a> = (&'a str, f64, f64, &'a [f64]);

fn bars(report: &Report) -> Vec<Bar<'_>> {
    report
        .rows
        .iter()
        .filter_map(|r| {
            r.summary()
                .map(|s| (r.name.as_str(), s.p50, s.p90, r.samples_ms.as_slice()))
        })
        .collect()
}

/// The y range (log scale): a decade or so around every sample.
fn y_range(bars: &[Bar<'_>]) -> (f64, f64) {
    let all = bars.iter().flat_map(|b| b.3.iter().copied());
    let (lo, hi) = all.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return (0.1, 10.0);
    }
    ((lo / 2.0).max(0.01), hi * 2.0)
}

fn draw(report: &Report, path: &Path) -> std::result::Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let notes = notes(report);
    let note_height = NOTE_LINE * u32::try_from(notes.len()).unwrap_or(0) + 12;
    let (top, bottom) = root.split_vertically(SIZE.1 - note_height);
    let bars = bars(report);
    let n = i32::try_from(bars.len().max(1)).unwrap_or(i32::MAX);
    let (lo, hi) = y_range(&bars);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("husk bench: {} on {}", report.image, report.place),
            (FONT, 18),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n - 1).into_segmented(), (lo..hi).log_scale())
        .map_err(|x| e(&x))?;
    let names: Vec<&str> = bars.iter().map(|b| b.0).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| names.get(i))
                .map_or_else(String::new, |s| s.to_string()),
            SegmentValue::Last => String::new(),
        })
        .y_label_formatter(&|v| {
            if *v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .y_desc("milliseconds (log scale)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|x| e(&x))?;
    for ((i, (_, p50, p90, samples)), slot) in (0..n).zip(bars.iter()).zip(0usize..) {
        let color = Palette99::pick(slot);
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), lo),
                (SegmentValue::Exact(i + 1), *p50),
            ],
            color.mix(0.6).filled(),
        );
        bar.set_margin(0, 0, 30, 30);
        chart.draw_series(std::iter::once(bar)).map_err(|x| e(&x))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), *p50),
                    (SegmentValue::CenterOf(i), *p90),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                samples
                    .iter()
                    .map(|&s| Circle::new((SegmentValue::CenterOf(i), s), 3, BLACK.filled())),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{p50:.0} ms"),
                (SegmentValue::CenterOf(i), *p90 * 1.1),
                TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
            )))
            .map_err(|x| e(&x))?;
    }
    for (k, line) in (0i32..).zip(&notes) {
        bottom
            .draw(&Text::new(
                line.clone(),
                (20, 4 + NOTE_LINE as i32 * k),
                (FONT, 14),
            ))
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

/// Lines under the chart: the density rows, unavailable and failed rows.
fn notes(report: &Report) -> Vec<String> {
    let text = table::render(report);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            ["density:", "fork density:", "unavailable:", "error:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect();
    let mut head = "bars: p50, whiskers: p90, dots: each run; start to exit (qemu-microvm: to husk-agent ready)".to_string();
    if let Some(b) = report.baseline_p50() {
        head.push_str(&format!("; container baseline (namespace) p50 {b:.1} ms"));
    }
    lines.insert(0, head);
    lines
}

#[cfg(test)]
mod tests {
    use super::super::report::tests::sample;
    use super::*;

    /// Width and height from a PNG's IHDR chunk, if it is a PNG.
    fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
        if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
            return None;
        }
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        Some((be(&bytes[16..20]), be(&bytes[20..24])))
    }

    #[test]
    fn writes_a_png_of_the_report() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bench.png");
        write_png(&sample(), &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(png_size(&bytes), Some(SIZE));
        // Text and bars make it far bigger than a blank picture.
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    }

    #[test]
    fn a_report_without_samples_still_draws_and_a_bad_path_is_one_line() {
        let d = tempfile::tempdir().unwrap();
        let mut r = sample();
        for row in &mut r.rows {
            row.samples_ms.clear();
        }
        write_png(&r, &d.path().join("empty.png")).unwrap();
        let e = write_png(&sample(), &d.path().join("no/such/dir/x.png")).unwrap_err();
        assert!(e.to_string().starts_with("cannot draw the plot "), "{e}");
    }

    #[test]
    fn notes_hold_baseline_density_and_unavailable_rows() {
        let n = notes(&sample());
        assert_eq!(n.len(), 4);
        assert!(n[0].starts_with("bars: p50, whiskers: p90"));
        assert!(
            n[0].ends_with("; container baseline (namespace) p50 11.0 ms"),
            "{}",
            n[0]
        );
        assert!(n[1].starts_with("density: 2 sandboxes"));
        assert!(n[2].starts_with("fork density: 4 forks"));
        assert_eq!(n[3], "unavailable: crun: crun is not installed");
    }
}
