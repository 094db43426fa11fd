// A small JSON reader (RFC 8259 values) for the engine manifest beside each engine.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace deploy_unet {

class Json {
public:
    enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

    static Json parse(const std::string& text);  // throws std::runtime_error with the offset
    static Json parse_file(const std::string& path);

    Type type() const { return type_; }
    bool is_null() const { return type_ == Type::kNull; }
    bool as_bool() const;
    double as_number() const;
    const std::string& as_string() const;
    const std::vector<Json>& as_array() const;
    const std::map<std::string, Json>& as_object() const;

    bool has(const std::string& key) const;
    // Member access; throws naming the missing key.
    const Json& operator[](const std::string& key) const;
    // A dotted path such as "model.divisor".
    const Json& at_path(const std::string& dotted) const;

    std::vector<float> as_float_vector() const;

private:
    Type type_ = Type::kNull;
    bool bool_ = false;
    double number_ = 0.0;
    std::string string_;
    std::vector<Json> array_;
    std::map<std::string, Json> object_;

    friend class JsonParser;
};

// What unet_infer needs from FILE.engine.json.
struct EngineModelInfo {
    std::string input_name;
    std::string output_name;
    int divisor = 1;
    int in_channels = 3;
    int num_classes = 0;
    std::vector<float> mean;
    std::vector<float> stddev;
    std::string library = "tensorrt";  // "tensorrt" | "tensorrt-rtx" (older manifests: tensorrt)
    std::vector<std::string> runs_on;  // compute capabilities the engine runs on (empty: not recorded)
    // The general shape contract (0 for padded nets and for manifests written before it existed): valid
    // sizes are divisor * k + size_remainder >= min_size; the output is input - border (border / 2 per side).
    int size_remainder = 0;
    int border = 0;
    int min_size = 0;
    std::vector<std::int64_t> export_shape;  // NCHW the ONNX was exported at (the default tile), may be empty
    std::int64_t max_batch = 0;               // the profile's largest batch (tiles per run), 0 if unknown

    bool is_valid_size(std::int64_t v) const;
    // export --pad-in-graph: the engine pads H, W to the divisor itself, so the host must not.
    bool pad_in_graph = false;
};

EngineModelInfo read_engine_model_info(const std::string& manifest_path);

}  // namespace deploy_unet
