// unet_infer MODEL.engine IMAGE MASK.png|pgm [--device N] [--pad-mode reflect] [--tile 1 [--tile-size HxW]]
// IMAGE: PNG, JPEG (when built with libpng/libjpeg) or PGM/PPM; 8 or 16 bit, grey, RGB or RGBA, adapted to the
// model's channels as deploy_unet/processing.py does. Reads MODEL.engine.json (written by `deploy-unet
// build-engine`) for the input/output names, divisor and normalization; normalizes, pads to the divisor (not for
// a pad-in-graph engine), runs TensorRT, crops, argmaxes, writes the mask: an indexed PNG (pixel = class id, VOC
// palette, as `deploy-unet predict`) or a PGM.
// --tile 1: overlap-tile inference (a valid-convolution UNet, whose output is smaller than its input):
// mirror-pad, run tiles of a valid size (default: the export size) in batches, stitch a full-size mask.
#include <iostream>

#include "args.h"
#include "deploy_unet/image.h"
#include "deploy_unet/json.h"
#include "deploy_unet/preprocess.h"
#include "deploy_unet/trt_engine.h"

int main(int argc, char** argv) {
    using namespace deploy_unet;
    try {
        deploy_unet_tools::Args args(argc, argv);
        if (args.positional.size() != 3) {
            std::cerr << "usage: unet_infer MODEL.engine IMAGE MASK.png|pgm [--device N] "
                         "[--pad-mode reflect|edge|constant] [--tile 1 [--tile-size HxW]]\n";
            return 2;
        }
        const std::string engine_path = args.positional[0];
        const EngineModelInfo info = read_engine_model_info(engine_path + ".json");
        const Image image = read_image(args.positional[1]);
        const Tensor x = to_model_input(image, info.in_channels, info.mean, info.stddev);
        const bool tile = args.get("tile", "0") != "0";
        if (info.border > 0 && !tile)
            throw std::runtime_error("the engine's output is " + std::to_string(info.border) +
                                     " pixels smaller than its input (valid convolutions); pass --tile 1");

        TrtEngine engine(engine_path, std::stoi(args.get("device", "0")), info.library, info.runs_on);
        Tensor logits;
        if (tile) {
            std::int64_t th = 0, tw = 0;
            const std::string size = args.get("tile-size", "");
            if (!size.empty()) {
                const auto xpos = size.find('x');
                th = std::stoll(size.substr(0, xpos));
                tw = xpos == std::string::npos ? th : std::stoll(size.substr(xpos + 1));
            } else if (info.export_shape.size() == 4) {
                th = info.export_shape[2];
                tw = info.export_shape[3];
            } else {
                throw std::runtime_error("the manifest records no export shape; pass --tile-size HxW");
            }
            if (!info.is_valid_size(th) || !info.is_valid_size(tw))
                throw std::runtime_error("tile " + std::to_string(th) + "x" + std::to_string(tw) +
                                         " is not a valid input size of the engine (" + std::to_string(info.divisor) +
                                         "k + " + std::to_string(info.size_remainder) + " >= " +
                                         std::to_string(info.min_size) + "); pass a valid --tile-size");
            const std::int64_t batch = info.max_batch > 0 ? info.max_batch : 1;
            logits = tile_infer(x, th, tw, info.border, info.divisor, batch, [&](const Tensor& tiles) {
                return engine.run(info.input_name, tiles, info.output_name);
            });
        } else {
            // A pad-in-graph engine takes any H, W and pads inside; otherwise pad here with the same rule.
            const int host_divisor = info.pad_in_graph ? 1 : info.divisor;
            const Tensor padded = pad_to_multiple(x, host_divisor, parse_pad_mode(args.get("pad-mode", "reflect")));
            logits = crop(engine.run(info.input_name, padded, info.output_name), image.height, image.width);
        }
        const Image mask = argmax_mask(logits);
        write_image(args.positional[2], mask, /*mask=*/true);
        std::cout << "wrote " << args.positional[2] << " (" << mask.width << "x" << mask.height << ", "
                  << info.num_classes << " classes)\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
