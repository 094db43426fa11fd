// Embedding a deploy-unet TensorRT engine: load, bind IO by name, set the input shape, enqueueV3.
// Needs TensorRT 10.x or 11.x headers and libraries (nvinfer) and the CUDA runtime; built only when
// CMake finds them. The engine must have float32 input and output (deploy-unet keeps IO types fp32).
#pragma once

#include <cuda_runtime_api.h>

#include <NvInferRuntime.h>

#include <memory>
#include <string>
#include <vector>

#include "deploy_unet/image.h"

namespace deploy_unet {

class TrtLogger : public nvinfer1::ILogger {
public:
    explicit TrtLogger(Severity threshold = Severity::kWARNING) : threshold_(threshold) {}
    void log(Severity severity, const char* msg) noexcept override;

private:
    Severity threshold_;
};

class TrtEngine {
public:
    // Throws std::runtime_error when there is no CUDA device (checked before any TensorRT call), the
    // device's compute capability is not in `runs_on` (the manifest's list; empty: not checked), the file
    // cannot be read, or TensorRT cannot deserialize it.
    explicit TrtEngine(const std::string& engine_path, int device = 0, const std::string& library = "tensorrt",
                       const std::vector<std::string>& runs_on = {});
    ~TrtEngine();
    TrtEngine(const TrtEngine&) = delete;
    TrtEngine& operator=(const TrtEngine&) = delete;

    std::vector<std::string> input_names() const;
    std::vector<std::string> output_names() const;

    // Copy `input` (NCHW float32) to the device, set its shape, run on the stream, copy `output` back.
    Tensor run(const std::string& input_name, const Tensor& input, const std::string& output_name);

private:
    TrtLogger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    cudaStream_t stream_ = nullptr;
    std::vector<void*> device_buffers_;

    void free_buffers();
};

}  // namespace deploy_unet
