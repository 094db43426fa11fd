// PNG and JPEG through libpng and libjpeg(-turbo), when CMake found them (DEPLOY_UNET_WITH_PNG / _JPEG), and
// the format dispatch by magic bytes. Both libraries report errors by longjmp: each decode/encode runs in a
// C-style function whose state after setjmp lives behind a pointer owned by the caller (no C++ object is
// modified between setjmp and longjmp), and the caller turns a failure into std::runtime_error.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "deploy_unet/image.h"

#ifdef DEPLOY_UNET_WITH_PNG
#include <png.h>
#endif
#ifdef DEPLOY_UNET_WITH_JPEG
#include <csetjmp>
// jpeglib.h needs FILE and size_t declared before it (cstdio above)
#include <jpeglib.h>
#endif

namespace deploy_unet {

bool png_supported() {
#ifdef DEPLOY_UNET_WITH_PNG
    return true;
#else
    return false;
#endif
}

bool jpeg_supported() {
#ifdef DEPLOY_UNET_WITH_JPEG
    return true;
#else
    return false;
#endif
}

std::array<std::uint8_t, 768> voc_palette() {
    std::array<std::uint8_t, 768> palette{};
    for (int id = 0; id < 256; ++id) {
        int rgb[3] = {0, 0, 0};
        for (int bit = 0; bit < 8; ++bit)
            for (int ch = 0; ch < 3; ++ch) rgb[ch] |= ((id >> (3 * bit + ch)) & 1) << (7 - bit);
        for (int ch = 0; ch < 3; ++ch) palette[3 * id + ch] = static_cast<std::uint8_t>(rgb[ch]);
    }
    return palette;
}

namespace {

struct File {
    std::FILE* f = nullptr;
    File(const std::string& path, const char* mode) : f(std::fopen(path.c_str(), mode)) {}
    ~File() {
        if (f) std::fclose(f);
    }
    File(const File&) = delete;
    File& operator=(const File&) = delete;
};

[[maybe_unused]] bool little_endian() {
    const std::uint16_t one = 1;
    unsigned char first = 0;
    std::memcpy(&first, &one, 1);
    return first == 1;
}

[[maybe_unused]] [[noreturn]] void missing_codec(const std::string& path, const char* format, const char* library,
                                                 const char* package) {
    throw std::runtime_error(path + ": " + format + " support was not built (" + library +
                             " was not found, or turned off, when CMake configured); install " + package +
                             " and re-run cmake, or convert the image to PPM/PGM");
}

// Rename a finished temp file onto the target, so a failed write never leaves a half image.
[[maybe_unused]] void commit(const std::string& tmp, const std::string& path) {
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw std::runtime_error(path + ": rename failed");
    }
}

#ifdef DEPLOY_UNET_WITH_PNG
struct PngJob {
    png_structp png = nullptr;
    png_infop info = nullptr;
    unsigned char* buffer = nullptr;
    png_bytep* rows = nullptr;
    png_uint_32 width = 0, height = 0;
    int channels = 0, bit_depth = 0;
    bool palette_indices = false;
    char message[256] = {0};
};

// The error pointer is the job's 256-byte message buffer (read and write jobs alike).
void png_error_fn(png_structp png, png_const_charp text) {
    std::snprintf(static_cast<char*>(png_get_error_ptr(png)), 256, "%s", text);
    png_longjmp(png, 1);
}

void png_warning_fn(png_structp, png_const_charp) {}

// The transforms give what Pillow gives: palette -> RGB (RGBA with tRNS), grey < 8 bit -> 8 bit, 16-bit grey
// kept (Pillow's I;16), other 16-bit images cut to their high byte (Pillow's RGB;16B unpacking), no gamma.
int png_decode(std::FILE* f, PngJob* job) {
    if (setjmp(png_jmpbuf(job->png))) return 0;
    png_init_io(job->png, f);
    png_set_sig_bytes(job->png, 8);
    png_read_info(job->png, job->info);
    const int color = png_get_color_type(job->png, job->info);
    const int depth = png_get_bit_depth(job->png, job->info);
    if (color == PNG_COLOR_TYPE_PALETTE) {
        if (job->palette_indices) {
            png_set_packing(job->png);
        } else {
            png_set_palette_to_rgb(job->png);
            if (png_get_valid(job->png, job->info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(job->png);
        }
    }
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(job->png);
    if (depth == 16) {
        if (color == PNG_COLOR_TYPE_GRAY) {
            if (little_endian()) png_set_swap(job->png);
        } else {
            png_set_strip_16(job->png);
        }
    }
    png_set_interlace_handling(job->png);
    png_read_update_info(job->png, job->info);
    job->width = png_get_image_width(job->png, job->info);
    job->height = png_get_image_height(job->png, job->info);
    job->channels = png_get_channels(job->png, job->info);
    job->bit_depth = png_get_bit_depth(job->png, job->info);
    const std::size_t rowbytes = png_get_rowbytes(job->png, job->info);
    job->buffer = static_cast<unsigned char*>(std::malloc(rowbytes * job->height));
    job->rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * job->height));
    if (!job->buffer || !job->rows) png_error(job->png, "out of memory");
    for (png_uint_32 y = 0; y < job->height; ++y) job->rows[y] = job->buffer + y * rowbytes;
    png_read_image(job->png, job->rows);
    png_read_end(job->png, nullptr);
    return 1;
}

struct PngWriteJob {
    png_structp png = nullptr;
    png_infop info = nullptr;
    const Image* image = nullptr;
    bool indexed = false;
    png_bytep* rows = nullptr;
    unsigned char* swapped = nullptr;
    char message[256] = {0};
};

int png_encode(std::FILE* f, PngWriteJob* job) {
    if (setjmp(png_jmpbuf(job->png))) return 0;
    const Image& im = *job->image;
    static const int kColor[] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                 PNG_COLOR_TYPE_RGB_ALPHA};
    png_init_io(job->png, f);
    png_set_IHDR(job->png, job->info, static_cast<png_uint_32>(im.width), static_cast<png_uint_32>(im.height),
                 im.bit_depth, job->indexed ? PNG_COLOR_TYPE_PALETTE : kColor[im.channels], PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (job->indexed) {
        const auto palette = voc_palette();
        png_color colours[256];
        for (int i = 0; i < 256; ++i) colours[i] = {palette[3 * i], palette[3 * i + 1], palette[3 * i + 2]};
        png_set_PLTE(job->png, job->info, colours, 256);
    }
    png_write_info(job->png, job->info);
    const std::size_t samples = static_cast<std::size_t>(im.width) * im.channels;
    job->rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * static_cast<std::size_t>(im.height)));
    if (!job->rows) png_error(job->png, "out of memory");
    if (im.bit_depth == 16) {
        // PNG stores 16-bit samples big-endian.
        job->swapped = static_cast<unsigned char*>(std::malloc(im.pixels16.size() * 2));
        if (!job->swapped) png_error(job->png, "out of memory");
        for (std::size_t i = 0; i < im.pixels16.size(); ++i) {
            job->swapped[2 * i] = static_cast<unsigned char>(im.pixels16[i] >> 8);
            job->swapped[2 * i + 1] = static_cast<unsigned char>(im.pixels16[i] & 0xff);
        }
        for (int y = 0; y < im.height; ++y) job->rows[y] = job->swapped + static_cast<std::size_t>(y) * samples * 2;
    } else {
        auto* base = const_cast<unsigned char*>(im.pixels.data());  // libpng's API is not const-correct
        for (int y = 0; y < im.height; ++y) job->rows[y] = base + static_cast<std::size_t>(y) * samples;
    }
    png_write_image(job->png, job->rows);
    png_write_end(job->png, nullptr);
    return 1;
}

