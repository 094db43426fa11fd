#include "deploy_unet/preprocess.h"

#include <algorithm>
#include <stdexcept>

namespace deploy_unet {

PadMode parse_pad_mode(const std::string& name) {
    if (name == "reflect") return PadMode::kReflect;
    if (name == "edge") return PadMode::kEdge;
    if (name == "constant") return PadMode::kConstant;
    throw std::runtime_error("pad mode '" + name + "' is not valid; choose one of: reflect, constant, edge");
}

Tensor normalize(const Image& image, const std::vector<float>& mean, const std::vector<float>& stddev) {
    const int c = image.channels;
    if ((!mean.empty() && static_cast<int>(mean.size()) != c) || (!stddev.empty() && static_cast<int>(stddev.size()) != c))
        throw std::runtime_error("mean/std have " + std::to_string(mean.size()) + "/" + std::to_string(stddev.size()) +
                                 " values but the image has " + std::to_string(c) + " channels");
    Tensor t;
    t.shape = {1, c, image.height, image.width};
    t.data.resize(static_cast<std::size_t>(t.numel()));
    const std::size_t plane = static_cast<std::size_t>(image.height) * image.width;
    for (int ch = 0; ch < c; ++ch) {
        const float m = mean.empty() ? 0.0f : mean[ch];
        const float s = stddev.empty() ? 1.0f : stddev[ch];
        for (std::size_t p = 0; p < plane; ++p) {
            // Same float32 operations, in the same order, as the NumPy side: x / 255, then (x - m) / s.
            const float x = static_cast<float>(image.pixels[p * c + ch]) / 255.0f;
            t.data[ch * plane + p] = (x - m) / s;
        }
    }
    return t;
}

Tensor to_model_input(const Image& image, int in_channels, const std::vector<float>& mean,
                      const std::vector<float>& stddev) {
    int c = image.channels;
    if (c < 1 || c > 4) throw std::runtime_error("image has " + std::to_string(c) + " channels; expected 1 to 4");
    for (const auto* values : {&mean, &stddev})
        if (!values->empty() && values->size() != 1 && static_cast<int>(values->size()) != in_channels)
            throw std::runtime_error("mean/std have " + std::to_string(values->size()) + " values for " +
                                     std::to_string(in_channels) + " channels");
    const bool deep = image.bit_depth == 16;
    const std::size_t plane = static_cast<std::size_t>(image.height) * image.width;
    if ((deep ? image.pixels16.size() : image.pixels.size()) != plane * c)
        throw std::runtime_error("image buffer does not match its size");
    int used = c;  // the colour channels read: alpha (channel 2 of grey + alpha, 4 of RGBA) is dropped
    if (c == 2) used = 1;
    if (c == 4 && in_channels != 4) used = 3;
    if (!(used == in_channels || used == 1 || (used == 3 && in_channels == 1)))
        throw std::runtime_error("image has " + std::to_string(c) + " channels but the model takes " +
                                 std::to_string(in_channels) + "; give grey, RGB or RGBA images");
    const float scale = deep ? 65535.0f : 255.0f;
    const auto sample = [&](std::size_t p, int ch) {
        const std::size_t i = p * c + ch;
        return static_cast<float>(deep ? image.pixels16[i] : image.pixels[i]) / scale;
    };
    Tensor t;
    t.shape = {1, in_channels, image.height, image.width};
    t.data.resize(static_cast<std::size_t>(t.numel()));
    for (int ch = 0; ch < in_channels; ++ch) {
        const float m = mean.empty() ? 0.0f : mean[mean.size() == 1 ? 0 : ch];
        const float s = stddev.empty() ? 1.0f : stddev[stddev.size() == 1 ? 0 : ch];
        for (std::size_t p = 0; p < plane; ++p) {
            float x;
            if (used == in_channels) {
                x = sample(p, ch);
            } else if (used == 1) {
                x = sample(p, 0);
            } else {  // RGB -> grey, left to right as NumPy evaluates it
                x = 0.299f * sample(p, 0) + 0.587f * sample(p, 1);
                x = x + 0.114f * sample(p, 2);
            }
            t.data[ch * plane + p] = (mean.empty() && stddev.empty()) ? x : (x - m) / s;
        }
    }
    return t;
}

std::int64_t source_index(std::int64_t i, std::int64_t n, PadMode mode) {
    if (i < n) return i;
    switch (mode) {
        case PadMode::kEdge:
            return n - 1;
        case PadMode::kConstant:
            return -1;
        case PadMode::kReflect:
        default: {
            if (n == 1) return 0;  // numpy repeats a single sample
            // numpy 'reflect' mirrors about the edge sample without repeating it: period 2 * (n - 1).
            const std::int64_t period = 2 * (n - 1);
            const std::int64_t j = i % period;
            return j < n ? j : period - j;
        }
    }
}

Tensor pad_to_multiple(const Tensor& x, int divisor, PadMode mode, float value) {
    if (x.shape.size() < 2 || divisor < 1) throw std::runtime_error("pad_to_multiple needs a >= 2-D tensor and divisor >= 1");
    const std::int64_t h = x.shape[x.shape.size() - 2], w = x.shape.back();
    const std::int64_t ph = (divisor - h % divisor) % divisor, pw = (divisor - w % divisor) % divisor;
    if (ph == 0 && pw == 0) return x;
    Tensor out;
    out.shape = x.shape;
    out.shape[out.shape.size() - 2] = h + ph;
    out.shape.back() = w + pw;
    out.data.resize(static_cast<std::size_t>(out.numel()));
    const std::int64_t planes = x.numel() / (h * w);
    const std::int64_t H = h + ph, W = w + pw;
    for (std::int64_t p = 0; p < planes; ++p) {
        const float* src = x.data.data() + p * h * w;
        float* dst = out.data.data() + p * H * W;
        for (std::int64_t i = 0; i < H; ++i) {
            const std::int64_t si = source_index(i, h, mode);
            for (std::int64_t j = 0; j < W; ++j) {
                const std::int64_t sj = source_index(j, w, mode);
                dst[i * W + j] = (si < 0 || sj < 0) ? value : src[si * w + sj];
            }
        }
    }
    return out;
}

Tensor crop(const Tensor& x, std::int64_t height, std::int64_t width) {
    const std::int64_t h = x.shape[x.shape.size() - 2], w = x.shape.back();
    if (height > h || width > w) throw std::runtime_error("crop size is larger than the tensor");
    Tensor out;
    out.shape = x.shape;
    out.shape[out.shape.size() - 2] = height;
    out.shape.back() = width;
    out.data.resize(static_cast<std::size_t>(out.numel()));
    const std::int64_t planes = x.numel() / (h * w);
    for (std::int64_t p = 0; p < planes; ++p)
        for (std::int64_t i = 0; i < height; ++i)
            for (std::int64_t j = 0; j < width; ++j)
                out.data[(p * height + i) * width + j] = x.data[(p * h + i) * w + j];
    return out;
}

TileAxis tile_axis(std::int64_t size, std::int64_t tile, std::int64_t border, std::int64_t divisor) {
    if (size < 1) throw std::runtime_error("image size " + std::to_string(size) + " must be at least 1 pixel to tile");
    if (border < 0 || border % 2 != 0 || divisor < 1)
        throw std::runtime_error("border " + std::to_string(border) + " must be even and >= 0, divisor >= 1");
    TileAxis a;
    a.size = size;
    a.tile = tile;
    const std::int64_t out = tile - border, b = border / 2;
    a.pad_before = (b + divisor - 1) / divisor * divisor;
    a.skip = a.pad_before - b;
    a.step = out > a.skip ? (out - a.skip) / divisor * divisor : 0;
    if (a.step < divisor)
        throw std::runtime_error("tile " + std::to_string(tile) + " gives " + std::to_string(out) +
                                 " output pixels, too few to advance by a multiple of " + std::to_string(divisor) +
                                 "; choose a larger --tile-size");
    a.count = (size + a.step - 1) / a.step;
    a.pad_after = (a.count - 1) * a.step + tile - a.pad_before - size;
    return a;
}

std::int64_t mirror_index(std::int64_t i, std::int64_t n) {
    if (n == 1) return 0;
    const std::int64_t period = 2 * (n - 1);
    const std::int64_t j = ((i % period) + period) % period;
    return j < n ? j : period - j;
}

Tensor mirror_pad(const Tensor& x, std::int64_t top, std::int64_t bottom, std::int64_t left, std::int64_t right) {
    if (x.shape.size() < 2) throw std::runtime_error("mirror_pad needs a >= 2-D tensor");
    const std::int64_t h = x.shape[x.shape.size() - 2], w = x.shape.back();
    const std::int64_t H = h + top + bottom, W = w + left + right;
    Tensor out;
    out.shape = x.shape;
    out.shape[out.shape.size() - 2] = H;
    out.shape.back() = W;
    out.data.resize(static_cast<std::size_t>(out.numel()));
    std::vector<std::int64_t> cols(static_cast<std::size_t>(W));
    for (std::int64_t j = 0; j < W; ++j) cols[j] = mirror_index(j - left, w);
    const std::int64_t planes = x.numel() / (h * w);
    for (std::int64_t p = 0; p < planes; ++p)
        for (std::int64_t i = 0; i < H; ++i) {
            const float* src = x.data.data() + (p * h + mirror_index(i - top, h)) * w;
            float* dst = out.data.data() + (p * H + i) * W;
            for (std::int64_t j = 0; j < W; ++j) dst[j] = src[cols[j]];
        }
    return out;
}

Tensor tile_infer(const Tensor& x, std::int64_t tile_h, std::int64_t tile_w, std::int64_t border, std::int64_t divisor,
                  std::int64_t max_batch, const std::function<Tensor(const Tensor&)>& net) {
    if (x.shape.size() != 4) throw std::runtime_error("tile_infer needs an NCHW tensor");
    if (max_batch < 1) throw std::runtime_error("tile batch must be >= 1");
    const std::int64_t n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
    const TileAxis rows = tile_axis(h, tile_h, border, divisor), cols = tile_axis(w, tile_w, border, divisor);
    const std::int64_t OH = tile_h - border, OW = tile_w - border;  // each tile's output
    const Tensor padded = mirror_pad(x, rows.pad_before, rows.pad_after, cols.pad_before, cols.pad_after);
    const std::int64_t PH = padded.shape[2], PW = padded.shape[3];
    struct Place { std::int64_t image, y, x; };
    std::vector<Place> places;
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t ty = 0; ty < rows.count; ++ty)
            for (std::int64_t tx = 0; tx < cols.count; ++tx) places.push_back({i, ty * rows.step, tx * cols.step});
    const std::int64_t SH = rows.count * rows.step, SW = cols.count * cols.step;  // stitched, before the crop
    Tensor stitched;
    for (std::size_t start = 0; start < places.size(); start += static_cast<std::size_t>(max_batch)) {
        const std::size_t end = std::min(places.size(), start + static_cast<std::size_t>(max_batch));
        Tensor tiles;
        tiles.shape = {static_cast<std::int64_t>(end - start), c, tile_h, tile_w};
        tiles.data.resize(static_cast<std::size_t>(tiles.numel()));
        for (std::size_t t = start; t < end; ++t) {
            const Place& pl = places[t];
            for (std::int64_t ch = 0; ch < c; ++ch)
                for (std::int64_t r = 0; r < tile_h; ++r) {
                    const float* src = padded.data.data() + ((pl.image * c + ch) * PH + pl.y + r) * PW + pl.x;
                    float* dst = tiles.data.data() + (((t - start) * c + ch) * tile_h + r) * tile_w;
                    std::copy(src, src + tile_w, dst);
                }
        }
        const Tensor out = net(tiles);
        if (out.shape.size() != 4 || out.shape[0] != tiles.shape[0] || out.shape[2] != OH || out.shape[3] != OW)
            throw std::runtime_error("a " + std::to_string(tile_h) + "x" + std::to_string(tile_w) + " tile gave an output that is not " +
                                     std::to_string(OH) + "x" + std::to_string(OW) +
                                     "; the manifest's border does not describe this engine");
        const std::int64_t k = out.shape[1];
        if (stitched.shape.empty()) {
            stitched.shape = {n, k, SH, SW};
            stitched.data.assign(static_cast<std::size_t>(stitched.numel()), 0.0f);
        }
        for (std::size_t t = start; t < end; ++t) {
            const Place& pl = places[t];
            for (std::int64_t ch = 0; ch < k; ++ch)
                for (std::int64_t r = 0; r < rows.step; ++r) {
                    const float* src = out.data.data() + (((t - start) * k + ch) * OH + rows.skip + r) * OW + cols.skip;
                    float* dst = stitched.data.data() + ((pl.image * k + ch) * SH + pl.y + r) * SW + pl.x;
                    std::copy(src, src + cols.step, dst);
                }
        }
    }
    return crop(stitched, h, w);
}

