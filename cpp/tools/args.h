// Tiny "--key value" argument helper shared by the sample tools.
#pragma once

#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace deploy_unet_tools {

struct Args {
    std::vector<std::string> positional;
    std::map<std::string, std::string> options;

    Args(int argc, char** argv) {
        for (int i = 1; i < argc; ++i) {
            std::string a = argv[i];
            if (a.rfind("--", 0) == 0) {
                if (i + 1 >= argc) throw std::runtime_error("option " + a + " needs a value");
                options[a.substr(2)] = argv[++i];
            } else {
                positional.push_back(a);
            }
        }
    }
    std::string get(const std::string& key, const std::string& fallback) const {
        auto it = options.find(key);
        return it == options.end() ? fallback : it->second;
    }
};

inline std::vector<float> parse_floats(const std::string& text) {
    std::vector<float> out;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (!item.empty()) out.push_back(std::stof(item));
    }
    return out;
}

}  // namespace deploy_unet_tools