void write_png_file(const std::string& path, const Image& image, bool indexed) {
    if (image.channels < 1 || image.channels > 4 || (indexed && image.channels != 1))
        throw std::runtime_error(path + ": a PNG needs 1 to 4 channels (an indexed mask 1)");
    if (image.bit_depth != 8 && image.bit_depth != 16)
        throw std::runtime_error(path + ": a PNG here is 8 or 16 bit");
    const std::size_t n = static_cast<std::size_t>(image.width) * image.height * image.channels;
    if ((image.bit_depth == 8 ? image.pixels.size() : image.pixels16.size()) != n || (indexed && image.bit_depth != 8))
        throw std::runtime_error(path + ": image buffer does not match its size");
    const std::string tmp = path + ".tmp";
    int ok = 0;
    PngWriteJob job;
    {
        File file(tmp, "wb");
        if (!file.f) throw std::runtime_error(tmp + ": cannot open for writing");
        job.image = &image;
        job.indexed = indexed;
        job.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, job.message, png_error_fn, png_warning_fn);
        job.info = job.png ? png_create_info_struct(job.png) : nullptr;
        if (job.info) ok = png_encode(file.f, &job);
        png_destroy_write_struct(&job.png, &job.info);
        std::free(job.rows);
        std::free(job.swapped);
        if (ok && std::fflush(file.f) != 0) ok = 0;
    }
    if (!ok) {
        std::remove(tmp.c_str());
        throw std::runtime_error(path + ": cannot write PNG (" + (job.message[0] ? job.message : "libpng failed") + ")");
    }
    commit(tmp, path);
}
#endif

