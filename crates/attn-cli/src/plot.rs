//! A small PNG line plot of training and validation loss, drawn pixel by pixel (axes,
//! ticks, a 3×5 bitmap font for the labels), so the binary needs no font or plotting
//! library.

use std::path::Path;

use attn::{Error, Result};

const W: usize = 800;
const H: usize = 480;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP: usize = 30;
const BOTTOM: usize = 50;
const TRAIN: [u8; 3] = [120, 170, 230];
const VAL: [u8; 3] = [230, 110, 20];
const INK: [u8; 3] = [40, 40, 40];
const GRID: [u8; 3] = [225, 225, 225];

/// 3×5 glyphs, one row per 3-bit number (most significant bit on the left).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' | 'O' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'A' => [2, 5, 7, 5, 5],
        'E' => [7, 4, 6, 4, 7],
        'I' => [7, 2, 2, 2, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'N' => [5, 7, 7, 5, 5],
        'P' => [6, 5, 6, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'V' => [5, 5, 5, 5, 2],
        _ => [0; 5],
    }
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for dy in 0..h {
            for dx in 0..w {
                self.set(x + dx, y + dy, c);
            }
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], thick: i64) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.rect(x as i64 - thick / 2, y as i64 - thick / 2, thick, thick, c);
        }
    }

    /// Text at scale 2 (6×10 pixels a glyph, 8 pixels advance).
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        self.rect(x + k as i64 * 8 + col * 2, y + row as i64 * 2, 2, 2, c);
                    }
                }
            }
        }
    }
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Read `metrics.jsonl` and draw `loss.png`.
pub fn plot_metrics(metrics: &Path, png_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut train = vec![];
    let mut val = vec![];
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_f64().unwrap_or(0.0);
        match v["type"].as_str() {
            Some("train") => train.extend(v["loss"].as_f64().map(|l| (step, l))),
            Some("eval") => val.extend(v["val_loss"].as_f64().map(|l| (step, l))),
            _ => {}
        }
    }
    let all: Vec<(f64, f64)> = train.iter().chain(&val).copied().collect();
    if all.is_empty() {
        return Ok(());
    }
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymin = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let ymax = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (ymin, ymax) = if ymax - ymin < 1e-9 {
        (ymin - 0.5, ymax + 0.5)
    } else {
        (ymin, ymax)
    };
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let to_px = |(x, y): (f64, f64)| {
        (
            LEFT as f64 + x / xmax * pw,
            TOP as f64 + (ymax - y) / (ymax - ymin) * ph,
        )
    };
    let mut cv = Canvas::new();
    for i in 0..=5 {
        let y = ymin + (ymax - ymin) * i as f64 / 5.0;
        let (_, py) = to_px((0.0, y));
        cv.line((LEFT as f64, py), ((W - RIGHT) as f64, py), GRID, 1);
        let label = fmt_tick(y);
        cv.text(
            LEFT as i64 - 8 - 8 * label.len() as i64,
            py as i64 - 5,
            &label,
            INK,
        );
        let x = xmax * i as f64 / 5.0;
        let (px, _) = to_px((x, ymin));
        cv.line((px, TOP as f64), (px, (H - BOTTOM) as f64), GRID, 1);
        let label = fmt_tick(x.round());
        cv.text(
            px as i64 - 4 * label.len() as i64,
            (H - BOTTOM) as i64 + 8,
            &label,
            INK,
        );
    }
    cv.line(
        (LEFT as f64, TOP as f64),
        (LEFT as f64, (H - BOTTOM) as f64),
        INK,
        2,
    );
    cv.line(
        (LEFT as f64, (H - BOTTOM) as f64),
        ((W - RIGHT) as f64, (H - BOTTOM) as f64),
        INK,
        2,
    );
    for w in train.windows(2) {
        cv.line(to_px(w[0]), to_px(w[1]), TRAIN, 1);
    }
    for w in val.windows(2) {
        cv.line(to_px(w[0]), to_px(w[1]), VAL, 3);
    }
    for &p in &val {
        let (x, y) = to_px(p);
        cv.rect(x as i64 - 3, y as i64 - 3, 7, 7, VAL);
    }
    cv.text((W / 2) as i64 - 16, (H - 18) as i64, "STEP", INK);
    cv.text(8, 8, "LOSS", INK);
    cv.rect((W - 200) as i64, 10, 14, 8, TRAIN);
    cv.text((W - 180) as i64, 9, "TRAIN", INK);
    cv.rect((W - 110) as i64, 10, 14, 8, VAL);
    cv.text((W - 90) as i64, 9, "VAL", INK);
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| Error::bad_file(png_path, e.to_string()))?;
        w.write_image_data(&cv.px)
            .map_err(|e| Error::bad_file(png_path, e.to_string()))?;
    }
    attn::checkpoint::write_atomic(png_path, &bytes)
}
