// unet_preprocess IMAGE OUT.npy [--in-channels C] [--mean a,b,c] [--std a,b,c] [--divisor N] [--pad-mode reflect]
//                 [--tile-size HxW --border B --divisor D]
// IMAGE: PNG, JPEG (when built with libpng/libjpeg) or PGM/PPM. --in-channels: the model's channel count
// (default: the image's colour channels); grey/RGB/RGBA are adapted to it as deploy_unet/processing.py does.
// Normalizes and pads exactly as unet_infer does before TensorRT, and writes the 1xCxHxW float32 tensor,
// so the Python tests can compare it with deploy_unet's own preprocessing. With --tile-size it instead
// writes the mirror-padded image unet_infer --tile cuts its tiles from, and prints the tile geometry
// ("rows|cols count step skip pad_before pad_after") for comparison with deploy_unet/runtime/tiling.py.
#include <iostream>
#include <utility>

#include "args.h"
#include "deploy_unet/image.h"
#include "deploy_unet/preprocess.h"

int main(int argc, char** argv) {
    using namespace deploy_unet;
    try {
        deploy_unet_tools::Args args(argc, argv);
        if (args.positional.size() != 2) {
            std::cerr << "usage: unet_preprocess IMAGE OUT.npy [--in-channels C] [--mean a,b,c] [--std a,b,c] "
                         "[--divisor N] [--pad-mode reflect|edge|constant] [--tile-size HxW --border B --divisor D]\n";
            return 2;
        }
        const Image image = read_image(args.positional[0]);
        const int colour = image.channels == 2 ? 1 : image.channels == 4 ? 3 : image.channels;
        Tensor x = to_model_input(image, std::stoi(args.get("in-channels", std::to_string(colour))),
                                  deploy_unet_tools::parse_floats(args.get("mean", "")),
                                  deploy_unet_tools::parse_floats(args.get("std", "")));
        const std::string tile = args.get("tile-size", "");
        if (!tile.empty()) {
            const auto xpos = tile.find('x');
            const std::int64_t th = std::stoll(tile.substr(0, xpos));
            const std::int64_t tw = xpos == std::string::npos ? th : std::stoll(tile.substr(xpos + 1));
            const std::int64_t border = std::stoll(args.get("border", "0"));
            const std::int64_t divisor = std::stoll(args.get("divisor", "1"));
            const TileAxis rows = tile_axis(x.shape[2], th, border, divisor), cols = tile_axis(x.shape[3], tw, border, divisor);
            for (const auto& [name, a] : {std::pair<const char*, TileAxis>{"rows", rows}, {"cols", cols}})
                std::cout << name << " " << a.count << " " << a.step << " " << a.skip << " " << a.pad_before << " "
                          << a.pad_after << "\n";
            write_npy(args.positional[1], mirror_pad(x, rows.pad_before, rows.pad_after, cols.pad_before, cols.pad_after));
            return 0;
        }
        x = pad_to_multiple(x, std::stoi(args.get("divisor", "1")), parse_pad_mode(args.get("pad-mode", "reflect")));
        write_npy(args.positional[1], x);
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
