//! PNG plots with plotters' pure-Rust bitmap backend. Text is drawn by ab_glyph from a
//! TrueType file read at run time (DejaVu Sans from Debian's fonts-dejavu-core, or
//! `$NACRITHFS_FONT`), so building needs neither fontconfig nor freetype.

use super::report::FileReport;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no TrueType font found (install fonts-dejavu-core or set NACRITHFS_FONT to a .ttf file); tried {0}")]
    NoFont(String),
    #[error("{path}: {why}")]
    Draw { path: PathBuf, why: String },
    #[error("{path}:{line}: {why}")]
    Csv {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font as "sans-serif" once per process.
fn ensure_font() -> Result<(), PlotError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var_os("NACRITHFS_FONT").map(PathBuf::from);
        let candidates: Vec<PathBuf> = env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
            .collect();
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "))
    })
    .clone()
    .map_err(PlotError::NoFont)
}

fn draw_err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |why| PlotError::Draw {
        path: path.to_path_buf(),
        why,
    }
}

/// Grouped bars: one group per file, one bar per compressor, bits per byte on top.
pub fn bits_per_byte(path: &Path, files: &[FileReport]) -> Result<(), PlotError> {
    ensure_font()?;
    let err = draw_err(path);
    let mut compressors: Vec<&str> = Vec::new();
    for r in files.iter().flat_map(|f| &f.results) {
        if !compressors.contains(&r.compressor.as_str()) {
            compressors.push(&r.compressor);
        }
    }
    let top = files
        .iter()
        .flat_map(|f| &f.results)
        .map(|r| r.bits_per_byte)
        .fold(1.0, f64::max)
        * 1.12;
    let width = (260 + 110 * compressors.len().max(1) * files.len().max(1)).clamp(800, 2400) as u32;
    let root = BitMapBackend::new(path, (width, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Bits per byte per compressor (lower is better)",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..files.len().max(1) as f64, 0f64..top)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_max_light_lines(1)
        .y_desc("bits per byte")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    // Bars fill 80% of each file's slot, centred.
    let slot = 0.8 / compressors.len().max(1) as f64;
    for (j, name) in compressors.iter().enumerate() {
        let color = Palette99::pick(j).to_rgba();
        let bars = files.iter().enumerate().filter_map(|(i, f)| {
            let r = f.results.iter().find(|r| r.compressor == *name)?;
            let x0 = i as f64 + 0.1 + j as f64 * slot;
            Some((x0, r.bits_per_byte))
        });
        chart
            .draw_series(
                bars.clone().map(|(x0, y)| {
                    Rectangle::new([(x0, 0.0), (x0 + slot * 0.9, y)], color.filled())
                }),
            )
            .map_err(|e| err(e.to_string()))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
        let value_style =
            TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(bars.map(|(x0, y)| {
                Text::new(
                    format!("{y:.2}"),
                    (x0 + slot * 0.45, y),
                    value_style.clone(),
                )
            }))
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    // File names under their groups, placed in pixels (the x axis itself is numeric).
    let name_style = TextStyle::from(("sans-serif", 16)).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, f) in files.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            format!("{} ({} B)", f.file, f.bytes),
            (x, y + 8),
            name_style.clone(),
        ))
        .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// One line of `nacrithfs bench-engine --csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct EnginePoint {
    pub streams: u32,
    pub mode: String,
    pub tokens_per_s: f64,
}

/// Parses bench-engine's CSV (`streams,mode,tokens,seconds,tokens_per_s,kb_per_s`),
/// finding columns by header name so added columns do not break it.
pub fn parse_engine_csv(path: &Path, text: &str) -> Result<Vec<EnginePoint>, PlotError> {
    let bad = |line: usize, why: String| PlotError::Csv {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| bad(1, "empty file".into()))?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| bad(1, format!("no column {name:?} in header {header:?}")))
    };
    let (si, mi, ti) = (col("streams")?, col("mode")?, col("tokens_per_s")?);
    let mut points = Vec::new();
    for (n, line) in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |i: usize| {
            f.get(i).copied().ok_or_else(|| {
                bad(
                    n + 1,
                    format!("{} fields, expected {}", f.len(), cols.len()),
                )
            })
        };
        let streams = get(si)?
            .parse::<u32>()
            .map_err(|e| bad(n + 1, format!("streams: {e}")))?;
        let tokens_per_s = get(ti)?
            .parse::<f64>()
            .map_err(|e| bad(n + 1, format!("tokens_per_s: {e}")))?;
        if streams == 0 || !tokens_per_s.is_finite() {
            return Err(bad(
                n + 1,
                "streams must be at least 1 and tokens_per_s finite".into(),
            ));
        }
        points.push(EnginePoint {
            streams,
            mode: get(mi)?.to_string(),
            tokens_per_s,
        });
    }
    if points.is_empty() {
        return Err(bad(1, "no data lines".into()));
    }
    Ok(points)
}

