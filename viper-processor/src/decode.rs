//! Image decoding to RGB8 the way upstream does it: `Image.open(path).convert("RGB")` (Pillow 10.4).
//!
//! Conversion rules, checked against Pillow by the fixtures:
//! - alpha is dropped, never composited; grey is replicated to R = G = B; palettes are expanded
//!   (a transparent palette entry keeps its colour);
//! - 16-bit grey is clipped to 255 (Pillow opens it as `I;16`, whose conversion to `L` saturates),
//!   other 16-bit images keep the high byte (Pillow's `RGB;16B`-style raw modes);
//! - no EXIF orientation, no ICC or gamma handling; GIF and animated PNG give their first frame.
//!
//! Known differences from Pillow: JPEG is decoded by `zune-jpeg`, whose IDCT / chroma upsampling differ
//! from libjpeg-turbo by a few levels on some pixels (lossy WebP matches libwebp exactly); a GIF whose
//! first frame does not cover the logical screen gets black outside it (Pillow paints the background
//! colour). CMYK JPEGs and floating-point TIFFs follow the `image` crate's conversions, unchecked.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::Path;

use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Limits, Pixel, RgbImage};

use crate::error::{Origin, ProcessorError, Result};

/// Pillow's default `Image.MAX_IMAGE_PIXELS` (1024 * 1024 * 1024 // 4 // 3); large enough for
/// 2352x2352 (5.5 MP) and ordinary photographs.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Bytes per allowed pixel granted to the decoder's allocations (16-bit RGBA, the widest format decoded
/// here); never less than the `image` crate's default budget of 512 MiB.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Formats this crate decodes.
const SUPPORTED: [ImageFormat; 6] =
    [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::Tiff];

/// Decodes PNG, JPEG, WebP, GIF (first frame), BMP and TIFF files to RGB8 like Pillow's
/// `Image.open(..).convert("RGB")`, refusing images above a pixel limit before decoding them.
///
/// ```no_run
/// # fn f() -> viper_processor::Result<()> {
/// let image = viper_processor::ImageLoader::default().open("photo.jpg")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLoader {
    /// Largest `width * height` accepted, checked against the header before any pixel is decoded;
    /// decoder allocations are capped at 8 bytes per allowed pixel (at least 512 MiB).
    pub max_pixels: u64,
}

impl Default for ImageLoader {
    fn default() -> Self {
        Self { max_pixels: DEFAULT_MAX_PIXELS }
    }
}

impl ImageLoader {
    /// Decode the image file at `path`; the format is detected from its content, not its extension.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<RgbImage> {
        let origin = Origin::File(path.as_ref().to_path_buf());
        let io = |source| ProcessorError::Io { origin: origin.clone(), source };
        let file = File::open(path.as_ref()).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        self.load(BufReader::new(file), len, origin)
    }

    /// Decode an encoded image held in memory.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage> {
        self.load(Cursor::new(bytes), bytes.len() as u64, Origin::Memory)
    }

    fn load(&self, reader: impl BufRead + Seek, len: u64, origin: Origin) -> Result<RgbImage> {
        if len == 0 {
            return Err(ProcessorError::Empty { origin });
        }
        let mut reader = ImageReader::new(reader)
            .with_guessed_format()
            .map_err(|source| ProcessorError::Io { origin: origin.clone(), source })?;
        let format = match reader.format() {
            Some(format) if SUPPORTED.contains(&format) => format,
            other => {
                let format = other.map_or_else(|| "unrecognised signature".into(), |f| format!("{f:?}"));
                return Err(ProcessorError::UnsupportedFormat { origin, format });
            }
        };
        let decode_error =
            |source| ProcessorError::Decode { origin: origin.clone(), format: format!("{format:?}"), source };
        let mut limits = Limits::default();
        limits.max_alloc = limits.max_alloc.max(Some(self.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL)));
        reader.limits(limits.clone());

        let decoder = reader.into_decoder().map_err(decode_error)?;
        let (width, height) = decoder.dimensions();
        if width == 0 || height == 0 {
            return Err(ProcessorError::NoPixels { origin, width, height });
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            let max_pixels = self.max_pixels;
            return Err(ProcessorError::TooManyPixels { origin, width, height, max_pixels });
        }
        limits.reserve(decoder.total_bytes()).map_err(decode_error)?;
        let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
        log::debug!("{origin}: decoded {format:?} {width}x{height} {:?}", image.color());
        Ok(to_rgb8(image))
    }
}

/// Pillow's `convert("RGB")` of what Pillow's decoders would have produced (see the module docs).
fn to_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(grey) => map_pixels(&grey, |c| [c[0].min(255) as u8; 3]),
        DynamicImage::ImageLumaA16(grey) => map_pixels(&grey, |c| [(c[0] >> 8) as u8; 3]),
        DynamicImage::ImageRgb16(rgb) => map_pixels(&rgb, high_bytes),
        DynamicImage::ImageRgba16(rgba) => map_pixels(&rgba, high_bytes),
        // 8-bit grey / grey+alpha / RGBA: replicate grey, drop alpha, as Pillow does (floats: `image` rules).
        other => other.to_rgb8(),
    }
}

fn high_bytes(c: &[u16]) -> [u8; 3] {
    [c[0], c[1], c[2]].map(|v| (v >> 8) as u8)
}

fn map_pixels<P: Pixel<Subpixel = u16>>(image: &ImageBuffer<P, Vec<u16>>, rgb: impl Fn(&[u16]) -> [u8; 3]) -> RgbImage {
    let data = image.pixels().flat_map(|p| rgb(p.channels())).collect();
    RgbImage::from_raw(image.width(), image.height(), data).expect("3 bytes per pixel")
}
