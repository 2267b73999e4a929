//! Parity with Pillow 10.4 and upstream Viper, on the fixtures of `tests/generator/gen_processor.py`.

use std::path::PathBuf;

use serde_json::Value;
use viper_processor::{parse_pinpoints, resize_bicubic, ImageLoader, PreprocessorConfig, Processor, RgbImage, Unpad};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/processor").join(rel)
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

fn pair(v: &Value) -> (u32, u32) {
    (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
}

fn raw_rgb(rel: &Value, size: &Value) -> RgbImage {
    let (w, h) = pair(size);
    RgbImage::from_raw(w, h, std::fs::read(fixture(rel.as_str().unwrap())).unwrap()).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Number of differing bytes and the largest difference.
fn u8_diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .filter(|(x, y)| x != y)
        .fold((0, 0), |(n, m), (x, y)| (n + 1, m.max(x.abs_diff(*y))))
}

#[test]
fn bicubic_resize_is_bit_exact() {
    let cases = json("manifest.json")["resize"].as_array().unwrap().clone();
    assert!(cases.len() >= 15);
    for case in &cases {
        let src = raw_rgb(&case["src"], &case["src_size"]);
        let expected = raw_rgb(&case["dst"], &case["dst_size"]);
        let (w, h) = expected.dimensions();
        let got = resize_bicubic(&src, w, h);
        assert_eq!(u8_diff(&got, &expected), (0, 0), "{}", case["dst"]);
    }
}

#[test]
fn decoding_matches_pillow_convert_rgb() {
    let cases = json("manifest.json")["decode"].as_array().unwrap().clone();
    for case in &cases {
        let path = fixture(case["file"].as_str().unwrap());
        let expected = raw_rgb(&case["expected"], &case["size"]);
        let got = ImageLoader::default().open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, ImageLoader::default().decode(&std::fs::read(&path).unwrap()).unwrap());
        let (n, max) = u8_diff(&got, &expected);
        if case["exact"].as_bool().unwrap() {
            assert_eq!((n, max), (0, 0), "{}", path.display());
        } else {
            // JPEG: zune-jpeg vs Pillow's libjpeg-turbo (see decode.rs); measured max 3.
            assert!(max <= 4, "{}: {n} bytes differ, max {max}", path.display());
        }
    }
}

#[test]
fn anyres_pixel_values_match_pillow_pipeline() {
    let anyres = json("manifest.json")["anyres"].clone();
    let tile = anyres["tile_size"].as_u64().unwrap() as u32;
    let patch = anyres["patch_size"].as_u64().unwrap() as u32;
    let pinpoints = parse_pinpoints(&anyres["pinpoints"], tile).unwrap();
    let processor = Processor::new(pinpoints, tile, patch, PreprocessorConfig::default()).unwrap();
    for case in anyres["cases"].as_array().unwrap() {
        let image = ImageLoader::default().open(fixture(case["image"].as_str().unwrap())).unwrap();
        let out = processor.process(&image).unwrap();
        let shape: Vec<usize> = serde_json::from_value(case["shape"].clone()).unwrap();
        assert_eq!(out.shape.as_slice(), shape, "{}", case["image"]);
        let expected = f32s(&std::fs::read(fixture(case["pixel_values"].as_str().unwrap())).unwrap());
        assert_eq!(max_abs_diff(&out.pixel_values, &expected), 0.0, "{}", case["image"]);
        let g = &out.geometry;
        assert_eq!(g.best_resolution, pair(&case["best_resolution"]));
        assert_eq!(g.grid, pair(&case["grid"]));
        let (rows, cols) = (pair(&case["kept_rows"]), pair(&case["kept_cols"]));
        assert_eq!(
            (g.unpad.rows.clone(), g.unpad.cols.clone()),
            (rows.0 as usize..rows.1 as usize, cols.0 as usize..cols.1 as usize)
        );
        assert_eq!(g.num_image_tokens() as u64, case["num_image_tokens"].as_u64().unwrap());
    }
}

/// Upstream Viper's own `process_images` output for the tiny mamba-s1 reference checkpoint.
#[test]
fn mamba_s1_reference_pixel_values() {
    let processor = Processor::from_config(&json("mamba-s1/config.json")).unwrap();
    assert_eq!((processor.tile_size(), processor.pinpoints().len()), (56, 48));
    let bytes = std::fs::read(fixture("mamba-s1/pixel_values.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cases = json("mamba-s1/cases.json");
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let image =
            ImageLoader::default().open(fixture(&format!("mamba-s1/{}", case["image"].as_str().unwrap()))).unwrap();
        let out = processor.process(&image).unwrap();
        let reference = tensors.tensor(&format!("{name}.pixel_values")).unwrap();
        assert_eq!(out.shape.as_slice(), reference.shape(), "{name}");
        let err = max_abs_diff(&out.pixel_values, &f32s(reference.data()));
        assert!(err <= 1e-6, "{name}: max abs error {err}");

        let g = &out.geometry;
        assert_eq!(g.original_size, pair(&case["image_size"]), "{name}");
        assert_eq!(g.best_resolution, pair(&case["best_resolution"]), "{name}");
        assert_eq!(g.grid, pair(&case["grid_w_h"]), "{name}");
        let Unpad { grid_hw, .. } = &g.unpad;
        let before = pair(&case["feature_grid_before_unpad_h_w"]);
        assert_eq!(*grid_hw, (before.0 as usize, before.1 as usize), "{name}");
        let after = pair(&case["unpadded_h_w"]);
        assert_eq!((g.unpad.height(), g.unpad.width()), (after.0 as usize, after.1 as usize), "{name}");
        assert_eq!((g.side * g.side) as u64, case["base_image_tokens"].as_u64().unwrap(), "{name}");
        assert_eq!(g.num_image_tokens() as u64, case["num_image_tokens"].as_u64().unwrap(), "{name}");
    }
}