#ifdef DEPLOY_UNET_WITH_JPEG
struct JpegJob {
    jpeg_decompress_struct cinfo;
    jpeg_error_mgr err;
    std::jmp_buf jump;
    unsigned char* buffer = nullptr;
    int width = 0, height = 0, channels = 0;
    char message[JMSG_LENGTH_MAX] = {0};
};

void jpeg_error_exit(j_common_ptr cinfo) {
    auto* job = reinterpret_cast<JpegJob*>(cinfo->client_data);
    (*cinfo->err->format_message)(cinfo, job->message);
    std::longjmp(job->jump, 1);
}

// A corrupt-data warning (e.g. a truncated file) is an error here, as Pillow refuses such files too.
void jpeg_emit_message(j_common_ptr cinfo, int level) {
    if (level < 0) jpeg_error_exit(cinfo);
}

int jpeg_decode(std::FILE* f, JpegJob* job) {
    job->cinfo.err = jpeg_std_error(&job->err);
    job->err.error_exit = jpeg_error_exit;
    job->err.emit_message = jpeg_emit_message;
    job->cinfo.client_data = job;
    if (setjmp(job->jump)) {
        jpeg_destroy_decompress(&job->cinfo);
        return 0;
    }
    jpeg_create_decompress(&job->cinfo);
    jpeg_stdio_src(&job->cinfo, f);
    jpeg_read_header(&job->cinfo, TRUE);
    if (job->cinfo.jpeg_color_space == JCS_CMYK || job->cinfo.jpeg_color_space == JCS_YCCK) {
        std::snprintf(job->message, sizeof job->message, "CMYK JPEG is not supported; convert it to RGB");
        jpeg_destroy_decompress(&job->cinfo);
        return 0;
    }
    job->cinfo.out_color_space = job->cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&job->cinfo);
    job->width = static_cast<int>(job->cinfo.output_width);
    job->height = static_cast<int>(job->cinfo.output_height);
    job->channels = job->cinfo.output_components;
    const std::size_t stride = static_cast<std::size_t>(job->width) * job->channels;
    job->buffer = static_cast<unsigned char*>(std::malloc(stride * static_cast<std::size_t>(job->height)));
    if (!job->buffer) {
        std::snprintf(job->message, sizeof job->message, "out of memory");
        jpeg_destroy_decompress(&job->cinfo);
        return 0;
    }
    while (job->cinfo.output_scanline < job->cinfo.output_height) {
        JSAMPROW row = job->buffer + job->cinfo.output_scanline * stride;
        jpeg_read_scanlines(&job->cinfo, &row, 1);
    }
    jpeg_finish_decompress(&job->cinfo);
    jpeg_destroy_decompress(&job->cinfo);
    return 1;
}
#endif

}  // namespace

