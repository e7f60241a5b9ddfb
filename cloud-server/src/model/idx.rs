//! Reader for the IDX files of (Fashion-)MNIST: u8 images (magic 0x0803) and u8 labels (0x0801),
//! optionally gzip-compressed (detected by the gzip magic, decoded by flate2).

use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: bad IDX magic {magic:#010x} (expected {expected:#010x})")]
    Magic { path: String, magic: u32, expected: u32 },
    #[error("{path}: file is truncated (header says {expected} bytes of data, found {found})")]
    Truncated { path: String, expected: usize, found: usize },
    #[error("image index {index} out of range ({count} images)")]
    Index { index: usize, count: usize },
}

/// Images as u8 pixels, row-major, `rows x cols` each.
#[derive(Clone, Debug)]
pub struct Images {
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.rows * self.cols).max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw 8-bit pixels of image `k`, or `None` past the end.
    pub fn pixels(&self, k: usize) -> Option<&[u8]> {
        let n = self.rows * self.cols;
        self.pixels.get(k * n..(k + 1) * n)
    }

    /// Image `k` scaled to [0, 1] (pixel / 255), as the training helper feeds the networks.
    pub fn get(&self, k: usize) -> Result<Vec<f32>, IdxError> {
        let n = self.rows * self.cols;
        if k >= self.len() {
            return Err(IdxError::Index { index: k, count: self.len() });
        }
        Ok(self.pixels[k * n..(k + 1) * n].iter().map(|&p| p as f32 / 255.0).collect())
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>, IdxError> {
    let io = |source| IdxError::Io { path: path.display().to_string(), source };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, data: &[u8], expected: u32, dims: usize) -> Result<Vec<usize>, IdxError> {
    let p = || path.display().to_string();
    let need = 4 + 4 * dims;
    if data.len() < need {
        return Err(IdxError::Truncated { path: p(), expected: need, found: data.len() });
    }
    let word = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    if word(0) != expected {
        return Err(IdxError::Magic { path: p(), magic: word(0), expected });
    }
    let d: Vec<usize> = (0..dims).map(|k| word(4 + 4 * k) as usize).collect();
    let total = d.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).unwrap_or(usize::MAX);
    if data.len() - need < total {
        return Err(IdxError::Truncated { path: p(), expected: total, found: data.len() - need });
    }
    Ok(d)
}

/// Read an `idx3-ubyte` image file.
pub fn read_images(path: &Path) -> Result<Images, IdxError> {
    let data = read_all(path)?;
    let d = header(path, &data, 0x0803, 3)?;
    Ok(Images { rows: d[1], cols: d[2], pixels: data[16..16 + d[0] * d[1] * d[2]].to_vec() })
}

/// Read an `idx1-ubyte` label file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, IdxError> {
    let data = read_all(path)?;
    let d = header(path, &data, 0x0801, 1)?;
    Ok(data[8..8 + d[0]].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_gzip_and_rejects_bad_files() {
        let dir = std::env::temp_dir().join(format!("idx-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        img.extend([0, 255, 51, 102]);
        let plain = dir.join("i.idx");
        std::fs::write(&plain, &img).unwrap();
        let gz = dir.join("i.idx.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &img).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        for p in [&plain, &gz] {
            let im = read_images(p).unwrap();
            assert_eq!(im.len(), 2);
            assert_eq!(im.get(1).unwrap(), vec![0.2, 0.4]);
            assert!(matches!(im.get(2), Err(IdxError::Index { .. })));
        }
        std::fs::write(&plain, &img[..18]).unwrap();
        assert!(matches!(read_images(&plain), Err(IdxError::Truncated { .. })));
        assert!(matches!(read_labels(&gz), Err(IdxError::Magic { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
