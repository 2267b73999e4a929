//! Viper image preprocessing ("anyres"), reproducing upstream `viper/mm_utils.py` (github
//! `EvanZhuang/viper`, docs/spec.md §3) on Pillow 10.4 + HuggingFace `CLIPImageProcessor`, bit for bit.
//!
//! Data flow of [`Processor::process`] for an image of `(W, H)` and tile size `S` (the vision tower's
//! `image_size`):
//!
//! 1. [`ImageLoader`] — decode to RGB8 like `Image.open(path).convert("RGB")`;
//! 2. [`select_best_resolution`] — pick a grid pinpoint;
//! 3. [`resize_and_pad`] — Pillow-BICUBIC resize ([`resize_bicubic`]) into the pinpoint, black padding;
//! 4. [`divide_to_patches`] — `S`x`S` tiles, row-major;
//! 5. base image = the original resized to `S`x`S`; crops = `[base] + tiles`;
//! 6. CLIP rescale + normalise → `(1 + tiles, 3, S, S)` f32 ([`ProcessedImage`]).
//!
//! `process` does 3–6 without building the padded canvas or the tiles (it reads the tiles' pixels from
//! the resized image), in parallel on rayon's pool, with the same output bits on any number of threads.
//!
//! [`AnyResGeometry`] carries what the `spatial_unpad` merge needs (grid, [`Unpad`] ranges, token count)
//! and is available without pixels through [`Processor::geometry`]; it is computed here once per image
//! and `viper-vision`'s merge consumes it as it is.
//!
//! A model's preprocessing (`image_aspect_ratio`, `image_grid_pinpoints`, tile and patch size, the
//! tower's `preprocessor_config.json` or its inline copy) is resolved in one place,
//! [`AnyResConfig::resolve`].
//!
//! ```no_run
//! # fn f() -> viper_processor::Result<()> {
//! let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("config.json").unwrap()).unwrap();
//! let processor = viper_processor::Processor::from_config(&config)?;
//! let image = viper_processor::ImageLoader::default().open("cat.png")?;
//! let processed = processor.process(&image)?;
//! assert_eq!(processed.shape[0], processed.geometry.num_crops());
//! # Ok(()) }
//! ```

mod anyres;
mod decode;
mod error;
mod limits;
mod processor;
mod resample;

pub use anyres::{
    divide_to_patches, parse_pinpoints, resize_and_pad, select_best_resolution, AnyResGeometry, Placement, Unpad,
};
pub use decode::{ImageLoader, DEFAULT_MAX_BYTES, DEFAULT_MAX_DIMENSION, DEFAULT_MAX_PIXELS};
pub use error::{Origin, ProcessorError, Result};
pub use image::RgbImage;
pub use limits::{MAX_PINPOINTS, MAX_PINPOINT_SIDE};
pub use processor::{AnyResConfig, EdgeSizes, PreprocessorConfig, ProcessedImage, Processor, CLIP_MEAN, CLIP_STD};
pub use resample::resize_bicubic;
