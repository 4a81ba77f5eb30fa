//! Text reading with PP-OCRv4: DB text detection (rotated boxes, unclip, perspective crop),
//! direction classification (0°/180°) and CRNN/SVTR recognition with CTC decoding.
//! Pre- and post-processing follow RapidOCR 1.4.4 (its `config.yaml` defaults).

use std::path::{Path, PathBuf};

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};
use imageproc::geometric_transformations::Projection;
use imageproc::point::Point;

use crate::Error;
use crate::runtime::{self, Model, Runtime};

/// One line of text read off an image: corners clockwise from top-left, in image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub text: String,
    pub score: f32,
    pub corners: [[f32; 2]; 4],
}

/// The model files of the PP-OCRv4 pipeline.
pub const DET_MODEL: &str = "ch_PP-OCRv4_det_infer.onnx";
pub const REC_MODEL: &str = "ch_PP-OCRv4_rec_infer.onnx";
pub const CLS_MODEL: &str = "ch_ppocr_mobile_v2.0_cls_infer.onnx";

/// Tunables (RapidOCR's defaults).
#[derive(Debug, Clone)]
pub struct OcrOptions {
    /// Detector input: the shorter side is scaled up to at least this (`limit_type: min`)…
    pub det_limit_side_len: u32,
    /// …and the longer side is kept at most this.
    pub det_max_side_len: u32,
    pub det_thresh: f32,
    pub box_thresh: f32,
    pub unclip_ratio: f32,
    pub max_candidates: usize,
    /// Lines read with a lower score are dropped.
    pub text_score: f32,
    pub use_cls: bool,
    pub cls_thresh: f32,
}

impl Default for OcrOptions {
    fn default() -> Self {
        Self {
            det_limit_side_len: 736,
            det_max_side_len: 2000,
            det_thresh: 0.3,
            box_thresh: 0.5,
            unclip_ratio: 1.6,
            max_candidates: 1000,
            text_score: 0.5,
            use_cls: true,
            cls_thresh: 0.9,
        }
    }
}

/// The PP-OCRv4 pipeline on one runtime.
pub struct PpOcr {
    det: Box<dyn Model>,
    cls: Box<dyn Model>,
    rec: Box<dyn Model>,
    /// Index 0 = CTC blank, then the model's table, then a space.
    chars: Vec<String>,
    pub options: OcrOptions,
}

