//! Fallback text reading with the Tesseract binary (Debian `tesseract-ocr`, `tesseract-ocr-eng`),
//! used when the ONNX models are absent.

use std::io::Write;
use std::process::{Command, Stdio};

use image::RgbImage;

use crate::Error;
use crate::ocr::Line;

/// Whether a `tesseract` binary can be run.
pub fn available() -> bool {
    Command::new("tesseract")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Read lines with `tesseract stdin stdout --psm 3 tsv` (automatic page segmentation).
pub fn read(img: &RgbImage) -> Result<Vec<Line>, Error> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::Runtime(format!("encoding for tesseract: {e}")))?;
    let mut child = Command::new("tesseract")
        .args(["stdin", "stdout", "--psm", "3", "-l", "eng", "tsv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Runtime(format!("running tesseract: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&png)
            .map_err(|e| Error::Runtime(format!("tesseract stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Runtime(format!("tesseract: {e}")))?;
    if !out.status.success() {
        return Err(Error::Runtime(format!(
            "tesseract exited with {}",
            out.status
        )));
    }
    Ok(parse_tsv(&String::from_utf8_lossy(&out.stdout)))
}

/// Words (level 5) grouped into lines by (block, paragraph, line).
/// (block, paragraph, line), words, word scores, bounding box.
type LineAcc = ((u32, u32, u32), Vec<String>, Vec<f32>, [f32; 4]);

/// Words (level 5) grouped into lines.
pub fn parse_tsv(tsv: &str) -> Vec<Line> {
    let mut lines: Vec<LineAcc> = Vec::new();
    for row in tsv.lines().skip(1) {
        let f: Vec<&str> = row.split('\t').collect();
        if f.len() < 12 || f[0] != "5" {
            continue;
        }
        let n = |i: usize| f[i].trim().parse::<f32>().unwrap_or(0.0);
        let text = f[11].trim();
        if text.is_empty() || n(10) < 0.0 {
            continue;
        }
        let key = (n(2) as u32, n(3) as u32, n(4) as u32);
        let (x, y, w, h) = (n(6), n(7), n(8), n(9));
        match lines.iter_mut().find(|l| l.0 == key) {
            Some(l) => {
                l.1.push(text.into());
                l.2.push(n(10) / 100.0);
                l.3 = [
                    l.3[0].min(x),
                    l.3[1].min(y),
                    l.3[2].max(x + w),
                    l.3[3].max(y + h),
                ];
            }
            None => lines.push((
                key,
                vec![text.into()],
                vec![n(10) / 100.0],
                [x, y, x + w, y + h],
            )),
        }
    }
    lines
        .into_iter()
        .map(|(_, words, scores, [x0, y0, x1, y1])| Line {
            text: words.join(" "),
            score: scores.iter().sum::<f32>() / scores.len().max(1) as f32,
            corners: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_words_into_lines() {
        let tsv = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n\
                   5\t1\t1\t1\t1\t1\t10\t20\t30\t10\t90\tMODEL\n\
                   5\t1\t1\t1\t1\t2\t50\t21\t40\t10\t80\tPC210\n\
                   5\t1\t2\t1\t1\t1\t10\t60\t30\t10\t70\tKOMATSU\n";
        let lines = super::parse_tsv(tsv);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "MODEL PC210");
        assert!((lines[0].score - 0.85).abs() < 1e-6);
        assert_eq!(lines[0].corners[2], [90.0, 31.0]);
    }
}
