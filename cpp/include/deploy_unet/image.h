// Images and NCHW tensors for the deploy-unet C++ runtime: binary PGM/PPM (P5/P6, 8-bit) and .npy.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deploy_unet {

// An 8-bit image, interleaved HWC (C = 1 for PGM, 3 for PPM).
struct Image {
    int width = 0;
    int height = 0;
    int channels = 0;
    std::vector<std::uint8_t> pixels;
};

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
