//! Loaders for the data sets in the repository's `data/` folder.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// The repository's `data/` folder (resolved at compile time).
pub fn workspace_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("data")
}

/// Images as row-major `f32` pixels in `[0, 1]`, with their labels.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// One row-major image per entry.
    pub images: Vec<Vec<f32>>,
    /// The class of each entry.
    pub labels: Vec<u8>,
}

/// Pima Indians Diabetes: 7 features (npreg, glu, bp, skin, bmi, ped, age)
/// and label 1 for `type = Yes`.
#[derive(Clone, Debug)]
pub struct Pima {
    /// The seven features of each row, in [`PIMA_FEATURES`] order.
    pub features: Vec<[f32; 7]>,
    /// The class of each entry.
    pub labels: Vec<u8>,
}

/// The Pima features, in the order the models take them.
pub const PIMA_FEATURES: [&str; 7] = ["npreg", "glu", "bp", "skin", "bmi", "ped", "age"];

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::MalformedData {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_gz(path: &Path) -> Result<Vec<u8>, ModelError> {
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .map_err(|e| bad(path, format!("gzip: {e}")))?;
    Ok(out)
}

/// Parses an IDX file of unsigned bytes: returns its dimensions and data.
fn parse_idx(
    path: &Path,
    bytes: &[u8],
    want_dims: usize,
) -> Result<(Vec<usize>, Vec<u8>), ModelError> {
    let header = bytes
        .get(..4)
        .ok_or_else(|| bad(path, "shorter than an IDX header"))?;
    if header[0] != 0 || header[1] != 0 || header[2] != 0x08 {
        return Err(bad(path, "not an IDX file of unsigned bytes"));
    }
    let ndim = header[3] as usize;
    if ndim != want_dims {
        return Err(bad(
            path,
            format!("{ndim} dimensions, expected {want_dims}"),
        ));
    }
    let dims_bytes = bytes
        .get(4..4 + 4 * ndim)
        .ok_or_else(|| bad(path, "truncated IDX dimensions"))?;
    let dims: Vec<usize> = dims_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| bad(path, "dimensions overflow"))?;
    let data = &bytes[4 + 4 * ndim..];
    if data.len() != count {
        return Err(bad(
            path,
            format!("{} data bytes for dimensions {dims:?}", data.len()),
        ));
    }
    Ok((dims, data.to_vec()))
}

/// Loads gzipped MNIST IDX images and labels.
pub fn load_mnist(images: &Path, labels: &Path) -> Result<Mnist, ModelError> {
    let (idims, pixels) = parse_idx(images, &read_gz(images)?, 3)?;
    let (ldims, labels_v) = parse_idx(labels, &read_gz(labels)?, 1)?;
    let [n, rows, cols] = idims[..] else {
        return Err(bad(images, "expected 3 dimensions"));
    };
    if ldims.first() != Some(&n) {
        return Err(bad(
            labels,
            format!("{:?} labels for {n} images", ldims.first()),
        ));
    }
    if let Some(l) = labels_v.iter().find(|l| **l > 9) {
        return Err(bad(labels, format!("label {l} is not a digit")));
    }
    let per = rows * cols;
    let images_v = pixels
        .chunks_exact(per.max(1))
        .take(n)
        .map(|img| img.iter().map(|p| f32::from(*p) / 255.0).collect())
        .collect();
    Ok(Mnist {
        rows,
        cols,
        images: images_v,
        labels: labels_v,
    })
}

/// The 10k MNIST set shipped in `data/`.
pub fn load_workspace_mnist() -> Result<Mnist, ModelError> {
    let d = workspace_data_dir();
    load_mnist(
        &d.join("mnist-10k-images-idx3-ubyte.gz"),
        &d.join("mnist-10k-labels-idx1-ubyte.gz"),
    )
}

/// Loads a Pima CSV with header `npreg,glu,bp,skin,bmi,ped,age,type`.
pub fn load_pima(path: &Path) -> Result<Pima, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| bad(path, "empty file"))?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    if cols.len() != 8 || cols[..7] != PIMA_FEATURES || cols[7] != "type" {
        return Err(bad(path, format!("unexpected header {header:?}")));
    }
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [values @ .., label] = fields.as_slice() else {
            return Err(bad(path, format!("line {}: empty", line_no + 1)));
        };
        if values.len() != 7 {
            return Err(bad(
                path,
                format!("line {}: {} fields, expected 8", line_no + 1, fields.len()),
            ));
        }
        let mut row = [0f32; 7];
        for (slot, v) in row.iter_mut().zip(values) {
            *slot = v
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(path, format!("line {}: {v:?} is not a number", line_no + 1)))?;
        }
        let label = match *label {
            "Yes" => 1,
            "No" => 0,
            other => return Err(bad(path, format!("line {}: label {other:?}", line_no + 1))),
        };
        features.push(row);
        labels.push(label);
    }
    Ok(Pima { features, labels })
}

/// Up to `limit` input rows of `width` features for calibration: an IDX
/// image file (MNIST's format, gzipped or not; pixels scaled to [0, 1] as
/// the shipped models expect), or a CSV file whose first `width` columns
/// are the features (a header line and further columns, such as a label,
/// are skipped).
pub fn load_features(path: &Path, width: usize, limit: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let format = if name.contains("idx3-ubyte") {
        FeatureFormat::Idx
    } else {
        FeatureFormat::Csv
    };
    let bytes = if format == FeatureFormat::Idx && name.ends_with(".gz") {
        read_gz(path)?
    } else {
        std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?
    };
    parse_features(path, format, &bytes, width, limit)
}

