//! Hostile or degenerate inputs give typed errors naming the input, never panics.

use std::path::PathBuf;

use viper_processor::{ImageLoader, Origin, PreprocessorConfig, Processor, ProcessorError, RgbImage};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/processor").join(rel)
}

/// A GIF with a `screen` logical screen and one black `frame` at the origin (sizes little-endian).
fn gif(screen: [u8; 4], frame: [u8; 4]) -> Vec<u8> {
    let mut bytes = b"GIF89a".to_vec();
    bytes.extend(screen);
    bytes.extend([0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, b',', 0, 0, 0, 0]);
    bytes.extend(frame);
    bytes.extend([0, 2, 2, 0x44, 1, 0, b';']);
    bytes
}

fn mamba_processor() -> Processor {
    let pinpoints = (1..=15).flat_map(|x| (1..=15).filter(move |y| x * y <= 16).map(move |y| (x * 56, y * 56)));
    Processor::new(pinpoints.collect(), 56, 14, PreprocessorConfig::default()).unwrap()
}

#[test]
fn empty_input() {
    let err = ImageLoader::default().decode(&[]).unwrap_err();
    assert!(matches!(err, ProcessorError::Empty { origin: Origin::Memory }), "{err}");

    let file = tempfile::NamedTempFile::new().unwrap();
    let err = ImageLoader::default().open(file.path()).unwrap_err();
    assert!(matches!(err, ProcessorError::Empty { .. }), "{err}");
    assert!(err.to_string().contains(&file.path().display().to_string()), "{err}");
}

#[test]
fn missing_file() {
    let err = ImageLoader::default().open("/nonexistent/cat.png").unwrap_err();
    assert!(matches!(err, ProcessorError::Io { .. }), "{err}");
    assert!(err.to_string().starts_with("/nonexistent/cat.png: cannot read"), "{err}");
}

#[test]
fn wrong_magic() {
    let err = ImageLoader::default().decode(b"definitely not an image").unwrap_err();
    assert!(err.to_string().contains("unrecognised signature"), "{err}");
    // Recognised by the `image` crate, but not a format this crate decodes.
    let err = ImageLoader::default().decode(b"qoif\0\0\0\x01\0\0\0\x01\x03\0").unwrap_err();
    assert!(matches!(&err, ProcessorError::UnsupportedFormat { format, .. } if format == "Qoi"), "{err}");
}