impl PpOcr {
    /// Load the three models from `dir` (see `scripts/fetch-models.sh`).
    pub fn load(
        dir: &Path,
        runtime: Runtime,
        threads: usize,
        onnxruntime_lib: Option<&Path>,
    ) -> Result<Self, Error> {
        let p = |f: &str| -> PathBuf { dir.join(f) };
        let rec_path = p(REC_MODEL);
        let bytes = std::fs::read(&rec_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ModelMissing(rec_path.clone()),
            _ => Error::Io(rec_path.clone(), e),
        })?;
        let table = crate::onnx_proto::metadata_value(&bytes, "character").ok_or_else(|| {
            Error::Runtime(format!("{}: no `character` metadata", rec_path.display()))
        })?;
        let mut chars = vec![String::new()];
        chars.extend(table.lines().map(String::from));
        chars.push(" ".into());
        let lib = onnxruntime_lib
            .map(Path::to_path_buf)
            .unwrap_or_else(|| runtime::onnxruntime_lib_path(None, dir));
        Ok(Self {
            det: runtime::load(runtime, &p(DET_MODEL), threads, Some(&lib))?,
            cls: runtime::load(runtime, &p(CLS_MODEL), threads, Some(&lib))?,
            rec: runtime::load(runtime, &rec_path, threads, Some(&lib))?,
            chars,
            options: OcrOptions::default(),
        })
    }

    /// Read every line of text in the image, top to bottom, left to right.
    pub fn read(&self, img: &RgbImage) -> Result<Vec<Line>, Error> {
        let boxes = self.detect(img)?;
        let mut lines = Vec::with_capacity(boxes.len());
        for corners in boxes {
            let mut crop = crop_quad(img, &corners);
            if crop.height() as f32 >= 1.5 * crop.width() as f32 {
                crop = image::imageops::rotate270(&crop);
            }
            if self.options.use_cls && self.is_upside_down(&crop)? {
                crop = image::imageops::rotate180(&crop);
            }
            let (text, score) = self.recognize(&crop)?;
            let text = text.trim().to_string();
            if score >= self.options.text_score && !text.is_empty() {
                lines.push(Line {
                    text,
                    score,
                    corners,
                });
            }
        }
        Ok(lines)
    }

    /// DB detection: boxes as four corners (tl, tr, br, bl) in image pixels.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<[[f32; 2]; 4]>, Error> {
        let o = &self.options;
        let (w, h) = img.dimensions();
        if w < 4 || h < 4 {
            return Ok(vec![]);
        }
        let (w32, h32) = (w as f32, h as f32);
        let mut ratio = if w.min(h) < o.det_limit_side_len {
            o.det_limit_side_len as f32 / w.min(h) as f32
        } else {
            1.0
        };
        if w.max(h) as f32 * ratio > o.det_max_side_len as f32 {
            ratio = o.det_max_side_len as f32 / w.max(h) as f32;
        }
        let rw = (((w32 * ratio) / 32.0).round() as u32 * 32).max(32);
        let rh = (((h32 * ratio) / 32.0).round() as u32 * 32).max(32);
        let resized = image::imageops::resize(img, rw, rh, image::imageops::FilterType::Triangle);
        let input = to_chw_bgr(&resized, rw as usize);
        let (shape, prob) = self.det.run([1, 3, rh as usize, rw as usize], input)?;
        let (ph, pw) = match shape.as_slice() {
            [_, _, ph, pw] => (*ph, *pw),
            _ => {
                return Err(Error::Runtime(format!(
                    "unexpected detector output shape {shape:?}"
                )));
            }
        };
        if prob.len() < ph * pw {
            return Err(Error::Runtime("detector output too short".into()));
        }
        Ok(db_postprocess(&prob[..ph * pw], pw, ph, w, h, o))
    }

    fn is_upside_down(&self, crop: &RgbImage) -> Result<bool, Error> {
        let (input, width) = rec_input(crop, 48, 192);
        let (_, out) = self.cls.run([1, 3, 48, width], input)?;
        Ok(out.len() >= 2 && out[1] > out[0] && out[1] > self.options.cls_thresh)
    }

    fn recognize(&self, crop: &RgbImage) -> Result<(String, f32), Error> {
        let (input, width) = rec_input(crop, 48, 320);
        let (shape, out) = self.rec.run([1, 3, 48, width], input)?;
        let (t, c) = match shape.as_slice() {
            [_, t, c] => (*t, *c),
            _ => {
                return Err(Error::Runtime(format!(
                    "unexpected recogniser output shape {shape:?}"
                )));
            }
        };
        Ok(ctc_decode(&out, t, c, &self.chars))
    }
}

/// NCHW float, BGR channel order (the models were trained on OpenCV images), `(v/255-0.5)/0.5`.
fn to_chw_bgr(img: &RgbImage, out_w: usize) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = h * out_w;
    let mut data = vec![0f32; 3 * plane];
    for (x, y, Rgb(p)) in img.enumerate_pixels() {
        let i = y as usize * out_w + x as usize;
        if x as usize >= w.min(out_w) {
            continue;
        }
        for (c, v) in [p[2], p[1], p[0]].into_iter().enumerate() {
            data[c * plane + i] = (v as f32 / 255.0 - 0.5) / 0.5;
        }
    }
    data
}

/// The recogniser/classifier input: height 48, width by aspect ratio, zero-padded to at least
/// `min_w` (RapidOCR's `resize_norm_img` for a batch of one).
fn rec_input(crop: &RgbImage, height: u32, min_w: u32) -> (Vec<f32>, usize) {
    let ratio = crop.width() as f32 / crop.height().max(1) as f32;
    let target_w = ((height as f32 * ratio).ceil() as u32).clamp(1, 4096);
    let total_w = if min_w == 192 {
        min_w
    } else {
        target_w.max(min_w)
    };
    let resized_w = target_w.min(total_w);
    let resized = image::imageops::resize(
        crop,
        resized_w,
        height,
        image::imageops::FilterType::Triangle,
    );
    (to_chw_bgr(&resized, total_w as usize), total_w as usize)
}

