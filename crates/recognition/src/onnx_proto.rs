//! Just enough protobuf for ONNX files: read `metadata_props` (the recogniser's character table)
//! and write a tiny model (the test classifier) without a protobuf dependency.

/// Read a varint at `*pos`.
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Top-level fields of a message: (field number, wire type, payload for length-delimited).
fn fields(buf: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(buf, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                out.push((field, buf.get(pos..end)?));
                pos = end;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The value of `ModelProto.metadata_props[key]` (field 14, `StringStringEntryProto{key=1,value=2}`).
pub fn metadata_value(model: &[u8], key: &str) -> Option<String> {
    for (field, payload) in fields(model)? {
        if field != 14 {
            continue;
        }
        let entry = fields(payload)?;
        let k = entry.iter().find(|(f, _)| *f == 1).map(|(_, v)| *v);
        if k == Some(key.as_bytes()) {
            let v = entry.iter().find(|(f, _)| *f == 2).map(|(_, v)| *v)?;
            return String::from_utf8(v.to_vec()).ok();
        }
    }
    None
}

/// A protobuf writer.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    pub fn int(&mut self, field: u64, v: i64) -> &mut Self {
        self.varint(field << 3);
        self.varint(v as u64);
        self
    }
    pub fn bytes(&mut self, field: u64, v: &[u8]) -> &mut Self {
        self.varint((field << 3) | 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, field: u64, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }
    pub fn msg(&mut self, field: u64, f: impl FnOnce(&mut Writer)) -> &mut Self {
        let mut w = Writer::default();
        f(&mut w);
        self.bytes(field, &w.0)
    }
}

/// A float tensor initializer (`TensorProto`: dims=1, data_type=2 (1 = FLOAT), name=8, raw_data=9).
fn tensor(w: &mut Writer, name: &str, dims: &[i64], data: &[f32]) {
    for d in dims {
        w.int(1, *d);
    }
    w.int(2, 1);
    w.str(8, name);
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.bytes(9, &raw);
}

/// `ValueInfoProto` of a float tensor with the given dims (`None` = symbolic `N`).
fn value_info(w: &mut Writer, name: &str, dims: &[Option<i64>]) {
    w.str(1, name);
    w.msg(2, |t| {
        t.msg(1, |tt| {
            tt.int(1, 1);
            tt.msg(2, |shape| {
                for d in dims {
                    shape.msg(1, |dim| match d {
                        Some(v) => {
                            dim.int(1, *v);
                        }
                        None => {
                            dim.str(2, "N");
                        }
                    });
                }
            });
        });
    });
}

fn node(
    w: &mut Writer,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: impl FnOnce(&mut Writer),
) {
    for i in inputs {
        w.str(1, i);
    }
    for o in outputs {
        w.str(2, o);
    }
    w.str(4, op);
    attrs(w);
}

/// A tiny image classifier: `image [1,3,H,W]` → GlobalAveragePool → Flatten → Gemm(`weights`
/// `[3,K]`, `bias [K]`) → Softmax → `probabilities [1,K]`. It classifies by mean colour; the tests
/// use it to exercise the classifier slot with a real ONNX file.
pub fn mean_colour_classifier(size: u32, weights: &[[f32; 3]], bias: &[f32]) -> Vec<u8> {
    let k = weights.len() as i64;
    // Gemm B is [3, K] row-major.
    let mut b = vec![0f32; 3 * weights.len()];
    for (j, row) in weights.iter().enumerate() {
        for c in 0..3 {
            b[c * weights.len() + j] = row[c];
        }
    }
    let mut m = Writer::default();
    m.int(1, 8); // ir_version
    m.str(2, "recognition-tests"); // producer_name
    m.msg(7, |g| {
        g.msg(1, |n| {
            node(n, "GlobalAveragePool", &["image"], &["pooled"], |_| {})
        });
        g.msg(1, |n| {
            node(n, "Flatten", &["pooled"], &["flat"], |a| {
                // AttributeProto: name=1, i=3, type=20 (2 = INT)
                a.msg(5, |at| {
                    at.str(1, "axis").int(3, 1).int(20, 2);
                });
            })
        });
        g.msg(1, |n| {
            node(n, "Gemm", &["flat", "W", "B"], &["logits"], |_| {})
        });
        g.msg(1, |n| {
            node(n, "Softmax", &["logits"], &["probabilities"], |a| {
                a.msg(5, |at| {
                    at.str(1, "axis").int(3, 1).int(20, 2);
                });
            })
        });
        g.str(2, "mean_colour_classifier");
        g.msg(5, |t| tensor(t, "W", &[3, k], &b));
        g.msg(5, |t| tensor(t, "B", &[k], bias));
        g.msg(11, |v| {
            value_info(
                v,
                "image",
                &[
                    Some(1),
                    Some(3),
                    Some(i64::from(size)),
                    Some(i64::from(size)),
                ],
            )
        });
        g.msg(12, |v| value_info(v, "probabilities", &[Some(1), Some(k)]));
    });
    m.msg(8, |o| {
        o.str(1, "").int(2, 13);
    }); // opset_import
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metadata_written_by_the_writer() {
        let mut m = Writer::default();
        m.int(1, 8);
        m.msg(14, |e| {
            e.str(1, "other").str(2, "x");
        });
        m.msg(14, |e| {
            e.str(1, "character").str(2, "a\nb");
        });
        assert_eq!(metadata_value(&m.0, "character").as_deref(), Some("a\nb"));
        assert_eq!(metadata_value(&m.0, "missing"), None);
        assert_eq!(metadata_value(&[0xff], "character"), None);
    }
}
