#include "deploy_unet/json.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace deploy_unet {

class JsonParser {
public:
    explicit JsonParser(const std::string& text) : s_(text) {}

    Json parse_document() {
        Json value = parse_value();
        skip_ws();
        if (pos_ != s_.size()) fail("trailing characters");
        return value;
    }

private:
    const std::string& s_;
    std::size_t pos_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("JSON parse error at offset " + std::to_string(pos_) + ": " + what);
    }
    void skip_ws() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
    }
    char peek() {
        skip_ws();
        if (pos_ >= s_.size()) fail("unexpected end");
        return s_[pos_];
    }
    void expect(const char* word) {
        for (const char* c = word; *c; ++c, ++pos_)
            if (pos_ >= s_.size() || s_[pos_] != *c) fail(std::string("expected '") + word + "'");
    }

    Json parse_value() {
        Json v;
        switch (peek()) {
            case '{': parse_object(v); break;
            case '[': parse_array(v); break;
            case '"': v.type_ = Json::Type::kString; v.string_ = parse_string(); break;
            case 't': expect("true"); v.type_ = Json::Type::kBool; v.bool_ = true; break;
            case 'f': expect("false"); v.type_ = Json::Type::kBool; v.bool_ = false; break;
            case 'n': expect("null"); break;
            default: v.type_ = Json::Type::kNumber; v.number_ = parse_number(); break;
        }
        return v;
    }

    void parse_object(Json& v) {
        v.type_ = Json::Type::kObject;
        ++pos_;
        if (peek() == '}') { ++pos_; return; }
        while (true) {
            if (peek() != '"') fail("expected a string key");
            std::string key = parse_string();
            if (peek() != ':') fail("expected ':'");
            ++pos_;
            v.object_[key] = parse_value();
            const char c = peek();
            ++pos_;
            if (c == '}') return;
            if (c != ',') fail("expected ',' or '}'");
        }
    }

    void parse_array(Json& v) {
        v.type_ = Json::Type::kArray;
        ++pos_;
        if (peek() == ']') { ++pos_; return; }
        while (true) {
            v.array_.push_back(parse_value());
            const char c = peek();
            ++pos_;
            if (c == ']') return;
            if (c != ',') fail("expected ',' or ']'");
        }
    }

    double parse_number() {
        const char* begin = s_.c_str() + pos_;
        char* end = nullptr;
        const double value = std::strtod(begin, &end);
        if (end == begin) fail("expected a value");
        pos_ += static_cast<std::size_t>(end - begin);
        return value;
    }

    static void append_utf8(std::string& out, unsigned long cp) {
        if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
            out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
            out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
    }

    unsigned long parse_hex4() {
        if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
        const std::string hex = s_.substr(pos_, 4);
        pos_ += 4;
        char* end = nullptr;
        const unsigned long cp = std::strtoul(hex.c_str(), &end, 16);
        if (end != hex.c_str() + 4) fail("bad \\u escape");
        return cp;
    }

    std::string parse_string() {
        ++pos_;  // opening quote
        std::string out;
        while (true) {
            if (pos_ >= s_.size()) fail("unterminated string");
            const char c = s_[pos_++];
            if (c == '"') return out;
            if (c != '\\') { out.push_back(c); continue; }
            if (pos_ >= s_.size()) fail("unterminated escape");
            const char e = s_[pos_++];
            switch (e) {
                case '"': out.push_back('"'); break;
                case '\\': out.push_back('\\'); break;
                case '/': out.push_back('/'); break;
                case 'b': out.push_back('\b'); break;
                case 'f': out.push_back('\f'); break;
                case 'n': out.push_back('\n'); break;
                case 'r': out.push_back('\r'); break;
                case 't': out.push_back('\t'); break;
                case 'u': {
                    unsigned long cp = parse_hex4();
                    if (cp >= 0xD800 && cp < 0xDC00 && pos_ + 6 <= s_.size() && s_[pos_] == '\\' && s_[pos_ + 1] == 'u') {
                        pos_ += 2;
                        const unsigned long low = parse_hex4();
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: fail("bad escape");
            }
        }
    }
};

Json Json::parse(const std::string& text) { return JsonParser(text).parse_document(); }

Json Json::parse_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::stringstream buffer;
    buffer << in.rdbuf();
    try {
        return parse(buffer.str());
    } catch (const std::runtime_error& e) {
        throw std::runtime_error(path + ": " + e.what());
    }
}

namespace {
[[noreturn]] void type_error(const char* want) { throw std::runtime_error(std::string("JSON value is not ") + want); }
}  // namespace

