#include "deploy_unet/preprocess.h"

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
