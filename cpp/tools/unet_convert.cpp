// unet_convert IN OUT [--mask 1] | unet_convert --formats
// Reads any image this build decodes (PNG, JPEG, PGM/PPM) and writes it as .png, .pgm or .ppm; with --mask 1
// the single-channel image is written as an indexed PNG of class ids with the VOC palette (as predict does).
// --formats prints the codecs this build has ("pnm png jpeg"), which the Python tests read.
#include <iostream>
#include <string>

#include "args.h"
#include "deploy_unet/image.h"

int main(int argc, char** argv) {
    using namespace deploy_unet;
    if (argc == 2 && std::string(argv[1]) == "--formats") {
        std::cout << "pnm" << (png_supported() ? " png" : "") << (jpeg_supported() ? " jpeg" : "") << "\n";
        return 0;
    }
    try {
        deploy_unet_tools::Args args(argc, argv);
        if (args.positional.size() != 2) {
            std::cerr << "usage: unet_convert IN OUT.png|pgm|ppm [--mask 1] | unet_convert --formats\n";
            return 2;
        }
        const Image image = read_image(args.positional[0]);
        write_image(args.positional[1], image, args.get("mask", "0") != "0");
        std::cout << "wrote " << args.positional[1] << " (" << image.width << "x" << image.height << ", "
                  << image.channels << " channel(s), " << image.bit_depth << " bit)\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