bool Json::as_bool() const { if (type_ != Type::kBool) type_error("a bool"); return bool_; }
double Json::as_number() const { if (type_ != Type::kNumber) type_error("a number"); return number_; }
const std::string& Json::as_string() const { if (type_ != Type::kString) type_error("a string"); return string_; }
const std::vector<Json>& Json::as_array() const { if (type_ != Type::kArray) type_error("an array"); return array_; }
const std::map<std::string, Json>& Json::as_object() const { if (type_ != Type::kObject) type_error("an object"); return object_; }

bool Json::has(const std::string& key) const { return type_ == Type::kObject && object_.count(key) > 0; }

const Json& Json::operator[](const std::string& key) const {
    const auto& obj = as_object();
    const auto it = obj.find(key);
    if (it == obj.end()) throw std::runtime_error("JSON object has no key '" + key + "'");
    return it->second;
}

const Json& Json::at_path(const std::string& dotted) const {
    const Json* node = this;
    std::stringstream parts(dotted);
    std::string key;
    while (std::getline(parts, key, '.')) {
        if (!node->has(key)) throw std::runtime_error("JSON has no '" + dotted + "' (missing '" + key + "')");
        node = &(*node)[key];
    }
    return *node;
}

std::vector<float> Json::as_float_vector() const {
    std::vector<float> out;
    for (const auto& v : as_array()) out.push_back(static_cast<float>(v.as_number()));
    return out;
}

bool EngineModelInfo::is_valid_size(std::int64_t v) const {
    const std::int64_t d = divisor < 1 ? 1 : divisor;
    const std::int64_t smallest = min_size > 0 ? min_size : (size_remainder > 0 ? size_remainder : d);
    return v >= smallest && ((v - size_remainder) % d + d) % d == 0;
}

EngineModelInfo read_engine_model_info(const std::string& manifest_path) {
    const Json doc = Json::parse_file(manifest_path);
    if (!doc.has("format") || doc["format"].as_string().rfind("deploy-unet-engine-manifest/", 0) != 0)
        throw std::runtime_error(manifest_path + ": not a deploy-unet engine manifest; rebuild with deploy-unet build-engine");
    try {
        const Json& model = doc["model"];
        EngineModelInfo info;
        info.input_name = model["input_name"].as_string();
        info.output_name = model["output_name"].as_string();
        info.divisor = static_cast<int>(model["divisor"].as_number());
        info.in_channels = static_cast<int>(model["in_channels"].as_number());
        info.num_classes = static_cast<int>(model["num_classes"].as_number());
        info.mean = model["mean"].as_float_vector();
        info.stddev = model["std"].as_float_vector();
        if (doc.has("library") && !doc["library"].is_null()) info.library = doc["library"].as_string();
        if (doc.has("runs_on") && !doc["runs_on"].is_null())
            for (const Json& entry : doc["runs_on"].as_array()) info.runs_on.push_back(entry.as_string());
        const auto optional_int = [&model](const char* key) {
            return model.has(key) && !model[key].is_null() ? static_cast<int>(model[key].as_number()) : 0;
        };
        info.size_remainder = optional_int("size_remainder");
        info.border = optional_int("border");
        info.min_size = optional_int("min_size");
        if (model.has("export_shape"))
            for (const auto& v : model["export_shape"].as_array()) info.export_shape.push_back(static_cast<std::int64_t>(v.as_number()));
        if (doc.has("inputs") && !doc["inputs"].as_array().empty()) {
            const Json& input = doc["inputs"].as_array()[0];
            if (input.has("max") && !input["max"].is_null() && !input["max"].as_array().empty())
                info.max_batch = static_cast<std::int64_t>(input["max"].as_array()[0].as_number());
        }
        // Absent in manifests written before export --pad-in-graph existed: the host pads.
        info.pad_in_graph = model.has("pad_in_graph") && model["pad_in_graph"].as_bool();
        // Written by deploy-unet for low-resolution logits (SegFormer) and foreign ONNX (describe --scale):
        // this sample neither upsamples logits nor rescales pixels, so it refuses such an engine in one line.
        if (optional_int("output_stride") > 1)
            throw std::runtime_error("the engine's logits are at 1/" + std::to_string(optional_int("output_stride")) +
                                     " of the input (output_stride); the C++ sample makes masks from full-size logits: "
                                     "export with --upsample-in-graph and rebuild the engine");
        if (model.has("value_scale") && !model["value_scale"].is_null() && model["value_scale"].as_number() != 1.0)
            throw std::runtime_error("the engine takes pixels in [0, " + std::to_string(model["value_scale"].as_number()) +
                                     "] (value_scale); the C++ sample feeds [0, 1]: fold the scale into --mean/--std "
                                     "(mean*scale, std*scale are equivalent) with deploy-unet describe, and rebuild");
        return info;
    } catch (const std::runtime_error& e) {
        throw std::runtime_error(manifest_path + ": " + e.what());
    }
}

}  // namespace deploy_unet
