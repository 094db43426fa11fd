// unet_preprocess IMAGE.pgm|ppm OUT.npy [--mean a,b,c] [--std a,b,c] [--divisor N] [--pad-mode reflect]
// Normalizes and pads exactly as unet_infer does before TensorRT, and writes the 1xCxHxW float32 tensor,
// so the Python tests can compare it with deploy_unet's own preprocessing.
#include <iostream>

#include "args.h"
#include "deploy_unet/image.h"
#include "deploy_unet/preprocess.h"

int main(int argc, char** argv) {
    using namespace deploy_unet;
    try {
        deploy_unet_tools::Args args(argc, argv);
        if (args.positional.size() != 2) {
            std::cerr << "usage: unet_preprocess IMAGE.pgm|ppm OUT.npy [--mean a,b,c] [--std a,b,c] [--divisor N] "
                         "[--pad-mode reflect|edge|constant]\n";
            return 2;
        }
        const Image image = read_pnm(args.positional[0]);
        Tensor x = normalize(image, deploy_unet_tools::parse_floats(args.get("mean", "")),
                             deploy_unet_tools::parse_floats(args.get("std", "")));
        x = pad_to_multiple(x, std::stoi(args.get("divisor", "1")), parse_pad_mode(args.get("pad-mode", "reflect")));
        write_npy(args.positional[1], x);
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