/// Greedy CTC: argmax per step, collapse repeats, drop blanks; score = mean kept probability.
pub fn ctc_decode(probs: &[f32], steps: usize, classes: usize, chars: &[String]) -> (String, f32) {
    let mut text = String::new();
    let mut scores = Vec::new();
    let mut prev = usize::MAX;
    for t in 0..steps {
        let Some(row) = probs.get(t * classes..(t + 1) * classes) else {
            break;
        };
        let (best, p) =
            row.iter().enumerate().fold(
                (0, f32::MIN),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        if best != 0
            && best != prev
            && let Some(ch) = chars.get(best)
        {
            text.push_str(ch);
            scores.push(p);
        }
        prev = best;
    }
    let score = if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f32>() / scores.len() as f32
    };
    (text, score)
}

/// DB post-processing: threshold, dilate (2×2), outer contours → minimum-area rectangles,
/// box score (mean probability inside the box), unclip by `area·ratio/perimeter`, scale back.
fn db_postprocess(
    prob: &[f32],
    pw: usize,
    ph: usize,
    dest_w: u32,
    dest_h: u32,
    o: &OcrOptions,
) -> Vec<[[f32; 2]; 4]> {
    let mut mask = GrayImage::new(pw as u32, ph as u32);
    for y in 0..ph {
        for x in 0..pw {
            // 2×2 dilation (cv2.dilate with a 2×2 kernel anchored at its centre → looks back).
            let on = (0..2).any(|dy| {
                (0..2).any(|dx| {
                    let (yy, xx) = (y.wrapping_sub(dy), x.wrapping_sub(dx));
                    yy < ph && xx < pw && prob[yy * pw + xx] > o.det_thresh
                })
            });
            if on {
                mask.put_pixel(x as u32, y as u32, Luma([255]));
            }
        }
    }
    let contours = imageproc::contours::find_contours::<i32>(&mask);
    let mut boxes = Vec::new();
    for c in contours
        .iter()
        .filter(|c| c.border_type == imageproc::contours::BorderType::Outer)
        .take(o.max_candidates)
    {
        if c.points.len() < 3 {
            continue;
        }
        let pts: Vec<Point<f32>> = c
            .points
            .iter()
            .map(|p| Point::new(p.x as f32, p.y as f32))
            .collect();
        let rect = min_rect(&pts);
        if rect.short_side() < 3.0 {
            continue;
        }
        if box_score(prob, pw, ph, &rect.corners()) < o.box_thresh {
            continue;
        }
        let (w, h) = (rect.w, rect.h);
        let d = w * h * o.unclip_ratio / (2.0 * (w + h));
        let grown = RotRect {
            w: w + 2.0 * d,
            h: h + 2.0 * d,
            ..rect
        };
        if grown.short_side() < 5.0 {
            continue;
        }
        let sx = dest_w as f32 / pw as f32;
        let sy = dest_h as f32 / ph as f32;
        let corners = grown.corners().map(|[x, y]| {
            [
                (x * sx).round().clamp(0.0, dest_w as f32),
                (y * sy).round().clamp(0.0, dest_h as f32),
            ]
        });
        boxes.push(corners);
    }
    sort_reading_order(&mut boxes);
    boxes
}

/// A rotated rectangle: centre, width along `angle`, height across.
#[derive(Debug, Clone, Copy)]
struct RotRect {
    cx: f32,
    cy: f32,
    w: f32,
    h: f32,
    /// Direction of the `w` side (radians), in (-π/4, π/4]: boxes read left to right.
    angle: f32,
}

impl RotRect {
    fn short_side(&self) -> f32 {
        self.w.min(self.h)
    }
    /// tl, tr, br, bl.
    fn corners(&self) -> [[f32; 2]; 4] {
        let (s, c) = self.angle.sin_cos();
        let (hw, hh) = (self.w / 2.0, self.h / 2.0);
        let at = |dx: f32, dy: f32| [self.cx + dx * c - dy * s, self.cy + dx * s + dy * c];
        [at(-hw, -hh), at(hw, -hh), at(hw, hh), at(-hw, hh)]
    }
}

