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
    let small = ImageLoader { max_pixels: 29 * 17 - 1 };
    let err = small.open(fixture("decode/rgb.png")).unwrap_err();
    assert!(matches!(err, ProcessorError::TooManyPixels { width: 29, height: 17, max_pixels: 492, .. }), "{err}");
    assert!(ImageLoader { max_pixels: 29 * 17 }.open(fixture("decode/rgb.png")).is_ok());

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