#[test]
fn truncated_files() {
    for name in ["rgb.png", "rgb.jpg", "lossy.webp", "anim.gif", "rgb.bmp", "rgb.tif"] {
        let path = fixture(&format!("decode/{name}"));
        let bytes = std::fs::read(&path).unwrap();
        for cut in [12, 30, bytes.len() / 3, bytes.len() / 2] {
            match ImageLoader::default().decode(&bytes[..cut]) {
                Err(ProcessorError::Decode { origin: Origin::Memory, .. }) => {}
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let png = std::fs::read(fixture("decode/rgb.png")).unwrap();
    std::fs::write(file.path(), &png[..png.len() / 2]).unwrap();
    let err = ImageLoader::default().open(file.path()).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: cannot decode Png", file.path().display())), "{err}");
}

#[test]
fn zero_sized_images() {
    let err = ImageLoader::default().decode(&gif([0; 4], [0; 4])).unwrap_err();
    assert!(matches!(err, ProcessorError::NoPixels { width: 0, height: 0, .. }), "{err}");
    let err = ImageLoader::default().open(fixture("bad/zero.png")).unwrap_err();
    assert!(err.to_string().contains("zero.png"), "{err}");
    let err = mamba_processor().process(&RgbImage::new(0, 5)).unwrap_err();
    assert!(matches!(err, ProcessorError::NoPixels { width: 0, height: 5, .. }), "{err}");
}

#[test]
fn pixel_limit_is_checked_from_the_header() {
    let small = ImageLoader { max_pixels: 29 * 17 - 1, ..Default::default() };
    let err = small.open(fixture("decode/rgb.png")).unwrap_err();
    assert!(matches!(err, ProcessorError::TooManyPixels { width: 29, height: 17, max_pixels: 492, .. }), "{err}");
    assert!(ImageLoader { max_pixels: 29 * 17, ..Default::default() }.open(fixture("decode/rgb.png")).is_ok());

    // Headers claiming gigapixels over a few bytes of data are refused before decoding.
    let err = ImageLoader::default().open(fixture("bad/bomb.png")).unwrap_err();
    assert!(matches!(err, ProcessorError::TooManyPixels { width: 60000, height: 60000, .. }), "{err}");
    assert!(err.to_string().contains("bomb.png: 60000x60000 image has 3600000000 pixels"), "{err}");
    let err = ImageLoader::default().decode(&gif([0xff; 4], [1, 0, 1, 0])).unwrap_err();
    assert!(matches!(err, ProcessorError::TooManyPixels { width: 65535, height: 65535, .. }), "{err}");
}

#[test]
fn one_pixel_wide_and_high_images_work() {
    let image = ImageLoader::default().decode(&gif([1, 0, 1, 0], [1, 0, 1, 0])).unwrap();
    assert_eq!(image.dimensions(), (1, 1));
    let processor = mamba_processor();
    // Beyond 15:1 (1x841) no pinpoint keeps a whole pixel: every effective area truncates to 0 and
    // upstream falls back to the least wasteful pinpoint; so do we.
    for (w, h) in [(1, 1), (1, 40), (200, 1), (1, 840), (1, 841), (1, 100_000), (100_000, 1)] {
        let out = processor.process(&RgbImage::from_pixel(w, h, image::Rgb([7, 8, 9]))).unwrap();
        assert_eq!(out.shape[0], out.geometry.num_crops(), "{w}x{h}");
        assert_eq!(out.pixel_values.len(), out.shape.iter().product::<usize>());
    }
    assert_eq!(processor.geometry((1, 841)).unwrap().best_resolution, (56, 56));
}

/// Every prefix of the fixture JPEGs that cuts into their scan data fails as in Pillow 10.4 ("image
/// file is truncated"), down to a missing end marker; data cut short but ended by an EOI decodes, as
/// in Pillow.
#[test]
fn truncated_jpegs_fail_like_pillow() {
    for name in ["rgb.jpg", "grey.jpg"] {
        let bytes = std::fs::read(fixture(&format!("decode/{name}"))).unwrap();
        assert!(ImageLoader::default().decode(&bytes).is_ok(), "{name}");
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        for cut in sos..bytes.len() {
            match ImageLoader::default().decode(&bytes[..cut]) {
                Err(ProcessorError::Decode { format, source, .. }) => {
                    assert_eq!(format, "Jpeg");
                    assert!(
                        cut < sos + 14 || source.to_string().contains("truncated"),
                        "{name} cut at {cut}: {source}"
                    );
                }
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
        let mut repaired = bytes[..(sos + bytes.len()) / 2].to_vec();
        repaired.extend([0xFF, 0xD9]);
        assert!(ImageLoader::default().decode(&repaired).is_ok(), "{name} cut then ended by EOI");
    }
}

#[test]
fn byte_and_dimension_limits() {
    let png = std::fs::read(fixture("decode/rgb.png")).unwrap();
    let small = ImageLoader { max_bytes: png.len() as u64 - 1, ..Default::default() };
    let err = small.decode(&png).unwrap_err();
    assert!(matches!(err, ProcessorError::TooManyBytes { origin: Origin::Memory, .. }), "{err}");
    let err = small.open(fixture("decode/rgb.png")).unwrap_err();
    assert!(
        matches!(&err, ProcessorError::TooManyBytes { max_bytes, .. } if *max_bytes == png.len() as u64 - 1),
        "{err}"
    );
    let narrow = ImageLoader { max_dimension: 28, ..Default::default() };
    let err = narrow.open(fixture("decode/rgb.png")).unwrap_err();
    assert!(matches!(err, ProcessorError::DimensionTooLarge { width: 29, height: 17, max_dimension: 28, .. }), "{err}");
    assert!(ImageLoader { max_dimension: 29, ..Default::default() }.open(fixture("decode/rgb.png")).is_ok());
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cat.png");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = ImageLoader::default().open(&fifo).unwrap_err();
    assert!(matches!(err, ProcessorError::File(viper_io::FileError::NotAFile { .. })), "{err}");
    let err = ImageLoader::default().open("/dev/zero").unwrap_err();
    assert!(matches!(err, ProcessorError::File(viper_io::FileError::NotAFile { .. })), "{err}");
}

/// Every prefix of every decode fixture that Pillow 10.4 refuses (`truncation.json`, written by
/// `tests/generator/gen_truncation.py`) is refused here too: no truncated image decodes silently.
#[test]
fn truncated_prefixes_fail_like_pillow() {
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("truncation.json")).unwrap()).unwrap();
    let mut stricter = 0;
    for (name, entry) in table.as_object().unwrap() {
        let bytes = std::fs::read(fixture(&format!("decode/{name}"))).unwrap();
        assert_eq!(entry["len"].as_u64(), Some(bytes.len() as u64), "{name}: regenerate truncation.json");
        let accepts = |cut: usize| {
            entry["pillow_accepts"].as_array().unwrap().iter().any(|r| {
                let (a, b) = (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize);
                (a..=b).contains(&cut)
            })
        };
        for cut in 1..=bytes.len() {
            let ours = ImageLoader::default().decode(&bytes[..cut]);
            match (accepts(cut), ours) {
                (false, Ok(_)) => panic!("{name} cut to {cut} of {} bytes decodes; Pillow refuses it", bytes.len()),
                (true, Err(_)) => stricter += 1,
                _ => {}
            }
        }
    }
    // Refused here, decoded by Pillow: PNGs missing their IEND, BMPs missing the last row's padding,
    // a JPEG missing only its EOI (see `ImageLoader`).
    assert!(stricter < 250, "{stricter}");
}