/// Minimum-area rectangle of points (rotating calipers over the convex hull).
fn min_rect(points: &[Point<f32>]) -> RotRect {
    let hull = imageproc::geometry::convex_hull(points.to_vec());
    let mut best: Option<(f32, RotRect)> = None;
    let n = hull.len();
    for i in 0..n.max(1) {
        let (a, b) = (hull[i % n.max(1)], hull[(i + 1) % n.max(1)]);
        let mut theta = (b.y - a.y).atan2(b.x - a.x);
        if !theta.is_finite() {
            theta = 0.0;
        }
        let (s, c) = theta.sin_cos();
        let (mut minu, mut maxu, mut minv, mut maxv) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in &hull {
            let u = p.x * c + p.y * s;
            let v = -p.x * s + p.y * c;
            minu = minu.min(u);
            maxu = maxu.max(u);
            minv = minv.min(v);
            maxv = maxv.max(v);
        }
        let (w, h) = (maxu - minu, maxv - minv);
        let area = w * h;
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (cu, cv) = ((minu + maxu) / 2.0, (minv + maxv) / 2.0);
            let rect = RotRect {
                cx: cu * c - cv * s,
                cy: cu * s + cv * c,
                w,
                h,
                angle: theta,
            };
            best = Some((area, rect));
        }
    }
    // Pixel contours run through pixel centres; a one-pixel-wide edge still has width.
    let mut r = best.map(|(_, r)| r).unwrap_or(RotRect {
        cx: 0.0,
        cy: 0.0,
        w: 0.0,
        h: 0.0,
        angle: 0.0,
    });
    r.w += 1.0;
    r.h += 1.0;
    normalize_angle(r)
}

/// Put the angle in (-π/4, π/4], swapping sides so `w` stays the side along it.
fn normalize_angle(mut r: RotRect) -> RotRect {
    use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI};
    let mut a = r.angle.rem_euclid(PI); // [0, π)
    if a > FRAC_PI_2 + FRAC_PI_4 {
        a -= PI;
    }
    if a > FRAC_PI_4 {
        a -= FRAC_PI_2;
        std::mem::swap(&mut r.w, &mut r.h);
    }
    r.angle = a;
    r
}

