//! Upstream `process_anyres_image` + `CLIPImageProcessor.preprocess`: an image to the
//! `(1 + tiles, 3, S, S)` f32 `pixel_values` of the vision tower.

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;
use serde_json::Value;

use rayon::prelude::*;

use crate::anyres::{parse_pinpoints, AnyResGeometry};
use crate::error::{Origin, ProcessorError, Result};
use crate::limits;
use crate::resample::resize_or_borrow;

/// CLIP's `image_mean`.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's `image_std`.
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The parts of a HuggingFace `CLIPImageProcessor` config (`preprocessor_config.json`, or a Viper
/// config's `vision_preprocessor_config`) that anyres preprocessing uses; missing keys take CLIP's values.
///
/// `resample` and the `do_resize` / `do_center_crop` flags are not read: on the `S`x`S` crops anyres
/// produces, CLIP's resize and centre crop are identities as long as `size` and `crop_size` equal `S`,
/// which [`Processor::new`] checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct PreprocessorConfig {
    /// Per-channel mean (R, G, B), subtracted after rescaling.
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation (R, G, B), divided by after subtracting the mean.
    pub image_std: [f64; 3],
    /// Factor from u8 to the normalised range, `1/255`.
    pub rescale_factor: f64,
    /// Whether to multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// Whether to apply mean / std.
    pub do_normalize: bool,
    /// `size`: `{"shortest_edge": S}` or `{"height": S, "width": S}`; the base image is resized to it.
    pub size: Option<EdgeSizes>,
    /// `crop_size`: `{"height": S, "width": S}`; upstream cuts tiles of `crop_size["height"]`.
    pub crop_size: Option<EdgeSizes>,
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        Self {
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            rescale_factor: 1.0 / 255.0,
            do_rescale: true,
            do_normalize: true,
            size: None,
            crop_size: None,
        }
    }
}

/// A `size` / `crop_size` entry of a preprocessor config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct EdgeSizes {
    /// `shortest_edge`.
    pub shortest_edge: Option<u32>,
    /// `height`.
    pub height: Option<u32>,
    /// `width`.
    pub width: Option<u32>,
}

impl EdgeSizes {
    fn values(&self) -> impl Iterator<Item = u32> {
        [self.shortest_edge, self.height, self.width].into_iter().flatten()
    }
}

/// The keys of a Viper/LLaVA `config.json` that decide its image preprocessing (docs/spec.md §1.1), and in
/// [`resolve`](Self::resolve) the one place where they, the tower's sizes and its
/// `preprocessor_config.json` become a [`Processor`]. `viper-model`'s `LlavaConfig` parses them with
/// the other LLaVA keys; [`Processor::from_config`] reads them from a bare config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AnyResConfig {
    /// `anyres` for Viper, the only mode implemented (absent means anyres).
    #[serde(default)]
    pub image_aspect_ratio: Option<String>,
    /// `[[w, h], …]` or a string form ([`parse_pinpoints`]); required.
    #[serde(default)]
    pub image_grid_pinpoints: Option<Value>,
    /// A copy of the tower's `preprocessor_config.json`.
    #[serde(default)]
    pub vision_preprocessor_config: Option<Value>,
}

