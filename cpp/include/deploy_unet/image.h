// Images and NCHW tensors for the deploy-unet C++ runtime: PNG (libpng) and JPEG (libjpeg / libjpeg-turbo)
// when CMake found them, binary PGM/PPM (P5/P6, 8-bit) always, and .npy.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace deploy_unet {

// An image, interleaved HWC: C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA. 8-bit samples live in `pixels`;
// a 16-bit PNG keeps its samples in `pixels16` (bit_depth 16), scaled by 1/65535 like the Python side.
struct Image {
    int width = 0;
    int height = 0;
    int channels = 0;
    int bit_depth = 8;
    std::vector<std::uint8_t> pixels;
    std::vector<std::uint16_t> pixels16;
};

// Which codecs this build has (libpng / libjpeg found at configure time).
bool png_supported();
bool jpeg_supported();

// Read PNG, JPEG or PGM/PPM, chosen by the file's first bytes (not its name). PNG: palettes expand to RGB
// (RGBA with a tRNS chunk), grey below 8 bits expands to 8, 16-bit samples are kept, no gamma is applied (as
// Pillow). JPEG: grey or RGB (libjpeg's default decoding, as Pillow); EXIF orientation is not applied.
// Throws std::runtime_error with the reason (and, for a codec this build lacks, which package to install).
Image read_image(const std::string& path);
Image read_png(const std::string& path, bool palette_indices = false);  // true: an indexed PNG's raw indices
Image read_jpeg(const std::string& path);
// Write a PNG (1-4 channels, 8 or 16 bit), or an indexed PNG of class ids with the VOC palette attached
// (what `deploy-unet predict` writes as NAME.mask.png). Atomic: temp file, then rename.
void write_png(const std::string& path, const Image& image);
void write_mask_png(const std::string& path, const Image& mask);
// By extension: .png -> write_png (write_mask_png when `mask`), .pgm/.ppm -> write_pnm.
void write_image(const std::string& path, const Image& image, bool mask = false);

// The PASCAL VOC colour map (class 0 black, 1 (128,0,0), 2 (0,128,0), ...), as deploy_unet/visualize.py.
std::array<std::uint8_t, 768> voc_palette();

// A dense float32 tensor in C order (NCHW for images).
struct Tensor {
    std::vector<std::int64_t> shape;
    std::vector<float> data;

    std::int64_t numel() const;
};

// Read a binary PGM (P5) or PPM (P6) with maxval 255. Throws std::runtime_error with the reason.
Image read_pnm(const std::string& path);
// Write P5 for 1 channel, P6 for 3 channels.
void write_pnm(const std::string& path, const Image& image);

// Minimal .npy (format 1.0, little-endian float32 '<f4', C order) so Python compares outputs directly.
Tensor read_npy(const std::string& path);
void write_npy(const std::string& path, const Tensor& tensor);

}  // namespace deploy_unet
