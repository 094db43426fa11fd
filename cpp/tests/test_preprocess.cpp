// ctest: pre/post-processing, image and .npy round trips, JSON reading. No TensorRT, no framework.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <utility>

#include "deploy_unet/image.h"
#include "deploy_unet/json.h"
#include "deploy_unet/preprocess.h"

using namespace deploy_unet;

static int failures = 0;
#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n"; \
            ++failures;                                                              \
        }                                                                            \
    } while (0)

static void test_reflect_matches_numpy_rule() {
    // numpy.pad(arange(3), (0, 7), 'reflect') == [0 1 2 1 0 1 2 1 0 1]
    const int expected[] = {0, 1, 2, 1, 0, 1, 2, 1, 0, 1};
    for (int i = 0; i < 10; ++i) CHECK(source_index(i, 3, PadMode::kReflect) == expected[i]);
    CHECK(source_index(5, 1, PadMode::kReflect) == 0);
    CHECK(source_index(7, 3, PadMode::kEdge) == 2);
    CHECK(source_index(7, 3, PadMode::kConstant) == -1);
}

static void test_pad_and_crop() {
    Tensor x;
    x.shape = {1, 1, 2, 3};
    x.data = {1, 2, 3, 4, 5, 6};
    const Tensor p = pad_to_multiple(x, 4, PadMode::kReflect);
    CHECK((p.shape == std::vector<std::int64_t>{1, 1, 4, 4}));
    // numpy.pad(x, ((0, 2), (0, 1)), "reflect"): columns 1 2 3 | 2, rows 0 1 | 0 1 (n = 2 has period 2)
    const float expected[] = {1, 2, 3, 2, 4, 5, 6, 5, 1, 2, 3, 2, 4, 5, 6, 5};
    for (int i = 0; i < 16; ++i) CHECK(p.data[i] == expected[i]);
    const Tensor c = crop(p, 2, 3);
    CHECK(c.data == x.data);
    const Tensor same = pad_to_multiple(x, 1);
    CHECK(same.data == x.data);
    const Tensor k = pad_to_multiple(x, 4, PadMode::kConstant, -1.0f);
    CHECK(k.data[3] == -1.0f && k.data[15] == -1.0f && k.data[0] == 1.0f);
}

static void test_normalize_and_argmax() {
    Image img;
    img.width = 2;
    img.height = 1;
    img.channels = 3;
    img.pixels = {255, 0, 51, 0, 255, 102};  // HWC
    const Tensor t = normalize(img, {0.5f, 0.5f, 0.0f}, {0.5f, 0.5f, 0.2f});
    CHECK((t.shape == std::vector<std::int64_t>{1, 3, 1, 2}));
    CHECK(std::fabs(t.data[0] - 1.0f) < 1e-6f && std::fabs(t.data[1] + 1.0f) < 1e-6f);   // channel 0
    CHECK(std::fabs(t.data[4] - 1.0f) < 1e-6f && std::fabs(t.data[5] - 2.0f) < 1e-5f);   // channel 2: 0.2/0.2, 0.4/0.2
    Tensor logits;
    logits.shape = {1, 3, 1, 3};
    logits.data = {0, 5, 1, /**/ 2, 5, 0, /**/ 1, 0, 3};  // ties go to the first class
    const Image mask = argmax_mask(logits);
    CHECK(mask.pixels == (std::vector<std::uint8_t>{1, 0, 2}));
}

static void test_files_round_trip(const std::string& dir) {
    Image img;
    img.width = 3;
    img.height = 2;
    img.channels = 3;
    for (int i = 0; i < 18; ++i) img.pixels.push_back(static_cast<std::uint8_t>(i * 13));
    write_pnm(dir + "/rt.ppm", img);
    const Image back = read_pnm(dir + "/rt.ppm");
    CHECK(back.width == 3 && back.height == 2 && back.channels == 3 && back.pixels == img.pixels);

    Tensor t;
    t.shape = {1, 2, 2, 2};
    for (int i = 0; i < 8; ++i) t.data.push_back(i * 0.5f - 1.0f);
    write_npy(dir + "/rt.npy", t);
    const Tensor u = read_npy(dir + "/rt.npy");
    CHECK(u.shape == t.shape && u.data == t.data);

    bool threw = false;
    try {
        read_pnm(dir + "/rt.npy");
    } catch (const std::runtime_error&) {
        threw = true;
    }
    CHECK(threw);
}

static Image make_image(int width, int height, int channels, int bit_depth) {
    Image img;
    img.width = width;
    img.height = height;
    img.channels = channels;
    img.bit_depth = bit_depth;
    const int n = width * height * channels;
    for (int i = 0; i < n; ++i) {
        if (bit_depth == 16) img.pixels16.push_back(static_cast<std::uint16_t>((i * 4099 + 7) % 65536));
        else img.pixels.push_back(static_cast<std::uint8_t>((i * 37 + 11) % 256));
    }
    return img;
}