/// Tokens per second against stream count (log scale), one line per mode.
pub fn throughput(path: &Path, points: &[EnginePoint]) -> Result<(), PlotError> {
    ensure_font()?;
    let err = draw_err(path);
    let mut modes: Vec<&str> = Vec::new();
    for p in points {
        if !modes.contains(&p.mode.as_str()) {
            modes.push(&p.mode);
        }
    }
    let max_streams = points.iter().map(|p| p.streams).max().unwrap_or(1) as f64;
    let top = points.iter().map(|p| p.tokens_per_s).fold(1.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Engine throughput against streams per model call",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((0.8f64..max_streams * 1.25).log_scale(), 0f64..top)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("streams (sequences per llama.cpp call)")
        .y_desc("tokens per second")
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .max_light_lines(1)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (j, mode) in modes.iter().enumerate() {
        let color = Palette99::pick(j).to_rgba();
        let mut line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.mode == *mode)
            .map(|p| (p.streams as f64, p.tokens_per_s))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(*mode)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    // The measured stream counts as the x labels (a log axis would pick 2, 3, 5, ...).
    let mut streams: Vec<u32> = points.iter().map(|p| p.streams).collect();
    streams.sort_unstable();
    streams.dedup();
    let label_style = TextStyle::from(("sans-serif", 14)).pos(Pos::new(HPos::Center, VPos::Top));
    for s in streams {
        let (x, y) = chart.backend_coord(&(s as f64, 0.0));
        root.draw(&Text::new(s.to_string(), (x, y + 6), label_style.clone()))
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Row;

    const ENGINE_CSV: &str = "streams,mode,tokens,seconds,tokens_per_s,kb_per_s\n\
        1,raw,1000,10.0,100.0,0.35\n4,raw,1000,5.5,181.8,0.64\n16,raw,1000,4.0,250.0,0.88\n\
        1,compress,1000,11.0,90.9,0.32\n4,compress,1000,6.0,166.7,0.59\n16,compress,1000,4.4,227.3,0.80\n\
        1,decompress,1000,11.5,87.0,0.31\n16,decompress,1000,4.6,217.4,0.77\n";

    fn is_png(p: &Path) -> bool {
        std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 2000)
    }

    #[test]
    fn parses_engine_csv_by_header_name() {
        let p = parse_engine_csv(Path::new("e.csv"), ENGINE_CSV).unwrap();
        assert_eq!(p.len(), 8);
        assert_eq!(
            p[2],
            EnginePoint {
                streams: 16,
                mode: "raw".into(),
                tokens_per_s: 250.0
            }
        );
        let reordered = "mode,tokens_per_s,streams\nraw,12.5,2\n";
        assert_eq!(
            parse_engine_csv(Path::new("r.csv"), reordered).unwrap()[0].streams,
            2
        );
    }

    #[test]
    fn rejects_bad_engine_csv_with_the_line() {
        let e = parse_engine_csv(Path::new("e.csv"), "streams,mode\n1,raw\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("e.csv:1") && e.contains("tokens_per_s"), "{e}");
        let e = parse_engine_csv(
            Path::new("e.csv"),
            "streams,mode,tokens_per_s\n1,raw,1\nx,raw,2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("e.csv:3: streams"), "{e}");
        assert!(parse_engine_csv(Path::new("e.csv"), "").is_err());
        assert!(parse_engine_csv(Path::new("e.csv"), "streams,mode,tokens_per_s\n").is_err());
    }

    /// Needs a TrueType font (fonts-dejavu-core from scripts/install-deps.sh).
    #[test]
    fn draws_both_plots() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("throughput.png");
        throughput(&t, &parse_engine_csv(&t, ENGINE_CSV).unwrap()).unwrap();
        assert!(is_png(&t));
        let files: Vec<FileReport> = ["a.txt", "b.txt"]
            .iter()
            .map(|n| FileReport {
                file: n.to_string(),
                path: n.to_string(),
                bytes: 1000,
                h0: 4.0,
                h1: 3.0,
                h2: 2.0,
                results: vec![
                    Row::new("gzip -9", 1000, 400, 0.01, 1, 0.01, 1),
                    Row::new("nacrithfs raw", 1000, 110, 1.0, 1, 1.0, 1),
                ],
            })
            .collect();
        let b = dir.path().join("bpb.png");
        bits_per_byte(&b, &files).unwrap();
        assert!(is_png(&b));
    }
}
