// unet_manifest FILE.engine.json: print what unet_infer reads from the manifest, one key=value a line.
#include <iostream>

#include "deploy_unet/json.h"

int main(int argc, char** argv) {
    using namespace deploy_unet;
    if (argc != 2) {
        std::cerr << "usage: unet_manifest FILE.engine.json\n";
        return 2;
    }
    try {
        const EngineModelInfo info = read_engine_model_info(argv[1]);
        auto join = [](const std::vector<float>& v) {
            std::string s;
            for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
            return s;
        };
        std::cout << "input_name=" << info.input_name << "\n"
                  << "output_name=" << info.output_name << "\n"
                  << "divisor=" << info.divisor << "\n"
                  << "in_channels=" << info.in_channels << "\n"
                  << "num_classes=" << info.num_classes << "\n"
                  << "mean=" << join(info.mean) << "\n"
                  << "std=" << join(info.stddev) << "\n"
                  << "pad_in_graph=" << (info.pad_in_graph ? 1 : 0) << "\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