static void test_png_round_trip(const std::string& dir) {
    if (!png_supported()) {
        std::cout << "PNG round trip skipped: this build has no libpng\n";
        return;
    }
    for (const auto& [channels, depth] : {std::pair<int, int>{1, 8}, {2, 8}, {3, 8}, {4, 8}, {1, 16}}) {
        const Image img = make_image(7, 5, channels, depth);
        const std::string path = dir + "/rt_" + std::to_string(channels) + "_" + std::to_string(depth) + ".png";
        write_png(path, img);
        const Image back = read_image(path);  // by content, not by name
        CHECK(back.width == 7 && back.height == 5 && back.channels == channels && back.bit_depth == depth);
        CHECK(back.pixels == img.pixels && back.pixels16 == img.pixels16);
    }
    // An indexed mask: the ids come back as they were, and the palette expands them to the VOC colours.
    Image mask = make_image(6, 4, 1, 8);
    for (auto& v : mask.pixels) v = static_cast<std::uint8_t>(v % 21);
    write_mask_png(dir + "/mask.png", mask);
    CHECK(read_png(dir + "/mask.png", /*palette_indices=*/true).pixels == mask.pixels);
    const Image colours = read_image(dir + "/mask.png");
    const auto palette = voc_palette();
    CHECK(colours.channels == 3);
    for (std::size_t p = 0; p < mask.pixels.size(); ++p)
        for (int ch = 0; ch < 3; ++ch) CHECK(colours.pixels[3 * p + ch] == palette[3 * mask.pixels[p] + ch]);
    CHECK(palette[3 * 15] == 192 && palette[3 * 15 + 1] == 128 && palette[3 * 15 + 2] == 128);  // VOC "person"
    bool threw = false;
    try {
        read_image(dir + "/rt.npy");  // not an image at all
    } catch (const std::runtime_error&) {
        threw = true;
    }
    CHECK(threw);
}

static void test_channel_rules() {
    Image grey = make_image(3, 2, 1, 8);
    const Tensor rgb = to_model_input(grey, 3, {}, {});
    CHECK((rgb.shape == std::vector<std::int64_t>{1, 3, 2, 3}));
    for (int p = 0; p < 6; ++p) CHECK(rgb.data[p] == rgb.data[6 + p] && rgb.data[p] == rgb.data[12 + p]);
    CHECK(rgb.data[1] == grey.pixels[1] / 255.0f);
    Image rgba = make_image(2, 2, 4, 8);
    Image rgb_only = rgba;
    rgb_only.channels = 3;
    rgb_only.pixels.clear();
    for (std::size_t p = 0; p < 4; ++p)
        for (int ch = 0; ch < 3; ++ch) rgb_only.pixels.push_back(rgba.pixels[4 * p + ch]);
    CHECK(to_model_input(rgba, 3, {0.5f}, {0.25f}).data == to_model_input(rgb_only, 3, {0.5f}, {0.25f}).data);
    const Tensor luma = to_model_input(rgb_only, 1, {}, {});
    const float expected = 0.299f * (rgb_only.pixels[0] / 255.0f) + 0.587f * (rgb_only.pixels[1] / 255.0f) +
                           0.114f * (rgb_only.pixels[2] / 255.0f);
    CHECK(std::fabs(luma.data[0] - expected) < 1e-7f);
    Image deep = make_image(2, 1, 1, 16);
    deep.pixels16 = {65535, 257};
    const Tensor d = to_model_input(deep, 1, {}, {});
    CHECK(d.data[0] == 1.0f && std::fabs(d.data[1] - 1.0f / 255.0f) < 1e-7f);  // 257 / 65535 = 1 / 255
    bool threw = false;
    try {
        to_model_input(rgb_only, 4, {}, {});  // RGB for a 4-channel net: refused, not guessed
    } catch (const std::runtime_error&) {
        threw = true;
    }
    CHECK(threw);
    Tensor binary;
    binary.shape = {1, 1, 1, 3};
    binary.data = {-1.0f, 0.0f, 2.0f};
    CHECK(argmax_mask(binary).pixels == (std::vector<std::uint8_t>{0, 0, 1}));  // one channel: logit > 0
}

