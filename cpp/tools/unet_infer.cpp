// unet_infer MODEL.engine IMAGE.pgm|ppm MASK.pgm [--device N] [--pad-mode reflect]
// Reads MODEL.engine.json (written by `deploy-unet build-engine`) for the input/output names, divisor and
// normalization; normalizes, pads to the divisor (not for a pad-in-graph engine), runs TensorRT, crops, argmaxes,
// writes a PGM mask.
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
            std::cerr << "usage: unet_infer MODEL.engine IMAGE.pgm|ppm MASK.pgm [--device N] "
                         "[--pad-mode reflect|edge|constant]\n";
            return 2;
        }
        const std::string engine_path = args.positional[0];
        const EngineModelInfo info = read_engine_model_info(engine_path + ".json");
        const Image image = read_pnm(args.positional[1]);
        if (image.channels != info.in_channels)
            throw std::runtime_error(args.positional[1] + " has " + std::to_string(image.channels) +
                                     " channels; the model takes " + std::to_string(info.in_channels) +
                                     " (use a " + (info.in_channels == 1 ? "PGM" : "PPM") + " image)");
        const Tensor x = normalize(image, info.mean, info.stddev);
        // A pad-in-graph engine takes any H, W and pads inside; otherwise pad here with the same rule.
        const int host_divisor = info.pad_in_graph ? 1 : info.divisor;
        const Tensor padded = pad_to_multiple(x, host_divisor, parse_pad_mode(args.get("pad-mode", "reflect")));

        TrtEngine engine(engine_path, std::stoi(args.get("device", "0")));
        const Tensor logits = engine.run(info.input_name, padded, info.output_name);
        const Image mask = argmax_mask(crop(logits, image.height, image.width));
        write_pnm(args.positional[2], mask);
        std::cout << "wrote " << args.positional[2] << " (" << mask.width << "x" << mask.height << ", "
                  << info.num_classes << " classes)\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
