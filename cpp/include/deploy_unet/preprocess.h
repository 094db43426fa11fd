// Pre- and post-processing with the same rules as the Python side (deploy_unet/shapes.py):
// pixels / 255, then (x - mean) / std per channel; pad bottom/right to a multiple of the divisor
// (reflect = numpy 'reflect', the edge pixel is not repeated); crop back; argmax over classes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "deploy_unet/image.h"

namespace deploy_unet {

enum class PadMode { kReflect, kEdge, kConstant };

PadMode parse_pad_mode(const std::string& name);  // "reflect" | "edge" | "constant"

// HWC uint8 image -> 1xCxHxW float32. Empty mean/std mean 0/1; otherwise one value per channel.
Tensor normalize(const Image& image, const std::vector<float>& mean, const std::vector<float>& stddev);

// Any image (8 or 16 bit; grey, grey + alpha, RGB, RGBA) -> 1 x in_channels x H x W float32, the rules of
// deploy_unet/processing.py in the same float32 operations: samples / 255 (16 bit: / 65535); alpha dropped;
// grey -> RGB repeated, RGB -> grey as 0.299 R + 0.587 G + 0.114 B; then (x - mean) / std. Other channel
// combinations throw. Empty mean/std: none; else one value, or one per model channel.
Tensor to_model_input(const Image& image, int in_channels, const std::vector<float>& mean,
                      const std::vector<float>& stddev);

// Index in [0, n) that numpy.pad would read for position i (i >= n) of a padded axis.
std::int64_t source_index(std::int64_t i, std::int64_t n, PadMode mode);

// Pad the last two dims of an NCHW tensor up to multiples of divisor (bottom/right).
Tensor pad_to_multiple(const Tensor& x, int divisor, PadMode mode = PadMode::kReflect, float value = 0.0f);

// Keep the top-left height x width of the last two dims.
Tensor crop(const Tensor& x, std::int64_t height, std::int64_t width);

// -- overlap-tile inference (the same geometry as deploy_unet/runtime/tiling.py) ----------------------
// A net that loses `border` pixels (b = border / 2 per side, a valid-convolution UNet) gives tile - border
// output pixels per tile. Tiles must start at image positions that are multiples of the divisor D (2**depth)
// so that every tile pools on the same grid as a whole-image run: the image is mirror-padded by b rounded
// up to a multiple of D on top/left, tile k starts at k * step (a multiple of D) in the padded image, and
// its output pixels [skip, skip + step) land at [k * step, (k + 1) * step) in the image.
struct TileAxis {
    std::int64_t size = 0;        // image pixels
    std::int64_t tile = 0;        // tile input size (a valid input size of the net)
    std::int64_t step = 0;        // tile stride, a multiple of the divisor
    std::int64_t skip = 0;        // tile output pixels dropped before the kept ones
    std::int64_t count = 0;       // number of tiles
    std::int64_t pad_before = 0;  // b rounded up to a multiple of the divisor
    std::int64_t pad_after = 0;   // what the last tile reads beyond the image
};

TileAxis tile_axis(std::int64_t size, std::int64_t tile, std::int64_t border, std::int64_t divisor);

// numpy 'reflect' for any position i (negative too, and beyond 2n): period 2n - 2, the edge not repeated.
std::int64_t mirror_index(std::int64_t i, std::int64_t n);

// Reflect-pad the last two dims of an NCHW tensor (any width, even wider than the image).
Tensor mirror_pad(const Tensor& x, std::int64_t top, std::int64_t bottom, std::int64_t left, std::int64_t right);

// Run `net` (tiles B x C x tile_h x tile_w -> B x K x (tile_h - border) x (tile_w - border)) over NCHW `x`
// in batches of at most max_batch tiles and stitch the N x K x H x W output.
Tensor tile_infer(const Tensor& x, std::int64_t tile_h, std::int64_t tile_w, std::int64_t border, std::int64_t divisor,
                  std::int64_t max_batch, const std::function<Tensor(const Tensor&)>& net);

// 1xKxHxW logits -> HxW class mask (first maximum wins, as numpy.argmax). K must be <= 256. One channel is a
// binary net: class 1 where the logit is > 0 (as deploy_unet.processing.logits_to_mask).
Image argmax_mask(const Tensor& logits);

}  // namespace deploy_unet