static void test_json() {
    const Json doc = Json::parse(
        R"({"format": "deploy-unet-engine-manifest/1", "model": {"divisor": 16, "mean": [0.485, 0.456, 0.406],)"
        R"( "name": "caf\u00e9 \"q\"", "ok": true, "none": null}, "list": []})");
    CHECK(doc.at_path("model.divisor").as_number() == 16);
    CHECK(doc.at_path("model.mean").as_float_vector().size() == 3);
    CHECK(doc.at_path("model.name").as_string() == "caf\xc3\xa9 \"q\"");
    CHECK(doc.at_path("model.ok").as_bool());
    CHECK(doc.at_path("model.none").is_null());
    CHECK(doc["list"].as_array().empty());
    bool threw = false;
    try {
        Json::parse("{\"a\": [1, 2,}");
    } catch (const std::runtime_error&) {
        threw = true;
    }
    CHECK(threw);
}

static void test_tile_geometry() {
    // 23 pixels, tiles of 12 losing 6 (b = 3 per side), divisor 4: pad 3 rounded up to 4 on top, skip 1 output
    // pixel, stride (6 - 1) rounded down to 4, ceil(23 / 4) = 6 tiles; the last one reads 5 * 4 + 12 = 32 =
    // 4 + 23 + 5 padded pixels.
    const TileAxis a = tile_axis(23, 12, 6, 4);
    CHECK(a.pad_before == 4 && a.skip == 1 && a.step == 4 && a.count == 6 && a.pad_after == 5);
    const TileAxis same = tile_axis(64, 32, 0, 8);  // a padded net: no border, stride = tile
    CHECK(same.pad_before == 0 && same.skip == 0 && same.step == 32 && same.count == 2 && same.pad_after == 0);
    bool threw = false;
    try {
        tile_axis(23, 8, 6, 4);  // 2 output pixels, 1 skipped: cannot advance by 4
    } catch (const std::runtime_error&) {
        threw = true;
    }
    CHECK(threw);
    // numpy.pad(arange(3), (4, 0), 'reflect') == [0 1 2 1 | 0 1 2]; wider than the image keeps reflecting.
    const int before[] = {0, 1, 2, 1};
    for (int i = 0; i < 4; ++i) CHECK(mirror_index(i - 4, 3) == before[i]);
    CHECK(mirror_index(-3, 1) == 0 && mirror_index(9, 3) == 1);
}

static void test_tile_stitching_with_a_crop_net() {
    // A fake net that drops the border (what a valid net does to the geometry): stitching must give the
    // image back exactly, whatever the tile size and batch.
    Tensor x;
    x.shape = {2, 3, 23, 17};
    x.data.resize(static_cast<std::size_t>(x.numel()));
    for (std::size_t i = 0; i < x.data.size(); ++i) x.data[i] = static_cast<float>(i) * 0.5f - 7.0f;
    int calls = 0, tiles_seen = 0, largest = 0;
    const auto crop_net = [&](const Tensor& t) {
        ++calls;
        tiles_seen += static_cast<int>(t.shape[0]);
        largest = std::max(largest, static_cast<int>(t.shape[0]));
        Tensor out;
        const std::int64_t n = t.shape[0], c = t.shape[1], h = t.shape[2] - 6, w = t.shape[3] - 6;
        out.shape = {n, c, h, w};
        for (std::int64_t p = 0; p < n * c; ++p)
            for (std::int64_t i = 0; i < h; ++i)
                for (std::int64_t j = 0; j < w; ++j)
                    out.data.push_back(t.data[(p * t.shape[2] + i + 3) * t.shape[3] + j + 3]);
        return out;
    };
    const Tensor y = tile_infer(x, 12, 16, 6, 4, 5, crop_net);
    CHECK(y.shape == x.shape);
    CHECK(y.data == x.data);
    // rows: 6 tiles (stride 4); cols: tile 16 gives 10, skip 1, stride 8: 3 tiles; 2 images: 36 tiles, 5 a call.
    CHECK(tiles_seen == 36 && largest == 5 && calls == 8);
}

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : ".";
    if (argc > 2 && std::string(argv[2]) == "png") {  // ctest "png_round_trip": only this part, skipped without libpng
        if (!png_supported()) {
            std::cout << "skipped: this build has no libpng (apt install libpng-dev, re-run cmake)\n";
            return 77;
        }
        test_png_round_trip(dir);
        std::cout << (failures ? "PNG round trip failed\n" : "PNG round trip passed\n");
        return failures ? 1 : 0;
    }
    test_reflect_matches_numpy_rule();
    test_pad_and_crop();
    test_normalize_and_argmax();
    test_files_round_trip(dir);
    test_png_round_trip(dir);
    test_channel_rules();
    test_json();
    test_tile_geometry();
    test_tile_stitching_with_a_crop_net();
    if (failures) {
        std::cerr << failures << " check(s) failed\n";
        return 1;
    }
    std::cout << "all checks passed\n";
    return 0;
}
