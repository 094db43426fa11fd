#include "deploy_unet/compat.h"

#include <stdexcept>

namespace deploy_unet {

namespace {

// "12.1" -> 121-style comparable pair; throws on text that is not MAJOR.MINOR.
std::pair<int, int> parse_cc(const std::string& text) {
    const auto dot = text.find('.');
    try {
        if (dot == std::string::npos) return {std::stoi(text), 0};
        return {std::stoi(text.substr(0, dot)), std::stoi(text.substr(dot + 1))};
    } catch (const std::exception&) {
        throw std::runtime_error("compute capability '" + text + "' in the manifest is not MAJOR.MINOR");
    }
}

}  // namespace

bool runs_on(const std::vector<std::string>& supported, int major, int minor) {
    const std::pair<int, int> here{major, minor};
    for (const std::string& entry : supported) {
        if (entry.rfind(">=", 0) == 0) {
            if (here >= parse_cc(entry.substr(2))) return true;
        } else if (entry.rfind(">", 0) == 0) {
            if (here > parse_cc(entry.substr(1))) return true;
        } else if (here == parse_cc(entry)) {
            return true;
        }
    }
    return false;
}

std::string gpu_refusal(const std::string& library, const std::vector<std::string>& supported,
                        const std::string& gpu_name, int major, int minor) {
    if (supported.empty() || runs_on(supported, major, minor)) return "";
    std::string list;
    for (const std::string& entry : supported) list += (list.empty() ? "" : " ") + entry;
    const std::string title = library == "tensorrt-rtx" ? "TensorRT-RTX" : "TensorRT";
    return "this GPU, " + gpu_name + " (compute capability " + std::to_string(major) + "." + std::to_string(minor) +
           "), cannot run this " + title + " engine, which runs on compute capability " + list +
           (library == "tensorrt-rtx" ? "; use such a GPU, or build a TensorRT engine with --engine-lib tensorrt"
                                      : "; rebuild it here with deploy-unet build-engine");
}

}  // namespace deploy_unet
