// Which GPUs an engine runs on, as its manifest records them ("runs_on": ["8.6", ">12.0", ">=8.0"]).
// TensorRT-RTX 1.7 engines do not load on compute capability 9.0 (H100/H200): deserializeCudaEngine
// returns null with "Error Code 6". Checking the manifest first gives one clear line instead.
#pragma once

#include <string>
#include <vector>

namespace deploy_unet {

// Whether compute capability major.minor matches one entry: "X.Y" exactly, ">X.Y" above, ">=X.Y" at or above.
bool runs_on(const std::vector<std::string>& supported, int major, int minor);

// Empty when the GPU can run the engine (or the manifest lists nothing), else the one-line reason.
std::string gpu_refusal(const std::string& library, const std::vector<std::string>& supported,
                        const std::string& gpu_name, int major, int minor);

}  // namespace deploy_unet
