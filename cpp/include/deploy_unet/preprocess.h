// Pre- and post-processing with the same rules as the Python side (deploy_unet/shapes.py):
// pixels / 255, then (x - mean) / std per channel; pad bottom/right to a multiple of the divisor
// (reflect = numpy 'reflect', the edge pixel is not repeated); crop back; argmax over classes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "deploy_unet/image.h"

namespace deploy_unet {

enum class PadMode { kReflect, kEdge, kConstant };

PadMode parse_pad_mode(const std::string& name);  // "reflect" | "edge" | "constant"

// HWC uint8 image -> 1xCxHxW float32. Empty mean/std mean 0/1; otherwise one value per channel.
Tensor normalize(const Image& image, const std::vector<float>& mean, const std::vector<float>& stddev);

// Index in [0, n) that numpy.pad would read for position i (i >= n) of a padded axis.
std::int64_t source_index(std::int64_t i, std::int64_t n, PadMode mode);

// Pad the last two dims of an NCHW tensor up to multiples of divisor (bottom/right).
Tensor pad_to_multiple(const Tensor& x, int divisor, PadMode mode = PadMode::kReflect, float value = 0.0f);

// Keep the top-left height x width of the last two dims.
Tensor crop(const Tensor& x, std::int64_t height, std::int64_t width);

// 1xKxHxW logits -> HxW class mask (first maximum wins, as numpy.argmax). K must be <= 256.
Image argmax_mask(const Tensor& logits);

}  // namespace deploy_unet
