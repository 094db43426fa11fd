// unet_manifest FILE.engine.json [--cc MAJOR.MINOR]: print what unet_infer reads from the manifest, one
// key=value a line; with --cc, exit 1 with unet_infer's one-line refusal if a GPU of that compute
// capability cannot run the engine (the check unet_infer makes before deserializing).
#include <iostream>

#include "deploy_unet/compat.h"
#include "deploy_unet/json.h"

int main(int argc, char** argv) {
    using namespace deploy_unet;
    if (argc != 2 && !(argc == 4 && std::string(argv[2]) == "--cc")) {
        std::cerr << "usage: unet_manifest FILE.engine.json [--cc MAJOR.MINOR]\n";
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
                  << "library=" << info.library << "\n"
                  << "size_remainder=" << info.size_remainder << "\n"
                  << "border=" << info.border << "\n"
                  << "min_size=" << info.min_size << "\n"
                  << "max_batch=" << info.max_batch << "\n"
                  << "pad_in_graph=" << (info.pad_in_graph ? 1 : 0) << "\n";
        std::string runs;
        for (const std::string& cc : info.runs_on) runs += (runs.empty() ? "" : " ") + cc;
        std::cout << "runs_on=" << runs << "\n";
        if (argc == 4) {
            const std::string cc = argv[3];
            const auto dot = cc.find('.');
            const int major = std::stoi(cc.substr(0, dot));
            const int minor = dot == std::string::npos ? 0 : std::stoi(cc.substr(dot + 1));
            const std::string refusal = gpu_refusal(info.library, info.runs_on, "a GPU", major, minor);
            if (!refusal.empty()) {
                std::cerr << "error: " << refusal << "\n";
                return 1;
            }
        }
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