impl AnyResConfig {
    /// The processor for tiles of the vision tower's `image_size` = `tile_size` pixels cut into
    /// `patch_size` patches:
    ///
    /// - `image_aspect_ratio` must be `anyres` (or absent); `image_grid_pinpoints` must be present;
    /// - the normalisation (mean, std, rescale) and `size` / `crop_size` come from the tower folder's
    ///   `preprocessor_config.json` when the tower is loaded from a folder (`tower_dir`; CLIP's values
    ///   when the folder has none), else from `vision_preprocessor_config`, else CLIP's values;
    /// - [`Processor::new`] checks the pinpoints and sizes against each other.
    pub fn resolve(&self, tile_size: u32, patch_size: u32, tower_dir: Option<&Path>) -> Result<Processor> {
        match self.image_aspect_ratio.as_deref() {
            Some("anyres") | None => {}
            Some(other) => {
                return Err(ProcessorError::Config(format!(
                    "image_aspect_ratio `{other}` is not supported (Viper uses anyres)"
                )))
            }
        }
        let pinpoints = self.image_grid_pinpoints.as_ref().ok_or_else(|| {
            ProcessorError::Config("anyres needs image_grid_pinpoints, and the config has none".into())
        })?;
        let preprocessor = match (tower_dir, &self.vision_preprocessor_config) {
            (Some(dir), _) => PreprocessorConfig::from_tower_dir(dir)?,
            (None, Some(value)) => PreprocessorConfig::deserialize(value)
                .map_err(|e| ProcessorError::Config(format!("vision_preprocessor_config: {e}")))?,
            (None, None) => PreprocessorConfig::default(),
        };
        Processor::new(parse_pinpoints(pinpoints, tile_size)?, tile_size, patch_size, preprocessor)
    }
}

impl PreprocessorConfig {
    /// `preprocessor_config.json` of a CLIP tower folder, or CLIP's values when the folder has none.
    pub fn from_tower_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        // `exists`, not `is_file`: a FIFO or a device in its place is an error, not CLIP's defaults.
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = viper_io::read_capped_to_string(&path, viper_io::MAX_CONFIG_BYTES).map_err(|e| match e {
            viper_io::FileError::Io { source, .. } => ProcessorError::Io { origin: Origin::File(path.clone()), source },
            other => ProcessorError::File(other),
        })?;
        serde_json::from_str(&text).map_err(|e| ProcessorError::Config(format!("{}: {e}", path.display())))
    }
}

/// CLIP-L/14-336's tile size, used when a config carries no `vision_config`.
const CLIP_IMAGE_SIZE: u32 = 336;
/// CLIP-L/14-336's patch size, used when a config carries no `vision_config`.
const CLIP_PATCH_SIZE: u32 = 14;

/// Anyres preprocessing for one model: grid pinpoints, tile size, patch size, normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Processor {
    pinpoints: Vec<(u32, u32)>,
    tile_size: u32,
    patch_size: u32,
    preprocessor: PreprocessorConfig,
}

/// The vision tower's input for one image, plus the geometry the `spatial_unpad` merge needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// Row-major f32 of [`shape`](Self::shape): the base image first, then the tiles row-major, each
    /// channel-first (R, G, B).
    pub pixel_values: Vec<f32>,
    /// `[1 + tiles, 3, S, S]`.
    pub shape: [usize; 4],
    /// Best resolution, grid, unpad ranges, token count.
    pub geometry: AnyResGeometry,
}