/// How a calibration file lays out its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureFormat {
    /// IDX unsigned bytes, three dimensions (images × rows × columns).
    Idx,
    /// Comma-separated text, features first.
    Csv,
}

/// [`load_features`] on bytes already read (and unzipped); `path` only
/// names the source in errors. The `--calibration` parser, fuzzed.
pub fn parse_features(
    path: &Path,
    format: FeatureFormat,
    bytes: &[u8],
    width: usize,
    limit: usize,
) -> Result<Vec<Vec<f32>>, ModelError> {
    if format == FeatureFormat::Idx {
        let (dims, pixels) = parse_idx(path, bytes, 3)?;
        let per = dims
            .iter()
            .skip(1)
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or_else(|| bad(path, "dimensions overflow"))?;
        if per != width {
            return Err(bad(
                path,
                format!("images of {per} pixels for a model of {width} inputs"),
            ));
        }
        return Ok(pixels
            .chunks_exact(per.max(1))
            .take(limit)
            .map(|img| img.iter().map(|p| f32::from(*p) / 255.0).collect())
            .collect());
    }
    let text = std::str::from_utf8(bytes).map_err(|e| bad(path, format!("not UTF-8 text: {e}")))?;
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if rows.len() >= limit {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let values: Option<Vec<f32>> = fields
            .iter()
            .take(width)
            .map(|f| f.parse::<f32>().ok().filter(|x| x.is_finite()))
            .collect();
        match values {
            Some(values) if values.len() == width => rows.push(values),
            None if index == 0 => continue,
            _ => {
                return Err(bad(
                    path,
                    format!("line {}: fewer than {width} numeric features", index + 1),
                ));
            }
        }
    }
    if rows.is_empty() {
        return Err(bad(path, "no rows"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("veil-model-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn loads_the_shipped_data() {
        let m = load_workspace_mnist().unwrap();
        assert_eq!(
            (m.images.len(), m.labels.len(), m.rows, m.cols),
            (10_000, 10_000, 28, 28)
        );
        assert!(m.images.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
        // All ten digits occur.
        assert!((0..10).all(|d| m.labels.contains(&d)));
        let tr = load_pima(&workspace_data_dir().join("pima-train.csv")).unwrap();
        let te = load_pima(&workspace_data_dir().join("pima-test.csv")).unwrap();
        assert_eq!((tr.features.len(), te.features.len()), (200, 332));
        assert_eq!(tr.labels.iter().filter(|l| **l == 1).count(), 68);
        assert_eq!(te.labels.iter().filter(|l| **l == 1).count(), 109);
    }

    #[test]
    fn calibration_bytes_parse_or_are_refused() {
        let p = Path::new("cal");
        let csv = parse_features(p, FeatureFormat::Csv, b"a,b,y\n1,2,x\n\n3,4\n", 2, 9);
        assert_eq!(csv.unwrap(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        for (format, bytes) in [
            (FeatureFormat::Csv, &b"\xff,1"[..]),
            (FeatureFormat::Csv, b"1,nan\n"),
            (FeatureFormat::Csv, b"h\n"),
            (
                FeatureFormat::Idx,
                &[0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3],
            ),
            (FeatureFormat::Idx, &[0, 0, 8]),
        ] {
            assert!(
                matches!(
                    parse_features(p, format, bytes, 2, 9),
                    Err(ModelError::MalformedData { .. })
                ),
                "{bytes:?}"
            );
        }
        let idx = [
            0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 255, 51, 0,
        ];
        let images = parse_features(p, FeatureFormat::Idx, &idx, 2, 9).unwrap();
        assert_eq!(images, vec![vec![0.0, 1.0], vec![0.2, 0.0]]);
    }

    #[test]
    fn malformed_files_are_refused() {
        let truncated = temp(
            "img.gz",
            &gz(&[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3]),
        );
        let labels = temp("lab.gz", &gz(&[0, 0, 8, 1, 0, 0, 0, 2, 1, 2]));
        let err = load_mnist(&truncated, &labels).unwrap_err();
        assert!(err.to_string().contains("data bytes"), "{err}");
        let not_gz = temp("plain", b"hello");
        assert!(matches!(
            load_mnist(&not_gz, &labels),
            Err(ModelError::MalformedData { .. })
        ));
        let missing = std::env::temp_dir().join("veil-model-no-such-file.gz");
        assert!(matches!(
            load_mnist(&missing, &labels),
            Err(ModelError::Io { .. })
        ));

        let csv = temp(
            "p.csv",
            b"npreg,glu,bp,skin,bmi,ped,age,type\n1,2,3,4,5,6,7,Maybe\n",
        );
        assert!(load_pima(&csv).unwrap_err().to_string().contains("Maybe"));
        let csv = temp(
            "q.csv",
            b"npreg,glu,bp,skin,bmi,ped,age,type\n1,2,x,4,5,6,7,No\n",
        );
        assert!(load_pima(&csv).unwrap_err().to_string().contains("\"x\""));
        let csv = temp("r.csv", b"npreg,glu,bp,skin,bmi,ped,age,type\n1,2,3,No\n");
        assert!(load_pima(&csv).unwrap_err().to_string().contains("fields"));
        let csv = temp("s.csv", b"a,b\n");
        assert!(load_pima(&csv).unwrap_err().to_string().contains("header"));
    }
}
