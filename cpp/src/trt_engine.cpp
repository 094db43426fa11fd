#include "deploy_unet/trt_engine.h"

#include "deploy_unet/compat.h"

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>

namespace deploy_unet {

namespace {

void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorName(status) + " (" +
                                 cudaGetErrorString(status) + ")");
}

std::int64_t volume(const nvinfer1::Dims& dims) {
    std::int64_t n = 1;
    for (int i = 0; i < dims.nbDims; ++i) n *= dims.d[i];
    return n;
}

}  // namespace

void TrtLogger::log(Severity severity, const char* msg) noexcept {
    if (severity <= threshold_) std::cerr << "[TensorRT] " << msg << "\n";
}

TrtEngine::TrtEngine(const std::string& engine_path, int device, const std::string& library,
                     const std::vector<std::string>& runs_on) {
    // TensorRT objects must not be created without a CUDA device: check first.
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count == 0)
        throw std::runtime_error(std::string("no CUDA device (") + cudaGetErrorName(status) +
                                 "); TensorRT needs an NVIDIA GPU with a working driver");
    if (device >= count) throw std::runtime_error("CUDA device " + std::to_string(device) + " does not exist");
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    const std::string refusal = gpu_refusal(library, runs_on, prop.name, prop.major, prop.minor);
    if (!refusal.empty()) throw std::runtime_error(refusal);  // before the library deserializes anything

    std::ifstream in(engine_path, std::ios::binary);
    if (!in) throw std::runtime_error(engine_path + ": cannot open");
    const std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("createInferRuntime failed");
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_)
        throw std::runtime_error(engine_path + ": TensorRT could not deserialize it (built by another TensorRT "
                                               "version or GPU? see the log above); rebuild it here");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error("createExecutionContext failed");
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
}

TrtEngine::~TrtEngine() {
    if (stream_) cudaStreamSynchronize(stream_);
    free_buffers();
    context_.reset();  // context before engine before runtime
    engine_.reset();
    runtime_.reset();
    if (stream_) cudaStreamDestroy(stream_);
}

void TrtEngine::free_buffers() {
    for (void* p : device_buffers_) cudaFree(p);
    device_buffers_.clear();
}

std::vector<std::string> TrtEngine::input_names() const {
    std::vector<std::string> names;
    for (std::int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
        const char* name = engine_->getIOTensorName(i);
        if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) names.emplace_back(name);
    }
    return names;
}

std::vector<std::string> TrtEngine::output_names() const {
    std::vector<std::string> names;
    for (std::int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
        const char* name = engine_->getIOTensorName(i);
        if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kOUTPUT) names.emplace_back(name);
    }
    return names;
}

Tensor TrtEngine::run(const std::string& input_name, const Tensor& input, const std::string& output_name) {
    if (engine_->getTensorIOMode(input_name.c_str()) != nvinfer1::TensorIOMode::kINPUT)
        throw std::runtime_error("engine has no input named '" + input_name + "'");
    if (engine_->getTensorIOMode(output_name.c_str()) != nvinfer1::TensorIOMode::kOUTPUT)
        throw std::runtime_error("engine has no output named '" + output_name + "'");
    for (const auto& name : {input_name, output_name}) {
        if (engine_->getTensorDataType(name.c_str()) != nvinfer1::DataType::kFLOAT)
            throw std::runtime_error("engine tensor '" + name + "' is not float32; export with fp32 IO");
    }

    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<std::int32_t>(input.shape.size());
    for (int i = 0; i < dims.nbDims; ++i) dims.d[i] = input.shape[i];
    if (!context_->setInputShape(input_name.c_str(), dims))
        throw std::runtime_error("input shape is outside the engine's optimization profile; rebuild with a wider "
                                 "--min-shape/--max-shape");
    const nvinfer1::Dims out_dims = context_->getTensorShape(output_name.c_str());
    if (out_dims.nbDims < 0 || volume(out_dims) < 0) throw std::runtime_error("output shape is not resolved");

    free_buffers();
    void* d_in = nullptr;
    void* d_out = nullptr;
    const std::size_t in_bytes = input.data.size() * sizeof(float);
    const std::size_t out_bytes = static_cast<std::size_t>(volume(out_dims)) * sizeof(float);
    check_cuda(cudaMalloc(&d_in, in_bytes), "cudaMalloc(input)");
    device_buffers_.push_back(d_in);
    check_cuda(cudaMalloc(&d_out, out_bytes), "cudaMalloc(output)");
    device_buffers_.push_back(d_out);
    // Every other IO tensor (none for deploy-unet nets) would need an address too: refuse rather than crash.
    if (engine_->getNbIOTensors() != 2) throw std::runtime_error("unet_infer handles one input and one output");
    context_->setTensorAddress(input_name.c_str(), d_in);
    context_->setTensorAddress(output_name.c_str(), d_out);

    check_cuda(cudaMemcpyAsync(d_in, input.data.data(), in_bytes, cudaMemcpyHostToDevice, stream_), "copy in");
    if (!context_->enqueueV3(stream_)) throw std::runtime_error("enqueueV3 failed; see the TensorRT log above");
    Tensor out;
    for (int i = 0; i < out_dims.nbDims; ++i) out.shape.push_back(out_dims.d[i]);
    out.data.resize(static_cast<std::size_t>(volume(out_dims)));
    check_cuda(cudaMemcpyAsync(out.data.data(), d_out, out_bytes, cudaMemcpyDeviceToHost, stream_), "copy out");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return out;
}

}  // namespace deploy_unet