impl Processor {
    /// A processor for `pinpoints` (`(width, height)`, multiples of `tile_size`), tiles of the vision
    /// tower's `image_size` = `tile_size` pixels cut into `patch_size` patches.
    ///
    /// Fails if `tile_size` is not a positive multiple of `patch_size`, a pinpoint is not a positive
    /// multiple of `tile_size`, or the preprocessor's `size` / `crop_size` differ from `tile_size`; and
    /// with [`ProcessorError::Limit`] for more than [`MAX_PINPOINTS`](crate::MAX_PINPOINTS) pinpoints or
    /// a side beyond [`MAX_PINPOINT_SIDE`](crate::MAX_PINPOINT_SIDE).
    pub fn new(
        pinpoints: Vec<(u32, u32)>,
        tile_size: u32,
        patch_size: u32,
        preprocessor: PreprocessorConfig,
    ) -> Result<Self> {
        if patch_size == 0 || tile_size == 0 || !tile_size.is_multiple_of(patch_size) {
            return Err(ProcessorError::Config(format!(
                "image_size {tile_size} is not a positive multiple of patch_size {patch_size}"
            )));
        }
        let value = || format!("{pinpoints:?}");
        if pinpoints.is_empty() {
            return Err(ProcessorError::Pinpoints { value: value(), reason: "empty list".into() });
        }
        limits::check_count(pinpoints.len() as u64)?;
        pinpoints.iter().try_for_each(|&(w, h)| limits::check_side(w.max(h).into()))?;
        if let Some((w, h)) =
            pinpoints.iter().find(|&&(w, h)| w == 0 || h == 0 || w % tile_size != 0 || h % tile_size != 0)
        {
            let reason = format!("{w}x{h} is not a positive multiple of the tile size {tile_size}");
            return Err(ProcessorError::Pinpoints { value: value(), reason });
        }
        let sizes = preprocessor.size.iter().chain(&preprocessor.crop_size);
        if let Some(edge) = sizes.flat_map(EdgeSizes::values).find(|&edge| edge != tile_size) {
            return Err(ProcessorError::Config(format!(
                "preprocessor size/crop_size {edge} differs from the vision tower's image_size {tile_size}"
            )));
        }
        Ok(Self { pinpoints, tile_size, patch_size, preprocessor })
    }

    /// A processor from a Viper/LLaVA `config.json` alone: [`AnyResConfig::resolve`] of its keys, with
    /// the tile and patch size of `vision_config.image_size` / `patch_size` (required in a
    /// `vision_config`; CLIP-L/14-336's 336 / 14 when there is none).
    pub fn from_config(config: &Value) -> Result<Self> {
        let vision = config.get("vision_config");
        if vision.is_none() {
            log::info!("no vision_config in the model config; assuming CLIP-L/14-336 (image 336, patch 14)");
        }
        let size = |key: &str, default: u32| -> Result<u32> {
            let Some(vision) = vision else {
                return Ok(default);
            };
            let value = vision.get(key).unwrap_or(&Value::Null);
            value
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| ProcessorError::Config(format!("vision_config.{key} = {value}")))
        };
        let tile_size = size("image_size", CLIP_IMAGE_SIZE)?;
        let patch_size = size("patch_size", CLIP_PATCH_SIZE)?;
        // A non-string `image_aspect_ratio` is read as absent here.
        let keys = AnyResConfig {
            image_aspect_ratio: config.get("image_aspect_ratio").and_then(Value::as_str).map(str::to_string),
            image_grid_pinpoints: config.get("image_grid_pinpoints").cloned(),
            vision_preprocessor_config: config.get("vision_preprocessor_config").cloned(),
        };
        keys.resolve(tile_size, patch_size, None)
    }

    /// The grid pinpoints `(width, height)`, in the order ties are broken.
    pub fn pinpoints(&self) -> &[(u32, u32)] {
        &self.pinpoints
    }

    /// Tile size `S` in pixels (the vision tower's `image_size`).
    pub fn tile_size(&self) -> u32 {
        self.tile_size
    }

    /// Anyres geometry of an image of `original = (W, H)`, without touching pixels.
    pub fn geometry(&self, original: (u32, u32)) -> Result<AnyResGeometry> {
        AnyResGeometry::new(original, &self.pinpoints, self.tile_size, self.tile_size / self.patch_size)
    }

    /// Upstream `process_anyres_image`: base image resized to `S`x`S` (aspect not kept), then the tiles
    /// of the image resized and padded to the best resolution, each rescaled and normalised.
    ///
    /// Resizes, tiles and rows run in parallel on rayon's global pool (`RAYON_NUM_THREADS` sets its
    /// size); the output does not depend on the number of threads. Tiles are normalised straight from
    /// the resized image, the black padding included, without building the padded canvas or tile images.
    pub fn process(&self, image: &RgbImage) -> Result<ProcessedImage> {
        let geometry = self.geometry(image.dimensions())?;
        let s = self.tile_size;
        let side = s as usize;
        let shape = [geometry.num_crops(), 3, side, side];
        let lut = self.lut();
        let placement = geometry.placement;
        let offset = (placement.offset.0 as usize, placement.offset.1 as usize);
        // Zeroed memory comes from the allocator's fresh pages, touched first by the threads that fill them.
        let mut pixel_values = vec![0f32; shape.iter().product()];
        advise_huge_pages(&mut pixel_values);
        let (base_out, tiles_out) = pixel_values.split_at_mut(3 * side * side);
        // The base crop and the tiles depend only on the source, so neither waits for the other's resize.
        rayon::join(
            || {
                let base = resize_or_borrow(image, s, s);
                Canvas { image: &base, offset: (0, 0) }.normalize_tiles(base_out, side, 1, &lut);
            },
            || {
                let resized = resize_or_borrow(image, placement.size.0, placement.size.1);
                Canvas { image: &resized, offset }.normalize_tiles(tiles_out, side, geometry.grid.0 as usize, &lut);
            },
        );
        log::debug!(
            "anyres {:?} -> best {:?}, grid {:?}, pixel_values {shape:?}",
            geometry.original_size,
            geometry.best_resolution,
            geometry.grid
        );
        Ok(ProcessedImage { pixel_values, shape, geometry })
    }

    /// `CLIPImageProcessor` rescale (`f32(u8 as f64 * factor)`) and normalise (`(x - mean) / std` in
    /// f32) of every u8 value, per channel: the per-pixel arithmetic becomes a lookup, bit for bit.
    fn lut(&self) -> [[f32; 256]; 3] {
        let p = &self.preprocessor;
        let rescale = if p.do_rescale { p.rescale_factor } else { 1.0 };
        std::array::from_fn(|c| {
            let (mean, std) = (p.image_mean[c] as f32, p.image_std[c] as f32);
            std::array::from_fn(|v| {
                let x = (v as f64 * rescale) as f32;
                if p.do_normalize {
                    (x - mean) / std
                } else {
                    x
                }
            })
        })
    }
}

