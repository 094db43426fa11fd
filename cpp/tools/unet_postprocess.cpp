// unet_postprocess LOGITS.npy MASK.png|pgm --height H --width W
// Crops 1xKxH'xW' logits back to HxW and writes the argmax class mask: an indexed PNG with the VOC palette
// (pixel value = class id, as `deploy-unet predict` writes it), or an 8-bit PGM.
#include <iostream>

#include "args.h"
#include "deploy_unet/image.h"
#include "deploy_unet/preprocess.h"

int main(int argc, char** argv) {
    using namespace deploy_unet;
    try {
        deploy_unet_tools::Args args(argc, argv);
        if (args.positional.size() != 2 || !args.options.count("height") || !args.options.count("width")) {
            std::cerr << "usage: unet_postprocess LOGITS.npy MASK.png|pgm --height H --width W\n";
            return 2;
        }
        const Tensor logits = read_npy(args.positional[0]);
        const Tensor cropped = crop(logits, std::stoll(args.get("height", "")), std::stoll(args.get("width", "")));
        write_image(args.positional[1], argmax_mask(cropped), /*mask=*/true);
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