Image argmax_mask(const Tensor& logits) {
    if (logits.shape.size() != 4 || logits.shape[0] != 1)
        throw std::runtime_error("argmax_mask expects 1xKxHxW logits");
    const std::int64_t k = logits.shape[1], h = logits.shape[2], w = logits.shape[3];
    if (k < 1 || k > 256) throw std::runtime_error("argmax_mask supports 1 to 256 classes");
    Image mask;
    mask.width = static_cast<int>(w);
    mask.height = static_cast<int>(h);
    mask.channels = 1;
    mask.pixels.assign(static_cast<std::size_t>(h * w), 0);
    const std::int64_t plane = h * w;
    if (k == 1) {
        for (std::int64_t p = 0; p < plane; ++p) mask.pixels[p] = logits.data[p] > 0.0f ? 1 : 0;
        return mask;
    }
    for (std::int64_t p = 0; p < plane; ++p) {
        float best = logits.data[p];
        std::int64_t best_k = 0;
        for (std::int64_t c = 1; c < k; ++c) {
            const float v = logits.data[c * plane + p];
            if (v > best) {  // strict: the first maximum wins, as numpy.argmax
                best = v;
                best_k = c;
            }
        }
        mask.pixels[p] = static_cast<std::uint8_t>(best_k);
    }
    return mask;
}

}  // namespace deploy_unet