/// Asks Linux to back the whole 2 MiB pages of `buf` with transparent huge pages, when there are at least
/// 8: the output of a large image is otherwise ~16k fresh 4 KiB pages, and faulting them in took longer
/// than filling them (68 MB: 65 ms against 13 ms with the hint on the 2-core dev box). A hint only: the
/// contents are unchanged, and a kernel without THP ignores it.
fn advise_huge_pages(buf: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buf);
        let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if last >= first + 8 * HUGE {
            let ptr = buf.as_mut_ptr().cast::<u8>().wrapping_add(first - start).cast::<libc::c_void>();
            // SAFETY: `first..last` is page-aligned and inside `buf`, which is borrowed exclusively;
            // MADV_HUGEPAGE changes how the kernel backs the range, never its contents. Its result is
            // ignored: a refused hint changes nothing.
            unsafe { libc::madvise(ptr, last - first, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Pixels a parallel normalisation task should hold at least.
const MIN_TASK_PIXELS: usize = 1 << 14;

/// An image pasted at `offset` on an unbounded black canvas (upstream's padded best-resolution image,
/// or the base image at the origin).
struct Canvas<'a> {
    image: &'a RgbImage,
    offset: (usize, usize),
}

impl Canvas<'_> {
    /// Normalised `side`x`side` tiles of the canvas, row-major with `cols` per row, into `out` (a whole
    /// number of `3 * side * side` crops); crops and rows in parallel.
    fn normalize_tiles(&self, out: &mut [f32], side: usize, cols: usize, lut: &[[f32; 256]; 3]) {
        let plane = side * side;
        out.par_chunks_mut(3 * plane).enumerate().for_each(|(tile, out)| {
            let origin = (tile % cols * side, tile / cols * side);
            let (r, gb) = out.split_at_mut(plane);
            let (g, b) = gb.split_at_mut(plane);
            let rows = r.par_chunks_mut(side).zip(g.par_chunks_mut(side)).zip(b.par_chunks_mut(side));
            rows.enumerate().with_min_len((MIN_TASK_PIXELS / side).max(1)).for_each(|(y, ((r, g), b))| {
                self.normalize_row((origin.0, origin.1 + y), [r, g, b], lut);
            });
        });
    }

    /// Normalised channel planes of the canvas row segment starting at `(x, y)`, `out[0].len()` wide.
    fn normalize_row(&self, (x, y): (usize, usize), out: [&mut [f32]; 3], lut: &[[f32; 256]; 3]) {
        let [r, g, b] = out;
        let len = r.len();
        let (width, height) = (self.image.width() as usize, self.image.height() as usize);
        let (ox, oy) = self.offset;
        // Columns of the segment covered by the image: `lead` black pixels, then `count` image pixels.
        let (start, end) = (x.max(ox), (x + len).min(ox + width));
        let (lead, count, first) = match y.checked_sub(oy) {
            Some(row) if row < height && start < end => (start - x, end - start, row * width + start - ox),
            _ => (len, 0, 0),
        };
        let pixels = &self.image.as_raw()[first * 3..(first + count) * 3];
        for (plane, lut) in [&mut *r, &mut *g, &mut *b].into_iter().zip(lut) {
            plane[..lead].fill(lut[0]);
            plane[lead + count..].fill(lut[0]);
        }
        let dst = r[lead..lead + count].iter_mut().zip(&mut g[lead..lead + count]).zip(&mut b[lead..lead + count]);
        for (((r, g), b), p) in dst.zip(pixels.chunks_exact(3)) {
            *r = lut[0][usize::from(p[0])];
            *g = lut[1][usize::from(p[1])];
            *b = lut[2][usize::from(p[2])];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clip_defaults_and_overrides() {
        let p: PreprocessorConfig = serde_json::from_value(json!({"image_mean": [0.5, 0.5, 0.5]})).unwrap();
        assert_eq!(p.image_mean, [0.5; 3]);
        assert_eq!(p.image_std, CLIP_STD);
        assert_eq!(p.rescale_factor, 1.0 / 255.0);
    }

    #[test]
    fn config_without_vision_config_is_clip_l_336() {
        let config = json!({"image_aspect_ratio": "anyres", "image_grid_pinpoints": "[(336, 672), (672, 336)]"});
        let processor = Processor::from_config(&config).unwrap();
        assert_eq!(processor.tile_size(), 336);
        assert_eq!(processor.geometry((100, 200)).unwrap().num_image_tokens(), 576 + 48 * 25);
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        let pinpoints = vec![(56, 56)];
        let err = Processor::new(pinpoints.clone(), 56, 15, PreprocessorConfig::default()).unwrap_err();
        assert!(matches!(err, ProcessorError::Config(_)), "{err}");
        let crop = Some(EdgeSizes { shortest_edge: None, height: Some(336), width: Some(336) });
        let preprocessor = PreprocessorConfig { crop_size: crop, ..Default::default() };
        let err = Processor::new(pinpoints, 56, 14, preprocessor).unwrap_err();
        assert!(err.to_string().contains("336"), "{err}");
        for pinpoints in [vec![(60, 56)], vec![(0, 56)], vec![]] {
            let err = Processor::new(pinpoints, 56, 14, PreprocessorConfig::default()).unwrap_err();
            assert!(matches!(err, ProcessorError::Pinpoints { .. }), "{err}");
        }
        let config = json!({"image_grid_pinpoints": [[56, 56]], "vision_config": {"image_size": 56}});
        let err = Processor::from_config(&config).unwrap_err();
        assert_eq!(err.to_string(), "invalid preprocessing configuration: vision_config.patch_size = null");
        let err = Processor::from_config(&json!({"image_aspect_ratio": "pad"})).unwrap_err();
        assert!(err.to_string().contains("pad"), "{err}");
    }
}
