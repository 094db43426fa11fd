#include "deploy_unet/image.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace deploy_unet {

std::int64_t Tensor::numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

namespace {

// Next header token of a PNM file, skipping whitespace and '#' comments.
std::string pnm_token(std::istream& in, const std::string& path) {
    std::string token;
    int c;
    while ((c = in.get()) != EOF) {
        if (c == '#') {
            while ((c = in.get()) != EOF && c != '\n') {
            }
            continue;
        }
        if (std::isspace(c)) {
            if (!token.empty()) return token;
            continue;
        }
        token.push_back(static_cast<char>(c));
    }
    if (token.empty()) throw std::runtime_error(path + ": truncated PGM/PPM header");
    return token;
}

int pnm_int(std::istream& in, const std::string& path, const char* what) {
    const std::string token = pnm_token(in, path);
    try {
        std::size_t used = 0;
        const int value = std::stoi(token, &used);
        if (used != token.size() || value <= 0) throw std::invalid_argument(token);
        return value;
    } catch (const std::exception&) {
        throw std::runtime_error(path + ": bad " + what + " '" + token + "' in PGM/PPM header");
    }
}

}  // namespace

Image read_pnm(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    const std::string magic = pnm_token(in, path);
    Image image;
    if (magic == "P5") {
        image.channels = 1;
    } else if (magic == "P6") {
        image.channels = 3;
    } else {
        throw std::runtime_error(path + ": not a binary PGM (P5) or PPM (P6) file (magic '" + magic + "')");
    }
    image.width = pnm_int(in, path, "width");
    image.height = pnm_int(in, path, "height");
    const int maxval = pnm_int(in, path, "maxval");
    if (maxval != 255) throw std::runtime_error(path + ": only 8-bit PGM/PPM (maxval 255) is supported");
    // pnm_token consumed exactly one whitespace byte after maxval, as the format requires.
    image.pixels.resize(static_cast<std::size_t>(image.width) * image.height * image.channels);
    in.read(reinterpret_cast<char*>(image.pixels.data()), static_cast<std::streamsize>(image.pixels.size()));
    if (in.gcount() != static_cast<std::streamsize>(image.pixels.size()))
        throw std::runtime_error(path + ": pixel data is truncated");
    return image;
}

void write_pnm(const std::string& path, const Image& image) {
    if (image.channels != 1 && image.channels != 3)
        throw std::runtime_error(path + ": PGM/PPM needs 1 or 3 channels");
    // Write to a temp file and rename, so a failed run never leaves a half image.
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary);
        if (!out) throw std::runtime_error(tmp + ": cannot open for writing");
        out << (image.channels == 1 ? "P5" : "P6") << "\n" << image.width << " " << image.height << "\n255\n";
        out.write(reinterpret_cast<const char*>(image.pixels.data()),
                  static_cast<std::streamsize>(image.pixels.size()));
        if (!out) throw std::runtime_error(tmp + ": write failed");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": rename failed");
}

Tensor read_npy(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    char magic[8];
    in.read(magic, 8);
    if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
    std::size_t header_len = 0;
    if (magic[6] == 1) {
        unsigned char len[2];
        in.read(reinterpret_cast<char*>(len), 2);
        header_len = len[0] | (len[1] << 8);
    } else {
        unsigned char len[4];
        in.read(reinterpret_cast<char*>(len), 4);
        header_len = len[0] | (len[1] << 8) | (len[2] << 16) | (static_cast<std::size_t>(len[3]) << 24);
    }
    std::string header(header_len, '\0');
    in.read(&header[0], static_cast<std::streamsize>(header_len));
    if (header.find("'descr': '<f4'") == std::string::npos)
        throw std::runtime_error(path + ": only little-endian float32 .npy is supported");
    if (header.find("'fortran_order': False") == std::string::npos)
        throw std::runtime_error(path + ": only C-order .npy is supported");
    const auto open = header.find('(', header.find("'shape'"));
    const auto close = header.find(')', open);
    if (open == std::string::npos || close == std::string::npos) throw std::runtime_error(path + ": bad .npy shape");
    Tensor t;
    std::stringstream dims(header.substr(open + 1, close - open - 1));
    std::string item;
    while (std::getline(dims, item, ',')) {
        if (item.find_first_not_of(" ") == std::string::npos) continue;
        t.shape.push_back(std::stoll(item));
    }
    t.data.resize(static_cast<std::size_t>(t.numel()));
    in.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(t.data.size() * sizeof(float)));
    if (in.gcount() != static_cast<std::streamsize>(t.data.size() * sizeof(float)))
        throw std::runtime_error(path + ": .npy data is truncated");
    return t;
}

void write_npy(const std::string& path, const Tensor& tensor) {
    std::string shape = "(";
    for (std::size_t i = 0; i < tensor.shape.size(); ++i) shape += std::to_string(tensor.shape[i]) + ", ";
    if (tensor.shape.size() > 1) shape.resize(shape.size() - 2);
    else if (tensor.shape.size() == 1) shape.resize(shape.size() - 1);
    shape += ")";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
    const std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header.push_back('\n');
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary);
        if (!out) throw std::runtime_error(tmp + ": cannot open for writing");
        out.write("\x93NUMPY\x01\x00", 8);
        const unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                      static_cast<unsigned char>(header.size() >> 8)};
        out.write(reinterpret_cast<const char*>(len), 2);
        out.write(header.data(), static_cast<std::streamsize>(header.size()));
        out.write(reinterpret_cast<const char*>(tensor.data.data()),
                  static_cast<std::streamsize>(tensor.data.size() * sizeof(float)));
        if (!out) throw std::runtime_error(tmp + ": write failed");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": rename failed");
}

}  // namespace deploy_unet