fn box_score(prob: &[f32], pw: usize, ph: usize, corners: &[[f32; 2]; 4]) -> f32 {
    let xs = corners.iter().map(|c| c[0]);
    let ys = corners.iter().map(|c| c[1]);
    let x0 = xs
        .clone()
        .fold(f32::MAX, f32::min)
        .floor()
        .clamp(0.0, pw as f32 - 1.0) as usize;
    let x1 = xs
        .fold(f32::MIN, f32::max)
        .ceil()
        .clamp(0.0, pw as f32 - 1.0) as usize;
    let y0 = ys
        .clone()
        .fold(f32::MAX, f32::min)
        .floor()
        .clamp(0.0, ph as f32 - 1.0) as usize;
    let y1 = ys
        .fold(f32::MIN, f32::max)
        .ceil()
        .clamp(0.0, ph as f32 - 1.0) as usize;
    let (mut sum, mut n) = (0f64, 0usize);
    for y in y0..=y1 {
        for x in x0..=x1 {
            if inside(corners, x as f32, y as f32) {
                sum += f64::from(prob[y * pw + x]);
                n += 1;
            }
        }
    }
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

/// Point in a convex quadrilateral (either winding), edges included.
fn inside(q: &[[f32; 2]; 4], x: f32, y: f32) -> bool {
    let mut sign = 0f32;
    for i in 0..4 {
        let (a, b) = (q[i], q[(i + 1) % 4]);
        let cross = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
        if cross.abs() < 0.5 {
            continue;
        }
        if sign == 0.0 {
            sign = cross.signum();
        } else if cross.signum() != sign {
            return false;
        }
    }
    true
}

/// Top to bottom; boxes on one line (within 10 px) left to right.
fn sort_reading_order(boxes: &mut [[[f32; 2]; 4]]) {
    boxes.sort_by(|a, b| {
        a[0][1]
            .total_cmp(&b[0][1])
            .then(a[0][0].total_cmp(&b[0][0]))
    });
    for i in 1..boxes.len() {
        let mut j = i;
        while j > 0
            && (boxes[j][0][1] - boxes[j - 1][0][1]).abs() < 10.0
            && boxes[j][0][0] < boxes[j - 1][0][0]
        {
            boxes.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// Perspective crop of a quadrilateral (tl, tr, br, bl) to an upright rectangle.
pub fn crop_quad(img: &RgbImage, q: &[[f32; 2]; 4]) -> RgbImage {
    let dist = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let w = dist(q[0], q[1]).max(dist(q[2], q[3])).round().max(1.0) as u32;
    let h = dist(q[0], q[3]).max(dist(q[1], q[2])).round().max(1.0) as u32;
    let dst = [
        (0.0, 0.0),
        (w as f32, 0.0),
        (w as f32, h as f32),
        (0.0, h as f32),
    ];
    let src = q.map(|[x, y]| (x, y));
    let Some(proj) = Projection::from_control_points(dst, src) else {
        // Degenerate quad: fall back to its bounding box.
        let x0 = q.iter().map(|c| c[0]).fold(f32::MAX, f32::min).max(0.0) as u32;
        let y0 = q.iter().map(|c| c[1]).fold(f32::MAX, f32::min).max(0.0) as u32;
        return image::imageops::crop_imm(img, x0, y0, w, h).to_image();
    };
    let (iw, ih) = (img.width() as f32, img.height() as f32);
    ImageBuffer::from_fn(w, h, |x, y| {
        let (sx, sy) = proj * (x as f32 + 0.5, y as f32 + 0.5);
        bilinear(
            img,
            (sx - 0.5).clamp(0.0, iw - 1.0),
            (sy - 0.5).clamp(0.0, ih - 1.0),
        )
    })
}

fn bilinear(img: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = (
        (x0 + 1).min(img.width() - 1),
        (y0 + 1).min(img.height() - 1),
    );
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let p = |xx, yy| img.get_pixel(xx, yy).0;
    let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
    Rgb(std::array::from_fn(|i| {
        let top = a[i] as f32 * (1.0 - fx) + b[i] as f32 * fx;
        let bot = c[i] as f32 * (1.0 - fx) + d[i] as f32 * fx;
        (top * (1.0 - fy) + bot * fy).round() as u8
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctc_collapses_repeats_and_blanks() {
        let chars: Vec<String> = ["", "A", "B"].iter().map(|s| s.to_string()).collect();
        // steps: A A blank A B
        let probs = [
            0.1, 0.9, 0.0, 0.2, 0.8, 0.0, 0.9, 0.1, 0.0, 0.1, 0.7, 0.2, 0.0, 0.0, 1.0,
        ];
        let (text, score) = ctc_decode(&probs, 5, 3, &chars);
        assert_eq!(text, "AAB");
        assert!((score - (0.9 + 0.7 + 1.0) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn min_rect_of_a_rotated_rectangle() {
        let a = 0.3f32;
        let (s, c) = a.sin_cos();
        let pts: Vec<Point<f32>> = [(-50.0, -10.0), (50.0, -10.0), (50.0, 10.0), (-50.0, 10.0)]
            .iter()
            .map(|&(x, y)| Point::new(100.0 + x * c - y * s, 100.0 + x * s + y * c))
            .collect();
        let r = min_rect(&pts);
        assert!(
            (r.w - 101.0).abs() < 0.5 && (r.h - 21.0).abs() < 0.5,
            "{r:?}"
        );
        assert!((r.angle - a).abs() < 1e-3, "{r:?}");
        let q = r.corners();
        assert!(q[0][0] < q[1][0] && q[0][1] < q[3][1]);
        assert!(inside(&q, 100.0, 100.0) && !inside(&q, 0.0, 0.0));
    }
}