Image read_png(const std::string& path, bool palette_indices) {
#ifdef DEPLOY_UNET_WITH_PNG
    File file(path, "rb");
    if (!file.f) throw std::runtime_error(path + ": cannot open");
    unsigned char signature[8];
    if (std::fread(signature, 1, 8, file.f) != 8 || png_sig_cmp(signature, 0, 8) != 0)
        throw std::runtime_error(path + ": not a PNG file");
    PngJob job;
    job.palette_indices = palette_indices;
    job.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, job.message, png_error_fn, png_warning_fn);
    job.info = job.png ? png_create_info_struct(job.png) : nullptr;
    const int ok = job.info ? png_decode(file.f, &job) : 0;
    png_destroy_read_struct(&job.png, &job.info, nullptr);
    std::free(job.rows);
    if (!ok) {
        std::free(job.buffer);
        throw std::runtime_error(path + ": cannot read PNG (" + (job.message[0] ? job.message : "libpng failed") + ")");
    }
    Image image;
    image.width = static_cast<int>(job.width);
    image.height = static_cast<int>(job.height);
    image.channels = job.channels;
    image.bit_depth = job.bit_depth;
    const std::size_t n = static_cast<std::size_t>(job.width) * job.height * job.channels;
    if (job.bit_depth == 16) {
        image.pixels16.resize(n);
        std::memcpy(image.pixels16.data(), job.buffer, n * 2);
    } else {
        image.pixels.assign(job.buffer, job.buffer + n);
    }
    std::free(job.buffer);
    return image;
#else
    (void)palette_indices;
    missing_codec(path, "PNG", "libpng", "libpng-dev");
#endif
}

Image read_jpeg(const std::string& path) {
#ifdef DEPLOY_UNET_WITH_JPEG
    File file(path, "rb");
    if (!file.f) throw std::runtime_error(path + ": cannot open");
    auto* job = new JpegJob();  // on the heap: jpeg_decompress_struct is large and setjmp-sensitive
    const int ok = jpeg_decode(file.f, job);
    Image image;
    if (ok) {
        image.width = job->width;
        image.height = job->height;
        image.channels = job->channels;
        image.pixels.assign(job->buffer, job->buffer + static_cast<std::size_t>(job->width) * job->height * job->channels);
    }
    const std::string message = job->message;
    std::free(job->buffer);
    delete job;
    if (!ok) throw std::runtime_error(path + ": cannot read JPEG (" + (message.empty() ? "libjpeg failed" : message) + ")");
    return image;
#else
    missing_codec(path, "JPEG", "libjpeg", "libjpeg-dev");
#endif
}

Image read_image(const std::string& path) {
    unsigned char head[8] = {0};
    {
        File file(path, "rb");
        if (!file.f) throw std::runtime_error(path + ": cannot open");
        if (std::fread(head, 1, sizeof head, file.f) < 3) throw std::runtime_error(path + ": too short to be an image");
    }
    static const unsigned char kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (std::memcmp(head, kPng, 8) == 0) return read_png(path);
    if (head[0] == 0xff && head[1] == 0xd8 && head[2] == 0xff) return read_jpeg(path);
    if (head[0] == 'P' && (head[1] == '5' || head[1] == '6')) return read_pnm(path);
    throw std::runtime_error(path + ": not a PNG, JPEG or binary PGM/PPM file");
}

void write_png(const std::string& path, const Image& image) {
#ifdef DEPLOY_UNET_WITH_PNG
    write_png_file(path, image, false);
#else
    (void)image;
    missing_codec(path, "PNG", "libpng", "libpng-dev");
#endif
}

void write_mask_png(const std::string& path, const Image& mask) {
#ifdef DEPLOY_UNET_WITH_PNG
    write_png_file(path, mask, true);
#else
    (void)mask;
    missing_codec(path, "PNG", "libpng", "libpng-dev");
#endif
}

void write_image(const std::string& path, const Image& image, bool mask) {
    const auto dot = path.rfind('.');
    std::string ext = dot == std::string::npos ? "" : path.substr(dot + 1);
    for (auto& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (ext == "png") return mask ? write_mask_png(path, image) : write_png(path, image);
    if (ext == "pgm" || ext == "ppm") return write_pnm(path, image);
    throw std::runtime_error(path + ": write .png, .pgm or .ppm");
}

}  // namespace deploy_unet
